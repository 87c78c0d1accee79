"""A Hugging Face safetensors folder as DCP's HF reader sees it, read by headers only.

``HuggingFaceStorageReader.read_metadata`` (torch 2.13) builds its metadata from every
``*.safetensors`` file in the folder, whatever ``model.safetensors.index.json`` says: a file's
tensors are chunks at the offsets of DCP's "DCP_SHARDING_INFO" (zeros without it), a key in
several files is several chunks. ``scan_folder`` reads every such file's header (bounded, strict:
``core.hf.safetensors``) and the index, keeping a file it cannot read as an error instead of
stopping, so the checks can name every problem; ``checkpoint_facts`` turns a readable folder into
the same rows ``inspect_checkpoint`` gives for a DCP directory, and refuses an unreadable one.
No torch, no pickle, no tensor data read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dcpviz.core.checkpoint_facts import CheckpointFacts
from dcpviz.core.errors import CheckpointError
from dcpviz.core.hf.safetensors import (
    INDEX_FILE,
    MAX_INDEX_BYTES,
    SUFFIX,
    SafetensorsHeader,
    read_header,
    sharding_offsets,
    strict_json,
)

# DCP's _gen_file_name: "shard-{rank+1:05}-model-{i:05}-of-{n:05}.safetensors" for a distributed save.
_SHARD_FILE = re.compile(r"^shard-(\d+)-model-\d+-of-\d+\.safetensors$")
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint._hf_utils.SHARDED_DIR_NAME


def shard_rank(name: str) -> int:
    """The rank that wrote a shard file of DCP's distributed HF save (-1 for any other name)."""
    m = _SHARD_FILE.match(name)
    return int(m.group(1)) - 1 if m else -1


@dataclass(frozen=True)
class HFFile:
    """One ``*.safetensors`` file: its header (None when unreadable, with ``error``) and DCP's
    per-key offsets (from "DCP_SHARDING_INFO"; empty without it)."""

    name: str
    nbytes: int
    header: SafetensorsHeader | None
    offsets: tuple[tuple[str, tuple[int, ...]], ...] = ()
    error: str = ""

    @property
    def rank(self) -> int:
        return shard_rank(self.name)


@dataclass(frozen=True)
class HFFolder:
    """Every ``*.safetensors`` file of a folder (name order) and its index. ``index``: the weight
    map (key -> file) when ``model.safetensors.index.json`` exists and reads; ``index_error`` when
    it exists and does not. ``sharded``: the folder of a consolidating save's shards, if any."""

    root: Path
    files: tuple[HFFile, ...]
    index: tuple[tuple[str, str], ...] | None
    index_error: str = ""
    index_total_size: int | None = None
    index_nbytes: int = 0
    sharded: HFFolder | None = None


# Quantized checkpoints keep, next to a weight, keys that only a dequantizing reader uses
# (DCP's QuantizedHuggingFaceStorageReader): a model holding dequantized weights leaves them unread.
QUANTIZED_SUFFIXES = (
    ("weight_scale_inv", "fp8 block scales"),
    ("_scales", "MXFP4 scales"),
    ("_blocks", "MXFP4 blocks"),
)


def quantized_kind(key: str) -> str | None:
    """What quantized companion ``key`` looks like by its name ('fp8 block scales', ...), or None."""
    for suffix, what in QUANTIZED_SUFFIXES:
        if key.endswith(suffix):
            return what
    return None


def quantized_companions(keys: Iterable[str]) -> dict[str, str]:
    """key -> what, for the keys that are a quantized pair's companion *as a pair*: an fp8
    ``X.weight_scale_inv`` next to its ``X.weight``; MXFP4 ``X_blocks`` next to ``X_scales`` (both).
    A lone key with such a suffix is not a pair: it stays an ordinary key."""
    present = set(keys)
    out: dict[str, str] = {}
    for k in sorted(present):
        what = quantized_kind(k)
        if what == "fp8 block scales" and k.removesuffix("_scale_inv") in present:
            out[k] = what
        elif what == "MXFP4 scales" and k.removesuffix("_scales") + "_blocks" in present:
            out[k] = what
        elif what == "MXFP4 blocks" and k.removesuffix("_blocks") + "_scales" in present:
            out[k] = what
    return out


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """A folder with ``*.safetensors`` files or an index and no DCP ``.metadata``, or a
    ``.safetensors`` file."""
    p = Path(path)
    if p.is_file():
        return p.suffix == SUFFIX
    if not p.is_dir() or (p / ".metadata").exists():
        return False
    return (p / INDEX_FILE).is_file() or any(c.suffix == SUFFIX for c in p.iterdir())


def _scan_file(path: Path) -> HFFile:
    try:
        size = path.stat().st_size
        header = read_header(path)
        offsets = sharding_offsets(header, repr(str(path)))
    except CheckpointError as exc:
        return HFFile(path.name, size if "size" in locals() else 0, None, (), str(exc))
    return HFFile(path.name, size, header, tuple(sorted(offsets.items())))


