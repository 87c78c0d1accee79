"""RecordingSavePlanner describes every rank's DTensors, not only the coordinator's: each rank's
layouts ride to the coordinator with its local plan (as its value digests do) and are merged in
rank order as simulate_save merges its stages'. Describing or merging them can fail without
touching the save. The real 4-rank pp x dp_shard capture is in tests/test_titan_run.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.planner import SavePlan

import dcpviz
from dcpviz.core.trace import TensorLayout
from dcpviz.engine.capture import save as recording
from dcpviz.engine.convert.save import DIFFERS_BY_RANK

SHARD = TensorLayout("a", "(Shard(dim=0),)", ("dp_shard",), (2,))
OTHER = TensorLayout("b", "(Shard(dim=0),)", ("dp_shard",), (2,))
REPLICATED = TensorLayout("a", "(Replicate(),)", ("dp_shard",), (2,))


def _rows(*layouts):
    """Layouts as a rank carries them (plain tuples)."""
    return tuple((x.fqn, x.placements, x.mesh_dim_names, x.mesh_shape) for x in layouts)


def test_every_ranks_layouts_are_merged_in_rank_order():
    """Keys only a later rank holds are added; a key laid out differently on two ranks says so;
    the coordinator's own layouts stand in where its plan carried none; ranks that sent none are
    named."""
    merged, missing = recording.every_ranks_layouts(
        (_rows(SHARD), _rows(SHARD), _rows(OTHER)), 0, ()
    )
    assert merged == (SHARD, OTHER) and missing == []
    merged, missing = recording.every_ranks_layouts((None, _rows(REPLICATED), None), 0, (SHARD,))
    assert [(x.fqn, x.placements) for x in merged] == [("a", DIFFERS_BY_RANK)] and missing == [2]


def test_merging_each_distinct_rank_once_is_merging_rank_by_rank():
    """Repeats are merged once (most ranks repeat their stage's layouts); the result is the
    rank-by-rank merge of simulate_save's rule, whatever the order of ranks."""
    import itertools

    from dcpviz.engine.convert.save import merged_layouts

    sets = [(SHARD,), (SHARD, OTHER), (REPLICATED,), (), (OTHER,)]
    for ranks in itertools.product(range(len(sets)), repeat=3):
        per_rank = [sets[i] for i in ranks]
        expected: tuple = ()
        for layouts in per_rank:
            expected = merged_layouts(expected, layouts)
        merged, _ = recording.every_ranks_layouts(tuple(_rows(*x) for x in per_rank), 0, ())
        assert merged == expected, ranks


def test_layouts_ride_with_the_plan_and_are_taken_off_before_the_inner_planner():
    plain = SavePlan([], planner_data={"a": ("a",)})
    carried = SavePlan(
        [], planner_data=recording.CarriedPlannerData({"b": ("b",)}, None, _rows(OTHER))
    )
    assert recording.carried_layouts([plain, carried]) == (None, _rows(OTHER))
    clean, digests, every = recording.strip_carried([plain, carried])
    assert [p.planner_data for p in clean] == [{"a": ("a",)}, {"b": ("b",)}]
    assert digests == [] and not every  # a rank whose fingerprinting failed is not 'every'


def test_save_goes_on_when_layouts_cannot_be_described_or_merged(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("planted: layout bug")

    monkeypatch.setattr(recording, "tensor_layouts", broken)
    monkeypatch.setattr(recording, "every_ranks_layouts", broken)
    state = {"w": torch.arange(6.0), "step": 7}
    rec = dcpviz.RecordingSavePlanner(tmp_path / "t.json")
    with pytest.warns(dcpviz.RecordingWarning, match="planted: layout bug"):
        md = dcp.save(state, checkpoint_id=tmp_path / "ckpt", planner=rec)
    assert rec.complete(md) == tmp_path / "t.json"
    assert len(rec.problems) == 3, rec.problems  # the coordinator's, its carried, the merge
    trace = dcpviz.load_trace(tmp_path / "t.json").trace
    assert any(d.fqn == "step" for d in trace.value_digests)  # the digests still rode along
    back = {"w": torch.zeros(6), "step": 0}
    dcp.load(back, storage_reader=dcpviz.SafeFileSystemReader(tmp_path / "ckpt"))
    assert torch.equal(back["w"], state["w"]) and back["step"] == 7
