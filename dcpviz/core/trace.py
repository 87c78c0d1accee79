"""The one data model: SaveTrace / LoadTrace, plain frozen dataclasses (slotted), versioned JSON on disk.

A trace holds no torch objects, so it opens anywhere (a trace captured on a 1024-GPU job opens on
a laptop), and never pickle. Write items are interned once in ``items`` and plans refer to them
by position, which keeps W x tensors plans small. Reading (typed decoding and the rules a trace
must keep) lives in ``trace_codec`` and ``trace_validate``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta

from dcpviz.core.errors import DcpvizError

SCHEMA = "dcpviz.trace"
VERSION = 1
MAX_WORLD_SIZE = 2**20  # far above any real job; bounds what a trace file can make us allocate

# Constrained ints: the decoder (trace_codec) enforces these bounds with the field's path in its
# error, so nothing downstream meets a negative size, rank or position.
MAX_COUNT = 2**53  # bytes or elements: 8 PiB, and still exact as a float64 in a table
Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]  # a length, a byte count, an element offset
Index = Annotated[int, Meta(ge=0, le=MAX_COUNT)]  # a position into one of the trace's tables
Rank = Annotated[int, Meta(ge=0, lt=MAX_WORLD_SIZE)]
Extent = Annotated[int, Meta(ge=1, le=MAX_WORLD_SIZE)]  # a world size or a mesh dim
Box = tuple[Count, ...]
Digest = Annotated[str, Meta(max_length=64)]  # a value's fingerprint (hex); never the value itself
# A digest of a container's structure only (its tensors had no values, e.g. meta in simulation):
# different ones prove different values, equal ones prove nothing.
STRUCTURE_PREFIX = "s:"


@dataclass(frozen=True, slots=True)
class ScenarioInfo:
    """The job a trace describes: model, world size, mesh and its dim names, recipe, dtype, device."""

    model: str
    world_size: Extent
    mesh: tuple[Extent, ...]
    mesh_dim_names: tuple[str, ...]
    recipe: str
    dtype: str
    device: str
    # Added with training states (issue 11); defaults keep older traces readable.
    optimizer: str = ""  # '' = none; else the preset name or 'callable:module.qualname'
    state: str = ""  # '' = the model's (and optimizer's) state dict; else preset / callable name
    # key prefix -> component ("optim" -> "optim", "app.model" -> "model"); see components.py
    components: tuple[tuple[str, str], ...] = ()

    def coordinate(self, rank: int) -> tuple[int, ...]:
        """Rank ``rank``'s coordinate in the mesh (row-major, as DeviceMesh lays ranks out)."""
        coord = []
        for d in reversed(self.mesh):
            coord.append(rank % d)
            rank //= d
        return tuple(reversed(coord))


@dataclass(frozen=True, slots=True)
class PlannerInfo:
    """Which planner ran, and its options (simple-valued public attributes)."""

    cls: str
    module: str
    options: tuple[tuple[str, str | int | float | bool | None], ...] = ()
    is_dcp_default: bool = False

    def option(self, name: str, default: Any = None) -> Any:
        """The planner option ``name`` as recorded, or ``default`` when it was not."""
        return dict(self.options).get(name, default)


