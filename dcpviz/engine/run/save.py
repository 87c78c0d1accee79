"""run_save: the scenario as a real job — W processes, real tensors, real files, real dcp.save.

Each worker builds the scenario's model on meta, applies the recipe with a real process group,
gives the shards real storage and their initialisers, and saves through a
RecordingSavePlanner. The coordinator's trace is the backbone; the parent then adds what only
the other ranks know (their own local plans with BYTE_IO sizes, their final plans) and the
storage facts from the checkpoint's ``.metadata`` (read with dcpviz's restricted unpickler).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.storage import StorageWriter

from dcpviz.core.errors import CheckpointError, DcpvizError
from dcpviz.core.trace import ErrorRecord, PlannedItem, PlanRecord, SaveTrace
from dcpviz.core.version import __version__
from dcpviz.engine.capture.save import RecordingSavePlanner, planned_items_from_plain
from dcpviz.engine.checkpoint.reader import read_metadata
from dcpviz.engine.convert.shared import ItemTable, metadata_info, planner_info
from dcpviz.engine.job.recipes import apply_recipe
from dcpviz.engine.job.scenario import Scenario
from dcpviz.engine.job.statedict import build_mesh, build_model_on_meta
from dcpviz.engine.job.training_state import (
    make_optimizer,
    planner_state_dict,
    saved_object,
    step_optimizer,
)
from dcpviz.engine.planning.planners import planner_factory
from dcpviz.engine.planning.stamps import now, scenario_info, torch_version
from dcpviz.engine.run.launch import (
    DEFAULT_TIMEOUT_S,
    check_launch_options,
    check_picklable,
    digests_of,
    launch_recorded,
    resolve_device,
)
from dcpviz.engine.run.procs import RunInfo, check_main_guard
from dcpviz.engine.storage.hf_facts import folder_file_plan
from dcpviz.engine.storage.writer_plan import writer_info
from dcpviz.engine.values.digests import chunk_digests
from dcpviz.engine.values.materialize import materialize

# -- choosing where to run -------------------------------------------------------------------


def _check_empty_dir(path: Path) -> None:
    """Refuse a file or a non-empty directory; creates nothing (a refused run leaves no trace)."""
    if path.exists() and not path.is_dir():
        raise DcpvizError(f"checkpoint_dir={str(path)!r} is a file; pass a new or empty directory.")
    if path.exists() and any(path.iterdir()):
        raise DcpvizError(
            f"checkpoint_dir={str(path)!r} is not empty. Pass a new or empty directory: DCP would "
            "replace .metadata but leave data files of an earlier save next to the new ones."
        )


@dataclass(frozen=True)
class RunDir:
    """The checkpoint directory of a run, and the directories run_save created for it (so a
    run that writes nothing can take them away again)."""

    path: Path
    created: tuple[Path, ...]

    @classmethod
    def create(cls, path: Path) -> RunDir:
        """Create the checkpoint directory (remembering whether it existed before)."""
        missing, p = [], path.absolute()
        while not p.exists():
            missing.append(p)
            p = p.parent
        path.mkdir(parents=True, exist_ok=True)
        return cls(path.resolve(), tuple(missing))

    def remove_if_unused(self) -> None:
        """Remove what ``create`` made, innermost first, as long as it is still empty."""
        for d in self.created:
            try:
                d.rmdir()
            except OSError:  # not empty (the run wrote something) or already gone
                return


# -- the worker's job ------------------------------------------------------------------------


def save_job(
    rank: int,
    world: int,
    report: Any,
    scenario: Scenario,
    planner: Any,
    checkpoint_dir: str,
    trace_path: str,
    device: str,
    storage_writer: Any = None,
) -> dict[str, Any]:
    """Runs in each worker, inside the process group (``storage_writer``: each rank's own copy
    of the user's writer, as a real job builds one per rank; None: DCP's FileSystemWriter)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import SavePlanner

    report("build")
    mesh = build_mesh(scenario)
    model = apply_recipe(scenario.recipe, build_model_on_meta(scenario), mesh)
    target = (
        torch.device("cuda", torch.cuda.current_device())
        if device == "cuda"
        else torch.device("cpu")
    )
    materialize(model, target)
    optimizer = make_optimizer(scenario.optimizer, model)
    if optimizer is not None:
        step_optimizer(model, optimizer)  # real moments on real tensors
    state = saved_object(scenario, model, optimizer, rank)
    report("save")
    rec = RecordingSavePlanner(
        trace_path, planner_factory(planner, SavePlanner, DefaultSavePlanner)(), scenario=scenario
    )
    try:
        if storage_writer is not None:
            md = dcp.save(state, storage_writer=storage_writer, planner=rec)
        else:
            md = dcp.save(state, checkpoint_id=checkpoint_dir, planner=rec)
    except BaseException as exc:
        exc.dcpviz_payload = {"record": rec.rank_record()}
        raise
    rec.complete(md)
    first = next(iter(model.parameters()), None)
    return {
        "record": rec.rank_record(),
        "device": str(first.device if first is not None else target),
        "digests": chunk_digests(
            planner_state_dict(saved_object(scenario, model, optimizer, rank))
        ),
    }


