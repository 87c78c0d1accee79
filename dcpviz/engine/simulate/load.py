"""simulate_load: DCP's real load planner, every rank of a target layout, in this one process.

For each target rank r: that rank's fake world, its real sharded state dict (the target
scenario's model and recipe, meshes rebound to r) with storage-less tensors, a fresh planner,
``set_up_planner(state_dict, metadata, is_coordinator)`` + ``create_local_plan()``. Then, as in
``dcp.load``: if every rank planned, the coordinator's ``create_global_plan`` and each rank's
``finish_plan``; if any rank failed, no global plan (dcp.load raises a CheckpointException
listing each failing rank). Planner failures are recorded, never raised; every mismatch on every
rank is collected besides (see ``planning/mismatch.py``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner

from dcpviz.core.errors import DcpvizError
from dcpviz.core.trace import ErrorRecord, LoadTrace, PlanRecord, SaveTrace, TargetValue
from dcpviz.core.version import __version__
from dcpviz.engine.checkpoint.saved import resolve_saved
from dcpviz.engine.convert.load import (
    TargetValues,
    load_plan_record,
    planner_view,
    saved_itemsizes,
    target_value,
)
from dcpviz.engine.convert.shared import ItemTable, planner_info
from dcpviz.engine.job.scenario import Scenario
from dcpviz.engine.job.statedict import rank_state_dict
from dcpviz.engine.job.titan_recipe import per_stage_state
from dcpviz.engine.job.world import fake_world, leaves_process_as_found
from dcpviz.engine.planning.mismatch import MismatchCollector, dcp_key_messages, read_facts
from dcpviz.engine.planning.planners import planner_factory
from dcpviz.engine.planning.stamps import now, scenario_info, torch_version
from dcpviz.engine.shortcuts import fastpath
from dcpviz.engine.shortcuts.load_stage_templates import (
    LoadStageViews,
    load_plan_classes,
    load_stage_views,
)
from dcpviz.engine.shortcuts.overlap import ChunkLists, ReadPruner
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
from dcpviz.engine.simulate.storageless import new_fake_mode, to_storageless


def check_target(target: Any) -> Scenario:
    """``target`` if it is a Scenario; else a DcpvizError (naming swapped arguments)."""
    if isinstance(target, Scenario):
        return target
    swapped = (
        " Did you swap the arguments? The order is simulate_load(saved, target)."
        if (isinstance(target, str) or isinstance(getattr(target, "trace", None), SaveTrace))
        else ""
    )
    raise DcpvizError(
        f"target={type(target).__name__} is not a dcpviz.Scenario. Describe the job that loads, "
        f"e.g. target=dcpviz.Scenario(model='mlp', world_size=6, recipe='fsdp').{swapped}"
    )


class _DerivedVersionGuard:
    """DefaultLoadPlanner sets the module global ``_version._derived_version`` to '2_3' while it
    tries pre-2.4 keys and resets it only on success; one process planning many ranks must not
    let a failure on one rank change how the next rank's keys are flattened."""

    def __enter__(self) -> None:
        from torch.distributed.checkpoint import _version

        self._saved = _version._derived_version

    def __exit__(self, *exc: Any) -> None:
        from torch.distributed.checkpoint import _version

        _version._derived_version = self._saved


YOUNG_GC_EVERY = 16
"""Ranks planned between two collections of the young generations (see ``young_gc_only``)."""


@contextmanager
def young_gc_only(on: bool = True) -> Iterator[Any]:
    """While inside, Python's cyclic GC runs only when asked, on the young generations.

    Planning a rank allocates ~10^4 objects that live on (trace records, plans), so automatic
    collection keeps promoting them and re-scanning the old generation, which holds everything
    the simulation has made so far and the saved checkpoint: half of a 256-rank load's time.
    Yields a function to call between ranks (None where GC is left alone): ``gc.collect(1)`` scans only what was allocated
    since the last call (the rank's cyclic garbage is freed there; survivors go to the old
    generation, which is left to Python once the block ends). GC's enabled state is restored
    on exit, error or not; nothing is collected where the caller had GC disabled."""
    enabled = gc.isenabled()
    if not (on and enabled):
        yield None
        return
    gc.disable()
    try:
        yield lambda: gc.collect(1)
    finally:
        gc.enable()