@dataclass(frozen=True, slots=True)
class PlannedItem:
    """One WriteItem as the planner produced it.

    ``offsets``/``sizes`` are the chunk's box (empty tuples for a 0-d tensor, None for bytes);
    ``index_offsets`` is MetadataIndex.offset when it differs from ``offsets``.
    ``nbytes`` is the bytes stored for the item: chunk elements x element size for tensors, the
    serialised length for bytes. ``dcp_size`` is ``WriteItem.tensor_storage_size()``, which DCP's
    dedup uses to balance ranks: note it is the *global* tensor's size even for a shard.
    """

    fqn: str
    item_type: str
    offsets: Box | None
    sizes: Box | None
    global_size: Box | None
    dtype: str | None
    nbytes: Count
    dcp_size: Count | None
    index_offsets: Box | None = None

    @property
    def key(self) -> tuple[str, Box | None]:
        """DCP's identity of an item (MetadataIndex equality: fqn and offset)."""
        return (self.fqn, self.index_offsets if self.index_offsets is not None else self.offsets)


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """One ReadItem of a load plan: a box of a saved chunk copied into a box of a target chunk.

    ``fqn`` is ``dest_index.fqn`` (the target's key); ``storage_fqn`` is ``storage_index.fqn``
    only where it differs (a planner that renames). ``dest_chunk_offsets`` is
    ``dest_index.offset`` (which local chunk is filled), ``saved_offsets`` is
    ``storage_index.offset`` (which saved chunk is read) and ``saved_chunk`` its position in the
    checkpoint metadata's chunk list (``storage_index.index``). ``nbytes`` is the box's elements
    times the saved dtype's size (0 for bytes items).
    """

    fqn: str
    item_type: str  # LoadItemType name: 'TENSOR' | 'BYTE_IO'
    dest_chunk_offsets: Box | None
    dest_offsets: Box
    saved_offsets: Box | None
    saved_chunk: Index | None
    storage_offsets: Box
    lengths: Box
    nbytes: Count
    storage_fqn: str | None = None


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """One rank's plan at one phase: positions into the trace's item table. ``usable=False`` is
    an empty "unchanged" marker whose real plan the trace does not hold (older captures);
    ``cached=True`` is a plan DCP took from its plan cache, recorded in full."""

    items: tuple[Index, ...]
    usable: bool = True
    # Added with issue 20 (plan caching): the rank sent DCP's "unchanged" marker (local plans) or
    # was sent one (global plans), and ``items`` is the cached plan DCP really used.
    cached: bool = False


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """One saved chunk of a tensor: where it starts and its size, per dimension."""

    offsets: Box
    sizes: Box


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of the checkpoint metadata: global size, dtype, its chunks."""

    fqn: str
    size: Box
    dtype: str
    chunks: tuple[ChunkInfo, ...]
    requires_grad: bool = False


@dataclass(frozen=True, slots=True)
class StorageEntry:
    """Where DCP stored one item: metadata's storage_data (present once bytes were written)."""

    fqn: str
    offsets: Box | None
    relative_path: str
    offset: Count
    length: Count


@dataclass(frozen=True, slots=True)
class MetadataInfo:
    """The facts of DCP's Metadata, enough to rebuild an equivalent torch object."""

    tensors: tuple[TensorEntry, ...]
    bytes_keys: tuple[str, ...] = ()
    planner_data: tuple[tuple[str, tuple[str | int, ...]], ...] = ()
    storage: tuple[StorageEntry, ...] = ()
    version: str | None = None


@dataclass(frozen=True, slots=True)
class TensorLayout:
    """How a DTensor is laid out: placements and its mesh. Merged over the ranks' state dicts
    (a simulation takes each pipeline stage's first rank, a capture every rank), so keys the
    coordinator lacks are described too; a key laid out differently on two ranks has the
    placements ``"(differs by rank)"``."""

    fqn: str
    placements: str
    mesh_dim_names: tuple[str, ...]
    mesh_shape: tuple[Extent, ...]


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A failure recorded as data: the phase, the rank (None: the coordinator), the exception's type and text."""

    phase: str  # 'build' | 'local' | 'global' | 'finish' | 'write' | ...
    rank: Rank | None
    exc_type: str
    message: str

    def __str__(self) -> str:
        where = f"rank {self.rank}" if self.rank is not None else "coordinator"
        return f"[{self.phase}, {where}] {self.exc_type}: {self.message}"


@dataclass(frozen=True, slots=True)
class ValueDigest:
    """A fingerprint of one rank's value under a key DCP deduplicates (a plain tensor, a Python
    value, a bytes entry, the local shard of a replicated DTensor): DCP's dedup keeps one rank's
    copy of such a key, so whether the ranks' values agree decides whether anything is lost.
    Only values that exist are fingerprinted (never a meta tensor); every byte is hashed, after
    canonicalising sets and dict order (``engine.values.digests.value_digest``)."""

    fqn: str
    rank: Rank
    digest: Digest
    # Added with issue 20 (replicated DTensors): the chunk's offsets, None for a whole value.
    offsets: Box | None = None


