"""The save side's scale shortcuts give exactly DCP's plain per-rank results.

- ``fastpath.TemplateView`` (one DTensor per layout group, meshes built once per rank) +
  ``write_memo.WriteItemMemo`` (DCP's WriteItems renamed for another key of the same group) +
  ``fastpath.memoized_shard_steps``: each rank's local plan equals DCP's ``create_local_plan``
  on that rank's own state dict, built by the recipe with no dcpviz shortcut, every field
  (``MetadataIndex.index`` too), in order.
- ``convert.PlanConverter`` / ``metadata_info``: equal to converting every item on its own
  (``planned_item`` + interning by value).
"""

from __future__ import annotations

import gc
from contextlib import nullcontext

import pytest
import torch
from test_fastpath import NestedStateNet
from torch.distributed.checkpoint import default_planner, planner_helpers
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import _StridedShard

import dcpviz
from dcpviz.core.trace import ChunkInfo, PlanRecord
from dcpviz.engine.convert.save import PlanConverter, planned_item
from dcpviz.engine.convert.shared import ItemTable, metadata_info
from dcpviz.engine.job.statedict import rank_state_dict
from dcpviz.engine.job.world import fake_world, process_as_found
from dcpviz.engine.shortcuts import fastpath, write_memo
from dcpviz.engine.shortcuts.write_memo import WriteItemMemo, write_fields

SCENARIOS = [
    dcpviz.Scenario(
        model="mlp", world_size=8, recipe="fsdp"
    ),  # uneven: 190 rows on 8, last rank empty
    dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"),
    dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="tp"),
    dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp"),
    dcpviz.Scenario(model="llama-tiny", world_size=6, mesh=(3, 2), recipe="tp+fsdp"),
    dcpviz.Scenario(
        model="llama-tiny", world_size=8, mesh=(4, 2), recipe="hsdp", optimizer="adamw"
    ),
    dcpviz.Scenario(
        model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp", optimizer="adamw"
    ),
    dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp", optimizer="adamw"),
    dcpviz.Scenario(model=NestedStateNet, world_size=4, mesh=(2, 2), recipe="tp+fsdp"),
    dcpviz.Scenario(model=NestedStateNet, world_size=8, mesh=(4, 2), recipe="hsdp"),
]


def _id(sc: dcpviz.Scenario) -> str:
    model = sc.model if isinstance(sc.model, str) else "nested"
    return f"{model}-{sc.recipe}-{'x'.join(map(str, sc.mesh))}-{sc.optimizer or 'model'}"


def plain_plan(sc: dcpviz.Scenario, r: int):
    """DCP's local plan on rank ``r``'s own state dict (the recipe run for that rank), no dcpviz shortcut."""
    with fake_world(r, sc.world_size):
        sd, _ = rank_state_dict(sc, r)
        p = DefaultSavePlanner()
        p.set_up_planner(sd, is_coordinator=(r == 0))
        return p.create_local_plan()


def shortcut_plan(
    view: fastpath.TemplateView,
    sc: dcpviz.Scenario,
    r: int,
    memo: WriteItemMemo,
    steps: dict,
    flattening: fastpath.ViewFlattening | None = None,
):
    """What simulate_save does for rank ``r`` with every save shortcut on."""
    with fake_world(r, sc.world_size):
        with fastpath.memoized_shard_steps(steps):
            sd, leaves = view.view_with_leaves(r, {}, share_dtensors=True)
        p = DefaultSavePlanner()
        flat = flattening.active(sd, leaves) if flattening is not None else nullcontext()
        with (
            torch.no_grad(),
            fastpath.memoized_shard_steps(steps),
            fastpath.SharedLocalShapes(steps).active(),
            memo.active(),
        ):
            with flat:
                p.set_up_planner(sd, is_coordinator=(r == 0))
            return p.create_local_plan()


def same_plan(a, b) -> bool:
    return (
        [write_fields(w) for w in a.items] == [write_fields(w) for w in b.items]
        and a.planner_data == b.planner_data
        and a.usable == b.usable
    )


def template_view(sc: dcpviz.Scenario) -> fastpath.TemplateView:
    template, _ = fastpath.template_state_dict(sc, [], check=False)
    assert template is not None
    return fastpath.TemplateView(template)


@pytest.mark.parametrize("sc", SCENARIOS, ids=_id)
def test_local_plans_equal_dcps_on_each_ranks_own_state_dict(sc):
    with process_as_found():
        view = template_view(sc)
        memo, steps, flattening = WriteItemMemo(), {}, fastpath.ViewFlattening(view)
        for r in range(sc.world_size):
            assert same_plan(
                shortcut_plan(view, sc, r, memo, steps, flattening), plain_plan(sc, r)
            ), f"rank {r}"
    assert memo.on and flattening.on and flattening.hits == sc.world_size
    if sc.model == "llama-tiny":  # layers repeat: the memo was used, and checked
        assert memo.hits > 0 and memo.checks > 0


