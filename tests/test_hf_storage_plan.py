"""simulate_save(storage_writer=...): the writer's own planning, checked against real saves.

Real saves here are one process (DCP's no-process-group path) with DCP's own writers, and a
2-rank gloo save with DCP's HF writer (tests/hf_workers.py). A simulated plan must name the
same files holding the same items as the real folder, and write nothing.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter, HuggingFaceStorageWriter

import dcpviz
from dcpviz.core.hf.safetensors import read_header, sharding_offsets
from dcpviz.engine.job.models import build_model


def floats(model, optimizer, rank):
    """The model's floating tensors only: what an HF export holds."""
    return {
        k: v
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    }


def real_floats() -> dict:
    torch.manual_seed(0)
    return floats(build_model("mlp", "cpu"), None, 0)


def one_rank(state=floats) -> dcpviz.Scenario:
    return dcpviz.Scenario(model="mlp", world_size=1, recipe="replicate", state=state)


def real_save(state_dict: dict, writer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state_dict, storage_writer=writer)


def mapping_of(keys) -> dict[str, int]:
    return {k: 1 + i % 3 for i, k in enumerate(sorted(keys))}


@pytest.mark.parametrize("with_mapping", [True, False])
def test_hf_index_equals_a_real_save(tmp_path, with_mapping):
    sd = real_floats()
    mapping = mapping_of(sd) if with_mapping else None
    sim_dir = tmp_path / "sim"
    sim = dcpviz.simulate_save(
        one_rank(),
        storage_writer=HuggingFaceStorageWriter(str(sim_dir), fqn_to_index_mapping=mapping),
    )
    assert sim.ok, sim.errors
    assert not sim_dir.exists()  # the simulation wrote nothing, not even the folder
    real_save(sd, HuggingFaceStorageWriter(str(tmp_path / "real"), fqn_to_index_mapping=mapping))
    on_disk = json.loads((tmp_path / "real" / "model.safetensors.index.json").read_text())
    assert sim.hf_index() == on_disk
    # Files and what each holds, from the real files' own headers.
    real_files = sorted(p.name for p in (tmp_path / "real").glob("*.safetensors"))
    assert sorted(sim.files["file"]) == real_files
    for name in real_files:
        header = read_header(tmp_path / "real" / name)
        planned = sim.file_plan[sim.file_plan.file == name]
        assert sorted(planned["fqn"]) == sorted(e.name for e in header.entries)
        assert int(planned["nbytes"].sum()) == sum(e.nbytes for e in header.entries)


def test_hf_consolidation_output_equals_a_real_save(tmp_path):
    sd = real_floats()
    mapping = mapping_of(sd)

    def writer(d):
        return HuggingFaceStorageWriter(
            str(d), fqn_to_index_mapping=mapping, save_distributed=True, enable_consolidation=True
        )

    sim = dcpviz.simulate_save(one_rank(), storage_writer=writer(tmp_path / "sim"))
    assert sim.ok, sim.errors
    assert not (tmp_path / "sim").exists()
    real_save(sd, writer(tmp_path / "real"))
    on_disk = json.loads((tmp_path / "real" / "model.safetensors.index.json").read_text())
    assert sim.hf_index() == on_disk
    shards = sorted(p.name for p in (tmp_path / "real" / "sharded").glob("*.safetensors"))
    assert sorted(set(sim.file_plan.query("stage == 'write'")["file"])) == shards
    for name in shards:
        header = read_header(tmp_path / "real" / "sharded" / name)
        rows = sim.file_plan.query("stage == 'write' and file == @name")
        offs = sharding_offsets(header, name)
        assert sorted(zip(rows.fqn, rows.offsets)) == sorted(
            (e.name, offs[e.name]) for e in header.entries
        )
    # Every shard piece lands in the output file the index names for its key.
    index = on_disk["weight_map"]
    assert len(sim.consolidation) == len(sim.file_plan.query("stage == 'write'"))
    assert all(index[r.fqn] == r.output_file for r in sim.consolidation.itertuples())