@dataclass(frozen=True, slots=True)
class DedupAlternative:
    """Per-rank write volume had the coordinator deduplicated with the other
    ``dedup_save_to_lowest_rank`` option: DCP's own ``dedup_save_plans`` on the same local plans."""

    lowest_rank: bool  # the option value these numbers are for
    rank_items: tuple[Count, ...]
    rank_nbytes: tuple[Count, ...]


@dataclass(frozen=True, slots=True)
class FileItem:
    """One item of one file, as a storage writer's own planning splits a final plan into files
    (``engine/storage/writer_plan.py``; nothing is written). ``stage``: 'write' (a rank's
    ``write_data``) or 'consolidate' (the coordinator's consolidation into an output file).

    ``nbytes``: the item's data bytes: a tensor chunk's elements x element size (DCP's
    ``_item_size``; the stored length in a safetensors file), or a BYTE_IO entry's serialised
    length (0 when unknown). ``item_type``: DCP's WriteItemType name.
    """

    rank: Rank
    file: str
    fqn: str
    offsets: Box
    sizes: Box
    item_type: str
    dtype: str
    nbytes: Count
    stage: str = "write"


@dataclass(frozen=True, slots=True)
class StorageWriterInfo:
    """The storage writer a simulated save planned with: class, module, the options that decide
    its files (as text), and whether dcpviz could run its split into files."""

    cls: str
    module: str
    options: tuple[tuple[str, str], ...] = ()
    files_known: bool = True
    # Keys of the final plans that fqn_to_index_mapping lacks (DCP's write_data raises KeyError).
    unmapped_keys: tuple[str, ...] = ()
    # *.safetensors files already in the output folder that the save does not overwrite, with the
    # keys their headers name (None: the header could not be read); DCP's HF reader reads them all.
    stale_files: tuple[tuple[str, tuple[str, ...] | None], ...] = ()


@dataclass(frozen=True, slots=True)
class SaveTrace:
    """Everything one save planning did, on every rank: items, local/global/final plans, metadata, errors, notes."""

    scenario: ScenarioInfo
    planner: PlannerInfo
    items: tuple[PlannedItem, ...]
    local_plans: tuple[PlanRecord | None, ...]
    global_plans: tuple[PlanRecord, ...] | None
    final_plans: tuple[PlanRecord, ...] | None
    metadata: MetadataInfo | None
    errors: tuple[ErrorRecord, ...] = ()
    global_plan_validated: bool = True
    timings: tuple[tuple[str, float], ...] = ()
    notes: tuple[str, ...] = ()
    layouts: tuple[TensorLayout, ...] = ()
    source: str = "simulate"  # 'simulate' | 'run' | 'capture'
    torch_version: str = ""
    dcpviz_version: str = ""
    created: str = ""
    # Added for checks (issue 12); defaults keep older traces readable.
    value_digests: tuple[ValueDigest, ...] = ()
    dedup_alternative: DedupAlternative | None = None
    # Added with issue 20: groups of keys that hold one tensor (tied weights, e.g. wte.weight and
    # lm_head.weight), from the state dict of rank 0 (simulate) or of the coordinator (capture).
    tied_keys: tuple[tuple[str, ...], ...] = ()
    # Added for storage writers (issue 23): the writer's own file split of every final plan.
    storage_writer: StorageWriterInfo | None = None
    file_plan: tuple[FileItem, ...] = ()
    kind: str = field(default="save", init=False)


@dataclass(frozen=True, slots=True)
class TargetValue:
    """One value of a target rank's (flattened) state dict, as the load planner was given it.

    ``kind`` is the value's type name ('DTensor', 'Tensor', 'ShardedTensor', or the Python type
    of a non-tensor value). ``size`` is the global size; ``chunks`` are the boxes this rank holds
    (DCP's own ``_create_chunk_list``), empty for non-tensors. ``placements`` is the DTensor's
    placements as text.
    """

    fqn: str
    kind: str
    size: Box | None
    dtype: str | None
    chunks: tuple[ChunkInfo, ...] = ()
    placements: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkWriter:
    """Who wrote one saved item: its writer rank and storage file, where known.

    From a save trace the writer is the rank whose final plan wrote it; from a checkpoint
    directory it is read off the file name DCP's FileSystemWriter gives it (``__{rank}_{n}.distcp``).
    """

    fqn: str
    offsets: Box | None  # the saved chunk's offsets; None for a bytes entry
    rank: Rank | None
    file: str | None = None
    storage_nbytes: Count | None = None  # the stored item's length in its file, when on disk


