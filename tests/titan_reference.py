"""Independent per-rank expectations for recipe='torchtitan', built by hand.

The stage of each rank and the modules of each stage are written out in the tests (from
torchtitan's rule, worked by hand); placements are written from torchtitan's documented rules,
not read from fully_shard / parallelize_module; meshes are per-rank DeviceMeshes over the ranks
written out from the row-major layout; DTensors come from DTensor.from_local; the plan from
DCP's own DefaultSavePlanner (``reference.plan_items``)."""

from __future__ import annotations

import math

import torch
from reference import plan_items, tp_rule, trace_items
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import _StridedShard

import dcpviz
from dcpviz.engine.job.models import PRESETS


def titan_scenario(model, mesh: tuple[int, ...], names: tuple[str, ...], **kw) -> dcpviz.Scenario:
    """recipe='torchtitan' for ``model`` over ``mesh`` named ``names``, one rank per mesh slot."""
    return dcpviz.Scenario(
        model=model,
        world_size=math.prod(mesh),
        mesh=mesh,
        mesh_dim_names=names,
        recipe="torchtitan",
        **kw,
    )


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


# DeepSeek-V3's TP placements, worked from torchtitan's deepseek_v3 apply_non_moe_tp and llama4's
# apply_moe_ep_tp: NoParallel (replicated) wq_a, q_norm, wkv_a, kv_norm and the router's gate;
# column-wise wq/wq_b/wkv_b, w1/w3 of the dense MLP and the shared experts, the output, the
# row-wise-sharded embedding (Shard(0) of the weight); row-wise wo and w2 (Shard(1));
# sequence-parallel norms (replicated); routed experts TensorParallel: w1/w3 Shard(1), w2 Shard(2).
_DS_REPLICATE = ("attention.wq_a", "attention.q_norm", "attention.wkv_a", "attention.kv_norm")
_DS_COLWISE = ("attention.wq", "attention.wq_b", "attention.wkv_b", "feed_forward.w1")
_DS_COLWISE += ("feed_forward.w3", "shared_experts.w1", "shared_experts.w3", "output")
_DS_ROWWISE = ("attention.wo", "feed_forward.w2", "shared_experts.w2")


def deepseek_tp_rule(fqn: str):
    """The TP placement of a DeepSeek-V3 parameter (see above)."""
    dotted = f".{fqn}"
    if fqn.startswith("tok_embeddings.") or any(f".{m}." in dotted for m in _DS_COLWISE):
        return Shard(0)
    if any(f".{m}." in dotted for m in _DS_ROWWISE):
        return Shard(1)
    if fqn.endswith(("moe.experts.w1", "moe.experts.w3")):
        return Shard(1)
    if fqn.endswith("moe.experts.w2"):
        return Shard(2)
    if any(f".{m}." in dotted for m in _DS_REPLICATE) or fqn.endswith(
        ("norm.weight", "router.gate.weight")
    ):
        return Replicate()
    raise AssertionError(f"no TP rule for {fqn}")


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
    rule = deepseek_tp_rule if model.startswith("deepseek") else (lambda f: tp_rule(f, llama=True))
    rep = [Replicate()] if "dp_replicate" in names else []
    out = {}
    for fqn, value in full.items():
        if fqn not in params:
            out[fqn] = value
            continue
        tp = rule(fqn) if "tp" in names else None
        if ".moe.experts." in fqn and "ep" in names:
            # Experts: EP's Shard(0) (with TP's on the (ep, tp) mesh), FSDP over dp_shard alone:
            # Shard(0), or Shard(1) when dp_shard * ep exceeds the experts (torchtitan's apply_fsdp).
            E = value.shape[0]
            fsdp = Shard(0) if size["dp_shard"] * size["ep"] <= E else Shard(1)
            inner = [("ep", Shard(0))] + ([("tp", tp)] if tp else [])
            use = [["dp_shard"]] + [[d] for d, _ in inner]
        else:
            fsdp = Shard(0)
            inner = [("tp", tp)] if tp else []
            use = [fsdp_dims] + [[d] for d, _ in inner]
        # FSDP sharding a dim that EP/TP already shard takes strided pieces of it: split by the
        # product of those shards (FSDP2's _StridedShard over TP or EP).
        split = math.prod(size[d] for d, p in inner if isinstance(p, Shard) and p.dim == fsdp.dim)
        fsdp = _StridedShard(fsdp.dim, split_factor=split) if split > 1 else fsdp
        use = ([["dp_replicate"]] if rep else []) + use
        pl = rep + [fsdp] + [p for _, p in inner]
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


def assert_every_rank_matches_hand_built(model: str, mesh, names, stages, fast) -> None:
    """simulate_save of the layout (``fast``: False per rank, None shortcuts) plans every rank as
    DCP's own planner does on that rank's hand-built DTensors."""
    result = dcpviz.simulate_save(titan_scenario(model, mesh, names), fast=fast)
    assert result.ok, result.errors
    for rank in range(math.prod(mesh)):
        expected = plan_items(hand_titan_state_dict(model, mesh, names, rank, stages), rank)
        assert trace_items(result, rank) == expected, f"rank {rank}"
