"""DCP's objects <-> trace records. The only place that knows both sides."""

from __future__ import annotations

import io
import math
from typing import Any

import torch
from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans
from torch.distributed.checkpoint._traverse import traverse_state_dict
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import SavePlan, WriteItem, WriteItemType
from torch.distributed.tensor import DTensor

from dcpviz.core.errors import TraceFileError
from dcpviz.core.plans import IMBALANCE_THRESHOLD, imbalance
from dcpviz.core.trace import (
    ChunkInfo,
    DedupAlternative,
    MetadataInfo,
    PlannedItem,
    PlannerInfo,
    PlanRecord,
    StorageEntry,
    TensorEntry,
    TensorLayout,
)

_SIMPLE = (bool, int, float, str, type(None))


def dtype_str(dtype: torch.dtype) -> str:
    """A torch dtype's name as a trace writes it ('float32')."""
    return str(dtype).removeprefix("torch.")


def dtype_from_str(name: str) -> torch.dtype:
    """The torch dtype a trace names ('float32'); a name this torch lacks (a corrupt trace, or
    one from a torch with more dtypes) is a TraceFileError, which is also a ValueError."""
    dt = getattr(torch, name, None) if isinstance(name, str) and not name.startswith("_") else None
    if not isinstance(dt, torch.dtype):

        raise TraceFileError(
            f"unknown dtype {name!r}: torch {torch.__version__} has no such dtype. The trace is "
            "corrupt or was written with another torch; re-create it with this one."
        )
    return dt


def _box(seq: Any) -> tuple[int, ...]:
    # torch.Size is a tuple of Python ints already; tuple() is all it needs (hot at scale).
    return seq if type(seq) is tuple else tuple(seq)


def planner_info(planner: Any, default_cls: type) -> PlannerInfo:
    """Class and simple-valued options of a planner, read before set_up_planner."""
    opts = []
    for name, value in sorted(vars(planner).items()):
        # Internal bookkeeping (cache keys) is not an option a user chose.
        if isinstance(value, _SIMPLE) and not name.startswith("__") and "cache" not in name.replace("caching", ""):
            opts.append((name.lstrip("_"), value))
    cls = type(planner)
    return PlannerInfo(
        cls=cls.__qualname__,
        module=cls.__module__,
        options=tuple(opts),
        is_dcp_default=cls is default_cls,
    )


class ItemTable:
    """Interns PlannedItems so each distinct write item is stored once.

    ``add`` interns by the item's own value; ``add_keyed`` by a caller's key that stands for
    the value one to one (``PlanConverter``: name, type, interned tensor facts, index offset),
    which spares hashing the whole item. The two must never intern equal items: the converter
    keys only items with ``tensor_data`` and ``add``s only items without (whose dtype is None,
    so no item of one kind equals one of the other)."""

    def __init__(self) -> None:
        self.items: list[PlannedItem] = []
        self._ids: dict[PlannedItem, int] = {}
        self._keyed: dict[tuple, int] = {}

    def add(self, item: PlannedItem) -> int:
        """The id of ``item``, added once however often it is seen."""
        idx = self._ids.get(item)
        if idx is None:
            idx = self._ids[item] = len(self.items)
            self.items.append(item)
        return idx

    def known(self, key: tuple) -> int | None:
        """The id of the item ``key`` stands for (see ``add_keyed``), None if not added yet."""
        return self._keyed.get(key)

    def add_keyed(self, key: tuple, item: PlannedItem) -> int:
        """Add ``item``, which ``key`` stands for one to one and which is not in the table yet."""
        idx = self._keyed[key] = len(self.items)
        self.items.append(item)
        return idx


_PLANNED_FIELDS = ("fqn", "item_type", "offsets", "sizes", "global_size", "dtype", "nbytes", "dcp_size", "index_offsets")


