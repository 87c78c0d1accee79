"""Trace -> tidy pandas DataFrames, one row per fact, stable column names.

Everything a figure shows is in a table first. Functions here are pure: a trace in, a
DataFrame out. Offsets and sizes are tuples of ints; ranks are global ranks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from typing import Any

import numpy as np
import pandas as pd

from dcpviz.analysis.groups import collapsed_label, module_of, numbers_of, pattern_of, ranges
from dcpviz.core.components import component_of
from dcpviz.core.filenames import file_rank
from dcpviz.core.plans import final_or_global
from dcpviz.core.trace import PlannedItem, PlanRecord, SaveTrace
from dcpviz.core.units import fmt_bytes
from dcpviz.core.units import itemsize as dtype_itemsize

WRITE_ITEM_COLUMNS = [
    "rank",
    "fqn",
    "offsets",
    "sizes",
    "item_type",
    "dtype",
    "nbytes",
    "kept",
    "global_size",
    "dcp_size",
    "component",
]
DEDUP_COLUMNS = [
    "fqn",
    "offsets",
    "candidates",
    "chosen_rank",
    "nbytes",
    "candidate_planned_bytes",
    "replay_rank",
    "replay_agrees",
    "rule",
    "why",
]
RANK_VOLUME_COLUMNS = ["rank", "items", "nbytes", "planned_items", "planned_nbytes", "coordinate"]
CHUNK_COLUMNS = [
    "fqn",
    "chunk_index",
    "offsets",
    "sizes",
    "rank",
    "nbytes",
    "dtype",
    "kind",
    "global_size",
    "component",
]


def components_of(trace: Any, fqns: Any) -> list[str]:
    """The training-state component (``model``, ``optim``, ``lr_scheduler``, ...) of each key."""
    prefixes = dict(trace.scenario.components) if trace.scenario is not None else {}
    memo: dict[str, str] = {}
    return [memo[f] if f in memo else memo.setdefault(f, component_of(f, prefixes)) for f in fqns]


def _box(b: tuple[int, ...] | None) -> tuple[int, ...]:
    return () if b is None else b


class _ItemColumns:
    """Per-item arrays, computed once per trace and indexed by item position."""

    def __init__(self, items: tuple[PlannedItem, ...]) -> None:
        self.fqn = np.array([it.fqn for it in items], dtype=object)
        self.offsets = np.empty(len(items), dtype=object)
        self.offsets[:] = [_box(it.offsets) for it in items]
        self.sizes = np.empty(len(items), dtype=object)
        self.sizes[:] = [_box(it.sizes) for it in items]
        self.global_size = np.empty(len(items), dtype=object)
        self.global_size[:] = [_box(it.global_size) for it in items]
        self.item_type = np.array([it.item_type for it in items], dtype=object)
        self.dtype = np.array([it.dtype or "" for it in items], dtype=object)
        self.nbytes = np.array([it.nbytes for it in items], dtype=np.int64)
        self.dcp_size = np.array(
            [-1 if it.dcp_size is None else it.dcp_size for it in items], dtype=np.int64
        )
        self.key, self.n_keys = _key_codes(items)
        self.n_fqns = len(set(self.fqn.tolist()))
        # Tables derived from the whole trace that more than one caller needs (the explorer and
        # the checks both want ``dedup``): computed once, kept as long as these columns.
        self.memo: dict[str, Any] = {}


def _key_codes(items: tuple[PlannedItem, ...]) -> tuple[np.ndarray, int]:
    """Each item's ``PlannedItem.key`` as a number (0, 1, ... in first-met order), and how many.

    Looked up fqn first, then offsets: a (fqn, offsets) tuple per item would be ~100k new objects
    for the garbage collector to scan, which made this step several times slower."""
    by_fqn: dict[str, dict[Any, int]] = {}
    codes: list[int] = []
    n = 0
    for it in items:
        per = by_fqn.get(it.fqn)
        if per is None:
            per = by_fqn[it.fqn] = {}
        offsets = it.offsets if it.index_offsets is None else it.index_offsets
        code = per.get(offsets)
        if code is None:
            code = per[offsets] = n
            n += 1
        codes.append(code)
    return np.array(codes, dtype=np.int64), n


_COLUMN_CACHE: dict[int, tuple[Any, _ItemColumns]] = {}


def item_columns(trace: SaveTrace) -> _ItemColumns:
    """The trace's planned items as numpy columns (cached per trace): the base of every save table."""
    hit = _COLUMN_CACHE.get(id(trace))
    if hit is None or hit[0] is not trace:
        if len(_COLUMN_CACHE) > 8:
            _COLUMN_CACHE.clear()
        hit = (trace, _ItemColumns(trace.items))
        _COLUMN_CACHE[id(trace)] = hit
    return hit[1]


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by sorting (numpy 2.4's hashing unique is ~50x slower on plan codes)."""
    s = np.sort(values)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def _memo_frame(trace: SaveTrace, name: str, build: Any) -> pd.DataFrame:
    """``build(trace)`` computed once per trace; each call gets its own copy."""
    memo = item_columns(trace).memo
    if name not in memo:
        memo[name] = build(trace)
    return memo[name].copy()


def _flatten(plans: tuple[PlanRecord | None, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """(rank, item id) arrays over all ranks' plans, in rank then plan order."""
    if not plans:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lens = [len(p.items) if p is not None else 0 for p in plans]
    ranks = np.repeat(np.arange(len(plans), dtype=np.int64), lens)
    ids = np.fromiter(
        (i for p in plans if p is not None for i in p.items), dtype=np.int64, count=sum(lens)
    )
    return ranks, ids


def _kept_mask(trace: SaveTrace, ranks: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """For each (rank, item) of the local plans: is that item still in the rank's global plan?"""
    if trace.global_plans is None:
        return None
    cols = item_columns(trace)
    if "global_codes" not in cols.memo:
        g_ranks, g_ids = _flatten(trace.global_plans)
        cols.memo["global_codes"] = _sorted_unique(g_ranks * cols.n_keys + cols.key[g_ids])
    codes = ranks * cols.n_keys + cols.key[ids]
    return np.isin(codes, cols.memo["global_codes"], assume_unique=False)


def write_items(trace: SaveTrace, fqn: str | None = None) -> pd.DataFrame:
    """Every item of every rank's local plan, with ``kept`` = survived the coordinator's dedup.

    ``fqn``: only that key's rows (the same rows, in the same order; an explorer drawing one
    tensor need not build the table of every item)."""
    cols = item_columns(trace)
    ranks, ids = _local_flat(trace)
    if fqn is not None:
        where = _local_positions_of(trace, cols).get(fqn, np.zeros(0, np.int64))
        ranks, ids = ranks[where], ids[where]
    kept = _kept_mask(trace, ranks, ids)
    df = pd.DataFrame(
        {
            "rank": ranks,
            "fqn": cols.fqn[ids],
            "offsets": cols.offsets[ids],
            "sizes": cols.sizes[ids],
            "item_type": cols.item_type[ids],
            "dtype": cols.dtype[ids],
            "nbytes": cols.nbytes[ids],
            "kept": pd.array(kept, dtype="boolean")
            if kept is not None
            else pd.array([pd.NA] * len(ids), dtype="boolean"),
            "global_size": cols.global_size[ids],
            "dcp_size": cols.dcp_size[ids],
        }
    )
    df["component"] = components_of(trace, df["fqn"])
    return df


def _local_flat(trace: SaveTrace) -> tuple[np.ndarray, np.ndarray]:
    """``_flatten`` of the local plans, computed once per trace."""
    memo = item_columns(trace).memo
    if "local_flat" not in memo:
        memo["local_flat"] = _flatten(trace.local_plans)
    return memo["local_flat"]


def _fqn_codes(cols: _ItemColumns) -> tuple[list[str], np.ndarray]:
    """(distinct fqns, in item order; each item's position among them), computed once per trace."""
    if "fqn_codes" not in cols.memo:
        index: dict[str, int] = {}
        codes = np.array(
            [index.setdefault(f, len(index)) for f in cols.fqn.tolist()], dtype=np.int64
        )
        cols.memo["fqn_codes"] = (list(index), codes)
    return cols.memo["fqn_codes"]


def key_holders(trace: SaveTrace) -> dict[str, set[int]]:
    """fqn -> the ranks whose local plans hold any item of it, in the order the keys are first
    met (rank, then plan order)."""
    cols = item_columns(trace)
    ranks, ids = _local_flat(trace)
    if not len(ids):
        return {}
    names, codes = _fqn_codes(cols)
    item_codes = codes[ids]
    pairs = _sorted_unique(
        item_codes * (int(ranks.max()) + 1) + ranks
    )  # one per (fqn, rank), by fqn
    pair_codes = pairs // (int(ranks.max()) + 1)
    pair_ranks = (pairs % (int(ranks.max()) + 1)).tolist()
    starts = np.flatnonzero(np.r_[True, pair_codes[1:] != pair_codes[:-1]]).tolist()
    ends = starts[1:] + [len(pair_ranks)]
    by_code = {int(pair_codes[a]): set(pair_ranks[a:b]) for a, b in zip(starts, ends)}
    _, first = np.unique(item_codes, return_index=True)  # where each fqn is first met
    met = _sorted_unique(item_codes)[np.argsort(first, kind="stable")].tolist()
    return {names[c]: by_code[c] for c in met}


def _local_positions_of(trace: SaveTrace, cols: _ItemColumns) -> dict[str, np.ndarray]:
    """fqn -> its positions in the flattened local plans, in order (computed once per trace)."""
    if "local_positions" not in cols.memo:
        _, ids = _local_flat(trace)
        names, codes = _fqn_codes(cols)
        item_codes = codes[ids]
        order = np.argsort(item_codes, kind="stable")
        cuts = np.flatnonzero(np.diff(item_codes[order])) + 1
        groups = np.split(order, cuts) if len(order) else []
        cols.memo["local_positions"] = {names[item_codes[g[0]]]: g for g in groups}
    return cols.memo["local_positions"]


class _WriterIndex:
    """``core.plans.writer_ranks`` as fqn -> offsets -> rank: the same answers to
    ``get((fqn, offsets), default)``, without a (fqn, offsets) tuple kept per item (~100k
    objects more for the garbage collector to scan on a 1024-rank trace)."""

    def __init__(self, trace: SaveTrace) -> None:
        self.by_fqn: dict[str, dict[tuple[int, ...] | None, int]] = {}
        plans = final_or_global(trace)
        for r, plan in enumerate(plans or ()):
            for i in plan.items:
                it = trace.items[i]
                per = self.by_fqn.get(it.fqn)
                if per is None:
                    per = self.by_fqn[it.fqn] = {}
                if it.offsets not in per:  # the first rank writing it, as writer_ranks' setdefault
                    per[it.offsets] = r

    def get(self, key: tuple[str, tuple[int, ...] | None], default: int = -1) -> int:
        per = self.by_fqn.get(key[0])
        return default if per is None else per.get(key[1], default)


def _writers(trace: SaveTrace) -> _WriterIndex:
    """Who writes each (fqn, offsets), computed once per trace."""
    memo = item_columns(trace).memo
    if "writers" not in memo:
        memo["writers"] = _WriterIndex(trace)
    return memo["writers"]


def dedup(trace: SaveTrace, fqns: Collection[str] | None = None) -> pd.DataFrame:
    """One row per item index planned by more than one rank: who planned it, who writes it, why.

    ``chosen_rank`` comes from DCP's real global plan. ``replay_rank`` and
    ``candidate_planned_bytes`` replay DCP's rule (``dedup_save_plans``) as an explanation: each
    rank's running tally of planned bytes (DCP counts ``tensor_storage_size()`` — the global
    tensor's size, even for a shard — or 1 for bytes) when the item was decided; the smallest
    tally wins, ties to the first candidate; or the lowest rank with
    ``dedup_save_to_lowest_rank``. ``replay_agrees`` checks the replay against DCP's choice.

    ``fqns``: only these keys' rows (the same rows, in the same order; the replay still runs
    over every key, as each decision depends on all earlier ones). Computed once per trace
    (``explore`` and the checks both need it); each call gets a copy.
    """
    cols = item_columns(trace)
    frame = cols.memo.get("dedup")
    if fqns is not None and frame is None:
        wanted = set(fqns)
        if not wanted:
            return _dedup_frame(trace, cols, wanted)
        frame = _dedup_frame(trace, cols, wanted) if len(wanted) < cols.n_fqns / 2 else dedup(trace)
        return frame[frame["fqn"].isin(wanted)].reset_index(drop=True)
    if frame is None:
        frame = cols.memo["dedup"] = _dedup_frame(trace, cols)
    if fqns is not None:
        return frame[frame["fqn"].isin(set(fqns))].reset_index(drop=True)
    return frame.copy()


def _key_groups(
    trace: SaveTrace, cols: _ItemColumns
) -> tuple[list[int], list[int], list[list[int]]]:
    """For each key planned by any rank, in the order DCP's ``dedup_save_plans`` first meets it
    (rank, then plan order): the key, the item it keeps (the last rank's), and the planning ranks
    in rank order (repeats kept, as a set built from them drops them)."""
    ranks, ids = _local_flat(trace)
    if not len(ids):
        return [], [], []
    keys = cols.key[ids]
    order = np.argsort(keys, kind="stable")  # positions grouped by key, rank order kept within
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(order)]
    by_first_seen = np.argsort(order[starts], kind="stable")
    ranks_grouped = ranks[order].tolist()
    starts_l, ends_l = starts[by_first_seen].tolist(), ends[by_first_seen].tolist()
    return (
        sorted_keys[starts][by_first_seen].tolist(),
        ids[order[ends - 1]][by_first_seen].tolist(),
        [ranks_grouped[a:b] for a, b in zip(starts_l, ends_l)],
    )


def _chosen_ranks(trace: SaveTrace, cols: _ItemColumns) -> np.ndarray:
    """key -> the one rank whose global plan holds it, or -1 (none, or several)."""
    chosen = np.full(cols.n_keys, -1, dtype=np.int64)
    if trace.global_plans is None:
        return chosen
    g_ranks, g_ids = _flatten(trace.global_plans)
    g_keys = cols.key[g_ids]
    chosen[g_keys[::-1]] = g_ranks[::-1]  # reversed: the first rank holding a key is the one left
    chosen[np.bincount(g_keys, minlength=cols.n_keys) != 1] = -1
    return chosen


def _dedup_frame(
    trace: SaveTrace, cols: _ItemColumns, fqns: set[str] | None = None
) -> pd.DataFrame:
    """The dedup table; with ``fqns``, only their rows (the replay still sees every key)."""
    if fqns is not None and not fqns:
        return _empty_dedup()
    W = trace.scenario.world_size
    lowest = bool(trace.planner.option("dedup_save_to_lowest_rank", False))
    keys, last_items, planners = _key_groups(trace, cols)
    chosen_of = _chosen_ranks(trace, cols).tolist()
    charge = np.where(cols.dcp_size > 0, cols.dcp_size, 1).tolist()  # what DCP adds to a tally
    over_of = (cols.dcp_size - cols.nbytes).tolist()
    nbytes_of = cols.nbytes.tolist()
    why_of = _FewestWhy(cols)
    tally = [0] * W
    worst: dict[int, tuple[int, int]] = {}  # rank -> (bytes charged beyond what it stores, item)
    rows: list[tuple] = []
    for k, i, planned in zip(keys, last_items, planners):
        if len(planned) == 1:
            pick = planned[0]
        else:
            # Mirror dedup_save_plans' set, so its iteration order (tie-breaks) matches.
            cands = set(planned)
            pick = min(cands) if lowest else min(cands, key=tally.__getitem__)
            if len(cands) > 1 and (fqns is None or cols.fqn[i] in fqns):
                cand = tuple(sorted(cands))
                before = tuple([tally[c] for c in cand])
                chosen_rank = chosen_of[k]
                if lowest:
                    rule, why = (
                        "lowest rank",
                        f"dedup_save_to_lowest_rank: rank {pick} is the lowest candidate",
                    )
                else:
                    rule, why = "fewest planned bytes", why_of(pick, cand, before, worst)
                rows.append(
                    (
                        cols.fqn[i],
                        cols.offsets[i],
                        cand,
                        chosen_rank,
                        nbytes_of[i],
                        before,
                        pick,
                        pick == chosen_rank,
                        rule,
                        why,
                    )
                )
        tally[pick] += charge[i]
        over = over_of[i]
        if over > worst.get(pick, (0, -1))[0]:
            worst[pick] = (over, i)
    return _dedup_types(pd.DataFrame(rows, columns=DEDUP_COLUMNS))


def _empty_dedup() -> pd.DataFrame:
    return _dedup_types(pd.DataFrame([], columns=DEDUP_COLUMNS))


def _dedup_types(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype(
        {"chosen_rank": "int64", "nbytes": "int64", "replay_rank": "int64", "replay_agrees": "bool"}
    )


CHOICE_COLUMNS = ["fqn", "offsets", "candidates", "chosen_rank", "nbytes"]


def dedup_choices(trace: SaveTrace) -> pd.DataFrame:
    """``dedup``'s rows without the replay: which ranks planned each replicated item and which
    one DCP's global plan kept (``dedup(trace)[CHOICE_COLUMNS]``, for a fraction of its time)."""
    return _memo_frame(trace, "dedup_choices", _dedup_choices)


def _dedup_choices(trace: SaveTrace) -> pd.DataFrame:
    cols = item_columns(trace)
    keys, last_items, planners = _key_groups(trace, cols)
    chosen_of = _chosen_ranks(trace, cols).tolist()
    nbytes_of = cols.nbytes.tolist()
    rows = []
    for k, i, planned in zip(keys, last_items, planners):
        if len(planned) > 1:
            cand = tuple(sorted(set(planned)))
            if len(cand) > 1:
                rows.append((cols.fqn[i], cols.offsets[i], cand, chosen_of[k], nbytes_of[i]))
    return pd.DataFrame(rows, columns=CHOICE_COLUMNS).astype(
        {"chosen_rank": "int64", "nbytes": "int64"}
    )


def _shape(size: tuple[int, ...]) -> str:
    return "×".join(map(str, size)) or "scalar"


def _rank_group(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranges(ranks)}"


MAX_WHY_GROUPS = 3  # loser tallies named in a why; the rest are summarised


class _FewestWhy:
    """Why a rank won under DCP's fewest-planned-bytes rule, with the losers' tallies, and the
    whole-tensor charge that inflated a loser's tally (DCP counts ``tensor_storage_size()``).
    Byte counts and charge notes are formatted once each (a replay repeats them ~W times)."""

    def __init__(self, cols: _ItemColumns) -> None:
        self.cols = cols
        self.sizes: dict[int, str] = {}
        self.charges: dict[tuple[int, int], str] = {}

    def fmt(self, n: int) -> str:
        text = self.sizes.get(n)
        if text is None:
            text = self.sizes[n] = fmt_bytes(n)
        return text

    def charge(self, rank: int, item: int) -> str:
        text = self.charges.get((rank, item))
        if text is None:
            cols = self.cols
            text = self.charges[(rank, item)] = (
                f" — rank {rank} was charged the whole {_shape(cols.global_size[item])} tensor for a "
                f"{_shape(cols.sizes[item])} shard of {cols.fqn[item]} ({fmt_bytes(int(cols.dcp_size[item]))} "
                f"counted, {fmt_bytes(int(cols.nbytes[item]))} stored)"
            )
        return text

    def __call__(
        self,
        pick: int,
        cand: tuple[int, ...],
        before: tuple[int, ...],
        worst: dict[int, tuple[int, int]],
    ) -> str:
        low = before[cand.index(pick)]
        tied = [c for c, b in zip(cand, before) if b == low and c != pick]
        higher: dict[int, list[int]] = {}
        for c, b in zip(cand, before):
            if b > low:
                higher.setdefault(b, []).append(c)
        why = f"rank {pick}: {self.fmt(low)}"
        if tied:
            why += f" = {_rank_group(tied)}: {self.fmt(low)} (a tie: the first candidate wins)"
        groups = sorted(higher.items())
        why += "".join(
            [f" < {_rank_group(rs)}: {self.fmt(b)}" for b, rs in groups[:MAX_WHY_GROUPS]]
        )
        if len(groups) > MAX_WHY_GROUPS:
            why += f" < {len(groups) - MAX_WHY_GROUPS} more"
        losers = [c for rs in higher.values() for c in rs if c in worst]
        if losers:
            r = max(losers, key=lambda c: worst[c][0])
            why += self.charge(r, worst[r][1])
        return why


def _plan_totals(
    trace: SaveTrace, plans: tuple[PlanRecord | None, ...] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    if plans is None:
        return None
    cols = item_columns(trace)
    W = trace.scenario.world_size
    ranks, ids = _flatten(plans)
    counts = np.bincount(ranks, minlength=W)[:W]
    nbytes = np.bincount(ranks, weights=cols.nbytes[ids], minlength=W)[:W].astype(np.int64)
    return counts, nbytes


def rank_volume(trace: SaveTrace) -> pd.DataFrame:
    """Items and bytes each rank writes (final plans, after dedup), next to what it planned."""
    return _memo_frame(trace, "rank_volume", _rank_volume)


def _rank_volume(trace: SaveTrace) -> pd.DataFrame:
    W = trace.scenario.world_size
    planned = _plan_totals(trace, trace.local_plans)
    final = _plan_totals(trace, final_or_global(trace))
    na = pd.array([pd.NA] * W, dtype="Int64")
    return pd.DataFrame(
        {
            "rank": np.arange(W, dtype=np.int64),
            "items": pd.array(final[0], dtype="Int64") if final else na,
            "nbytes": pd.array(final[1], dtype="Int64") if final else na,
            "planned_items": pd.array(planned[0], dtype="Int64"),
            "planned_nbytes": pd.array(planned[1], dtype="Int64"),
            "coordinate": [trace.scenario.coordinate(r) for r in range(W)],
        }
    )


def chunks(trace: SaveTrace, fqn: str | None = None) -> pd.DataFrame:
    """The checkpoint metadata's chunks (one row per chunk; one row per bytes entry), with the
    rank that writes each. ``fqn``: only that key's rows (the same rows, in the same order)."""
    if trace.metadata is None:
        return pd.DataFrame(columns=CHUNK_COLUMNS)
    writers = _writers(trace)
    rows = []
    for t in trace.metadata.tensors:
        if fqn is not None and t.fqn != fqn:
            continue
        itemsize = dtype_itemsize(t.dtype)
        for ci, c in enumerate(t.chunks):
            rows.append(
                (
                    t.fqn,
                    ci,
                    c.offsets,
                    c.sizes,
                    writers.get((t.fqn, c.offsets), -1),
                    math.prod(c.sizes) * itemsize,
                    t.dtype,
                    "tensor",
                    t.size,
                )
            )
    keys = [k for k in trace.metadata.bytes_keys if fqn is None or k == fqn]
    if keys:
        byte_sizes = {it.fqn: it.nbytes for it in trace.items if it.item_type == "BYTE_IO"}
        for key in keys:
            rows.append(
                (
                    key,
                    0,
                    (),
                    (),
                    writers.get((key, None), -1),
                    byte_sizes.get(key, 0),
                    "",
                    "bytes",
                    (),
                )
            )
    df = pd.DataFrame(rows, columns=CHUNK_COLUMNS[:-1])
    df["component"] = components_of(trace, df["fqn"])
    return df.astype({"chunk_index": "int64", "rank": "int64", "nbytes": "int64"})


def job_facts(trace: Any) -> dict[str, Any]:
    """The job and planner a trace (save or load) describes, for headers."""
    sc = trace.scenario
    return {
        "model": sc.model,
        "world_size": sc.world_size,
        "mesh": sc.mesh,
        "mesh_dim_names": sc.mesh_dim_names,
        "recipe": sc.recipe,
        "dtype": sc.dtype,
        "optimizer": sc.optimizer,
        "state": sc.state,
        "planner": trace.planner.cls,
        "planner_options": {k: _shown_option(k, v) for k, v in trace.planner.options},
    }


def _shown_option(name: str, value: Any) -> Any:
    """An option as the summary shows it: a fix planner's record of its fix (``fix_spec``, JSON
    that ``analysis.load.fix.previous_fix`` reads from the trace) as counts, not pages of keys."""
    if name == "fix_spec" and isinstance(value, str):
        try:
            spec = json.loads(value)
            return f"{len(spec.get('rename', []))} renamed, {len(spec.get('resized', []))} resized"
        except (ValueError, AttributeError, TypeError):
            return value[:40] + "…" if len(value) > 40 else value
    return value


def summary(trace: SaveTrace) -> dict[str, Any]:
    """The numbers a header shows: world, mesh, planner, sizes, balance, validation."""
    vol = rank_volume(trace)
    written = vol["nbytes"].astype("float64")
    mean = float(written.mean()) if len(written) and written.notna().all() else float("nan")
    mx = float(written.max()) if len(written) and written.notna().all() else float("nan")
    n_local = sum(len(p.items) for p in trace.local_plans if p is not None)
    finals = final_or_global(trace)
    n_final = sum(len(p.items) for p in finals) if finals is not None else None
    return {
        **job_facts(trace),
        "tensors": len(trace.metadata.tensors) if trace.metadata else None,
        "bytes_entries": len(trace.metadata.bytes_keys) if trace.metadata else None,
        "items_planned": n_local,
        "items_written": n_final,
        "total_bytes": int(written.sum()) if written.notna().all() else None,
        "mean_rank_bytes": mean,
        "max_rank_bytes": mx,
        "imbalance": (mx / mean) if mean and mean == mean and mean > 0 else float("nan"),
        "validated": trace.global_plan_validated and not trace.errors,
        "errors": len(trace.errors),
    }


# -- tables behind the views ----------------------------------------------------------------
TENSOR_COLUMNS = [
    "fqn",
    "kind",
    "size",
    "dtype",
    "chunks",
    "nbytes",
    "writers",
    "placements",
    "mesh",
    "empty_chunks",
    "component",
]


def tensors(trace: SaveTrace) -> pd.DataFrame:
    """One row per checkpoint entry (tensor or bytes): shape, dtype, chunks, bytes, placements."""
    return _memo_frame(trace, "tensors", _tensors)


def _tensors(trace: SaveTrace) -> pd.DataFrame:
    layouts = {lay.fqn: lay for lay in trace.layouts}
    writers = _writers(trace)
    rows = []
    if trace.metadata is not None:
        for t in trace.metadata.tensors:
            itemsize = dtype_itemsize(t.dtype)
            lay = layouts.get(t.fqn)
            rows.append(
                (
                    t.fqn,
                    "tensor",
                    t.size,
                    t.dtype,
                    len(t.chunks),
                    sum(math.prod(c.sizes) for c in t.chunks) * itemsize,
                    len({writers.get((t.fqn, c.offsets), -1) for c in t.chunks}),
                    lay.placements if lay else "(plain tensor)",
                    " x ".join(f"{n}={d}" for n, d in zip(lay.mesh_dim_names, lay.mesh_shape))
                    if lay
                    else "",
                    sum(1 for c in t.chunks if 0 in c.sizes),
                )
            )
        byte_sizes = {it.fqn: it.nbytes for it in trace.items if it.item_type == "BYTE_IO"}
        for key in trace.metadata.bytes_keys:
            rows.append((key, "bytes", (), "", 1, byte_sizes.get(key, 0), 1, "(bytes)", "", 0))
    df = pd.DataFrame(rows, columns=TENSOR_COLUMNS[:-1])
    df["component"] = components_of(trace, df["fqn"])
    # State-dict order (the order rank 0 planned them), not the metadata's insertion order.
    first_seen = {f: i for i, f in enumerate(dict.fromkeys(item_columns(trace).fqn.tolist()))}
    order = df["fqn"].map(lambda f: first_seen.get(f, len(first_seen)))
    return df.iloc[order.argsort(kind="stable")].reset_index(drop=True)


BOX_COLUMNS = ["offsets", "sizes", "writer", "planned_by", "dropped_by", "nbytes", "is_empty"]


def tensor_boxes(write_items_df: pd.DataFrame, chunks_df: pd.DataFrame, fqn: str) -> pd.DataFrame:
    """One row per distinct chunk of ``fqn``: who planned it, who writes it, who dropped it."""
    wi = write_items_df[write_items_df["fqn"] == fqn]
    ch = chunks_df[chunks_df["fqn"] == fqn]
    writer = {off: int(r) for off, r in zip(ch["offsets"], ch["rank"])}
    rows = []
    for (off, size), grp in wi.groupby(["offsets", "sizes"], sort=False):
        planned = tuple(sorted(int(r) for r in grp["rank"]))
        w = writer.get(off, -1)
        if w < 0 and grp["kept"].notna().all() and grp["kept"].any():
            w = int(grp.loc[grp["kept"].astype(bool), "rank"].iloc[0])
        dropped = tuple(r for r in planned if r != w)
        rows.append((off, size, w, planned, dropped, int(grp["nbytes"].iloc[0]), 0 in size))
    df = pd.DataFrame(rows, columns=BOX_COLUMNS)
    if len(df):
        df = df.sort_values("offsets", key=lambda s: s.map(lambda t: t or (0,))).reset_index(
            drop=True
        )
    return df


GROUP_COLUMNS = [
    "group",
    "pattern",
    "members",
    "n",
    "size",
    "dtype",
    "chunks",
    "nbytes",
    "placements",
    "component",
]


def planned_by(trace: SaveTrace) -> dict[int, tuple[int, ...]]:
    """item id -> the ranks whose local plans hold it (sorted)."""
    ranks, ids = _local_flat(trace)
    if not len(ids):
        return {}
    order = np.argsort(ids, kind="stable")  # the plans are in rank order: ranks stay sorted
    ids_s, ranks_s = ids[order], ranks[order].tolist()
    starts = np.flatnonzero(np.r_[True, ids_s[1:] != ids_s[:-1]]).tolist()
    ends = starts[1:] + [len(ranks_s)]
    return {i: tuple(ranks_s[a:b]) for i, a, b in zip(ids_s[starts].tolist(), starts, ends)}


def plan_signatures(trace: SaveTrace) -> dict[str, tuple[int, ...]]:
    """fqn -> a code of its planned items: two fqns get equal codes exactly when they have the
    same (offsets, sizes, ranks that plan it) items, as multisets (``planned_by``'s ranks).

    Each distinct (offsets, sizes) and each distinct rank set is numbered (rank sets as rows of
    equal length, numbered by ``np.unique``), an item is the pair of numbers, an fqn the sorted
    tuple of its items' numbers. (Built as Python tuples of boxes and rank tuples per item, then
    sorted and hashed, this was ~0.6 s of the explorer's first view at 740k planned items.)"""
    ranks, ids = _local_flat(trace)
    if not len(ids):
        return {}
    cols = item_columns(trace)
    span = int(ranks.max()) + 1
    pairs = np.sort(ids * span + ranks)  # by item, then rank (as planned_by's sorted ranks)
    ids_s, ranks_s = pairs // span, pairs % span
    starts = np.flatnonzero(np.r_[True, ids_s[1:] != ids_s[:-1]])
    item = ids_s[starts]  # each planned item once, by id
    length = np.diff(np.r_[starts, len(ids_s)])
    rank_set = np.empty(len(item), dtype=np.int64)  # numbered within each length
    for n in _sorted_unique(length).tolist():
        which = np.flatnonzero(length == n)
        raw = ranks_s[starts[which][:, None] + np.arange(n)].tobytes()
        step = 8 * n
        rows = [raw[k : k + step] for k in range(0, len(raw), step)]
        rank_set[which] = list(map(_first_met(rows).__getitem__, rows))
    boxes = list(zip(cols.offsets[item].tolist(), cols.sizes[item].tolist()))
    box_code = np.array(list(map(_first_met(boxes).__getitem__, boxes)), dtype=np.int64)
    # One integer per item: (box, length, rank set) packed without overlap.
    n_len, n_set = int(length.max()) + 1, int(rank_set.max()) + 1
    code = (box_code * n_len + length) * n_set + rank_set
    names, fqn_code = _fqn_codes(cols)
    by = np.lexsort((code, fqn_code[item]))
    f_sorted, c_sorted = fqn_code[item][by], code[by].tolist()
    cuts = np.flatnonzero(np.r_[True, f_sorted[1:] != f_sorted[:-1]]).tolist()
    ends = cuts[1:] + [len(c_sorted)]
    return {names[f]: tuple(c_sorted[a:b]) for f, a, b in zip(f_sorted[cuts].tolist(), cuts, ends)}


def _first_met(values: list) -> dict:
    """value -> 0, 1, ... in the order first met."""
    return {v: k for k, v in enumerate(dict.fromkeys(values))}


def tensor_groups(trace: SaveTrace, write_items_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tensors that differ only in layer number and are sharded alike, as one row
    (``layers.[0-79].attention.wq.weight``). "Alike" = same shape, dtype, placements and the
    same chunks planned by the same ranks; which replica dedup picked may differ.
    (``write_items_df`` is accepted for compatibility and not needed.)"""
    tens = tensors(trace)
    sig = plan_signatures(trace)
    buckets: dict[tuple, list[int]] = {}
    for i, row in enumerate(tens.itertuples(index=False)):
        key = (pattern_of(row.fqn), row.size, row.dtype, row.placements, sig.get(row.fqn, ()))
        buckets.setdefault(key, []).append(i)
    names = tens.fqn.tolist()
    rows = []
    for (pattern, size, dtype, placements, _), idx in buckets.items():
        members = tuple(names[i] for i in sorted(idx, key=lambda i: numbers_of(names[i])))
        rows.append(
            (
                collapsed_label(list(members)),
                pattern,
                members,
                len(members),
                size,
                dtype,
                int(tens.chunks.iloc[idx[0]]),
                int(tens.nbytes.iloc[idx].sum()),
                placements,
                tens.component.iloc[idx[0]],
            )
        )
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def volume_by_component(trace: SaveTrace) -> pd.DataFrame:
    """Bytes each rank writes (final plans), split by training-state component: rank,
    component, items, nbytes (how much of each rank's bytes are optimizer moments)."""
    cols = item_columns(trace)
    plans = final_or_global(trace)
    if plans is None:
        return pd.DataFrame(columns=["rank", "component", "items", "nbytes"])
    ranks, ids = _flatten(plans)
    df = pd.DataFrame(
        {
            "rank": ranks,
            "component": components_of(trace, cols.fqn[ids]),
            "nbytes": cols.nbytes[ids],
        }
    )
    out = (
        df.groupby(["rank", "component"], sort=True)
        .agg(items=("nbytes", "size"), nbytes=("nbytes", "sum"))
        .reset_index()
    )
    return out.astype({"rank": "int64", "items": "int64", "nbytes": "int64"})


def volume_by_module(trace: SaveTrace, depth: int = 1) -> pd.DataFrame:
    """Bytes each rank writes (final plans), split by module prefix: rank, module, items, nbytes."""
    cols = item_columns(trace)
    plans = final_or_global(trace)
    if plans is None:
        return pd.DataFrame(columns=["rank", "module", "items", "nbytes"])
    ranks, ids = _flatten(plans)
    module_names = {f: module_of(f, depth) for f in set(cols.fqn.tolist())}
    df = pd.DataFrame(
        {
            "rank": ranks,
            "module": [module_names[f] for f in cols.fqn[ids]],
            "nbytes": cols.nbytes[ids],
        }
    )
    out = (
        df.groupby(["rank", "module"], sort=True)
        .agg(items=("nbytes", "size"), nbytes=("nbytes", "sum"))
        .reset_index()
    )
    return out.astype({"rank": "int64", "items": "int64", "nbytes": "int64"})


PHASE_COLUMNS = ["phase", "rank", "fqn", "offsets", "sizes", "change", "nbytes"]


def phase_changes(trace: SaveTrace) -> pd.DataFrame:
    """What each planning phase changed, item by item.

    'global': items the coordinator removed from a rank's plan (dedup) or added to it;
    'final': items ``finish_plan`` removed, added or altered relative to the global plan.
    """
    cols = item_columns(trace)
    key, fqn, nbytes = cols.key.tolist(), cols.fqn.tolist(), cols.nbytes.tolist()
    rows: list[tuple] = []

    def row(phase: str, r: int, i: int, change: str) -> tuple:
        return (phase, r, fqn[i], cols.offsets[i], cols.sizes[i], change, nbytes[i])

    def diff(phase: str, before, after) -> None:
        if before is None or after is None:
            return
        for r, (a, b) in enumerate(zip(before, after)):
            if a is not None and b is not None and a.items == b.items:
                continue  # the same plan: nothing changed (finish_plan's default)
            rows.extend(row(phase, r, i, change) for i, change in _plan_changes(phase, a, b, key))

    diff("global", trace.local_plans, trace.global_plans)
    diff("final", trace.global_plans, trace.final_plans)
    return pd.DataFrame(rows, columns=PHASE_COLUMNS).astype({"rank": "int64", "nbytes": "int64"})


def _plan_changes(
    phase: str, a: PlanRecord | None, b: PlanRecord | None, key: list
) -> list[tuple[int, str]]:
    """(item, change) for each item of one rank's plan that ``phase`` dropped, added or altered
    (``a``: the plan before it, ``b``: after; ``key``: each item's identity)."""
    a_ids = set(a.items) if a is not None else set()
    b_ids = set(b.items) if b is not None else set()
    # Keyed in set order, as before: the rows' order follows it.
    a_keys = {key[i]: i for i in a_ids}
    b_keys = {key[i]: i for i in b_ids}
    out = []
    for k, i in a_keys.items():
        if k not in b_keys:
            out.append((i, "dropped by dedup" if phase == "global" else "removed"))
        elif b_keys[k] != i and phase == "final":
            out.append((i, "changed"))
    out += [(i, "added") for k, i in b_keys.items() if k not in a_keys]
    return out


def phase_volume(trace: SaveTrace) -> pd.DataFrame:
    """Items and bytes per rank at each phase: rank, phase, items, nbytes."""
    frames = []
    for phase, plans in (
        ("local", trace.local_plans),
        ("global", trace.global_plans),
        ("final", trace.final_plans),
    ):
        totals = _plan_totals(trace, plans)
        if totals is None:
            continue
        W = trace.scenario.world_size
        frames.append(
            pd.DataFrame(
                {"rank": np.arange(W), "phase": phase, "items": totals[0], "nbytes": totals[1]}
            )
        )
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["rank", "phase", "items", "nbytes"])
    )


# -- storage facts (real runs, captures after dcp.save, checkpoints) --------------------------
STORAGE_COLUMNS = ["fqn", "offsets", "file", "offset", "length", "rank"]
FILE_COLUMNS = ["file", "rank", "items", "nbytes"]
STORAGE_VOLUME_COLUMNS = ["rank", "files", "items", "nbytes"]


def storage(trace: SaveTrace) -> pd.DataFrame:
    """Where each checkpoint entry's bytes are: file, byte offset, length and the writer rank.

    Only traces whose bytes were really written (run_save, a completed capture) have any; a
    simulation's table is empty. ``rank`` is the rank in the file name DCP chose; when a custom
    writer uses other names, the rank whose final plan wrote the entry.
    """
    if trace.metadata is None or not trace.metadata.storage:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="int64" if c in ("offset", "length", "rank") else object)
                for c in STORAGE_COLUMNS
            }
        )
    writers = _writers(trace)
    rows = []
    for s in trace.metadata.storage:
        rank = file_rank(s.relative_path)
        if rank < 0:
            rank = writers.get((s.fqn, s.offsets), -1)
        rows.append((s.fqn, _box(s.offsets), s.relative_path, s.offset, s.length, rank))
    df = pd.DataFrame(rows, columns=STORAGE_COLUMNS)
    df = df.sort_values(["file", "offset"], kind="stable").reset_index(drop=True)
    return df.astype({"offset": "int64", "length": "int64", "rank": "int64"})


def files(trace: SaveTrace) -> pd.DataFrame:
    """One row per data file: its writer rank, entries and bytes (the sum of stored lengths,
    which equals the file's size on disk for DCP's FileSystemWriter)."""
    st = storage(trace)
    g = st.groupby("file", sort=True).agg(
        rank=("rank", "first"), items=("fqn", "size"), nbytes=("length", "sum")
    )
    return g.reset_index()[FILE_COLUMNS].astype(
        {"rank": "int64", "items": "int64", "nbytes": "int64"}
    )


def storage_volume(trace: SaveTrace) -> pd.DataFrame:
    """Bytes each rank really stored: files, entries, bytes (incl. DCP's per-entry framing)."""
    W = trace.scenario.world_size
    st = storage(trace)
    st = st[(st["rank"] >= 0) & (st["rank"] < W)]
    g = st.groupby("rank").agg(
        files=("file", "nunique"), items=("fqn", "size"), nbytes=("length", "sum")
    )
    out = g.reindex(range(W), fill_value=0).rename_axis("rank").reset_index()
    return out[STORAGE_VOLUME_COLUMNS].astype("int64")
