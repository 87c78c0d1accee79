"""Checks against real processes: run_save and a capture (gloo) — the value named as lost is
really not on disk, and carrying digests changes no DCP decision."""

from __future__ import annotations

import pytest
from run_helpers import capture_rank_values_job, mlp_with_rank_state

import dcpviz
from dcpviz.engine.checkpoint.byteio import load_byte_io
from dcpviz.engine.checkpoint.reader import read_metadata
from dcpviz.engine.run.procs import launch


def _stored_value(ckpt, storage, fqn):
    """A BYTE_IO entry's value as it is on disk (read with the weights-only unpickler)."""
    row = storage[storage["fqn"] == fqn].iloc[0]
    with open(ckpt / row.file, "rb") as fh:
        fh.seek(int(row.offset))
        return load_byte_io(fh.read(int(row.length)), fqn)


@pytest.fixture(scope="module")
def real_rank_state(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("rank_state") / "ck"
    sc = dcpviz.Scenario(model=mlp_with_rank_state, world_size=3, recipe="fsdp")
    return dcpviz.run_save(sc, ckpt, start_method="forkserver"), ckpt


def test_run_save_names_the_lost_values_and_they_are_not_on_disk(real_rank_state):
    res, ckpt = real_rank_state
    assert res.ok, res.errors
    lost = res.checks[res.checks["severity"] == "data-loss"]
    assert set(lost["fqn"]) == {
        "rank_state._extra_state.sample_idx",
        "rank_state._extra_state.seed",
    }
    for row in lost.itertuples():
        survivor = int(res.dedup.set_index("fqn").loc[row.fqn, "chosen_rank"])
        assert set(row.ranks) == {0, 1, 2} - {survivor}
        on_disk = _stored_value(ckpt, res.storage, row.fqn)
        value = {"sample_idx": lambda r: 1000 * r, "seed": lambda r: 17 + r}[
            row.fqn.rsplit(".", 1)[1]
        ]
        assert on_disk == value(survivor)  # the survivor's value is the one on disk ...
        assert all(on_disk != value(r) for r in row.ranks)  # ... and the others' are nowhere
    assert not (res.checks["check"] == "rank-specific-value").sum() - len(lost)  # every value known


def test_run_save_equal_values_are_no_finding(real_rank_state):
    res, _ = real_rank_state
    # progress.step and progress._extra_state are saved alike by every rank.
    assert "progress.step" not in set(res.checks["fqn"])


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    root = tmp_path_factory.mktemp("capture_values")
    out = launch(
        capture_rank_values_job,
        2,
        (str(root / "ck"), str(root / "t.json"), str(root / "plain")),
        backend="gloo",
        device="cpu",
        timeout=120,
        start_method="forkserver",
    )
    assert out.ok, out.errors
    return root, out


def test_capture_carries_every_ranks_digests_to_the_coordinator(captured):
    root, out = captured
    res = dcpviz.load_trace(root / "t.json")
    assert res.trace.source == "capture" and not any(p["problems"] for p in out.payloads.values())
    assert {(d.fqn, d.rank) for d in res.trace.value_digests} == {
        (k, r) for k in ("w", "loader.position", "shared", "bias") for r in (0, 1)
    }
    lost = res.checks[res.checks["severity"] == "data-loss"]
    assert set(lost["fqn"]) == {"w", "loader.position"}  # differ per rank; 'shared', 'bias' agree
    survivor = int(res.dedup.set_index("fqn").loc["loader.position", "chosen_rank"])
    assert _stored_value(root / "ck", res.storage, "loader.position") == 100 * survivor
    assert (
        res.trace.dedup_alternative is not None and res.trace.dedup_alternative.lowest_rank is True
    )


def test_capture_with_digests_changes_no_dcp_decision(captured):
    root, _ = captured
    rec, plain = read_metadata(root / "ck"), read_metadata(root / "plain")
    assert rec.state_dict_metadata == plain.state_dict_metadata
    assert rec.planner_data == plain.planner_data  # the carrier never reaches DCP's metadata

    def strip(m):
        return {
            (k.fqn, k.offset): (v.relative_path, v.offset, v.length)
            for k, v in m.storage_data.items()
        }

    assert strip(rec) == strip(plain)
