"""A load's per-rank numbers without its read table.

``read_items`` has one row per read of every target rank: 740,352 rows for a 1024-rank resume of
llama3-70b, ~9 s and ~2 GB of Python objects to build. The header, the checks and the explorer's
first tab need only sums and distinct counts per rank, and the reads of one tensor on one rank.
Here each read record (``trace.reads`` interns them; ranks share them) is coded once into
integer arrays, and each rank's reads are positions into them, so those numbers are numpy
sums and sorts over integer arrays. Every result equals the one computed from ``read_items``
(``tests/test_load_read_columns.py`` compares them on every kind of load).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from itertools import chain, repeat
from typing import Any

import numpy as np
import pandas as pd

from dcpviz.analysis.load import tables
from dcpviz.core.trace import LoadTrace


class ReadColumns:
    """Each read record's facts as integer codes, and every rank's reads as positions.

    Per read record (by position in ``trace.reads``): ``fqn`` (code into ``fqns``), ``chunk``
    (code of ``(fqn, saved_offsets)``), ``writer`` (writer rank, -1 unknown), ``file`` (code,
    -1 for no file), ``nbytes``, ``chunk_nbytes``, ``own_key`` (read under a storage key of its
    own); ``lengths[r]`` reads of rank ``r``, whose
    record positions are ``item[starts[r]:starts[r + 1]]`` in plan order.
    """

    def __init__(self, trace: LoadTrace) -> None:
        plans, _ = tables.read_plans(trace)
        self.lengths = np.fromiter(
            (0 if p is None else len(p.items) for p in plans), dtype=np.int64, count=len(plans)
        )
        self.item = np.fromiter(
            chain.from_iterable(p.items for p in plans if p is not None),
            dtype=np.int64,
            count=int(self.lengths.sum()),
        )
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.rank = np.repeat(np.arange(len(plans), dtype=np.int64), self.lengths)
        # The same lookups as read_items' rows (tables.read_row), once per read record, as
        # whole-list passes (dict lookups through map, codes in first-met order): one Python
        # statement per record and column was most of the explorer's first view.
        saved = tables.saved_lookups(trace)
        reads = trace.reads
        keys = [(r.storage_fqn or r.fqn, r.saved_offsets) for r in reads]
        found = list(map(saved.writers.get, keys))
        names = [r.fqn for r in reads]
        fqn_codes = _first_met_codes(names)
        self.fqn = _codes(names, fqn_codes)
        chunks = [(r.fqn, r.saved_offsets) for r in reads]
        self.chunk = _codes(chunks, _first_met_codes(chunks))
        self.writer = np.array(
            [-1 if w is None or w.rank is None else w.rank for w in found], dtype=np.int64
        )
        files = [None if w is None else w.file for w in found]
        file_codes = _first_met_codes(f for f in files if f is not None)
        file_codes[None] = -1
        self.file = _codes(files, file_codes)
        self.nbytes = np.array([r.nbytes for r in reads], dtype=np.int64)
        self.chunk_nbytes = np.array(
            list(map(saved.chunk_nbytes.get, keys, repeat(0, len(keys)))), dtype=np.int64
        )
        self.own_key = np.array([r.storage_fqn is not None for r in reads], dtype=bool)
        self.fqns = list(fqn_codes)

    def probes(self) -> list[int]:
        """Positions (into ``item``) of one read of each kind the table holds: with and
        without a file, with and without a storage key of its own."""
        found = set()
        for per_record in (self.file >= 0, self.file < 0, self.own_key, ~self.own_key):
            hit = np.flatnonzero(per_record[self.item])
            if len(hit):
                found.add(int(hit[0]))
        return sorted(found)

    @property
    def n_reads(self) -> int:
        """Reads of every rank (``len(read_items)``)."""
        return len(self.item)

    def per_rank_sum(self, values: np.ndarray) -> np.ndarray:
        """Per rank, the sum of a per-record value over the rank's reads (int64, exact)."""
        return tables.segment_sums(values[self.item], self.lengths)

    def per_rank_distinct(self, codes: np.ndarray, skip: int | None = None) -> np.ndarray:
        """Per rank, how many distinct codes its reads have (``skip``: a code not counted, as
        pandas' ``nunique`` leaves out None)."""
        mine = codes[self.item]
        ranks = self.rank
        if skip is not None:
            keep = mine != skip
            mine, ranks = mine[keep], ranks[keep]
        if not len(mine):
            return np.zeros(len(self.lengths), dtype=np.int64)
        low = int(mine.min())
        span = int(mine.max()) - low + 1
        pairs = np.sort(ranks * span + (mine - low))  # a sort: numpy's hashing unique is slower
        first = np.concatenate([[True], pairs[1:] != pairs[:-1]])
        return np.bincount(pairs[first] // span, minlength=len(self.lengths)).astype(np.int64)


def _first_met_codes(values: Iterable[Hashable]) -> dict[Any, int]:
    """value -> 0, 1, ... in the order the values are first met."""
    return {v: k for k, v in enumerate(dict.fromkeys(values))}


def _codes(values: Sequence[Hashable], codes: dict[Any, int]) -> np.ndarray:
    """Each value's code, as an int64 array."""
    return np.array(list(map(codes.__getitem__, values)), dtype=np.int64)


def columns(trace: LoadTrace) -> ReadColumns:
    """``ReadColumns(trace)``, built once per trace."""
    memo = tables.trace_memo(trace)
    if "read_columns" not in memo:
        memo["read_columns"] = ReadColumns(trace)
    return memo["read_columns"]


def rank_volume(trace: LoadTrace) -> pd.DataFrame:
    """``tables.rank_volume(trace, read_items)``, from the columns."""
    memo = tables.trace_memo(trace)
    if "fast_rank_volume" not in memo:
        c = columns(trace)
        counts = {
            "reads": c.lengths.copy(),
            "nbytes": c.per_rank_sum(c.nbytes),
            "chunk_nbytes": c.per_rank_sum(c.chunk_nbytes),
            "tensors": c.per_rank_distinct(c.fqn),
            "saved_chunks": c.per_rank_distinct(c.chunk),
            "writers": c.per_rank_distinct(c.writer),
            "files": c.per_rank_distinct(c.file, skip=-1),
        }
        memo["fast_rank_volume"] = tables.volume_frame(trace, counts)
    return memo["fast_rank_volume"].copy()


def summary(trace: LoadTrace) -> dict[str, Any]:
    """``tables.summary(trace, read_items)``, from the columns."""
    c = columns(trace)
    return tables.summary_of(
        trace,
        rank_volume(trace),
        c.n_reads,
        int(c.nbytes[c.item].sum()),
        int(c.chunk_nbytes[c.item].sum()),
    )


def on_disk(trace: LoadTrace) -> bool:
    """Whether any read names a storage file (``read_items["file"].notna().any()``)."""
    c = columns(trace)
    return bool(len(c.item)) and bool((c.file[c.item] >= 0).any())


def reads_of(trace: LoadTrace, fqn: str, rank: int) -> pd.DataFrame:
    """``read_items`` rows of target ``rank`` reading ``fqn``, in table order (index from 0),
    with the table's column dtypes."""
    plans, _ = tables.read_plans(trace)
    plan = plans[rank] if 0 <= rank < len(plans) else None
    items = () if plan is None else plan.items
    reads = trace.reads
    return _frame(trace, [(rank, *tables.read_row(trace, i)) for i in items if reads[i].fqn == fqn])


def _frame(trace: LoadTrace, rows: list[tuple]) -> pd.DataFrame:
    """Some rows of ``read_items``, with the whole table's column dtypes."""
    # pandas infers a column's dtype from the kinds of value in it (strings and None: 'str',
    # None alone: object). Rows of every kind the whole table holds go along and are cut off.
    c = columns(trace)
    probes = [(int(c.rank[p]), *tables.read_row(trace, int(c.item[p]))) for p in c.probes()]
    return tables.read_frame(trace, rows + probes).iloc[: len(rows)]


def tensor_spread(trace: LoadTrace) -> tuple[pd.Series, pd.Series]:
    """``(rank 0's distinct saved chunks per tensor, bytes read per tensor)``: what
    ``read_items[read_items.rank == 0].groupby("fqn")["saved_offsets"].nunique()`` and
    ``read_items.groupby("fqn")["nbytes"].sum()`` give (same index, order and values)."""
    c = columns(trace)
    plans, _ = tables.read_plans(trace)
    first = () if not plans or plans[0] is None else plans[0].items
    rank0 = _frame(trace, [(0, *tables.read_row(trace, i)) for i in first])
    spread = rank0.groupby("fqn")["saved_offsets"].nunique()
    sums = np.zeros(len(c.fqns), dtype=np.int64)
    np.add.at(sums, c.fqn[c.item], c.nbytes[c.item])
    present = np.bincount(c.fqn[c.item], minlength=len(c.fqns)) > 0
    names = sorted(f for f, p in zip(c.fqns, present) if p)
    code = {f: k for k, f in enumerate(c.fqns)}
    by_bytes = pd.Series(
        np.array([sums[code[f]] for f in names], dtype=np.int64),
        index=pd.Index(names, name="fqn"),  # the dtype pandas gives read_items' fqn column
        name="nbytes",
    )
    return spread, by_bytes
