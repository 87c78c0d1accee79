"""Turn what the user passed as ``planner=`` into one fresh planner per rank, as DCP has; and
what DCP's default coordinator built before validation rejected it."""

from __future__ import annotations

import copy
import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch.distributed.checkpoint.default_planner import (
    DefaultSavePlanner,
    create_default_global_save_plan,
)
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner

from dcpviz.core.errors import DcpvizError, UserCodeError


def planner_factory(planner: Any, base: type, default: type) -> Callable[[], Any]:
    """None -> DCP's default; a class -> called with no args; an instance -> a deep copy per
    rank (each rank of a real job has its own planner object); a callable -> called per rank."""
    kind = base.__name__
    if planner is None:
        return default
    if isinstance(planner, type):
        if not issubclass(planner, base):
            raise DcpvizError(f"planner={planner.__name__} is not a {kind} subclass.")
        return planner
    if isinstance(planner, base):
        try:
            template = copy.deepcopy(planner)
        except Exception as exc:
            raise DcpvizError(
                f"planner={type(planner).__name__}(...) cannot be copied for each rank ({exc}). "
                f"Pass a factory instead, e.g. planner=lambda: {type(planner).__name__}(...)."
            ) from exc
        return lambda: copy.deepcopy(template)
    if callable(planner):

        def make() -> Any:
            try:
                made = planner()
            except Exception as exc:
                raise UserCodeError(
                    f"the planner factory raised {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(made, base):
                raise DcpvizError(
                    f"the planner factory returned {type(made).__name__}, not a {kind}."
                )
            return made

        return make
    raise DcpvizError(
        f"planner={planner!r} is not a {kind}, a {kind} subclass, or a factory returning one."
    )


# Weak keys: a planner class defined and dropped by the caller is not kept alive here.
_SIGNATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _takes_storage_meta(method: Any) -> bool:
    """Whether ``method`` has a ``storage_meta`` parameter; asked once per planner class's
    function (``inspect.signature`` costs ~0.1 ms, once per rank at 16,384 ranks)."""
    fn = getattr(method, "__func__", None)
    if fn is None:  # not a plain bound method: ask every time
        return "storage_meta" in inspect.signature(method).parameters
    hit = _SIGNATURES.get(fn)
    if hit is None:
        hit = _SIGNATURES[fn] = "storage_meta" in inspect.signature(method).parameters
    return hit


def set_up_save_planner(
    planner: Any, state_dict: dict, is_coordinator: bool, storage_meta: Any = None
) -> None:
    """Call set_up_planner the way dcp.save does (older planners lack storage_meta)."""
    if _takes_storage_meta(planner.set_up_planner):
        planner.set_up_planner(
            state_dict=state_dict, storage_meta=storage_meta, is_coordinator=is_coordinator
        )
    else:
        planner.set_up_planner(state_dict, is_coordinator)


@contextmanager
def isolated_plan_cache() -> Iterator[None]:
    """DCP caches plans in class attributes (enable_plan_caching), one process per rank.
    Simulating many ranks in one process must not let ranks, or earlier runs, share them."""
    names = [n for n in vars(SavePlanner) if n.startswith("_cached_")]
    saved = {n: getattr(SavePlanner, n) for n in names}
    for n in names:
        setattr(SavePlanner, n, {})
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(SavePlanner, n, v)


def unvalidated_global_plan(
    planner: Any, local_plans: list[SavePlan]
) -> tuple[list[SavePlan], Any] | None:
    """What DCP's default coordinator built before validation rejected it, using DCP's own
    functions, so a failed plan can still be looked at. Only for DefaultSavePlanner kin."""
    if not isinstance(planner, DefaultSavePlanner):
        return None
    try:
        return create_default_global_save_plan(planner._dedup_save_plans(local_plans))
    except Exception:
        return None
