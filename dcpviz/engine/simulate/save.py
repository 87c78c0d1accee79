"""simulate_save: DCP's real save planner, every rank of a W-rank job, in this one process.

For each rank r: that rank's fake world, its real sharded state dict (meta tensors), a fresh
planner, ``set_up_planner`` + ``create_local_plan``. Then the coordinator's
``create_global_plan`` over all local plans (dedup, metadata, validation), then each rank's
``finish_plan``, in the order ``dcp.save`` calls them. Failures are recorded, not raised.
At scale, ``fastpath`` shortcuts (exact for DCP's default planner) avoid repeated work.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner

from dcpviz.core.errors import DcpvizError
from dcpviz.core.gc_pause import gc_paused
from dcpviz.core.trace import PlanRecord, SaveTrace, ValueDigest
from dcpviz.core.version import __version__
from dcpviz.engine.convert.save import (
    PlanConverter,
    byte_item_sizes,
    dedup_alternative,
    merged_layouts,
    tensor_layouts,
)
from dcpviz.engine.convert.shared import metadata_info, planner_info
from dcpviz.engine.job.scenario import Scenario
from dcpviz.engine.job.statedict import build_model_on_meta, rank_state_dict
from dcpviz.engine.job.titan_recipe import per_stage_state
from dcpviz.engine.job.world import fake_world, leaves_process_as_found, rank_mesh
from dcpviz.engine.planning.planners import (
    isolated_plan_cache,
    planner_factory,
    set_up_save_planner,
    unvalidated_global_plan,
)
from dcpviz.engine.planning.stamps import now, scenario_info, torch_version
from dcpviz.engine.shortcuts import fastpath, stage_templates
from dcpviz.engine.shortcuts.mesh_copies import same_mesh
from dcpviz.engine.shortcuts.validation import fast_validation
from dcpviz.engine.shortcuts.worldless import WorldlessRanks, same_plan
from dcpviz.engine.shortcuts.write_memo import WriteItemMemo
from dcpviz.engine.simulate.phases import (
    Log,
    Timer,
    finish_step,
    global_step,
    progress_bar,
    rebound_note,
    representatives,
    training_state_components,
    wants_template,
)
from dcpviz.engine.storage.writer_plan import StoragePlanning
from dcpviz.engine.values.digests import tied_keys, tied_parameter_names, value_digests_of


@dataclass
class _SaveRun:
    """One simulated save in progress: what every phase reads and adds to."""

    scenario: Scenario
    make_planner: Any
    template: Any
    shortcuts: bool
    rep_of: dict[int, int]
    timer: Timer = field(default_factory=Timer)
    log: Log = field(default_factory=Log)
    conv: PlanConverter = field(default_factory=PlanConverter)
    planners: dict[int, Any] = field(default_factory=dict)
    local_by_rep: dict[int, SavePlan] = field(default_factory=dict)
    sizes_by_rep: dict[int, dict[str, int]] = field(default_factory=dict)
    layouts: tuple = ()
    digests: list = field(
        default_factory=list
    )  # ValueDigests of the ranks whose own state dict was built
    components: tuple[
        tuple[str, str], ...
    ] = ()  # rank 0's training-state parts (core/components.py)
    tied: tuple[tuple[str, ...], ...] = ()  # rank 0's keys that hold one tensor (tied weights)
    rebound: int = 0
    fast_checks: bool = (
        False  # DCP's validation on stretched metadata first (engine/shortcuts/validation.py)
    )
    views: fastpath.TemplateView | None = None  # the template, prepared once for every rank's view
    local_shapes: fastpath.SharedLocalShapes = field(
        default_factory=fastpath.SharedLocalShapes
    )  # DTensor's local shapes/offsets and shard steps, shared by the ranks
    write_memo: WriteItemMemo | None = None  # DCP's WriteItems reused across keys of one rank
    flattening: fastpath.ViewFlattening | None = (
        None  # DCP's flattening of a view, from the template's
    )
    storage: StoragePlanning | None = (
        None  # the storage writer's own planning steps (engine/storage/writer_plan.py)
    )
    worldless: WorldlessRanks | None = (
        None  # ranks planned outside a world (shortcuts/worldless.py)
    )
    release_views: bool = (
        False  # drop each planner's state dict once planned (engine/shortcuts/stage_templates.py)
    )

    @property
    def world_size(self) -> int:
        return self.scenario.world_size

    def sizes_of(self, rank: int) -> dict[str, int] | None:
        """BYTE_IO sizes follow each item to the rank that writes it (as in run_save)."""
        return self.sizes_by_rep.get(self.rep_of[rank])


def _set_up(
    scenario: Scenario, make_planner: Any, fast: bool | None, timer: Timer, log: Log
) -> _SaveRun:
    """The probe planner, the template state dict where the recipe is SPMD, and the classes of
    ranks that share a plan."""
    probe = make_planner()
    if per_stage_state(scenario) and fast is not False and fastpath.can_share_plans(probe):
        return _set_up_stages(scenario, make_planner, timer, log)
    template, rebound = None, 0
    if wants_template(fast, scenario) and fastpath.plans_leaves(probe):
        with timer.phase("build_state_dicts"):
            template, rebound = fastpath.template_state_dict(
                scenario, log.notes, check=not isinstance(scenario.recipe, str)
            )
    shortcuts = template is not None and fastpath.can_share_plans(probe)
    rep_of = representatives(scenario, template, shortcuts, "local", log)
    run = _SaveRun(
        scenario, make_planner, template, shortcuts, rep_of, timer=timer, log=log, rebound=rebound
    )
    if template is not None:
        with timer.phase("build_state_dicts"):
            run.views = fastpath.TemplateView(template)
    if shortcuts and fast is not False:
        run.write_memo = WriteItemMemo()
        run.flattening = fastpath.ViewFlattening(run.views)
    return run


def _set_up_stages(scenario: Scenario, make_planner: Any, timer: Timer, log: Log) -> _SaveRun:
    """Pipeline stages: one template per stage (``engine/shortcuts/stage_templates.py``), else every rank's own."""
    with timer.phase("build_state_dicts"):
        templates = stage_templates.stage_templates(scenario, log.notes)
    if templates is None:
        rep_of = {r: r for r in range(scenario.world_size)}
        return _SaveRun(scenario, make_planner, None, False, rep_of, timer=timer, log=log)
    rep_of = stage_templates.stage_plan_classes(scenario, templates)
    run = _SaveRun(scenario, make_planner, templates[0], True, rep_of, timer=timer, log=log)
    with timer.phase("build_state_dicts"):
        run.views = stage_templates.StageViews(templates, stage_templates.stage_size(scenario))
    run.write_memo = WriteItemMemo()
    run.flattening = stage_templates.StageFlattening(run.views)
    run.release_views = True  # DefaultSavePlanner itself (can_share_plans): exact
    run.worldless = WorldlessRanks(stage_templates.stage_size(scenario))
    return run


