"""Recording planners: wrap any DCP planner inside a real job and write what it planned.

``dcp.save`` gathers every rank's local plan on the coordinator and hands them to
``create_global_plan``; that one call therefore sees the local plans of all ranks, the global
plans and the metadata. ``RecordingSavePlanner`` writes the trace there — no extra collective,
no change to any decision (every call is forwarded to the wrapped planner and its return value
passed back untouched).

What the coordinator cannot know, the trace says so in its notes instead of guessing:
other ranks' ``finish_plan`` output (never sent back), other ranks' serialised BYTE_IO sizes,
and storage facts (file, offset, length), which exist only once ``storage_writer.finish`` has
run, after the last planner call. ``complete()`` after ``dcp.save`` adds the storage facts.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType

from dcpviz.core.components import captured_components
from dcpviz.core.errors import CheckpointError
from dcpviz.core.trace import (
    ErrorRecord,
    PlannedItem,
    PlanRecord,
    SaveTrace,
    ScenarioInfo,
    TensorLayout,
    ValueDigest,
    to_plain,
    write_trace,
)
from dcpviz.core.trace_codec import decode_plain
from dcpviz.core.version import __version__
from dcpviz.engine.capture.recorder import Recorder, flattened, infer_scenario
from dcpviz.engine.convert.save import (
    PlanConverter,
    byte_item_sizes,
    dedup_alternative,
    merged_layouts,
    planned_item,
    tensor_layouts,
)
from dcpviz.engine.convert.shared import metadata_info
from dcpviz.engine.planning.planners import set_up_save_planner, unvalidated_global_plan
from dcpviz.engine.planning.stamps import now, torch_version
from dcpviz.engine.storage.hf_facts import folder_file_plan
from dcpviz.engine.storage.writer_plan import writer_info
from dcpviz.engine.values.digests import tied_keys, value_digests_of


class CarriedPlannerData(dict):
    """A local plan's ``planner_data`` with this rank's value digests and DTensor layouts riding
    along to the coordinator: DCP already gathers every local plan there, so they need no
    collective of their own. The coordinator's recorder takes them off again before the wrapped
    planner sees the plans, so DCP's planner (and its metadata's planner_data) sees exactly what
    it made. It is the original mappings dict too (a dict subclass holding the same items), so
    even a coordinator that does not strip it (not a recorder) merges the same planner_data.
    ``digests`` / ``layouts`` are None where this rank could not take them."""

    def __init__(
        self,
        planner_data: dict[str, Any] | None,
        digests: tuple[ValueDigest, ...] | None,
        layouts: tuple[LayoutRow, ...] | None = None,
    ) -> None:
        super().__init__(planner_data or {})
        self.planner_data = planner_data
        self.digests = digests
        self.layouts = layouts


def strip_carried(plans: list[SavePlan]) -> tuple[list[SavePlan], list[ValueDigest], bool]:
    """(the plans as the wrapped planners made them, the digests they carried, whether every
    usable plan carried some)."""
    clean, digests, every = [], [], True
    for p in plans:
        data = getattr(p, "planner_data", None)
        if isinstance(data, CarriedPlannerData):
            if data.digests is not None:
                digests.extend(data.digests)
            elif getattr(p, "usable", True):
                every = False
            p = dataclasses.replace(p, planner_data=data.planner_data)
        elif getattr(p, "usable", True):
            every = False
        clean.append(p)
    return clean, digests, every


LayoutRow = tuple[str, str, tuple[str, ...], tuple[int, ...]]
"""A TensorLayout as a plain tuple (fqn, placements, mesh_dim_names, mesh_shape), as layouts
travel to the coordinator: plain tuples pickle smaller and hash and compare in C."""


def layout_rows(state_dict: Any) -> tuple[LayoutRow, ...]:
    """This rank's DTensor layouts (``tensor_layouts``) as plain tuples, to carry."""
    return tuple(
        (lay.fqn, lay.placements, lay.mesh_dim_names, lay.mesh_shape)
        for lay in tensor_layouts(state_dict)
    )


