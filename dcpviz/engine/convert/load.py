"""DCP's load-side objects (ReadItem, a target state-dict value) -> trace records."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint._sharded_tensor_utils import _flatten_sharded_tensors
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem
from torch.distributed.checkpoint.planner_helpers import _create_chunk_list
from torch.distributed.tensor import DTensor

from dcpviz.core.trace import ChunkInfo, PlanRecord, ReadRecord, TargetValue
from dcpviz.engine.convert.shared import ItemTable, dtype_str


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
    dict lookup. The key (``record_key``) holds every input the conversion reads besides the
    name. Checked, not assumed: the first repeat of each key is converted as well and compared
    (``record_agrees``); a difference turns the memo off for good (it stays in ``memo``)."""
    if memo is not None and not memo.get(_MEMO_OFF):
        key = record_key(ri, itemsizes)
        hit = memo.get(key)
        if hit is None:
            rec = read_record(ri, itemsizes)
            memo[key] = [_record_fields(rec), False]
            return rec
        fields, checked = hit
        if checked:
            return ReadRecord(ri.dest_index.fqn, *fields)
        rec = read_record(ri, itemsizes)
        if not record_agrees(ReadRecord(ri.dest_index.fqn, *fields), rec):
            memo.clear()
            memo[_MEMO_OFF] = True  # the conversion reads something the key leaves out
            return rec
        hit[1] = True
        return ReadRecord(
            ri.dest_index.fqn, *fields
        )  # equal to rec; a check that wrongly agrees shows
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


_MEMO_OFF = ("memo off",)  # read_record's memo: set once a repeat converted differently


def record_key(ri: ReadItem, itemsizes: dict[str, int]) -> tuple:
    """Everything ``read_record`` reads from ``ri`` and ``itemsizes`` but the key's name."""
    dest, src = ri.dest_index, ri.storage_index
    renamed = src.fqn != dest.fqn
    return (
        ri.type,
        dest.offset,
        ri.dest_offsets,
        src.offset,
        src.index,
        ri.storage_offsets,
        ri.lengths,
        itemsizes.get(src.fqn, 1),
        src.fqn if renamed else None,
    )


def _record_fields(rec: ReadRecord) -> tuple:
    return (
        rec.item_type,
        rec.dest_chunk_offsets,
        rec.dest_offsets,
        rec.saved_offsets,
        rec.saved_chunk,
        rec.storage_offsets,
        rec.lengths,
        rec.nbytes,
        rec.storage_fqn,
    )


def record_agrees(memo: ReadRecord, plain: ReadRecord) -> bool:
    """The self-check of ``read_record``'s memo: the remembered record is the plain conversion."""
    return memo == plain


def load_plan_record(
    plan: LoadPlan,
    table: ItemTable,
    itemsizes: dict[str, int],
    memo: dict[int, tuple[LoadPlan, PlanRecord]] | None = None,
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


def spec_layout(obj: Any) -> tuple:
    """What DCP's chunk list of a DTensor is computed from, as values: global shape, dtype,
    placements (and their types), the mesh's shape and this rank's coordinate on it. The memos
    that check their first repeat per spec check it once per such layout over the whole
    simulation (ranks of one layout and coordinate ask the same question)."""
    spec = obj._spec
    placements = tuple(spec.placements)
    return (
        tuple(obj.shape),
        obj.dtype,
        placements,
        tuple(type(p) for p in placements),
        tuple(spec.mesh.shape),
        spec.mesh.get_coordinate(),
    )


class TargetValues:
    """``target_value`` for the keys of one rank, worked out once per DTensor spec.

    For a DTensor (exactly that class, its local tensor without a chunk list of its own) every
    field but the name comes from the spec (global shape, placements, mesh and this rank's
    coordinate) and the dtype; keys whose DTensors share a spec object (the layers of a model,
    see ``overlap.ChunkLists``) share those fields. ``clear`` between ranks. Anything else is
    converted on its own. The first repeat of each spec is checked (``value``), once per spec
    layout over the whole load.
    """

    def __init__(self, chunk_lists: Any = None) -> None:
        self._chunk_list = (
            _create_chunk_list
            if chunk_lists is None
            else (lambda value: chunk_lists.chunk_list(_create_chunk_list, value))
        )
        self._parts: dict[tuple, list] = {}  # key -> [guards, fields but fqn, checked]
        self._checked: set[tuple] = set()  # spec layouts whose repeat was checked (every rank)
        self.on = True

    def clear(self) -> None:
        """Forget the previous rank's specs."""
        self._parts.clear()

    @staticmethod
    def _key(value: Any) -> tuple[tuple, tuple]:
        """(memo key, objects the key stands for: a hit must hold these very objects)."""
        return (id(value._spec), value.dtype), (value._spec,)

    @staticmethod
    def _agrees(memo: TargetValue, plain: TargetValue) -> bool:
        """The self-check: the remembered fields are ``target_value``'s own."""
        return memo == plain

    def value(self, fqn: str, value: Any) -> TargetValue:
        """``target_value(fqn, value)``; checked, not assumed: the first repeat of each spec is
        converted as well and compared; a difference turns the memo off (``on``)."""
        if (
            not self.on
            or type(value) is not DTensor
            or hasattr(value._local_tensor, "__create_chunk_list__")
        ):
            return target_value(fqn, value, self._chunk_list)
        key, guards = self._key(value)
        hit = self._parts.get(key)
        if (
            hit is None
            or len(hit[0]) != len(guards)
            or not all(a is b for a, b in zip(hit[0], guards))
        ):
            tv = target_value(fqn, value, self._chunk_list)
            self._parts[key] = [
                guards,
                (tv.kind, tv.size, tv.dtype, tv.chunks, tv.placements),
                False,
            ]
            return tv
        if hit[2]:
            return TargetValue(fqn, *hit[1])
        layout = spec_layout(value)
        if layout in self._checked:
            hit[2] = True
            return TargetValue(fqn, *hit[1])
        tv = target_value(fqn, value, self._chunk_list)
        if not self._agrees(TargetValue(fqn, *hit[1]), tv):
            self.on = False
            self._parts.clear()
            return tv
        self._checked.add(layout)
        hit[2] = True
        return TargetValue(fqn, *hit[1])  # equal to tv; a check that wrongly agrees shows


def planner_view(planner: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The flat key -> value mapping the planner plans from.

    DefaultLoadPlanner keeps it as ``planner.state_dict`` (flattened, and after
    ``create_local_plan`` possibly in the pre-2.4 key format it falls back to). For other
    planners, DCP's own flattening of the state dict.
    """
    view = getattr(planner, "state_dict", None)
    if isinstance(planner, DefaultLoadPlanner) and isinstance(view, dict):
        return view
    try:
        return flatten_state_dict(_flatten_sharded_tensors(state_dict))[0]
    except Exception:
        return dict(state_dict)
