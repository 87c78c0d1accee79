"""RecordingLoadPlanner checks every rank's keys, not only the coordinator's: each rank's
state-dict values ride to the coordinator with its local plan and are taken off before the
wrapped planner sees the plans. Describing them can fail without touching the load. The real
4-rank pp x dp_shard capture is in tests/test_titan_run.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import LoadPlan

import dcpviz
from dcpviz.core.trace import ChunkInfo, TargetValue
from dcpviz.engine.capture import load as recording
from dcpviz.engine.checkpoint.reader import read_metadata

W = TargetValue("w", "Tensor", (6, 4), "float32", (ChunkInfo((0, 0), (6, 4)),))
EXTRA = TargetValue("extra", "Tensor", (2,), "float32", (ChunkInfo((0,), (2,)),))


def _checkpoint(tmp_path):
    state = {"w": torch.arange(24.0).reshape(6, 4), "step": 7}
    dcp.save(state, checkpoint_id=tmp_path / "c")
    return state


class SpyLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, noting the plans it made and the plans its create_global_plan got."""

    def create_local_plan(self):
        self.made = super().create_local_plan()
        return self.made

    def create_global_plan(self, global_plan):
        self.got = list(global_plan)
        return super().create_global_plan(global_plan)


def test_values_ride_with_the_plan_and_are_taken_off_before_the_inner_planner():
    data = {"a": 1}
    plain = LoadPlan([], planner_data=data)
    carried = LoadPlan([], planner_data=recording.CarriedLoadData(None, (W,)))
    failed = LoadPlan([], planner_data=recording.CarriedLoadData(data, None))
    plans = [plain, carried, failed]
    assert recording.carried_values(plans) == (None, (W,), None)
    assert dict(failed.planner_data) == data  # a carrier is the planner_data it wraps, too
    clean = recording.strip_carried(plans)
    assert clean[0] is plain and clean[0].planner_data is data
    assert clean[1].planner_data is None and clean[2].planner_data is data
    assert all(type(p.planner_data) is not recording.CarriedLoadData for p in clean)
    per_rank, silent = recording.every_ranks_wanted((None, (EXTRA,), None), 0, (W,))
    assert per_rank == ((W,), (EXTRA,), None) and silent == [2]


def test_the_inner_planner_sees_exactly_the_plans_it_made(tmp_path):
    state = _checkpoint(tmp_path)
    inner = SpyLoadPlanner()
    rec = dcpviz.RecordingLoadPlanner(tmp_path / "t.json", inner)
    back = {"w": torch.zeros(6, 4), "step": 0}
    dcp.load(back, storage_reader=dcpviz.SafeFileSystemReader(tmp_path / "c"), planner=rec)
    assert inner.got[0].planner_data is inner.made.planner_data is None
    assert inner.got[0].items == inner.made.items
    assert torch.equal(back["w"], state["w"]) and back["step"] == 7
    assert [[rec.trace.wanted[i].fqn for i in ids] for ids in rec.trace.wanted_by_rank] == [
        ["step", "w"]
    ]


def test_the_coordinator_checks_the_keys_other_ranks_sent(tmp_path):
    """Plans as a gather delivers them from three ranks: rank 1 wants a key the checkpoint
    lacks (its planner allows a partial load), rank 2 sent no values. Rank 1's key is a
    mismatch of rank 1; rank 2 is named in a note; the inner planner gets plain plans."""
    _checkpoint(tmp_path)
    md = read_metadata(tmp_path / "c")
    inner = SpyLoadPlanner(allow_partial_load=True)
    rec = dcpviz.RecordingLoadPlanner(tmp_path / "t.json", inner)
    rec.set_up_planner({"w": torch.zeros(6, 4)}, md, True)
    own = rec.create_local_plan()
    rank1 = LoadPlan([], planner_data=recording.CarriedLoadData(None, (W, EXTRA)))
    rank2 = LoadPlan([])
    rec.create_global_plan([own, rank1, rank2])
    assert [p.planner_data for p in inner.got] == [None, None, None]
    trace = dcpviz.load_trace(tmp_path / "t.json").trace
    assert {(m.fqn, m.kind, m.ranks) for m in trace.mismatches} == {
        ("extra", "missing", (1,)),
        ("step", "unexpected", ()),  # no rank holds or reads it
    }
    assert [[trace.wanted[i].fqn for i in ids] for ids in trace.wanted_by_rank] == [
        ["w"],
        ["w", "extra"],
        [],
    ]
    assert any("1 of 3 ranks sent no state-dict values (ranks 2" in n for n in trace.notes)


def test_load_goes_on_when_values_cannot_be_described(tmp_path, monkeypatch):
    """Describing fails on this rank: the plan goes out without values, the load succeeds, a
    RecordingWarning says why and the trace names the rank that sent none."""

    def broken(*args, **kwargs):
        raise RuntimeError("planted: value bug")

    state = _checkpoint(tmp_path)
    monkeypatch.setattr(recording, "target_value", broken)
    inner = SpyLoadPlanner()
    rec = dcpviz.RecordingLoadPlanner(tmp_path / "t.json", inner)
    back = {"w": torch.zeros(6, 4), "step": 0}
    with pytest.warns(dcpviz.RecordingWarning, match="planted: value bug"):
        dcp.load(back, storage_reader=dcpviz.SafeFileSystemReader(tmp_path / "c"), planner=rec)
    assert torch.equal(back["w"], state["w"]) and back["step"] == 7
    assert inner.got[0].planner_data is None
    assert len(rec.problems) == 1 and "describe this rank's state-dict values" in rec.problems[0]
    trace = dcpviz.load_trace(tmp_path / "t.json").trace
    assert trace.wanted_by_rank == ((),)
    assert any("1 of 1 ranks sent no state-dict values (ranks 0" in n for n in trace.notes)


def test_load_goes_on_when_the_carried_values_cannot_be_read(tmp_path, monkeypatch):
    """Reading the carriers fails on the coordinator: the plans are still stripped, the load
    succeeds, and the coordinator's own values stand in for it."""

    def broken(*args, **kwargs):
        raise RuntimeError("planted: carrier bug")

    state = _checkpoint(tmp_path)
    monkeypatch.setattr(recording, "carried_values", broken)
    inner = SpyLoadPlanner()
    rec = dcpviz.RecordingLoadPlanner(tmp_path / "t.json", inner)
    back = {"w": torch.zeros(6, 4), "step": 0}
    with pytest.warns(dcpviz.RecordingWarning, match="planted: carrier bug"):
        dcp.load(back, storage_reader=dcpviz.SafeFileSystemReader(tmp_path / "c"), planner=rec)
    assert torch.equal(back["w"], state["w"]) and back["step"] == 7
    assert inner.got[0].planner_data is None
    trace = dcpviz.load_trace(tmp_path / "t.json").trace
    assert [[trace.wanted[i].fqn for i in ids] for ids in trace.wanted_by_rank] == [["step", "w"]]