@dataclass(frozen=True)
class _Speedups:
    """The exact shortcuts a load takes (none with ``fast=False``), chosen once."""

    chunk_lists: ChunkLists | None = None  # DCP's _create_chunk_list once per spec of a rank
    pruner: ReadPruner | None = (
        None  # DCP's read planning on chunks that can overlap (shortcuts/overlap.py)
    )
    target_values: TargetValues | None = (
        None  # target_value once per spec of a rank (None: per key)
    )
    read_boxes: dict | None = None  # convert.load.read_record's memo (None: every item on its own)
    lean: bool = False  # let go of each rank's state dict once planned

    @classmethod
    def choose(cls, fast: bool | None, md: Any, is_dcp_default: bool) -> _Speedups:
        """Every shortcut unless ``fast`` is False; the read pruner only for DCP's own planner."""
        if fast is False:
            return cls()
        chunk_lists = ChunkLists()
        pruner = ReadPruner(md, chunk_lists=chunk_lists) if is_dcp_default else None
        return cls(chunk_lists, pruner, TargetValues(chunk_lists), {}, True)

    def new_rank(self) -> None:
        """Forget the answers that hold for one rank's mesh coordinate only."""
        if self.pruner is not None:
            self.pruner.new_rank()
        elif self.chunk_lists is not None:
            self.chunk_lists.clear()
        if self.target_values is not None:
            self.target_values.clear()


@dataclass(frozen=True)
class _Classes:
    """Which ranks are planned (a representative per class of ranks) and how their state dicts
    are made (rank 0's template rebound, each pipeline stage's template viewed, or each rank's
    own)."""

    template: Any  # rank 0's state dict, a LoadStageViews (pipeline stages), or None
    shortcuts: bool  # the template is used and the planner is DCP's own
    rep_of: dict[int, int]
    sharing: dict[int, int]  # representative -> the last rank reusing its facts


@dataclass
class _KeyFacts:
    """What the scan of every rank's keys against the checkpoint gathers."""

    wanted: ItemTable = field(default_factory=ItemTable)
    wanted_by_rank: list[tuple[int, ...]] = field(default_factory=list)
    wanted_fqns: set[str] = field(default_factory=set)
    read_storage_fqns: set[str] = field(default_factory=set)
    collector: MismatchCollector = field(default_factory=MismatchCollector)
    per_rep: dict[int, tuple] = field(
        default_factory=dict
    )  # rep -> (values, wanted ids, messages, renames, read_dest)


@dataclass
class _LoadRun:
    """One simulated load in progress: what every phase reads and adds to."""

    target: Scenario  # on meta
    make_planner: Any
    metadata: Any
    itemsizes: Any
    classes: _Classes
    speed: _Speedups
    timer: Timer
    log: Log
    keys: _KeyFacts = field(default_factory=_KeyFacts)
    mode: Any = field(default_factory=new_fake_mode)
    fakes: dict = field(
        default_factory=dict
    )  # storageless tensors shared by the ranks of a template
    reads: ItemTable = field(default_factory=ItemTable)
    plan_memo: dict[int, tuple[LoadPlan, PlanRecord]] = field(default_factory=dict)
    planners: list[Any] = field(default_factory=list)
    local: list[LoadPlan | None] = field(default_factory=list)
    local_records: list[PlanRecord | None] = field(default_factory=list)
    rebound: int = 0
    components: tuple[
        tuple[str, str], ...
    ] = ()  # rank 0's training-state parts (core/components.py)
    collect_young: Any = None  # call between ranks (young_gc_only); None: GC runs by itself
    world_free: bool = False  # plan ranks outside a fake world (load_stage_templates.py)
    world_retries: int = 0  # ranks whose world-free try raised, planned again in their world

    @property
    def world_size(self) -> int:
        return self.target.world_size

    def record(self, plan: LoadPlan) -> PlanRecord:
        return load_plan_record(
            plan, self.reads, self.itemsizes, self.plan_memo, self.speed.read_boxes
        )


