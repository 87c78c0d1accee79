"""Tables of a storage writer's file plan (``SaveTrace.file_plan``): what each rank writes where.

A simulated save with a storage writer records the writer's own split of every final plan into
files (``engine/storage/writer_plan.py``); these tables show it, one row per fact. No torch.
"""

from __future__ import annotations

import json

import pandas as pd

from dcpviz.core.trace import SaveTrace

FILE_PLAN_COLUMNS = [
    "rank",
    "file",
    "fqn",
    "offsets",
    "sizes",
    "item_type",
    "dtype",
    "nbytes",
    "stage",
]
PLANNED_FILE_COLUMNS = ["file", "rank", "items", "nbytes"]


def file_plan(trace: SaveTrace, stage: str | None = None) -> pd.DataFrame:
    """One row per (rank, file, fqn, offsets): the item's data bytes and the stage ('write':
    a rank's write_data; 'consolidate': the consolidated output files), in the writer's order."""
    rows = [
        (
            f.rank,
            f.file,
            f.fqn,
            tuple(f.offsets),
            tuple(f.sizes),
            f.item_type,
            f.dtype,
            f.nbytes,
            f.stage,
        )
        for f in trace.file_plan
        if stage is None or f.stage == stage
    ]
    df = pd.DataFrame(rows, columns=FILE_PLAN_COLUMNS)
    return df.astype({"rank": "int64", "nbytes": "int64"})


def planned_files(trace: SaveTrace) -> pd.DataFrame:
    """One row per (file, rank) a rank's write_data writes: items and data bytes. Two ranks on
    one file name are two rows (they overwrite each other: ``analysis.save.file_checks``)."""
    df = file_plan(trace, "write")
    if df.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=object if c == "file" else "int64") for c in PLANNED_FILE_COLUMNS}
        )
    g = df.groupby(["file", "rank"], sort=True).agg(items=("fqn", "size"), nbytes=("nbytes", "sum"))
    return g.reset_index()[PLANNED_FILE_COLUMNS].astype(
        {"rank": "int64", "items": "int64", "nbytes": "int64"}
    )


CONSOLIDATION_COLUMNS = ["output_file", "fqn", "rank", "shard_file", "offsets", "sizes", "nbytes"]


def consolidation(trace: SaveTrace) -> pd.DataFrame:
    """Which shard pieces go into which consolidated output file: one row per piece a rank
    wrote (``stage='write'``) of a key that consolidation writes into ``output_file``."""
    out_of = {f.fqn: f.file for f in trace.file_plan if f.stage == "consolidate"}
    rows = [
        (out_of[f.fqn], f.fqn, f.rank, f.file, tuple(f.offsets), tuple(f.sizes), f.nbytes)
        for f in trace.file_plan
        if f.stage == "write" and f.fqn in out_of
    ]
    df = pd.DataFrame(rows, columns=CONSOLIDATION_COLUMNS)
    df = df.sort_values(["output_file", "fqn", "offsets"], kind="stable").reset_index(drop=True)
    return df.astype({"rank": "int64", "nbytes": "int64"})


def hf_index(trace: SaveTrace) -> dict | None:
    """The ``model.safetensors.index.json`` DCP's HuggingFaceStorageWriter would write for this
    plan (``finish``: weight_map fqn -> file, total_size = the data bytes written), or None where
    it writes none (a distributed save without consolidation, or another writer)."""
    info = trace.storage_writer
    if info is None or info.cls != "HuggingFaceStorageWriter":
        return None
    opts = dict(info.options)
    distributed = opts.get("save_distributed") == "True"
    consolidated = opts.get("enable_consolidation") == "True"
    if distributed and not consolidated:
        return None
    stage = "consolidate" if distributed else "write"
    df = file_plan(trace, stage)
    weight_map: dict[str, str] = {}
    for row in df.itertuples():
        weight_map[row.fqn] = row.file  # DCP's dict.update: the last writer of a key wins
    return {"metadata": {"total_size": int(df["nbytes"].sum())}, "weight_map": weight_map}


def hf_index_json(trace: SaveTrace) -> str | None:
    """``hf_index`` as the text DCP writes (json.dump(..., indent=2))."""
    idx = hf_index(trace)
    return None if idx is None else json.dumps(idx, indent=2)
