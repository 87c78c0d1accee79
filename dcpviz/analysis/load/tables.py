"""LoadTrace -> tidy pandas DataFrames, one row per fact, stable column names.

Pure functions: a trace in, a DataFrame out. Offsets, sizes and lengths are tuples of ints;
ranks are global ranks of the target layout; ``writer_rank`` is the saved side's global rank.
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

from dcpviz.analysis.save.tables import components_of, job_facts
from dcpviz.core.errors import DcpvizError
from dcpviz.core.kinds import MISMATCH_ORDER, MismatchKind
from dcpviz.core.trace import ChunkWriter, LoadTrace, PlanRecord, ReadRecord
from dcpviz.core.units import itemsize as dtype_itemsize

READ_ITEM_COLUMNS = [
    "rank",
    "fqn",
    "dest_offsets",
    "storage_offsets",
    "lengths",
    "saved_offsets",
    "nbytes",
    "writer_rank",
    "file",
    "item_type",
    "dest_chunk_offsets",
    "saved_chunk",
    "dtype",
    "chunk_nbytes",
    "storage_nbytes",
    "storage_fqn",
    "component",
]
RANK_VOLUME_COLUMNS = [
    "rank",
    "reads",
    "nbytes",
    "chunk_nbytes",
    "wanted_nbytes",
    "tensors",
    "saved_chunks",
    "writers",
    "files",
    "coordinate",
    "planned",
]
RESHARDING_COLUMNS = ["rank", "writer_rank", "file", "reads", "nbytes", "chunk_nbytes"]
MISMATCH_COLUMNS = [
    "rank",
    "fqn",
    "kind",
    "saved",
    "current",
    "message",
    "dcp_raised",
    "explanation",
    "saved_size",
    "saved_dtype",
    "current_size",
    "current_dtype",
]
KIND_ORDER = MISMATCH_ORDER


def read_plans(trace: LoadTrace) -> tuple[tuple[PlanRecord | None, ...], str]:
    """The plans the reads come from: final plans when the load planned through, else the local
    plans of the ranks that planned (a failed rank has none)."""
    if trace.final_plans is not None:
        return trace.final_plans, "final"
    if trace.global_plans is not None:
        return trace.global_plans, "global"
    return trace.local_plans, "local"


class SavedLookups:
    """Lookups into the checkpoint side: writer, file, chunk sizes, dtype per saved chunk."""

    def __init__(self, trace: LoadTrace) -> None:
        self.writers: dict[tuple[str, Any], ChunkWriter] = {
            (w.fqn, w.offsets): w for w in trace.saved_writers
        }
        self.dtype: dict[str, str] = {}
        self.chunk_nbytes: dict[tuple[str, Any], int] = {}
        for t in trace.saved.tensors:
            self.dtype[t.fqn] = t.dtype
            itemsize = dtype_itemsize(t.dtype)
            for c in t.chunks:
                self.chunk_nbytes[(t.fqn, c.offsets)] = math.prod(c.sizes) * itemsize

    def key(self, r: ReadRecord) -> tuple[str, Any]:
        return (r.storage_fqn or r.fqn, r.saved_offsets)


_MEMO: dict[int, tuple[LoadTrace, dict[Any, Any]]] = {}


def trace_memo(trace: LoadTrace) -> dict[Any, Any]:
    """Values derived from ``trace`` that several tables need, kept while the trace is among
    the last few seen (the header, the checks and the first tab all ask for them)."""
    hit = _MEMO.get(id(trace))
    if hit is None or hit[0] is not trace:
        if len(_MEMO) > 8:
            _MEMO.clear()
        hit = _MEMO[id(trace)] = (trace, {})
    return hit[1]


def saved_lookups(trace: LoadTrace) -> SavedLookups:
    """``SavedLookups(trace)``, built once per trace."""
    memo = trace_memo(trace)
    if "saved" not in memo:
        memo["saved"] = SavedLookups(trace)
    return memo["saved"]


def read_row(trace: LoadTrace, i: int) -> tuple:
    """Read item ``i``'s columns (all but ``rank`` and ``component``), as ``read_items`` has them."""
    saved = saved_lookups(trace)
    r = trace.reads[i]
    key = saved.key(r)
    w = saved.writers.get(key)
    return (
        r.fqn,
        r.dest_offsets,
        r.storage_offsets,
        r.lengths,
        r.saved_offsets,
        r.nbytes,
        -1 if w is None or w.rank is None else w.rank,
        None if w is None else w.file,
        r.item_type,
        r.dest_chunk_offsets,
        -1 if r.saved_chunk is None else r.saved_chunk,
        saved.dtype.get(key[0], ""),
        saved.chunk_nbytes.get(key, 0),
        None if w is None else w.storage_nbytes,
        r.storage_fqn,
    )


