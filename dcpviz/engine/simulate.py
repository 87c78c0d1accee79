"""simulate_save: DCP's real save planner, every rank of a W-rank job, in this one process.

For each rank r: that rank's fake world, its real sharded state dict (meta tensors), a fresh
planner, ``set_up_planner`` + ``create_local_plan``. Then the coordinator's
``create_global_plan`` over all local plans (dedup, metadata, validation), then each rank's
``finish_plan``, in the order ``dcp.save`` calls them. Failures are recorded, not raised.
"""

from __future__ import annotations

import datetime as _dt
import io
import time
from typing import Any

from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItemType

from .. import __version__
from ..scenario import Scenario
from ..trace import ErrorRecord, PlanRecord, SaveTrace, ScenarioInfo
from .convert import ItemTable, metadata_info, planner_info, save_plan_record, tensor_layouts
from .planners import isolated_plan_cache, planner_factory, set_up_save_planner
from .statedict import rank_state_dict
from .world import fake_world


def scenario_info(scenario: Scenario) -> ScenarioInfo:
    d = scenario.describe()
    return ScenarioInfo(
        model=d["model"],
        world_size=d["world_size"],
        mesh=tuple(d["mesh"]),
        mesh_dim_names=tuple(d["mesh_dim_names"]),
        recipe=d["recipe"],
        dtype=d["dtype"],
        device=d["device"],
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


def byte_item_sizes(planner: Any, plan: SavePlan) -> dict[str, int]:
    """Serialised length of each BYTE_IO item, from the planner's own resolve_data."""
    sizes: dict[str, int] = {}
    for wi in plan.items:
        if wi.type == WriteItemType.BYTE_IO and wi.index.fqn not in sizes:
            try:
                data = planner.resolve_data(wi)
                sizes[wi.index.fqn] = data.getbuffer().nbytes if isinstance(data, io.BytesIO) else 0
            except Exception:
                sizes[wi.index.fqn] = 0
    return sizes


def unvalidated_global_plan(planner: Any, local_plans: list[SavePlan]) -> tuple[list[SavePlan], Any] | None:
    """What DCP's default coordinator built before validation rejected it, using DCP's own
    functions, so a failed plan can still be looked at. Only for DefaultSavePlanner kin."""
    from torch.distributed.checkpoint.default_planner import create_default_global_save_plan

    if not isinstance(planner, DefaultSavePlanner):
        return None
    try:
        deduped = planner._dedup_save_plans(local_plans)
        return create_default_global_save_plan(deduped)
    except Exception:
        return None


def simulate_save(
    scenario: Scenario,
    planner: Any = None,
    *,
    progress: bool | None = None,
):
    """Plan a save of ``scenario`` with DCP's real planner on every rank; return a SaveResult."""
    from ..results import SaveResult

    if not isinstance(scenario, Scenario):
        from ..errors import DcpvizError

        raise DcpvizError(f"simulate_save needs a dcpviz.Scenario, got {type(scenario).__name__}.")
    make_planner = planner_factory(planner, SavePlanner, DefaultSavePlanner)
    W = scenario.world_size
    timings: dict[str, float] = {}
    errors: list[ErrorRecord] = []
    notes: list[str] = []
    table = ItemTable()
    planners: list[Any] = [None] * W
    local: list[SavePlan | None] = [None] * W
    local_records: list[PlanRecord | None] = [None] * W
    sizes: list[dict[str, int]] = [{} for _ in range(W)]
    rebound = 0
    layouts: tuple = ()
    t_build = t_local = 0.0
    info = None
    bar = progress_bar(W, "local plans", progress)
    with isolated_plan_cache():
        for r in range(W):
            with fake_world(r, W):
                t0 = time.perf_counter()
                state_dict, n = rank_state_dict(scenario, r)
                rebound += n
                if r == 0:
                    layouts = tensor_layouts(state_dict)
                t1 = time.perf_counter()
                p = make_planner()
                if info is None:
                    info = planner_info(p, DefaultSavePlanner)
                planners[r] = p
                try:
                    set_up_save_planner(p, state_dict, is_coordinator=(r == 0))
                    plan = p.create_local_plan()
                    local[r] = plan
                    sizes[r] = byte_item_sizes(p, plan)
                    local_records[r] = save_plan_record(plan, table, sizes[r])
                except Exception as exc:  # a planner failure is data
                    errors.append(error_record("local", r, exc))
                t_build += t1 - t0
                t_local += time.perf_counter() - t1
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        timings["build_state_dicts"] = t_build
        timings["local_plans"] = t_local

        global_records = final_records = None
        md = None
        validated = True
        if all(p is not None for p in local):
            t0 = time.perf_counter()
            with fake_world(0, W):
                try:
                    global_plans, md = planners[0].create_global_plan(list(local))
                except Exception as exc:
                    errors.append(error_record("global", None, exc))
                    validated = False
                    fallback = unvalidated_global_plan(planners[0], list(local))
                    global_plans = None
                    if fallback is not None:
                        global_plans, md = fallback
                        notes.append(
                            "The coordinator rejected the global plan; the global plan and metadata "
                            "shown are DCP's dedup + create_default_global_save_plan output before "
                            "validation (what was planned so far)."
                        )
            timings["global_plan"] = time.perf_counter() - t0
            if global_plans is not None:
                # BYTE_IO sizes follow each item to the rank that writes it (as in run_save).
                global_records = tuple(
                    save_plan_record(p, table, sizes[r]) for r, p in enumerate(global_plans)
                )
            if validated and global_plans is not None:
                t0 = time.perf_counter()
                finals: list[PlanRecord] = []
                for r in range(W):
                    with fake_world(r, W):
                        try:
                            final = planners[r].finish_plan(global_plans[r])
                            finals.append(save_plan_record(final, table, sizes[r]))
                        except Exception as exc:
                            errors.append(error_record("finish", r, exc))
                            finals.append(PlanRecord(items=(), usable=False))
                final_records = tuple(finals)
                timings["finish_plans"] = time.perf_counter() - t0
        else:
            notes.append("A local plan failed, so (as in dcp.save) the coordinator never planned globally.")

    if rebound:
        notes.append(
            f"{rebound} DTensors came back from DTensor's dispatch cache with another rank's mesh "
            "and were rebound to their own rank's mesh (one-process simulation hazard)."
        )
    timings["total"] = sum(timings.values())
    trace = SaveTrace(
        scenario=scenario_info(scenario),
        planner=info,
        items=tuple(table.items),
        local_plans=tuple(local_records),
        global_plans=global_records,
        final_plans=final_records,
        metadata=metadata_info(md) if md is not None else None,
        errors=tuple(errors),
        global_plan_validated=validated,
        timings=tuple(timings.items()),
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