def carried_layouts(plans: list[SavePlan]) -> tuple[tuple[LayoutRow, ...] | None, ...]:
    """Each rank's DTensor layouts as its local plan carried them (None: that rank sent none:
    its planner is not a recorder, or describing failed there). Read before ``strip_carried``."""
    out = []
    for p in plans:
        data = getattr(p, "planner_data", None)
        out.append(getattr(data, "layouts", None) if isinstance(data, CarriedPlannerData) else None)
    return tuple(out)


def every_ranks_layouts(
    carried: tuple[tuple[LayoutRow, ...] | None, ...],
    coordinator: int,
    own: tuple[TensorLayout, ...],
) -> tuple[tuple[TensorLayout, ...], list[int]]:
    """(the layouts of every rank's DTensors merged in rank order with ``merged_layouts``, as
    ``simulate_save`` merges its stages' (a key laid out differently on two ranks says so), the
    ranks that sent none). With pipeline stages the ranks hold different keys: the
    coordinator's own state dict leaves the later stages' DTensors undescribed. ``own``: the
    coordinator's layouts, used where its own plan carried none."""
    per_rank = list(carried)
    if 0 <= coordinator < len(per_rank) and per_rank[coordinator] is None:
        per_rank[coordinator] = tuple(
            (lay.fqn, lay.placements, lay.mesh_dim_names, lay.mesh_shape) for lay in own
        )
    missing = [r for r, rows in enumerate(per_rank) if rows is None]
    # Most ranks repeat another's layouts exactly (every rank of a stage): merging a repeat
    # changes nothing, so each distinct set is merged once, in the rank order it first appears.
    merged: tuple[TensorLayout, ...] = ()
    for rows in dict.fromkeys(rows for rows in per_rank if rows is not None):
        merged = merged_layouts(merged, tuple(TensorLayout(*row) for row in rows))
    return merged, missing


