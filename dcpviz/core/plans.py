"""Facts read off a save trace's plans, shared by sources (the saved side of a load) and tables."""

from __future__ import annotations

from collections.abc import Sequence

from dcpviz.core.trace import PlannedItem, PlanRecord, SaveTrace

# max / mean bytes written per rank above which a save counts as imbalanced (analysis.checks
# flags it; sources record what the other dedup option would give only then, as it costs a
# second run of DCP's dedup on the coordinator).
IMBALANCE_THRESHOLD = 1.5


def final_or_global(trace: SaveTrace) -> tuple[PlanRecord, ...] | None:
    """The plans ranks finally wrote: finish_plan's when recorded, else the global plan's."""
    return trace.final_plans if trace.final_plans is not None else trace.global_plans


def writer_ranks(trace: SaveTrace) -> dict[tuple[str, tuple[int, ...] | None], int]:
    """(fqn, chunk offsets) -> the rank whose final plan writes it."""
    out: dict[tuple[str, tuple[int, ...] | None], int] = {}
    plans = final_or_global(trace)
    if plans is None:
        return out
    for r, plan in enumerate(plans):
        for i in plan.items:
            it = trace.items[i]
            out.setdefault((it.fqn, it.offsets), r)
    return out


def imbalance(plans: Sequence[PlanRecord | None], items: Sequence[PlannedItem]) -> float:
    """max / mean bytes per rank the plans write (0.0 when nothing is written)."""
    per_rank = [sum(items[i].nbytes for i in p.items) if p is not None else 0 for p in plans]
    mean = sum(per_rank) / len(per_rank) if per_rank else 0.0
    return max(per_rank) / mean if mean > 0 else 0.0
