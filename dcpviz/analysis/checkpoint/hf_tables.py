"""The tables of a Hugging Face safetensors folder: what ``inspect_checkpoint`` returns for it.

The same chunks / storage / files tables and totals as for a DCP directory (``checkpoint_tables``),
built from headers only (``core.hf.folder``): one chunk per tensor per file, at DCP's sharding
offsets where a shard file has them; ``storage.offset`` is the tensor's first byte in its file;
``files.rank`` is the writer of a distributed save's shard file (-1 for other names).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dcpviz.analysis.checkpoint.hf_checks import folder_checks
from dcpviz.analysis.checkpoint.tables import CheckpointInfo, checkpoint_info
from dcpviz.analysis.checks import counts_line
from dcpviz.core.hf.folder import HFFolder, checkpoint_facts, shard_rank


@dataclass
class HFCheckpointInfo(CheckpointInfo):
    """A CheckpointInfo of a safetensors folder; ``folder``: the headers read; ``index``: the
    index's weight map (key -> file) or None. ``metadata`` is None (no DCP Metadata is read)."""

    folder: Any = None

    @property
    def index(self) -> dict[str, str] | None:
        return None if self.folder.index is None else dict(self.folder.index)

    @property
    def checks(self) -> pd.DataFrame:
        """What DCP's HF reader and HF loaders would meet in this folder (``analysis.checkpoint.hf_checks``)."""
        return folder_checks(self.folder)

    def __repr__(self) -> str:
        t = self.totals
        return (
            f"<HFCheckpointInfo {str(self.path)!r}: {t['tensors']} tensors in {t['chunks']} chunks, "
            f"{t['files']} safetensors files, {t['disk_nbytes']} bytes on disk; "
            f"checks: {counts_line(self.checks)}>"
        )


def hf_checkpoint_info(folder: HFFolder) -> HFCheckpointInfo:
    """Tables, totals and checks of a readable safetensors folder (CheckpointError otherwise)."""
    base = checkpoint_info(checkpoint_facts(folder))
    files = base.files.assign(rank=[shard_rank(n) for n in base.files["file"]]).astype(
        {"rank": "int64"}
    )
    # A safetensors file is its header plus the data of its tensors: the header bytes are not a gap.
    notes = [
        f"{len(folder.files)} safetensors files; DCP's HF reader reads every one of them"
        + (
            f"; the index maps {len(folder.index)} keys"
            if folder.index is not None
            else "; no index.json"
        )
    ]
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(CheckpointInfo)}
    fields.update(files=files, notes=notes)
    return HFCheckpointInfo(**fields, folder=folder)
