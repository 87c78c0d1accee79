"""Independent per-rank expectations, built by hand: placements written out from the rules of
each recipe (not read from fully_shard / parallelize_module), a per-rank DeviceMesh, DTensors
from DTensor.from_local, and DCP's own local-plan function on them."""

from __future__ import annotations

import math

import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import _StridedShard


def tp_rule(fqn: str, llama: bool):
    """The TP placement a parameter gets from the TP plans (torchtitan's for llama: colwise
    q/k/v/w1/w3/output and rowwise-sharded embedding -> Shard(0); rowwise o/w2 -> Shard(1) on
    the weight, Replicate on a bias; SequenceParallel norms -> Replicate), or None: not in the
    plan, stays a plain tensor."""
    colwise = (
        "attention.wq",
        "attention.wk",
        "attention.wv",
        "feed_forward.w1",
        "feed_forward.w3",
        "output",
        "fc1",
    )
    rowwise = ("attention.wo", "feed_forward.w2", "fc2")
    dotted = f".{fqn}"
    if fqn.startswith("tok_embeddings."):
        return Shard(0)
    if any(f".{m}." in dotted for m in colwise):
        return Shard(0)
    if any(f".{m}." in dotted for m in rowwise):
        return Shard(1) if fqn.endswith("weight") else Replicate()
    if llama and fqn.endswith("norm.weight"):
        return Replicate()
    return None


def placements_for(recipe: str, fqn: str, is_param: bool, mesh_shape: tuple[int, ...], llama: bool):
    """Placements a parameter gets under each recipe, from the documented rules (None: plain)."""
    if not is_param or recipe == "replicate":
        return None
    if recipe == "fsdp":
        return (Shard(0),)
    if recipe == "hsdp":
        return (Replicate(), Shard(0))
    tp = tp_rule(fqn, llama)
    if recipe == "tp":
        return None if tp is None else (tp,)
    if recipe == "tp+fsdp":
        if tp is None:
            return (Shard(0),)  # FSDP only, on the 1-D dp mesh
        if isinstance(tp, Shard) and tp.dim == 0:
            # FSDP's Shard(0) over TP's Shard(0): the TP shard is split again, strided.
            return (_StridedShard(0, split_factor=mesh_shape[1]), Shard(0))
        return (Shard(0), tp)
    raise ValueError(recipe)


def rank_mesh(mesh_shape, names, rank):
    W = math.prod(mesh_shape)
    return DeviceMesh(
        "cpu",
        torch.arange(W).reshape(mesh_shape),
        mesh_dim_names=names,
        _init_backend=False,
        _rank=rank,
    )


def hand_state_dict(model: torch.nn.Module, recipe: str, mesh_shape, names, rank: int, llama: bool):
    """Rank ``rank``'s state dict built by hand from the model's plain (unsharded) state dict."""
    full = model.state_dict()
    params = {n for n, _ in model.named_parameters()}
    mesh = rank_mesh(mesh_shape, names, rank)
    out = {}
    for fqn, value in full.items():
        pl = placements_for(recipe, fqn, fqn in params, tuple(mesh_shape), llama)
        if pl is None or not isinstance(value, torch.Tensor):
            out[fqn] = value
            continue
        m = mesh
        if recipe == "tp+fsdp" and len(pl) == 1:
            # Not in the TP plan: FSDP shards it over the dp dim only (this rank's dp column).
            coord = mesh.get_coordinate()
            column = torch.arange(math.prod(mesh_shape)).reshape(mesh_shape)[:, coord[1]]
            m = DeviceMesh(
                "cpu", column, mesh_dim_names=(names[0],), _init_backend=False, _rank=rank
            )
        local_shape, _ = compute_local_shape_and_global_offset(value.shape, m, pl)
        local = torch.empty(local_shape, dtype=value.dtype, device="meta")
        dt = DTensor.from_local(
            local, m, pl, run_check=False, shape=value.shape, stride=value.stride()
        )
        # The reference itself must not be hit by the dispatch-cache hazard.
        assert dt.device_mesh.get_coordinate() == m.get_coordinate(), (
            "reference DTensor lost its rank's mesh"
        )
        out[fqn] = dt
    return out


