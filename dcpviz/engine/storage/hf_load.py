"""The saved side of a load from a Hugging Face safetensors folder: DCP's HF reader's own metadata.

``HuggingFaceStorageReader.read_metadata`` (torch 2.13) builds the Metadata a ``dcp.load`` plans
against from every ``*.safetensors`` file's header (through the ``safetensors`` library: header
only, no pickle, no tensor data). Before it runs, every file's header is read and validated by
dcpviz's own bounded parser (``core.hf.folder``), so a malformed file is refused with a
DcpvizError instead of reaching it. The reader's per-chunk storage records (file, shape, dtype)
are kept out of the Metadata handed to the planner: DCP's load planner never reads them.

``key_map``: the user's renaming between the folder's (Hugging Face) names and the model's, as
torchtitan's state-dict adapters do it: ``{hf_name: model_name}`` or a callable
``hf_name -> model_name`` (None keeps a name). It must be one-to-one on the folder's keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.metadata import Metadata

from dcpviz.core.errors import DcpvizError
from dcpviz.core.hf.folder import checkpoint_facts, quantized_companions, scan_folder
from dcpviz.core.trace import ChunkWriter
from dcpviz.engine.checkpoint.saved import SavedCheckpoint
from dcpviz.engine.convert.shared import metadata_info


def _renamer(key_map: Any) -> Callable[[str], str]:
    if key_map is None:
        return lambda k: k
    if isinstance(key_map, Mapping):
        return lambda k: key_map.get(k, k)
    if callable(key_map):

        def call(k: str) -> str:
            out = key_map(k)
            if out is None:
                return k
            if not isinstance(out, str):
                raise DcpvizError(
                    f"key_map({k!r}) returned {type(out).__name__}; it must return a str (or None)."
                )
            return out

        return call
    raise DcpvizError(
        f"key_map must be a dict {{hf_name: model_name}} or a callable, got {type(key_map).__name__}."
    )


def hf_saved(path: str | os.PathLike[str], key_map: Any = None) -> SavedCheckpoint:
    """The saved side of a load from the folder: DCP's HF reader's Metadata (renamed), and who
    wrote each chunk where (the file; the rank of a distributed save's shard file)."""
    md = hf_metadata(path, key_map)
    rename = _renamer(key_map)
    folder = scan_folder(path)
    writers = []
    for f in folder.files:
        offs = dict(f.offsets)
        for e in f.header.entries if f.header is not None else ():
            writers.append(
                ChunkWriter(
                    fqn=rename(e.name),
                    offsets=offs.get(e.name, (0,) * len(e.shape)),
                    rank=f.rank if f.rank >= 0 else None,
                    file=f.name,
                    storage_nbytes=e.nbytes,
                )
            )
    notes = [
        f"Safetensors folder {str(path)!r}: planned against DCP's HuggingFaceStorageReader.read_metadata "
        f"({len(folder.files)} *.safetensors files, every one of which DCP's HF reader reads)."
    ]
    return SavedCheckpoint(
        metadata=md,
        info=metadata_info(md),
        scenario=None,
        writers=tuple(writers),
        source=f"safetensors folder {str(path)!r}",
        notes=notes,
    )


def hf_metadata(path: str | os.PathLike[str], key_map: Any = None) -> Metadata:
    """DCP's HF reader's Metadata of the folder, keys renamed by ``key_map``, storage records dropped."""
    root = Path(path)
    if root.is_file():
        raise DcpvizError(
            f"saved={str(root)!r} is a file; DCP's HF reader reads a folder: pass {str(root.parent)!r}."
        )
    checkpoint_facts(scan_folder(root))  # every header validated first (raises CheckpointError)
    md = HuggingFaceStorageReader(str(root)).read_metadata()
    rename = _renamer(key_map)
    renamed: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key in sorted(md.state_dict_metadata):
        new = rename(key)
        if new in origin:
            raise DcpvizError(
                f"key_map sends both {origin[new]!r} and {key!r} to {new!r}: it must be one-to-one "
                "on the folder's keys."
            )
        origin[new] = key
        renamed[new] = md.state_dict_metadata[key]
    return Metadata(
        state_dict_metadata=renamed,
        planner_data=None,
        storage_data=None,
        storage_meta=md.storage_meta,
    )


def quantized_unread(path: str | os.PathLike[str], key_map: Any = None) -> dict[str, str]:
    """The folder's quantized companions (``core.hf.folder.quantized_companions``), by the names
    the load plans with (after ``key_map``): DCP's plain HF reader offers them, a model holding
    dequantized weights leaves them unread on purpose."""
    rename = _renamer(key_map)
    folder = scan_folder(path)
    keys = {e.name for f in folder.files if f.header is not None for e in f.header.entries}
    return {rename(k): what for k, what in quantized_companions(keys).items()}
