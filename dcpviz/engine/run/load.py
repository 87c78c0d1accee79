"""run_load: load a checkpoint into a target scenario for real — W processes, real reads.

The checkpoint is checked first in this process (``read_checkpoint``: restricted unpickler,
dangling references), and the workers read ``.metadata`` through the same restricted unpickler
(``SafeFileSystemReader``), never plain pickle. Each worker builds the target model on meta,
applies the recipe with a real process group, gives it storage filled with NaN (so anything the
load does not fill stands out) and runs ``dcp.load`` through a RecordingLoadPlanner. The
coordinator's LoadTrace is completed with every rank's own values, plans and mismatches.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from dcpviz.core.errors import DcpvizError
from dcpviz.core.trace import ErrorRecord, LoadTrace, PlanRecord
from dcpviz.core.version import __version__
from dcpviz.engine.capture.load import (
    RecordingLoadPlanner,
    mismatches_for,
    read_records_from_plain,
    record_facts,
    values_from_plain,
)
from dcpviz.engine.checkpoint.reader import SafeFileSystemReader, read_checkpoint
from dcpviz.engine.checkpoint.saved import resolve_saved
from dcpviz.engine.convert.shared import ItemTable, metadata_info, planner_info
from dcpviz.engine.job.recipes import apply_recipe
from dcpviz.engine.job.scenario import Scenario
from dcpviz.engine.job.statedict import build_mesh, build_model_on_meta
from dcpviz.engine.job.training_state import (
    make_optimizer,
    planner_state_dict,
    poison_optimizer,
    restore_after_load,
    saved_object,
)
from dcpviz.engine.planning.planners import planner_factory
from dcpviz.engine.planning.stamps import now, scenario_info, torch_version
from dcpviz.engine.run.launch import (
    DEFAULT_TIMEOUT_S,
    check_launch_options,
    digests_of,
    launch_recorded,
    resolve_device,
)
from dcpviz.engine.run.procs import RunInfo, check_main_guard
from dcpviz.engine.values.digests import chunk_digests, poison


def load_job(
    rank: int,
    world: int,
    report: Any,
    scenario: Scenario,
    planner: Any,
    checkpoint_dir: str,
    trace_path: str,
    device: str,
) -> dict[str, Any]:
    """Runs in each worker, inside the process group."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.planner import LoadPlanner

    report("build")
    model = apply_recipe(scenario.recipe, build_model_on_meta(scenario), build_mesh(scenario))
    target = (
        torch.device("cuda", torch.cuda.current_device())
        if device == "cuda"
        else torch.device("cpu")
    )
    model.to_empty(device=target)
    poison(model)
    optimizer = make_optimizer(scenario.optimizer, model)
    state_dict = saved_object(
        scenario, model, optimizer, rank
    )  # get_state_dict initialises the moments
    poison_optimizer(optimizer)
    report("load")
    rec = RecordingLoadPlanner(
        trace_path, planner_factory(planner, LoadPlanner, DefaultLoadPlanner)(), scenario=scenario
    )
    try:
        dcp.load(state_dict, storage_reader=SafeFileSystemReader(checkpoint_dir), planner=rec)
        restore_after_load(scenario, model, optimizer, state_dict)
    except BaseException as exc:
        exc.dcpviz_payload = {"record": rec.rank_record()}
        raise
    rec.complete()
    first = next(iter(model.parameters()), None)
    # What the job would save now: the model's and optimizer's state after the load.
    after = planner_state_dict(saved_object(scenario, model, optimizer, rank))
    return {
        "record": rec.rank_record(),
        "digests": chunk_digests(after),
        "device": str(first.device if first is not None else target),
    }