# -- the parent ------------------------------------------------------------------------------
def run_save_trace(
    scenario: Scenario,
    checkpoint_dir: str | os.PathLike[str],
    planner: Any = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    start_method: str = "spawn",
    progress: bool | None = None,
    storage_writer: Any = None,
) -> tuple[SaveTrace, Any, Any]:
    """Save ``scenario`` for real: ``world_size`` processes (gloo on CPU; nccl when
    ``scenario.device == 'cuda'``), ``dcp.save`` into ``checkpoint_dir`` (new or empty) through
    a RecordingSavePlanner. Returns (trace, Metadata, run info); ``dcpviz.run_save`` makes a SaveResult: the plans (same tables as simulate_save) plus
    ``storage``, ``files`` and ``storage_volume`` from the checkpoint written, and ``run_info``.
    A worker that raises, dies or times out gives a result whose ``errors`` name the rank; all
    processes are stopped and the port freed whatever happens (also on Ctrl-C).

    ``storage_writer``: a StorageWriter whose path is ``checkpoint_dir`` (e.g.
    ``HuggingFaceStorageWriter(checkpoint_dir)``); every rank saves through its own copy. A writer
    that writes no ``.metadata`` (the HF writer) gets its storage facts from the folder's
    safetensors headers: the trace's ``file_plan`` (``engine.storage.hf_facts``)."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import SavePlanner

    check_launch_options(timeout, start_method)
    if not isinstance(scenario, Scenario):
        raise DcpvizError(f"run_save needs a dcpviz.Scenario, got {type(scenario).__name__}.")
    check_main_guard(start_method, "run_save")
    scenario, backend, device = resolve_device(scenario)
    info = planner_info(
        planner_factory(planner, SavePlanner, DefaultSavePlanner)(), DefaultSavePlanner
    )
    _check_empty_dir(Path(checkpoint_dir))
    check_picklable(
        model=scenario.model,
        recipe=scenario.recipe,
        planner=planner,
        optimizer=scenario.optimizer,
        state=scenario.state,
        storage_writer=storage_writer,
    )
    if storage_writer is not None:
        check_writer_path(storage_writer, Path(checkpoint_dir))
    # Created only now that every check passed; taken away again if the run writes nothing.
    run_dir = RunDir.create(Path(checkpoint_dir))
    root = run_dir.path
    try:
        outcome, base = launch_recorded(
            save_job,
            scenario,
            planner,
            root,
            backend,
            device,
            timeout,
            start_method,
            progress,
            extra=(storage_writer,),
        )
    except BaseException:
        run_dir.remove_if_unused()
        raise
    if not outcome.ok:
        run_dir.remove_if_unused()
    md = None
    errors = list(outcome.errors)
    if outcome.ok and (storage_writer is None or (root / ".metadata").is_file()):
        md = read_metadata(root)
    trace = assemble_save_trace(
        scenario, info, base, outcome.payloads, errors, md, root, outcome.info
    )
    if storage_writer is not None:
        trace = with_writer_files(
            trace, storage_writer, root if outcome.ok and md is None else None
        )
    outcome.info.chunk_digests = digests_of(outcome.payloads)
    return trace, md, outcome.info


def check_writer_path(writer: Any, checkpoint_dir: Path) -> None:
    """The writer must write into ``checkpoint_dir`` (the folder run_save checks and reads)."""
    if not isinstance(writer, StorageWriter):
        raise DcpvizError(
            f"storage_writer must be a torch.distributed.checkpoint StorageWriter "
            f"instance, got {type(writer).__name__}."
        )
    out = getattr(writer, "consolidated_output_path", None) or getattr(writer, "path", None)
    if out is None or Path(str(out)).absolute() != checkpoint_dir.absolute():
        raise DcpvizError(
            f"storage_writer writes into {str(out)!r}, not checkpoint_dir="
            f"{str(checkpoint_dir)!r}: build it with the same folder, e.g. "
            f"HuggingFaceStorageWriter({str(checkpoint_dir)!r})."
        )


def with_writer_files(trace: SaveTrace, writer: Any, folder: Path | None) -> SaveTrace:
    """The trace with the writer's info and, for a writer that wrote no .metadata, the files it
    left in ``folder`` as read from their safetensors headers."""
    trace = dataclasses.replace(trace, storage_writer=writer_info(writer))
    if folder is None:
        return trace
    try:
        rows, note = folder_file_plan(folder, trace)
    except CheckpointError as exc:
        err = ErrorRecord("storage", None, "StorageUnreadable", f"no storage facts: {exc}")
        return dataclasses.replace(trace, errors=trace.errors + (err,))
    return dataclasses.replace(trace, file_plan=rows, notes=trace.notes + (note,))


def _rank_items(
    payloads: dict[int, dict[str, Any]], rank: int, key: str
) -> list[PlannedItem] | None:
    rec = (payloads.get(rank) or {}).get("record") or {}
    return planned_items_from_plain(rec.get(key))


def assemble_save_trace(
    scenario: Scenario,
    info: Any,
    base: SaveTrace | None,
    payloads: dict[int, dict[str, Any]],
    errors: list[ErrorRecord],
    md: Any,
    root: Path,
    run: RunInfo,
) -> SaveTrace:
    """The coordinator's trace, completed with every rank's own facts and the storage facts."""

    W = scenario.world_size
    table = ItemTable()
    notes = [
        f"Real run: {W} processes, backend {run.backend}, device {run.device}, dcp.save into "
        f"{root.name!r} through RecordingSavePlanner.",
        "Local and final plans are each rank's own (reported by its recording planner); the global "
        "plans and metadata are the coordinator's.",
    ]
    local, byte_sizes = _local_plans(payloads, base, table, W)
    if base is not None:
        errors += _local_mismatch(base, table, local)
    global_plans = None
    if base is not None and base.global_plans is not None:
        global_plans = tuple(
            _remap(base, p, table, byte_sizes.get(r, {})) for r, p in enumerate(base.global_plans)
        )
    finals = [_rank_items(payloads, r, "final") for r in range(W)]
    final_plans = None
    if all(f is not None for f in finals):
        final_plans = tuple(PlanRecord(items=tuple(table.add(i) for i in f)) for f in finals)
    elif base is not None:
        notes.append("Not every rank reached finish_plan: no final plans are shown.")
    devices = sorted({p["device"] for p in payloads.values() if p.get("device")})
    if devices:
        notes.append(f"Parameters lived on {', '.join(devices)} while saving.")
    notes.append(
        "Saved values are synthetic: each element depends on its tensor's key and its "
        "global position (shards differ, replicas agree), so a load that reads the wrong "
        "shard shows in the chunk digests."
    )
    if base is not None:
        notes += [
            n for n in base.notes if n.startswith(("The coordinator rejected", "Some local plans"))
        ]
    metadata = base.metadata if base is not None else None
    if md is not None:
        metadata = metadata_info(md)
        notes.append(
            "Storage facts are from the checkpoint's .metadata, read with dcpviz's restricted unpickler."
        )
        errors += _check_files(metadata, root)
    timings = dict(base.timings) if base is not None else {}
    timings["run_wall"] = run.wall_s
    return SaveTrace(
        scenario=dataclasses.replace(
            scenario_info(scenario), components=base.scenario.components if base is not None else ()
        ),
        planner=base.planner if base is not None else info,
        items=tuple(table.items),
        local_plans=tuple(local),
        global_plans=global_plans,
        final_plans=final_plans,
        metadata=metadata,
        errors=tuple(errors),
        global_plan_validated=base.global_plan_validated if base is not None else False,
        timings=tuple(timings.items()),
        notes=tuple(notes),
        layouts=base.layouts if base is not None else (),
        source="run",
        # Every rank's value digests reached the coordinator with its local plan (capture/save.py).
        value_digests=base.value_digests if base is not None else (),
        dedup_alternative=base.dedup_alternative if base is not None else None,
        tied_keys=base.tied_keys if base is not None else (),
        torch_version=torch_version(),
        dcpviz_version=__version__,
        created=now(),
    )


def _local_plans(
    payloads: dict[int, dict[str, Any]], base: SaveTrace | None, table: ItemTable, W: int
) -> tuple[list[PlanRecord | None], dict[int, dict[str, int]]]:
    """Each rank's own local plan (exact BYTE_IO sizes); where a rank reported nothing, the plan
    the coordinator received. Also each rank's BYTE_IO sizes."""
    local: list[PlanRecord | None] = []
    byte_sizes: dict[int, dict[str, int]] = {}
    for r in range(W):
        own = _rank_items(payloads, r, "local")
        rec = (payloads.get(r) or {}).get("record") or {}
        byte_sizes[r] = rec.get("byte_sizes", {})
        if own is not None:
            local.append(
                PlanRecord(
                    items=tuple(table.add(i) for i in own),
                    usable=bool(rec.get("local_usable", True)),
                )
            )
        elif base is not None and base.local_plans[r] is not None:
            local.append(_remap(base, base.local_plans[r], table, {}))
        else:
            local.append(None)
    return local, byte_sizes


