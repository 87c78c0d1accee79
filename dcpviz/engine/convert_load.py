"""DCP's load-side objects (ReadItem, a target state-dict value) -> trace records."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem
from torch.distributed.checkpoint.planner_helpers import _create_chunk_list
from torch.distributed.tensor import DTensor

from dcpviz.core.trace import ChunkInfo, PlanRecord, ReadRecord, TargetValue
from dcpviz.engine.convert import ItemTable, dtype_str


def _box(seq: Any) -> tuple[int, ...]:
    return seq if type(seq) is tuple else tuple(seq)  # torch.Size holds Python ints already


def saved_itemsizes(md: Metadata) -> dict[str, int]:
    """Element size of each saved tensor (what a read moves is the saved dtype)."""
    return {
        fqn: torch._utils._element_size(v.properties.dtype)
        for fqn, v in md.state_dict_metadata.items()
        if isinstance(v, TensorStorageMetadata)
    }


def read_record(ri: ReadItem, itemsizes: dict[str, int]) -> ReadRecord:
    """A DCP ReadItem as the trace's ReadRecord."""
    lengths = _box(ri.lengths)
    dest, src = ri.dest_index, ri.storage_index
    is_bytes = ri.type.name == "BYTE_IO"
    return ReadRecord(
        fqn=dest.fqn,
        item_type=ri.type.name,
        dest_chunk_offsets=_box(dest.offset) if dest.offset is not None else None,
        dest_offsets=_box(ri.dest_offsets),
        saved_offsets=_box(src.offset) if src.offset is not None else None,
        saved_chunk=src.index,
        storage_offsets=_box(ri.storage_offsets),
        lengths=lengths,
        nbytes=0 if is_bytes else math.prod(lengths) * itemsizes.get(src.fqn, 1),
        storage_fqn=None if src.fqn == dest.fqn else src.fqn,
    )


def load_plan_record(
    plan: LoadPlan, table: ItemTable, itemsizes: dict[str, int], memo: dict[int, PlanRecord] | None = None
) -> PlanRecord:
    """``memo`` (by plan identity) spares re-converting a plan object shared by many ranks."""
    if memo is not None and id(plan) in memo:
        return memo[id(plan)]
    rec = PlanRecord(items=tuple(table.add(read_record(ri, itemsizes)) for ri in plan.items))
    if memo is not None:
        memo[id(plan)] = rec
    return rec


def target_value(fqn: str, value: Any) -> TargetValue:
    """What a target rank holds under ``fqn``: type, global size, dtype, and its local chunks as
    DCP's own ``_create_chunk_list`` computes them (the boxes the planner fills)."""

    if isinstance(value, (DTensor, ShardedTensor, torch.Tensor)):
        try:
            chunks = tuple(ChunkInfo(_box(c.offsets), _box(c.sizes)) for c in _create_chunk_list(value))
        except Exception:
            chunks = ()
        if isinstance(value, ShardedTensor):
            dtype = value.metadata().tensor_properties.dtype
            kind = "ShardedTensor"
        else:
            dtype = value.dtype
            kind = "DTensor" if isinstance(value, DTensor) else "Tensor"
        return TargetValue(
            fqn=fqn,
            kind=kind,
            size=_box(value.size()),
            dtype=dtype_str(dtype),
            chunks=chunks,
            placements=str(tuple(value.placements)) if isinstance(value, DTensor) else None,
        )
    return TargetValue(fqn=fqn, kind=type(value).__name__, size=None, dtype=None)
