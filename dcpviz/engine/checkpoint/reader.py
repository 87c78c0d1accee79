"""Read a DCP checkpoint directory without executing anything from it.

DCP's ``FileSystemReader.read_metadata`` unpickles ``.metadata`` with plain ``pickle``: opening an
untrusted checkpoint that way runs arbitrary code. Here ``.metadata`` goes through an unpickler
that only admits DCP's metadata classes and the few torch/builtin types they need, and BYTE_IO
entries (non-tensor values) through torch's weights-only unpickler (``dcpviz.byteio``).
Nothing is read through a link that leaves the checkpoint directory.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    StorageMeta,
    TensorStorageMetadata,
)

from dcpviz.core.checkpoint_facts import CheckpointFacts
from dcpviz.core.errors import CheckpointError
from dcpviz.core.filenames import file_rank
from dcpviz.core.gc_pause import gc_paused
from dcpviz.engine.checkpoint.byteio import SafeBytesPlanner, load_byte_io
from dcpviz.engine.checkpoint.metadata_check import check_metadata

METADATA_FILE = ".metadata"

# (module, name) pairs a DCP .metadata pickle legitimately refers to.
_ALLOWED: set[tuple[str, str]] = {
    ("torch.distributed.checkpoint.metadata", n)
    for n in (
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # maps a layout's name to torch.strided etc.
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, fh: Any, source: str) -> None:
        super().__init__(fh)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(
            f"refusing to unpickle {module}.{name} from {self._source}: a DCP .metadata file only "
            "holds checkpoint metadata classes. The file may be malicious or not a DCP checkpoint; "
            "do not open it with torch.distributed.checkpoint either."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"refusing persistent references in {self._source}")


def read_metadata_bytes(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle DCP Metadata from bytes, admitting only metadata classes."""
    # A 1024-rank .metadata unpickles into ~3 M acyclic objects; the cyclic GC's passes over
    # the growing heap took ~40 % of pickle.load (2.2 of 5.4 s). One pause around the unpickle
    # and the checks: the collection it defers walks the new objects once, after it.
    with gc_paused():
        try:
            md = _MetadataUnpickler(io.BytesIO(data), source).load()
        except CheckpointError:
            raise
        except Exception as exc:  # truncated, corrupt, wrong format
            raise CheckpointError(
                f"{source} is not a readable DCP metadata file ({type(exc).__name__}: {exc}). "
                "It may be truncated or corrupt; re-save the checkpoint."
            ) from None
        if not isinstance(md, Metadata):
            raise CheckpointError(f"{source} holds a {type(md).__name__}, not DCP Metadata.")
        check_metadata(md, source)
    return md


def read_metadata(checkpoint_dir: str | os.PathLike[str]) -> Any:
    """DCP Metadata of a checkpoint directory, read without running code from it."""
    root = Path(checkpoint_dir)
    if not root.exists():
        raise CheckpointError(f"checkpoint directory {str(root)!r} does not exist.")
    if not root.is_dir():
        raise CheckpointError(
            f"{str(root)!r} is a file, not a checkpoint directory. Pass the directory that dcp.save wrote "
            "(it contains .metadata and __*_*.distcp files)."
        )
    path = root / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{str(root)!r} is not a DCP checkpoint: it has no {METADATA_FILE} file. Pass the directory "
            "that dcp.save(..., checkpoint_id=DIR) wrote; a save that crashed before finishing leaves none."
        )
    check_inside(root, path, f"{METADATA_FILE} of {str(root)!r}")
    return read_metadata_bytes(path.read_bytes(), repr(str(path)))


def check_inside(root: Path, path: Path, what: str) -> Path:
    """``path`` with links resolved, if it stays inside ``root``; a link out of the checkpoint
    directory (to another user's file, to a planted pickle) is refused, never followed."""
    real_root, real = root.resolve(), path.resolve()
    if real != real_root and real_root not in real.parents:
        raise CheckpointError(
            f"{what} points outside the checkpoint directory (a link to {str(real)!r}); refusing to "
            "read it. Copy the file into the checkpoint directory if you trust it."
        )
    return real