def _read_rows(trace: LoadTrace) -> list[tuple]:
    plans, _ = read_plans(trace)
    per_item: dict[int, tuple] = {}
    rows = []
    for rank, plan in enumerate(plans):
        if plan is None:
            continue
        for i in plan.items:
            row = per_item.get(i)
            if row is None:
                row = per_item[i] = read_row(trace, i)
            rows.append((rank, *row))
    return rows


def read_items(trace: LoadTrace) -> pd.DataFrame:
    """Every read of every target rank: which box of which saved chunk lands where.

    ``saved_offsets`` names the saved chunk read from; ``writer_rank`` / ``file`` say who wrote
    it and where it lies (-1 / None when unknown). ``nbytes`` is the box read;
    ``chunk_nbytes`` the whole saved chunk, which DCP's FileSystemReader deserialises in full
    before narrowing to the box (``storage_nbytes``: its stored length, when on disk).
    """
    return read_frame(trace, _read_rows(trace))


def read_frame(trace: LoadTrace, rows: list[tuple]) -> pd.DataFrame:
    """``read_items``' table of the given rows (``(rank, *read_row(trace, i))`` each)."""
    df = pd.DataFrame(rows, columns=READ_ITEM_COLUMNS[:-1])
    df["component"] = components_of(trace, df["fqn"])
    df["storage_nbytes"] = pd.array(df["storage_nbytes"].tolist(), dtype="Int64")
    return df.astype(
        {
            "rank": "int64",
            "nbytes": "int64",
            "writer_rank": "int64",
            "saved_chunk": "int64",
            "chunk_nbytes": "int64",
        }
    )


def wanted_nbytes(trace: LoadTrace, component: str | None = None) -> np.ndarray:
    """Bytes each target rank's own shards hold (of one training-state component, if given)."""
    parts = components_of(trace, [tv.fqn for tv in trace.wanted]) if component is not None else None
    per_value = []
    itemsizes: dict[str, int] = {}  # dtype_itemsize once per dtype name (it raises on unknown)
    for i, tv in enumerate(trace.wanted):
        if tv.dtype is None or (parts is not None and parts[i] != component):
            per_value.append(0)
            continue
        itemsize = itemsizes.get(tv.dtype)
        if itemsize is None:
            itemsize = itemsizes[tv.dtype] = dtype_itemsize(tv.dtype)
        chunks = tv.chunks
        elements = (
            math.prod(chunks[0].sizes)
            if len(chunks) == 1
            else sum(math.prod(c.sizes) for c in chunks)
        )
        per_value.append(elements * itemsize)
    by_rank = trace.wanted_by_rank
    lengths = np.fromiter(map(len, by_rank), dtype=np.int64, count=len(by_rank))
    ids = np.fromiter(chain.from_iterable(by_rank), dtype=np.int64, count=int(lengths.sum()))
    return segment_sums(np.array(per_value, dtype=np.int64)[ids], lengths)


