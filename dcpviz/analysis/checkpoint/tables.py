"""The tables of a checkpoint directory (what ``dcpviz.inspect_checkpoint`` returns), made from
the facts ``engine.checkpoint.reader.read_checkpoint`` found."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dcpviz.analysis.checks import checkpoint_checks, counts_line
from dcpviz.core.checkpoint_facts import CheckpointFacts
from dcpviz.core.filenames import file_rank


@dataclass
class CheckpointInfo:
    """What a DCP checkpoint directory holds, read without running anything from it.

    ``chunks``: fqn, chunk_index, offsets, sizes, dtype, nbytes, kind, global_size (one row per
    saved chunk; one row per bytes entry) · ``storage``: fqn, offsets, file, offset, length, rank ·
    ``files``: file, nbytes (size on disk), rank (writer, from the file name), items,
    stored_nbytes (sum of the lengths stored in it) · ``totals``: counts and byte sums ·
    ``metadata``: DCP's Metadata object · ``notes``: facts worth a look (stale files, ...).
    """

    path: Path
    metadata: Any
    chunks: pd.DataFrame
    storage: pd.DataFrame
    files: pd.DataFrame
    totals: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def checks(self) -> pd.DataFrame:
        """Stale data files and framing overhead, as check rows (``analysis.checks``)."""
        return checkpoint_checks(self)

    def __repr__(self) -> str:
        t = self.totals
        return (
            f"<CheckpointInfo {str(self.path)!r}: {t['tensors']} tensors in {t['chunks']} chunks, "
            f"{t['bytes_entries']} bytes entries, {t['files']} files, {t['disk_nbytes']} bytes on disk; "
            f"checks: {counts_line(self.checks)}>"
        )


def checkpoint_info(facts: CheckpointFacts) -> CheckpointInfo:
    """Chunks, storage and files tables, totals and notes of a checked checkpoint."""
    storage = pd.DataFrame(
        facts.storage_rows, columns=["fqn", "offsets", "file", "offset", "length", "rank"]
    )
    storage = storage.sort_values(["file", "offset"], kind="stable").reset_index(drop=True)
    storage = storage.astype({"offset": "int64", "length": "int64", "rank": "int64"})
    files = _files(facts, storage)
    chunks = pd.DataFrame(
        facts.chunk_rows,
        columns=[
            "fqn",
            "chunk_index",
            "offsets",
            "sizes",
            "dtype",
            "nbytes",
            "kind",
            "global_size",
        ],
    )
    chunks = chunks.astype({"chunk_index": "int64", "nbytes": "int64"})
    data_nbytes = int(chunks["nbytes"].sum())
    totals = {
        "tensors": facts.tensors,
        "bytes_entries": facts.bytes_entries,
        "chunks": int((chunks["kind"] == "tensor").sum()),
        "files": len(facts.referenced_files),
        "unreferenced_files": len(facts.stale_files),
        "tensor_nbytes": data_nbytes,
        "stored_nbytes": int(storage["length"].sum()),
        # torch.save's archive around each tensor chunk (headers, alignment): stored minus data.
        "framing_nbytes": facts.tensor_record_nbytes - data_nbytes,
        "disk_nbytes": int(files["nbytes"].sum()),
        "metadata_nbytes": facts.metadata_nbytes,
        "dcp_version": facts.dcp_version,
    }
    return CheckpointInfo(
        path=facts.path,
        metadata=facts.metadata,
        chunks=chunks,
        storage=storage,
        files=files,
        totals=totals,
        notes=_notes(facts, files),
    )


def _files(facts: CheckpointFacts, storage: pd.DataFrame) -> pd.DataFrame:
    stored = storage.groupby("file").agg(items=("fqn", "size"), stored_nbytes=("length", "sum"))
    rows = []
    for rel in list(facts.referenced_files) + list(facts.stale_files):
        n_items = int(stored.loc[rel, "items"]) if rel in stored.index else 0
        n_stored = int(stored.loc[rel, "stored_nbytes"]) if rel in stored.index else 0
        rows.append((rel, facts.file_sizes[rel], file_rank(rel), n_items, n_stored))
    files = pd.DataFrame(rows, columns=["file", "nbytes", "rank", "items", "stored_nbytes"])
    return files.astype(
        {"nbytes": "int64", "rank": "int64", "items": "int64", "stored_nbytes": "int64"}
    )


def _notes(facts: CheckpointFacts, files: pd.DataFrame) -> list[str]:
    notes: list[str] = []
    stale = facts.stale_files
    if stale:
        notes.append(
            f"{len(stale)} data files are not referenced by .metadata ({', '.join(stale[:4])}"
            f"{' ...' if len(stale) > 4 else ''}): left by an earlier save into the same directory "
            "(DCP overwrites .metadata but does not delete old data files)."
        )
    referenced = set(facts.referenced_files)
    gaps = [
        r
        for r in files.itertuples(index=False)
        if r.file in referenced and r.nbytes != r.stored_nbytes
    ]
    if gaps:
        notes.append(
            f"{len(gaps)} files hold bytes no record refers to (e.g. {gaps[0].file}: "
            f"{gaps[0].nbytes} on disk, {gaps[0].stored_nbytes} referenced)."
        )
    return notes
