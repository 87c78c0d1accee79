"""DCP's save-side objects (SavePlan, WriteItem, a planner's dedup) -> trace records."""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import torch
from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans
from torch.distributed.checkpoint._traverse import traverse_state_dict
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import SavePlan, WriteItem, WriteItemType
from torch.distributed.tensor import DTensor

from dcpviz.core.plans import IMBALANCE_THRESHOLD, imbalance
from dcpviz.core.trace import (
    DedupAlternative,
    PlannedItem,
    PlanRecord,
    TensorLayout,
)
from dcpviz.engine.convert.shared import ItemTable, box, dtype_str

_PLANNED_FIELDS = tuple(f.name for f in dataclasses.fields(PlannedItem))


# Each field's slot, set directly: a frozen dataclass's ``__init__`` goes through
# ``object.__setattr__`` per field (about 1.7x slower); the instance state is the same.
_PLANNED_SLOTS = tuple(getattr(PlannedItem, name).__set__ for name in _PLANNED_FIELDS)


def _planned_item(*values: Any) -> PlannedItem:
    """``PlannedItem(*values)`` for the hot path (all nine fields, in order)."""
    item = object.__new__(PlannedItem)
    for set_slot, value in zip(_PLANNED_SLOTS, values):
        set_slot(item, value)
    return item


def byte_item_sizes(planner: Any, items: list[WriteItem]) -> dict[str, int]:
    """Serialised length of each BYTE_IO item, from the planner's own ``resolve_data`` (what the
    storage writer will write); 0 where the planner cannot say."""
    sizes: dict[str, int] = {}
    for wi in items:
        if wi.type == WriteItemType.BYTE_IO and wi.index.fqn not in sizes:
            try:
                data = planner.resolve_data(wi)
                sizes[wi.index.fqn] = data.getbuffer().nbytes if isinstance(data, io.BytesIO) else 0
            except Exception:
                sizes[wi.index.fqn] = 0
    return sizes


def planned_item(wi: WriteItem, byte_sizes: dict[str, int] | None = None) -> PlannedItem:
    """A DCP WriteItem as a trace's PlannedItem."""
    index_off = box(wi.index.offset) if wi.index.offset is not None else None
    td = wi.tensor_data
    if td is not None:
        chunk = td.chunk
        offsets, sizes = box(chunk.offsets), box(chunk.sizes)
        dtype = td.properties.dtype
        nbytes = math.prod(sizes) * torch._utils._element_size(dtype)
        return PlannedItem(
            fqn=wi.index.fqn,
            item_type=wi.type.name,
            offsets=offsets,
            sizes=sizes,
            global_size=box(td.size),
            dtype=dtype_str(dtype),
            nbytes=nbytes,
            dcp_size=wi.tensor_storage_size(),
            index_offsets=None if index_off == offsets else index_off,
        )
    return PlannedItem(
        fqn=wi.index.fqn,
        item_type=wi.type.name,
        offsets=None,
        sizes=None,
        global_size=None,
        dtype=None,
        nbytes=(byte_sizes or {}).get(wi.index.fqn, 0),
        dcp_size=None,
        index_offsets=index_off,
    )


class PlanConverter:
    """SavePlans -> PlanRecords, interning items in one ItemTable.

    At thousands of ranks most work is repeated: ranks share local plan objects, the
    coordinator's items reuse the local items' ``tensor_data`` objects, and one rank's layers
    may share one ``tensor_data`` under several names (``engine/shortcuts/write_memo.py``). Plans are
    memoised by identity (they stay alive while converting), items by (``tensor_data``
    identity, name, type, index offset), and what an item's ``tensor_data`` says (box, size,
    dtype, bytes) is worked out once per ``tensor_data`` object, which is held so its id stays
    unique.
    """

    def __init__(self) -> None:
        self.table = ItemTable()
        self._plans: dict[int, PlanRecord] = {}
        self._items: dict[tuple, int] = {}
        self._facts: dict[int, tuple] = {}  # id(tensor_data) -> (tensor_data, facts number, facts)
        self._fact_numbers: dict[tuple, int] = {}  # facts -> their number (interned by value)

    def record(self, plan: SavePlan, byte_sizes: dict[str, int] | None = None) -> PlanRecord:
        """A SavePlan as a PlanRecord (item ids into the shared item table)."""
        hit = self._plans.get(id(plan))
        if hit is not None:
            return hit
        ids = []
        known = self._items.get
        for wi in plan.items:
            td = wi.tensor_data
            if td is None:
                ids.append(self.table.add(planned_item(wi, byte_sizes)))
                continue
            if (
                type(wi) is not WriteItem
            ):  # a subclass may say other things about the same tensor_data
                ids.append(self._tensor_item(wi, td, byte_sizes))
                continue
            index = wi.index
            # the type's value, not the enum member: hashing a member runs Python code (hot)
            key = (id(td), index.fqn, wi.type._value_, index.offset)
            idx = known(key)
            if idx is None:
                idx = self._items[key] = self._tensor_item(wi, td, byte_sizes)
            ids.append(idx)
        rec = PlanRecord(items=tuple(ids), usable=bool(getattr(plan, "usable", True)))
        self._plans[id(plan)] = rec
        return rec

    def _facts_of(self, wi: WriteItem, td: Any, byte_sizes: dict[str, int] | None) -> tuple:
        """(number, facts): what ``planned_item`` takes from ``tensor_data`` (box, size, dtype,
        bytes, ``tensor_storage_size``), worked out once per ``tensor_data`` object. A WriteItem
        subclass may compute its storage size otherwise: its facts come from ``planned_item``."""
        hit = self._facts.get(id(td)) if type(wi) is WriteItem else None
        if hit is not None:
            return hit[1], hit[2]
        p = planned_item(wi, byte_sizes)
        facts = (p.offsets, p.sizes, p.global_size, p.dtype, p.nbytes, p.dcp_size)
        number = self._fact_numbers.setdefault(facts, len(self._fact_numbers))
        if type(wi) is WriteItem:
            self._facts[id(td)] = (td, number, facts)  # td held: its id stays unique
        return number, facts

    def _tensor_item(self, wi: WriteItem, td: Any, byte_sizes: dict[str, int] | None) -> int:
        """The id of ``planned_item(wi)`` for an item with ``tensor_data``, interned by a key
        that determines it (name, type, facts, index offset where it differs from the box)."""
        number, facts = self._facts_of(wi, td, byte_sizes)
        off = wi.index.offset
        index_off = box(off) if off is not None else None
        index_offsets = None if index_off == facts[0] else index_off
        fqn, kind = wi.index.fqn, wi.type.name
        key = (fqn, kind, number, index_offsets)
        idx = self.table.known(key)
        if idx is None:
            offsets, sizes, global_size, dtype, nbytes, dcp_size = facts
            idx = self.table.add_keyed(
                key,
                _planned_item(
                    fqn, kind, offsets, sizes, global_size, dtype, nbytes, dcp_size, index_offsets
                ),
            )
        return idx

    @property
    def items(self) -> list[PlannedItem]:
        """Every distinct item recorded so far, in id order."""
        return self.table.items


