"""Facts read off a save trace's plans, shared by sources (the saved side of a load) and tables."""

from __future__ import annotations

from dcpviz.core.trace import PlanRecord, SaveTrace


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
