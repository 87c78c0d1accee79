"""A periodic series of save traces (``RecordingSavePlanner("plan_{n}.json", ...)``): per save
and rank, whether DCP's plan cache was hit, and how the rank's plan differs from the last save's.

With ``enable_plan_caching=True`` a rank whose local plan is unchanged sends an "unchanged"
marker (a local hit) and the coordinator answers with one where the rank's global plan is
unchanged (a global hit); the recorder records the cached plans DCP really used and marks them
(``PlanRecord.cached``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from dcpviz.core.errors import DcpvizError
from dcpviz.core.trace import PlanRecord, SaveTrace

SERIES_COLUMNS = [
    "save",
    "rank",
    "local_cached",
    "global_cached",
    "known",
    "items",
    "added",
    "removed",
    "global_changed",
]


def _trace(x: Any, i: int) -> SaveTrace:
    trace = getattr(x, "trace", x)
    if not isinstance(trace, SaveTrace):
        raise DcpvizError(
            f"plan_series: item {i} is a {type(x).__name__}, not a save result or save trace; pass "
            "the saves in order, e.g. [dcpviz.load_trace(f'plan_{n}.json') for n in range(N)]."
        )
    return trace


def _keys(trace: SaveTrace, plan: PlanRecord | None) -> frozenset | None:
    """The plan's item keys (fqn, offsets); None where the trace does not hold the plan."""
    if plan is None or not plan.usable:
        return None
    return frozenset(trace.items[i].key for i in plan.items)


def plan_series(saves: Sequence[Any]) -> pd.DataFrame:
    """One row per save and rank: ``local_cached`` / ``global_cached`` (plan-cache hits),
    ``known`` (the trace holds the rank's plan: False for an older capture's empty marker),
    ``items`` (local plan items), ``added`` / ``removed`` (local items not in / gone from the
    previous save's plan; 0 for the first save) and ``global_changed`` (what the rank writes
    changed since the previous save)."""
    traces = [_trace(x, i) for i, x in enumerate(saves)]
    rows = []
    prev_local: dict[int, frozenset | None] = {}
    prev_global: dict[int, frozenset | None] = {}
    for n, t in enumerate(traces):
        globals_ = t.global_plans or ()
        for rank in range(t.scenario.world_size):
            lp = t.local_plans[rank] if rank < len(t.local_plans) else None
            gp = globals_[rank] if rank < len(globals_) else None
            local, glob = _keys(t, lp), _keys(t, gp)
            before, gbefore = prev_local.get(rank), prev_global.get(rank)
            added = len(local - before) if local is not None and before is not None else 0
            removed = len(before - local) if local is not None and before is not None else 0
            rows.append(
                (
                    n,
                    rank,
                    bool(lp is not None and lp.cached),
                    bool(gp is not None and gp.cached),
                    local is not None,
                    len(local) if local is not None else 0,
                    added,
                    removed,
                    bool(n and glob is not None and gbefore is not None and glob != gbefore),
                )
            )
            prev_local[rank], prev_global[rank] = local, glob
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)
