"""The DCP phase loop both directions share: set up -> local -> global -> finish, timed by one
Timer, planner failures recorded as data (never raised), and the notes both directions write.

``save`` (simulate_save) and ``load`` (simulate_load) supply what differs: how a rank's state
dict and local plan are made, and how a plan is recorded. The trace stamps every source shares
(scenario, versions, time) are in ``engine/planning/stamps.py``, so the recording planners need
nothing from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from dcpviz.core.components import state_components
from dcpviz.core.trace import ErrorRecord, PlanRecord
from dcpviz.engine.job.scenario import Scenario
from dcpviz.engine.job.titan_recipe import per_stage_state
from dcpviz.engine.job.world import fake_world
from dcpviz.engine.planning.stamps import error_record
from dcpviz.engine.shortcuts import fastpath


class Timer:
    """Seconds spent per phase, summed over ranks, in the order phases first ran."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.totals: dict[str, float] = {n: 0.0 for n in names}

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` towards ``name``."""
        self.totals[name] = self.totals.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as part of ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)


@dataclass
class Log:
    """What a simulation found besides its plans: failures (as data) and notes."""

    errors: list[ErrorRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, phase: str, rank: int | None, exc: BaseException) -> None:
        """Record that ``phase`` raised ``exc`` on ``rank`` (None: the coordinator)."""
        self.errors.append(error_record(phase, rank, exc))


def training_state_components(
    scenario: Scenario, state_dict: dict[str, Any]
) -> tuple[tuple[str, str], ...]:
    """The components (model, optim, lr_scheduler, ...) of a rank's training state, for the
    trace; none for a plain model state dict (core/components.py)."""
    if scenario.optimizer is None and scenario.state is None:
        return ()
    return state_components(state_dict, scenario.state is not None)


def progress_bar(total: int, desc: str, progress: bool | None) -> Any:
    """tqdm.auto (a widget in notebooks, a bar in terminals) when there are more than a few ranks."""
    show = total > 8 if progress is None else progress
    if not show:
        return None
    # tqdm, deferred: only simulations of more than a few ranks show a bar.
    return tqdm(total=total, desc=desc, unit="rank", leave=False)


# -- set up -------------------------------------------------------------------------------------
def wants_template(fast: bool | None, scenario: Scenario) -> bool:
    """Whether the recipe runs once and other ranks get rank 0's state dict rebound: when the
    recipe is known to be SPMD (the named ones are, torchtitan's pipeline stages aside), or the
    user says so with fast=True."""
    if per_stage_state(scenario):
        return False  # stages hold different modules: rank 0's state cannot stand for them
    return fast is True or (fast is None and isinstance(scenario.recipe, str))


def representatives(
    scenario: Scenario, template: Any, shortcuts: bool, what: str, log: Log
) -> dict[int, int]:
    """rank -> the rank whose plan it shares. DCP's default plan for a rank depends on its local
    chunks (its coordinates along non-replicated dims), not on the rank itself: one plan per class."""
    W = scenario.world_size
    rep_of = {r: r for r in range(W)}
    if shortcuts:
        dims = fastpath.mattering_dims(template, tuple(scenario.mesh_dim_names or ()))
        rep_of = fastpath.plan_classes(scenario, dims)
    n_reps = len(set(rep_of.values()))
    if n_reps < W:
        log.notes.append(
            f"{n_reps} representative ranks planned for {W}: ranks that hold the same shards (they differ "
            f"only along mesh dims where every DTensor is replicated) get the same {what} plan from DCP's "
            "default planner, so one plan stands for each group (exact; pass fast=False to plan every rank)."
        )
    return rep_of


# -- global and finish ---------------------------------------------------------------------------
def global_step(
    coordinator: Any,
    local: Sequence[Any],
    world_size: int,
    log: Log,
    check: Callable[[Any], None] | None = None,
    context: Any = None,
) -> tuple[Any, BaseException | None]:
    """The coordinator's ``create_global_plan`` over every local plan, in rank 0's world (and
    ``context``, e.g. a faster exact validation). Returns (its result, None), or (None, the
    exception) after recording it."""
    with fake_world(0, world_size), context if context is not None else nullcontext():
        try:
            out = coordinator.create_global_plan(list(local))
            if check is not None:
                check(out)
            return out, None
        except Exception as exc:
            log.fail("global", None, exc)
            return None, exc


def finish_step(
    planner_of: Callable[[int], Any],
    global_plans: Sequence[Any],
    world_size: int,
    record: Callable[[int, Any], PlanRecord],
    log: Log,
    *,
    per_rank_world: bool = True,
) -> tuple[PlanRecord, ...]:
    """Each rank's ``finish_plan`` of its global plan, recorded; a failing rank gets an unusable
    empty plan and its error. ``per_rank_world=False`` where the planner needs no world (shared
    DefaultSavePlanner instances, whose finish_plan returns the plan it is given)."""
    finals: list[PlanRecord] = []
    for r in range(world_size):
        with fake_world(r, world_size) if per_rank_world else nullcontext():
            try:
                finals.append(record(r, planner_of(r).finish_plan(global_plans[r])))
            except Exception as exc:
                log.fail("finish", r, exc)
                finals.append(PlanRecord(items=(), usable=False))
    return tuple(finals)


def rebound_note(rebound: int, log: Log) -> None:
    """Say how many DTensors had to be rebound to their own rank's mesh, if any."""
    if rebound:
        log.notes.append(
            f"{rebound} DTensors came back from DTensor's dispatch cache with another rank's mesh "
            "and were rebound to their own rank's mesh (one-process simulation hazard)."
        )
