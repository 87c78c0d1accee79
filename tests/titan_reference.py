"""Independent per-rank expectations for recipe='torchtitan', built by hand.

The stage of each rank and the modules of each stage are written out in the tests (from
torchtitan's rule, worked by hand); placements are written from torchtitan's documented rules,
not read from fully_shard / parallelize_module; meshes are per-rank DeviceMeshes over the ranks
written out from the row-major layout; DTensors come from DTensor.from_local; the plan from
DCP's own DefaultSavePlanner (``reference.plan_items``)."""

from __future__ import annotations

import math

import torch
from reference import tp_rule
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import _StridedShard

from dcpviz.engine.job.models import PRESETS


def _sub_mesh(
    grid: torch.Tensor,
    names: tuple[str, ...],
    coord: dict[str, int],
    use: list[list[str]],
    rank: int,
):
    """The rank's mesh over the dim groups in ``use`` (each group flattened row-major), the other
    dims fixed at the rank's coordinate."""
    keep = [n for group in use for n in group]
    index = tuple(slice(None) if n in keep else coord[n] for n in names)
    sub = grid[index]  # dims left: the kept ones, in mesh order (== order of use: torchtitan's)
    shape = [math.prod(grid.shape[names.index(n)] for n in group) for group in use]
    return DeviceMesh(
        "cpu",
        sub.reshape(shape),
        mesh_dim_names=tuple(f"g{i}" for i in range(len(use))),
        _init_backend=False,
        _rank=rank,
    )


def hand_titan_state_dict(
    model: str,
    mesh: tuple[int, ...],
    names: tuple[str, ...],
    rank: int,
    stages: dict[int, list[str]] | None,
):
    """Rank ``rank``'s state dict under recipe 'torchtitan', by hand."""
    with torch.device("meta"):
        m = PRESETS[model]()
    full = m.state_dict()
    params = {n for n, _ in m.named_parameters()}
    W = math.prod(mesh)
    grid = torch.arange(W).reshape(mesh)
    coord = dict(zip(names, [int(c) for c in (grid == rank).nonzero()[0]]))
    size = dict(zip(names, mesh))
    if stages is not None:
        mine = stages[coord["pp"]]
        full = {k: v for k, v in full.items() if any(k.startswith(s + ".") for s in mine)}
    fsdp_dims = [d for d in ("dp_shard", "ep", "cp") if d in names]
    out = {}
    for fqn, value in full.items():
        if fqn not in params:
            out[fqn] = value
            continue
        if ".moe.experts." in fqn and "ep" in names:
            E = value.shape[0]
            fsdp = (
                _StridedShard(0, split_factor=size["ep"])
                if size["dp_shard"] * size["ep"] <= E
                else Shard(1)
            )
            use = ([["dp_replicate"]] if "dp_replicate" in names else []) + [["dp_shard"], ["ep"]]
            pl = ([Replicate()] if "dp_replicate" in names else []) + [fsdp, Shard(0)]
        else:
            tp = tp_rule(fqn, llama=True) if "tp" in names else None
            use = (
                ([["dp_replicate"]] if "dp_replicate" in names else [])
                + [fsdp_dims]
                + ([["tp"]] if tp else [])
            )
            fsdp = _StridedShard(0, split_factor=size["tp"]) if tp == Shard(0) else Shard(0)
            pl = ([Replicate()] if "dp_replicate" in names else []) + [fsdp] + ([tp] if tp else [])
        dm = _sub_mesh(grid, names, coord, use, rank)
        local_shape, _ = compute_local_shape_and_global_offset(value.shape, dm, pl)
        local = torch.empty(local_shape, dtype=value.dtype, device="meta")
        out[fqn] = DTensor.from_local(
            local, dm, pl, run_check=False, shape=value.shape, stride=value.stride()
        )
    return out


def hand_titan_metadata(model: str, mesh: tuple[int, ...], names: tuple[str, ...], stages):
    """The Metadata DCP builds for a save under recipe 'torchtitan': DCP's save planner on the
    hand-built per-rank state dicts, then DCP's own global plan. Independent of dcpviz's engine."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    planners, plans = [], []
    for rank in range(math.prod(mesh)):
        p = DefaultSavePlanner()
        p.set_up_planner(
            hand_titan_state_dict(model, mesh, names, rank, stages),
            storage_meta=None,
            is_coordinator=(rank == 0),
        )
        planners.append(p)
        plans.append(p.create_local_plan())
    return planners[0].create_global_plan(plans)[1]
