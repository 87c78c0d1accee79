"""main's table code before the explorer's speed-ups (issue 13), kept as the plain reference the
fast tables are compared with: per-key Python loops, one row at a time, nothing cached."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from dcpviz.analysis.groups import ranges
from dcpviz.analysis.save.tables import DEDUP_COLUMNS, PHASE_COLUMNS, _flatten, item_columns
from dcpviz.core.trace import SaveTrace
from dcpviz.core.units import fmt_bytes


def dedup(trace: SaveTrace) -> pd.DataFrame:
    """One row per item index planned by more than one rank: who planned it, who writes it, why.

    ``chosen_rank`` comes from DCP's real global plan. ``replay_rank`` and
    ``candidate_planned_bytes`` replay DCP's rule (``dedup_save_plans``) as an explanation: each
    rank's running tally of planned bytes (DCP counts ``tensor_storage_size()`` — the global
    tensor's size, even for a shard — or 1 for bytes) when the item was decided; the smallest
    tally wins, ties to the first candidate; or the lowest rank with
    ``dedup_save_to_lowest_rank``. ``replay_agrees`` checks the replay against DCP's choice.
    """
    cols = item_columns(trace)
    W = trace.scenario.world_size
    lowest = bool(trace.planner.option("dedup_save_to_lowest_rank", False))
    plan_sets, last_item = _planned_by(trace, cols)
    kept_by = _kept_by(trace, cols)
    tally = [0] * W
    worst: dict[int, tuple[int, int]] = {}  # rank -> (bytes charged beyond what it stores, item)
    rows: list[tuple] = []
    for k, cands in plan_sets.items():
        if lowest:
            pick = min(cands)
        else:
            pick = min(cands, key=lambda r: tally[r])
        i = last_item[k]
        if len(cands) > 1:
            cand = tuple(sorted(cands))
            before = tuple(tally[c] for c in cand)
            chosen = kept_by.get(k, [])
            chosen_rank = chosen[0] if len(chosen) == 1 else -1
            if lowest:
                rule, why = (
                    "lowest rank",
                    f"dedup_save_to_lowest_rank: rank {pick} is the lowest candidate",
                )
            else:
                rule, why = "fewest planned bytes", _fewest_why(pick, cand, before, worst, cols)
            rows.append(
                (
                    cols.fqn[i],
                    cols.offsets[i],
                    cand,
                    chosen_rank,
                    int(cols.nbytes[i]),
                    before,
                    pick,
                    pick == chosen_rank,
                    rule,
                    why,
                )
            )
        dcp = int(cols.dcp_size[i])
        tally[pick] += dcp if dcp > 0 else 1
        over = dcp - int(cols.nbytes[i])
        if over > worst.get(pick, (0, -1))[0]:
            worst[pick] = (over, i)
    df = pd.DataFrame(rows, columns=DEDUP_COLUMNS)
    return df.astype(
        {"chosen_rank": "int64", "nbytes": "int64", "replay_rank": "int64", "replay_agrees": "bool"}
    )


def _planned_by(trace: SaveTrace, cols) -> tuple[dict[int, set[int]], dict[int, int]]:
    """item key -> the ranks whose local plans hold it; item key -> its last item index."""
    # Mirror dedup_save_plans' data structures exactly, so set iteration order (tie-breaks) match.
    plan_sets: dict[int, set[int]] = defaultdict(set)
    last_item: dict[int, int] = {}
    for r, plan in enumerate(trace.local_plans):
        if plan is None:
            continue
        for i in plan.items:
            k = int(cols.key[i])
            plan_sets[k].add(r)
            last_item[k] = i
    return plan_sets, last_item


def _kept_by(trace: SaveTrace, cols) -> dict[int, list[int]]:
    """item key -> the ranks whose global plans (DCP's real dedup) keep it."""
    kept_by: dict[int, list[int]] = defaultdict(list)
    if trace.global_plans is not None:
        for r, plan in enumerate(trace.global_plans):
            for i in plan.items:
                kept_by[int(cols.key[i])].append(r)
    return kept_by


def _shape(size: tuple[int, ...]) -> str:
    return "×".join(map(str, size)) or "scalar"


def _rank_group(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranges(ranks)}"


MAX_WHY_GROUPS = 3  # loser tallies named in a why; the rest are summarised


def _fewest_why(
    pick: int,
    cand: tuple[int, ...],
    before: tuple[int, ...],
    worst: dict[int, tuple[int, int]],
    cols: Any,
) -> str:
    """Why ``pick`` won under DCP's fewest-planned-bytes rule, with the losers' tallies, and the
    whole-tensor charge that inflated a loser's tally (DCP counts ``tensor_storage_size()``)."""
    low = before[cand.index(pick)]
    tied = [c for c, b in zip(cand, before) if b == low and c != pick]
    higher: dict[int, list[int]] = defaultdict(list)
    for c, b in zip(cand, before):
        if b > low:
            higher[b].append(c)
    why = f"rank {pick}: {fmt_bytes(low)}"
    if tied:
        why += f" = {_rank_group(tied)}: {fmt_bytes(low)} (a tie: the first candidate wins)"
    groups = sorted(higher.items())
    why += "".join(f" < {_rank_group(rs)}: {fmt_bytes(b)}" for b, rs in groups[:MAX_WHY_GROUPS])
    if len(groups) > MAX_WHY_GROUPS:
        why += f" < {len(groups) - MAX_WHY_GROUPS} more"
    losers = [c for rs in higher.values() for c in rs if c in worst]
    if losers:
        r = max(losers, key=lambda c: worst[c][0])
        j = worst[r][1]
        why += (
            f" — rank {r} was charged the whole {_shape(cols.global_size[j])} tensor for a "
            f"{_shape(cols.sizes[j])} shard of {cols.fqn[j]} ({fmt_bytes(int(cols.dcp_size[j]))} "
            f"counted, {fmt_bytes(int(cols.nbytes[j]))} stored)"
        )
    return why


def planned_by(trace: SaveTrace) -> dict[int, tuple[int, ...]]:
    """item id -> the ranks whose local plans hold it (sorted)."""
    ranks, ids = _flatten(trace.local_plans)
    if not len(ids):
        return {}
    order = np.lexsort((ranks, ids))
    ids_s, ranks_s = ids[order], ranks[order]
    cuts = np.flatnonzero(np.diff(ids_s)) + 1
    starts = np.concatenate([[0], cuts])
    return {int(ids_s[a]): tuple(g.tolist()) for a, g in zip(starts, np.split(ranks_s, cuts))}


def key_holders(trace: SaveTrace) -> dict[str, set[int]]:
    """fqn -> the ranks whose local plans hold it, in first-met order (main's key_sets loop)."""
    holders: dict[str, set[int]] = defaultdict(set)
    planned = [r for r, p in enumerate(trace.local_plans) if p is not None]
    for r in planned:
        for i in trace.local_plans[r].items:
            holders[trace.items[i].fqn].add(r)
    return dict(holders)


def phase_changes(trace: SaveTrace) -> pd.DataFrame:
    """What each planning phase changed, item by item.

    'global': items the coordinator removed from a rank's plan (dedup) or added to it;
    'final': items ``finish_plan`` removed, added or altered relative to the global plan.
    """
    cols = item_columns(trace)
    rows: list[tuple] = []

    def diff(phase: str, before, after) -> None:
        if before is None or after is None:
            return
        for r, (a, b) in enumerate(zip(before, after)):
            a_ids = set(a.items) if a is not None else set()
            b_ids = set(b.items) if b is not None else set()
            a_keys = {int(cols.key[i]): i for i in a_ids}
            b_keys = {int(cols.key[i]): i for i in b_ids}
            for k, i in a_keys.items():
                if k not in b_keys:
                    rows.append(
                        (
                            phase,
                            r,
                            cols.fqn[i],
                            cols.offsets[i],
                            cols.sizes[i],
                            "dropped by dedup" if phase == "global" else "removed",
                            int(cols.nbytes[i]),
                        )
                    )
                elif b_keys[k] != i and phase == "final":
                    rows.append(
                        (
                            phase,
                            r,
                            cols.fqn[i],
                            cols.offsets[i],
                            cols.sizes[i],
                            "changed",
                            int(cols.nbytes[i]),
                        )
                    )
            for k, i in b_keys.items():
                if k not in a_keys:
                    rows.append(
                        (
                            phase,
                            r,
                            cols.fqn[i],
                            cols.offsets[i],
                            cols.sizes[i],
                            "added",
                            int(cols.nbytes[i]),
                        )
                    )

    diff("global", trace.local_plans, trace.global_plans)
    diff("final", trace.global_plans, trace.final_plans)
    return pd.DataFrame(rows, columns=PHASE_COLUMNS).astype({"rank": "int64", "nbytes": "int64"})