class RecordingSavePlanner(Recorder, SavePlanner):
    """Wrap a SavePlanner (default: DCP's ``DefaultSavePlanner()``) and write a dcpviz trace.

    Pass it to ``dcp.save(..., planner=RecordingSavePlanner("plan.json"))`` on every rank. The
    coordinator writes ``path`` (a JSON SaveTrace that ``dcpviz.load_trace`` opens) inside
    ``create_global_plan``; other ranks write nothing. Call ``complete()`` after ``dcp.save``
    returns to add the storage facts (which file, offset and length holds each chunk).

    scenario: a ``dcpviz.Scenario`` describing the job, if known; otherwise inferred from the
    coordinator's state dict (world size, mesh shape and dim names, dtype, device).

    One planner may serve every periodic save: a ``path`` containing ``{n}`` gets the save's
    number (``"plans/save_{n}.json"``), otherwise each save replaces the trace. With
    ``dcp.async_save``, call ``complete()`` once the returned future is done.

    Recording never changes what DCP does: if the trace cannot be built or written (a path
    that cannot be created, a full disk), the save goes on; a ``dcpviz.RecordingWarning`` is
    issued and ``problems`` lists what failed (also as notes of any trace written later).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        planner: SavePlanner | None = None,
        *,
        scenario: Any = None,
    ) -> None:
        self._init_recorder(path, planner, SavePlanner, DefaultSavePlanner, scenario)

    def _reset(self) -> None:
        """Forget the previous dcp.save's facts."""
        self._timings: dict[str, float] = {}
        self._overhead = 0.0
        self._layouts: tuple = ()
        self._inferred: tuple[ScenarioInfo, list[str]] | None = None
        self._local_plan: SavePlan | None = None
        self._byte_sizes: dict[str, int] = {}
        self._final_plan: SavePlan | None = None
        self._trace: SaveTrace | None = None
        self._metadata: Any = None
        self._global_plans: list[SavePlan] | None = None
        self._state_dict: Any = None
        self._digests: tuple[ValueDigest, ...] = ()
        self._received: tuple[list[ValueDigest], bool] = ([], False)
        self._carried_layouts: tuple[tuple[LayoutRow, ...] | None, ...] = ()
        self._cached: tuple[tuple[bool, ...], tuple[bool, ...]] | None = None
        self.problems: list[str] = []  # what recording could not do in this dcp.save

    # Anything the storage writer or user code asks of the planner beyond the protocol
    # (lookup_object, mappings, state_dict, ...) is the wrapped planner's.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def inner(self) -> SavePlanner:
        """The wrapped planner."""
        return self._inner

    # -- the SavePlanner protocol, forwarded ----------------------------------------------
    def set_up_planner(
        self, state_dict: Any, storage_meta: Any = None, is_coordinator: bool = False
    ) -> None:
        """DCP's set_up_planner, passed through; starts a new recorded call."""
        self._start_call(is_coordinator)
        t0 = time.perf_counter()
        set_up_save_planner(self._inner, state_dict, is_coordinator, storage_meta=storage_meta)
        t1 = time.perf_counter()
        self._timings["set_up_planner"] = t1 - t0
        self._state_dict = state_dict  # for this rank's value digests, taken with its local plan
        if is_coordinator:
            # Only the coordinator describes the job; the other ranks pay nothing here.
            self._record_safely("describe the state dict", self._describe, state_dict)
            self._overhead += time.perf_counter() - t1

    def _describe(self, state_dict: Any) -> None:
        flat = flattened(state_dict)
        self._layouts = tensor_layouts(flat)
        self._inferred = infer_scenario(flat, self._world)
        self._components = captured_components(state_dict)
        self._tied = tied_keys(state_dict, bool(getattr(self._inner, "flatten_state_dict", True)))

    def create_local_plan(self) -> SavePlan:
        """The inner planner's local plan, recorded."""
        t0 = time.perf_counter()
        plan = self._inner.create_local_plan()
        t1 = time.perf_counter()
        self._timings["create_local_plan"] = t1 - t0
        self._local_plan = plan
        # A cached "unchanged" marker is empty: DCP writes this rank's cached plan's items.
        measured = _cached_local_plan(self._inner) if not getattr(plan, "usable", True) else plan
        self._byte_sizes = (
            self._record_safely(
                "measure the BYTE_IO items", byte_item_sizes, self._inner, (measured or plan).items
            )
            or {}
        )
        carried = self._record_safely(
            "carry this rank's value digests and DTensor layouts", self._carry, plan
        )
        self._overhead += time.perf_counter() - t1
        return carried if carried is not None else plan

    def _carry(self, plan: SavePlan) -> SavePlan | None:
        """The plan with this rank's value digests and DTensor layouts riding in its
        planner_data (None: nothing to carry). A cached 'unchanged' marker carries them too: the
        values of a periodic save change while its plan does not (DCP merges a marker with its
        cache by ``usable`` alone, and the coordinator's recorder strips the carrier before the
        wrapped planner sees it). Each part that fails is sent as None, the other still goes."""
        if self._state_dict is None:
            return None
        if plan.planner_data is not None and type(plan.planner_data) is not dict:
            return None  # a custom planner's own planner_data: never wrapped
        digests = self._record_safely("fingerprint this rank's non-DTensor values", self._digest)
        # Every rank's layouts: with pipeline stages, ranks hold different keys.
        layouts = self._record_safely(
            "describe this rank's DTensors", layout_rows, self._state_dict
        )
        if digests is None and layouts is None:
            return None
        return dataclasses.replace(
            plan, planner_data=CarriedPlannerData(plan.planner_data, digests, layouts)
        )

    def _digest(self) -> tuple[ValueDigest, ...]:
        """This rank's value digests, keyed as the wrapped planner writes them:
        flatten_state_dict=False writes each top-level value (a whole nested dict of this rank's
        shards) as one bytes entry."""
        flatten = bool(getattr(self._inner, "flatten_state_dict", True))
        self._digests = tuple(value_digests_of(self._state_dict, self._rank, flatten=flatten))
        return self._digests

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Any]:
        """The inner planner's global plan and metadata, recorded (and written by the coordinator)."""
        layouts = self._record_safely("read the ranks' DTensor layouts", carried_layouts, all_plans)
        self._carried_layouts = layouts if layouts is not None else (None,) * len(all_plans)
        all_plans, digests, every = strip_carried(all_plans)  # the inner planner sees its own plans
        self._received = (digests, every)
        t0 = time.perf_counter()
        try:
            global_plans, metadata = self._inner.create_global_plan(all_plans)
        except BaseException as exc:
            self._timings["create_global_plan"] = time.perf_counter() - t0
            self._record_failure(all_plans, exc)
            raise
        t1 = time.perf_counter()
        self._timings["create_global_plan"] = t1 - t0
        self._global_plans, self._metadata = global_plans, metadata
        used = self._record_safely(
            "read DCP's plan cache", used_plans, self._inner, all_plans, global_plans
        )
        local_used, global_used, cached = (
            used if used is not None else (all_plans, global_plans, None)
        )
        self._cached = cached
        self._global_plans = (
            global_used  # the coordinator's finish_plan is checked against its real plan
        )
        self._trace = self._record_safely(
            "build the trace", self._build_trace, local_used, global_used, metadata, (), True
        )
        if self._trace is not None:
            self._record_safely(
                f"write the trace to {str(self.path)!r}", write_trace, self._trace, self.path
            )
        self._overhead += time.perf_counter() - t1
        return global_plans, metadata

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        """The inner planner's final plan, recorded."""
        t0 = time.perf_counter()
        plan = self._inner.finish_plan(new_plan)
        self._timings["finish_plan"] = time.perf_counter() - t0
        self._final_plan = plan
        return plan

    def resolve_data(self, write_item: WriteItem) -> Any:
        """The inner planner's data for a write item, unchanged."""
        return self._inner.resolve_data(write_item)

    # -- after dcp.save --------------------------------------------------------------------
    def complete(self, metadata: Any = None, *, storage_writer: Any = None) -> Path | None:
        """On the coordinator: rewrite the trace with the storage facts ``storage_writer.finish``
        put into the checkpoint metadata (pass ``dcp.save``'s return value, or nothing: DCP's
        FileSystemWriter fills in the very Metadata object this planner returned). A writer that
        puts none there (DCP's ``HuggingFaceStorageWriter``): pass it as ``storage_writer`` and
        the facts are read from the safetensors headers of the folder it wrote (the trace's
        ``file_plan``); without it the trace says that it has no storage facts. Also adds the
        coordinator's own final plan check. Returns the trace path, or None on other ranks and
        when no trace could be built or written (then ``problems`` says why, and a
        ``RecordingWarning`` was issued: recording never raises into the user's job)."""
        if not self.is_coordinator or self._trace is None:
            return None
        t0 = time.perf_counter()
        written = self._record_safely(
            f"complete the trace at {str(self.path)!r}", self._complete, metadata, storage_writer
        )
        self._overhead += time.perf_counter() - t0
        return written

    def _complete(self, metadata: Any, storage_writer: Any = None) -> Path:
        md = metadata if metadata is not None else self._metadata
        notes = list(self._trace.notes)
        if md is not None and getattr(md, "storage_data", None):
            info = metadata_info(md)
            notes = [n for n in notes if not n.startswith("Storage facts")]
            notes.append(
                "Storage facts (file, offset, length) come from the metadata after "
                "storage_writer.finish, added by RecordingSavePlanner.complete()."
            )
        else:
            info = self._trace.metadata
            notes = [n for n in notes if not n.startswith("Storage facts")]
            notes.append(self._folder_facts(storage_writer))
        notes = [
            n
            for n in notes
            if not n.startswith(("The coordinator's own finish_plan", "Recording problem"))
        ]
        notes += self._problem_notes()
        if self._final_plan is not None and self._global_plans is not None:
            same = _same_items(self._final_plan, self._global_plans[self._coordinator_index()])
            notes.append(
                f"The coordinator's own finish_plan {'returned its global plan unchanged' if same else 'changed its global plan'}."
            )
        timings = dict(self._trace.timings)
        timings.update(self._timings)
        self._trace = dataclasses.replace(self._trace, metadata=info, notes=tuple(notes))
        timings["recording_overhead"] = self._overhead
        self._trace = dataclasses.replace(self._trace, timings=tuple(timings.items()))
        return write_trace(self._trace, self.path)

    def _folder_facts(self, writer: Any) -> str:
        """Storage facts from the folder a metadata-less writer wrote (its safetensors headers);
        the note saying where they came from, or why there are none."""
        if writer is None:
            return (
                "Storage facts: none. The storage writer put no storage data into the metadata "
                "(DCP's HuggingFaceStorageWriter writes none); call planner.complete(md, "
                "storage_writer=writer) to read them from the safetensors headers of its folder."
            )
        folder = getattr(writer, "consolidated_output_path", None) or getattr(writer, "path", None)
        try:
            if folder is None:
                raise CheckpointError(f"{type(writer).__name__} has no path")
            rows, note = folder_file_plan(str(folder), self._trace)
        except CheckpointError as exc:
            return f"Storage facts: none. They could not be read from the storage writer's folder: {exc}"
        self._trace = dataclasses.replace(
            self._trace, storage_writer=writer_info(writer), file_plan=rows
        )
        return note

    @property
    def trace(self) -> SaveTrace | None:
        """The trace written on the coordinator (None on other ranks or before planning)."""
        return self._trace

    def rank_record(self) -> dict[str, Any]:
        """This rank's own facts, as plain data: its local and final plan items, the BYTE_IO
        sizes it serialised, its timings. run_save collects these from every worker to fill in
        what the coordinator cannot see."""

        def items(plan: SavePlan | None) -> list[dict[str, Any]] | None:
            if plan is None:
                return None
            return [to_plain(planned_item(wi, self._byte_sizes)) for wi in plan.items]

        return {
            "rank": self._rank,
            "local": items(self._local_plan),
            "local_usable": bool(getattr(self._local_plan, "usable", True)),
            "final": items(self._final_plan),
            "byte_sizes": dict(self._byte_sizes),
            "timings": dict(self._timings),
            "recording_overhead": self._overhead,
        }

    # -- building the trace ----------------------------------------------------------------
    def _coordinator_index(self) -> int:
        return (
            self._rank if self._global_plans is None or self._rank < len(self._global_plans) else 0
        )

    def _record_failure(self, all_plans: list[SavePlan], exc: BaseException) -> None:
        """The coordinator's planner raised: write what was planned so far, then let DCP raise."""

        t0 = time.perf_counter()
        try:
            fallback = unvalidated_global_plan(self._inner, list(all_plans))
            global_plans, md = fallback if fallback is not None else (None, None)
            err = ErrorRecord(
                phase="global", rank=None, exc_type=type(exc).__name__, message=str(exc)
            )
            extra = []
            if fallback is not None:
                extra.append(
                    "The coordinator rejected the global plan; the global plan and metadata shown are "
                    "DCP's dedup + create_default_global_save_plan output before validation."
                )
            self._trace = self._build_trace(all_plans, global_plans, md, (err,), False, extra)
            write_trace(self._trace, self.path)
        except Exception as rec_exc:  # recording must never mask the planner's own error
            self._note_problem("record the failed global plan", rec_exc)
        self._overhead += time.perf_counter() - t0

    def _every_ranks_layouts(self, W: int) -> tuple[tuple[TensorLayout, ...], list[str]]:
        """(every rank's DTensor layouts, merged; notes on ranks that sent none). A failure to
        merge keeps the coordinator's own layouts (and becomes a recording problem)."""
        carried = tuple(self._carried_layouts[:W]) + (None,) * (W - len(self._carried_layouts))
        me = self._rank if 0 <= self._rank < W else 0
        layouts, missing = self._record_safely(
            "merge the ranks' DTensor layouts", every_ranks_layouts, carried, me, self._layouts
        ) or (self._layouts, [])
        if not missing:
            return layouts, []
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        return layouts, [
            f"{len(missing)} of {W} ranks sent no DTensor layouts (ranks {shown}: their planner "
            "is not a RecordingSavePlanner, or describing failed there): DTensors that only they "
            "hold are shown as plain tensors."
        ]

    def _build_trace(
        self,
        all_plans: list[SavePlan],
        global_plans: list[SavePlan] | None,
        metadata: Any,
        errors: tuple[ErrorRecord, ...],
        validated: bool,
        extra_notes: list[str] = (),
    ) -> SaveTrace:
        W = len(all_plans)
        conv = _GatheredPlanConverter()
        own = self._byte_sizes
        local = tuple(conv.record(p, own) for p in all_plans)
        global_records = (
            tuple(conv.record(p, own) for p in global_plans) if global_plans is not None else None
        )
        cached = getattr(self, "_cached", None)
        if cached is not None and validated:
            local_hits, global_hits = cached
            local = tuple(dataclasses.replace(p, cached=hit) for p, hit in zip(local, local_hits))
            if global_records is not None:
                global_records = tuple(
                    dataclasses.replace(p, cached=hit)
                    for p, hit in zip(global_records, global_hits)
                )
        others_bytes = sum(
            1
            for r, p in enumerate(all_plans)
            if r != self._rank
            for wi in p.items
            if wi.type == WriteItemType.BYTE_IO
        )
        if self._scenario is not None:
            scenario, inferred_notes = self._scenario, []
        else:
            scenario, inferred_notes = self._inferred or infer_scenario({}, W)
            if scenario.world_size != W:
                scenario = dataclasses.replace(scenario, world_size=W)
        scenario = dataclasses.replace(scenario, components=getattr(self, "_components", ()))
        notes = [
            f"Captured by RecordingSavePlanner on the coordinator (rank {self._rank} of {W}) inside "
            "create_global_plan: local plans are as the coordinator received them (after the "
            "storage writer's prepare_local_plan).",
            "Other ranks' final plans (finish_plan) never reach the coordinator, so none are "
            "recorded; tables use the global plans.",
            "Storage facts (file, offset, length) are only known after storage_writer.finish; call "
            "planner.complete() after dcp.save to add them.",
            *extra_notes,
            *inferred_notes,
            *self._problem_notes(),
        ]
        if others_bytes:
            notes.append(
                f"{others_bytes} BYTE_IO items of other ranks carry the coordinator's serialised size of "
                "the same key (0 where the coordinator has no such key): their own size is not sent."
            )
        layouts, layout_notes = self._every_ranks_layouts(W)
        notes += layout_notes
        digests, every = self._received
        if not every:
            notes.append(
                "Some ranks sent no value digests (their planner is not a RecordingSavePlanner, "
                "or fingerprinting failed there): their values are unknown to the checks."
            )
        alternative = None
        if global_plans is not None:
            alternative = dedup_alternative(
                self._inner,
                list(all_plans),
                lambda r, p: conv.record(p, own),
                conv.items,
                global_records,
            )
        if any(not getattr(p, "usable", True) for p in all_plans):
            notes.append(
                "Some local plans are unusable (empty): plan caching (enable_plan_caching) sent "
                "'unchanged' markers instead of plans, and this planner's cache could not be read."
            )
        if cached is not None and (any(cached[0]) or any(cached[1])):
            notes.append(
                f"Plan caching: {sum(cached[0])} of {W} ranks sent an 'unchanged' marker and "
                f"{sum(cached[1])} got one back; the plans recorded are the cached plans DCP really "
                "used (PlanRecord.cached marks them)."
            )
        timings = dict(self._timings)
        timings["recording_overhead"] = self._overhead
        return SaveTrace(
            scenario=scenario,
            planner=self._planner_info,
            items=tuple(conv.items),
            local_plans=local,
            global_plans=global_records,
            final_plans=None,
            metadata=metadata_info(metadata) if metadata is not None else None,
            errors=errors,
            global_plan_validated=validated,
            timings=tuple(timings.items()),
            notes=tuple(notes),
            layouts=layouts,
            source="capture",
            value_digests=tuple(digests),
            dedup_alternative=alternative,
            tied_keys=getattr(self, "_tied", ()),
            torch_version=torch_version(),
            dcpviz_version=__version__,
            created=now(),
        )


