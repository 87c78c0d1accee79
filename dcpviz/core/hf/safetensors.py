"""Read safetensors files and folders by their headers only: nothing trusted, nothing executed.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (an object:
tensor name -> {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
"__metadata__" object of strings), then the tensor data. Here the length is bounded before
anything is read, the JSON is read in one bounded read and parsed strictly (no duplicate keys,
no NaN, no nesting beyond what the format has), and every entry is checked the way the
safetensors library checks it: a known dtype, a shape of non-negative ints, offsets that hold
exactly shape x itemsize bytes, and entries that tile the data area with no gap or overlap.
Anything else is a ``CheckpointError`` (a ``DcpvizError``) naming the file.

DCP's Hugging Face writer adds "DCP_SHARDING_INFO" to "__metadata__" in per-rank shards (a
JSON string: name -> {"saved_offsets": [...]}); ``sharding_offsets`` reads it with the same
rules. No torch, numpy or pandas: a folder's layout is read anywhere.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcpviz.core.errors import CheckpointError

# The safetensors library refuses headers over 100 MB; so does this reader.
MAX_HEADER_BYTES = 100_000_000
MAX_INDEX_BYTES = 100_000_000
SUFFIX = ".safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARDING_KEY = "DCP_SHARDING_INFO"  # torch.distributed.checkpoint._hf_utils.CUSTOM_METADATA_KEY

# safetensors dtype code -> (torch dtype name as dcpviz tables write it, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
    "F64": ("float64", 8),
}


@dataclass(frozen=True)
class SafetensorsEntry:
    """One tensor of a safetensors file. ``begin``/``end``: byte offsets into the data area
    (which starts at ``SafetensorsHeader.data_start`` in the file)."""

    name: str
    dtype: str  # the torch dtype name ('float32'), not the safetensors code
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes of this tensor's data."""
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A file's parsed, validated header."""

    entries: tuple[SafetensorsEntry, ...]  # in data order
    metadata: tuple[tuple[str, str], ...]  # "__metadata__", sorted by key
    data_start: int  # 8 + header length
    file_nbytes: int


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: bytes, source: str, what: str) -> Any:
    """JSON parsed with no duplicate keys and no NaN/Infinity; bad input is a CheckpointError."""
    try:
        return json.loads(
            text.decode("utf-8"), object_pairs_hook=_strict_object, parse_constant=_no_constant
        )
    except (
        ValueError,
        RecursionError,
    ) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(
            f"{source}: its {what} is not valid JSON ({str(exc)[:200]})."
        ) from None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_header(prefix: bytes, file_nbytes: int, source: str = "<bytes>") -> SafetensorsHeader:
    """Validate the first bytes of a safetensors file (``prefix``: at least 8 + header length
    bytes; more is ignored) of ``file_nbytes`` bytes in all."""
    if file_nbytes < 8 or len(prefix) < 8:
        raise CheckpointError(f"{source} is not a safetensors file: it is shorter than 8 bytes.")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{source}: its header claims {n} bytes (over the {MAX_HEADER_BYTES}-byte limit). It is "
            "not a safetensors file, or it is corrupt (DCP's Hugging Face writer writes non-tensor "
            "values in front of the header, which makes the whole file unreadable)."
        )
    if 8 + n > file_nbytes or len(prefix) < 8 + n:
        raise CheckpointError(
            f"{source}: its header ({n} bytes) runs past the end of the file: truncated."
        )
    raw = bytes(prefix[8 : 8 + n])
    if not raw.lstrip(b" ").startswith(b"{"):
        raise CheckpointError(f"{source}: its header is not a JSON object: not a safetensors file.")
    doc = strict_json(raw, source, "header")
    if not isinstance(doc, dict):
        raise CheckpointError(f"{source}: its header is not a JSON object: not a safetensors file.")
    metadata = _metadata(doc.pop("__metadata__", None), source)
    entries = [_entry(name, spec, source) for name, spec in doc.items()]
    entries.sort(key=lambda e: (e.begin, e.end, e.name))
    data_nbytes = file_nbytes - 8 - n
    pos = 0
    for e in entries:
        if e.begin != pos:
            gap = "overlaps the one before it" if e.begin < pos else "leaves a gap before it"
            raise CheckpointError(
                f"{source}: tensor {e.name!r} (bytes {e.begin}..{e.end}) {gap}: corrupt header."
            )
        pos = e.end
    if pos != data_nbytes:
        raise CheckpointError(
            f"{source}: its tensors hold {pos} bytes but the file has {data_nbytes} bytes of data: "
            "truncated, or extra bytes were written."
        )
    return SafetensorsHeader(tuple(entries), metadata, 8 + n, file_nbytes)


def _metadata(value: Any, source: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CheckpointError(f"{source}: its __metadata__ must map names to strings.")
    return tuple(sorted(value.items()))


def _entry(name: str, spec: Any, source: str) -> SafetensorsEntry:
    where = f"{source}: tensor {name!r}"
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{where} must have exactly dtype, shape and data_offsets.")
    code, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(code, str) or code not in DTYPES:
        raise CheckpointError(
            f"{where} has dtype {str(code)[:40]!r}, which dcpviz does not read ({', '.join(DTYPES)})."
        )
    if not isinstance(shape, list) or not all(_int(d) for d in shape):
        raise CheckpointError(f"{where} has a shape that is not a list of non-negative ints.")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_int(v) for v in offsets):
        raise CheckpointError(f"{where} has data_offsets that are not two non-negative ints.")
    begin, end = offsets
    dtype, size = DTYPES[code]
    if end < begin or end - begin != math.prod(shape) * size:
        raise CheckpointError(
            f"{where}: data_offsets {begin}..{end} do not hold shape {tuple(shape)} of {code} "
            f"({math.prod(shape) * size} bytes): corrupt header."
        )
    return SafetensorsEntry(name, dtype, tuple(shape), begin, end)