@dataclass(frozen=True, slots=True)
class MismatchRecord:
    """A key or a tensor on which the target and the checkpoint disagree, on some target ranks.

    ``kind``: 'missing' (the target wants a key the checkpoint lacks), 'unexpected' (the
    checkpoint has a key no target rank wants), 'size', 'dtype', 'type' (tensor vs. non-tensor)
    or 'other' (DCP raised on a key for a reason none of these describe). ``message`` is DCP's
    own exception text for the key, '' where DCP does not raise. ``ranks`` are the target ranks
    concerned (empty for 'unexpected').
    """

    fqn: str
    kind: str
    ranks: tuple[Rank, ...]
    saved_size: Box | None = None
    saved_dtype: str | None = None
    current_size: Box | None = None
    current_dtype: str | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class LoadTrace:
    """A load planned against a checkpoint on every rank of a target layout.

    ``reads`` interns read items; ``local_plans`` / ``global_plans`` / ``final_plans`` refer to
    them by position, per target rank. ``wanted`` interns the target's state-dict values and
    ``wanted_by_rank`` lists, per rank, the positions of the values that rank holds.
    """

    scenario: ScenarioInfo  # the target
    planner: PlannerInfo
    saved: MetadataInfo  # the checkpoint's metadata the load planned against
    saved_scenario: ScenarioInfo | None
    saved_writers: tuple[ChunkWriter, ...]
    reads: tuple[ReadRecord, ...]
    local_plans: tuple[PlanRecord | None, ...]
    global_plans: tuple[PlanRecord, ...] | None
    final_plans: tuple[PlanRecord, ...] | None
    wanted: tuple[TargetValue, ...]
    wanted_by_rank: tuple[tuple[Index, ...], ...]
    mismatches: tuple[MismatchRecord, ...] = ()
    errors: tuple[ErrorRecord, ...] = ()
    timings: tuple[tuple[str, float], ...] = ()
    notes: tuple[str, ...] = ()
    source: str = "simulate"
    saved_source: str = ""  # 'save trace (simulate)', 'checkpoint /path', ...
    torch_version: str = ""
    dcpviz_version: str = ""
    created: str = ""
    # Checkpoint keys (or glob patterns) the user leaves unread on purpose: not a problem.
    expected_unused: tuple[str, ...] = ()
    kind: str = field(default="load", init=False)


Trace = SaveTrace | LoadTrace


# -- JSON ---------------------------------------------------------------------------------------
def to_plain(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists; everything else must already be JSON-safe."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def trace_to_dict(trace: Trace) -> dict[str, Any]:
    """A trace as plain JSON-ready data (the document ``write_trace`` writes)."""
    return {"schema": SCHEMA, "version": VERSION, "kind": trace.kind, "trace": to_plain(trace)}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _shallow(obj: Any) -> dict[str, Any]:
    """json's hook for a dataclass: its fields, one level (the C encoder does the rest)."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            raise TypeError(f"{type(obj).__name__} is not JSON-safe")
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
    return {n: getattr(obj, n) for n in names}


def trace_json(trace: Trace) -> str:
    """The JSON text of ``trace_to_dict(trace)``, built by json's C encoder (a trace of a
    1000-rank job holds ~10^6 small records: this is several times faster than to_plain + dump)."""
    doc = {"schema": SCHEMA, "version": VERSION, "kind": trace.kind, "trace": trace}
    return json.dumps(doc, separators=(",", ":"), default=_shallow)


def write_trace(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write ``trace`` as JSON; the file is replaced atomically so a crash never leaves half."""
    path = writable_file(path, "trace")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(trace_json(trace))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing next to the target
    return path


def writable_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path whose parent exists; a directory there is a user mistake, not a
    file to replace."""
    path = Path(path)
    if path.is_dir():
        raise DcpvizError(
            f"the {what} path {str(path)!r} is a directory; pass a file path such as "
            f"{str(path / ('report.html' if what == 'report' else 'trace.json'))!r}."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, no permission
        raise DcpvizError(
            f"cannot create the folder for the {what} {str(path)!r}: {exc.strerror or exc}."
        ) from None
    return path