def _local_mismatch(
    base: SaveTrace, table: ItemTable, local: list[PlanRecord | None]
) -> list[ErrorRecord]:
    """An error where a rank's own local plan differs from the one the coordinator received."""
    mismatched = [
        r
        for r, plan in enumerate(local)
        if plan is not None
        and base.local_plans[r] is not None
        and _keys(table.items, plan) != _keys(base.items, base.local_plans[r])
    ]
    if not mismatched:
        return []
    return [
        ErrorRecord(
            "record",
            None,
            "RecordingMismatch",
            f"ranks {mismatched}: the local plan a rank made differs from the one the "
            "coordinator received (a storage writer's prepare_local_plan changed it?)",
        )
    ]


def _remap(
    base: SaveTrace, plan: PlanRecord, table: ItemTable, sizes: dict[str, int]
) -> PlanRecord:
    """Move a plan of the coordinator's trace into ``table``, with this rank's BYTE_IO sizes."""
    ids = []
    for i in plan.items:
        item = base.items[i]
        if item.item_type == "BYTE_IO" and item.fqn in sizes:
            item = dataclasses.replace(item, nbytes=int(sizes[item.fqn]))
        ids.append(table.add(item))
    return PlanRecord(items=tuple(ids), usable=plan.usable)


def _keys(items: tuple[PlannedItem, ...] | list[PlannedItem], plan: PlanRecord) -> list[tuple]:
    return [
        (items[i].fqn, items[i].item_type, items[i].offsets, items[i].sizes) for i in plan.items
    ]


def _check_files(metadata: Any, root: Path) -> list[ErrorRecord]:
    """Storage facts against the disk: each file's size is the sum of the lengths stored in it."""
    per_file: dict[str, int] = {}
    for s in metadata.storage:
        per_file[s.relative_path] = per_file.get(s.relative_path, 0) + s.length
    out = []
    for name, expect in sorted(per_file.items()):
        path = root / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != expect:
            out.append(
                ErrorRecord(
                    "storage",
                    None,
                    "StorageMismatch",
                    f"{name}: metadata records {expect} bytes, the file has "
                    f"{'none (missing)' if actual is None else actual}",
                )
            )
    return out