def _rank_state(run: _SaveRun, r: int, meshes: list | None = None) -> tuple[dict, list | None]:
    """Rank ``r``'s state dict: the template's view (one DTensor per layout group where DCP's
    default planner plans every key on its own) with its leaves, or the rank's own (no leaves).
    ``meshes``: the rank's meshes for the view (``engine/shortcuts/worldless.py``)."""
    if run.views is None:
        state_dict, n = rank_state_dict(run.scenario, r)
        run.rebound += n
        return state_dict, None
    shapes = run.local_shapes.active() if run.shortcuts else nullcontext()
    with fastpath.memoized_shard_steps(run.local_shapes.shard_steps), shapes:
        return run.views.view_with_leaves(r, {}, share_dtensors=run.shortcuts, meshes=meshes)


def same_values_on_every_rank(scenario: Scenario) -> bool:
    """Whether every rank holds rank 0's Python values by construction: dcpviz's own model and
    recipe, a preset optimizer (or none) and the model's own state (or an SPMD preset) — code
    that does not read the rank. A callable anywhere is user code that may (an RNG state, a
    data-loader position), so its other ranks stay unknown."""
    return (
        isinstance(scenario.model, str)
        and isinstance(scenario.recipe, str)
        and (scenario.optimizer is None or isinstance(scenario.optimizer, str))
        and fastpath.per_rank_state_reason(scenario) is None
    )