def tensor_layouts(state_dict: dict[str, Any]) -> tuple[TensorLayout, ...]:
    """Placements and mesh of every DTensor in a state dict, nested or flat, under the key DCP
    flattens it to ("model.fc1.weight"), found by DCP's own traversal."""

    leaves: dict[str, Any] = {}
    traverse_state_dict(
        state_dict, lambda path, value: leaves.setdefault(".".join(map(str, path)), value)
    )
    out = []
    for fqn, value in leaves.items():
        if isinstance(value, DTensor):
            mesh = value.device_mesh
            names = tuple(mesh.mesh_dim_names or (f"dim{i}" for i in range(mesh.ndim)))
            out.append(
                TensorLayout(
                    fqn=fqn,
                    placements="(" + ", ".join(repr(p) for p in value.placements) + ")",
                    mesh_dim_names=names,
                    mesh_shape=tuple(int(d) for d in mesh.shape),
                )
            )
    return tuple(out)


def merged_layouts(
    known: tuple[TensorLayout, ...], more: tuple[TensorLayout, ...]
) -> tuple[TensorLayout, ...]:
    """``known`` with the layouts of keys it lacks added from ``more`` (a later rank's): with
    pipeline stages, ranks hold different keys, so the coordinator's state dict alone leaves the
    other stages' DTensors undescribed. A key whose layout differs between ranks is described as
    such, not as one rank's."""
    by_fqn = {lay.fqn: lay for lay in known}
    for lay in more:
        seen = by_fqn.get(lay.fqn)
        if seen is None:
            by_fqn[lay.fqn] = lay
        elif seen != lay and seen.placements != DIFFERS_BY_RANK:
            by_fqn[lay.fqn] = TensorLayout(lay.fqn, DIFFERS_BY_RANK, (), ())
    return tuple(by_fqn.values())


DIFFERS_BY_RANK = "(differs by rank)"


def dedup_alternative(
    planner: Any, local_plans: list[SavePlan], record: Any, items: Any, global_plans: Any = None
) -> Any:
    """Per-rank write volume under the other ``dedup_save_to_lowest_rank`` option: DCP's own
    ``dedup_save_plans`` on the same local plans (so the check on imbalance can say what the
    option would give). ``record(rank, plan)`` turns a plan into a PlanRecord whose ids index
    ``items``. None for planners that do not dedup with DCP's default (not a
    DefaultSavePlanner), for cached ('unchanged') local plans, and when the ``global_plans``
    (PlanRecords) are balanced (max / mean within IMBALANCE_THRESHOLD): a second dedup costs the
    coordinator about as much as DCP's own, so it is paid only where the check will use it."""
    if not isinstance(planner, DefaultSavePlanner) or any(
        p is None or not p.usable for p in local_plans
    ):
        return None
    if global_plans is not None and imbalance(global_plans, items) <= IMBALANCE_THRESHOLD:
        return None
    option = not bool(getattr(planner, "dedup_save_to_lowest_rank", False))
    plans = dedup_save_plans(list(local_plans), option)
    counts, nbytes = [], []
    for r, plan in enumerate(plans):
        ids = record(r, plan).items
        counts.append(len(ids))
        nbytes.append(sum(items[i].nbytes for i in ids))
    return DedupAlternative(lowest_rank=option, rank_items=tuple(counts), rank_nbytes=tuple(nbytes))
