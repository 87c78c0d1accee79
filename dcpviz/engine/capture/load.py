"""RecordingLoadPlanner: wrap any DCP load planner inside a real job and write a LoadTrace.

As on the save side, ``dcp.load`` hands every rank's local plan to the coordinator's
``create_global_plan``; the trace is written there, with no extra collective and every call
forwarded untouched. Each rank's state-dict values (what the load planner plans from) ride to the
coordinator inside its local plan's ``planner_data`` and are taken off again before the wrapped
planner sees the plans, so ``wanted`` and the mismatches cover every rank: with pipeline stages
the ranks hold different keys, and a later stage's missing key is otherwise invisible. What the
coordinator still cannot see is said in the trace's notes: other ranks' final plans, and any
rank that sent no values. The saved side is exact: the planner is handed the checkpoint's
Metadata, storage facts included.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem

from dcpviz.core.components import captured_components
from dcpviz.core.trace import ErrorRecord, LoadTrace, ReadRecord, TargetValue, to_plain, write_trace
from dcpviz.core.trace_codec import decode_plain
from dcpviz.core.version import __version__
from dcpviz.engine.capture.recorder import (
    Recorder,
    flattened,
    infer_scenario,
)
from dcpviz.engine.checkpoint.saved import resolve_saved
from dcpviz.engine.convert.load import (
    load_plan_record,
    planner_view,
    read_record,
    saved_itemsizes,
    target_value,
)
from dcpviz.engine.convert.shared import ItemTable, metadata_info
from dcpviz.engine.planning.mismatch import MismatchCollector, dcp_key_messages, read_facts
from dcpviz.engine.planning.stamps import now, torch_version


def record_facts(reads: list[ReadRecord] | None) -> tuple[dict[str, str], set[str], set[str]]:
    """``read_facts`` of one rank's recorded reads (a read's storage key is its own when None)."""
    return read_facts((r.fqn, r.storage_fqn or r.fqn) for r in reads or ())


class CarriedLoadData(dict):
    """A local plan's ``planner_data`` with this rank's state-dict values (``TargetValue``s, as
    the load planner plans from them) riding along to the coordinator: DCP already gathers every
    local plan there. The coordinator's recorder takes them off (``strip_carried``) before the
    wrapped planner sees the plans, so the wrapped planner and DCP see exactly the plans they
    made. It is the original planner_data dict too (a dict subclass holding the same items), so
    a coordinator that is not a recorder still sees the same planner_data items. ``wanted`` is
    None where this rank could not describe its values."""

    def __init__(
        self, planner_data: dict[str, Any] | None, wanted: tuple[TargetValue, ...] | None
    ) -> None:
        super().__init__(planner_data or {})
        self.planner_data = planner_data
        self.wanted = wanted


def carried_values(plans: list[LoadPlan]) -> tuple[tuple[TargetValue, ...] | None, ...]:
    """Each rank's state-dict values as its local plan carried them (None: that rank sent none:
    its planner is not a recorder, or describing failed there). Read before ``strip_carried``."""
    out = []
    for p in plans:
        data = getattr(p, "planner_data", None)
        out.append(data.wanted if isinstance(data, CarriedLoadData) else None)
    return tuple(out)


def strip_carried(plans: list[LoadPlan]) -> list[LoadPlan]:
    """The plans as the wrapped planners made them (each carrier replaced by the planner_data
    it wrapped, the very object, None included)."""
    clean = []
    for p in plans:
        data = getattr(p, "planner_data", None)
        if isinstance(data, CarriedLoadData):
            p = dataclasses.replace(p, planner_data=data.planner_data)
        clean.append(p)
    return clean


def every_ranks_wanted(
    carried: tuple[tuple[TargetValue, ...] | None, ...],
    coordinator: int,
    own: tuple[TargetValue, ...] | None,
) -> tuple[tuple[tuple[TargetValue, ...] | None, ...], list[int]]:
    """(each rank's values, the coordinator's own standing in where its plan carried none; the
    ranks that sent none)."""
    per_rank = list(carried)
    if 0 <= coordinator < len(per_rank) and per_rank[coordinator] is None:
        per_rank[coordinator] = own
    return tuple(per_rank), [r for r, v in enumerate(per_rank) if v is None]


def mismatches_for(
    md: Any,
    per_rank: dict[int, tuple[list[TargetValue], dict[str, str] | None, list[ReadRecord] | None]],
    read_storage_fqns: set[str],
) -> tuple:
    """Mismatch records as simulate_load builds them, from the ranks whose values are known:
    rank -> (its values, DCP's per-key messages if its plan failed, its local plan's reads)."""

    collector = MismatchCollector()
    wanted_fqns: set[str] = set()
    for r, (values, messages, reads) in sorted(per_rank.items()):
        renames, read_dest, _ = record_facts(reads)
        collector.add_rank(r, values, md, messages, renames, read_dest)
        wanted_fqns.update(v.fqn for v in values)
    return collector.records(md, wanted_fqns, read_storage_fqns)


class RecordingLoadPlanner(Recorder, LoadPlanner):
    """Wrap a LoadPlanner (default: DCP's ``DefaultLoadPlanner()``) and write a dcpviz LoadTrace.

    Pass it to ``dcp.load(..., planner=RecordingLoadPlanner("load.json"))`` on every rank; the
    coordinator writes ``path`` inside ``create_global_plan``. ``scenario``: the target job as a
    ``dcpviz.Scenario`` if known, else inferred from the coordinator's state dict. A ``path``
    containing ``{n}`` gets the load's number when one planner serves several loads.

    Recording never changes what DCP does: if the trace cannot be built or written, the load
    goes on; a ``dcpviz.RecordingWarning`` is issued and ``problems`` lists what failed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        planner: LoadPlanner | None = None,
        *,
        scenario: Any = None,
    ) -> None:
        self._init_recorder(path, planner, LoadPlanner, DefaultLoadPlanner, scenario)

    def _reset(self) -> None:
        """Forget the previous dcp.load's facts."""
        self._timings: dict[str, float] = {}
        self._overhead = 0.0
        self._state_dict: Any = None
        self._metadata: Any = None
        self._local_plan: LoadPlan | None = None
        self._values: tuple[TargetValue, ...] | None = None
        self._carried: tuple[tuple[TargetValue, ...] | None, ...] = ()
        self._final_plan: LoadPlan | None = None
        self._global_plans: list[LoadPlan] | None = None
        self._messages: dict[str, str] | None = None
        self._trace: LoadTrace | None = None
        self.problems: list[str] = []  # what recording could not do in this dcp.load

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def inner(self) -> LoadPlanner:
        """The wrapped LoadPlanner."""
        return self._inner

    @property
    def trace(self) -> LoadTrace | None:
        """The trace of the last load (None until the coordinator built it)."""
        return self._trace

    # -- the LoadPlanner protocol, forwarded ----------------------------------------------
    def set_up_planner(
        self, state_dict: Any, metadata: Any = None, is_coordinator: bool = False
    ) -> None:
        """DCP's set_up_planner, passed through; starts a new recorded call."""
        self._start_call(is_coordinator)
        t0 = time.perf_counter()
        self._inner.set_up_planner(state_dict, metadata, is_coordinator)
        self._timings["set_up_planner"] = time.perf_counter() - t0
        self._state_dict, self._metadata = state_dict, metadata

    def create_local_plan(self) -> LoadPlan:
        """The inner planner's local plan, recorded."""
        t0 = time.perf_counter()
        try:
            plan = self._inner.create_local_plan()
        except BaseException:
            # DCP will report this rank's first bad key; keep its verdict on every key.
            t1 = time.perf_counter()
            self._messages = self._dcp_messages()
            self._overhead += time.perf_counter() - t1
            raise
        t1 = time.perf_counter()
        self._timings["create_local_plan"] = t1 - t0
        self._local_plan = plan
        carried = self._record_safely("carry this rank's state-dict values", self._carry, plan)
        self._overhead += time.perf_counter() - t1
        return carried if carried is not None else plan

    def _carry(self, plan: LoadPlan) -> LoadPlan | None:
        """The plan with this rank's state-dict values riding in its planner_data (None: nothing
        to carry). With pipeline stages the ranks hold different keys: only every rank's values
        let the coordinator see a later stage's missing or mismatched key. A failure to describe
        them sends None (a warning here, a note in the trace naming this rank)."""
        if self._state_dict is None:
            return None
        if plan.planner_data is not None and type(plan.planner_data) is not dict:
            return None  # a custom planner's own planner_data: never wrapped
        self._values = self._record_safely(
            "describe this rank's state-dict values", lambda: tuple(self.values())
        )
        if self._values is None:
            return None
        return dataclasses.replace(
            plan, planner_data=CarriedLoadData(plan.planner_data, self._values)
        )

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:
        """The inner planner's global plans, recorded. The ranks' carried values are taken off
        first: the inner planner sees exactly the local plans the ranks' planners made."""
        t_strip = time.perf_counter()
        carried = self._record_safely(
            "read the ranks' state-dict values", carried_values, global_plan
        )
        self._carried = carried if carried is not None else (None,) * len(global_plan)
        global_plan = strip_carried(global_plan)
        t0 = time.perf_counter()
        self._overhead += t0 - t_strip
        try:
            plans = self._inner.create_global_plan(global_plan)
        except BaseException as exc:
            self._timings["create_global_plan"] = time.perf_counter() - t0
            self._write(
                global_plan, None, (ErrorRecord("global", None, type(exc).__name__, str(exc)),)
            )
            raise
        self._timings["create_global_plan"] = time.perf_counter() - t0
        self._global_plans = plans
        self._write(global_plan, plans, ())
        return plans

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        """The inner planner's final plan, recorded."""
        t0 = time.perf_counter()
        plan = self._inner.finish_plan(central_plan)
        self._timings["finish_plan"] = time.perf_counter() - t0
        self._final_plan = plan
        return plan

    def load_bytes(self, read_item: ReadItem, value: Any) -> None:
        """Passed through to the inner planner."""
        return self._inner.load_bytes(read_item, value)

    def resolve_bytes(self, read_item: ReadItem) -> Any:
        """Passed through to the inner planner."""
        return self._inner.resolve_bytes(read_item)

    def resolve_tensor(self, read_item: ReadItem) -> Any:
        """Passed through to the inner planner."""
        return self._inner.resolve_tensor(read_item)

    def commit_tensor(self, read_item: ReadItem, tensor: Any) -> None:
        """Passed through to the inner planner."""
        return self._inner.commit_tensor(read_item, tensor)

    # -- facts -------------------------------------------------------------------------------
    def values(self) -> list[TargetValue]:
        """This rank's state-dict values as the load planner plans from them."""

        if self._state_dict is None:
            return []
        return [target_value(k, v) for k, v in planner_view(self._inner, self._state_dict).items()]

    def _dcp_messages(self) -> dict[str, str] | None:
        if self._state_dict is None or self._metadata is None:
            return None
        try:
            flat = planner_view(self._inner, self._state_dict)
            strict = not bool(getattr(self._inner, "allow_partial_load", False))
            return dcp_key_messages(flat, self._metadata, strict)
        except Exception:
            return None

    def rank_record(self) -> dict[str, Any]:
        """This rank's own facts as plain data (run_load collects them from every worker)."""
        sizes = saved_itemsizes(self._metadata) if self._metadata is not None else {}

        def reads(plan: LoadPlan | None) -> list[dict[str, Any]] | None:
            return None if plan is None else [to_plain(read_record(ri, sizes)) for ri in plan.items]

        return {
            "rank": self._rank,
            "values": [
                to_plain(v) for v in (self._values if self._values is not None else self.values())
            ],
            "local": reads(self._local_plan),
            "final": reads(self._final_plan),
            "messages": self._messages,
            "timings": dict(self._timings),
        }

    def complete(self) -> Path | None:
        """On the coordinator: rewrite the trace with its own finish_plan time and check.
        Returns the trace path; None on other ranks and when no trace could be built or
        written (``problems`` says why; recording never raises into the user's job)."""
        if not self.is_coordinator or self._trace is None:
            return None
        return self._record_safely(f"complete the trace at {str(self.path)!r}", self._complete)

    def _complete(self) -> Path:
        notes = [
            n
            for n in self._trace.notes
            if not n.startswith(("The coordinator's own finish_plan", "Recording problem"))
        ]
        notes += self._problem_notes()
        if self._final_plan is not None and self._global_plans is not None:
            own = self._global_plans[self._rank] if self._rank < len(self._global_plans) else None
            same = own is not None and [(r.dest_index, r.storage_index) for r in own.items] == [
                (r.dest_index, r.storage_index) for r in self._final_plan.items
            ]
            notes.append(
                f"The coordinator's own finish_plan {'returned its global plan unchanged' if same else 'changed its global plan'}."
            )
        timings = {
            **dict(self._trace.timings),
            **self._timings,
            "recording_overhead": self._overhead,
        }
        self._trace = dataclasses.replace(
            self._trace, notes=tuple(notes), timings=tuple(timings.items())
        )
        return write_trace(self._trace, self.path)

    # -- the trace -----------------------------------------------------------------------------
    def _write(
        self,
        all_plans: list[LoadPlan],
        global_plans: list[LoadPlan] | None,
        errors: tuple[ErrorRecord, ...],
    ) -> None:
        t0 = time.perf_counter()
        try:
            self._trace = self._build(all_plans, global_plans, errors)
        except Exception as exc:  # recording must never change what dcp.load does
            self._note_problem("build the trace", exc)
        else:
            self._record_safely(
                f"write the trace to {str(self.path)!r}", write_trace, self._trace, self.path
            )
        self._overhead += time.perf_counter() - t0

    def _build(
        self,
        all_plans: list[LoadPlan],
        global_plans: list[LoadPlan] | None,
        errors: tuple[ErrorRecord, ...],
    ) -> LoadTrace:
        W = len(all_plans)
        md = self._metadata
        saved = resolve_saved(md)
        sizes = saved_itemsizes(md)
        reads, wanted = ItemTable(), ItemTable()
        memo: dict[int, Any] = {}
        local = tuple(load_plan_record(p, reads, sizes, memo) for p in all_plans)
        global_records = (
            tuple(load_plan_record(p, reads, sizes, memo) for p in global_plans)
            if global_plans is not None
            else None
        )
        me = self._rank if self._rank < W else 0
        carried = tuple(self._carried[:W]) + (None,) * (W - len(self._carried))
        per_rank, silent = every_ranks_wanted(carried, me, self._values)
        wanted_by_rank = tuple(
            tuple(wanted.add(v) for v in values) if values is not None else ()
            for values in per_rank
        )
        read_src = set()
        for rec in local:
            read_src |= record_facts([reads.items[i] for i in rec.items])[2]
        mism = mismatches_for(
            md,
            {
                r: (list(values), None, [reads.items[i] for i in local[r].items])
                for r, values in enumerate(per_rank)
                if values is not None
            },
            read_src,
        )
        if self._scenario is not None:
            scenario, inferred = self._scenario, []
        else:
            scenario, inferred = infer_scenario(flattened(self._state_dict or {}), W)
        if scenario.world_size != W:
            scenario = dataclasses.replace(scenario, world_size=W)
        scenario = dataclasses.replace(
            scenario, components=captured_components(self._state_dict or {})
        )
        notes = [
            f"Captured by RecordingLoadPlanner on the coordinator (rank {self._rank} of {W}) inside "
            "create_global_plan: local plans as the coordinator received them.",
            "Every rank's state-dict values ride to the coordinator with its local plan: wanted "
            "values and mismatches are each rank's own; a checkpoint key is 'unexpected' only if "
            "no rank holds or reads it. The mesh and components shown are inferred from the "
            "coordinator's own state dict.",
            *_silent_ranks_note(silent, W),
            "Other ranks' final plans (finish_plan) never reach the coordinator; tables use the global plans.",
            *saved.notes,
            *inferred,
            *self._problem_notes(),
        ]
        timings = {**self._timings, "recording_overhead": self._overhead}
        return LoadTrace(
            scenario=scenario,
            planner=self._planner_info,
            saved=metadata_info(md),
            saved_scenario=None,
            saved_writers=saved.writers,
            reads=tuple(reads.items),
            local_plans=local,
            global_plans=global_records,
            final_plans=None,
            wanted=tuple(wanted.items),
            wanted_by_rank=wanted_by_rank,
            mismatches=mism,
            errors=errors,
            timings=tuple(timings.items()),
            notes=tuple(notes),
            source="capture",
            saved_source="checkpoint (metadata from dcp.load's storage reader)",
            torch_version=torch_version(),
            dcpviz_version=__version__,
            created=now(),
        )


def _silent_ranks_note(silent: list[int], W: int) -> list[str]:
    """The note naming ranks that sent no state-dict values (none when every rank did)."""
    if not silent:
        return []
    shown = ", ".join(map(str, silent[:8])) + (", ..." if len(silent) > 8 else "")
    return [
        f"{len(silent)} of {W} ranks sent no state-dict values (ranks {shown}: their planner is "
        "not a RecordingLoadPlanner, or describing failed there): their wanted values are empty "
        "and their keys are not checked against the checkpoint."
    ]


def read_records_from_plain(items: list[dict[str, Any]] | None) -> list[ReadRecord] | None:
    """ReadRecords from the plain dicts a worker sent (None stays None)."""
    if items is None:
        return None

    return [decode_plain(ReadRecord, it, "rank_record") for it in items]


def values_from_plain(items: list[dict[str, Any]]) -> list[TargetValue]:
    """TargetValues from the plain dicts a worker sent."""
    return [decode_plain(TargetValue, it, "rank_record") for it in items]