def test_a_wrong_rename_is_caught_by_the_memos_own_check(monkeypatch):
    """A memo whose renamed items differ from DCP's (here: a wrong offset) switches itself off
    on the first group's second key and hands out DCP's own items: the plans stay DCP's."""
    from torch.distributed.checkpoint.metadata import MetadataIndex

    def wrong(items, fqn):
        return [
            write_memo.WriteItem(
                index=MetadataIndex(fqn, [o + 1 for o in wi.index.offset]),
                type=wi.type,
                tensor_data=wi.tensor_data,
            )
            for wi in items
        ]

    monkeypatch.setattr(write_memo, "renamed", wrong)
    sc = dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp")
    with process_as_found():
        view = template_view(sc)
        memo = WriteItemMemo()
        for r in (0, 5):
            assert same_plan(shortcut_plan(view, sc, r, memo, {}), plain_plan(sc, r))
    assert not memo.on and memo.hits == 0


def test_a_memo_that_cannot_rename_steps_aside(monkeypatch):
    """If DCP's WriteItem could not be copied as the memo copies it, DCP plans alone."""

    def broken(items, fqn):
        raise AttributeError("__dict__")

    monkeypatch.setattr(write_memo, "renamed", broken)
    sc = dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="tp")
    with process_as_found():
        view = template_view(sc)
        memo = WriteItemMemo()
        for r in range(4):
            assert same_plan(shortcut_plan(view, sc, r, memo, {}), plain_plan(sc, r))
    assert not memo.on


def test_the_comparison_sees_a_wrong_rename_when_nothing_checks_it(monkeypatch):
    """The comparison above is sharp: with the memo's check skipped, a wrong name shows."""
    right = write_memo.renamed

    class Unchecked(WriteItemMemo):
        def write_items(self, original, fqn, obj):
            items = super().write_items(original, fqn, obj)
            for hit in self._memo.values():
                hit[4] = True  # pretend every group was checked
            return items

    monkeypatch.setattr(write_memo, "renamed", lambda items, fqn: right(items, fqn + "_"))
    sc = dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="tp")
    with process_as_found():
        view = template_view(sc)
        assert not same_plan(shortcut_plan(view, sc, 1, Unchecked(), {}), plain_plan(sc, 1))


def test_a_flattening_that_differs_from_dcps_is_caught_on_the_first_view():
    sc = dcpviz.Scenario(
        model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp", optimizer="adamw"
    )
    with process_as_found():
        view = template_view(sc)
        wrong = fastpath.ViewFlattening(view)
        wrong.keys = wrong.keys[1:] + wrong.keys[:1]  # DCP's order is not this
        for r in (0, 3):
            assert same_plan(
                shortcut_plan(view, sc, r, WriteItemMemo(), {}, wrong), plain_plan(sc, r)
            )
    assert not wrong.on and wrong.hits == 0


def test_the_comparison_sees_a_wrong_flattening_when_nothing_checks_it():
    sc = dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="tp")
    with process_as_found():
        view = template_view(sc)
        wrong = fastpath.ViewFlattening(view)
        wrong.checked = True  # skip the check
        wrong.mappings = {k: (*path, "x") for k, path in wrong.mappings.items()}
        assert not same_plan(
            shortcut_plan(view, sc, 1, WriteItemMemo(), {}, wrong), plain_plan(sc, 1)
        )


def test_flattening_is_left_alone_when_dcps_helpers_were_replaced(monkeypatch):
    sc = dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
    with process_as_found():
        view = template_view(sc)
        mine = fastpath.ViewFlattening(view)
        theirs = default_planner.flatten_state_dict
        monkeypatch.setattr(default_planner, "flatten_state_dict", lambda sd: theirs(sd))
        with mine.active({}, []) as on:
            assert not on
    assert mine.on and not mine.checked


def test_memo_is_off_for_other_planners_and_dcps_helper_is_restored():
    seen = []

    class Subclass(DefaultSavePlanner):
        def create_local_plan(self):
            seen.append(default_planner._create_write_items is planner_helpers._create_write_items)
            return super().create_local_plan()

    sc = dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp")
    fast = dcpviz.simulate_save(sc, planner=Subclass)
    full = dcpviz.simulate_save(sc, planner=Subclass, fast=False)
    assert seen and all(seen)
    assert fast.ok and [fast.trace.items[i] for p in fast.trace.local_plans for i in p.items] == [
        full.trace.items[i] for p in full.trace.local_plans for i in p.items
    ]
    default = dcpviz.simulate_save(sc)
    assert default.ok
    assert default_planner._create_write_items is planner_helpers._create_write_items


