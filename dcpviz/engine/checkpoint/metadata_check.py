"""The shape a DCP ``Metadata`` must have before anything reads it.

The restricted unpickler only admits metadata classes; it cannot say that their fields hold
the right types (a pickle can set ``state_dict_metadata=None`` or a dtype as a string). This
walk checks every field dcpviz or DCP's planners read, and turns the first wrong one into a
CheckpointError that names it, instead of an AttributeError deep in a table or a planner.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from dcpviz.core.errors import CheckpointError
from dcpviz.core.trace import MAX_COUNT

_MISSING = object()


def check_metadata(md: Any, source: str) -> None:
    """Raise CheckpointError naming the field unless ``md`` (an unpickled DCP Metadata) has
    the types and bounds DCP writes."""
    problem = next(_problems(md), None)
    if problem is not None:
        raise CheckpointError(
            f"{source} is not valid DCP metadata: {problem}. The file is corrupt or was not "
            "written by dcp.save; re-save the checkpoint."
        )


def _problems(md: Any) -> Iterator[str]:
    entries = _field(md, "state_dict_metadata")
    if not isinstance(entries, dict):
        yield f"state_dict_metadata is {_kind(entries)}, not a dict of entries"
        return
    for fqn, entry in entries.items():
        if not isinstance(fqn, str):
            yield f"state_dict_metadata has a key {_kind(fqn)}, not a string"
            return
        if not _chunks_fine(entry):  # the walk below names the first problem
            yield from _entry(entry, f"state_dict_metadata[{fqn!r}]")
    storage = _field(md, "storage_data")
    if not _storage_fine(storage):
        yield from _storage(storage)
    storage_meta = _field(md, "storage_meta", None)
    if storage_meta is not None and not isinstance(storage_meta, StorageMeta):
        yield f"storage_meta is {_kind(storage_meta)}, not StorageMeta or None"
    version = _field(md, "version", None)
    if version is not None and not isinstance(version, str):
        yield f"version is {_kind(version)}, not a string or None"


def _entry(entry: Any, where: str) -> Iterator[str]:
    if isinstance(entry, BytesStorageMetadata):
        return
    if not isinstance(entry, TensorStorageMetadata):
        yield f"{where} is {_kind(entry)}, not TensorStorageMetadata or BytesStorageMetadata"
        return
    props = _field(entry, "properties")
    if not isinstance(props, TensorProperties):
        yield f"{where}.properties is {_kind(props)}, not TensorProperties"
        return
    dtype = _field(props, "dtype")
    if not isinstance(dtype, torch.dtype):
        yield f"{where}.properties.dtype is {_kind(dtype)}, not a torch.dtype"
    if not isinstance(_field(props, "requires_grad"), bool):
        yield f"{where}.properties.requires_grad is not a bool"
    size = _field(entry, "size")
    if not _is_box(size):
        yield f"{where}.size is {_kind(size)}, not a tuple of non-negative ints"
        return
    chunks = _field(entry, "chunks")
    if not isinstance(chunks, (list, tuple)):
        yield f"{where}.chunks is {_kind(chunks)}, not a list of ChunkStorageMetadata"
        return
    for j, chunk in enumerate(chunks):
        yield from _chunk(chunk, size, f"{where}.chunks[{j}]")


def _chunk(chunk: Any, size: tuple[int, ...], where: str) -> Iterator[str]:
    if not isinstance(chunk, ChunkStorageMetadata):
        yield f"{where} is {_kind(chunk)}, not ChunkStorageMetadata"
        return
    offsets, sizes = _field(chunk, "offsets"), _field(chunk, "sizes")
    for name, box in (("offsets", offsets), ("sizes", sizes)):
        if not _is_box(box) or len(box) != len(size):
            yield f"{where}.{name} is {_kind(box)}, not {len(size)} non-negative ints (the tensor's dims)"
            return
    if any(o + s > d for o, s, d in zip(offsets, sizes, size)):
        yield f"{where} (offsets {list(offsets)}, sizes {list(sizes)}) lies outside the tensor {list(size)}"
    elements = 1
    for s in sizes:
        elements *= s
    if elements > MAX_COUNT:
        yield f"{where} holds {elements} elements, more than any real checkpoint"


def _storage(storage: Any) -> Iterator[str]:
    if storage is None:
        return
    if not isinstance(storage, dict):
        yield f"storage_data is {_kind(storage)}, not a dict of MetadataIndex -> storage record"
        return
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex):
            yield f"storage_data has a key {_kind(index)}, not a MetadataIndex"
            return
        fqn, offset, position = (
            _field(index, "fqn"),
            _field(index, "offset", None),
            _field(index, "index", None),
        )
        if not isinstance(fqn, str):
            yield f"a storage_data key's fqn is {_kind(fqn)}, not a string"
            return
        where = f"storage_data[{fqn!r}]"
        if offset is not None and not _is_box(offset):
            yield f"{where}'s MetadataIndex.offset is {_kind(offset)}, not a tuple of non-negative ints"
        if position is not None and not _is_count(position):
            yield f"{where}'s MetadataIndex.index is {_kind(position)}, not a non-negative int"
        yield from _record(info, where)


def _record(info: Any, where: str) -> Iterator[str]:
    """A storage record (``_StorageInfo``): a relative file inside the checkpoint, a byte range."""
    path = _field(info, "relative_path")
    if not isinstance(path, str) or not path:
        yield f"{where}.relative_path is {_kind(path)}, not a file name"
        return
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if (
        path.startswith(("/", "\\"))
        or ".." in parts
        or "\x00" in path
        or (parts and ":" in parts[0])
    ):
        yield (
            f"{where}.relative_path {path!r} is absolute or goes through '..': refusing a record "
            "that may lie outside the checkpoint directory"
        )
    for name in ("offset", "length"):
        value = _field(info, name)
        if not _is_count(value):
            yield f"{where}.{name} is {_kind(value)}, not a non-negative int below 2**53"
    transforms = _field(info, "transform_descriptors", None)
    if transforms is not None and (
        not isinstance(transforms, (list, tuple)) or not all(isinstance(t, str) for t in transforms)
    ):
        yield f"{where}.transform_descriptors is {_kind(transforms)}, not a list of strings"


# -- the same checks in bulk -------------------------------------------------------------------
# A 1024-rank save's metadata holds ~600k chunks and as many storage records; the walk above,
# one Python call per field, took ~15 s. These screens look at a whole entry (or all records)
# at once and answer only "certainly fine": anything else, or anything they do not expect
# (a subclass, a missing field), goes to the walk, which names the first problem. So the
# messages, and which problem comes first, are the walk's.
_BOX_TYPES = frozenset({tuple, torch.Size})


def _counts_fine(values: list[Any]) -> bool:
    """Every value is an int (not a bool) in [0, MAX_COUNT] (``_is_count`` of each)."""
    return not values or (
        set(map(type, values)) == {int} and min(values) >= 0 and max(values) <= MAX_COUNT
    )


def _boxes_fine(boxes: list[Any], ndim: int | None) -> list[int] | None:
    """Every box's values in a row, if every box is a tuple of counts (``_is_box``), of
    ``ndim`` dims when given; else None."""
    if not set(map(type, boxes)) <= _BOX_TYPES:
        return None
    if ndim is not None and set(map(len, boxes)) - {ndim}:
        return None
    values = list(chain.from_iterable(boxes))
    return values if _counts_fine(values) else None


def _chunks_fine(entry: Any) -> bool:
    """``_entry(entry, ...)`` would yield nothing (False: maybe it would)."""
    if type(entry) is BytesStorageMetadata:
        return True
    if type(entry) is not TensorStorageMetadata:
        return False
    props = getattr(entry, "properties", None)
    size, chunks = getattr(entry, "size", None), getattr(entry, "chunks", None)
    if (
        type(props) is not TensorProperties
        or not isinstance(getattr(props, "dtype", None), torch.dtype)
        or not isinstance(getattr(props, "requires_grad", None), bool)
        or type(size) not in _BOX_TYPES
        or _boxes_fine([size], None) is None
        or type(chunks) not in (list, tuple)
    ):
        return False
    if not chunks:
        return True
    if set(map(type, chunks)) != {ChunkStorageMetadata}:
        return False
    try:
        offsets = [c.offsets for c in chunks]
        sizes = [c.sizes for c in chunks]
    except AttributeError:
        return False
    ndim = len(size)
    flat_o, flat_n = _boxes_fine(offsets, ndim), _boxes_fine(sizes, ndim)
    if flat_o is None or flat_n is None:
        return False
    if ndim == 0:
        return True
    # Counts <= MAX_COUNT (2**53): int64 holds them and their sums.
    o = np.array(flat_o, dtype=np.int64).reshape(-1, ndim)
    n = np.array(flat_n, dtype=np.int64).reshape(-1, ndim)
    if ((o + n) > np.array(size, dtype=np.int64)).any():
        return False
    # Elements per chunk: a float product is close enough to tell "far below the bound".
    return bool((np.prod(n.astype(np.float64), axis=1) <= MAX_COUNT / 2).all())


def _storage_fine(storage: Any) -> bool:
    """``_storage(storage)`` would yield nothing (False: maybe it would)."""
    if storage is None:
        return True
    if type(storage) is not dict:
        return False
    if not storage:
        return True
    keys, infos = list(storage), list(storage.values())
    if set(map(type, keys)) != {MetadataIndex}:
        return False
    try:
        fqns = [k.fqn for k in keys]
        offsets = [k.offset for k in keys if k.offset is not None]
        positions = [k.index for k in keys if k.index is not None]
        paths = [i.relative_path for i in infos]
        starts = [i.offset for i in infos]
        lengths = [i.length for i in infos]
        transforms = [getattr(i, "transform_descriptors", None) for i in infos]
    except AttributeError:
        return False
    if set(map(type, fqns)) != {str} or _boxes_fine(offsets, None) is None:
        return False
    if not (_counts_fine(positions) and _counts_fine(starts) and _counts_fine(lengths)):
        return False
    if set(map(type, paths)) != {str} or any(_path_problem(p) for p in set(paths)):
        return False
    return all(
        t is None or (type(t) in (list, tuple) and all(type(d) is str for d in t))
        for t in transforms
    )


def _path_problem(path: str) -> bool:
    """What ``_record`` refuses in a relative path: empty, absolute, '..', NUL, a drive."""
    if not path:
        return True
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return (
        path.startswith(("/", "\\"))
        or ".." in parts
        or "\x00" in path
        or bool(parts and ":" in parts[0])
    )


def _field(obj: Any, name: str, default: Any = _MISSING) -> Any:
    """``obj.name``, or ``default``: a pickle can leave a field out (a field with a class-level
    default, as DCP's later additions have, then reads as that default)."""
    return getattr(obj, name, default)


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _is_box(value: Any) -> bool:
    return isinstance(value, tuple) and all(_is_count(v) for v in value)


def _kind(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    if value is None:
        return "None"
    return f"a {type(value).__name__}"