def _check_storage_paths(root: Path, md: Any) -> None:
    """Every storage record names a file inside ``root`` (DCP's reader would open any path)."""
    checked: set[str] = set()  # one check per file (a file holds many records)
    for index, s in (getattr(md, "storage_data", None) or {}).items():
        rel = str(getattr(s, "relative_path", ""))
        if rel in checked:
            continue
        checked.add(rel)
        where = f"entry {getattr(index, 'fqn', index)!r}"
        if Path(rel).is_absolute():
            raise CheckpointError(
                f"{where} points outside the checkpoint directory ({rel!r}); refusing to read it."
            )
        check_inside(root, root / rel, f"{where} ({rel!r})")


class SafeFileSystemReader(FileSystemReader):
    """DCP's ``FileSystemReader``, except that nothing from the checkpoint is unpickled with
    plain pickle and nothing is read through a path that leaves the directory:

    - ``.metadata`` goes through the restricted unpickler (DCP's own uses plain pickle, so a
      planted ``.metadata`` runs code in every rank); a ``.metadata`` link out of the
      directory, or a storage record naming a file outside it, is refused;
    - BYTE_IO entries (non-tensor values) are built by torch's weights-only unpickler before
      the planner's ``load_bytes`` sees them (``DefaultLoadPlanner`` would use
      ``torch.load(weights_only=False)``); this holds for any planner passed to ``dcp.load``;
    - tensor records are read by DCP as usual, with ``torch.load(weights_only=True)``::

        dcp.load(state_dict, storage_reader=dcpviz.SafeFileSystemReader(path))
    """

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        """``.metadata`` through the restricted unpickler (never plain pickle)."""
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        if not path.is_file():
            raise CheckpointError(f"{str(path)!r} does not exist: not a finished DCP checkpoint.")
        root = Path(str(self.path))
        check_inside(root, path, f"{path.name} of {str(root)!r}")
        md = read_metadata_bytes(path.read_bytes(), repr(str(path)))
        _check_storage_paths(root, md)
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id  # as FileSystemReader.read_metadata does
        return md

    def read_data(self, plan: Any, planner: Any) -> Any:
        """FileSystemReader.read_data, with BYTE_IO values built by the weights-only unpickler."""
        return super().read_data(plan, SafeBytesPlanner(planner, repr(str(self.path))))


def storage_shortfalls(
    checkpoint_dir: str | os.PathLike[str], md: Any
) -> dict[tuple, tuple[str, str]]:
    """(fqn, offsets or None) -> (exception type, message) for every storage record whose bytes
    are not there: its data file is missing, or shorter than the record's offset + length.

    Sizes only (``os.stat``): no data is read, nothing is unpickled. What ``dcp.load`` does with
    such a record when a rank reads it: FileSystemReader opens the file (FileNotFoundError) or
    torch.load gets a cut record (RuntimeError). A record naming a path outside the directory is
    left to the readers that refuse it."""
    root = Path(checkpoint_dir)
    sizes: dict[str, int | None] = {}  # per file name, not per record; -1: not checked (absolute)
    out: dict[tuple, tuple[str, str]] = {}
    storage = getattr(md, "storage_data", None)
    if not isinstance(storage, dict):
        return out
    for index, s in storage.items():
        rel = str(getattr(s, "relative_path", ""))
        try:
            offset, length = int(s.offset), int(s.length)
            key = _key(index.fqn, index.offset)
        except (AttributeError, TypeError, ValueError):
            continue
        if rel not in sizes:
            sizes[rel] = _file_size(root, rel)
        size = sizes[rel]
        if size == -1 or (size is not None and offset + length <= size):
            continue  # the usual case: no message to build
        where = f"{index.fqn!r} chunk {key[1]}" if key[1] is not None else f"{index.fqn!r}"
        if size is None:
            out[key] = (
                "FileNotFoundError",
                f"{where} is stored in {rel!r}, which does not exist in the "
                "checkpoint directory (deleted, renamed or never copied)",
            )
        else:
            out[key] = (
                "RuntimeError",
                f"{where} is stored at bytes {offset}..{offset + length} of {rel!r}, "
                f"but the file has only {size} bytes (truncated, or .metadata belongs to another save)",
            )
    return out


