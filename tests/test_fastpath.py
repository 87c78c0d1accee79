"""Every shortcut of engine/fastpath.py gives exactly the full per-rank path's plans."""

import pytest
import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

import dcpviz

LAYOUTS = [
    dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"),
    dcpviz.Scenario(model="mlp", world_size=8, mesh=(4, 2), recipe="hsdp"),
    dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp"),
    dcpviz.Scenario(model="llama-tiny", world_size=6, recipe="fsdp"),
    dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="tp"),
    dcpviz.Scenario(model="mlp", world_size=5, recipe="replicate"),
]


def plans(result):
    t = result.trace
    resolve = lambda plans: [tuple(t.items[i] for i in p.items) for p in plans]  # noqa: E731
    return resolve(t.local_plans), resolve(t.global_plans), resolve(t.final_plans)


@pytest.mark.parametrize("scenario", LAYOUTS, ids=lambda s: f"{s.model}-{s.recipe}-{'x'.join(map(str, s.mesh))}")
def test_shortcuts_equal_full_path(scenario):
    fast = dcpviz.simulate_save(scenario)
    full = dcpviz.simulate_save(scenario, fast=False)
    assert fast.ok and full.ok
    assert plans(fast) == plans(full)
    assert fast.trace.metadata == full.trace.metadata
    assert fast.trace.layouts == full.trace.layouts


def test_replicated_dims_share_plans():
    res = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=8, mesh=(4, 2), recipe="hsdp"))
    assert any("2 representative ranks planned for 8" in n for n in res.trace.notes)
    # Shared plan objects still give every rank its own, correct, local plan record.
    assert res.trace.local_plans[0] == res.trace.local_plans[2] == res.trace.local_plans[6]
    assert res.trace.local_plans[0] != res.trace.local_plans[1]


class CountingPlanner(DefaultSavePlanner):
    calls = 0

    def create_local_plan(self):
        CountingPlanner.calls += 1
        return super().create_local_plan()


def test_other_planners_plan_every_rank():
    CountingPlanner.calls = 0
    res = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=8, mesh=(4, 2), recipe="hsdp"), planner=CountingPlanner)
    assert CountingPlanner.calls == 8 and not any("representative" in n for n in res.trace.notes)
    caching = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(4, 2), recipe="hsdp"),
        planner=lambda: DefaultSavePlanner(enable_plan_caching=True),
    )
    assert not any("representative" in n for n in caching.trace.notes)


def test_non_spmd_recipe_falls_back_to_every_rank():
    """A recipe whose placements depend on the rank: the template would be wrong; detected."""

    def lopsided(model, mesh):
        from torch.distributed.fsdp import fully_shard

        if mesh.get_coordinate()[0] == mesh.size() - 1:  # only the last rank shards fc2
            fully_shard(model.fc2, mesh=mesh)
        return model

    sc = dcpviz.Scenario(model="mlp", world_size=4, recipe=lopsided)
    # A user recipe runs on every rank by default...
    default = dcpviz.simulate_save(sc)
    assert not any("representative" in n or "SPMD" in n for n in default.trace.notes)
    # ...and when told to trust it (fast=True), the sample-rank check catches this one.
    fast = dcpviz.simulate_save(sc, fast=True)
    assert any("not SPMD" in n for n in fast.trace.notes)
    full = dcpviz.simulate_save(sc, fast=False)
    assert plans(fast) == plans(full) == plans(default)
    wi = fast.write_items
    assert set(wi[wi.fqn == "fc2.weight"].item_type) == {"TENSOR", "SHARD"}


def test_template_ranks_get_their_own_local_shapes():
    from dcpviz.engine import fastpath
    from dcpviz.engine.world import fake_world

    sc = dcpviz.Scenario(model="mlp", world_size=8, recipe="fsdp")
    template, _ = fastpath.template_state_dict(sc, [])
    with fake_world(7, 8):
        sd = fastpath.rank_view(template, 7, {})
        assert sd["fc1.weight"].to_local().shape == torch.Size([22, 16])  # 190 = 7*24 + 22
        assert sd["fc2.weight"].to_local().shape == torch.Size([0, 190])
        assert sd["fc1.weight"].device_mesh.get_coordinate() == (7,)


LOAD_CASES = [
    (dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"), dcpviz.Scenario(model="mlp", world_size=8, mesh=(4, 2), recipe="hsdp")),
    (dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="fsdp"), dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp")),
    (dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="hsdp"), dcpviz.Scenario(model="llama-tiny", world_size=6, recipe="replicate")),
]


@pytest.mark.parametrize("saved,target", LOAD_CASES, ids=["hsdp-to-hsdp", "fsdp-to-tp+fsdp", "hsdp-to-replicate"])
def test_load_shortcuts_equal_full_path(saved, target):
    save = dcpviz.simulate_save(saved)
    fast = dcpviz.simulate_load(save, target)
    full = dcpviz.simulate_load(save, target, fast=False)
    t, u = fast.trace, full.trace
    resolve = lambda tr, plans: [tuple(tr.reads[i] for i in p.items) for p in plans]  # noqa: E731
    for phase in ("local_plans", "global_plans", "final_plans"):
        assert resolve(t, getattr(t, phase)) == resolve(u, getattr(u, phase)), phase
    assert [tuple(t.wanted[i] for i in w) for w in t.wanted_by_rank] == [tuple(u.wanted[i] for i in w) for w in u.wanted_by_rank]
    assert t.mismatches == u.mismatches
