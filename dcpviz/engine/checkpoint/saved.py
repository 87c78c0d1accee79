"""The saved side of a load: whatever the user passed as ``saved``, as DCP Metadata plus the facts
dcpviz knows about who wrote each chunk and where it lies.

Accepted: a SaveResult, a save-trace JSON file, a checkpoint directory (only ``.metadata`` is
read, through dcpviz's restricted unpickler — never plain pickle), or a DCP ``Metadata`` object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata

from dcpviz.core.errors import CheckpointError, DcpvizError, TraceFileError
from dcpviz.core.filenames import writer_from_file
from dcpviz.core.gc_pause import gc_paused
from dcpviz.core.plans import writer_ranks
from dcpviz.core.trace import ChunkWriter, LoadTrace, MetadataInfo, SaveTrace, ScenarioInfo
from dcpviz.core.trace_codec import read_trace
from dcpviz.engine.checkpoint.reader import (
    METADATA_FILE,
    read_metadata,
    storage_shortfalls,
)
from dcpviz.engine.convert.shared import metadata_info, torch_metadata


@dataclass
class SavedCheckpoint:
    """The saved side of a load: DCP Metadata plus what dcpviz knows about its writers."""

    metadata: Metadata
    info: MetadataInfo
    scenario: ScenarioInfo | None
    writers: tuple[ChunkWriter, ...]
    source: str
    notes: list[str] = field(default_factory=list)
    # (fqn, offsets) -> (exception type, message) for records whose data file is missing or too
    # short (a checkpoint directory only; sizes from os.stat, no data read).
    unreadable: dict[tuple, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedTrace:
    """A trace handed over with the Metadata object it came with (what the public entry points
    make of a result), so this layer never needs to know result classes. ``label`` names the
    argument in messages ('<SaveResult>')."""

    trace: SaveTrace | LoadTrace
    metadata: Metadata | None
    label: str


def _storage_writers(md: Metadata) -> dict[tuple[str, tuple[int, ...] | None], ChunkWriter]:
    out: dict[tuple[str, tuple[int, ...] | None], ChunkWriter] = {}
    if not isinstance(md.storage_data, dict):
        return out
    for index, info in md.storage_data.items():
        if not isinstance(index, MetadataIndex) or not hasattr(info, "relative_path"):
            continue
        offsets = tuple(map(int, index.offset)) if index.offset is not None else None
        path = str(info.relative_path)
        out[(index.fqn, offsets)] = ChunkWriter(
            fqn=index.fqn,
            offsets=offsets,
            rank=writer_from_file(path),
            file=path,
            storage_nbytes=int(info.length),
        )
    return out


def _writers(
    md: Metadata, trace_writers: dict[tuple[str, Any], int] | None
) -> tuple[ChunkWriter, ...]:
    """One ChunkWriter per saved chunk (and bytes entry), in metadata order."""
    stored = _storage_writers(md)
    trace_writers = trace_writers or {}
    out = []
    for fqn, value in md.state_dict_metadata.items():
        keys = (
            [
                (fqn, tuple(map(int, c.offsets))) for c in value.chunks
            ]  # map: 3x a generator, 740k chunks at 1024
            if isinstance(value, TensorStorageMetadata)
            else [(fqn, None)]
        )
        for key in keys:
            w = stored.get(key)
            rank = trace_writers.get(key)
            if w is None:
                out.append(ChunkWriter(fqn=key[0], offsets=key[1], rank=rank))
            elif w.rank is None and rank is not None:
                out.append(ChunkWriter(w.fqn, w.offsets, rank, w.file, w.storage_nbytes))
            else:
                out.append(w)
    return tuple(out)


def _from_save_trace(trace: SaveTrace, metadata: Metadata | None, source: str) -> SavedCheckpoint:
    if trace.metadata is None:
        errs = "; ".join(str(e) for e in trace.errors[:3]) or "no metadata recorded"
        raise DcpvizError(
            f"saved={source} has no checkpoint metadata: its save plan failed ({errs}). A load can "
            "only be planned against a checkpoint DCP would have written; fix the save first."
        )
    md = metadata if metadata is not None else torch_metadata(trace.metadata)
    notes = []
    if not trace.global_plan_validated:
        notes.append(
            "The save this load is planned against failed DCP's validation; its metadata is what "
            "was planned before validation, which dcp.save would never have written."
        )
    return SavedCheckpoint(
        metadata=md,
        info=trace.metadata,
        scenario=trace.scenario,
        writers=_writers(md, writer_ranks(trace)),
        source=f"save trace ({trace.source})",
        notes=notes,
    )


def _wrong_kind(what: str) -> TraceFileError:
    return TraceFileError(
        f"saved={what} is a *load* trace. simulate_load plans a load against a checkpoint: pass the "
        "SaveResult, the save trace (result.to_json of simulate_save), or the checkpoint directory "
        "the load was planned against (a LoadResult's checkpoint is in result.trace.saved)."
    )


def _from_path(path: Path) -> SavedCheckpoint:
    if path.is_dir():
        with gc_paused():  # per-record passes over ~600k records at 1024 ranks
            md = read_metadata(path)
            ck = SavedCheckpoint(
                metadata=md,
                info=metadata_info(md),
                scenario=None,
                writers=_writers(md, None),
                source=f"checkpoint {str(path)!r}",
                unreadable=storage_shortfalls(path, md),
            )
        if not any(w.rank is not None for w in ck.writers):
            ck.notes.append(
                "The checkpoint's file names do not follow FileSystemWriter's __{rank}_{n}.distcp "
                "scheme, so writer ranks are unknown."
            )
        return ck
    if path.is_file() and (path.name == METADATA_FILE or path.suffix == ".distcp"):
        raise CheckpointError(
            f"saved={str(path)!r} is a file inside a DCP checkpoint; pass the checkpoint directory "
            f"itself ({str(path.parent)!r})."
        )
    if not path.exists():
        raise CheckpointError(
            f"saved={str(path)!r} does not exist. Pass a checkpoint directory written by dcp.save, "
            "a save trace (.json) or a SaveResult."
        )
    trace = read_trace(path)
    if isinstance(trace, LoadTrace):
        raise _wrong_kind(repr(str(path)))
    return _from_save_trace(trace, None, repr(str(path)))


def resolve_saved(saved: Any) -> SavedCheckpoint:
    """Turn ``saved`` into DCP Metadata plus writer facts; raise a DcpvizError naming the fix."""
    if isinstance(
        saved, SavedCheckpoint
    ):  # already resolved (a safetensors folder: engine/storage/hf_load.py)
        return saved
    if isinstance(saved, SavedTrace):
        if isinstance(saved.trace, LoadTrace):
            raise _wrong_kind(saved.label)
        return _from_save_trace(saved.trace, saved.metadata, saved.label)
    if isinstance(saved, LoadTrace):
        raise _wrong_kind(f"<{type(saved).__name__}>")
    if isinstance(saved, SaveTrace):
        return _from_save_trace(saved, None, "<SaveTrace>")
    if isinstance(saved, Metadata):
        return SavedCheckpoint(
            metadata=saved,
            info=metadata_info(saved),
            scenario=None,
            writers=_writers(saved, None),
            source="Metadata object",
        )
    if isinstance(saved, (str, os.PathLike)):
        return _from_path(Path(saved))
    raise DcpvizError(
        f"saved={type(saved).__name__} is not something a load can be planned against. Pass a "
        "SaveResult (dcpviz.simulate_save), a save trace file, a checkpoint directory, or DCP Metadata."
    )
