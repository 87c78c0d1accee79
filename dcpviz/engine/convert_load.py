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


def read_record(ri: ReadItem, itemsizes: dict[str, int], memo: dict | None = None) -> ReadRecord:
    """A DCP ReadItem as the trace's ReadRecord.

    ``memo`` keeps the converted boxes of each distinct item shape (everything but the key's
    name): the layers of a model read alike, and ranks share boxes, so most items convert by a
    dict lookup. The key holds every input the conversion reads besides the name."""
    if memo is not None:
        dest, src = ri.dest_index, ri.storage_index
        renamed = src.fqn != dest.fqn
        key = (ri.type, dest.offset, ri.dest_offsets, src.offset, src.index, ri.storage_offsets, ri.lengths,
               itemsizes.get(src.fqn, 1), src.fqn if renamed else None)
        fields = memo.get(key)
        if fields is None:
            rec = read_record(ri, itemsizes)
            memo[key] = (rec.item_type, rec.dest_chunk_offsets, rec.dest_offsets, rec.saved_offsets,
                         rec.saved_chunk, rec.storage_offsets, rec.lengths, rec.nbytes, rec.storage_fqn)
            return rec
        return ReadRecord(dest.fqn, *fields)
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
    plan: LoadPlan, table: ItemTable, itemsizes: dict[str, int], memo: dict[int, tuple[LoadPlan, PlanRecord]] | None = None,
    boxes: dict | None = None,
) -> PlanRecord:
    """``memo`` (by plan identity; the plan is kept, so its id is its own) spares re-converting
    a plan object shared by many ranks; ``boxes``: see ``read_record``."""
    if memo is not None:
        hit = memo.get(id(plan))
        if hit is not None and hit[0] is plan:
            return hit[1]
    rec = PlanRecord(items=tuple(table.add(read_record(ri, itemsizes, boxes)) for ri in plan.items))
    if memo is not None:
        memo[id(plan)] = (plan, rec)
    return rec


def target_value(fqn: str, value: Any, chunk_list: Any = _create_chunk_list) -> TargetValue:
    """What a target rank holds under ``fqn``: type, global size, dtype, and its local chunks as
    DCP's own ``_create_chunk_list`` computes them (the boxes the planner fills). ``chunk_list``:
    DCP's function, or the same asked once per spec (``overlap.ChunkLists``)."""

    if isinstance(value, (DTensor, ShardedTensor, torch.Tensor)):
        try:
            chunks = tuple(ChunkInfo(_box(c.offsets), _box(c.sizes)) for c in chunk_list(value))
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


class TargetValues:
    """``target_value`` for the keys of one rank, worked out once per DTensor spec.

    For a DTensor (exactly that class, its local tensor without a chunk list of its own) every
    field but the name comes from the spec (global shape, placements, mesh and this rank's
    coordinate) and the dtype; keys whose DTensors share a spec object (the layers of a model,
    see ``overlap.ChunkLists``) share those fields. ``clear`` between ranks. Anything else is
    converted on its own.
    """

    def __init__(self, chunk_lists: Any = None) -> None:
        self._chunk_list = _create_chunk_list if chunk_lists is None else (
            lambda value: chunk_lists.chunk_list(_create_chunk_list, value))
        self._parts: dict[tuple, tuple[Any, tuple]] = {}  # (id(spec), dtype) -> (spec, fields but fqn)

    def clear(self) -> None:
        """Forget the previous rank's specs."""
        self._parts.clear()

    def value(self, fqn: str, value: Any) -> TargetValue:
        """``target_value(fqn, value)``."""
        if type(value) is not DTensor or hasattr(value._local_tensor, "__create_chunk_list__"):
            return target_value(fqn, value, self._chunk_list)
        spec = value._spec
        key = (id(spec), value.dtype)
        hit = self._parts.get(key)
        if hit is None or hit[0] is not spec:
            tv = target_value(fqn, value, self._chunk_list)
            self._parts[key] = (spec, (tv.kind, tv.size, tv.dtype, tv.chunks, tv.placements))
            return tv
        return TargetValue(fqn, *hit[1])
