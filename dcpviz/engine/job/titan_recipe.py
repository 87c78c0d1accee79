"""recipe="torchtitan": the parallelisms named by ``mesh_dim_names``, applied as torchtitan does.

The mesh's dims are torchtitan's parallel dims (``torchtitan/distributed/parallel_dims.py``,
``ParallelDims``), any subset, in its order ``pp, dp_replicate, dp_shard, cp, tp``, with ``ep``
right after ``dp_shard``:

- ``pp``: pipeline stages (``engine/job/pipeline_stages.py``, torchtitan's
  ``generate_llm_fqn_per_model_part`` + ``pipeline_module_split``); each rank keeps only its
  stage's modules, so key sets differ per stage.
- ``tp``: torchtitan's TP plan (``torchtitan/models/llama3/infra/parallelize.py``
  ``apply_non_moe_tp``: the model's ``tp_plan()``; deepseek_v3's for MLA,
  ``engine/job/deepseek.py``), and for MoE blocks ``apply_moe_ep_tp``.
- ``dp_shard``: FSDP2. As in torchtitan, FSDP shards over ``dp_shard`` and ``cp`` together
  (its ``dp_shard_cp`` mesh is the flattening of both), so ``cp`` adds no state of its own: with
  ``cp`` alone, FSDP shards over ``cp`` exactly as torchtitan's ``fsdp_enabled`` does.
- ``dp_replicate``: HSDP (``fully_shard`` on the 2-D ``(dp_replicate, dp_shard_cp)`` mesh); alone
  (no ``dp_shard``/``cp``) it is torchtitan's DDP: plain tensors everywhere.
- ``ep``: expert parallelism. In torchtitan EP borrows its degree from ``dp_shard`` (x ``cp``);
  here the mesh names the borrowed part explicitly: ``dp_shard`` is what torchtitan calls
  ``dp_shard_mod_ep`` (``efsdp``) and ``ep`` is ``dp_shard_in_ep``, so torchtitan's own
  ``dp_shard`` degree is ``dp_shard * ep`` and the product of the mesh is the world size.
  Experts are distributed ``Shard(0)`` on ``ep`` (``engine/job/experts.py``) and FSDP-sharded on
  ``dp_shard`` (torchtitan's ``apply_fsdp``: ``Shard(1)`` when ``dp_shard * ep`` exceeds the
  experts); every other parameter is FSDP-sharded over ``dp_shard x ep`` (``x cp``).

The FSDP units are torchtitan's ``apply_fsdp``: ``tok_embeddings``, each block (its routed
experts first, on their own mesh, when EP is on), ``[norm, output]`` together, the root.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch.nn as nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import parallelize_module

from dcpviz.core.errors import DcpvizError, ScenarioError, did_you_mean
from dcpviz.engine.job.experts import moe_blocks, num_experts_of, shard_experts
from dcpviz.engine.job.pipeline_stages import check_pipelinable, keep_stage, stage_modules

TITAN_DIMS = ("pp", "dp_replicate", "dp_shard", "ep", "cp", "tp")
# Names other recipes and frameworks use for torchtitan's dims (the error says which one is meant).
_ALIASES = {
    "fsdp": "dp_shard",
    "shard": "dp_shard",
    "dp": "dp_shard",
    "replicate": "dp_replicate",
    "ddp": "dp_replicate",
    "hsdp": "dp_replicate",
    "pipeline": "pp",
    "expert": "ep",
    "context": "cp",
}
_EXAMPLE = "e.g. mesh=(2, 2, 2), mesh_dim_names=('pp', 'dp_shard', 'tp')"


def titan_dim_names(mesh: tuple[int, ...], names: Any) -> tuple[str, ...]:
    """Validate a torchtitan mesh's dim names (ScenarioError naming the fix); return them."""
    if names is None:
        raise ScenarioError(
            "recipe='torchtitan' chooses the parallelisms by mesh_dim_names, and none were given. "
            f"Name each mesh dim with torchtitan's names {TITAN_DIMS}, {_EXAMPLE}."
        )
    if isinstance(names, str):
        names = tuple(n.strip() for n in names.split(","))
    names = tuple(str(n) for n in names)
    if len(names) != len(mesh):
        raise ScenarioError(
            f"mesh_dim_names={names} has {len(names)} names but mesh={mesh} has {len(mesh)} dims. "
            "Give one torchtitan name per mesh dim."
        )
    for n in names:
        if n not in TITAN_DIMS:
            hint = (
                f" Did you mean {_ALIASES[n]!r}?" if n in _ALIASES else did_you_mean(n, TITAN_DIMS)
            )
            raise ScenarioError(
                f"mesh_dim_names={names}: {n!r} is not a torchtitan parallel dim.{hint} "
                f"Use names from {TITAN_DIMS}, {_EXAMPLE}."
            )
    if len(set(names)) != len(names):
        raise ScenarioError(f"mesh_dim_names={names} repeats a name; each mesh dim needs its own.")
    order = sorted(names, key=TITAN_DIMS.index)
    if list(names) != order:
        sizes = dict(zip(names, mesh))
        raise ScenarioError(
            f"mesh_dim_names={names} are not in torchtitan's order {TITAN_DIMS} (ParallelDims lays "
            f"the mesh out that way, so ranks' coordinates depend on it). Use "
            f"mesh={tuple(sizes[n] for n in order)}, mesh_dim_names={tuple(order)}."
        )
    sizes = dict(zip(names, mesh))
    if "ep" in sizes and "dp_shard" not in sizes:
        raise ScenarioError(
            f"mesh_dim_names={names}: 'ep' borrows its ranks from FSDP's dp_shard (torchtitan's "
            "dp_shard_in_ep), and the experts are FSDP-sharded over what is left (dp_shard_mod_ep, "
            "which torchtitan keeps even when it is 1). Add a 'dp_shard' dim in front of 'ep', "
            "e.g. mesh=(1, 4), mesh_dim_names=('dp_shard', 'ep')."
        )
    if sizes.get("ep", 1) > 1 and sizes.get("cp", 1) > 1:
        raise ScenarioError(
            f"mesh_dim_names={names}: 'ep' together with 'cp' is not simulated (torchtitan borrows "
            "all of cp into ep). Drop 'cp' (it adds no state of its own) or 'ep'."
        )
    return names


