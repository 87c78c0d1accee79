"""A storage writer's own planning steps, run for every simulated rank, writing nothing.

``dcp.save`` calls, on each rank's own writer: ``set_up_storage_writer`` and
``prepare_local_plan`` (after the planner's local plan), on the coordinator's writer
``prepare_global_plan`` (after the planner's global plan), and ``write_data`` on the final plan.
``StoragePlanning`` makes the same calls on a shallow copy of the user's writer per rank, in the
same order, on the planner's real plans. Two things keep it from writing:

- the copy's ``fs`` is a read-only stand-in: ``exists``/``concat_path`` answer as the real file
  system does (so "Checkpoint already exists" is raised as in a real save), ``mkdir`` does
  nothing, and any stream, rename or removal raises;
- ``write_data`` runs only for DCP's own writers (``FileSystemWriter``,
  ``HuggingFaceStorageWriter``), whose ``write_data`` splits the plan into files (DCP's
  ``_split_by_size_and_type`` / ``_split_by_storage_plan``, file names) and hands the files to
  ``_write_data``; the copy's ``_write_data`` takes the queue of (path, file name, items) and
  writes nothing. Any other writer's split is not run, and its files are reported unknown.

Consolidation (``HuggingFaceStorageWriter(save_distributed=True, enable_consolidation=True)``)
writes output files named by DCP's ``_gen_file_name`` from ``fqn_to_index_mapping`` (every key
in file 1 without one), one whole tensor per key: those are the 'consolidate' rows.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import queue
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint._hf_utils import _gen_file_name
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.planner import SavePlan, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter
from torch.futures import Future

from dcpviz.core.errors import CheckpointError, DcpvizError
from dcpviz.core.hf.safetensors import SUFFIX, read_header
from dcpviz.core.trace import FileItem, StorageWriterInfo

_OPTIONS = (
    "thread_count",
    "single_file_per_rank",
    "serialization_format",
    "save_distributed",
    "enable_consolidation",
    "fqn_to_index_mapping",
    "overwrite",
)


class _NoWriteFS:
    """The writer's file system, read-only: what it answers about the disk is real; it changes nothing."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def concat_path(self, path: Any, suffix: str) -> Any:
        return self._fs.concat_path(path, suffix)

    def exists(self, path: Any) -> bool:
        return self._fs.exists(path)

    def init_path(self, path: Any) -> Any:
        return self._fs.init_path(path)

    def mkdir(self, path: Any) -> None:  # a simulation creates no folder
        return None

    def __getattr__(self, name: str) -> Any:
        raise DcpvizError(
            f"a simulated save does not call the file system's {name!r}; "
            "this storage writer writes during planning, which dcpviz cannot simulate."
        )


class _FileQueueTaker(FileSystemWriter):
    """Sits right above FileSystemWriter in a writer copy's class order, so the writer's own
    ``write_data`` (and HuggingFaceStorageWriter's ``super()._write_data``) hands its files here:
    they are kept, nothing is written."""

    def _write_data(self, planner: Any, file_queue: queue.Queue) -> Future:
        while True:
            try:
                _path, name, items = file_queue.get_nowait()
            except queue.Empty:
                break
            self._dcpviz_files.append((name, list(items)))
        fut: Future = Future()
        fut.set_result([])
        return fut


@functools.cache
def _capturing_class(cls: type) -> type:
    """``cls`` with _FileQueueTaker right above FileSystemWriter in its class order (one per class)."""
    bases = (_FileQueueTaker,) if cls is FileSystemWriter else (cls, _FileQueueTaker)
    return type(f"Simulated{cls.__name__}", bases, {"__module__": __name__})


def _capturing(writer: Any) -> Any:
    """A copy of ``writer`` whose ``_write_data`` keeps the file queue (see _FileQueueTaker)."""
    w = copy.copy(writer)
    w.__class__ = _capturing_class(type(writer))
    w._dcpviz_files = []
    return w


def _writes_through_queue(writer: Any) -> bool:
    """True for DCP's own writers, whose write_data only splits and hands files to _write_data."""
    own = {FileSystemWriter.write_data, HuggingFaceStorageWriter.write_data}
    return (
        isinstance(writer, FileSystemWriter)
        and type(writer).write_data in own
        and type(writer)._write_data is FileSystemWriter._write_data
    )


def _option_text(value: Any) -> str:
    if isinstance(value, dict):
        return f"{len(value)} keys -> {len(set(value.values()))} files"
    return getattr(value, "name", None) or repr(value)


def writer_info(writer: Any) -> StorageWriterInfo:
    """The writer's class and the options that decide its files."""
    opts = tuple((k, _option_text(getattr(writer, k))) for k in _OPTIONS if hasattr(writer, k))
    return StorageWriterInfo(
        cls=type(writer).__qualname__,
        module=type(writer).__module__,
        options=opts,
        files_known=_writes_through_queue(writer),
    )


def _item_nbytes(item: Any, byte_sizes: dict[str, int] | None) -> tuple[int, str]:
    if item.type == WriteItemType.BYTE_IO:
        return (byte_sizes or {}).get(item.index.fqn, 0), ""
    td = item.tensor_data
    n = 1
    for s in td.chunk.sizes:
        n *= int(s)
    dtype = td.properties.dtype
    return n * torch._utils._element_size(dtype), str(dtype).removeprefix("torch.")


