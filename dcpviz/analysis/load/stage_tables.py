"""A load by pipeline stage (what each target stage reads from each saved stage) and by expert
(which experts of the grouped expert tensors each target rank reads). No torch.

Target stages come from the load's own job (``trace.scenario``), saved stages from the job that
wrote the checkpoint (``trace.saved_scenario``), each by ``analysis.facets.stage_facet``: a side
whose stage is not known (no ``pp`` dim, no dim names, no recorded job) is ``<NA>`` here, never
guessed, and ``stage_facets(trace)`` says why.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dcpviz.analysis.facets import Facet, is_grouped_expert, stage_facet
from dcpviz.analysis.load import tables as load_tables
from dcpviz.core.errors import DcpvizError

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


def expert_reads(trace: Any, reads: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (target rank, expert): the reads of grouped expert tensors (3-D ``[E, ...]``
    under a module named ``experts``) that cover the expert, and the bytes read of it. A read
    covers experts ``saved_offsets[0] + storage_offsets[0]`` onward, ``lengths[0]`` of them, each
    an equal slice of its bytes. Empty when the checkpoint has no grouped experts."""
    reads = load_tables.read_items(trace) if reads is None else reads
    experts = {t.fqn for t in trace.saved.tensors if is_grouped_expert(t.fqn, tuple(t.size))}
    cols = ["rank", "expert", "reads", "nbytes"]
    ex = reads[reads["fqn"].isin(experts)] if len(reads) else reads
    if not len(ex):
        return pd.DataFrame(columns=cols)
    start = np.array(
        [int(a[0]) + int(b[0]) for a, b in zip(ex["saved_offsets"], ex["storage_offsets"])]
    )
    count = np.array([int(n[0]) for n in ex["lengths"]], dtype=np.int64)
    nbytes = ex["nbytes"].to_numpy(dtype=np.int64)
    keep = count > 0
    start, count, nbytes = start[keep], count[keep], nbytes[keep]
    ranks = ex["rank"].to_numpy(dtype=np.int64)[keep]
    # One row per expert a read covers: its slice of the read's bytes (rows of dim 0 are equal).
    rows = np.repeat(np.arange(len(count)), count)
    expert = start[rows] + (np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count))
    long = pd.DataFrame(
        {"rank": ranks[rows], "expert": expert, "reads": 1, "nbytes": nbytes[rows] // count[rows]}
    )
    return long.groupby(["rank", "expert"], sort=True, as_index=False)[["reads", "nbytes"]].sum()[
        cols
    ]


def expert_matrix(
    trace: Any, values: str = "nbytes", reads: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Target rank (rows, every rank) x expert (columns, every expert of the largest grouped
    expert tensor) -> ``values`` ('nbytes' or 'reads'); DcpvizError when there are no experts."""
    if values not in ("nbytes", "reads"):
        raise DcpvizError(
            f"values={values!r} with by='expert': use 'nbytes' or 'reads' (a saved chunk's "
            "deserialised bytes are not split by expert)."
        )
    sizes = [int(t.size[0]) for t in trace.saved.tensors if is_grouped_expert(t.fqn, tuple(t.size))]
    if not sizes:
        raise DcpvizError(
            "by='expert': this checkpoint has no grouped expert tensors (3-D tensors under a module "
            "named 'experts', as torchtitan's GroupedExperts holds them). Use by='writer_rank'."
        )
    long = expert_reads(trace, reads)
    W = int(trace.scenario.world_size)
    m = long.pivot_table(index="rank", columns="expert", values=values, aggfunc="sum", fill_value=0)
    m = m.reindex(index=pd.RangeIndex(W, name="rank"), columns=range(max(sizes)), fill_value=0)
    m.columns.name = "expert"
    return m.astype("int64")
