"""Every shortcut of engine/shortcuts/fastpath.py gives exactly the full per-rank path's plans."""

import pytest
import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

import dcpviz
from dcpviz.engine.job.models import MLP

LAYOUTS = [
    dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"),
    dcpviz.Scenario(model="mlp", world_size=8, mesh=(4, 2), recipe="hsdp"),
    dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp"),
    dcpviz.Scenario(
        model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp", mesh_dim_names=("tp", "dp")
    ),
    dcpviz.Scenario(model="llama-tiny", world_size=6, recipe="fsdp"),
    dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="tp"),
    dcpviz.Scenario(model="mlp", world_size=5, recipe="replicate"),
]


def plans(result):
    t = result.trace
    resolve = lambda plans: [tuple(t.items[i] for i in p.items) for p in plans]  # noqa: E731
    return resolve(t.local_plans), resolve(t.global_plans), resolve(t.final_plans)


@pytest.mark.parametrize(
    "scenario",
    LAYOUTS,
    ids=lambda s: f"{s.model}-{s.recipe}-{'x'.join(map(str, s.mesh))}-{'.'.join(s.mesh_dim_names)}",
)
def test_shortcuts_equal_full_path(scenario):
    fast = dcpviz.simulate_save(scenario)
    full = dcpviz.simulate_save(scenario, fast=False)
    assert fast.ok and full.ok
    assert plans(fast) == plans(full)
    assert fast.trace.metadata == full.trace.metadata
    assert fast.trace.layouts == full.trace.layouts


def test_replicated_dims_share_plans():
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(4, 2), recipe="hsdp")
    )
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
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(4, 2), recipe="hsdp"),
        planner=CountingPlanner,
    )
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
    from dcpviz.engine.job.world import fake_world
    from dcpviz.engine.shortcuts import fastpath

    sc = dcpviz.Scenario(model="mlp", world_size=8, recipe="fsdp")
    template, _ = fastpath.template_state_dict(sc, [])
    with fake_world(7, 8):
        sd = fastpath.rank_view(template, 7, {})
        assert sd["fc1.weight"].to_local().shape == torch.Size([22, 16])  # 190 = 7*24 + 22
        assert sd["fc2.weight"].to_local().shape == torch.Size([0, 190])
        assert sd["fc1.weight"].device_mesh.get_coordinate() == (7,)


LOAD_CASES = [
    (
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"),
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(4, 2), recipe="hsdp"),
    ),
    (
        dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="fsdp"),
        dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp"),
    ),
    (
        dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="hsdp"),
        dcpviz.Scenario(model="llama-tiny", world_size=6, recipe="replicate"),
    ),
]


@pytest.mark.parametrize(
    "saved,target", LOAD_CASES, ids=["hsdp-to-hsdp", "fsdp-to-tp+fsdp", "hsdp-to-replicate"]
)
def test_load_shortcuts_equal_full_path(saved, target):
    save = dcpviz.simulate_save(saved)
    fast = dcpviz.simulate_load(save, target)
    full = dcpviz.simulate_load(save, target, fast=False)
    t, u = fast.trace, full.trace
    resolve = lambda tr, plans: [tuple(tr.reads[i] for i in p.items) for p in plans]  # noqa: E731
    for phase in ("local_plans", "global_plans", "final_plans"):
        assert resolve(t, getattr(t, phase)) == resolve(u, getattr(u, phase)), phase
    assert [tuple(t.wanted[i] for i in w) for w in t.wanted_by_rank] == [
        tuple(u.wanted[i] for i in w) for w in u.wanted_by_rank
    ]
    assert t.mismatches == u.mismatches