def _as_every_rank(digests: list[ValueDigest], world_size: int) -> list[ValueDigest]:
    """Rank 0's digests of whole values (Python values, bytes entries, plain tensors with
    values) for ranks 1..W-1, which hold the same values (``same_values_on_every_rank``)."""
    whole = [d for d in digests if d.offsets is None]
    return [replace(d, rank=r) for r in range(1, world_size) for d in whole]


def _tied_names(scenario: Any) -> tuple[tuple[str, ...], ...]:
    """The model's tied parameter names (meta tensors hold no storage to compare), from one more
    build of the model on meta; none where that fails (the checks then say nothing of ties)."""
    try:
        return tied_parameter_names(build_model_on_meta(scenario))
    except Exception:  # noqa: BLE001 - a note-worthy model failure is reported by the build itself
        return ()


def _local_plan(run: _SaveRun, p: Any, state_dict: dict, leaves: list | None, r: int) -> SavePlan:
    """DCP's set_up_planner + create_local_plan for rank ``r``, with the exact shortcuts that
    apply to DefaultSavePlanner itself (memoised DTensor offsets, flattening and WriteItems)."""
    if not run.shortcuts:
        with torch.no_grad():
            set_up_save_planner(p, state_dict, is_coordinator=(r == 0))
            return p.create_local_plan()
    memo = run.write_memo.active() if run.write_memo is not None else nullcontext()
    flat = (
        run.flattening.active(state_dict, leaves)
        if run.flattening is not None and leaves is not None
        else nullcontext()
    )
    # no_grad changes no plan; it spares DTensor.to_local an autograd node per item.
    with (
        torch.no_grad(),
        fastpath.memoized_shard_steps(run.local_shapes.shard_steps),
        run.local_shapes.active(),
        memo,
    ):
        with flat:
            set_up_save_planner(p, state_dict, is_coordinator=(r == 0))
        return p.create_local_plan()


def _may_hold_new_keys(run: _SaveRun, r: int) -> bool:
    """Whether rank ``r``'s state dict may hold keys no lower rank holds: rank 0, each stage's
    first rank (its ranks view one template), and every rank that built its own state dict."""
    if r == 0 or run.views is None:
        return True
    return isinstance(run.views, stage_templates.StageViews) and r % run.views.per_stage == 0


def _rank_local_plan(run: _SaveRun, r: int, meshes: list | None = None) -> tuple[Any, Any, Any]:
    """Rank ``r``'s (planner, local plan, BYTE_IO sizes), as dcp.save makes them, in whatever
    world the caller set up; raises what the planner raises."""
    t0 = time.perf_counter()
    state_dict, leaves = _rank_state(run, r, meshes)
    if _may_hold_new_keys(run, r):
        run.layouts = merged_layouts(run.layouts, tensor_layouts(state_dict))
    if r == 0:
        run.components = training_state_components(run.scenario, state_dict)
    t1 = time.perf_counter()
    run.timer.add("build_state_dicts", t1 - t0)
    p = run.make_planner()
    if run.template is None or r == 0:
        # Values known only where this rank's own state dict was built: a template view would
        # hand rank 0's Python values to every rank and hide any that differ. Keys as the
        # planner writes them (flatten_state_dict=False: one bytes entry per top-level key).
        with run.timer.phase("value_digests"):
            flatten = bool(getattr(p, "flatten_state_dict", True))
            mine = value_digests_of(state_dict, r, flatten=flatten)
            run.digests += mine
            if run.template is not None and same_values_on_every_rank(run.scenario):
                run.digests += _as_every_rank(mine, run.world_size)
            if r == 0:
                run.tied = tied_keys(state_dict, flatten, _tied_names(run.scenario))
    t1 = time.perf_counter()
    run.planners[r] = p
    try:
        plan = _local_plan(run, p, state_dict, leaves, r)
        return p, plan, byte_item_sizes(p, plan.items)
    except Exception as exc:
        raise _PlannerFailed(exc) from exc
    finally:
        run.timer.add("local_plans", time.perf_counter() - t1)


class _PlannerFailed(Exception):
    """The planner's local step raised ``original``: data for the trace. A failure while building
    the rank's state dict (the user's model or recipe) is not one: it propagates as before."""

    def __init__(self, original: Exception) -> None:
        super().__init__(original)
        self.original = original