def _set_up(
    target: Scenario,
    make_planner: Any,
    md: Any,
    fast: bool | None,
    info: Any,
    timer: Timer,
    log: Log,
) -> _LoadRun:
    """The target on meta, the template state dict where the recipe is SPMD, the classes of
    ranks that share a plan, and the exact shortcuts this load takes."""
    sim = target if target.device == "meta" else target.replace(device="meta")
    template, rebound = None, 0
    with timer.phase("build_state_dicts"):
        if per_stage_state(sim) and fast is not False:
            template = load_stage_views(sim, log.notes)
        elif wants_template(fast, sim):
            template, rebound = fastpath.template_state_dict(
                sim, log.notes, check=not isinstance(sim.recipe, str)
            )
    shortcuts = template is not None and info.is_dcp_default
    if isinstance(template, LoadStageViews):
        rep_of = _stage_representatives(sim, template, shortcuts, log)
    else:
        rep_of = representatives(sim, template, shortcuts, "load", log)
    W = sim.world_size
    sharing = {rep: r for r, rep in sorted(rep_of.items()) if rep != r}
    return _LoadRun(
        sim,
        make_planner,
        md,
        saved_itemsizes(md),
        _Classes(template, shortcuts, rep_of, sharing),
        _Speedups.choose(fast, md, info.is_dcp_default),
        timer,
        log,
        planners=[None] * W,
        local=[None] * W,
        local_records=[None] * W,
        rebound=rebound,
        world_free=shortcuts and isinstance(template, LoadStageViews),
    )


def _stage_representatives(
    sim: Scenario, views: LoadStageViews, shortcuts: bool, log: Log
) -> dict[int, int]:
    """rank -> its representative under pipeline stages (every rank its own without shortcuts)."""
    W = sim.world_size
    rep_of = load_plan_classes(sim, views) if shortcuts else {r: r for r in range(W)}
    n_reps = len(set(rep_of.values()))
    if n_reps < W:
        log.notes.append(
            f"{n_reps} representative ranks planned for {W}: ranks of one pipeline stage that hold "
            "the same shards get the same load plan from DCP's default planner, so one plan stands "
            "for each group (exact; pass fast=False to plan every rank)."
        )
    return rep_of


def _share_plan(run: _LoadRun, r: int, rep: int) -> None:
    """Rank ``r`` has the same plan and the same keys as its representative ``rep``."""
    run.local[r], run.local_records[r], run.planners[r] = (
        run.local[rep],
        run.local_records[rep],
        run.planners[rep],
    )
    keys = run.keys
    values, wanted_ids, messages, renames, read_dest = keys.per_rep[rep]
    if run.classes.sharing[rep] == r:
        del keys.per_rep[rep]  # the last rank of the class: nobody asks for these again
    keys.wanted_by_rank.append(wanted_ids)
    with run.timer.phase("mismatch_scan"):
        keys.collector.add_rank(r, values, run.metadata, messages, renames, read_dest)


def _plan_rank(run: _LoadRun, r: int) -> None:
    """One rank's set up and local plan, as dcp.load runs them, then its keys against the checkpoint.

    Ranks viewed from a pipeline stage's template by DCP's own planner are planned outside any
    fake world (``engine/shortcuts/load_stage_templates.py``: nothing in that planning reads the
    process group); where that raises anything, the rank is planned again in its own world."""
    if run.world_free:
        with _DerivedVersionGuard():  # a failed try must not leave DCP's key-format fallback on
            attempt = _local_plan(run, r, world_free=True)
        if attempt is not None:
            _record_rank(run, r, *attempt)
            return
        run.world_retries += 1
    with fake_world(r, run.world_size):
        _record_rank(run, r, *_local_plan(run, r, world_free=False))


def retry_in_world(exc: BaseException) -> bool:
    """Whether a world-free try that raised ``exc`` is planned again in the rank's own world:
    always (a planner failure there is recorded, from the world's try)."""
    return True


