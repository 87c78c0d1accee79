"""simulate_save: DCP's real save planner, every rank of a W-rank job, in this one process.

For each rank r: that rank's fake world, its real sharded state dict (meta tensors), a fresh
planner, ``set_up_planner`` + ``create_local_plan``. Then the coordinator's
``create_global_plan`` over all local plans (dedup, metadata, validation), then each rank's
``finish_plan``, in the order ``dcp.save`` calls them. Failures are recorded, not raised.
At scale, ``fastpath`` shortcuts (exact for DCP's default planner) avoid repeated work.
"""

from __future__ import annotations

import datetime as _dt
import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner

from .. import __version__
from ..components import state_components
from ..errors import DcpvizError
from ..scenario import Scenario
from ..trace import ErrorRecord, PlanRecord, SaveTrace, ScenarioInfo
from . import fastpath
from .convert import PlanConverter, byte_item_sizes, metadata_info, planner_info, tensor_layouts
from .planners import isolated_plan_cache, planner_factory, set_up_save_planner
from .statedict import rank_state_dict
from .validation import fast_validation
from .world import fake_world, leaves_process_as_found


def scenario_info(scenario: Scenario) -> ScenarioInfo:
    d = scenario.describe()
    return ScenarioInfo(
        model=d["model"], world_size=d["world_size"], mesh=tuple(d["mesh"]),
        mesh_dim_names=tuple(d["mesh_dim_names"]), recipe=d["recipe"], dtype=d["dtype"], device=d["device"],
        optimizer=d["optimizer"], state=d["state"],
    )


def error_record(phase: str, rank: int | None, exc: BaseException) -> ErrorRecord:
    return ErrorRecord(phase=phase, rank=rank, exc_type=type(exc).__name__, message=str(exc))


def progress_bar(total: int, desc: str, progress: bool | None):
    """tqdm.auto (a widget in notebooks, a bar in terminals) when there are more than a few ranks."""
    show = total > 8 if progress is None else progress
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rank", leave=False)


def unvalidated_global_plan(planner: Any, local_plans: list[SavePlan]) -> tuple[list[SavePlan], Any] | None:
    """What DCP's default coordinator built before validation rejected it, using DCP's own
    functions, so a failed plan can still be looked at. Only for DefaultSavePlanner kin."""
    from torch.distributed.checkpoint.default_planner import create_default_global_save_plan

    if not isinstance(planner, DefaultSavePlanner):
        return None
    try:
        return create_default_global_save_plan(planner._dedup_save_plans(local_plans))
    except Exception:
        return None


class _Timer:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds


@leaves_process_as_found
def simulate_save(
    scenario: Scenario,
    planner: Any = None,
    *,
    progress: bool | None = None,
    fast: bool | None = None,
):
    """Plan a save of ``scenario`` with DCP's real planner on every rank; return a SaveResult.

    ``planner``: a SavePlanner instance (copied per rank), class, or factory; default
    ``DefaultSavePlanner()``. ``fast``: None (default) uses the exact shortcuts of
    ``engine.fastpath`` where they apply (named recipes, DCP's default planner); True also
    trusts a callable recipe to be SPMD (checked on sample ranks); False runs the recipe and
    the planner on every rank, and DCP's validation on the real metadata only (by default DCP's
    validation first runs on stretched metadata, ``engine.validation``).
    """
    from ..results import SaveResult

    if not isinstance(scenario, Scenario):
        raise DcpvizError(f"simulate_save needs a dcpviz.Scenario, got {type(scenario).__name__}.")
    make_planner = planner_factory(planner, SavePlanner, DefaultSavePlanner)
    W = scenario.world_size
    timer = _Timer()
    errors: list[ErrorRecord] = []
    notes: list[str] = []
    conv = PlanConverter()
    t_start = time.perf_counter()

    with isolated_plan_cache():
        probe = make_planner()
        info = planner_info(probe, DefaultSavePlanner)
        template = None
        rebound = 0
        # The recipe runs once and other ranks get rank 0's state dict rebound, when the recipe
        # is known to be SPMD (the named ones are); a user's recipe runs on every rank unless
        # fast=True.
        if (fast is True or (fast is None and isinstance(scenario.recipe, str))) and fastpath.plans_leaves(probe):
            t0 = time.perf_counter()
            template, rebound = fastpath.template_state_dict(scenario, notes, check=not isinstance(scenario.recipe, str))
            timer.add("build_state_dicts", time.perf_counter() - t0)
        rep_of = {r: r for r in range(W)}
        shortcuts = template is not None and fastpath.can_share_plans(probe)
        if shortcuts:
            dims = fastpath.mattering_dims(template, tuple(scenario.mesh_dim_names or ()))
            rep_of = fastpath.plan_classes(scenario, dims)
        reps = sorted(set(rep_of.values()))
        if len(reps) < W:
            notes.append(
                f"{len(reps)} representative ranks planned for {W}: ranks that differ only along mesh dims "
                "where every DTensor is replicated share DCP's default local plan (exact; see engine/fastpath.py)."
            )

        planners: dict[int, Any] = {}
        parts: list[tuple[str, str]] = []  # rank 0's training-state components (components.py)
        local_by_rep: dict[int, SavePlan] = {}
        sizes_by_rep: dict[int, dict[str, int]] = {}
        layouts: tuple = ()

        def plan_rank(r: int) -> tuple[SavePlan | None, dict[str, int], ErrorRecord | None, tuple, int, float, float]:
            """One rank's local step, as dcp.save runs it."""
            with fake_world(r, W):
                t0 = time.perf_counter()
                n = 0
                if template is not None:
                    state_dict = fastpath.rank_view(template, r, {})
                else:
                    state_dict, n = rank_state_dict(scenario, r)
                lay = tensor_layouts(state_dict) if r == 0 else ()
                if r == 0 and (scenario.optimizer is not None or scenario.state is not None):
                    parts.extend(state_components(state_dict, scenario.state is not None))
                t1 = time.perf_counter()
                p = make_planner()
                planners[r] = p
                try:
                    # no_grad changes no plan; it spares DTensor.to_local an autograd node per item.
                    with torch.no_grad(), (fastpath.memoized_local_shapes() if shortcuts else nullcontext()):
                        set_up_save_planner(p, state_dict, is_coordinator=(r == 0))
                        plan = p.create_local_plan()
                    return plan, byte_item_sizes(p, plan.items), None, lay, n, t1 - t0, time.perf_counter() - t1
                except Exception as exc:  # a planner failure is data
                    return None, {}, error_record("local", r, exc), lay, n, t1 - t0, time.perf_counter() - t1

        bar = progress_bar(len(reps), "local plans", progress)
        for r in reps:
            plan, sizes, err, lay, n, t_build, t_plan = plan_rank(r)
            if bar is not None:
                bar.update(1)
            rebound += n
            timer.add("build_state_dicts", t_build)
            timer.add("local_plans", t_plan)
            if lay:
                layouts = lay
            if err is not None:
                errors.append(err)
                continue
            local_by_rep[r] = plan
            sizes_by_rep[r] = sizes
            t0 = time.perf_counter()
            conv.record(plan, sizes)
            timer.add("convert", time.perf_counter() - t0)
        if bar is not None:
            bar.close()
        local: list[SavePlan | None] = [local_by_rep.get(rep_of[r]) for r in range(W)]
        local_records: list[PlanRecord | None] = [conv.record(p) if p is not None else None for p in local]

        global_records = final_records = None
        md = None
        validated = True
        if all(p is not None for p in local):
            t0 = time.perf_counter()
            # DCP's validation on metadata stretched so its sweep prunes (exact; engine/validation.py).
            checks = fast_validation() if fast is not False and info.is_dcp_default else nullcontext()
            with fake_world(0, W), checks:
                try:
                    global_plans, md = planners[0].create_global_plan(list(local))
                except Exception as exc:
                    errors.append(error_record("global", None, exc))
                    validated = False
                    global_plans = None
                    fallback = unvalidated_global_plan(planners[0], list(local))
                    if fallback is not None:
                        global_plans, md = fallback
                        notes.append(
                            "The coordinator rejected the global plan; the global plan and metadata "
                            "shown are DCP's dedup + create_default_global_save_plan output before "
                            "validation (what was planned so far)."
                        )
            timer.add("global_plan", time.perf_counter() - t0)
            if global_plans is not None:
                t0 = time.perf_counter()
                # BYTE_IO sizes follow each item to the rank that writes it (as in run_save).
                global_records = tuple(
                    conv.record(p, sizes_by_rep.get(rep_of[r])) for r, p in enumerate(global_plans)
                )
                timer.add("convert", time.perf_counter() - t0)
            if validated and global_plans is not None:
                t0 = time.perf_counter()
                finals: list[PlanRecord] = []
                for r in range(W):
                    try:
                        if len(reps) < W:
                            # Shared planners: DefaultSavePlanner.finish_plan returns the plan
                            # it is given; no per-rank world needed.
                            final = planners[rep_of[r]].finish_plan(global_plans[r])
                        else:
                            with fake_world(r, W):
                                final = planners[r].finish_plan(global_plans[r])
                        finals.append(conv.record(final, sizes_by_rep.get(rep_of[r])))
                    except Exception as exc:
                        errors.append(error_record("finish", r, exc))
                        finals.append(PlanRecord(items=(), usable=False))
                final_records = tuple(finals)
                timer.add("finish_plans", time.perf_counter() - t0)
        else:
            notes.append("A local plan failed, so (as in dcp.save) the coordinator never planned globally.")

    if rebound:
        notes.append(
            f"{rebound} DTensors came back from DTensor's dispatch cache with another rank's mesh "
            "and were rebound to their own rank's mesh (one-process simulation hazard)."
        )
    t0 = time.perf_counter()
    md_info = metadata_info(md) if md is not None else None
    timer.add("convert", time.perf_counter() - t0)
    timer.add("total", time.perf_counter() - t_start)
    trace = SaveTrace(
        scenario=replace(scenario_info(scenario), components=tuple(parts)),
        planner=info,
        items=tuple(conv.items),
        local_plans=tuple(local_records),
        global_plans=global_records,
        final_plans=final_records,
        metadata=md_info,
        errors=tuple(errors),
        global_plan_validated=validated,
        timings=tuple(timer.totals.items()),
        notes=tuple(notes),
        layouts=layouts,
        source="simulate",
        torch_version=_torch_version(),
        dcpviz_version=__version__,
        created=_now(),
    )
    return SaveResult(trace, metadata=md)


def _torch_version() -> str:
    import torch

    return torch.__version__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