def per_stage_state(scenario: Any) -> bool:
    """Whether ranks hold different modules (recipe 'torchtitan' with pp > 1): no one rank's state
    dict stands for the others, so the SPMD shortcuts of ``engine/shortcuts/fastpath.py`` do not apply."""
    if scenario.recipe != "torchtitan":
        return False
    sizes = dict(zip(scenario.mesh_dim_names or (), scenario.mesh or ()))
    return sizes.get("pp", 1) > 1


def _sizes(mesh: Any) -> dict[str, int]:
    return dict(zip(mesh.mesh_dim_names, mesh.shape))


def check_model_fits(model: nn.Module, sizes: dict[str, int]) -> None:
    """Model-dependent checks: pp against the layers (``stage_modules`` raises), ep against the
    experts, tp against what the model's TP plan needs."""
    ep = sizes.get("ep", 1)
    if ep > 1:
        experts = num_experts_of(model)
        if experts is None:
            raise DcpvizError(
                f"mesh dim 'ep'={ep} shards experts, but {type(model).__name__} has no MoE blocks "
                "(grouped experts under layers.N.moe.experts). Use a MoE preset ('moe-tiny', "
                "'mixtral-8x7b', 'deepseek-tiny', 'deepseek-v3') or drop 'ep' from mesh_dim_names."
            )
        if experts % ep:
            divisors = [d for d in range(1, experts + 1) if experts % d == 0]
            raise DcpvizError(
                f"mesh dim 'ep'={ep} does not divide the model's {experts} experts; torchtitan's "
                f"expert parallelism gives each EP rank experts // ep of them. Use ep in {divisors}."
            )


