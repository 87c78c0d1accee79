"""simulate_load with pipeline stages (recipe='torchtitan', pp > 1): the load-side stage templates
(engine/shortcuts/load_stage_templates.py) give the plain path's trace (fast=False: every target
rank runs the recipe itself in its own fake world, DCP's full chunk scan), field by field.

Layouts: pp with dp_shard, tp (strided), dp_replicate (HSDP: ranks share plans), ep (moe-tiny);
resumes and reshards across PP degrees, to and from no PP, per-stage key sets that differ from the
checkpoint's (keys missing on one stage: DCP fails there; keys no stage reads), and nested
optimizer state. The last tests break one shortcut at a time and show that its self-check (or,
for world-free planning, the retry in the rank's own world) keeps the trace exact, and that
without it the break shows.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist
from sabotage import assert_the_break_shows, assert_the_check_catches, shapes_key_without_coordinate
from test_load_fast_equals_plain import differences
from test_titan_load import three_layers
from titan_reference import titan_scenario
from torch.distributed.checkpoint import default_planner

import dcpviz
from dcpviz.engine.shortcuts import fastpath, mesh_copies
from dcpviz.engine.shortcuts import load_stage_templates as lst
from dcpviz.engine.simulate import load as simulate_load

PP_DP = ("pp", "dp_shard")
PP_DP_TP = ("pp", "dp_shard", "tp")
# (id, saved scenario, target scenario)
LAYOUTS = [
    (
        "pp2xdp2-resume",
        titan_scenario("llama-tiny", (2, 2), PP_DP),
        titan_scenario("llama-tiny", (2, 2), PP_DP),
    ),
    (
        "pp2xdp2xtp2-resume-strided",
        titan_scenario("llama-tiny", (2, 2, 2), PP_DP_TP),
        titan_scenario("llama-tiny", (2, 2, 2), PP_DP_TP),
    ),
    (
        "pp2xdp3xtp2-uneven",
        titan_scenario("llama-tiny", (2, 2, 2), PP_DP_TP),
        titan_scenario("llama-tiny", (2, 3, 2), PP_DP_TP),
    ),
    (
        "hsdp-pp2xrep2xdp2-shares-plans",
        titan_scenario("llama-tiny", (2, 2, 2), ("pp", "dp_replicate", "dp_shard")),
        titan_scenario("llama-tiny", (2, 2, 2), ("pp", "dp_replicate", "dp_shard")),
    ),
    (
        "moe-pp2xdp2xep2-resume",
        titan_scenario("moe-tiny", (2, 2, 2), ("pp", "dp_shard", "ep")),
        titan_scenario("moe-tiny", (2, 2, 2), ("pp", "dp_shard", "ep")),
    ),
    (
        "moe-pp4-to-pp2",
        titan_scenario("moe-tiny", (4, 2), PP_DP),
        titan_scenario("moe-tiny", (2, 2), PP_DP),
    ),
    (
        "no-pp-to-pp2xtp2",
        titan_scenario("llama-tiny", (4,), ("dp_shard",)),
        titan_scenario("llama-tiny", (2, 2, 2), PP_DP_TP),
    ),
    (
        "3-layers-into-2-unread-keys",
        titan_scenario(three_layers, (2, 2), PP_DP),
        titan_scenario("llama-tiny", (2, 2), PP_DP),
    ),
    (
        "2-layers-into-3-missing-on-one-stage",
        titan_scenario("llama-tiny", (2, 2), PP_DP),
        titan_scenario(three_layers, (2, 2), PP_DP),
    ),
    (
        "adamw-pp2xdp2xtp2-nested",
        titan_scenario("llama-tiny", (2, 2, 2), PP_DP_TP, optimizer="adamw"),
        titan_scenario("llama-tiny", (2, 2, 2), PP_DP_TP, optimizer="adamw"),
    ),
]

_SAVES: dict = {}


def saved(sc):
    key = repr(sc)
    if key not in _SAVES:
        _SAVES[key] = dcpviz.simulate_save(sc, fast=False)
    return _SAVES[key]


class Spy:
    """Counts how often the stage views were used and whether every rank planned world-free."""

    def __init__(self, monkeypatch) -> None:
        self.views = 0
        self.retries = 0
        view, plan = lst.LoadStageViews.view, simulate_load._local_plan

        def counted_view(views, rank, storageless):
            self.views += 1
            return view(views, rank, storageless)

        def counted_plan(run, r, world_free):
            out = plan(run, r, world_free)
            self.retries += world_free and out is None
            return out

        monkeypatch.setattr(lst.LoadStageViews, "view", counted_view)
        monkeypatch.setattr(simulate_load, "_local_plan", counted_plan)


def both(saved_obj, target):
    fast = dcpviz.simulate_load(saved_obj, target)
    plain = dcpviz.simulate_load(saved_obj, target, fast=False)
    return fast, plain


@pytest.mark.parametrize("case", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_stage_templates_give_the_plain_trace(case, monkeypatch):
    _, s, target = case
    spy = Spy(monkeypatch)
    fast, plain = both(saved(s), target)
    assert plain.trace.local_plans, "nothing planned"
    assert differences(fast, plain) == []
    assert spy.views > 0, "the stage templates were not used"
    assert any("pipeline stages" in n for n in fast.trace.notes)


def test_layouts_cover_what_they_say(monkeypatch):
    """HSDP ranks share plans; a failing stage's ranks are retried in their own world (and fail
    there too, as in dcp.load); a clean load plans every rank world-free."""
    _, s, target = LAYOUTS[3]
    spy = Spy(monkeypatch)
    fast = dcpviz.simulate_load(saved(s), target)
    assert spy.views < target.world_size and spy.retries == 0
    assert any("representative ranks" in n for n in fast.trace.notes)
    _, s, target = LAYOUTS[8]
    spy = Spy(monkeypatch)
    failing = dcpviz.simulate_load(saved(s), target)
    assert {e.rank for e in failing.trace.errors} == {2, 3} and spy.retries == 2


def test_meshes_and_local_shapes_are_shared(monkeypatch):
    """The clones and the shared local shapes really answer (the shortcuts are taken)."""
    made = []
    init = lst.LoadStageViews.__init__

    def keep(self, *a):
        init(self, *a)
        made.append(self)

    monkeypatch.setattr(lst.LoadStageViews, "__init__", keep)
    _, s, target = LAYOUTS[1]
    dcpviz.simulate_load(saved(s), target)
    (views,) = made
    assert views.meshes.on and views.meshes.clones > 0
    assert views.shapes.on and views.shapes.hits > 0


# -- each shortcut's check catches the shortcut broken alone --------------------------------------
def _clone_with_rank_zero(state, rank, full=None):
    """A clone's coordinate of the mesh's first rank, whatever the rank."""
    full = mesh_copies.full_mesh(state) if full is None else full
    return REAL_COORDINATE(state, full[0].flatten()[0].item(), full)


REAL_COORDINATE = mesh_copies.coordinate_of
# (shortcut, owner, name, broken, owner of its check, check's name)
SABOTAGE = [
    ("MeshClones", mesh_copies, "coordinate_of", _clone_with_rank_zero, lst, "same_mesh"),
    (
        "SharedLocalShapes",
        fastpath.SharedLocalShapes,
        "key",
        staticmethod(shapes_key_without_coordinate),
        fastpath.SharedLocalShapes,
        "agrees",
    ),
]
SABOTAGED = LAYOUTS[1]


def _sabotaged_pair():
    return both(saved(SABOTAGED[1]), SABOTAGED[2])


@pytest.mark.parametrize("sabotage", SABOTAGE, ids=lambda s: s[0])
def test_the_self_check_catches_a_broken_shortcut(sabotage, monkeypatch):
    assert_the_check_catches(sabotage, monkeypatch, _sabotaged_pair, differences)


@pytest.mark.parametrize("sabotage", SABOTAGE, ids=lambda s: s[0])
def test_a_broken_shortcut_without_its_self_check_shows(sabotage, monkeypatch):
    assert_the_break_shows(sabotage, monkeypatch, _sabotaged_pair, differences)


# -- world-free planning: a DCP that reads the process group is planned in the rank's world -------
def _rank_reading_dcp(monkeypatch):
    """DCP's local load plan as a torch that reads the global rank would make it: odd ranks
    read nothing. World-free, get_rank() raises (no default group)."""
    original = default_planner.create_default_local_load_plan

    def reads_rank(state_dict, metadata, strict=True):
        plan = original(state_dict, metadata, strict)
        return plan if dist.get_rank() % 2 == 0 else type(plan)([])

    monkeypatch.setattr(default_planner, "create_default_local_load_plan", reads_rank)


def test_a_planner_reading_the_world_is_planned_in_the_world(monkeypatch):
    _rank_reading_dcp(monkeypatch)
    spy = Spy(monkeypatch)
    fast, plain = both(saved(SABOTAGED[1]), SABOTAGED[2])
    assert spy.retries > 0
    assert any(len(p.items) == 0 for p in plain.trace.local_plans)  # the sabotage is real
    assert differences(fast, plain) == []


def test_without_the_retry_a_planner_reading_the_world_shows(monkeypatch):
    _rank_reading_dcp(monkeypatch)
    monkeypatch.setattr(simulate_load, "retry_in_world", lambda exc: False)
    fast, plain = both(saved(SABOTAGED[1]), SABOTAGED[2])
    assert differences(fast, plain) != []


class _OwnPlanner(default_planner.DefaultLoadPlanner):
    """A planner other than DCP's own: no shared plans, no world-free planning."""


def test_another_planner_views_each_rank_in_its_world(monkeypatch):
    _, s, target = LAYOUTS[1]
    spy = Spy(monkeypatch)
    fast = dcpviz.simulate_load(saved(s), target, planner=_OwnPlanner)
    plain = dcpviz.simulate_load(saved(s), target, planner=_OwnPlanner, fast=False)
    assert differences(fast, plain) == []
    assert spy.views == 0 and any("pipeline stages" in n for n in fast.trace.notes)