def _planned_item(*values: Any) -> PlannedItem:
    """``PlannedItem(*values)`` for the hot path: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__`` (4x slower); the instance state is the same."""
    item = object.__new__(PlannedItem)
    object.__setattr__(item, "__dict__", dict(zip(_PLANNED_FIELDS, values)))
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
    index_off = _box(wi.index.offset) if wi.index.offset is not None else None
    td = wi.tensor_data
    if td is not None:
        chunk = td.chunk
        offsets, sizes = _box(chunk.offsets), _box(chunk.sizes)
        dtype = td.properties.dtype
        nbytes = math.prod(sizes) * torch._utils._element_size(dtype)
        return PlannedItem(
            fqn=wi.index.fqn,
            item_type=wi.type.name,
            offsets=offsets,
            sizes=sizes,
            global_size=_box(td.size),
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
    may share one ``tensor_data`` under several names (``engine/write_memo.py``). Plans are
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
            if type(wi) is not WriteItem:  # a subclass may say other things about the same tensor_data
                ids.append(self._tensor_item(wi, td, byte_sizes))
                continue
            index = wi.index
            key = (id(td), index.fqn, wi.type, index.offset)
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
        index_off = _box(off) if off is not None else None
        index_offsets = None if index_off == facts[0] else index_off
        fqn, kind = wi.index.fqn, wi.type.name
        key = (fqn, kind, number, index_offsets)
        idx = self.table.known(key)
        if idx is None:
            offsets, sizes, global_size, dtype, nbytes, dcp_size = facts
            idx = self.table.add_keyed(key, _planned_item(fqn, kind, offsets, sizes, global_size, dtype, nbytes,
                                                          dcp_size, index_offsets))
        return idx

    @property
    def items(self) -> list[PlannedItem]:
        """Every distinct item recorded so far, in id order."""
        return self.table.items


def metadata_info(md: Metadata) -> MetadataInfo:
    """DCP's Metadata as the trace's plain MetadataInfo."""
    tensors, bytes_keys = [], []
    # DCP's metadata lists the local plans' own chunk objects, and one chunk object may stand
    # in several tensors' lists (engine/write_memo.py): each is converted once.
    chunk_infos: dict[int, ChunkInfo] = {}

    def chunk_info(c: Any) -> ChunkInfo:
        info = chunk_infos.get(id(c))
        if info is None:
            info = chunk_infos[id(c)] = ChunkInfo(_box(c.offsets), _box(c.sizes))
        return info

    for fqn, value in md.state_dict_metadata.items():
        if isinstance(value, TensorStorageMetadata):
            tensors.append(
                TensorEntry(
                    fqn=fqn,
                    size=_box(value.size),
                    dtype=dtype_str(value.properties.dtype),
                    chunks=tuple(map(chunk_info, value.chunks)),
                    requires_grad=bool(value.properties.requires_grad),
                )
            )
        else:
            bytes_keys.append(fqn)
    planner_data = []
    if isinstance(md.planner_data, dict):
        for fqn, path in md.planner_data.items():
            if isinstance(path, (tuple, list)) and all(isinstance(p, (str, int)) for p in path):
                planner_data.append((str(fqn), tuple(path)))
    storage = []
    if isinstance(md.storage_data, dict):
        for index, info in md.storage_data.items():
            if isinstance(index, MetadataIndex) and hasattr(info, "relative_path"):
                storage.append(
                    StorageEntry(
                        fqn=index.fqn,
                        offsets=_box(index.offset) if index.offset is not None else None,
                        relative_path=str(info.relative_path),
                        offset=int(info.offset),
                        length=int(info.length),
                    )
                )
    return MetadataInfo(
        tensors=tuple(tensors),
        bytes_keys=tuple(bytes_keys),
        planner_data=tuple(planner_data),
        storage=tuple(storage),
        version=getattr(md, "version", None),
    )


def torch_metadata(info: MetadataInfo) -> Metadata:
    """Rebuild a torch Metadata equivalent to the one the trace was taken from."""
    sd_md: dict[str, Any] = {}
    for t in info.tensors:
        sd_md[t.fqn] = TensorStorageMetadata(
            properties=TensorProperties(dtype=dtype_from_str(t.dtype), requires_grad=t.requires_grad),
            size=torch.Size(t.size),
            chunks=[ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in t.chunks],
        )
    for key in info.bytes_keys:
        sd_md[key] = BytesStorageMetadata()
    storage = {
        MetadataIndex(s.fqn, torch.Size(s.offsets) if s.offsets is not None else None): _StorageInfo(
            relative_path=s.relative_path, offset=s.offset, length=s.length
        )
        for s in info.storage
    }
    md = Metadata(
        state_dict_metadata=sd_md,
        planner_data=dict(info.planner_data) if info.planner_data else None,
        storage_data=storage or None,
    )
    if info.version is not None:
        md.version = info.version
    return md

def tensor_layouts(state_dict: dict[str, Any]) -> tuple[TensorLayout, ...]:
    """Placements and mesh of every DTensor in a state dict, nested or flat, under the key DCP
    flattens it to ("model.fc1.weight"), found by DCP's own traversal."""

    leaves: dict[str, Any] = {}
    traverse_state_dict(state_dict, lambda path, value: leaves.setdefault(".".join(map(str, path)), value))
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



def dedup_alternative(planner: Any, local_plans: list[SavePlan], record: Any, items: Any,
                      global_plans: Any = None) -> Any:
    """Per-rank write volume under the other ``dedup_save_to_lowest_rank`` option: DCP's own
    ``dedup_save_plans`` on the same local plans (so the check on imbalance can say what the
    option would give). ``record(rank, plan)`` turns a plan into a PlanRecord whose ids index
    ``items``. None for planners that do not dedup with DCP's default (not a
    DefaultSavePlanner), for cached ('unchanged') local plans, and when the ``global_plans``
    (PlanRecords) are balanced (max / mean within IMBALANCE_THRESHOLD): a second dedup costs the
    coordinator about as much as DCP's own, so it is paid only where the check will use it."""
    if not isinstance(planner, DefaultSavePlanner) or any(p is None or not p.usable for p in local_plans):
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