@pytest.mark.parametrize(
    "kwargs", [dict(thread_count=3), dict(thread_count=1), dict(single_file_per_rank=False)]
)
def test_filesystem_writer_files_equal_a_real_save(tmp_path, kwargs):
    """The default writer's split (DCP's _split_by_size_and_type over thread_count files, or one
    file per item) and file names, against the .metadata a real dcp.save wrote (read safely)."""
    torch.manual_seed(0)
    model = build_model("mlp", "cpu")
    sim = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=1, recipe="replicate"),
        storage_writer=FileSystemWriter(str(tmp_path / "sim"), **kwargs),
    )
    assert sim.ok, sim.errors
    assert not (tmp_path / "sim").exists()
    real_save(model.state_dict(), FileSystemWriter(str(tmp_path / "real"), **kwargs))
    ck = dcpviz.inspect_checkpoint(tmp_path / "real")
    real = sorted((r.file, r.fqn, r.offsets) for r in ck.storage.itertuples())
    planned = sorted((r.file, r.fqn, r.offsets) for r in sim.file_plan.itertuples())
    assert planned == real
    assert sorted(sim.files["file"]) == sorted(p.name for p in (tmp_path / "real").glob("*.distcp"))
    # Data bytes never exceed what is on disk (torch.save adds its framing to each tensor).
    for row in sim.files.itertuples():
        assert row.nbytes <= os.path.getsize(tmp_path / "real" / row.file)


def test_filesystem_writer_files_equal_a_real_gloo_save(real_save):
    """4 ranks, HSDP: each rank's file holds what the real run stored in it."""
    sc, run, _ = real_save("hsdp")
    sim = dcpviz.simulate_save(sc, storage_writer=FileSystemWriter("/nonexistent/dcpviz-sim"))
    assert sim.ok, sim.errors
    real = sorted((r.rank, r.file, r.fqn, r.offsets) for r in run.storage.itertuples())
    assert sorted((r.rank, r.file, r.fqn, r.offsets) for r in sim.file_plan.itertuples()) == real


def test_existing_checkpoint_fails_as_in_dcp(tmp_path):
    """FileSystemWriter(overwrite=False) on a folder with a checkpoint: the RuntimeError dcp.save
    raises in prepare_local_plan, recorded on the rank (not raised, nothing written)."""
    real_save(real_floats(), FileSystemWriter(str(tmp_path)))
    before = sorted(os.listdir(tmp_path))
    sim = dcpviz.simulate_save(
        one_rank(), storage_writer=FileSystemWriter(str(tmp_path), overwrite=False)
    )
    assert not sim.ok
    assert any("Checkpoint already exists" in e for e in sim.errors)
    assert sorted(os.listdir(tmp_path)) == before


def test_file_plan_survives_the_trace_file(tmp_path):
    sim = dcpviz.simulate_save(
        one_rank(), storage_writer=HuggingFaceStorageWriter(str(tmp_path / "x"))
    )
    back = dcpviz.load_trace(sim.to_json(tmp_path / "t.json"))
    assert back.file_plan.equals(sim.file_plan)
    assert back.hf_index() == sim.hf_index()


def test_a_writer_that_is_not_dcps_own_gets_no_files(tmp_path):
    class Mine(FileSystemWriter):
        def write_data(self, plan, planner):  # a custom split dcpviz cannot know
            raise AssertionError("never called by a simulation")

    sim = dcpviz.simulate_save(one_rank(), storage_writer=Mine(str(tmp_path / "m")))
    assert sim.ok, sim.errors
    assert sim.file_plan.empty and sim.trace.storage_writer.files_known is False


def test_not_a_storage_writer_is_refused():
    with pytest.raises(dcpviz.DcpvizError, match="StorageWriter"):
        dcpviz.simulate_save(one_rank(), storage_writer="out/")