def _scan_index(root: Path) -> tuple[tuple[tuple[str, str], ...] | None, str, int | None, int]:
    path = root / INDEX_FILE
    if not path.exists():
        return None, "", None, 0
    source = repr(str(path))
    try:
        if not path.is_file() or path.resolve().parent != root.resolve():
            raise CheckpointError(f"{source} is not a plain file in the folder; refusing it.")
        n = path.stat().st_size
        if n > MAX_INDEX_BYTES:
            raise CheckpointError(f"{source} is over {MAX_INDEX_BYTES} bytes: not an index.")
        doc = strict_json(path.read_bytes(), source, "content")
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise CheckpointError(f"{source} has no weight_map of tensor names to file names.")
        meta = doc.get("metadata")
        total = meta.get("total_size") if isinstance(meta, dict) else None
        total = (
            total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None
        )
    except CheckpointError as exc:
        return None, str(exc), None, 0
    return tuple(sorted(weight_map.items())), "", total, n


def scan_folder(path: str | os.PathLike[str]) -> HFFolder:
    """Every ``*.safetensors`` file's header and the index; a single file is a folder of one."""
    p = Path(path)
    if p.is_file():
        return HFFolder(p.parent, (_scan_file(p),), None)
    if not p.is_dir():
        raise CheckpointError(f"{str(p)!r} does not exist: pass a safetensors folder or file.")
    real_root = p.resolve()
    files = []
    for c in sorted(p.iterdir(), key=lambda c: c.name):
        if c.suffix != SUFFIX:
            continue
        if c.is_symlink() and c.resolve().parent != real_root:
            files.append(
                HFFile(
                    c.name,
                    0,
                    None,
                    (),
                    f"{c.name!r} is a link out of the folder; refusing to read it.",
                )
            )
            continue
        if c.is_file():
            files.append(_scan_file(c))
    index, index_error, total, index_nbytes = _scan_index(p)
    sub = p / SHARDED_DIR
    sharded = (
        scan_folder(sub)
        if sub.is_dir() and not sub.is_symlink() and any(c.suffix == SUFFIX for c in sub.iterdir())
        else None
    )
    return HFFolder(p, tuple(files), index, index_error, total, index_nbytes, sharded)


def _refuse_unreadable(folder: HFFolder) -> None:
    bad = [f for f in folder.files if f.header is None]
    if bad:
        raise CheckpointError(
            f"{str(folder.root)!r}: {len(bad)} safetensors file(s) cannot be read: {bad[0].error}"
        )
    if folder.index_error:
        raise CheckpointError(folder.index_error)
    if not folder.files:
        raise CheckpointError(f"{str(folder.root)!r} holds no {SUFFIX} file.")


def checkpoint_facts(folder: HFFolder) -> CheckpointFacts:
    """The rows ``inspect_checkpoint`` shows (chunks, storage, files) for a readable folder,
    chunk by chunk as DCP's HF reader would build them: every file, name order."""
    _refuse_unreadable(folder)
    chunk_rows: list[tuple] = []
    storage_rows: list[tuple] = []
    pieces: dict[str, list[tuple[tuple[int, ...], tuple[int, ...], str, int]]] = {}
    for f in folder.files:
        assert f.header is not None
        offs = dict(f.offsets)
        for e in f.header.entries:
            off = offs.get(e.name, (0,) * len(e.shape))
            pieces.setdefault(e.name, []).append((off, e.shape, e.dtype, e.nbytes))
            storage_rows.append(
                (e.name, off, f.name, f.header.data_start + e.begin, e.nbytes, f.rank)
            )
    data = 0
    for fqn in sorted(pieces):
        ps = pieces[fqn]
        ndim = len(ps[0][1])
        if any(len(s) != ndim or len(o) != ndim for o, s, _d, _n in ps):
            raise CheckpointError(
                f"{str(folder.root)!r}: tensor {fqn!r} has pieces of different ranks in different files."
            )
        size = tuple(max(o[d] + s[d] for o, s, _d, _n in ps) for d in range(ndim))
        for i, (off, shape, dtype, n) in enumerate(ps):
            chunk_rows.append((fqn, i, off, shape, dtype, n, "tensor", size))
            data += n
    sizes = {f.name: f.nbytes for f in folder.files}
    headers = sum(f.header.data_start for f in folder.files if f.header is not None)
    return CheckpointFacts(
        path=folder.root,
        metadata=None,
        chunk_rows=chunk_rows,
        storage_rows=storage_rows,
        file_sizes=sizes,
        referenced_files=tuple(f.name for f in folder.files),
        stale_files=(),
        tensors=len(pieces),
        bytes_entries=0,
        tensor_record_nbytes=data,
        metadata_nbytes=headers + folder.index_nbytes,
        dcp_version=None,
    )