def _worldless_plan(run: _SaveRun, r: int) -> tuple[Any, Any, Any] | None:
    """Rank ``r``'s local step outside any world (``engine/shortcuts/worldless.py``), or None
    where that shortcut does not apply or anything went wrong (the rank then gets its world)."""
    wl = run.worldless
    if wl is None or not wl.on or r == 0 or not wl.covers(r):
        return None
    template_meshes = run.views.template_meshes(r)
    if not wl.can_build(template_meshes) or not wl.outside_world():
        return None
    try:
        out = _rank_local_plan(run, r, wl.meshes(template_meshes, r))
    except Exception as exc:  # the rank is planned again in its world: DCP's verdict counts
        raised = type(getattr(exc, "original", exc)).__name__
        wl.turn_off(f"rank {r} raised {raised} outside its world")
        return None
    wl.worldless += 1
    return out


def _plan_in_world(run: _SaveRun, r: int) -> tuple[Any, Any, Any] | None:
    """Rank ``r``'s local step in its own fake world; None (recorded) where the planner fails.
    Where ranks may later go worldless, the meshes built here are remembered first."""
    with fake_world(r, run.world_size):
        meshes = None
        wl = run.worldless
        if wl is not None and wl.on:
            template_meshes = run.views.template_meshes(r)
            meshes = [rank_mesh(m, r, {}) for m in template_meshes]
            wl.learn(template_meshes, meshes)
        try:
            return _rank_local_plan(run, r, meshes)
        except _PlannerFailed as failed:  # a planner failure is data
            run.log.fail("local", r, failed.original)
            return None


def _plan_rank(run: _SaveRun, r: int) -> None:
    """One rank's local step, as dcp.save runs it."""
    out = _worldless_plan(run, r)
    if out is None:
        out = _plan_in_world(run, r)
        if out is None:
            return
        if run.worldless is not None and run.worldless.on:
            with run.timer.phase("worldless_check"):
                _check_worldless(run, r)
    p, plan, sizes = out
    if run.release_views and run.storage is None:
        # DefaultSavePlanner's coordinator and finish steps never read it; its rank's DTensors
        # and per-rank meshes would otherwise live until the end (W of them).
        p.state_dict = None
    run.local_by_rep[r], run.sizes_by_rep[r] = plan, sizes
    with run.timer.phase("convert"):
        run.conv.record(plan, sizes)


def _check_worldless(run: _SaveRun, first: int) -> None:
    """After a stage's first rank: its last rank's meshes and local plan made both ways (in its
    world from ``rank_mesh``, and worldless from ``first``'s meshes) must be equal, field by
    field, or no rank goes worldless (``engine/shortcuts/worldless.py``)."""
    wl = run.worldless
    stage = run.views.stage_of(first)
    if stage in wl.checked or not wl.first_of_stage(first):
        return
    other = wl.check_rank(first)
    if other == first:
        return
    template_meshes = run.views.template_meshes(other)
    try:
        with fake_world(other, run.world_size):
            built = [rank_mesh(m, other, {}) for m in template_meshes]
            copies = wl.meshes(template_meshes, other)
            if not all(same_mesh(a, b) for a, b in zip(copies, built)):
                wl.turn_off(f"rank {other}'s meshes differ when built without its world")
                return
            state_dict, leaves = _rank_state(run, other, built)
            expected = _local_plan(run, run.make_planner(), state_dict, leaves, other)
        if not wl.outside_world():
            wl.turn_off("a default process group exists")
            return
        state_dict, leaves = _rank_state(run, other, copies)
        got = _local_plan(run, run.make_planner(), state_dict, leaves, other)
    except Exception as exc:  # noqa: BLE001 - not proven: every rank gets its world
        wl.turn_off(f"rank {other}'s check raised {type(exc).__name__}")
        return
    if not same_plan(expected, got):
        wl.turn_off(f"rank {other}'s local plan differs when made without its world")
        return
    wl.checked.add(stage)


