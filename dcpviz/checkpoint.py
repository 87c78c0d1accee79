"""Read a DCP checkpoint directory without executing anything from it.

DCP's ``FileSystemReader.read_metadata`` unpickles ``.metadata`` with plain ``pickle``: opening an
untrusted checkpoint that way runs arbitrary code. Here ``.metadata`` goes through an unpickler
that only admits DCP's metadata classes and the few torch/builtin types they need.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

METADATA_FILE = ".metadata"

# (module, name) pairs a DCP .metadata pickle legitimately refers to.
_ALLOWED: set[tuple[str, str]] = {
    ("torch.distributed.checkpoint.metadata", n)
    for n in (
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
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
    from torch.distributed.checkpoint.metadata import Metadata

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
    return read_metadata_bytes(path.read_bytes(), repr(str(path)))
