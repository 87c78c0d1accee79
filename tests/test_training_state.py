"""Scenario.optimizer / Scenario.state: the whole training state, planned exactly.

The reference for optimizer state is built by hand on every rank (moments as DTensors placed like
their parameter, a 0-d ``step`` tensor, FQN-keyed param groups: what DCP's ``get_state_dict``
documents) and planned with DCP's own planner."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from reference import hand_state_dict, plan_items, trace_items

import dcpviz
from dcpviz.engine.job.models import PRESETS

OPTIMIZER_CASES = [
    ("mlp", "fsdp", (4,), ("shard",), "adamw"),
    ("mlp", "hsdp", (2, 2), ("replicate", "shard"), "sgd"),
    ("llama-tiny", "fsdp", (4,), ("shard",), "adam"),
    ("llama-tiny", "tp", (4,), ("tp",), "adamw"),
    ("llama-tiny", "tp+fsdp", (2, 2), ("dp", "tp"), "adamw"),
    ("mlp", "replicate", (2,), ("dp",), "adamw"),
]
MOMENTS = {
    "adamw": ("exp_avg", "exp_avg_sq"),
    "adam": ("exp_avg", "exp_avg_sq"),
    "sgd": ("momentum_buffer",),
}


def hand_param_group(optimizer: str, fqns: list[str]) -> dict:
    """One param group as get_state_dict gives it: the optimizer's hyper-parameters, params by FQN."""
    from dcpviz.engine.job.training_state import OPTIMIZERS

    group = dict(OPTIMIZERS[optimizer]([torch.nn.Parameter(torch.empty(1))]).param_groups[0])
    group["params"] = list(fqns)
    return group


def hand_training_state(model_name, recipe, mesh, names, rank, optimizer):
    """{"model": ..., "optim": ...} for one rank, by hand: each moment is the parameter's own
    hand-built DTensor layout (same placements, same mesh); ``step`` a plain 0-d float tensor."""
    with torch.device("meta"):
        model = PRESETS[model_name]()
    model_sd = hand_state_dict(model, recipe, mesh, names, rank, llama=model_name != "mlp")
    params = [n for n, _ in model.named_parameters()]
    state = {}
    for fqn in params:
        entry = {} if optimizer == "sgd" else {"step": torch.tensor(0.0)}
        for m in MOMENTS[optimizer]:
            entry[m] = model_sd[fqn]
        state[fqn] = entry
    return {
        "model": model_sd,
        "optim": {"state": state, "param_groups": [hand_param_group(optimizer, params)]},
    }


@pytest.mark.parametrize("model,recipe,mesh,names,optimizer", OPTIMIZER_CASES)
def test_optimizer_write_items_equal_dcp_on_hand_built_dtensors(
    model, recipe, mesh, names, optimizer
):
    import math

    sc = dcpviz.Scenario(
        model=model,
        world_size=math.prod(mesh),
        mesh=mesh,
        mesh_dim_names=names,
        recipe=recipe,
        optimizer=optimizer,
    )
    res = dcpviz.simulate_save(sc)
    assert res.ok, res.errors
    for rank in range(sc.world_size):
        expected = plan_items(
            hand_training_state(model, recipe, mesh, names, rank, optimizer), rank
        )
        assert trace_items(res, rank) == expected, f"rank {rank}"
    moments = res.write_items[res.write_items.fqn.str.endswith(MOMENTS[optimizer][0])]
    assert len(moments) > 0 and set(moments.component) == {"optim"}