def _local_step(run: _SaveRun, progress: bool | None) -> list[SavePlan | None]:
    """Every representative rank's local plan; every rank's plan (its representative's)."""
    reps = sorted(set(run.rep_of.values()))
    bar = progress_bar(len(reps), "local plans", progress)
    for r in reps:
        _plan_rank(run, r)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    wl = run.worldless
    if wl is not None and (wl.worldless or wl.reason):
        run.log.notes.append(
            f"{wl.worldless} ranks planned outside a fake world of their own, their meshes built "
            "from DeviceMesh's own coordinate code (exact, checked on one rank per stage; see "
            "engine/shortcuts/worldless.py)"
            + (f"; then turned off: {wl.reason}." if wl.reason else ".")
        )
    return [run.local_by_rep.get(run.rep_of[r]) for r in range(run.world_size)]


def _global_plan(run: _SaveRun, local: list[SavePlan]) -> tuple[Any, Any, bool]:
    """(global plans, Metadata, validated): DCP's coordinator step; where validation rejects the
    plan, what DCP's default coordinator had built before (so it can still be looked at)."""
    coordinator = run.planners[0]

    def checks() -> Any:
        # DCP's validation on metadata stretched so its sweep prunes (exact; engine/shortcuts/validation.py).
        return fast_validation() if run.fast_checks else nullcontext()

    with run.timer.phase("global_plan"):
        out, exc = global_step(
            coordinator, local, run.world_size, run.log, check=_plans_and_metadata, context=checks()
        )
        if exc is None:
            return out[0], out[1], True
        with fake_world(0, run.world_size), checks():
            fallback = unvalidated_global_plan(coordinator, list(local))
    if fallback is None:
        return None, None, False
    run.log.notes.append(
        "The coordinator rejected the global plan; the global plan and metadata "
        "shown are DCP's dedup + create_default_global_save_plan output before "
        "validation (what was planned so far)."
    )
    return fallback[0], fallback[1], False


def _plans_and_metadata(out: Any) -> None:
    """create_global_plan of a save returns (plans, Metadata); anything else fails like unpacking."""
    _plans, _md = out


def _finish(run: _SaveRun, global_plans: list[SavePlan]) -> tuple[PlanRecord, ...]:
    shared = len(set(run.rep_of.values())) < run.world_size
    # DCP's own DefaultSavePlanner.finish_plan reads no world (fastpath.finishes_without_world).
    worldless = run.shortcuts and fastpath.finishes_without_world(run.planners[0])
    with run.timer.phase("finish_plans"):
        keep = run.storage.final if run.storage is not None else (lambda r, final: final)
        return finish_step(
            # Shared planners: DefaultSavePlanner.finish_plan returns the plan it is given; no
            # per-rank world needed.
            lambda r: run.planners[run.rep_of[r]] if shared else run.planners[r],
            global_plans,
            run.world_size,
            lambda r, final: run.conv.record(keep(r, final), run.sizes_of(r)),
            run.log,
            per_rank_world=not (shared or worldless),
        )


@dataclass
class _Planned:
    """What the phases after set-up produced, as trace records (plus DCP's Metadata)."""

    local: tuple = ()
    global_: tuple | None = None
    final: tuple | None = None
    metadata: Any = None
    validated: bool = True
    alternative: Any = None
    file_plan: tuple = ()


def _storage_steps(run: _SaveRun, local: list, when: str) -> list | None:
    """The storage writer's steps where dcp.save calls them: 'local' after each rank's local
    plan (a failing rank's plan becomes None), 'global' after the coordinator's global plan
    (None when the writer raises, which fails the save)."""
    if run.storage is None:
        return local
    if when == "local":
        return run.storage.local_step(local, lambda r, exc: run.log.fail("local", r, exc))
    try:
        return run.storage.global_step(local)
    except Exception as exc:
        run.log.fail("global", None, exc)
        return None


def _files(run: _SaveRun, out: _Planned) -> None:
    """The writer's split of every final plan into files, and consolidation's output files."""
    if run.storage is None or out.final is None:
        return
    with run.timer.phase("storage_plan"):
        rows = run.storage.file_plan(
            lambda r: run.planners[run.rep_of[r]],
            run.sizes_of,
            lambda r, exc: run.log.fail("write", r, exc),
        )
        out.file_plan = rows + run.storage.consolidation(out.metadata)


