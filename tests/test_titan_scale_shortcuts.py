"""The shortcuts that made the W=16,384 torchtitan save cheap give exactly DCP's plain results.

- ``engine/shortcuts/worldless.py``: ranks of a stage planned outside any fake world, their meshes
  copied from a fresh one (``engine/shortcuts/mesh_copies.py``) with the coordinate from DeviceMesh's own code; equal to the per-rank
  path (``fast=False``), field by field, and a broken copy or a planner that reads the world is
  caught by the shortcut's own check (the result stays DCP's).
- ``fastpath.finishes_without_world``: only DCP's own ``DefaultSavePlanner.finish_plan`` runs
  outside each rank's world.
- ``fastpath.SharedLocalShapes`` with one memo for every rank: each rank's local plan
  equals DCP's on the rank's own state dict.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist
from sabotage import shapes_key_without_coordinate, silence_check, spy_on_check
from test_save_shortcuts import SCENARIOS, _id, plain_plan, same_plan, template_view
from titan_reference import titan_scenario
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

import dcpviz
from dcpviz.engine.job.statedict import build_mesh
from dcpviz.engine.job.world import fake_world, process_as_found, rank_mesh
from dcpviz.engine.shortcuts import fastpath, mesh_copies
from dcpviz.engine.shortcuts.write_memo import WriteItemMemo

PP_CASES = [
    # model, mesh, names, ranks planned without a world (the planned ranks, i.e. one per class
    # of ranks with equal plans, less each stage's first)
    ("llama-tiny", (2, 2, 2), ("pp", "dp_shard", "tp"), 6),
    ("llama-tiny", (2, 4, 2), ("pp", "dp_shard", "tp"), 14),
    ("llama-tiny", (2, 2, 2), ("pp", "dp_replicate", "dp_shard"), 2),  # dp_replicate: shared
    ("moe-tiny", (4, 2), ("pp", "dp_shard"), 4),
    ("moe-tiny", (2, 2, 2), ("pp", "dp_shard", "ep"), 6),
]


def _records(result, phase):
    return [[result.trace.items[i] for i in p.items] for p in getattr(result.trace, phase)]


def _assert_same_as_plain(fast, plain):
    assert fast.ok and plain.ok, (fast.errors, plain.errors)
    for phase in ("local_plans", "global_plans", "final_plans"):
        assert _records(fast, phase) == _records(plain, phase), phase
    assert fast.trace.metadata == plain.trace.metadata
    assert fast.metadata == plain.metadata


def _worldless_note(result) -> str:
    notes = [n for n in result.trace.notes if "outside a fake world" in n]
    assert len(notes) == 1, result.trace.notes
    return notes[0]


@pytest.mark.parametrize(
    "model,mesh,names,worldless_ranks",
    PP_CASES,
    ids=[f"{c[0]}-{'x'.join(f'{n}{s}' for n, s in zip(c[2], c[1]))}" for c in PP_CASES],
)
def test_worldless_ranks_plan_as_every_rank_in_its_own_world(model, mesh, names, worldless_ranks):
    sc = titan_scenario(model, mesh, names)
    fast, plain = dcpviz.simulate_save(sc), dcpviz.simulate_save(sc, fast=False)
    _assert_same_as_plain(fast, plain)
    note = _worldless_note(fast)
    # every planned rank but each stage's first went without a world; nothing turned it off
    assert note.startswith(f"{worldless_ranks} ranks planned"), note
    assert "turned off" not in note


def test_a_copied_mesh_equals_a_fresh_one_on_every_rank():
    """``mesh_for_rank`` from rank 0's fresh meshes equals ``rank_mesh`` in each rank's own world,
    every field (the root mesh and the sub-meshes torchtitan's recipe slices)."""
    sc = titan_scenario("llama-tiny", (2, 4, 2), ("pp", "dp_shard", "tp"))
    W = sc.world_size
    with process_as_found():
        with fake_world(0, W):
            root = build_mesh(sc)
            templates = [root, root["tp"], root["dp_shard", "tp"], root["dp_shard"], root["pp"]]
            first = [rank_mesh(m, 0, {}) for m in templates]
        states = [(type(m), mesh_copies.snapshot(vars(m))) for m in first]
        fulls = [mesh_copies.full_mesh(s) for _, s in states]
        for r in range(W):
            copies = [mesh_copies.mesh_for_rank(s, cls, r) for cls, s in states]
            # the groups tensor worked out once serves every rank alike
            shared = [mesh_copies.mesh_for_rank(s, cls, r, f) for (cls, s), f in zip(states, fulls)]
            with fake_world(r, W):
                fresh = [rank_mesh(m, r, {}) for m in templates]
            for c, s, f in zip(copies, shared, fresh):
                assert mesh_copies.same_mesh(c, f) and mesh_copies.same_mesh(s, f), r
                assert c.get_coordinate() == s.get_coordinate() == f.get_coordinate() is not None


def test_same_mesh_sees_a_wrong_coordinate():
    sc = titan_scenario("llama-tiny", (2, 2, 2), ("pp", "dp_shard", "tp"))
    with process_as_found(), fake_world(0, 8):
        m = rank_mesh(build_mesh(sc)["tp"], 0, {})
    state = mesh_copies.snapshot(vars(m))
    good = mesh_copies.mesh_for_rank(state, type(m), 0)
    bad = mesh_copies.mesh_for_rank(state, type(m), 1)  # tp coordinate 1
    assert mesh_copies.same_mesh(good, m) and not mesh_copies.same_mesh(bad, m)


def test_a_broken_mesh_copy_is_caught_and_the_plans_stay_dcps(monkeypatch):
    """Sabotage: copies that keep the snapshot's coordinate (rank 0's) would give every rank of a
    stage its first rank's shards. The check on each stage's last rank catches it."""
    sc = titan_scenario("llama-tiny", (2, 4, 2), ("pp", "dp_shard", "tp"))
    plain = dcpviz.simulate_save(sc, fast=False)
    monkeypatch.setattr(
        mesh_copies, "coordinate_of", lambda state, rank, full=None: state["_coordinate_on_dim"]
    )
    fast = dcpviz.simulate_save(sc)
    _assert_same_as_plain(fast, plain)
    note = _worldless_note(fast)
    assert note.startswith("0 ranks planned") and "meshes differ" in note, note


def test_without_the_check_the_broken_copy_would_change_the_plans(monkeypatch):
    """The sabotage above is real: with the check skipped, the plans differ from DCP's."""
    from dcpviz.engine.simulate import save as simulate_save_module

    sc = titan_scenario("llama-tiny", (2, 4, 2), ("pp", "dp_shard", "tp"))
    plain = dcpviz.simulate_save(sc, fast=False)
    monkeypatch.setattr(
        mesh_copies, "coordinate_of", lambda state, rank, full=None: state["_coordinate_on_dim"]
    )

    def no_check(run, first):
        run.worldless.checked.add(run.views.stage_of(first))

    monkeypatch.setattr(simulate_save_module, "_check_worldless", no_check)
    fast = dcpviz.simulate_save(sc)
    assert _records(fast, "local_plans") != _records(plain, "local_plans")


def test_a_planner_that_reads_the_world_gets_its_world(monkeypatch):
    """A planner step that asks for the rank raises outside a world (no default group): the rank
    is planned again in its world and the shortcut turns off; what it saw is each rank's own."""
    sc = titan_scenario("llama-tiny", (2, 2, 2), ("pp", "dp_shard", "tp"))
    plain = dcpviz.simulate_save(sc, fast=False)
    real = DefaultSavePlanner.create_local_plan
    seen = []

    def reads_rank(self):
        seen.append(dist.get_rank())
        return real(self)

    monkeypatch.setattr(DefaultSavePlanner, "create_local_plan", reads_rank)
    fast = dcpviz.simulate_save(sc)
    _assert_same_as_plain(fast, plain)
    assert sorted(set(seen)) == list(range(sc.world_size))
    note = _worldless_note(fast)
    assert "turned off" in note and "raised" in note, note


def test_finish_without_a_world_only_for_dcps_own_finish_plan(monkeypatch):
    assert fastpath.finishes_without_world(DefaultSavePlanner())
    assert not fastpath.finishes_without_world(DefaultSavePlanner(enable_plan_caching=True))

    class Mine(DefaultSavePlanner):
        pass

    assert not fastpath.finishes_without_world(Mine())
    sc = titan_scenario("llama-tiny", (2, 2, 2), ("pp", "dp_shard", "tp"))
    plain = dcpviz.simulate_save(sc, fast=False)
    real = DefaultSavePlanner.finish_plan
    seen = []

    def reads_rank(self, new_plan):
        seen.append(dist.get_rank())
        return real(self, new_plan)

    monkeypatch.setattr(DefaultSavePlanner, "finish_plan", reads_rank)
    assert not fastpath.finishes_without_world(DefaultSavePlanner())
    fast = dcpviz.simulate_save(sc)
    _assert_same_as_plain(fast, plain)
    assert seen == list(range(sc.world_size))  # each rank's finish step in its own world


def test_a_finish_plan_that_reads_the_world_would_fail_without_the_guard(monkeypatch):
    """Sabotage: with the guard forced open, the replaced finish_plan runs without a world."""
    sc = titan_scenario("llama-tiny", (2, 2, 2), ("pp", "dp_shard", "tp"))
    real = DefaultSavePlanner.finish_plan
    monkeypatch.setattr(
        DefaultSavePlanner,
        "finish_plan",
        lambda self, new_plan: (dist.get_rank(), real(self, new_plan))[1],
    )
    monkeypatch.setattr(fastpath, "finishes_without_world", lambda planner: True)
    assert not dcpviz.simulate_save(sc).ok


def test_a_broken_local_shape_memo_is_caught_on_the_save(monkeypatch):
    """The save shares the load's memo, and its check: the first repeat of a layout on another
    rank is asked of DTensor too, and the difference turns the memo off."""
    sc = titan_scenario("llama-tiny", (2, 4, 2), ("pp", "dp_shard", "tp"))
    plain = dcpviz.simulate_save(sc, fast=False)
    monkeypatch.setattr(
        fastpath.SharedLocalShapes, "key", staticmethod(shapes_key_without_coordinate)
    )
    answers = spy_on_check(monkeypatch, fastpath.SharedLocalShapes, "agrees")
    fast = dcpviz.simulate_save(sc)
    assert False in answers, "the check never saw the broken memo"
    _assert_same_as_plain(fast, plain)


def test_without_its_check_the_broken_memo_would_change_the_save(monkeypatch):
    sc = titan_scenario("llama-tiny", (2, 4, 2), ("pp", "dp_shard", "tp"))
    plain = dcpviz.simulate_save(sc, fast=False)
    monkeypatch.setattr(
        fastpath.SharedLocalShapes, "key", staticmethod(shapes_key_without_coordinate)
    )
    silence_check(monkeypatch, fastpath.SharedLocalShapes, "agrees")
    fast = dcpviz.simulate_save(sc)
    assert _records(fast, "local_plans") != _records(plain, "local_plans")


@pytest.mark.parametrize("sc", SCENARIOS, ids=_id)
def test_one_local_shape_cache_for_every_rank_gives_dcps_plans(sc):
    """The view and DCP's planner ask DTensor through one cache kept across all ranks."""
    with process_as_found():
        view = template_view(sc)
        shapes = fastpath.SharedLocalShapes()
        steps = shapes.shard_steps
        for r in range(sc.world_size):
            with fake_world(r, sc.world_size):
                with fastpath.memoized_shard_steps(steps), shapes.active():
                    sd, _ = view.view_with_leaves(r, {}, share_dtensors=True)
                p = DefaultSavePlanner()
                with (
                    fastpath.memoized_shard_steps(steps),
                    shapes.active(),
                    WriteItemMemo().active(),
                ):
                    p.set_up_planner(sd, is_coordinator=(r == 0))
                    got = p.create_local_plan()
            assert same_plan(got, plain_plan(sc, r)), f"rank {r}"


def test_set_up_asks_each_planner_classs_signature_once_and_right():
    """``set_up_save_planner`` remembers whether a class's set_up_planner takes storage_meta:
    an older planner without it and DCP's own with it are each called the way dcp.save would."""
    from dcpviz.engine.planning import planners

    calls = []

    class Old(DefaultSavePlanner):
        def set_up_planner(self, state_dict, is_coordinator=False):  # no storage_meta
            calls.append(("old", is_coordinator))

    class New(DefaultSavePlanner):
        def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False):
            calls.append(("new", storage_meta, is_coordinator))

    for _ in range(2):
        planners.set_up_save_planner(Old(), {}, is_coordinator=True)
        planners.set_up_save_planner(New(), {}, is_coordinator=False, storage_meta="sm")
    assert calls == [("old", True), ("new", "sm", False)] * 2
    assert Old.set_up_planner in planners._SIGNATURES and New.set_up_planner in planners._SIGNATURES
