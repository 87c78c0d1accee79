"""Hazards of DCP's Hugging Face writer: each reproduced with DCP's own writer (torch 2.13, one
process), then predicted by a simulated save's checks before anything is written."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException

import dcpviz
from dcpviz.engine.job.models import build_model


def floats(model, optimizer, rank):
    return {
        k: v
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    }


def with_hp(model, optimizer, rank):
    return {**floats(model, optimizer, rank), "hp": 3}


def with_step(model, optimizer, rank):
    return {**floats(model, optimizer, rank), "progress.step": model.progress.step}


def real(state) -> dict:
    torch.manual_seed(0)
    return state(build_model("mlp", "cpu"), None, 0)


def simulate(state, writer, world_size=1):
    sc = dcpviz.Scenario(model="mlp", world_size=world_size, recipe="replicate", state=state)
    return dcpviz.simulate_save(sc, storage_writer=writer)


def save(sd, writer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=writer)


def found(result, check):
    c = result.checks
    return c[c.check == check]


def test_non_tensor_value_makes_the_file_unreadable(tmp_path):
    from safetensors import safe_open

    save(real(with_hp), HuggingFaceStorageWriter(str(tmp_path / "real")))
    shard = next((tmp_path / "real").glob("*.safetensors"))
    with pytest.raises(Exception, match="header too large"):
        safe_open(str(shard), framework="pt")
    sim = simulate(with_hp, HuggingFaceStorageWriter(str(tmp_path / "sim")))
    rows = found(sim, "safetensors-non-tensor")
    assert list(rows.severity) == ["data-loss"] and rows.fqn.iloc[0] == "hp"
    assert shard.name in rows.message.iloc[0]
    assert not (tmp_path / "sim").exists()


def test_integer_tensor_under_consolidation_fails_after_the_shards(tmp_path):
    def writer(d):
        return HuggingFaceStorageWriter(str(d), save_distributed=True, enable_consolidation=True)

    with pytest.raises(CheckpointException, match="TypeError: torch.finfo"):
        save(real(with_step), writer(tmp_path / "real"))
    assert list((tmp_path / "real" / "sharded").glob("*.safetensors"))  # the shards were written
    assert not (tmp_path / "real" / "model.safetensors.index.json").exists()
    rows = found(simulate(with_step, writer(tmp_path / "sim")), "consolidation-dtype")
    assert list(rows.fqn) == ["progress.step"] and list(rows.severity) == ["error"]
    # Without consolidation the same state is fine.
    plain = simulate(
        with_step, HuggingFaceStorageWriter(str(tmp_path / "p"), save_distributed=True)
    )
    assert found(plain, "consolidation-dtype").empty


def test_key_missing_from_the_mapping_raises_mid_save(tmp_path):
    sd = real(floats)
    mapping = {k: 1 for k in sorted(sd) if k != "norm.bias"}
    with pytest.raises(CheckpointException, match="KeyError: 'norm.bias'"):
        save(sd, HuggingFaceStorageWriter(str(tmp_path / "real"), fqn_to_index_mapping=mapping))
    sim = simulate(
        floats, HuggingFaceStorageWriter(str(tmp_path / "sim"), fqn_to_index_mapping=mapping)
    )
    rows = found(sim, "unmapped-key")
    assert list(rows.fqn) == ["norm.bias"] and list(rows.severity) == ["error"]
    assert any("KeyError" in e for e in sim.errors)  # the writer's own write_data raised it


def _reader_metadata(path):
    return HuggingFaceStorageReader(str(path)).read_metadata()


def test_stale_files_are_read_back_by_dcps_reader(tmp_path):
    """An earlier save with three files and one more key; the new save writes one file."""
    out = tmp_path / "out"
    old = {**real(floats), "old.weight": torch.ones(4)}
    save(
        old,
        HuggingFaceStorageWriter(
            str(out), fqn_to_index_mapping={k: 1 + i % 3 for i, k in enumerate(sorted(old))}
        ),
    )
    # Predicted before the new save: the old files stay, with keys written again and a deleted key.
    sim = simulate(floats, HuggingFaceStorageWriter(str(out)))
    rows = found(sim, "stale-safetensors")
    assert set(rows.severity) == {"data-loss", "warning"}
    assert "old.weight" in set(rows[rows.severity == "warning"].fqn)
    # What DCP's reader really does after the new save: the deleted key is back, kept keys doubled.
    save(real(floats), HuggingFaceStorageWriter(str(out)))
    md = _reader_metadata(out)
    assert "old.weight" in md.state_dict_metadata
    assert len(md.state_dict_metadata["fc1.weight"].chunks) == 2
    # A new folder has none of it.
    assert found(
        simulate(floats, HuggingFaceStorageWriter(str(tmp_path / "new"))), "stale-safetensors"
    ).empty


def test_distributed_save_without_consolidation_writes_no_index(tmp_path):
    save(real(floats), HuggingFaceStorageWriter(str(tmp_path / "real"), save_distributed=True))
    assert not (tmp_path / "real" / "model.safetensors.index.json").exists()
    sim = simulate(floats, HuggingFaceStorageWriter(str(tmp_path / "sim"), save_distributed=True))
    assert list(found(sim, "no-index-json").severity) == ["warning"]
    assert sim.hf_index() is None
    ok = simulate(
        floats,
        HuggingFaceStorageWriter(
            str(tmp_path / "sim2"), save_distributed=True, enable_consolidation=True
        ),
    )
    assert found(ok, "no-index-json").empty


def test_ranks_writing_one_file_name(tmp_path):
    """save_distributed=False on 2 ranks: DCP's writer names both ranks' files alike."""
    sim = simulate(floats, HuggingFaceStorageWriter(str(tmp_path / "sim")), world_size=2)
    files = sim.files
    if len(set(files["rank"])) > 1:  # dedup spread the replicated keys over both ranks
        rows = found(sim, "ranks-share-a-file")
        assert list(rows.severity) == ["data-loss"] and rows.ranks.iloc[0] == (0, 1)
    else:
        pytest.fail("dedup put every key on one rank; this test needs both ranks writing")
    dist = simulate(
        floats, HuggingFaceStorageWriter(str(tmp_path / "d"), save_distributed=True), world_size=2
    )
    assert found(dist, "ranks-share-a-file").empty


def test_a_clean_export_has_no_storage_findings(tmp_path):
    sim = simulate(
        floats,
        HuggingFaceStorageWriter(
            str(tmp_path / "x"), save_distributed=True, enable_consolidation=True
        ),
    )
    assert sim.ok and sim.checks.empty, sim.checks


def test_findings_survive_a_failing_write(tmp_path):
    """A rank whose write_data raises (an unmapped key) is still checked from its final plan."""
    sd = real(floats)
    mapping = {k: 1 for k in sd}  # 'hp' and 'progress.step' unmapped
    w = HuggingFaceStorageWriter(
        str(tmp_path / "s"),
        fqn_to_index_mapping=mapping,
        save_distributed=True,
        enable_consolidation=True,
    )
    sim = simulate(lambda m, o, r: {**with_step(m, o, r), "hp": 3}, w)
    assert set(found(sim, "unmapped-key").fqn) == {"hp"}
    assert list(found(sim, "safetensors-non-tensor").fqn) == ["hp"]
    assert list(found(sim, "consolidation-dtype").fqn) == ["progress.step"]