def _plan_and_record(run: _SaveRun, progress: bool | None) -> _Planned:
    """Every rank's local plan, the coordinator's global plan, every rank's final plan (as
    dcp.save runs them), recorded."""
    out = _Planned()
    local = _storage_steps(run, _local_step(run, progress), "local")
    out.local = tuple(run.conv.record(p) if p is not None else None for p in local)
    if not all(p is not None for p in local):
        run.log.notes.append(
            "A local plan failed, so (as in dcp.save) the coordinator never planned globally."
        )
        return out
    global_plans, out.metadata, out.validated = _global_plan(run, local)
    if global_plans is not None and out.validated:
        global_plans = _storage_steps(run, global_plans, "global")
        out.validated = global_plans is not None
    if global_plans is not None:
        with run.timer.phase("convert"):
            out.global_ = tuple(
                run.conv.record(p, run.sizes_of(r)) for r, p in enumerate(global_plans)
            )
    if out.validated and global_plans is not None:
        out.final = _finish(run, global_plans)
        _files(run, out)
    with run.timer.phase("dedup_alternative"):
        out.alternative = dedup_alternative(
            run.planners[0],
            local,
            lambda r, p: run.conv.record(p, run.sizes_of(r)),
            run.conv.items,
            out.final or out.global_,
        )
    return out


@leaves_process_as_found
def plan_save(
    scenario: Scenario,
    planner: Any = None,
    *,
    progress: bool | None = None,
    fast: bool | None = None,
    storage_writer: Any = None,
) -> tuple[SaveTrace, Any]:
    """Plan a save of ``scenario`` with DCP's real planner on every rank; return the trace and
    DCP's Metadata (None when planning failed). ``dcpviz.simulate_save`` wraps them in a SaveResult.

    ``planner``: a SavePlanner instance (copied per rank), class, or factory; default
    ``DefaultSavePlanner()``. ``fast``: None (default) uses the exact shortcuts of
    ``engine.shortcuts.fastpath`` where they apply (named recipes, DCP's default planner); True also
    trusts a callable recipe to be SPMD (checked on sample ranks); False runs the recipe and
    the planner on every rank, and DCP's validation on the real metadata only (by default DCP's
    validation first runs on stretched metadata, ``engine.shortcuts.validation``). ``storage_writer``: a
    StorageWriter whose own planning steps run on every rank's plans, as dcp.save calls them,
    writing nothing (``engine.storage.writer_plan``); the trace's ``file_plan`` holds its files.
    """
    if not isinstance(scenario, Scenario):
        raise DcpvizError(f"simulate_save needs a dcpviz.Scenario, got {type(scenario).__name__}.")
    make_planner = planner_factory(planner, SavePlanner, DefaultSavePlanner)
    timer, log = Timer(), Log()
    t_start = time.perf_counter()
    with isolated_plan_cache():
        info = planner_info(make_planner(), DefaultSavePlanner)
        run = _set_up(scenario, make_planner, fast, timer, log)
        run.fast_checks = fast is not False and info.is_dcp_default
        if storage_writer is not None:
            run.storage = StoragePlanning(storage_writer, scenario.world_size)
        # Ranks viewed from one template leave no cyclic garbage behind, only millions of
        # acyclic objects that automatic collections would walk again and again. A recipe run
        # per rank does leave cycles (modules, hooks): the collector stays on for it.
        with gc_paused() if run.views is not None else nullcontext():
            planned = _plan_and_record(run, progress)
            with timer.phase("convert"):
                md_info = metadata_info(planned.metadata) if planned.metadata is not None else None
    rebound_note(run.rebound, log)
    timer.add("total", time.perf_counter() - t_start)
    trace = SaveTrace(
        scenario=replace(scenario_info(scenario), components=run.components),
        planner=info,
        items=tuple(run.conv.items),
        local_plans=planned.local,
        global_plans=planned.global_,
        final_plans=planned.final,
        metadata=md_info,
        errors=tuple(log.errors),
        global_plan_validated=planned.validated,
        timings=tuple(timer.totals.items()),
        notes=tuple(log.notes),
        layouts=run.layouts,
        source="simulate",
        value_digests=tuple(run.digests),
        dedup_alternative=planned.alternative,
        tied_keys=run.tied,
        storage_writer=run.storage.facts(planned.file_plan) if run.storage is not None else None,
        file_plan=planned.file_plan,
        torch_version=torch_version(),
        dcpviz_version=__version__,
        created=now(),
    )
    return trace, planned.metadata