def _file_size(root: Path, rel: str) -> int | None:
    """A data file's size; None if it is not there; -1 for a name left to the readers that
    refuse it (empty or absolute)."""
    if not rel or Path(rel).is_absolute():
        return -1
    try:
        return os.stat(root / rel).st_size if (root / rel).is_file() else None
    except OSError:
        return None


# -- inspecting a whole checkpoint directory ----------------------------------------------------
_ZIP_MAGIC = b"PK\x03\x04"
VERIFY = ("headers", "full", "none")


class _Slice(io.RawIOBase):
    """A read-only, seekable window [offset, offset+length) of an open file (what zipfile needs
    to read a torch.save record's directory without loading the record)."""

    def __init__(self, fh: Any, offset: int, length: int) -> None:
        self._fh, self._start, self._len, self._pos = fh, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._len}[whence]
        self._pos = max(0, min(self._len, base + pos))
        return self._pos

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self._len - self._pos)
        if n <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _key(fqn: str, offsets: Any) -> tuple[str, tuple[int, ...] | None]:
    return (fqn, tuple(map(int, offsets)) if offsets is not None else None)


def _check_record(fh: Any, s: Any, expect_nbytes: int | None, where: str, verify: str) -> None:
    """A record is one torch.save archive (a zip). Check its directory, and that the tensor's
    data entries hold exactly the chunk's bytes; 'full' also checks every CRC."""

    view = _Slice(fh, s.offset, s.length)
    if view.read(4) != _ZIP_MAGIC:
        raise CheckpointError(
            f"{where} is corrupt: its record does not start like a torch.save archive."
        )
    view.seek(0)
    try:
        with zipfile.ZipFile(io.BufferedReader(view)) as z:
            infos = z.infolist()
            if not any(i.filename.endswith("/data.pkl") or i.filename == "data.pkl" for i in infos):
                raise CheckpointError(f"{where} is corrupt: its record has no data.pkl.")
            if expect_nbytes is not None:
                stored = sum(
                    i.file_size
                    for i in infos
                    if "/data/" in i.filename and not i.filename.endswith("/")
                )
                if stored != expect_nbytes:
                    raise CheckpointError(
                        f"{where} is corrupt: the record holds {stored} bytes of tensor data but the "
                        f"metadata's chunk needs {expect_nbytes}."
                    )
            if verify == "full":
                bad = z.testzip()
                if bad is not None:
                    raise CheckpointError(
                        f"{where} is corrupt: CRC check failed for {bad!r} in its record."
                    )
    except CheckpointError:
        raise
    except Exception as exc:  # BadZipFile, truncated directory, ...
        raise CheckpointError(
            f"{where} is corrupt: its record is not a readable archive ({exc})."
        ) from None


def _check_byte_entry(fh: Any, s: Any, where: str) -> None:
    """Build a BYTE_IO entry's value with the restricted unpickler, as SafeFileSystemReader will:
    a planted pickle is refused here, naming the entry and the class it would build. Such
    values are small (DCP stores every tensor as its own record), so this is cheap."""
    fh.seek(int(s.offset))
    load_byte_io(fh.read(int(s.length)), where)


