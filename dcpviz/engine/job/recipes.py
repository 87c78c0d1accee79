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
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import parallelize_module

from dcpviz.core.errors import DcpvizError, UserCodeError
from dcpviz.engine.job.titan_recipe import apply_torchtitan


@dataclass(frozen=True)
class Recipe:
    """A named parallelism recipe: how it shards a model over a mesh."""

    name: str
    mesh_ndim: int | None  # None: any
    dim_names: tuple[str, ...] | None
    apply: Callable[[nn.Module, Any], nn.Module]
    summary: str


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The submodules that get their own ``fully_shard`` call (then the root gets one): what a
    training script wraps.

    Presets say which (transformer blocks, as torchtitan does). For other models: each block of
    the model's repeated stacks (``repeated_stacks``: a ``layers``/``blocks``/``h`` list at any
    depth, e.g. nanoGPT's ``transformer.h``; a block without ``forward``, such as a
    ``ModuleDict``, by its children that have one); without a stack, every child that owns
    parameters, looking through containers that have no ``forward`` (``fully_shard`` refuses those). A
    module that shares a parameter with anything outside it (tied input/output embeddings) is
    never a unit of its own: its parameters stay with the root's unit.
    """
    if hasattr(model, "fsdp_units"):
        return list(model.fsdp_units())
    stacks = repeated_stacks(model)
    candidates = (
        [unit for stack in stacks for unit in wrappable(stack)]
        if stacks
        else parameter_children(model)
    )
    owners = parameter_owners(model)
    return [m for m in candidates if owns_its_parameters(m, owners)]


def is_forwardless_container(module: nn.Module) -> bool:
    """A ``ModuleList``/``ModuleDict`` (or subclass) without its own ``forward``: ``fully_shard``
    refuses it, and a training script wraps what it holds instead."""
    return (
        isinstance(module, (nn.ModuleList, nn.ModuleDict))
        and type(module).forward is nn.Module.forward
    )


def is_repeated_stack(module: nn.Module) -> bool:
    """A list, dict or Sequential of blocks: two or more children, all of one class, each owning
    parameters (a transformer's layers; a one-layer stack is found by ``parameter_children``)."""
    if not isinstance(module, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
        return False
    children = list(module.children())
    return (
        len(children) >= 2
        and len({type(c) for c in children}) == 1
        and all(any(True for _ in c.parameters()) for c in children)
    )


def repeated_stacks(model: nn.Module) -> list[nn.Module]:
    """The outermost repeated stacks under ``model``, breadth first (an encoder's and a
    decoder's layers both; not the experts list inside each block of a stack)."""
    found: list[nn.Module] = []
    queue = list(model.children())
    while queue:
        module = queue.pop(0)
        if is_repeated_stack(module):
            found.append(module)
        else:
            queue.extend(module.children())
    return found


def parameter_children(module: nn.Module) -> list[nn.Module]:
    """Children that own parameters, with forward-less containers replaced by what they hold."""
    out: list[nn.Module] = []
    for child in module.children():
        if is_forwardless_container(child):
            out += parameter_children(child)
        elif any(True for _ in child.parameters()):
            out.append(child)
    return out


def wrappable(stack: nn.Module) -> list[nn.Module]:
    """The blocks of a repeated stack as ``fully_shard`` accepts them: a block that is a
    container without ``forward`` (a ``ModuleDict`` of attention and MLP) is replaced by its
    children that own parameters and have one, as a training script wraps them."""
    out: list[nn.Module] = []
    for block in stack.children():
        out += parameter_children(block) if is_forwardless_container(block) else [block]
    return out


def parameter_owners(model: nn.Module) -> dict[int, set[int]]:
    """id(parameter) -> ids of every module that holds it directly (a tied weight has several)."""
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(id(module))
    return owners


def owns_its_parameters(unit: nn.Module, owners: dict[int, set[int]]) -> bool:
    """True when no parameter of ``unit`` is also held by a module outside it."""
    inside = {id(m) for m in unit.modules()}
    return all(owners[id(p)] <= inside for p in unit.parameters())


def _fully_shard_all(model: nn.Module, mesh: Any) -> nn.Module:
    if is_forwardless_container(model):
        raise DcpvizError(
            f"the model is a {type(model).__name__} without forward; the FSDP recipes end with "
            "fully_shard(model), which refuses such containers (as in a training script). Return "
            "the module that holds it (one with a forward) from the model factory, or pass a "
            "callable recipe."
        )
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def tp_plan_of(model: nn.Module) -> dict[str, Any]:
    """A model's tensor-parallel plan (its ``tp_plan()``), or a DcpvizError naming the fix."""
    plan = getattr(model, "tp_plan", None)
    if plan is None:
        raise DcpvizError(
            f"recipe 'tp' needs a tensor-parallel plan but {type(model).__name__} has no tp_plan(). "
            "Use a preset ('mlp', 'llama-tiny', 'llama3-8b', 'llama3-70b'), give your model a "
            "tp_plan() method returning a parallelize_module plan, or pass a callable recipe."
        )
    plan = plan() if callable(plan) else dict(plan)
    named = sorted({v for v in plan.values() if isinstance(v, str)})
    from_hf = hasattr(model, "config") and hasattr(model, "base_model_prefix")
    if named or (not plan and from_hf):
        # Hugging Face models carry ``tp_plan`` as style *names* applied by transformers' own
        # sharding code ('colwise', 'packed_colwise', 'moe_tp_experts'); reading them as
        # torch ParallelStyles would plan something transformers does not do.
        what = f"style names ({', '.join(map(repr, named[:4]))})" if named else "an empty plan"
        raise DcpvizError(
            f"recipe 'tp' needs a parallelize_module plan but {type(model).__name__}.tp_plan holds {what}: "
            "Hugging Face's tensor-parallel plan, which transformers applies with its own code. Pass a callable "
            "recipe (model, device_mesh) -> model that calls parallelize_module with torch ParallelStyles, "
            "or use an FSDP recipe."
        )
    return plan


def replicate(model: nn.Module, mesh: Any) -> nn.Module:
    """DDP-like: every rank holds the whole model as plain tensors."""
    return model


def fsdp(model: nn.Module, mesh: Any) -> nn.Module:
    """fully_shard every FSDP unit, then the whole model, over a 1-D mesh."""
    return _fully_shard_all(model, mesh)


def hsdp(model: nn.Module, mesh: Any) -> nn.Module:
    """fully_shard over a 2-D mesh: replicate along the first dim, shard along the second."""
    # fully_shard on a 2-D mesh: dim 0 replicates, dim 1 shards (HSDP).
    return _fully_shard_all(model, mesh)


def tp(model: nn.Module, mesh: Any) -> nn.Module:
    """parallelize_module with the model's tensor-parallel plan."""
    return parallelize_module(model, mesh, tp_plan_of(model))


def tp_fsdp_dims(names: tuple[str, str]) -> tuple[str, str]:
    """(FSDP's mesh dim, TP's mesh dim) by name: TP on the dim named "tp" (else the one not
    named "dp"; else the inner one, as torchtitan lays out ``("dp", "tp")``)."""
    outer, inner = names
    if outer == "tp" or inner == "dp":
        return inner, outer
    return outer, inner


def tp_fsdp(model: nn.Module, mesh: Any) -> nn.Module:
    """torchtitan's 2-D recipe: TP on the dim named "tp" (the inner one by default), FSDP on
    the other (strided shards)."""
    dp_name, tp_name = tp_fsdp_dims(tuple(mesh.mesh_dim_names))
    parallelize_module(model, mesh[tp_name], tp_plan_of(model))
    return _fully_shard_all(model, mesh[dp_name])


def torchtitan(model: nn.Module, mesh: Any) -> nn.Module:
    """torchtitan's parallelisms, chosen by the mesh's dim names (``engine/job/titan_recipe.py``)."""
    return apply_torchtitan(model, mesh, tp_plan_of, fsdp_units)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("replicate", None, None, replicate, "plain tensors on every rank (DDP-like)"),
        Recipe("fsdp", 1, ("shard",), fsdp, "fully_shard on a 1-D mesh"),
        Recipe(
            "hsdp", 2, ("replicate", "shard"), hsdp, "fully_shard on a 2-D replicate x shard mesh"
        ),
        Recipe("tp", 1, ("tp",), tp, "parallelize_module with the model's TP plan"),
        Recipe(
            "tp+fsdp",
            2,
            ("dp", "tp"),
            tp_fsdp,
            "TP on the dim named 'tp' (inner by default), fully_shard on the other",
        ),
        Recipe(
            "torchtitan",
            None,
            None,
            torchtitan,
            "torchtitan's PP, HSDP, FSDP, TP, EP, chosen by mesh_dim_names (pp, dp_replicate, dp_shard, ep, cp, tp)",
        ),
    )
}


def recipe_name(recipe: str | Callable[..., Any]) -> str:
    """A recipe's name for summaries and messages."""
    if isinstance(recipe, str):
        return recipe
    mod = getattr(recipe, "__module__", None) or "?"
    qual = getattr(recipe, "__qualname__", None) or type(recipe).__name__
    return f"callable:{mod}.{qual}"


def recipe_mesh_ndim(recipe: str | Callable[..., Any]) -> int | None:
    """How many mesh dims a named recipe needs (None: any)."""
    return RECIPES[recipe].mesh_ndim if isinstance(recipe, str) and recipe in RECIPES else None


def apply_recipe(recipe: str | Callable[..., Any], model: nn.Module, mesh: Any) -> nn.Module:
    """Run the recipe; a user callable that raises becomes a UserCodeError naming it."""

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