def test_memo_stays_off_when_dcps_helper_was_replaced(monkeypatch):
    calls = []

    def someone_elses(fqn, obj):
        calls.append(fqn)
        return planner_helpers._create_write_items(fqn, obj)

    monkeypatch.setattr(default_planner, "_create_write_items", someone_elses)
    memo = WriteItemMemo()
    with memo.active() as on:
        assert not on and default_planner._create_write_items is someone_elses


@pytest.mark.parametrize("sc", SCENARIOS[:5] + SCENARIOS[8:], ids=_id)
def test_template_views_hold_what_each_rank_holds(sc):
    """Every leaf of a rank's view: DTensors with the rank's own mesh (equal, same coordinate),
    placements and local shape; one object per layout group only when asked."""
    with process_as_found():
        view = template_view(sc)
        for r in range(sc.world_size):
            with fake_world(r, sc.world_size):
                own = fastpath.Leaves(rank_state_dict(sc, r)[0]).values
                shared = fastpath.Leaves(view.view(r, {}, share_dtensors=True)).values
                apart = fastpath.Leaves(view.view(r, {})).values
            assert list(own) == list(shared) == list(apart)
            for key, mine in own.items():
                for got in (shared[key], apart[key]):
                    assert type(got) is type(mine), key
                    if isinstance(mine, DTensor):
                        assert got.placements == mine.placements and got.shape == mine.shape
                        assert got.device_mesh == mine.device_mesh
                        assert got.device_mesh.get_coordinate() == mine.device_mesh.get_coordinate()
                        assert (
                            got.to_local().shape == mine.to_local().shape
                            and got.dtype == mine.dtype
                        )
            dts = [k for k, v in apart.items() if isinstance(v, DTensor)]
            assert len({id(apart[k]) for k in dts}) == len(dts)
            groups = {(shared[k].shape, shared[k].placements) for k in dts}
            assert len({id(shared[k]) for k in dts}) == len(groups)


SHARD_QUESTIONS = [
    ((190, 16), (8,), (Shard(0),)),
    ((190, 16), (2, 4), (Replicate(), Shard(0))),
    ((64, 48), (2, 4), (_StridedShard(0, split_factor=4), Shard(0))),
    ((30, 7), (3, 2), (_StridedShard(0, split_factor=2), Shard(0))),  # uneven, strided
    ((5, 9), (4, 2), (_StridedShard(0, split_factor=2), Shard(0))),  # empty shards
    ((12, 10), (3, 2), (Shard(0), Shard(1))),
    ((12, 10), (3, 2), (Shard(1), _StridedShard(1, split_factor=3))),
    ((7,), (2, 4), (Shard(0), Replicate())),
]


@pytest.mark.parametrize("shape,mesh,placements", SHARD_QUESTIONS)
def test_memoised_shard_steps_give_dtensors_answers(shape, mesh, placements):
    coords = [
        (i,) if len(mesh) == 1 else (i, j)
        for i in range(mesh[0])
        for j in range(mesh[-1] if len(mesh) > 1 else 1)
    ]
    plain = {
        (c, skip): _compute_local_shape_and_global_offset(shape, mesh, list(c), placements, skip)
        for c in coords
        for skip in (False, True)
    }
    cache: dict = {}
    for _ in range(2):  # the second round is answered from the cache
        with fastpath.memoized_shard_steps(cache):
            for (c, skip), want in plain.items():
                assert (
                    _compute_local_shape_and_global_offset(shape, mesh, list(c), placements, skip)
                    == want
                )
    assert cache


# -- conversion --------------------------------------------------------------------------------
def plain_records(plans, table: ItemTable, sizes=None) -> list[PlanRecord]:
    """Every item converted on its own and interned by value: what PlanConverter must equal."""
    return [
        PlanRecord(
            items=tuple(table.add(planned_item(wi, sizes)) for wi in p.items), usable=p.usable
        )
        for p in plans
    ]


@pytest.mark.parametrize("sc", [SCENARIOS[3], SCENARIOS[5], SCENARIOS[9]], ids=_id)
def test_conversion_equals_converting_each_item_on_its_own(sc):
    with process_as_found():
        view = template_view(sc)
        memo = WriteItemMemo()
        local = [shortcut_plan(view, sc, r, memo, {}) for r in range(sc.world_size)]
        local += [plain_plan(sc, r) for r in range(sc.world_size)]
        with fake_world(0, sc.world_size):
            global_plans, md = DefaultSavePlanner().create_global_plan(local[: sc.world_size])
    conv = PlanConverter()
    mine = [conv.record(p) for p in local + global_plans + local]
    table = ItemTable()
    theirs = plain_records(local + global_plans + local, table)
    assert conv.items == table.items
    assert mine == theirs
    info = metadata_info(md)
    for entry in info.tensors:
        chunks = md.state_dict_metadata[entry.fqn].chunks
        assert entry.chunks == tuple(ChunkInfo(tuple(c.offsets), tuple(c.sizes)) for c in chunks)