def _cached_local_plan(inner: Any) -> SavePlan | None:
    """This rank's local plan in DCP's plan cache (what an "unchanged" marker stands for)."""
    key = getattr(inner, "_cached_plans_key", None)
    return SavePlanner._cached_save_plan.get(key) if key is not None else None


def used_plans(
    inner: Any, received: list[SavePlan], deltas: list[SavePlan]
) -> tuple[list[SavePlan], list[SavePlan], tuple[tuple[bool, ...], tuple[bool, ...]]] | None:
    """(the local plans, the global plans DCP really used, (which local plans were cache hits,
    which global plans were)) after ``inner.create_global_plan``; None when the planner caches
    nothing. With ``enable_plan_caching`` a rank whose plan is unchanged sends an empty,
    unusable plan, and the coordinator sends back an empty delta where a rank's global plan
    is unchanged: DCP's own cache (``SavePlanner._cached_all_plans``, filled by the call just
    made) holds the merged local plans, and the planner its full ``global_plan``."""
    if not getattr(inner, "_enable_plan_caching", False):
        return None
    key = getattr(inner, "_cached_plans_key", None)
    local = SavePlanner._cached_all_plans.get(key)
    full = getattr(inner, "global_plan", None)
    if local is None or full is None or len(local) != len(received) or len(full) != len(deltas):
        return None
    local_hits = tuple(not getattr(p, "usable", True) for p in received)
    global_hits = tuple(not getattr(p, "usable", True) for p in deltas)
    return list(local), list(full), (local_hits, global_hits)


