"""Scenario validation: each user mistake is a DcpvizError naming the input and the fix."""

import pytest
import torch

import dcpviz
from dcpviz.core.errors import ScenarioError


@pytest.mark.parametrize(
    "kwargs,needles",
    [
        (
            dict(world_size=8, mesh=(2, 3), recipe="hsdp"),
            ["mesh=(2, 3)", "world_size=8", "mesh=(2, 4)"],
        ),
        (dict(world_size=8, recipe="hsdp"), ["needs a 2-D mesh", "mesh=(2, 4)"]),
        (dict(world_size=8, mesh=(8,), recipe="tp+fsdp"), ["needs a 2-D mesh", "1-D"]),
        (dict(world_size=7, recipe="hsdp"), ["needs a 2-D mesh", "mesh=(1, 7)"]),
        (dict(world_size=1, recipe="hsdp"), ["mesh=(1, 1)"]),
        (dict(world_size=7, mesh=(7,), recipe="tp+fsdp"), ["mesh=(1, 7)"]),
        (dict(world_size=5, mesh=(2.5, 2), recipe="hsdp"), ["mesh=(2.5, 2)", "tuple of ints"]),
        (dict(world_size=4, mesh=(2.0, 2), recipe="hsdp"), ["tuple of ints"]),
        (dict(world_size=8, mesh="24", recipe="hsdp"), ["tuple of ints"]),
        (
            dict(world_size=8, mesh=(2, 4), recipe="hsdp", mesh_dim_names=("shard", "replicate")),
            ["other way round", "mesh_dim_names=('replicate', 'shard') with mesh=(4, 2)"],
        ),
        (dict(model="llama3-7b"), ["llama3-7b", "Did you mean", "llama3-70b"]),
        (dict(model=42), ["neither a preset name nor a callable"]),
        (dict(recipe="fdsp"), ["fdsp", "Did you mean 'fsdp'"]),
        (dict(world_size=0), ["world_size=0", "positive"]),
        (dict(dtype="float13"), ["float13", "Use one of"]),
        (
            dict(world_size=8, mesh=(2, 4), recipe="hsdp", mesh_dim_names=("a",)),
            ["one name per mesh dim"],
        ),
        (dict(world_size=4, mesh=(2, 2), recipe="hsdp", mesh_dim_names=("a", "a")), ["repeats"]),
        (dict(device="tpu"), ["device='tpu'"]),
    ],
)
def test_bad_scenarios_name_the_input_and_fix(kwargs, needles):
    with pytest.raises(dcpviz.DcpvizError) as info:
        dcpviz.Scenario(**kwargs)
    assert isinstance(info.value, ScenarioError)
    for n in needles:
        assert n in str(info.value), str(info.value)


def test_defaults_and_normalisation():
    sc = dcpviz.Scenario(
        model="mlp", world_size=8, mesh=[2, 4], recipe="hsdp", dtype=torch.bfloat16
    )
    assert (
        sc.mesh == (2, 4) and sc.mesh_dim_names == ("replicate", "shard") and sc.dtype == "bfloat16"
    )
    assert sc.coordinate(5) == (1, 1)
    assert dcpviz.Scenario(world_size=6).mesh == (6,)
    assert dcpviz.Scenario(dtype="bf16").dtype == "bfloat16"
    np = pytest.importorskip("numpy")
    assert dcpviz.Scenario(world_size=8, mesh=(np.int64(2), 4), recipe="hsdp").mesh == (2, 4)
    # A 2-D recipe fits any world size: (1, W) is a mesh.
    assert dcpviz.Scenario(world_size=7, mesh=(1, 7), recipe="hsdp").mesh == (1, 7)


def test_tp_on_a_model_without_a_plan_is_a_clear_error():
    sc = dcpviz.Scenario(model=lambda: torch.nn.Linear(4, 4), world_size=2, recipe="tp")
    with pytest.raises(dcpviz.DcpvizError, match="tp_plan"):
        dcpviz.simulate_save(sc)


def test_user_callable_failures_name_the_callable():
    def broken():
        raise RuntimeError("boom")

    with pytest.raises(dcpviz.DcpvizError, match="broken.*boom"):
        dcpviz.simulate_save(dcpviz.Scenario(model=broken, world_size=2))

    def bad_recipe(model, mesh):
        raise KeyError("no such dim")

    with pytest.raises(dcpviz.DcpvizError, match="bad_recipe"):
        dcpviz.simulate_save(dcpviz.Scenario(world_size=2, recipe=bad_recipe))


def test_bad_planner_argument():
    with pytest.raises(dcpviz.DcpvizError, match="SavePlanner"):
        dcpviz.simulate_save(dcpviz.Scenario(world_size=2), planner="default")


class MixedDtypes(torch.nn.Module):
    """RoPE's complex64 frequencies, a float64 statistic, an int64 counter, a float32 weight."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8, bias=False)
        self.register_buffer("freqs_cis", torch.zeros(16, 4, dtype=torch.complex64))
        self.register_buffer("running", torch.zeros(8, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))


def planned_dtypes(scenario):
    wi = dcpviz.simulate_save(scenario).write_items
    rows = wi[wi["rank"] == 0].set_index("fqn")
    return {fqn: (rows["dtype"][fqn], int(rows["nbytes"][fqn])) for fqn in rows.index}


def test_default_dtype_keeps_the_models_own_dtypes():
    sc = dcpviz.Scenario(model=MixedDtypes, world_size=2, recipe="replicate")
    assert sc.dtype is None and sc.describe()["dtype"] == "as built"
    assert planned_dtypes(sc) == {
        "proj.weight": ("float32", 8 * 8 * 4),
        "freqs_cis": ("complex64", 16 * 4 * 8),
        "running": ("float64", 8 * 8),
        "step": ("int64", 8),
    }


def test_explicit_dtype_casts_floating_point_only():
    """As model.to(dtype) for floating-point tensors; complex and integer tensors untouched."""
    sc = dcpviz.Scenario(model=MixedDtypes, world_size=2, recipe="replicate", dtype="bfloat16")
    assert planned_dtypes(sc) == {
        "proj.weight": ("bfloat16", 8 * 8 * 2),
        "freqs_cis": ("complex64", 16 * 4 * 8),
        "running": ("bfloat16", 8 * 2),
        "step": ("int64", 8),
    }
