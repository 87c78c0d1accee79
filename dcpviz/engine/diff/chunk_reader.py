"""Read the chunks of one side of a diff from disk, safely and in bounded memory.

- a DCP tensor record is a torch.save archive; its structure (dtype, shape, strides) comes from
  ``torch.load(weights_only=True, map_location="meta")`` on a bounded slice of the file (torch's
  weights-only unpickler; no data read), and its bytes are read straight into a reused buffer
  from the archive's uncompressed data entry, after checking that entry's place and size;
- a safetensors tensor is raw little-endian bytes at offsets its validated header gives;
- a bytes entry (a non-tensor value) is read as stored bytes, in blocks, and never unpickled.
Every file is opened through ``check_inside``: a link out of the checkpoint is refused.
"""

from __future__ import annotations

import io
import math
import struct
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dcpviz.core.diff_model import DCP_RECORD, SAFETENSORS_RAW, DiffSide, SideChunk, SideEntry
from dcpviz.core.errors import CheckpointError
from dcpviz.engine.checkpoint.reader import _Slice, check_inside
from dcpviz.engine.convert.shared import dtype_from_str

_BYTES_BLOCK = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_OPEN = 32


@dataclass(frozen=True)
class Located:
    """Where a chunk's elements lie: storage bytes [start, start + nbytes) of an open file, seen
    with ``shape``/``stride``/``storage_offset`` (in elements), checked against the metadata."""

    fh: Any
    start: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    where: str


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides (in elements) of ``shape``."""
    out, step = [], 1
    for d in reversed(shape):
        out.append(step)
        step *= max(d, 1)
    return tuple(reversed(out))


class ChunkReader:
    """Reads one side's chunks; keeps a few files open."""

    def __init__(self, side: DiffSide) -> None:
        self.side = side
        self.root = side.root
        self._open: dict[str, Any] = {}
        self._bufs = [torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8)]
        self._block = torch.empty(0, dtype=torch.uint8)
        self.nbytes_read = 0

    def close(self) -> None:
        """Close every file this reader opened."""
        for fh in self._open.values():
            fh.close()
        self._open.clear()

    def _file(self, rel: str) -> Any:
        fh = self._open.get(rel)
        if fh is None:
            root = Path(self.root or ".")
            path = check_inside(root, root / rel, f"{self.side.label} file {rel!r}")
            if len(self._open) >= _MAX_OPEN:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
            fh = self._open[rel] = open(path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
        return fh

    def locate(self, entry: SideEntry, index: int) -> Located:
        """Where chunk ``index`` of ``entry`` keeps its elements, checked (nothing read but the
        record's directory and pickle, for DCP)."""
        chunk = entry.chunks[index]
        where = f"{self.side.label}: {entry.fqn!r} chunk {chunk.offsets} in {chunk.file!r}"
        dtype = dtype_from_str(entry.dtype or "")
        fh = self._file(str(chunk.file))
        if self.side.storage == SAFETENSORS_RAW:
            return self._locate_raw(fh, chunk, dtype, where)
        if self.side.storage == DCP_RECORD:
            return self._locate_record(fh, chunk, dtype, where)
        raise CheckpointError(f"{where}: this side has no data to read.")

    def tensor(self, entry: SideEntry, index: int, slot: int = 0) -> torch.Tensor:
        """Chunk ``index`` of tensor ``entry`` as a CPU tensor: a view of this reader's buffer
        ``slot`` (0 or 1), valid until the next ``tensor`` call on that slot."""
        loc = self.locate(entry, index)
        buf = self._read_into(
            self._buf_for(loc.nbytes, slot), loc.fh, loc.start, loc.nbytes, loc.where
        )
        self.nbytes_read += loc.nbytes
        return buf.view(loc.dtype).as_strided(loc.shape, loc.stride, loc.storage_offset)

    def elements(self, loc: Located, first: int, count: int) -> torch.Tensor:
        """``count`` elements of a located chunk's storage from element ``first`` (1-D): a view of
        a small buffer, valid until the next call."""
        nbytes = count * loc.dtype.itemsize
        if self._block.numel() < nbytes:
            self._block = torch.empty(0, dtype=torch.uint8)
            self._block = torch.empty(nbytes, dtype=torch.uint8)
        buf = self._read_into(
            self._block[:nbytes], loc.fh, loc.start + first * loc.dtype.itemsize, nbytes, loc.where
        )
        self.nbytes_read += nbytes
        return buf.view(loc.dtype)

    def free(self, slot: int) -> None:
        """Give buffer ``slot`` back (no tensor of it may be in use)."""
        self._bufs[slot] = torch.empty(0, dtype=torch.uint8)

    def _buf_for(self, nbytes: int, slot: int) -> torch.Tensor:
        # Buffers are reused: the chunk read last into a slot is dropped before the next is read
        # there, and re-touching warm pages is several times faster than faulting in fresh ones.
        if self._bufs[slot].numel() < nbytes:
            self._bufs[slot] = torch.empty(0, dtype=torch.uint8)  # free the old one first
            self._bufs[slot] = torch.empty(nbytes, dtype=torch.uint8)
        return self._bufs[slot][:nbytes]

    @staticmethod
    def _read_into(buf: torch.Tensor, fh: Any, start: int, nbytes: int, where: str) -> torch.Tensor:
        view = memoryview(buf.numpy()) if nbytes else memoryview(b"")
        fh.seek(start)
        got = 0
        while got < nbytes:
            n = fh.readinto(view[got:])
            if not n:
                raise CheckpointError(f"{where}: the file ends before the chunk does (truncated).")
            got += n
        return buf

    def _locate_raw(self, fh: Any, chunk: SideChunk, dtype: torch.dtype, where: str) -> Located:
        if sys.byteorder != "little":
            raise CheckpointError(
                f"{where}: safetensors data is little-endian; this machine is not."
            )
        expect = math.prod(chunk.sizes) * dtype.itemsize
        if chunk.length != expect:
            raise CheckpointError(f"{where}: holds {chunk.length} bytes, its shape needs {expect}.")
        return Located(
            fh,
            int(chunk.offset or 0),
            expect,
            dtype,
            tuple(chunk.sizes),
            contiguous_strides(tuple(chunk.sizes)),
            0,
            where,
        )

    def _locate_record(self, fh: Any, chunk: SideChunk, dtype: torch.dtype, where: str) -> Located:
        start, length = int(chunk.offset or 0), int(chunk.length or 0)
        view = _Slice(fh, start, length)
        if view.read(4) != _ZIP_MAGIC:
            raise CheckpointError(f"{where} is corrupt: its record is not a torch.save archive.")
        try:
            meta = torch.load(
                io.BufferedReader(_Slice(fh, start, length), 1 << 16),
                weights_only=True,
                map_location="meta",
            )
        except Exception as exc:  # a refused global, a broken archive, ...
            raise CheckpointError(
                f"{where}: its record is not a tensor torch's weights-only unpickler "
                f"can read ({type(exc).__name__}: {str(exc)[:200]})."
            ) from None
        if not isinstance(meta, torch.Tensor) or meta.layout != torch.strided:
            raise CheckpointError(
                f"{where}: its record holds a {type(meta).__name__}, not a dense tensor."
            )
        if meta.dtype != dtype or tuple(meta.shape) != tuple(chunk.sizes):
            raise CheckpointError(
                f"{where}: its record holds {tuple(meta.shape)} {meta.dtype}, but the "
                f"metadata says {tuple(chunk.sizes)} {dtype}: corrupt or mixed-up files."
            )
        storage = meta.untyped_storage()
        nbytes, data_at = int(storage.nbytes()), getattr(storage, "_checkpoint_offset", None)
        _check_data_entry(_Slice(fh, start, length), data_at, nbytes, length, where)
        stride, soff = tuple(meta.stride()), int(meta.storage_offset())
        if meta.numel():
            last = soff + sum((s - 1) * st for s, st in zip(meta.shape, stride))
            if soff < 0 or any(st < 0 for st in stride) or (last + 1) * dtype.itemsize > nbytes:
                raise CheckpointError(
                    f"{where}: its record's strides reach past its data: corrupt."
                )
        if nbytes % dtype.itemsize:
            raise CheckpointError(
                f"{where}: its record's data is not a whole number of {dtype} elements."
            )
        return Located(
            fh, start + int(data_at), nbytes, dtype, tuple(meta.shape), stride, soff, where
        )

    def raw_bytes(self, chunk: SideChunk) -> Iterator[bytes]:
        """A bytes entry's stored bytes, in bounded blocks."""
        fh = self._file(str(chunk.file))
        start, length = int(chunk.offset or 0), int(chunk.length or 0)
        fh.seek(start)
        done = 0
        while done < length:
            block = fh.read(min(_BYTES_BLOCK, length - done))
            if not block:
                raise CheckpointError(
                    f"{self.side.label}: a bytes entry in {chunk.file!r} is truncated."
                )
            done += len(block)
            self.nbytes_read += len(block)
            yield block


def _check_data_entry(view: _Slice, data_at: Any, nbytes: int, length: int, where: str) -> None:
    """The archive has an uncompressed entry holding exactly the tensor's bytes at ``data_at``,
    little-endian (or no byteorder record, which torch reads as little-endian)."""
    if not isinstance(data_at, int) or data_at < 0 or data_at + nbytes > length:
        raise CheckpointError(f"{where}: its record's data lies outside the record: corrupt.")
    try:
        with zipfile.ZipFile(
            io.BufferedReader(_Slice(view._fh, view._start, view._len), 1 << 16)
        ) as z:
            for info in z.infolist():
                if info.filename.endswith("/byteorder") and z.read(info)[:16] not in (
                    b"little",
                    b"",
                ):
                    raise CheckpointError(
                        f"{where}: its record is big-endian; dcpviz reads little-endian only."
                    )
            for info in z.infolist():
                view.seek(info.header_offset)
                head = view.read(30)
                if len(head) < 30 or head[:4] != _ZIP_MAGIC:
                    continue
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                if info.header_offset + 30 + name_len + extra_len == data_at:
                    if info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes:
                        break
                    return
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{where}: its record is not a readable archive ({exc}).") from None
    raise CheckpointError(
        f"{where}: its record has no plain data entry of {nbytes} bytes where torch "
        "says the tensor's data is: corrupt, or not written by torch.save."
    )