class _GatheredPlanConverter(PlanConverter):
    """PlanConverter for plans that arrived through a gather: every rank's items are distinct
    objects, so identity memos miss; tensor items are interned by their DCP facts instead (the
    key is built from objects the item already holds — no conversion unless new)."""

    def __init__(self) -> None:
        super().__init__()
        self._by_value: dict[tuple, int] = {}

    def record(self, plan: SavePlan, byte_sizes: dict[str, int] | None = None) -> PlanRecord:
        ids = []
        for wi in plan.items:
            td = wi.tensor_data
            if td is None:  # BYTE_IO: sizes differ by rank
                ids.append(self.table.add(planned_item(wi, byte_sizes)))
                continue
            key = (
                wi.index.fqn,
                wi.type,
                wi.index.offset,
                td.chunk.offsets,
                td.chunk.sizes,
                td.properties.dtype,
                td.size,
            )
            idx = self._by_value.get(key)
            if idx is None:
                idx = self._by_value[key] = self.table.add(planned_item(wi, byte_sizes))
            ids.append(idx)
        return PlanRecord(items=tuple(ids), usable=bool(getattr(plan, "usable", True)))


def _same_items(a: SavePlan, b: SavePlan) -> bool:
    return [(w.index, w.type) for w in a.items] == [(w.index, w.type) for w in b.items]


def planned_items_from_plain(items: list[dict[str, Any]] | None) -> list[PlannedItem] | None:
    """Rebuild PlannedItems sent as plain data by rank_record()."""
    if items is None:
        return None

    return [decode_plain(PlannedItem, it, "rank_record") for it in items]