def _local_plan(run: _LoadRun, r: int, world_free: bool) -> tuple | None:
    """Rank ``r``'s state dict, planner and local plan (or the planner's exception); None where
    a world-free try raised (the caller plans the rank again in its world)."""
    md = run.metadata
    classes, speed = run.classes, run.speed
    views = classes.template if isinstance(classes.template, LoadStageViews) else None
    if views is not None and classes.shortcuts:
        shapes = views.shapes.active()  # DTensor's local shapes, once per question for the load
    elif classes.shortcuts:
        shapes = fastpath.SharedLocalShapes().active()
    else:
        shapes = nullcontext()
    with shapes:
        t0 = time.perf_counter()
        speed.new_rank()
        try:
            state_dict = _rank_state(run, r, world_free)
        except Exception as exc:
            if world_free and retry_in_world(exc):
                return None
            raise
        t1 = time.perf_counter()
        p = run.make_planner()
        plan, error = None, None
        try:
            with speed.pruner.active() if speed.pruner is not None else nullcontext():
                p.set_up_planner(state_dict, md, r == 0)
                plan = p.create_local_plan()
        except Exception as exc:  # a planner failure is data
            if world_free and retry_in_world(exc):
                return None
            error = exc
        t2 = time.perf_counter()
    run.timer.add("build_state_dicts", t1 - t0)
    run.timer.add("local_plans", t2 - t1)
    return state_dict, p, plan, error


def _record_rank(
    run: _LoadRun, r: int, state_dict: dict, p: Any, plan: LoadPlan | None, error: Any
) -> None:
    """Record rank ``r``'s local plan (or its failure) and its keys against the checkpoint."""
    t0 = time.perf_counter()
    run.planners[r] = p
    if error is None:
        run.local[r] = plan
        run.local_records[r] = run.record(plan)
    else:
        run.log.fail("local", r, error)
    t1 = time.perf_counter()
    _check_keys(run, r, p, state_dict, error is not None)
    if run.speed.lean:
        _drop_state(p)
    run.timer.add("local_plans", t1 - t0)
    run.timer.add("mismatch_scan", time.perf_counter() - t1)


def _rank_state(run: _LoadRun, r: int, world_free: bool = False) -> dict[str, Any]:
    """Rank ``r``'s state dict (the template's view, or its own), storageless for the planner.
    ``world_free``: the stage view built outside any world (else, in the rank's world, the
    template view as ``fastpath.rank_view`` builds it)."""
    classes = run.classes
    views = classes.template if isinstance(classes.template, LoadStageViews) else None
    if world_free:
        # Storage-less as built: one DTensor per layout group, shared by its keys.
        state_dict = views.view(r, lambda v: to_storageless(v, run.mode, run.fakes))
        if r == 0:
            run.components = training_state_components(run.target, state_dict)
        return state_dict
    if views is not None:
        state_dict = views.plain_view(r)
    elif classes.template is not None:
        state_dict = fastpath.rank_view(classes.template, r, {})
    else:
        state_dict, n = rank_state_dict(run.target, r)
        run.rebound += n
    if r == 0:
        run.components = training_state_components(run.target, state_dict)
    return to_storageless(
        state_dict,
        run.mode,
        run.fakes if classes.shortcuts else None,
        {} if classes.shortcuts else None,
    )


def _drop_state(planner: Any) -> None:
    """Let go of the rank's state dict once its plan and keys are recorded (1024 ranks' state
    dicts would otherwise live until the end). Only for DefaultLoadPlanner itself, whose
    ``create_global_plan`` and ``finish_plan`` return the plans they are given and read no state
    (tests/test_load_fast_equals_plain.py compares the final plans with the plain path)."""
    if type(planner) is DefaultLoadPlanner:
        planner.state_dict, planner.original_state_dict, planner.mappings = {}, {}, {}


