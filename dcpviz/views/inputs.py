"""What a view checks of its arguments, so a wrong one is a DcpvizError saying what the view
needs instead of a KeyError or TypeError from inside a table."""

from __future__ import annotations

from typing import Any

from dcpviz.core.errors import DcpvizError, did_you_mean

_MADE_BY = {
    "save": "simulate_save, run_save or load_trace of a save trace",
    "load": "simulate_load, run_load or load_trace of a load trace",
}


def need_result(result: Any, kind: str, view: str, arg: str = "result") -> None:
    """``result`` must be a SaveResult (``kind='save'``) or a LoadResult (``'load'``)."""
    if getattr(result, "kind", None) != kind or not hasattr(result, "trace"):
        got = (
            f"a {type(result).__name__}"
            if getattr(result, "kind", None) is None
            else f"a {result.kind} result"
        )
        raise DcpvizError(
            f"views.{view}: {arg}= needs a {kind} result (from {_MADE_BY[kind]}), got {got}."
        )


def need_name(fqn: Any, view: str) -> None:
    """``fqn`` must be a state-dict key (a string)."""
    if not isinstance(fqn, str):
        raise DcpvizError(
            f"views.{view}: fqn={fqn!r} must be a state-dict key (a string, e.g. one of result.tensors['fqn'])."
        )


def need_component(component: Any, known: Any, view: str) -> None:
    """``component`` must be one of the result's training-state components (model, optim, ...)."""
    known = sorted(set(known))
    if not isinstance(component, str) or component not in known:
        raise DcpvizError(
            f"views.{view}: component={component!r} is not a part of this state.{did_you_mean(str(component), known)} "
            f"Use one of {known} (the table's 'component' column) or None."
        )


def need_rank(rank: Any, world_size: int, view: str) -> None:
    """Refuse a rank outside the job with a DcpvizError naming the range."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise DcpvizError(
            f"views.{view}: rank={rank!r} is outside the target job (ranks 0..{world_size - 1})."
        )