def read_checkpoint(
    checkpoint_dir: str | os.PathLike[str], *, verify: str = "headers"
) -> CheckpointFacts:
    """Read a DCP checkpoint directory without executing anything from it, and check it.

    ``.metadata`` goes through the restricted unpickler (a ``.metadata`` link out of the
    directory is refused); every storage record must point at a file inside the directory, lie
    within it, and (``verify='headers'``, the default) be a torch.save archive whose tensor data
    has the chunk's exact size; every BYTE_IO entry's value must be buildable by torch's
    weights-only unpickler (a planted pickle is refused, naming the entry and the class it would
    build); ``verify='full'`` also checks every CRC (reads all bytes); ``'none'`` skips record
    checks. Problems raise ``DcpvizError`` naming the entry and the file. Nothing is ever
    written into the directory. Returns the facts found (rows); ``dcpviz.inspect_checkpoint``
    makes them tables.
    """
    if verify not in VERIFY:
        raise CheckpointError(f"verify={verify!r} must be one of {VERIFY}.")
    with gc_paused():  # per-record passes over ~600k records (see read_metadata_bytes)
        return _read_checkpoint(checkpoint_dir, verify)


def _read_checkpoint(checkpoint_dir: str | os.PathLike[str], verify: str) -> CheckpointFacts:
    md = read_metadata(checkpoint_dir)
    root = Path(checkpoint_dir).resolve()
    chunk_rows, expected = _chunk_rows(md, root)
    records = _storage_records(md, expected, root)
    sizes, storage_rows = _storage_rows(records, root)
    if verify != "none":
        _verify_records(records, expected, root, verify)
    stale = sorted(
        p.name
        for p in root.iterdir()
        if p.is_file() and p.suffix == ".distcp" and p.name not in sizes
    )
    tensor_lengths = sum(int(records[k].length) for k, v in expected.items() if v is not None)
    return CheckpointFacts(
        path=root,
        metadata=md,
        chunk_rows=chunk_rows,
        storage_rows=storage_rows,
        file_sizes={**sizes, **{rel: (root / rel).stat().st_size for rel in stale}},
        referenced_files=tuple(sorted(sizes)),
        stale_files=tuple(stale),
        tensors=sum(
            1 for e in md.state_dict_metadata.values() if isinstance(e, TensorStorageMetadata)
        ),
        bytes_entries=sum(
            1 for e in md.state_dict_metadata.values() if isinstance(e, BytesStorageMetadata)
        ),
        tensor_record_nbytes=tensor_lengths,
        metadata_nbytes=(root / METADATA_FILE).stat().st_size,
        dcp_version=getattr(md, "version", None),
    )


def _chunk_rows(md: Any, root: Path) -> tuple[list[tuple], dict[tuple, int | None]]:
    """One row per saved chunk (and bytes entry), and each one's expected data size."""
    chunk_rows: list[tuple] = []
    expected: dict[tuple, int | None] = {}
    for fqn, entry in md.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            dtype = str(entry.properties.dtype).removeprefix("torch.")
            itemsize = torch._utils._element_size(entry.properties.dtype)
            global_size = tuple(map(int, entry.size))
            for ci, c in enumerate(entry.chunks):
                # check_metadata passed: offsets and sizes are tuples (or torch.Size) of ints, so
                # tuple() is tuple(map(int, ...)) (a third of the time, 1.2 M times at 1024 ranks)
                off, sz = tuple(c.offsets), tuple(c.sizes)
                nbytes = math.prod(sz) * itemsize
                chunk_rows.append((fqn, ci, off, sz, dtype, nbytes, "tensor", global_size))
                expected[(fqn, off)] = nbytes  # _key(fqn, off)
        elif isinstance(entry, BytesStorageMetadata):
            chunk_rows.append((fqn, 0, (), (), "", 0, "bytes", ()))
            expected[(fqn, None)] = None  # _key(fqn, None)
        else:
            raise CheckpointError(
                f"entry {fqn!r} of {root} has an unknown kind {type(entry).__name__}."
            )
    return chunk_rows, expected