def test_simulate_save_leaves_the_garbage_collector_as_it_found_it():
    sc = dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp")
    assert gc.isenabled()
    dcpviz.simulate_save(sc)
    assert gc.isenabled()
    gc.disable()
    try:
        dcpviz.simulate_save(sc)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_conversion_of_unusual_items_equals_converting_each_on_its_own():
    """Items DCP's default planner does not make but a custom one may: an index offset that is
    not the chunk's, a WriteItem subclass, one tensor_data under several names and types,
    bytes whose size differs by rank, equal items in different objects."""
    from dataclasses import dataclass

    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        MetadataIndex,
        TensorProperties,
    )
    from torch.distributed.checkpoint.planner import (
        SavePlan,
        TensorWriteData,
        WriteItem,
        WriteItemType,
    )

    @dataclass(frozen=True)
    class BigItem(WriteItem):
        def tensor_storage_size(self):
            return 12345

    def td(off, size, dtype=torch.float32):
        return TensorWriteData(
            ChunkStorageMetadata(torch.Size(off), torch.Size(size)),
            TensorProperties(dtype),
            torch.Size([8, 8]),
        )

    shared = td([0, 0], [4, 8])

    def item(fqn, data, off=None, kind=WriteItemType.SHARD, cls=WriteItem):
        offset = data.chunk.offsets if off is None else torch.Size(off)
        return cls(index=MetadataIndex(fqn, offset), type=kind, tensor_data=data)

    plans = [
        SavePlan(
            [
                item("a", shared),
                item("b", shared),
                item("c", shared, off=[1, 1]),
                item("a", shared, kind=WriteItemType.TENSOR),
                WriteItem(index=MetadataIndex("x"), type=WriteItemType.BYTE_IO),
            ]
        ),
        SavePlan(
            [
                item("a", td([0, 0], [4, 8])),
                item("a", shared, cls=BigItem),
                item("b", td([4, 0], [4, 8], torch.bfloat16)),
                item("d", td([], [])),
                WriteItem(index=MetadataIndex("x"), type=WriteItemType.BYTE_IO),
            ]
        ),
        SavePlan([item("a", shared), item("c", td([0, 0], [4, 8]), off=[1, 1])], usable=False),
    ]
    sizes = [{"x": 10}, {"x": 20}, None]
    conv, table = PlanConverter(), ItemTable()
    mine = [conv.record(p, s) for p, s in zip(plans, sizes)]
    theirs = [plain_records([p], table, s)[0] for p, s in zip(plans, sizes)]
    assert conv.items == table.items and mine == theirs
    assert len({conv.items[i].index_offsets for i in mine[0].items}) == 2  # (1, 1) kept for "c"
    assert conv.items[mine[1].items[1]].dcp_size == 12345


class GcWatchingPlanner(DefaultSavePlanner):
    seen: list = []

    def create_local_plan(self):
        GcWatchingPlanner.seen.append(gc.isenabled())
        return super().create_local_plan()


def test_the_collector_pauses_only_for_template_views():
    """Ranks viewed from one template: paused. Every rank running the recipe (fast=False)
    leaves cyclic garbage per rank: the collector stays on."""
    sc = dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp")
    GcWatchingPlanner.seen = []
    dcpviz.simulate_save(sc, planner=GcWatchingPlanner)
    assert GcWatchingPlanner.seen and not any(GcWatchingPlanner.seen)
    GcWatchingPlanner.seen = []
    dcpviz.simulate_save(sc, planner=GcWatchingPlanner, fast=False)
    assert GcWatchingPlanner.seen and all(GcWatchingPlanner.seen)
    assert gc.isenabled()


def test_per_rank_values_take_the_plain_path_and_match_it():
    """A state callable may give each rank its own keys and values: no template, no memo."""

    def state(model, optimizer, rank):
        return {"model": model.state_dict(), "extra": [rank, {"seen": torch.tensor([rank])}]}

    sc = dcpviz.Scenario(
        model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp", state=state
    )
    fast, full = dcpviz.simulate_save(sc), dcpviz.simulate_save(sc, fast=False)
    assert fast.ok and full.ok
    resolve = lambda t: [[t.items[i] for i in p.items] for p in t.local_plans]  # noqa: E731
    assert resolve(fast.trace) == resolve(full.trace)
    assert (
        fast.trace.value_digests == full.trace.value_digests
        and len({d.rank for d in fast.trace.value_digests}) == 4
    )