def run_load_trace(
    checkpoint_dir: str | os.PathLike[str],
    target_scenario: Scenario,
    planner: Any = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    start_method: str = "spawn",
    progress: bool | None = None,
) -> tuple[LoadTrace, Any, Any]:
    """Load the checkpoint in ``checkpoint_dir`` into ``target_scenario`` with ``world_size`` real
    processes (gloo on CPU, nccl for device 'cuda'), through a RecordingLoadPlanner. Returns
    (trace, Metadata, run info); ``dcpviz.run_load`` makes a LoadResult with the same tables as simulate_load (read items, mismatches, hints, volumes)
    and ``run_info`` (processes, per-rank phase times, digests of the chunks each rank loaded).
    A rank that fails (a missing key, a size mismatch) comes back in ``errors`` with its rank."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.planner import LoadPlanner

    check_launch_options(timeout, start_method)
    if not isinstance(target_scenario, Scenario):
        raise DcpvizError(
            f"run_load needs a dcpviz.Scenario as target_scenario, got {type(target_scenario).__name__}. "
            "The order is run_load(checkpoint_dir, target_scenario)."
        )
    check_main_guard(start_method, "run_load")
    root = Path(checkpoint_dir).resolve()
    checked = read_checkpoint(root)  # refuses planted / broken checkpoints before any worker starts
    scenario, backend, device = resolve_device(target_scenario)
    info = planner_info(
        planner_factory(planner, LoadPlanner, DefaultLoadPlanner)(), DefaultLoadPlanner
    )
    outcome, base = launch_recorded(
        load_job, scenario, planner, root, backend, device, timeout, start_method, progress
    )
    trace = assemble_load_trace(
        scenario,
        info,
        base,
        outcome.payloads,
        list(outcome.errors),
        checked.metadata,
        root,
        outcome.info,
    )
    outcome.info.chunk_digests = digests_of(outcome.payloads)
    return trace, checked.metadata, outcome.info


def assemble_load_trace(
    scenario: Scenario,
    info: Any,
    base: LoadTrace | None,
    payloads: dict[int, dict[str, Any]],
    errors: list[ErrorRecord],
    md: Any,
    root: Path,
    run: RunInfo,
) -> LoadTrace:
    """The coordinator's LoadTrace, completed with every rank's values, plans and mismatches."""

    W = scenario.world_size
    saved = resolve_saved(md)
    reads, wanted = ItemTable(), ItemTable()
    local: list[PlanRecord | None] = []
    finals: list[PlanRecord | None] = []
    wanted_by_rank: list[tuple[int, ...]] = []
    per_rank: dict[int, tuple] = {}
    read_src: set[str] = set()
    for r in range(W):
        rec = (payloads.get(r) or {}).get("record") or {}
        values = values_from_plain(rec.get("values") or [])
        own = read_records_from_plain(rec.get("local"))
        fin = read_records_from_plain(rec.get("final"))
        local.append(
            PlanRecord(items=tuple(reads.add(x) for x in own)) if own is not None else None
        )
        finals.append(
            PlanRecord(items=tuple(reads.add(x) for x in fin)) if fin is not None else None
        )
        wanted_by_rank.append(tuple(wanted.add(v) for v in values))
        if rec:
            per_rank[r] = (values, rec.get("messages"), own)
        read_src |= record_facts(own)[2]
    if base is not None and base.global_plans is not None:
        global_plans = tuple(
            PlanRecord(items=tuple(reads.add(base.reads[i]) for i in p.items))
            for p in base.global_plans
        )
    else:
        global_plans = None
    notes = [
        f"Real run: {W} processes, backend {run.backend}, device {run.device}, dcp.load from "
        f"{root.name!r} through RecordingLoadPlanner, .metadata read with dcpviz's restricted unpickler.",
        "Values, local and final plans are each rank's own; the global plans are the coordinator's. "
        "Tensors started as NaN, so chunk digests show what the load filled.",
    ]
    if base is not None:
        mismatched = [
            r
            for r in range(W)
            if local[r] is not None
            and base.local_plans[r] is not None
            and [reads.items[i] for i in local[r].items]
            != [base.reads[i] for i in base.local_plans[r].items]
        ]
        if mismatched:
            errors.append(
                ErrorRecord(
                    "record",
                    None,
                    "RecordingMismatch",
                    f"ranks {mismatched}: the local plan a rank made differs from the one "
                    "the coordinator received",
                )
            )
    if not all(f is not None for f in finals):
        finals_t = None
        if all(p is not None for p in local):
            notes.append("Not every rank reached finish_plan: no final plans are shown.")
    else:
        finals_t = tuple(finals)
    if any(p is None for p in local):
        failing = [r for r in range(W) if local[r] is None]
        notes.append(
            f"The local plan failed on ranks {failing}, so (as dcp.load does) the coordinator never "
            "planned globally; mismatches lists every problem on every rank, with DCP's own message."
        )
    devices = sorted({p["device"] for p in payloads.values() if p.get("device")})
    if devices:
        notes.append(f"Parameters lived on {', '.join(devices)} while loading.")
    timings = dict(base.timings) if base is not None else {}
    timings["run_wall"] = run.wall_s
    return LoadTrace(
        scenario=dataclasses.replace(
            scenario_info(scenario), components=base.scenario.components if base is not None else ()
        ),
        planner=base.planner if base is not None else info,
        saved=metadata_info(md),
        saved_scenario=None,
        saved_writers=saved.writers,
        reads=tuple(reads.items),
        local_plans=tuple(local),
        global_plans=global_plans,
        final_plans=finals_t,
        wanted=tuple(wanted.items),
        wanted_by_rank=tuple(wanted_by_rank),
        mismatches=mismatches_for(md, per_rank, read_src),
        errors=tuple(errors),
        timings=tuple(timings.items()),
        notes=tuple(notes),
        source="run",
        saved_source=f"checkpoint {str(root)!r}",
        torch_version=torch_version(),
        dcpviz_version=__version__,
        created=now(),
    )