def _storage_records(md: Any, expected: dict[tuple, int | None], root: Path) -> dict[tuple, Any]:
    """(fqn, offsets) -> its storage record; every entry the metadata lists must have one."""
    storage_data = md.storage_data
    if expected and not storage_data:
        raise CheckpointError(
            f"{root}/.metadata lists {len(expected)} entries but no storage data (where the bytes "
            "are). It was not written by a finished dcp.save."
        )
    records: dict[tuple, Any] = {}
    for index, s in (storage_data or {}).items():
        if not (
            hasattr(index, "fqn")
            and hasattr(s, "relative_path")
            and hasattr(s, "offset")
            and hasattr(s, "length")
        ):
            raise CheckpointError(f"{root}/.metadata has a malformed storage record for {index!r}.")
        # check_metadata passed: the offset is None or a box of ints (tuple() is _key's map(int))
        off = index.offset
        records[(index.fqn, tuple(off) if off is not None else None)] = s
    missing = [k for k in expected if k not in records]
    if missing:
        fqn, off = missing[0]
        raise CheckpointError(
            f"{root} is incomplete: the metadata lists {fqn!r} chunk {off} (and {len(missing) - 1} "
            "more) but no storage record says where its bytes are."
        )
    return records


def _where(fqn: str, off: tuple[int, ...] | None) -> str:
    """A record named in a message (built only when one is raised: 600k records per pass)."""
    return f"{fqn!r} chunk {off}" if off is not None else f"{fqn!r}"


def _storage_rows(records: dict[tuple, Any], root: Path) -> tuple[dict[str, int], list[tuple]]:
    """Each referenced file's size, and one row per record; a record pointing outside the
    directory, at a missing file or past a file's end is refused."""
    sizes: dict[str, int] = {}
    inside: dict[str, tuple[Path, bool, int]] = {}  # per file name, not per record
    storage_rows = []
    for (fqn, off), s in records.items():
        rel = str(s.relative_path)
        if rel not in inside:
            resolved = (root / rel).resolve()
            ok = not Path(rel).is_absolute() and root in resolved.parents
            inside[rel] = (resolved, ok, file_rank(rel))
        path, ok, rank = inside[rel]
        if not ok:
            raise CheckpointError(
                f"{_where(fqn, off)} points outside the checkpoint directory ({rel!r}); "
                "refusing to read it."
            )
        if rel not in sizes:
            if not path.is_file():
                raise CheckpointError(
                    f"{_where(fqn, off)} is stored in {rel!r}, which does not exist in {root} "
                    "(a dangling reference: the file was deleted, renamed or never copied)."
                )
            sizes[rel] = path.stat().st_size
        offset, length = int(s.offset), int(s.length)
        if offset < 0 or length < 0 or offset + length > sizes[rel]:
            raise CheckpointError(
                f"{_where(fqn, off)} is stored at bytes {offset}..{offset + length} of {rel!r}, "
                f"but the file has only {sizes[rel]} bytes: it is truncated (or the metadata "
                "belongs to another save)."
            )
        storage_rows.append((fqn, off if off is not None else (), rel, offset, length, rank))
    return sizes, storage_rows


def _verify_records(
    records: dict[tuple, Any], expected: dict[tuple, int | None], root: Path, verify: str
) -> None:
    """Every plain record is a torch.save archive of the right size; every BYTE_IO value builds."""
    by_file: dict[str, list] = {}
    for (fqn, off), s in records.items():
        if getattr(s, "transform_descriptors", None):
            continue  # compressed / transformed records are not plain torch.save archives
        by_file.setdefault(str(s.relative_path), []).append((fqn, off, s))
    for rel, recs in by_file.items():
        with open(root / rel, "rb") as fh:
            for fqn, off, s in recs:
                where = (
                    f"{fqn!r} chunk {off} in {rel!r}" if off is not None else f"{fqn!r} in {rel!r}"
                )
                _check_record(fh, s, expected.get(_key(fqn, off)), where, verify)
                if off is None:
                    _check_byte_entry(fh, s, f"BYTE_IO entry {where}")
