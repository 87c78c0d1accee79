"""simulate_load: DCP's real load planner, every rank of a target layout, in this one process.

For each target rank r: that rank's fake world, its real sharded state dict (the target
scenario's model and recipe, meshes rebound to r) with storage-less tensors, a fresh planner,
``set_up_planner(state_dict, metadata, is_coordinator)`` + ``create_local_plan()``. Then, as in
``dcp.load``: if every rank planned, the coordinator's ``create_global_plan`` and each rank's
``finish_plan``; if any rank failed, no global plan (dcp.load raises a CheckpointException
listing each failing rank). Planner failures are recorded, never raised; every mismatch on every
rank is collected besides (see ``mismatch.py``).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner

from .. import __version__
from ..components import state_components
from ..errors import DcpvizError
from ..scenario import Scenario
from ..trace import ErrorRecord, LoadTrace, PlanRecord, TargetValue
from . import fastpath
from .convert import ItemTable, planner_info
from .convert_load import load_plan_record, saved_itemsizes, target_value
from .mismatch import MismatchCollector, dcp_key_messages
from .overlap import ReadPruner
from .planners import planner_factory
from .saved import resolve_saved
from .simulate import _now, _torch_version, error_record, progress_bar, scenario_info
from .statedict import rank_state_dict
from .storageless import new_fake_mode, to_storageless
from .world import fake_world, leaves_process_as_found


def check_target(target: Any) -> Scenario:
    if isinstance(target, Scenario):
        return target
    from ..results import SaveResult

    swapped = " Did you swap the arguments? The order is simulate_load(saved, target)." if isinstance(
        target, (SaveResult, str)
    ) else ""
    raise DcpvizError(
        f"target={type(target).__name__} is not a dcpviz.Scenario. Describe the job that loads, "
        f"e.g. target=dcpviz.Scenario(model='mlp', world_size=6, recipe='fsdp').{swapped}"
    )


def planner_view(planner: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The flat key -> value mapping the planner plans from.

    DefaultLoadPlanner keeps it as ``planner.state_dict`` (flattened, and after
    ``create_local_plan`` possibly in the pre-2.4 key format it falls back to). For other
    planners, DCP's own flattening of the state dict.
    """
    view = getattr(planner, "state_dict", None)
    if isinstance(planner, DefaultLoadPlanner) and isinstance(view, dict):
        return view
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict
    from torch.distributed.checkpoint._sharded_tensor_utils import _flatten_sharded_tensors

    try:
        return flatten_state_dict(_flatten_sharded_tensors(state_dict))[0]
    except Exception:
        return dict(state_dict)


def _plan_renames(plan: LoadPlan | None) -> tuple[dict[str, str], set[str], set[str]]:
    """(target key -> checkpoint key where a planner renames, target keys read, checkpoint keys read)."""
    renames: dict[str, str] = {}
    dest: set[str] = set()
    src: set[str] = set()
    if plan is None:
        return renames, dest, src
    for ri in plan.items:
        dest.add(ri.dest_index.fqn)
        src.add(ri.storage_index.fqn)
        if ri.storage_index.fqn != ri.dest_index.fqn:
            renames[ri.dest_index.fqn] = ri.storage_index.fqn
    return renames, dest, src


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


