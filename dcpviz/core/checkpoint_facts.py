"""What reading a checkpoint directory found, as plain rows: the sources layer reads and
checks the directory, the analysis layer makes the tables (``analysis.checkpoint.tables``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CheckpointFacts:
    """Rows read from a checked DCP checkpoint directory (see ``engine.checkpoint.reader.read_checkpoint``).

    ``chunk_rows``: (fqn, chunk_index, offsets, sizes, dtype, nbytes, kind, global_size) ·
    ``storage_rows``: (fqn, offsets, file, offset, length, rank) · ``file_sizes``: bytes on disk of
    every referenced and stale data file · ``tensor_record_nbytes``: the stored length of every
    tensor record (data plus torch.save's framing).
    """

    path: Path
    metadata: Any  # DCP's Metadata object
    chunk_rows: list[tuple]
    storage_rows: list[tuple]
    file_sizes: dict[str, int]
    referenced_files: tuple[str, ...]
    stale_files: tuple[str, ...]
    tensors: int
    bytes_entries: int
    tensor_record_nbytes: int
    metadata_nbytes: int
    dcp_version: Any