def test_a_file_plan_rank_outside_the_job_is_refused(tmp_path):
    sim = dcpviz.simulate_save(
        one_rank(), storage_writer=HuggingFaceStorageWriter(str(tmp_path / "x"))
    )
    path = sim.to_json(tmp_path / "t.json")
    doc = json.loads(path.read_text())
    doc["trace"]["file_plan"][0]["rank"] = 5
    path.write_text(json.dumps(doc))
    with pytest.raises(dcpviz.DcpvizError, match="file_plan"):
        dcpviz.load_trace(path)


def test_file_layout_view_and_report(tmp_path):
    sim = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"),
        storage_writer=FileSystemWriter(str(tmp_path / "x"), thread_count=2),
    )
    fig = dcpviz.views.file_layout(sim)
    shown = sorted((tr.name, f, int(n)) for tr in fig.data for f, n in zip(tr.y, tr.x))
    want = sorted((f"rank {r.rank}", r.file, int(r.nbytes)) for r in sim.file_plan.itertuples())
    assert shown == want
    html = dcpviz.report(sim, tmp_path / "r.html").read_text()
    assert "Files: what each rank writes where" in html
    with pytest.raises(dcpviz.DcpvizError, match="storage_writer"):
        dcpviz.views.file_layout(dcpviz.simulate_save(one_rank()))
    ck_dir = tmp_path / "hf"
    real_save(real_floats(), HuggingFaceStorageWriter(str(ck_dir)))
    fig = dcpviz.views.file_layout(dcpviz.inspect_checkpoint(ck_dir))
    assert sum(len(tr.x) for tr in fig.data) == len(real_floats())


@pytest.mark.parametrize(
    "make",
    [
        lambda d: FileSystemWriter(str(d), thread_count=3),
        lambda d: HuggingFaceStorageWriter(
            str(d), save_distributed=True, enable_consolidation=True
        ),
    ],
)
def test_shortcuts_give_the_plain_file_plan(tmp_path, make):
    """The default shortcuts (plans shared by classes of ranks) change no file of the plan."""
    sc = dcpviz.Scenario(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp")
    fast = dcpviz.simulate_save(sc, storage_writer=make(tmp_path / "a"))
    plain = dcpviz.simulate_save(sc, storage_writer=make(tmp_path / "a"), fast=False)
    assert fast.ok and plain.ok
    assert fast.file_plan.equals(plain.file_plan)
    assert fast.hf_index() == plain.hf_index()


@pytest.mark.slow
def test_hf_distributed_save_on_gloo_ranks_equals_the_plan(tmp_path):
    """3 gloo ranks, FSDP, DCP's HF writer with consolidation: every rank's shard file holds the
    pieces the plan gave it (names, offsets, bytes from the real headers), and the consolidated
    index is the predicted one."""
    from hf_workers import floats as worker_floats
    from hf_workers import hf_save_job

    from dcpviz.engine.run.procs import launch

    W = 3
    keys = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "norm.weight", "norm.bias"]
    mapping = {k: 1 + i % 2 for i, k in enumerate(keys)}
    out = tmp_path / "real"
    outcome = launch(hf_save_job, W, (str(out), mapping), backend="gloo", device="cpu", timeout=240)
    assert outcome.ok, outcome.errors
    sc = dcpviz.Scenario(model="mlp", world_size=W, recipe="fsdp", state=worker_floats)
    sim = dcpviz.simulate_save(
        sc,
        storage_writer=HuggingFaceStorageWriter(
            str(tmp_path / "sim"),
            fqn_to_index_mapping=mapping,
            save_distributed=True,
            enable_consolidation=True,
        ),
    )
    assert sim.ok, sim.errors
    assert sim.hf_index() == json.loads((out / "model.safetensors.index.json").read_text())
    real = set()
    for p in (out / "sharded").glob("*.safetensors"):
        header = read_header(p)
        offs = sharding_offsets(header, p.name)
        rank = int(p.name.split("-")[1]) - 1
        real |= {(rank, p.name, e.name, offs[e.name], e.nbytes) for e in header.entries}
    planned = {
        (r.rank, r.file, r.fqn, r.offsets, r.nbytes)
        for r in sim.file_plan.query("stage == 'write'").itertuples()
    }
    assert planned == real
