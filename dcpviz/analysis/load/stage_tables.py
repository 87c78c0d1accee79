"""A load by pipeline stage: what each target stage reads from each saved stage. No torch.

Target stages come from the load's own job (``trace.scenario``), saved stages from the job that
wrote the checkpoint (``trace.saved_scenario``), each by ``analysis.facets.stage_facet``: a side
whose stage is not known (no ``pp`` dim, no dim names, no recorded job) is ``<NA>`` here, never
guessed, and ``stage_facets(trace)`` says why.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dcpviz.analysis.facets import Facet, stage_facet
from dcpviz.analysis.load import tables as load_tables

STAGE_RESHARDING_COLUMNS = [
    "target_stage",
    "saved_stage",
    "target_ranks",
    "writers",
    "reads",
    "nbytes",
    "chunk_nbytes",
]


def stage_facets(trace: Any) -> tuple[Facet, Facet]:
    """(target stages, saved stages) of a load trace."""
    return (
        stage_facet(trace.scenario, "the target job"),
        stage_facet(trace.saved_scenario, "the saved job"),
    )


def _stage_of(facet: Facet, ranks: np.ndarray) -> pd.array:
    """Each rank's stage (Int64), <NA> where the facet is missing or the rank unknown (-1)."""
    if not facet.ok:
        return pd.array([pd.NA] * len(ranks), dtype="Int64")
    table = np.asarray(facet.by_rank, dtype=np.int64)
    inside = (ranks >= 0) & (ranks < len(table))
    out = pd.array(np.where(inside, table[np.clip(ranks, 0, len(table) - 1)], 0), dtype="Int64")
    out[~inside] = pd.NA
    return out


def stage_resharding(trace: Any, reads: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (target stage, saved stage) pair that reads anything: the target ranks that
    read, the writer ranks read from, reads, bytes read and saved-chunk bytes deserialised."""
    reads = load_tables.read_items(trace) if reads is None else reads
    if not len(reads):
        return pd.DataFrame(columns=STAGE_RESHARDING_COLUMNS)
    target, saved = stage_facets(trace)
    frame = reads.assign(
        target_stage=_stage_of(target, reads["rank"].to_numpy(dtype=np.int64)),
        saved_stage=_stage_of(saved, reads["writer_rank"].to_numpy(dtype=np.int64)),
    )
    rows = []
    for (t, s), grp in frame.groupby(["target_stage", "saved_stage"], dropna=False, sort=True):
        rows.append(
            {
                "target_stage": t,
                "saved_stage": s,
                "target_ranks": tuple(sorted(int(r) for r in pd.unique(grp["rank"]))),
                "writers": tuple(sorted(int(r) for r in pd.unique(grp["writer_rank"]))),
                "reads": len(grp),
                "nbytes": int(grp["nbytes"].sum()),
                "chunk_nbytes": int(grp["chunk_nbytes"].sum()),
            }
        )
    out = pd.DataFrame(rows, columns=STAGE_RESHARDING_COLUMNS)
    for c in ("target_stage", "saved_stage"):
        out[c] = out[c].astype("Int64")
    return out