class StoragePlanning:
    """One storage writer's planning over a simulated save: a copy of the writer per rank."""

    def __init__(self, writer: Any, world_size: int) -> None:
        if not isinstance(writer, StorageWriter):
            raise DcpvizError(
                f"storage_writer must be a torch.distributed.checkpoint StorageWriter "
                f"instance, got {type(writer).__name__}."
            )
        self.info = writer_info(writer)
        self.world_size = world_size
        self._template = writer
        self.writers: dict[int, Any] = {}
        self.finals: dict[int, SavePlan] = {}

    def _writer(self, rank: int) -> Any:
        w = self.writers.get(rank)
        if w is None:
            w = copy.copy(self._template)  # each rank of a real job builds its own writer
            if hasattr(w, "fs"):
                w.fs = _NoWriteFS(w.fs)
            self.writers[rank] = w
        return w

    def local_step(
        self,
        plans: Sequence[SavePlan | None],
        fail: Callable[[int, BaseException], None],
    ) -> list[SavePlan | None]:
        """Each rank's ``set_up_storage_writer`` + ``prepare_local_plan``, as dcp.save calls them."""
        out: list[SavePlan | None] = []
        for r, plan in enumerate(plans):
            if plan is None:
                out.append(None)
                continue
            w = self._writer(r)
            try:
                if "kwargs" in inspect.signature(w.set_up_storage_writer).parameters:
                    w.set_up_storage_writer(r == 0, rank=r, use_collectives=True)
                else:
                    w.set_up_storage_writer(r == 0)
                out.append(w.prepare_local_plan(plan))
            except Exception as exc:  # a writer failure is data, as a planner's is
                fail(r, exc)
                out.append(None)
        return out

    def global_step(self, plans: list[SavePlan]) -> list[SavePlan]:
        """The coordinator's ``prepare_global_plan`` (raises as the writer raises)."""
        return list(self._writer(0).prepare_global_plan(list(plans)))

    def final(self, rank: int, plan: SavePlan) -> SavePlan:
        self.finals[rank] = plan
        return plan

    def file_plan(
        self,
        planner_of: Callable[[int], Any],
        byte_sizes: Callable[[int], Any],
        fail: Callable[[int, BaseException], None],
    ) -> tuple[FileItem, ...]:
        """Every rank's ``write_data`` split of its final plan into files, captured, not written."""
        if not self.info.files_known:
            return ()
        rows: list[FileItem] = []
        for r in sorted(self.finals):
            w = _capturing(self._writer(r))
            try:
                w.write_data(self.finals[r], planner_of(r))
            except Exception as exc:
                fail(r, exc)
                continue
            sizes = byte_sizes(r)
            for name, items in w._dcpviz_files:
                for it in items:
                    nbytes, dtype = _item_nbytes(it, sizes)
                    td = it.tensor_data
                    rows.append(
                        FileItem(
                            rank=r,
                            file=name,
                            fqn=it.index.fqn,
                            offsets=tuple(int(o) for o in td.chunk.offsets)
                            if td is not None
                            else (),
                            sizes=tuple(int(s) for s in td.chunk.sizes) if td is not None else (),
                            item_type=it.type.name,
                            dtype=dtype,
                            nbytes=nbytes,
                        )
                    )
        return tuple(rows)

    def facts(self, rows: tuple[FileItem, ...]) -> StorageWriterInfo:
        """The writer's info plus what the checks need: keys the mapping lacks, and the
        *.safetensors files already in the output folder that this save leaves in place."""
        mapping = getattr(self._template, "fqn_to_index_mapping", None)
        unmapped: set[str] = set()
        if mapping is not None:
            for plan in self.finals.values():
                unmapped.update(it.index.fqn for it in plan.items if it.index.fqn not in mapping)
        return dataclasses.replace(
            self.info, unmapped_keys=tuple(sorted(unmapped)), stale_files=self._stale_files(rows)
        )

    def _stale_files(self, rows: tuple[FileItem, ...]) -> tuple:
        w = self._template
        if not isinstance(w, HuggingFaceStorageWriter):
            return ()
        folder = Path(str(w.consolidated_output_path or w.path))
        stage = "consolidate" if w.consolidated_output_path else "write"
        planned = {r.file for r in rows if r.stage == stage}
        if not folder.is_dir():
            return ()
        out: list[tuple[str, tuple[str, ...] | None]] = []
        for p in sorted(folder.iterdir()):
            if p.suffix != SUFFIX or p.name in planned or not p.is_file():
                continue
            try:
                keys: tuple[str, ...] | None = tuple(e.name for e in read_header(p).entries)
            except CheckpointError:
                keys = None
            out.append((p.name, keys))
        return tuple(out)

    def consolidation(self, metadata: Any) -> tuple[FileItem, ...]:
        """The output files of HuggingFaceStorageWriter's consolidation (rank 0 writes them in
        ``finish``): one whole tensor per key, files named by DCP's own ``_gen_file_name``."""
        w = self._template
        if not (
            getattr(w, "save_distributed", False) and getattr(w, "enable_consolidation", False)
        ):
            return ()
        if metadata is None:
            return ()
        mapping = w.fqn_to_index_mapping
        if mapping is None:
            mapping = dict.fromkeys(metadata.state_dict_metadata.keys(), 1)
        if not mapping:
            return ()
        top = max(mapping.values())
        rows = []
        for fqn in sorted(metadata.state_dict_metadata):
            md = metadata.state_dict_metadata[fqn]
            if not isinstance(md, TensorStorageMetadata) or fqn not in mapping:
                continue  # a key missing from the mapping is a check, not a row
            n = 1
            for s in md.size:
                n *= int(s)
            dtype = md.properties.dtype
            rows.append(
                FileItem(
                    rank=0,
                    file=_gen_file_name(mapping[fqn], top),
                    fqn=fqn,
                    offsets=(0,) * len(md.size),
                    sizes=tuple(int(s) for s in md.size),
                    item_type="TENSOR",
                    dtype=str(dtype).removeprefix("torch."),
                    nbytes=n * torch._utils._element_size(dtype),
                    stage="consolidate",
                )
            )
        return tuple(rows)