class NestedStateNet(MLP):
    """A model whose state_dict() nests as DCP users' state dicts do: DTensors one, two and
    four levels down, a list of DTensors, a list mixing plain tensors and a dict, and
    non-tensor leaves (numbers, a list of strings, the extra state's dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(4))

    def state_dict(self, *args, **kwargs):
        flat = super().state_dict(*args, **kwargs)
        return {
            "model": {"fc1": {"weight": flat["fc1.weight"], "bias": flat["fc1.bias"]}},
            "stack": [flat["fc2.weight"], flat["fc2.bias"]],
            "deep": {"norm": {"params": [flat["norm.weight"], {"bias": flat["norm.bias"]}]}},
            "buffers": [flat["scale"], {"step": flat["progress.step"]}],
            "extra": flat["progress._extra_state"],
            "epoch": 3,
            "names": ["fc1", "fc2"],
        }


NESTED_LAYOUTS = [
    dcpviz.Scenario(model=NestedStateNet, world_size=2, recipe="fsdp"),
    dcpviz.Scenario(model=NestedStateNet, world_size=8, mesh=(4, 2), recipe="hsdp"),
    dcpviz.Scenario(model=NestedStateNet, world_size=4, mesh=(2, 2), recipe="tp+fsdp"),
    dcpviz.Scenario(model=NestedStateNet, world_size=4, recipe="tp"),
]


@pytest.mark.parametrize(
    "scenario", NESTED_LAYOUTS, ids=lambda s: f"nested-{s.recipe}-{'x'.join(map(str, s.mesh))}"
)
def test_shortcuts_equal_full_path_on_nested_state_dicts(scenario):
    fast = dcpviz.simulate_save(scenario)
    full = dcpviz.simulate_save(scenario, fast=False)
    assert full.ok, full.errors
    assert fast.ok, fast.errors
    assert plans(fast) == plans(full)
    assert fast.trace.metadata == full.trace.metadata
    assert fast.trace.layouts == full.trace.layouts
    keys = set(fast.write_items.fqn)
    assert {
        "model.fc1.weight",
        "stack.0",
        "deep.norm.params.1.bias",
        "buffers.1.step",
        "epoch",
        "names",
    } <= keys
    # The nested DTensors are found: their placements are shown, and on a mesh whose first
    # dim replicates (hsdp 4x2), ranks still share plans by their shard coordinate.
    sharded = {"model.fc1.weight", "stack.0"} | (
        {"deep.norm.params.0"} if "sdp" in scenario.recipe else set()
    )
    assert {lay.fqn for lay in fast.trace.layouts} >= sharded
    if scenario.recipe == "hsdp":
        assert any("2 representative ranks planned for 8" in n for n in fast.trace.notes)


def test_nested_template_ranks_get_their_own_offsets():
    """Each rank's view holds its own shard of a DTensor four levels down (DTensor's own offsets)."""
    from torch.distributed.checkpoint.planner_helpers import _create_chunk_list

    from dcpviz.engine.job.world import fake_world
    from dcpviz.engine.shortcuts import fastpath

    sc = dcpviz.Scenario(model=NestedStateNet, world_size=2, recipe="fsdp")
    template, _ = fastpath.template_state_dict(sc, [])
    with fake_world(1, 2):
        sd = fastpath.rank_view(template, 1, {})
        norm_w = sd["deep"]["norm"]["params"][0]
        fc1_w = sd["model"]["fc1"]["weight"]
        assert norm_w.device_mesh.get_coordinate() == (1,)
        assert _create_chunk_list(fc1_w)[0].offsets == torch.Size([95, 0])
        assert _create_chunk_list(norm_w)[0].offsets == torch.Size([2])
        assert sd["epoch"] == 3 and sd["names"] == ["fc1", "fc2"]


def test_tensors_hidden_from_dcp_traversal_disable_the_template():
    """A tuple is a leaf to DCP (saved as bytes): a template holding DTensors inside one cannot
    be rebound, so every rank runs the recipe itself."""

    class TupleNet(MLP):
        def state_dict(self, *args, **kwargs):
            flat = super().state_dict(*args, **kwargs)
            return {**flat, "pair": (flat["fc1.bias"], 1)}

    notes = []
    from dcpviz.engine.shortcuts import fastpath

    template, _ = fastpath.template_state_dict(
        dcpviz.Scenario(model=TupleNet, world_size=2, recipe="fsdp"), notes
    )
    assert template is None and "'pair' holds tensors" in notes[0]


NESTED_LOAD_CASES = [
    (
        dcpviz.Scenario(model=NestedStateNet, world_size=2, recipe="fsdp"),
        dcpviz.Scenario(model=NestedStateNet, world_size=8, mesh=(4, 2), recipe="hsdp"),
    ),
    (
        dcpviz.Scenario(model=NestedStateNet, world_size=8, mesh=(2, 4), recipe="hsdp"),
        dcpviz.Scenario(model=NestedStateNet, world_size=4, mesh=(2, 2), recipe="tp+fsdp"),
    ),
]


@pytest.mark.parametrize("saved,target", NESTED_LOAD_CASES, ids=["fsdp-to-hsdp", "hsdp-to-tp+fsdp"])
def test_load_shortcuts_equal_full_path_on_nested_state_dicts(saved, target):
    save = dcpviz.simulate_save(saved, fast=False)
    assert save.ok, save.errors
    fast = dcpviz.simulate_load(save, target)
    full = dcpviz.simulate_load(save, target, fast=False)
    assert not full.trace.errors and not fast.trace.errors, fast.trace.errors
    t, u = fast.trace, full.trace
    resolve = lambda tr, plans: [tuple(tr.reads[i] for i in p.items) for p in plans]  # noqa: E731
    for phase in ("local_plans", "global_plans", "final_plans"):
        assert resolve(t, getattr(t, phase)) == resolve(u, getattr(u, phase)), phase
    assert [tuple(t.wanted[i] for i in w) for w in t.wanted_by_rank] == [
        tuple(u.wanted[i] for i in w) for w in u.wanted_by_rank
    ]
    assert t.mismatches == u.mismatches


def test_a_planner_that_does_not_flatten_gets_every_ranks_own_state_dict():
    """DefaultSavePlanner(flatten_state_dict=False) saves each top-level container whole, as
    bytes: the template's rebuilt containers would not stand for a rank's own."""
    sc = dcpviz.Scenario(model=NestedStateNet, world_size=4, mesh=(2, 2), recipe="hsdp")

    def make():
        return DefaultSavePlanner(flatten_state_dict=False)

    fast, full = (
        dcpviz.simulate_save(sc, planner=make),
        dcpviz.simulate_save(sc, planner=make, fast=False),
    )
    assert fast.ok and full.ok
    assert plans(fast) == plans(full)
    assert not any("representative" in n for n in fast.trace.notes)