def user_state(model, optimizer, rank):
    """An app state that differs per rank: its own RNG tensor and data-loader key."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    assert dist.get_rank() == rank
    return {
        "model": model_sd,
        "optim": optim_sd,
        "rng": torch.tensor([rank, 7]),
        "loader": {f"rank_{rank}": {"offset": 100 * rank}},
        "step": 12,
    }


STATES = [None, "dcp-tutorial", "torchtitan", user_state]
LAYOUTS = [("hsdp", (2, 2)), ("tp+fsdp", (2, 2)), ("fsdp", (3,))]


def resolved_plans(result):
    t = result.trace
    return [[t.items[i] for i in p.items] for p in t.final_plans]


@pytest.mark.parametrize("state", STATES, ids=lambda s: getattr(s, "__name__", str(s)))
@pytest.mark.parametrize("recipe,mesh", LAYOUTS)
def test_fast_path_equals_per_rank_path_for_every_state(state, recipe, mesh):
    import math

    sc = dcpviz.Scenario(
        model="llama-tiny",
        world_size=math.prod(mesh),
        mesh=mesh,
        recipe=recipe,
        optimizer="adamw",
        state=state,
    )
    fast, full = dcpviz.simulate_save(sc), dcpviz.simulate_save(sc, fast=False)
    assert fast.ok and full.ok, (fast.errors, full.errors)
    assert resolved_plans(fast) == resolved_plans(full)
    assert fast.trace.metadata == full.trace.metadata
    per_rank = any("may differ from rank to rank" in n for n in fast.trace.notes)
    assert per_rank == (state in ("torchtitan", user_state))


def test_user_state_keeps_each_ranks_own_values():
    sc = dcpviz.Scenario(
        model="mlp", world_size=4, recipe="fsdp", optimizer="adamw", state=user_state
    )
    res = dcpviz.simulate_save(sc)
    wi = res.write_items
    assert sorted(wi[wi.fqn.str.startswith("loader.")].fqn) == [
        f"loader.rank_{r}.offset" for r in range(4)
    ]
    comps = dict(res.trace.scenario.components)
    assert comps == {
        "model": "model",
        "optim": "optim",
        "rng": "rng",
        "loader": "loader",
        "step": "step",
    }
    # DCP keeps one rank's copy of a plain tensor saved under one key by every rank.
    assert wi[(wi.fqn == "rng") & wi.kept.astype(bool)].shape[0] == 1


@pytest.mark.parametrize(
    "recipe,mesh,dp_keys",
    [
        ("hsdp", (2, 2), {0: 0, 1: 1, 2: 2, 3: 3}),
        ("tp+fsdp", (2, 2), {0: 0, 1: 0, 2: 1, 3: 1}),  # ("dp", "tp"): dp is the outer coordinate
        ("tp", (4,), {0: 0, 1: 0, 2: 0, 3: 0}),
    ],
)
def test_torchtitan_dataloader_has_one_key_per_dp_rank(recipe, mesh, dp_keys):
    sc = dcpviz.Scenario(
        model="llama-tiny",
        world_size=4,
        mesh=mesh,
        recipe=recipe,
        optimizer="adamw",
        state="torchtitan",
    )
    wi = dcpviz.simulate_save(sc).write_items
    got = {
        r.rank: int(r.fqn.removeprefix("dataloader.dp_rank_"))
        for r in wi.itertuples()
        if r.fqn.startswith("dataloader.dp_rank_")
    }
    assert got == dp_keys
    assert set(wi.component) == {"model", "optimizer", "lr_scheduler", "dataloader", "train_state"}
    # torchtitan's model keys sit at the top level and are still the model's.
    assert set(wi[wi.fqn.str.startswith("layers.")].component) == {"model"}


def test_tutorial_app_state_components_are_its_parts():
    sc = dcpviz.Scenario(
        model="mlp", world_size=2, recipe="fsdp", optimizer="adamw", state="dcp-tutorial"
    )
    res = dcpviz.simulate_save(sc)
    assert res.ok
    assert set(res.write_items.fqn.str.split(".").str[1]) == {"model", "optim"}
    assert set(res.write_items.component) == {"model", "optim"}


def test_optimizer_moments_are_twice_the_model_bytes_in_the_volume_table():
    sc = dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw")
    res = dcpviz.simulate_save(sc)
    by = res.volume_by_component.groupby("component").nbytes.sum()
    n_params = sum(p.numel() for p in PRESETS["llama-tiny"]().parameters())
    assert by["model"] == 4 * n_params
    # two float32 moments per parameter, plus one 4-byte step per parameter and the param
    # groups' hyper-parameters (small pickled values)
    steps = 4 * len(list(PRESETS["llama-tiny"]().parameters()))
    assert 2 * 4 * n_params + steps < by["optim"] < 1.01 * (2 * 4 * n_params)
    fig = dcpviz.views.rank_volume(res, by="component")
    assert {(t.meta or {}).get("module") for t in fig.data} >= {
        "model",
        "optim",
    }  # names carry bytes


def test_scenario_refuses_unknown_optimizer_and_state():
    with pytest.raises(dcpviz.DcpvizError, match="adamw"):
        dcpviz.Scenario(optimizer="adamx")
    with pytest.raises(dcpviz.DcpvizError, match="torchtitan"):
        dcpviz.Scenario(state="torchtitn")
    sc = dcpviz.Scenario(model="mlp", world_size=2, state=lambda m, o, r: [m.state_dict()])
    with pytest.raises(dcpviz.DcpvizError, match="needs a dict"):
        dcpviz.simulate_save(sc)

    def broken(model, optimizer, rank):
        raise KeyError("oops")

    with pytest.raises(dcpviz.DcpvizError, match="broken raised KeyError"):
        dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, state=broken))


def test_trace_records_optimizer_state_and_components(tmp_path):
    sc = dcpviz.Scenario(
        model="mlp", world_size=2, recipe="fsdp", optimizer="sgd", state="torchtitan"
    )
    res = dcpviz.simulate_save(sc)
    res.to_json(tmp_path / "t.json")
    back = dcpviz.load_trace(tmp_path / "t.json")
    info = back.trace.scenario
    assert (info.optimizer, info.state) == ("sgd", "torchtitan")
    assert info.components == res.trace.scenario.components
    assert list(back.write_items.component) == list(res.write_items.component)


def test_traces_without_the_new_fields_still_read(tmp_path):
    import json

    res = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2))
    res.to_json(tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    for name in ("optimizer", "state", "components"):
        doc["trace"]["scenario"].pop(name)
    (tmp_path / "old.json").write_text(json.dumps(doc))
    back = dcpviz.load_trace(tmp_path / "old.json")
    assert back.trace.scenario.optimizer == "" and set(back.write_items.component) == {"model"}


def test_explorer_picks_tensors_and_stacks_volume_by_component():
    sc = dcpviz.Scenario(
        model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw", state="torchtitan"
    )
    res = dcpviz.simulate_save(sc)
    groups = res.tensor_groups
    assert set(groups.component) == {
        "model",
        "optimizer",
        "lr_scheduler",
        "dataloader",
        "train_state",
    }
    ex = dcpviz.explore(res)
    assert [v for _, v in ex.component_picker.options][1:] == list(dict.fromkeys(groups.component))
    ex.component_picker.value = "optimizer"
    assert ex.group_picker.options and all(
        g.startswith("optimizer.") for g in ex.group_picker.options
    )
    ex.volume_mode.value = "component"
    bars = [
        t for t in ex.volume_fig.data if (t.meta or {}).get("role") != "mean"
    ]  # the mean is a legend entry
    assert {t.meta["module"] for t in bars} == set(groups.component)  # legend names carry bytes


def test_cli_and_report_show_the_training_state(tmp_path, capsys):
    from dcpviz.cli import main

    main(
        [
            "simulate",
            "--model",
            "mlp",
            "-W",
            "2",
            "--recipe",
            "fsdp",
            "--optimizer",
            "adamw",
            "--state",
            "dcp-tutorial",
            "--trace",
            str(tmp_path / "t.json"),
            "--report",
            str(tmp_path / "r.html"),
            "-q",
        ]
    )
    info = dcpviz.load_trace(tmp_path / "t.json").trace.scenario
    assert (info.optimizer, info.state) == ("adamw", "dcp-tutorial")
    assert "optimizer adamw · app state dcp-tutorial" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("state", [None, "torchtitan"])
def test_training_state_simulation_leaves_process_as_found(state):
    from test_process_state import _process_state, _traceback_text

    sc = dcpviz.Scenario(
        model="llama-tiny",
        world_size=8,
        mesh=(2, 4),
        recipe="tp+fsdp",
        optimizer="adamw",
        state=state,
    )
    dcpviz.simulate_save(sc.replace(world_size=2, mesh=(1, 2)))  # lazy imports are not state
    before = _process_state()
    before_loggers = before.pop("loggers")
    save = dcpviz.simulate_save(sc)
    load = dcpviz.simulate_load(
        save, sc.replace(world_size=4, mesh=None, mesh_dim_names=None, recipe="fsdp")
    )
    assert save.ok and len(load.read_items) > 0
    after = _process_state()
    after_loggers = after.pop("loggers")
    assert after == before
    assert {n: after_loggers[n] for n in before_loggers} == before_loggers
    assert "[rank" not in _traceback_text()