def _check_keys(run: _LoadRun, r: int, p: Any, state_dict: dict[str, Any], failed: bool) -> None:
    """Every key of rank ``r`` against the checkpoint, with DCP's own message where it fails."""
    flat = planner_view(p, state_dict)
    keys = run.keys
    value_of = (
        run.speed.target_values.value if run.speed.target_values is not None else target_value
    )
    values: list[TargetValue] = [value_of(k, v) for k, v in flat.items()]
    wanted_ids = tuple(keys.wanted.add(tv) for tv in values)
    keys.wanted_by_rank.append(wanted_ids)
    keys.wanted_fqns.update(flat)
    plan = run.local[r]
    renames, read_dest, read_src = read_facts(
        (ri.dest_index.fqn, ri.storage_index.fqn) for ri in (plan.items if plan is not None else ())
    )
    keys.read_storage_fqns |= read_src
    messages = None
    if failed:
        strict = not bool(getattr(p, "allow_partial_load", False))
        messages = dcp_key_messages(flat, run.metadata, strict)
    keys.collector.add_rank(r, values, run.metadata, messages, renames, read_dest)
    if r in run.classes.sharing:
        keys.per_rep[r] = (values, wanted_ids, messages, renames, read_dest)


def _local_step(run: _LoadRun, progress: bool | None) -> None:
    rep_of = run.classes.rep_of
    bar = progress_bar(len(set(rep_of.values())), "load plans", progress)
    for r in range(run.world_size):
        rep = rep_of[r]
        if rep != r:
            _share_plan(run, r, rep)
            continue
        _plan_rank(run, r)
        if run.collect_young is not None and r % YOUNG_GC_EVERY == YOUNG_GC_EVERY - 1:
            run.collect_young()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def _global_and_finish(
    run: _LoadRun,
) -> tuple[tuple[PlanRecord, ...] | None, tuple[PlanRecord, ...] | None]:
    """The coordinator's global plan and every rank's finish_plan, recorded."""
    W = run.world_size

    def one_plan_per_rank(plans: Any) -> None:
        if len(plans) != W:
            raise RuntimeError(f"create_global_plan returned {len(plans)} plans for {W} ranks")

    with run.timer.phase("global_plan"):
        global_plans, _exc = global_step(
            run.planners[0], run.local, W, run.log, check=one_plan_per_rank
        )
    if global_plans is None:
        return None, None
    global_records = tuple(run.record(gp) for gp in global_plans)
    with run.timer.phase("finish_plans"):
        # DefaultLoadPlanner.finish_plan returns the plan it is given and reads no world.
        finals = finish_step(
            lambda r: run.planners[r],
            global_plans,
            W,
            lambda r, final: run.record(final),
            run.log,
            per_rank_world=not all(type(p) is DefaultLoadPlanner for p in run.planners),
        )
    return global_records, finals


def _read_failures(
    run: _LoadRun, finals: tuple[PlanRecord, ...], unreadable: dict[tuple, tuple[str, str]]
) -> None:
    """A rank whose final plan reads a record whose data file is missing or too short fails in
    dcp.load's read phase (FileSystemReader, first such record it meets); a record no rank reads
    costs nothing. Sizes only: checkpoint.storage_shortfalls."""
    reads = run.reads.items
    hit: set[tuple] = set()
    for r, plan in enumerate(finals):
        bad = sorted(
            {(ri.storage_fqn or ri.fqn, ri.saved_offsets) for ri in (reads[i] for i in plan.items)}
            & unreadable.keys(),
            key=repr,
        )
        if not bad:
            continue
        hit.update(bad)
        exc_type, message = unreadable[bad[0]]
        more = f" (and {len(bad) - 1} more record(s) this rank reads)" if len(bad) > 1 else ""
        run.log.errors.append(
            ErrorRecord("read", r, exc_type, f"{message}{more}; dcp.load fails reading it.")
        )
    idle = len(unreadable.keys() - hit)
    if idle:
        run.log.notes.append(
            f"{idle} storage record(s) of the checkpoint point at a missing data file or past a file's end, "
            "but no rank of this load reads them, so dcp.load does not fail on them."
        )


