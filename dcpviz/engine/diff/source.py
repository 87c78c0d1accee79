"""Open one side of a diff: a DCP directory, a safetensors folder (or file), or a save trace
(a file, a SaveTrace, or a result handed over as a SavedTrace), as a plain ``DiffSide``.

A DCP directory is read as ``inspect_checkpoint`` reads it (restricted unpickler for
``.metadata``; every storage record inside the directory and within its file); a safetensors
folder by its headers only (``core.hf.safetensors``). Nothing is unpickled, no data read here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dcpviz.core.diff_model import (
    DCP_RECORD,
    NO_DATA,
    SAFETENSORS_RAW,
    DiffSide,
    SideChunk,
    SideEntry,
)
from dcpviz.core.errors import CheckpointError, DcpvizError
from dcpviz.core.filenames import writer_from_file
from dcpviz.core.hf.safetensors import SHARDING_KEY, is_safetensors, read_folder, sharding_offsets
from dcpviz.core.trace import LoadTrace, SaveTrace
from dcpviz.engine.checkpoint.reader import METADATA_FILE, read_checkpoint
from dcpviz.engine.checkpoint.saved import SavedTrace, resolve_saved
from dcpviz.engine.convert.shared import metadata_info


def open_side(value: Any, label: str) -> DiffSide:
    """``value`` as a DiffSide; ``label`` ('A', 'B') names it in messages."""
    if isinstance(value, (SavedTrace, SaveTrace, LoadTrace)):
        return _trace_side(value, label)
    if not isinstance(value, (str, os.PathLike)):
        raise DcpvizError(
            f"{label}={type(value).__name__} cannot be diffed: pass a DCP checkpoint directory, a "
            "safetensors folder or file, a save trace (.json), or a SaveResult."
        )
    path = Path(value)
    if not path.exists():
        raise DcpvizError(
            f"{label}={str(path)!r} does not exist: pass a DCP checkpoint directory, "
            "a safetensors folder or file, or a save trace (.json)."
        )
    if path.is_dir() and (path / METADATA_FILE).exists():
        return _dcp_side(path, label)
    if is_safetensors(path):
        return _safetensors_side(path, label)
    if path.is_dir():
        raise CheckpointError(
            f"{label}={str(path)!r} is neither a DCP checkpoint (no {METADATA_FILE}) nor a "
            "safetensors folder (no *.safetensors file)."
        )
    if path.name == METADATA_FILE or path.suffix == ".distcp":
        raise CheckpointError(
            f"{label}={str(path)!r} is a file inside a DCP checkpoint; pass its "
            f"directory ({str(path.parent)!r})."
        )
    return _trace_side(path, label)


def _dcp_side(path: Path, label: str) -> DiffSide:
    facts = read_checkpoint(
        path, verify="none"
    )  # paths, bounds and metadata checked; records read later
    info = metadata_info(facts.metadata)
    where = {
        (fqn, tuple(off)): (rel, offset, length)
        for fqn, off, rel, offset, length, _rank in facts.storage_rows
    }
    transforms = {
        (idx.fqn, tuple(idx.offset) if idx.offset is not None else ()): tuple(
            s.transform_descriptors
        )
        for idx, s in (getattr(facts.metadata, "storage_data", None) or {}).items()
        if getattr(s, "transform_descriptors", None)
    }

    def chunk(fqn: str, offsets: tuple[int, ...], sizes: tuple[int, ...], key: tuple) -> SideChunk:
        rel, offset, length = where[key]
        return SideChunk(
            offsets, sizes, rel, offset, length, writer_from_file(rel), transforms.get(key, ())
        )

    entries = [
        SideEntry(
            t.fqn,
            "tensor",
            t.dtype,
            tuple(t.size),
            tuple(
                chunk(t.fqn, tuple(c.offsets), tuple(c.sizes), (t.fqn, tuple(c.offsets)))
                for c in t.chunks
            ),
        )
        for t in info.tensors
    ]
    entries += [
        SideEntry(k, "bytes", None, None, (chunk(k, (), (), (k, ())),)) for k in info.bytes_keys
    ]
    notes = tuple(
        f"{label}: a stale data file no record points at: {name}" for name in facts.stale_files
    )
    used = sorted({t for ts in transforms.values() for t in ts})
    if used:
        notes += (
            f"{label}: {len(transforms)} storage record(s) are written through storage transforms "
            f"({', '.join(used)}); dcpviz does not run them, so those keys' values are not compared.",
        )
    return DiffSide(f"{label}: {path}", "dcp", DCP_RECORD, str(facts.path), _sorted(entries), notes)


def _safetensors_side(path: Path, label: str) -> DiffSide:
    folder = read_folder(path)
    parts: dict[str, list[tuple[str, tuple[int, ...], Any, Any]]] = {}
    sharded = {n for n, h in folder.files if any(k == SHARDING_KEY for k, _ in h.metadata)}
    for name, header in folder.files:
        offsets = sharding_offsets(header, repr(str(folder.root / name)))
        for e in header.entries:
            off = offsets.get(e.name, (0,) * len(e.shape))
            parts.setdefault(e.name, []).append((name, off, e, header.data_start))
    entries = []
    for fqn, pieces in parts.items():
        dtypes = {e.dtype for _n, _o, e, _s in pieces}
        if len(dtypes) > 1:
            raise CheckpointError(
                f"{label}={str(path)!r}: tensor {fqn!r} is stored with dtypes {sorted(dtypes)} "
                "in different files."
            )
        if len(pieces) > 1 and any(n not in sharded for n, *_ in pieces):
            files = sorted(n for n, *_ in pieces)
            raise CheckpointError(
                f"{label}={str(path)!r}: tensor {fqn!r} is in several files ({', '.join(files)}) with no "
                "DCP sharding info: a stale file from an earlier save? Diff one file, or remove the stale ones."
            )
        shape = _global_shape(pieces)
        chunks = tuple(
            SideChunk(off, e.shape, n, start + e.begin, e.nbytes, None)
            for n, off, e, start in pieces
        )
        entries.append(SideEntry(fqn, "tensor", next(iter(dtypes)), shape, chunks))
    notes = tuple(
        f"{label}: {n} is not in the index (left by an earlier save?); not read"
        for n in folder.unindexed_files
    )
    return DiffSide(
        f"{label}: {path}",
        "safetensors",
        SAFETENSORS_RAW,
        str(folder.root),
        _sorted(entries),
        notes,
    )


def _global_shape(pieces: list) -> tuple[int, ...]:
    first = pieces[0][2].shape
    if any(len(e.shape) != len(first) for _n, _o, e, _s in pieces):
        raise CheckpointError(
            f"tensor {pieces[0][2].name!r} has pieces of different ranks in different files."
        )
    return tuple(max(off[d] + e.shape[d] for _n, off, e, _s in pieces) for d in range(len(first)))


def _trace_side(value: Any, label: str) -> DiffSide:
    if isinstance(value, LoadTrace) or (
        isinstance(value, SavedTrace) and isinstance(value.trace, LoadTrace)
    ):
        raise DcpvizError(
            f"{label} is a load trace: diff compares checkpoints, so pass a save trace, "
            "a SaveResult or a checkpoint."
        )
    saved = resolve_saved(value)
    writers = {(w.fqn, w.offsets): w for w in saved.writers}

    def chunk(fqn: str, offsets: Any, sizes: tuple[int, ...]) -> SideChunk:
        w = writers.get((fqn, offsets))
        return SideChunk(
            tuple(offsets or ()),
            sizes,
            w.file if w else None,
            None,
            w.storage_nbytes if w else None,
            w.rank if w else None,
        )

    entries = [
        SideEntry(
            t.fqn,
            "tensor",
            t.dtype,
            tuple(t.size),
            tuple(chunk(t.fqn, tuple(c.offsets), tuple(c.sizes)) for c in t.chunks),
        )
        for t in saved.info.tensors
    ]
    entries += [
        SideEntry(k, "bytes", None, None, (chunk(k, None, ()),)) for k in saved.info.bytes_keys
    ]
    name = str(value) if isinstance(value, (str, os.PathLike)) else saved.source
    return DiffSide(
        f"{label}: {name}", "trace", NO_DATA, None, _sorted(entries), tuple(saved.notes)
    )


def _sorted(entries: list[SideEntry]) -> tuple[SideEntry, ...]:
    return tuple(sorted(entries, key=lambda e: e.fqn))
