"""The rules a decoded trace must keep that no single field's type can say.

Types and bounds of single values (non-negative sizes, ranks below ``MAX_WORLD_SIZE``) are the
decoder's job (trace_codec); here: every position points into its table, there is one plan per
rank, the mesh holds the world, boxes have the tensor's rank. Each broken rule raises
TraceFileError naming the field. Tables, views and the CLI rely on these without checking again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from dcpviz.core.errors import TraceFileError
from dcpviz.core.trace import (
    MAX_COUNT,
    LoadTrace,
    MetadataInfo,
    PlanRecord,
    SaveTrace,
    ScenarioInfo,
    Trace,
)
from dcpviz.core.units import ITEMSIZE


def validate_trace(trace: Trace, kind: str) -> None:
    """Raise TraceFileError (naming the field) unless ``trace`` is a consistent ``kind`` trace."""
    if trace.kind != kind:
        raise TraceFileError(
            f"trace.kind is {trace.kind!r} but the file says it is a {kind!r} trace"
        )
    _scenario(trace.scenario, "trace.scenario", captured=trace.source == "capture")
    world = trace.scenario.world_size
    table = trace.items if isinstance(trace, SaveTrace) else trace.reads
    for name in ("local_plans", "global_plans", "final_plans"):
        _plans(getattr(trace, name), world, len(table), f"trace.{name}")
    _ranks((e.rank for e in trace.errors if e.rank is not None), world, "trace.errors[].rank")
    _timings(trace.timings)
    if isinstance(trace, SaveTrace):
        _save(trace)
    else:
        _load(trace, world)


def _scenario(info: ScenarioInfo, where: str, captured: bool) -> None:
    """The mesh must hold exactly the world (ranks' coordinates come from it). A captured
    trace may differ: its mesh is the DTensors' and its world dcp.save's group."""
    size = math.prod(info.mesh)
    if not captured and size != info.world_size:
        raise TraceFileError(
            f"{where}.mesh {list(info.mesh)} holds {size} ranks but world_size is {info.world_size}"
        )


def _plans(plans: Sequence[PlanRecord | None] | None, world: int, n_items: int, where: str) -> None:
    """One plan per rank, each naming positions inside the item table."""
    if plans is None:
        return
    if len(plans) != world:
        raise TraceFileError(
            f"{where} has {len(plans)} plans but world_size is {world} (one per rank)"
        )
    for rank, plan in enumerate(plans):
        if plan is not None and plan.cached and not plan.usable:
            raise TraceFileError(
                f"{where}[{rank}] is both cached (a plan recorded in full) and unusable"
            )
        if plan is not None and plan.items and max(plan.items) >= n_items:
            raise TraceFileError(
                f"{where}[{rank}].items refers to item {max(plan.items)} but the table holds {n_items}"
            )


def _ranks(ranks: Iterable[int], world: int, where: str) -> None:
    bad = next((r for r in ranks if r >= world), None)
    if bad is not None:
        raise TraceFileError(f"{where}: rank {bad} is not below world_size {world}")


def _timings(timings: Sequence[tuple[str, float]]) -> None:
    for name, seconds in timings:
        if not math.isfinite(seconds):
            raise TraceFileError(
                f"trace.timings[{name!r}] is {seconds}, not a finite number of seconds"
            )


def _elements(box: Sequence[int] | None, where: str) -> None:
    """A box of at most MAX_COUNT elements: its bytes (x an itemsize <= 16) fit an int64 column."""
    if box is not None and len(box) > 1 and math.prod(box) > MAX_COUNT:
        raise TraceFileError(f"{where} {list(box)} holds more than 2**53 elements")


def _save(trace: SaveTrace) -> None:
    for i, item in enumerate(trace.items):
        if (
            item.offsets is not None
            and item.sizes is not None
            and len(item.offsets) != len(item.sizes)
        ):
            raise TraceFileError(
                f"trace.items[{i}] has {len(item.offsets)} offsets but {len(item.sizes)} sizes"
            )
        _elements(item.sizes, f"trace.items[{i}].sizes")
        _elements(item.global_size, f"trace.items[{i}].global_size")
    if trace.metadata is not None:
        _metadata(trace.metadata, "trace.metadata")
    world = trace.scenario.world_size
    _ranks((d.rank for d in trace.value_digests), world, "trace.value_digests[].rank")
    _ranks((f.rank for f in trace.file_plan), world, "trace.file_plan[].rank")
    alt = trace.dedup_alternative
    if alt is not None and not len(alt.rank_items) == len(alt.rank_nbytes) == world:
        raise TraceFileError(
            f"trace.dedup_alternative has {len(alt.rank_items)} item counts and {len(alt.rank_nbytes)} byte "
            f"counts but world_size is {world} (one per rank)"
        )


def _load(trace: LoadTrace, world: int) -> None:
    if trace.saved_scenario is not None:
        _scenario(trace.saved_scenario, "trace.saved_scenario", captured=False)
    _metadata(trace.saved, "trace.saved")
    if len(trace.wanted_by_rank) not in (0, world):  # one entry per rank (none: not recorded)
        raise TraceFileError(
            f"trace.wanted_by_rank has {len(trace.wanted_by_rank)} entries but world_size is {world} "
            "(one per rank)"
        )
    if trace.saved_scenario is not None:
        _ranks(
            (w.rank for w in trace.saved_writers if w.rank is not None),
            trace.saved_scenario.world_size,
            "trace.saved_writers[].rank",
        )
    for rank, ids in enumerate(trace.wanted_by_rank):
        if ids and max(ids) >= len(trace.wanted):
            raise TraceFileError(
                f"trace.wanted_by_rank[{rank}] refers to value {max(ids)} but trace.wanted holds {len(trace.wanted)}"
            )
    _wanted(trace)
    for i, r in enumerate(trace.reads):
        _elements(r.lengths, f"trace.reads[{i}].lengths")
        if not len(r.dest_offsets) == len(r.storage_offsets) == len(r.lengths):
            raise TraceFileError(
                f"trace.reads[{i}]: dest_offsets, storage_offsets and lengths differ in length"
            )
    _ranks((r for m in trace.mismatches for r in m.ranks), world, "trace.mismatches[].ranks")


def _wanted(trace: LoadTrace) -> None:
    """Every target value's boxes are boxes, and its dtype one the tables can size."""
    for i, value in enumerate(trace.wanted):
        _elements(value.size, f"trace.wanted[{i}].size")
        if value.dtype is not None:
            _dtype(value.dtype, f"trace.wanted[{i}].dtype")
        for j, c in enumerate(value.chunks):
            _elements(c.sizes, f"trace.wanted[{i}].chunks[{j}].sizes")


def _dtype(name: str, where: str) -> None:
    """A dtype the tables size by: unknown here, every table that counts its bytes would fail."""
    if name not in ITEMSIZE:
        raise TraceFileError(
            f"{where} is {name!r}, not a dtype torch 2.13 knows: the trace is corrupt or was "
            "written with another torch; re-create it with this one."
        )


def _metadata(md: MetadataInfo, where: str) -> None:
    """Every saved chunk is a box of its tensor's rank that lies inside the tensor."""
    for t in md.tensors:
        _elements(t.size, f"{where}.tensors[{t.fqn!r}].size")  # bounds every chunk inside it too
        _dtype(t.dtype, f"{where}.tensors[{t.fqn!r}].dtype")
        for j, c in enumerate(t.chunks):
            if not len(c.offsets) == len(c.sizes) == len(t.size):
                raise TraceFileError(
                    f"{where}.tensors[{t.fqn!r}].chunks[{j}] is not a box of a {len(t.size)}-d tensor"
                )
            if any(o + s > d for o, s, d in zip(c.offsets, c.sizes, t.size)):
                raise TraceFileError(
                    f"{where}.tensors[{t.fqn!r}].chunks[{j}] lies outside the tensor {list(t.size)}"
                )