def plan_items(state_dict, rank: int):
    """DCP's local plan for a state dict, as sorted comparable tuples."""
    p = DefaultSavePlanner()
    p.set_up_planner(state_dict, storage_meta=None, is_coordinator=(rank == 0))
    return sorted((item_tuple(wi) for wi in p.create_local_plan().items), key=sort_key)


def item_tuple(wi):
    td = wi.tensor_data
    if td is None:
        return (wi.index.fqn, wi.type.name, None, None, None)
    return (
        wi.index.fqn,
        wi.type.name,
        tuple(td.chunk.offsets),
        tuple(td.chunk.sizes),
        str(td.properties.dtype).removeprefix("torch."),
    )


def trace_items(result, rank: int):
    """The engine's local plan for ``rank`` in the same tuple form."""
    plan = result.trace.local_plans[rank]
    out = []
    for i in plan.items:
        it = result.trace.items[i]
        out.append((it.fqn, it.item_type, it.offsets, it.sizes, it.dtype))
    return sorted(out, key=sort_key)


def sort_key(t):
    return tuple("" if v is None else str(v) for v in t)


def chunk_rows(n: int, parts: int, index: int) -> tuple[int, int]:
    """(offset, length) of torch.chunk's ``index``-th piece of ``n`` rows in ``parts``: the
    arithmetic FSDP documents, as a third, torch-free check."""
    size = -(-n // parts)
    start = min(index * size, n)
    return start, max(0, min(size, n - start))


# -- load side -----------------------------------------------------------------------------
def hand_metadata(model: torch.nn.Module, recipe: str, mesh_shape, names, llama: bool):
    """The checkpoint Metadata DCP builds for a save of ``model`` under ``recipe``: DCP's save
    planner on the hand-built per-rank state dicts, then DCP's own global plan (dedup and
    metadata). Independent of dcpviz's engine."""
    W = math.prod(mesh_shape)
    planners, plans = [], []
    for rank in range(W):
        p = DefaultSavePlanner()
        sd = hand_state_dict(model, recipe, mesh_shape, names, rank, llama)
        p.set_up_planner(sd, storage_meta=None, is_coordinator=(rank == 0))
        planners.append(p)
        plans.append(p.create_local_plan())
    _, md = planners[0].create_global_plan(plans)
    return md


def load_plan_items(state_dict, metadata):
    """DCP's local load plan for a hand-built state dict, as sorted comparable tuples.

    DefaultLoadPlanner flattens the state dict, then calls create_default_local_load_plan; the
    same two DCP functions are called here directly (set_up_planner would materialise the meta
    tensors of the hand-built reference)."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict
    from torch.distributed.checkpoint.default_planner import create_default_local_load_plan

    flat, _ = flatten_state_dict(state_dict)
    plan = create_default_local_load_plan(flat, metadata, strict=True)
    return sorted((read_tuple(ri) for ri in plan.items), key=sort_key)


def _opt_box(b):
    return None if b is None else tuple(int(v) for v in b)


def read_tuple(ri):
    return (
        ri.dest_index.fqn,
        ri.type.name,
        _opt_box(ri.dest_index.offset),
        _opt_box(ri.dest_offsets),
        ri.storage_index.fqn,
        _opt_box(ri.storage_index.offset),
        _opt_box(ri.storage_offsets),
        _opt_box(ri.lengths),
    )


def result_reads(result, rank: int):
    """The engine's final read items for ``rank`` in the same tuple form."""
    df = result.read_items
    df = df[df["rank"] == rank]
    out = [
        (
            r.fqn,
            r.item_type,
            r.dest_chunk_offsets,
            r.dest_offsets,
            r.storage_fqn or r.fqn,
            r.saved_offsets,
            r.storage_offsets,
            r.lengths,
        )
        for r in df.itertuples()
    ]
    return sorted(out, key=sort_key)