def sharding_offsets(header: SafetensorsHeader, source: str) -> dict[str, tuple[int, ...]]:
    """DCP's per-rank shard offsets ("DCP_SHARDING_INFO"), name -> offsets; {} when absent."""
    text = dict(header.metadata).get(SHARDING_KEY)
    if not text:
        return {}
    doc = strict_json(text.encode("utf-8"), source, SHARDING_KEY)
    if not isinstance(doc, dict):
        raise CheckpointError(f"{source}: {SHARDING_KEY} is not a JSON object.")
    out: dict[str, tuple[int, ...]] = {}
    shapes = {e.name: e.shape for e in header.entries}
    for name, spec in doc.items():
        offsets = spec.get("saved_offsets") if isinstance(spec, dict) else None
        if (
            name not in shapes
            or not isinstance(offsets, list)
            or len(offsets) != len(shapes[name])
            or not all(_int(v) for v in offsets)
        ):
            raise CheckpointError(
                f"{source}: {SHARDING_KEY} entry {name!r} does not match a tensor of the file."
            )
        out[name] = tuple(offsets)
    return out


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The validated header of one safetensors file; at most 8 + MAX_HEADER_BYTES bytes read."""
    path = Path(path)
    source = repr(str(path))
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER_BYTES and 8 + n <= size:
                    head += fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read {source}: {exc.strerror or exc}.") from None
    return parse_header(head, size, source)


@dataclass(frozen=True)
class SafetensorsFolder:
    """A safetensors folder: the files read (in name order) and their headers; ``index``: the
    weight map of ``model.safetensors.index.json`` when there is one (name -> file)."""

    root: Path
    files: tuple[tuple[str, SafetensorsHeader], ...]
    index: tuple[tuple[str, str], ...] | None
    unindexed_files: tuple[str, ...] = ()  # *.safetensors files the index does not name


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """A .safetensors file, or a folder holding one (and no DCP .metadata)."""
    p = Path(path)
    if p.is_file():
        return p.suffix == SUFFIX
    return (
        p.is_dir()
        and not (p / ".metadata").exists()
        and (
            (p / INDEX_FILE).is_file()
            or any(c.suffix == SUFFIX and c.is_file() for c in p.iterdir())
        )
    )


def _inside(root: Path, name: str, source: str) -> Path:
    """``root/name`` for a plain file name; a path, traversal or a link out of ``root`` is refused."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise CheckpointError(
            f"{source} names {str(name)[:80]!r}, which is not a file name in the folder; refusing it."
        )
    path = root / name
    real_root, real = root.resolve(), path.resolve()
    if real.parent != real_root:
        raise CheckpointError(
            f"{source}: {name!r} is a link out of the folder (to {str(real)!r}); refusing to read it."
        )
    return path


def read_folder(path: str | os.PathLike[str]) -> SafetensorsFolder:
    """Every header of a safetensors folder (or one file). With ``model.safetensors.index.json``
    the files it names are read and must hold exactly the names it maps to them; without one,
    every ``*.safetensors`` file in the folder is read."""
    p = Path(path)
    if p.is_file():
        root, names = p.parent, [p.name]
        index = None
    elif p.is_dir():
        root = p
        index = _read_index(root)
        present = sorted(c.name for c in root.iterdir() if c.suffix == SUFFIX)
        names = sorted(set(dict(index).values())) if index is not None else present
        unindexed = tuple(n for n in present if n not in names) if index is not None else ()
    else:
        raise CheckpointError(f"{str(p)!r} does not exist: pass a safetensors file or folder.")
    if not names:
        raise CheckpointError(f"{str(p)!r} holds no {SUFFIX} file.")
    files = []
    for name in names:
        fp = _inside(root, name, repr(str(root)))
        if not fp.is_file():
            raise CheckpointError(
                f"{str(root)!r}: {INDEX_FILE} names {name!r}, which is not in the folder."
            )
        files.append((name, read_header(fp)))
    if index is not None:
        mapped = dict(index)
        for name, header in files:
            held = {e.name for e in header.entries}
            said = {k for k, v in mapped.items() if v == name}
            if held != said:
                extra = sorted(held - said) or sorted(said - held)
                raise CheckpointError(
                    f"{str(root)!r}: {INDEX_FILE} and {name!r} disagree about {extra[0]!r} (and "
                    f"{len(extra) - 1} more): the index belongs to another save."
                )
        return SafetensorsFolder(root, tuple(files), index, unindexed)
    return SafetensorsFolder(root, tuple(files), None)


def _read_index(root: Path) -> tuple[tuple[str, str], ...] | None:
    path = root / INDEX_FILE
    if not path.exists():
        return None
    source = repr(str(path))
    _inside(root, INDEX_FILE, repr(str(root)))
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise CheckpointError(f"{source} is over {MAX_INDEX_BYTES} bytes: not an index.")
    doc = strict_json(path.read_bytes(), source, "content")
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{source} has no weight_map of tensor names to file names.")
    return tuple(sorted(weight_map.items()))