def segment_sums(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sums of consecutive runs of ``values`` (int64, exact), ``lengths[i]`` values in run ``i``."""
    ends = np.cumsum(np.concatenate([[0], values]).astype(np.int64))
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return ends[bounds[1:]] - ends[bounds[:-1]]


VOLUME_COUNTS = ("reads", "nbytes", "chunk_nbytes", "tensors", "saved_chunks", "writers", "files")


def rank_volume(trace: LoadTrace, reads: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per target rank: reads and bytes read, the saved-chunk bytes DCP's FileSystemReader
    deserialises for them (``chunk_nbytes``), the bytes the rank's own shards hold
    (``wanted_nbytes``), and how many tensors, saved chunks, writer ranks and files it touches.
    ``planned`` is False for a rank whose local plan failed (its counts are NA)."""
    reads = read_items(trace) if reads is None else reads
    memo = trace_memo(trace)
    hit = memo.get("rank_volume")
    if hit is None or hit[0] is not reads:  # the same reads frame: the same answer
        hit = memo["rank_volume"] = (reads, _rank_volume(trace, reads))
    return hit[1].copy()


def _rank_volume(trace: LoadTrace, reads: pd.DataFrame) -> pd.DataFrame:
    W = trace.scenario.world_size
    g = reads.groupby("rank")
    idx = pd.RangeIndex(W, name="rank")

    def col(series: pd.Series) -> np.ndarray:
        return series.reindex(idx, fill_value=0).to_numpy()

    counts = {
        "reads": col(g.size()),
        "nbytes": col(g["nbytes"].sum()),
        "chunk_nbytes": col(g["chunk_nbytes"].sum()),
        "tensors": col(g["fqn"].nunique()),
        "saved_chunks": col(
            reads.assign(_k=list(zip(reads["fqn"], reads["saved_offsets"])))
            .groupby("rank")["_k"]
            .nunique()
        )
        if len(reads)
        else np.zeros(W, np.int64),
        "writers": col(g["writer_rank"].nunique()),
        "files": col(g["file"].nunique()),
    }
    return volume_frame(trace, counts)


def volume_frame(trace: LoadTrace, counts: dict[str, np.ndarray]) -> pd.DataFrame:
    """``rank_volume``'s table from its per-rank counts (``VOLUME_COUNTS``, one value per rank)."""
    W = trace.scenario.world_size
    plans, _ = read_plans(trace)
    planned = np.array([p is not None for p in plans], dtype=bool)
    df = pd.DataFrame(
        {
            "rank": np.arange(W, dtype=np.int64),
            **{c: counts[c] for c in VOLUME_COUNTS[:3]},
            "wanted_nbytes": wanted_nbytes(trace)
            if trace.wanted_by_rank
            else np.zeros(W, np.int64),
            **{c: counts[c] for c in VOLUME_COUNTS[3:]},
            "coordinate": [trace.scenario.coordinate(r) for r in range(W)],
            "planned": planned,
        }
    )
    for c in VOLUME_COUNTS:
        arr = pd.array(df[c].to_numpy(), dtype="Int64")
        arr[~planned] = pd.NA
        df[c] = arr
    return df


def resharding(trace: LoadTrace, reads: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tidy resharding table: one row per (target rank, writer rank, file) with reads and bytes.
    ``file`` is None unless the checkpoint is on disk; ``writer_rank`` -1 when unknown."""
    reads = read_items(trace) if reads is None else reads
    if not len(reads):
        return pd.DataFrame(columns=RESHARDING_COLUMNS)
    df = (
        reads.assign(file=reads["file"].fillna(""))
        .groupby(["rank", "writer_rank", "file"], sort=True)
        .agg(reads=("fqn", "size"), nbytes=("nbytes", "sum"), chunk_nbytes=("chunk_nbytes", "sum"))
        .reset_index()
    )
    df["file"] = df["file"].replace("", None)
    return df[RESHARDING_COLUMNS]


def resharding_matrix(
    trace: LoadTrace,
    by: str = "writer_rank",
    values: str = "nbytes",
    reads: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Target rank (rows, every rank) x ``by`` ('writer_rank' or 'file') -> ``values``
    ('nbytes', 'reads' or 'chunk_nbytes'), zeros where a rank reads nothing from a column."""
    if by not in ("writer_rank", "file"):
        raise DcpvizError(f"by={by!r}: use 'writer_rank' or 'file'.")
    if values not in ("nbytes", "reads", "chunk_nbytes"):
        raise DcpvizError(f"values={values!r}: use 'nbytes', 'reads' or 'chunk_nbytes'.")
    long = resharding(trace, reads)
    W = trace.scenario.world_size
    if by == "file":
        long = long[long["file"].notna()]
        if long.empty and len(reads if reads is not None else trace.reads):
            raise DcpvizError(
                "by='file' needs a checkpoint on disk: this load was planned against "
                f"{trace.saved_source or 'a save trace'}, whose reads name no files. Plan the load "
                "against the checkpoint directory (simulate_load(dir, ...) or run_load), or use "
                "by='writer_rank'."
            )
    m = long.pivot_table(index="rank", columns=by, values=values, aggfunc="sum", fill_value=0)
    m = m.reindex(pd.RangeIndex(W, name="rank"), fill_value=0)
    m.columns.name = by
    return m.astype("int64")


# -- mismatches ----------------------------------------------------------------------------
def _desc(size: tuple[int, ...] | None, dtype: str | None) -> str:
    if size is None and dtype is None:
        return "non-tensor"
    return f"{dtype} {tuple(size) if size is not None else ''}".strip()


def _saved_current(m: Any) -> tuple[str | None, str | None]:
    if m.kind == MismatchKind.SIZE:
        return str(tuple(m.saved_size)), str(tuple(m.current_size))
    if m.kind == MismatchKind.DTYPE:
        return m.saved_dtype, m.current_dtype
    if m.kind == MismatchKind.MISSING:
        return None, _desc(m.current_size, m.current_dtype)
    if m.kind == MismatchKind.UNEXPECTED:
        return _desc(m.saved_size, m.saved_dtype), None
    return _desc(m.saved_size, m.saved_dtype), _desc(m.current_size, m.current_dtype)


def explanation(m: Any, partial: bool) -> str:
    """What the mismatch means for dcp.load, in plain words (ours, not DCP's)."""
    if m.kind == MismatchKind.MISSING:
        if partial:
            return (
                "not in the checkpoint; allow_partial_load=True makes DCP skip it, so it keeps "
                "its initial value"
            )
        return "the target wants this key but the checkpoint has none; DCP raises (strict load)"
    if m.kind == MismatchKind.UNEXPECTED:
        return "in the checkpoint but no target rank asks for it; DCP ignores it silently"
    if m.kind == MismatchKind.SIZE:
        return "the global shape changed; DCP refuses to load a tensor into a different shape"
    if m.kind == MismatchKind.DTYPE:
        return (
            f"DCP does not check dtypes: FileSystemReader copies with Tensor.copy_, casting "
            f"{m.saved_dtype} to {m.current_dtype} silently"
        )
    if m.kind == MismatchKind.TYPE:
        if m.saved_size is not None:
            return "saved as a tensor, but the target holds a non-tensor value here"
        return (
            "saved as bytes (a non-tensor), but the target holds a tensor: DCP plans a bytes "
            "read and replaces the dict entry; the tensor itself is not updated"
        )
    return "DCP rejected this key"


def mismatches(trace: LoadTrace) -> pd.DataFrame:
    """One row per mismatch per target rank ('unexpected' rows have rank <NA>), ordered
    missing, size, type, other, dtype, unexpected. ``message`` is DCP's own exception text
    where DCP raises on the key ('' where it does not check); ``explanation`` is ours."""
    partial = bool(trace.planner.option("allow_partial_load", False))
    rows = []
    for m in trace.mismatches:
        saved, current = _saved_current(m)
        why = explanation(m, partial)
        base = (
            m.fqn,
            m.kind,
            saved,
            current,
            m.message,
            bool(m.message),
            why,
            m.saved_size,
            m.saved_dtype,
            m.current_size,
            m.current_dtype,
        )
        if m.ranks:
            rows.extend((r, *base) for r in m.ranks)
        else:
            rows.append((None, *base))
    cols = list(zip(*rows)) if rows else [()] * len(MISMATCH_COLUMNS)
    # Built column by column as object arrays, so absent values stay None (not NaN).
    df = pd.DataFrame(
        {name: pd.Series(list(c), dtype=object) for name, c in zip(MISMATCH_COLUMNS, cols)}
    )
    df["rank"] = pd.array(df["rank"].tolist(), dtype="Int64")
    df["dcp_raised"] = df["dcp_raised"].astype(bool)
    if len(df):
        order = df["kind"].map(KIND_ORDER).fillna(9)
        df = (
            df.assign(_o=order).sort_values(["_o", "fqn", "rank"], kind="stable").drop(columns="_o")
        )
        df = df.reset_index(drop=True)
    return df


def summary(trace: LoadTrace, reads: pd.DataFrame | None = None) -> dict[str, Any]:
    """The numbers a header shows."""
    reads = read_items(trace) if reads is None else reads
    return summary_of(
        trace,
        rank_volume(trace, reads),
        len(reads),
        int(reads["nbytes"].sum()) if len(reads) else 0,
        int(reads["chunk_nbytes"].sum()) if len(reads) else 0,
    )


def summary_of(
    trace: LoadTrace, vol: pd.DataFrame, reads: int, total: int, chunk_bytes: int
) -> dict[str, Any]:
    """``summary`` from the rank volume table and the reads' count and byte sums."""
    _, phase = read_plans(trace)
    kinds: dict[str, int] = {}
    for m in trace.mismatches:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    failed = sorted({e.rank for e in trace.errors if e.phase == "local" and e.rank is not None})
    nb = vol["nbytes"].astype("float64")

    return {
        **job_facts(trace),
        "saved_source": trace.saved_source,
        "saved_scenario": trace.saved_scenario,
        "saved_tensors": len(trace.saved.tensors),
        "saved_bytes_entries": len(trace.saved.bytes_keys),
        "plans": phase,
        "reads": reads,
        "total_bytes": total,
        "chunk_bytes": chunk_bytes,
        "max_rank_bytes": float(nb.max()) if nb.notna().any() else float("nan"),
        "mean_rank_bytes": float(nb.mean()) if nb.notna().any() else float("nan"),
        "failed_ranks": failed,
        "mismatch_keys": kinds,
        "ok": not trace.errors,
        "errors": len(trace.errors),
    }


SAVED_BOX_COLUMNS = [
    "offsets",
    "sizes",
    "writer_rank",
    "file",
    "nbytes",
    "read_by_rank",
    "read_nbytes",
]
READ_BOX_COLUMNS = [
    "offsets",
    "sizes",
    "saved_offsets",
    "writer_rank",
    "file",
    "nbytes",
    "chunk_nbytes",
]


def saved_boxes(trace: LoadTrace, reads: pd.DataFrame, fqn: str, rank: int) -> pd.DataFrame:
    """The checkpoint's chunks of ``fqn``: writer, file, bytes, and what ``rank`` reads of each."""
    saved = saved_lookups(trace)
    mine = reads[(reads["rank"] == rank) & (reads["fqn"] == fqn)]
    read_bytes = (
        mine.groupby(mine["saved_offsets"].map(tuple), sort=False)["nbytes"].sum().to_dict()
        if len(mine)
        else {}
    )
    rows = []
    for t in trace.saved.tensors:
        if t.fqn != fqn:
            continue
        for c in t.chunks:
            w = saved.writers.get((fqn, c.offsets))
            got = int(read_bytes.get(c.offsets, 0))
            rows.append(
                (
                    c.offsets,
                    c.sizes,
                    -1 if w is None or w.rank is None else w.rank,
                    None if w is None else w.file,
                    saved.chunk_nbytes.get((fqn, c.offsets), 0),
                    got > 0,
                    got,
                )
            )
    return pd.DataFrame(rows, columns=SAVED_BOX_COLUMNS)


def read_boxes(reads: pd.DataFrame, fqn: str, rank: int) -> pd.DataFrame:
    """What ``rank`` reads of ``fqn``, each read as a box in the tensor's global coordinates
    (the saved chunk's offsets plus the read's offsets within it)."""
    mine = reads[(reads["rank"] == rank) & (reads["fqn"] == fqn) & (reads["item_type"] == "TENSOR")]
    rows = [
        (
            tuple(o + s for o, s in zip(r.saved_offsets, r.storage_offsets)),
            r.lengths,
            r.saved_offsets,
            r.writer_rank,
            r.file,
            r.nbytes,
            r.chunk_nbytes,
        )
        for r in mine.itertuples(index=False)
    ]
    return pd.DataFrame(rows, columns=READ_BOX_COLUMNS)


def wanted_boxes(
    trace: LoadTrace, fqn: str, rank: int
) -> tuple[tuple[int, ...] | None, str | None, list[tuple]]:
    """(global size, dtype, [(offsets, sizes), ...]) of what target ``rank`` holds under ``fqn``."""
    if rank >= len(trace.wanted_by_rank):
        return None, None, []
    for i in trace.wanted_by_rank[rank]:
        tv = trace.wanted[i]
        if tv.fqn == fqn:
            return tv.size, tv.dtype, [(c.offsets, c.sizes) for c in tv.chunks]
    return None, None, []