def _fsdp_meshes(mesh: Any, sizes: dict[str, int]) -> tuple[Any, Any]:
    """(FSDP mesh for all parameters, FSDP mesh for routed experts) as torchtitan builds them;
    None where there is no FSDP."""
    shard_dims = [d for d in ("dp_shard", "ep", "cp") if d in sizes]
    if not shard_dims:
        return None, None
    if len(shard_dims) == 1:
        shard_name, flat = shard_dims[0], mesh[shard_dims[0]]
    else:
        shard_name = "dp_shard_cp"
        # The flattened mesh itself (torch deprecates slicing a flattened dim from the root);
        # HSDP's 2-D mesh still needs the slice, as torchtitan's ParallelDims took it.
        flat = mesh[tuple(shard_dims)]._flatten(shard_name)
    dp = mesh[("dp_replicate", shard_name)] if "dp_replicate" in sizes else flat
    edp = None
    if "ep" in sizes and "dp_shard" in sizes:
        edp = mesh[("dp_replicate", "dp_shard")] if "dp_replicate" in sizes else mesh["dp_shard"]
    return dp, edp


def apply_torchtitan(
    model: nn.Module,
    mesh: Any,
    tp_plan_of: Callable[[nn.Module], dict],
    fsdp_units: Callable[[nn.Module], list],
) -> nn.Module:
    """torchtitan's parallelisms on ``model`` for this rank (see the module docstring).
    ``tp_plan_of`` and ``fsdp_units``: the recipes' own (``engine/job/recipes.py``), for models that
    are not torchtitan-shaped."""
    sizes = _sizes(mesh)
    unknown = [n for n in sizes if n not in TITAN_DIMS]
    if unknown:
        raise DcpvizError(
            f"recipe 'torchtitan' got mesh dims {unknown}; use names from {TITAN_DIMS}."
        )
    check_model_fits(model, sizes)
    if "pp" in sizes:
        stages = stage_modules(sizes["pp"], check_pipelinable(model))
        keep_stage(model, stages[mesh["pp"].get_local_rank()])
    tp_mesh = mesh["tp"] if "tp" in sizes else None
    ep_mesh = mesh["ep"] if "ep" in sizes else None
    if tp_mesh is not None:
        present = {n for n, _ in model.named_modules()}
        plan = {k: v for k, v in tp_plan_of(model).items() if "*" in k or k in present}
        parallelize_module(model, tp_mesh, plan)
    if tp_mesh is not None or ep_mesh is not None:
        shard_experts(
            model,
            tp_mesh,
            ep_mesh,
            mesh[("ep", "tp")] if tp_mesh is not None and ep_mesh is not None else None,
        )
    dp_mesh, edp_mesh = _fsdp_meshes(mesh, sizes)
    if dp_mesh is None:
        if (
            "dp_replicate" in sizes
            and len(sizes) > 1
            and math.prod(sizes.values()) != sizes["dp_replicate"]
        ):
            raise DcpvizError(
                f"mesh dims {tuple(sizes)}: 'dp_replicate' without 'dp_shard' is torchtitan's DDP, "
                "which it refuses with other parallelisms ('DDP has not supported > 1D parallelism'). "
                "Add a 'dp_shard' dim (HSDP) or drop the other dims."
            )
        return model
    _apply_fsdp(model, dp_mesh, edp_mesh, sizes, fsdp_units)
    return model


def _apply_fsdp(
    model: nn.Module,
    dp_mesh: Any,
    edp_mesh: Any,
    sizes: dict[str, int],
    fsdp_units: Callable[[nn.Module], list],
) -> None:
    """torchtitan's ``apply_fsdp`` units, in its order."""
    if getattr(model, "tok_embeddings", None) is not None:
        fully_shard(model.tok_embeddings, mesh=dp_mesh)
    moe = {id(b) for b in moe_blocks(model)}
    layers = getattr(model, "layers", None)
    blocks = list(layers.values() if isinstance(layers, nn.ModuleDict) else layers or [])
    if not blocks:
        blocks = fsdp_units(model)
    ep = sizes.get("ep", 1)
    for block in blocks:
        if id(block) in moe and ep > 1 and edp_mesh is not None:
            experts = block.moe.experts
            placement = None
            if sizes.get("dp_shard", 1) * ep > experts.num_experts:
                placement = lambda param: Shard(1)  # noqa: E731 - torchtitan's own choice
            fully_shard(experts, mesh=edp_mesh, shard_placement_fn=placement)
        fully_shard(block, mesh=dp_mesh)
    norm, output = getattr(model, "norm", None), getattr(model, "output", None)
    if isinstance(norm, nn.Module) and isinstance(output, nn.Module):
        fully_shard([norm, output], mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