def _closing_notes(run: _LoadRun, info: Any) -> None:
    log = run.log
    if info is not None and not info.is_dcp_default and log.errors:
        log.notes.append(
            "Messages in mismatches come from DCP's default per-key rules "
            "(create_default_local_load_plan); a custom planner may judge keys differently."
        )
    rebound_note(run.rebound, log)


@leaves_process_as_found
def plan_load(
    saved: Any,
    target: Scenario,
    planner: Any = None,
    *,
    progress: bool | None = None,
    fast: bool | None = None,
) -> tuple[LoadTrace, Any]:
    """Plan loading ``saved`` into ``target`` with DCP's real load planner on every target rank.

    ``saved``: a SavedTrace (what ``dcpviz.simulate_load`` makes of a SaveResult), a save-trace
    file, a checkpoint directory (only its metadata is read, safely) or DCP Metadata.
    ``target``: a dcpviz.Scenario. ``planner``: None (``DefaultLoadPlanner()``), a LoadPlanner
    instance (deep-copied per rank), class or factory. ``fast``: as in simulate_save — the
    shortcuts of ``engine.shortcuts.fastpath`` (one recipe run, one plan per class of ranks, memoised
    offsets) and ``engine.shortcuts.overlap`` (DCP's read planning on the saved chunks that can overlap)
    where they are exact; False plans every rank with DCP's full chunk scan. Returns the trace and the
    checkpoint's DCP Metadata; planner failures are in the trace's ``errors`` and
    ``mismatches``. ``dcpviz.simulate_load`` wraps them in a LoadResult.
    """
    target = check_target(target)
    # Reading the checkpoint allocates an object per saved chunk too: GC by hand from here on.
    with young_gc_only(fast is not False) as collect_young:
        return _plan_load(saved, target, planner, progress, fast, collect_young)


def _plan_load(
    saved: Any,
    target: Scenario,
    planner: Any,
    progress: bool | None,
    fast: bool | None,
    collect_young: Any,
) -> tuple[LoadTrace, Any]:
    ck = resolve_saved(saved)
    make_planner = planner_factory(planner, LoadPlanner, DefaultLoadPlanner)
    md = ck.metadata
    timer = Timer(("build_state_dicts", "local_plans", "mismatch_scan"))
    log = Log(notes=list(ck.notes))
    info = planner_info(make_planner(), DefaultLoadPlanner)
    run = _set_up(target, make_planner, md, fast, info, timer, log)
    run.collect_young = collect_young
    global_records = final_records = None
    with _DerivedVersionGuard():
        _local_step(run, progress)
        if all(p is not None for p in run.local):
            global_records, final_records = _global_and_finish(run)
            if final_records is not None and ck.unreadable:
                _read_failures(run, final_records, ck.unreadable)
        else:
            failing = sum(p is None for p in run.local)
            log.notes.append(
                f"The local plan failed on {failing} of {run.world_size} ranks, so (as in dcp.load, which raises "
                "a CheckpointException naming each failing rank) the coordinator never planned "
                "globally. mismatches lists every problem on every rank, with DCP's own message "
                "for each key it rejects."
            )
    _closing_notes(run, info)
    timer.add("total", sum(timer.totals.values()))
    trace = LoadTrace(
        scenario=replace(scenario_info(target), components=run.components),
        planner=info,
        saved=ck.info,
        saved_scenario=ck.scenario,
        saved_writers=ck.writers,
        reads=tuple(run.reads.items),
        local_plans=tuple(run.local_records),
        global_plans=global_records,
        final_plans=final_records,
        wanted=tuple(run.keys.wanted.items),
        wanted_by_rank=tuple(run.keys.wanted_by_rank),
        mismatches=run.keys.collector.records(md, run.keys.wanted_fqns, run.keys.read_storage_fqns),
        errors=tuple(log.errors),
        timings=tuple(timer.totals.items()),
        notes=tuple(log.notes),
        source="simulate",
        saved_source=ck.source,
        torch_version=torch_version(),
        dcpviz_version=__version__,
        created=now(),
    )
    return trace, md
