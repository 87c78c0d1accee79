"""Parallelism recipes: how a model's parameters become DTensors on a device mesh.

A recipe is ``(model, device_mesh) -> model``. The named ones call PyTorch's own APIs
(``fully_shard``, ``parallelize_module``) exactly as a training script would; they never build
placements by hand, so the plans dcpviz shows are the plans those APIs lead to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from .errors import DcpvizError


@dataclass(frozen=True)
class Recipe:
    name: str
    mesh_ndim: int | None  # None: any
    dim_names: tuple[str, ...] | None
    apply: Callable[[nn.Module, Any], nn.Module]
    summary: str


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The submodules that get their own ``fully_shard`` call (then the root gets one).

    Presets say which (transformer blocks, as torchtitan does); for other models: the children
    of a ``layers`` container if there is one, else every direct child that owns parameters.
    """
    if hasattr(model, "fsdp_units"):
        return list(model.fsdp_units())
    layers = getattr(model, "layers", None)
    if isinstance(layers, (nn.ModuleList, nn.ModuleDict)):
        return list(layers.children())
    return [c for c in model.children() if any(True for _ in c.parameters())]


def _fully_shard_all(model: nn.Module, mesh: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def tp_plan_of(model: nn.Module) -> dict[str, Any]:
    plan = getattr(model, "tp_plan", None)
    if plan is None:
        raise DcpvizError(
            f"recipe 'tp' needs a tensor-parallel plan but {type(model).__name__} has no tp_plan(). "
            "Use a preset ('mlp', 'llama-tiny', 'llama3-8b', 'llama3-70b'), give your model a "
            "tp_plan() method returning a parallelize_module plan, or pass a callable recipe."
        )
    return plan() if callable(plan) else dict(plan)


def replicate(model: nn.Module, mesh: Any) -> nn.Module:
    """DDP-like: every rank holds the whole model as plain tensors."""
    return model


def fsdp(model: nn.Module, mesh: Any) -> nn.Module:
    return _fully_shard_all(model, mesh)


def hsdp(model: nn.Module, mesh: Any) -> nn.Module:
    # fully_shard on a 2-D mesh: dim 0 replicates, dim 1 shards (HSDP).
    return _fully_shard_all(model, mesh)


def tp(model: nn.Module, mesh: Any) -> nn.Module:
    from torch.distributed.tensor.parallel import parallelize_module

    return parallelize_module(model, mesh, tp_plan_of(model))


def tp_fsdp(model: nn.Module, mesh: Any) -> nn.Module:
    """torchtitan's 2-D recipe: TP on the inner dim, FSDP on the outer (strided shards)."""
    from torch.distributed.tensor.parallel import parallelize_module

    dp_name, tp_name = mesh.mesh_dim_names
    parallelize_module(model, mesh[tp_name], tp_plan_of(model))
    return _fully_shard_all(model, mesh[dp_name])


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("replicate", None, None, replicate, "plain tensors on every rank (DDP-like)"),
        Recipe("fsdp", 1, ("shard",), fsdp, "fully_shard on a 1-D mesh"),
        Recipe("hsdp", 2, ("replicate", "shard"), hsdp, "fully_shard on a 2-D replicate x shard mesh"),
        Recipe("tp", 1, ("tp",), tp, "parallelize_module with the model's TP plan"),
        Recipe("tp+fsdp", 2, ("dp", "tp"), tp_fsdp, "TP on the inner dim, fully_shard on the outer"),
    )
}


def recipe_name(recipe: str | Callable[..., Any]) -> str:
    if isinstance(recipe, str):
        return recipe
    mod = getattr(recipe, "__module__", None) or "?"
    qual = getattr(recipe, "__qualname__", None) or type(recipe).__name__
    return f"callable:{mod}.{qual}"


def recipe_mesh_ndim(recipe: str | Callable[..., Any]) -> int | None:
    return RECIPES[recipe].mesh_ndim if isinstance(recipe, str) and recipe in RECIPES else None


def apply_recipe(recipe: str | Callable[..., Any], model: nn.Module, mesh: Any) -> nn.Module:
    """Run the recipe; a user callable that raises becomes a UserCodeError naming it."""
    from .errors import UserCodeError

    fn = RECIPES[recipe].apply if isinstance(recipe, str) else recipe
    try:
        out = fn(model, mesh)
    except DcpvizError:
        raise
    except Exception as exc:
        if isinstance(recipe, str):
            raise  # our own recipe failing is our bug: keep the traceback
        raise UserCodeError(
            f"the recipe {recipe_name(recipe)} raised {type(exc).__name__}: {exc}. "
            "A recipe takes (model, device_mesh) and returns the sharded model."
        ) from exc
    if out is not None and not isinstance(out, nn.Module):
        raise UserCodeError(
            f"the recipe {recipe_name(recipe)} returned a value of type {type(out).__name__}, not the model. "
            "A recipe takes (model, device_mesh) and returns the sharded nn.Module (or None when "
            "it shards the model in place)."
        )
    return model if out is None else out
