"""DCP's objects <-> trace records, what both directions use: dtypes, the checkpoint's
Metadata (both ways), planner info, and the table that interns a plan's items."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from dcpviz.core.errors import TraceFileError
from dcpviz.core.trace import (
    ChunkInfo,
    MetadataInfo,
    PlannedItem,
    PlannerInfo,
    StorageEntry,
    TensorEntry,
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


def box(seq: Any) -> tuple[int, ...]:
    # torch.Size is a tuple of Python ints already; tuple() is all it needs (hot at scale).
    return seq if type(seq) is tuple else tuple(seq)


def planner_info(planner: Any, default_cls: type) -> PlannerInfo:
    """Class and simple-valued options of a planner, read before set_up_planner."""
    opts = []
    for name, value in sorted(vars(planner).items()):
        # Internal bookkeeping (cache keys) is not an option a user chose.
        if (
            isinstance(value, _SIMPLE)
            and not name.startswith("__")
            and "cache" not in name.replace("caching", "")
        ):
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


def metadata_info(md: Metadata) -> MetadataInfo:
    """DCP's Metadata as the trace's plain MetadataInfo."""
    tensors, bytes_keys = [], []
    # DCP's metadata lists the local plans' own chunk objects, and one chunk object may stand
    # in several tensors' lists (engine/shortcuts/write_memo.py): each is converted once.
    chunk_infos: dict[int, ChunkInfo] = {}

    def chunk_info(c: Any) -> ChunkInfo:
        info = chunk_infos.get(id(c))
        if info is None:
            info = chunk_infos[id(c)] = ChunkInfo(box(c.offsets), box(c.sizes))
        return info

    for fqn, value in md.state_dict_metadata.items():
        if isinstance(value, TensorStorageMetadata):
            tensors.append(
                TensorEntry(
                    fqn=fqn,
                    size=box(value.size),
                    dtype=dtype_str(value.properties.dtype),
                    chunks=tuple(map(chunk_info, value.chunks)),
                    requires_grad=bool(value.properties.requires_grad),
                )
            )
        else:
            bytes_keys.append(fqn)
    return MetadataInfo(
        tensors=tuple(tensors),
        bytes_keys=tuple(bytes_keys),
        planner_data=_planner_data(md.planner_data),
        storage=_storage_entries(md.storage_data),
        version=getattr(md, "version", None),
    )


def _planner_data(data: Any) -> tuple[tuple[str, tuple], ...]:
    """The metadata's planner_data (key -> its object path), where it is one."""
    if not isinstance(data, dict):
        return ()
    return tuple(
        (str(fqn), tuple(path))
        for fqn, path in data.items()
        if isinstance(path, (tuple, list)) and all(isinstance(p, (str, int)) for p in path)
    )


def _storage_entries(data: Any) -> tuple[StorageEntry, ...]:
    """The metadata's storage_data (where each chunk lies), where it is DCP's file storage."""
    if not isinstance(data, dict):
        return ()
    return tuple(
        StorageEntry(
            fqn=index.fqn,
            offsets=box(index.offset) if index.offset is not None else None,
            relative_path=str(info.relative_path),
            offset=int(info.offset),
            length=int(info.length),
        )
        for index, info in data.items()
        if isinstance(index, MetadataIndex) and hasattr(info, "relative_path")
    )


def torch_metadata(info: MetadataInfo) -> Metadata:
    """Rebuild a torch Metadata equivalent to the one the trace was taken from."""
    sd_md: dict[str, Any] = {}
    for t in info.tensors:
        sd_md[t.fqn] = TensorStorageMetadata(
            properties=TensorProperties(
                dtype=dtype_from_str(t.dtype), requires_grad=t.requires_grad
            ),
            size=torch.Size(t.size),
            chunks=[
                ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in t.chunks
            ],
        )
    for key in info.bytes_keys:
        sd_md[key] = BytesStorageMetadata()
    storage = {
        MetadataIndex(
            s.fqn, torch.Size(s.offsets) if s.offsets is not None else None
        ): _StorageInfo(relative_path=s.relative_path, offset=s.offset, length=s.length)
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