@leaves_process_as_found
def simulate_load(
    saved: Any,
    target: Scenario,
    planner: Any = None,
    *,
    progress: bool | None = None,
    fast: bool | None = None,
):
    """Plan loading ``saved`` into ``target`` with DCP's real load planner on every target rank.

    ``saved``: a SaveResult, a save-trace file, a checkpoint directory (only its metadata is
    read, safely) or DCP Metadata. ``target``: a dcpviz.Scenario. ``planner``: None
    (``DefaultLoadPlanner()``), a LoadPlanner instance (deep-copied per rank), class or factory.
    ``fast``: as in simulate_save — the shortcuts of ``engine.fastpath`` (one recipe run, one
    plan per class of ranks, memoised offsets) and ``engine.overlap`` (DCP's read planning on
    the saved chunks that can overlap) where they are exact; False plans every rank with DCP's
    full chunk scan. Returns a LoadResult; planner failures are in its ``errors`` and ``mismatches``.
    """
    from ..results import LoadResult

    target = check_target(target)
    ck = resolve_saved(saved)
    make_planner = planner_factory(planner, LoadPlanner, DefaultLoadPlanner)
    md = ck.metadata
    sim = target if target.device == "meta" else target.replace(device="meta")
    W = target.world_size
    itemsizes = saved_itemsizes(md)
    mode = new_fake_mode()

    reads, wanted = ItemTable(), ItemTable()
    planners: list[Any] = [None] * W
    local: list[LoadPlan | None] = [None] * W
    local_records: list[PlanRecord | None] = [None] * W
    wanted_by_rank: list[tuple[int, ...]] = []
    collector = MismatchCollector()
    wanted_fqns: set[str] = set()
    read_storage_fqns: set[str] = set()
    errors: list[ErrorRecord] = []
    notes: list[str] = list(ck.notes)
    t_build = t_local = t_check = 0.0
    rebound = 0
    info = planner_info(make_planner(), DefaultLoadPlanner)
    template = None
    t0 = time.perf_counter()
    if fast is True or (fast is None and isinstance(sim.recipe, str)):
        template, rebound = fastpath.template_state_dict(sim, notes, check=not isinstance(sim.recipe, str))
    t_build += time.perf_counter() - t0
    # DCP's default load plan for a rank depends on its local chunks (its coordinates along
    # non-replicated dims) and the metadata, not on the rank itself: one plan per class.
    shortcuts = template is not None and info.is_dcp_default
    rep_of = {r: r for r in range(W)}
    if shortcuts:
        rep_of = fastpath.plan_classes(sim, fastpath.mattering_dims(template, tuple(sim.mesh_dim_names or ())))
        n_reps = len(set(rep_of.values()))
        if n_reps < W:
            notes.append(
                f"{n_reps} representative ranks planned for {W}: ranks that differ only along mesh dims "
                "where every DTensor is replicated share DCP's default load plan (exact; see engine/fastpath.py)."
            )
    # DCP's read planning on the saved chunks that can overlap (exact; see engine/overlap.py).
    pruner = ReadPruner(md) if fast is not False and info.is_dcp_default else None
    plan_memo: dict[int, PlanRecord] = {}
    parts: list[tuple[str, str]] = []  # rank 0's training-state components (components.py)
    fakes: dict = {}
    per_rep: dict[int, tuple] = {}  # rep -> (values, wanted ids, messages, renames, read_dest)
    bar = progress_bar(len(set(rep_of.values())), "load plans", progress)
    with _DerivedVersionGuard():
        for r in range(W):
            rep = rep_of[r]
            if rep != r:  # same plan and the same keys as its representative
                local[r], local_records[r], planners[r] = local[rep], local_records[rep], planners[rep]
                values, wanted_ids, messages, renames, read_dest = per_rep[rep]
                wanted_by_rank.append(wanted_ids)
                t2 = time.perf_counter()
                collector.add_rank(r, values, md, messages, renames, read_dest)
                t_check += time.perf_counter() - t2
                continue
            with fake_world(r, W), (fastpath.memoized_local_shapes() if shortcuts else nullcontext()):
                t0 = time.perf_counter()
                if template is not None:
                    state_dict = fastpath.rank_view(template, r, {})
                else:
                    state_dict, n = rank_state_dict(sim, r)
                    rebound += n
                state_dict = to_storageless(state_dict, mode, fakes if shortcuts else None)
                t1 = time.perf_counter()
                p = make_planner()
                planners[r] = p
                failed = False
                try:
                    with pruner.active() if pruner is not None else nullcontext():
                        p.set_up_planner(state_dict, md, r == 0)
                        plan = p.create_local_plan()
                    local[r] = plan
                    local_records[r] = load_plan_record(plan, reads, itemsizes, plan_memo)
                except Exception as exc:  # a planner failure is data
                    errors.append(error_record("local", r, exc))
                    failed = True
                t2 = time.perf_counter()
                flat = planner_view(p, state_dict)
                if r == 0 and (sim.optimizer is not None or sim.state is not None):
                    parts.extend(state_components(state_dict, sim.state is not None))
                values: list[TargetValue] = [target_value(k, v) for k, v in flat.items()]
                wanted_ids = tuple(wanted.add(tv) for tv in values)
                wanted_by_rank.append(wanted_ids)
                wanted_fqns.update(flat)
                renames, read_dest, read_src = _plan_renames(local[r])
                read_storage_fqns |= read_src
                messages = None
                if failed:
                    strict = not bool(getattr(p, "allow_partial_load", False))
                    messages = dcp_key_messages(flat, md, strict)
                collector.add_rank(r, values, md, messages, renames, read_dest)
                per_rep[r] = (values, wanted_ids, messages, renames, read_dest)
                t_build += t1 - t0
                t_local += t2 - t1
                t_check += time.perf_counter() - t2
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        timings = {"build_state_dicts": t_build, "local_plans": t_local, "mismatch_scan": t_check}

        global_records = final_records = None
        if all(p is not None for p in local):
            t0 = time.perf_counter()
            global_plans = None
            with fake_world(0, W):
                try:
                    global_plans = planners[0].create_global_plan(list(local))
                    if len(global_plans) != W:
                        raise RuntimeError(
                            f"create_global_plan returned {len(global_plans)} plans for {W} ranks"
                        )
                except Exception as exc:
                    errors.append(error_record("global", None, exc))
                    global_plans = None
            timings["global_plan"] = time.perf_counter() - t0
            if global_plans is not None:
                global_records = tuple(load_plan_record(gp, reads, itemsizes, plan_memo) for gp in global_plans)
                t0 = time.perf_counter()
                finals: list[PlanRecord] = []
                for r in range(W):
                    with fake_world(r, W):
                        try:
                            final = planners[r].finish_plan(global_plans[r])
                            finals.append(load_plan_record(final, reads, itemsizes, plan_memo))
                        except Exception as exc:
                            errors.append(error_record("finish", r, exc))
                            finals.append(PlanRecord(items=(), usable=False))
                final_records = tuple(finals)
                timings["finish_plans"] = time.perf_counter() - t0
        else:
            failing = sum(p is None for p in local)
            notes.append(
                f"The local plan failed on {failing} of {W} ranks, so (as in dcp.load, which raises "
                "a CheckpointException naming each failing rank) the coordinator never planned "
                "globally. mismatches lists every problem on every rank, with DCP's own message "
                "for each key it rejects."
            )
    if info is not None and not info.is_dcp_default and errors:
        notes.append(
            "Messages in mismatches come from DCP's default per-key rules "
            "(create_default_local_load_plan); a custom planner may judge keys differently."
        )
    if rebound:
        notes.append(
            f"{rebound} DTensors came back from DTensor's dispatch cache with another rank's mesh "
            "and were rebound to their own rank's mesh (one-process simulation hazard)."
        )
    timings["total"] = sum(timings.values())
    trace = LoadTrace(
        scenario=replace(scenario_info(target), components=tuple(parts)),
        planner=info,
        saved=ck.info,
        saved_scenario=ck.scenario,
        saved_writers=ck.writers,
        reads=tuple(reads.items),
        local_plans=tuple(local_records),
        global_plans=global_records,
        final_plans=final_records,
        wanted=tuple(wanted.items),
        wanted_by_rank=tuple(wanted_by_rank),
        mismatches=collector.records(md, wanted_fqns, read_storage_fqns),
        errors=tuple(errors),
        timings=tuple(timings.items()),
        notes=tuple(notes),
        source="simulate",
        saved_source=ck.source,
        torch_version=_torch_version(),
        dcpviz_version=__version__,
        created=_now(),
    )
    return LoadResult(trace, metadata=md)
