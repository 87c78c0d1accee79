"""Load planning at scale: DCP's own read-item planner, handed only the saved chunks that can overlap.

DCP's ``create_read_items_for_chunk_list(fqn, tensor_md, local_chunks)`` (called by
``create_default_local_load_plan`` for every tensor a rank loads) scans, sorts and sweeps every
saved chunk of the tensor: O(saved chunks) per tensor per rank. A real job pays that once per
rank, in parallel; one process simulating W distinct ranks pays it W times (a 1024-rank TP+FSDP
reshard: 17 min). Here DCP's function is called on a *sub-list* of the saved chunks instead, and
its answer is the same, field by field:

- DCP emits, for each local chunk (in order of start along the sweep dim), every saved chunk
  that ``_check_shard_metadata_pair_overlap`` accepts, ordered by (end along the sweep dim,
  position in the list). Whether a saved chunk is in the sweep's active set depends only on its
  own start/end and the local chunks, not on the other saved chunks. So a sub-list that keeps
  the original relative order and contains every saved chunk that can overlap yields the same
  ReadItems in the same order, with ``storage_index.index`` counted in the sub-list; it is
  mapped back to the position in the full list.
- DCP picks its sweep dim from the largest extent over local and saved chunks; the sub-list keeps,
  for each dim, one chunk that reaches the tensor's largest saved extent, so DCP picks the same dim.
- The candidates are the saved chunks whose interval along *every* dim meets the local chunk's
  (``offset < local end`` and ``end > local offset``): a necessary condition of DCP's overlap
  test, which DCP still applies itself. They come from a per-tensor index of starts sorted per
  dim (chunks starting in ``(local offset - largest size, local end)`` along the most selective dim).

Where it is not provably the same, DCP's own call runs on the full list: a 0-d tensor, fewer
than ``MIN_CHUNKS`` saved chunks, chunks or local chunks whose ndim differs from the tensor's or
whose offsets/sizes are not plain ints (malformed metadata), metadata that is not the simulated
checkpoint's, or when every chunk is a candidate anyway.

Layers repeat: ``ReadPruner`` also reuses DCP's ReadItems across keys whose saved chunks and
local chunks are the same boxes, with the key's name put in (a memo checked against DCP on the
second key of every layout; see ``ReadPruner``).

The function is swapped in ``planner_helpers`` only while DCP's default load planner plans one
rank inside ``simulate_load`` (``ReadPruner.active``), and restored even on error; ``run_load``
and a user's process never see it. Patching, rather than calling DCP's helpers from dcpviz's own
loop, keeps all of ``DefaultLoadPlanner.create_local_plan`` (key matching, the pre-2.4 key
fallback, size checks, submesh checks) DCP's own code. ``tests/test_overlap.py`` compares both
paths on generated layouts, field by field.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch.distributed.checkpoint import planner_helpers
from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

MIN_CHUNKS = 16
"""Below this many saved chunks DCP's own scan is as cheap as the index."""


@dataclasses.dataclass(frozen=True)
class ChunkIndex:
    """One saved tensor's chunks, sorted by start along each dim."""

    chunks: list  # the TensorStorageMetadata's own chunk list (identity checked on use)
    count: int
    ndim: int
    starts: tuple[list[int], ...]  # per dim: chunk starts, ascending
    order: tuple[list[int], ...]  # per dim: chunk positions in that order
    largest: tuple[int, ...]  # per dim: the largest chunk size
    reach: frozenset[int]  # for each dim, one chunk reaching the largest saved extent


def _plain_ints(values: Any, ndim: int) -> bool:
    return len(values) == ndim and all(type(v) is int for v in values)


def build_index(tensor_md: TensorStorageMetadata, min_chunks: int | None = None) -> ChunkIndex | None:
    """The index of ``tensor_md``'s chunks, or None where DCP's own full scan must run
    (``min_chunks``: fewer chunks than this are not worth indexing; default ``MIN_CHUNKS``)."""
    chunks = tensor_md.chunks
    ndim = len(tensor_md.size)
    least = MIN_CHUNKS if min_chunks is None else min_chunks
    if ndim == 0 or not isinstance(chunks, list) or len(chunks) < least:
        return None
    for c in chunks:
        if not (_plain_ints(c.offsets, ndim) and _plain_ints(c.sizes, ndim)):
            return None
    starts, order, largest, reach = [], [], [], set()
    for d in range(ndim):
        pos = sorted(range(len(chunks)), key=lambda i: chunks[i].offsets[d])
        order.append(pos)
        starts.append([chunks[i].offsets[d] for i in pos])
        largest.append(max(c.sizes[d] for c in chunks))
        reach.add(max(range(len(chunks)), key=lambda i: chunks[i].offsets[d] + chunks[i].sizes[d]))
    return ChunkIndex(chunks, len(chunks), ndim, tuple(starts), tuple(order), tuple(largest), frozenset(reach))


def candidates(index: ChunkIndex, local_chunks: list) -> list[int] | None:
    """Positions (ascending) of the saved chunks that can overlap any local chunk, plus the
    extent-reaching ones; None where the full list must be used."""
    ndim = index.ndim
    chunks = index.chunks
    picked: set[int] = set(index.reach)
    for lc in local_chunks:
        if not (_plain_ints(lc.offsets, ndim) and _plain_ints(lc.sizes, ndim)):
            return None
        lo_off = lc.offsets
        lo_end = [o + s for o, s in zip(lc.offsets, lc.sizes)]
        best = None
        for d in range(ndim):
            lo = bisect_right(index.starts[d], lo_off[d] - index.largest[d])
            hi = bisect_left(index.starts[d], lo_end[d])
            if best is None or hi - lo < best[2] - best[1]:
                best = (d, lo, hi)
        d, lo, hi = best
        for pos in index.order[d][lo:hi]:
            c = chunks[pos]
            if all(c.offsets[e] < lo_end[e] and c.offsets[e] + c.sizes[e] > lo_off[e] for e in range(ndim)):
                picked.add(pos)
    if len(picked) >= index.count:
        return None
    return sorted(picked)


def pruned_read_items(
    original: Callable[..., list], fqn: str, tensor_md: TensorStorageMetadata, local_chunks: list,
    index: ChunkIndex | None,
) -> list:
    """DCP's ``create_read_items_for_chunk_list`` on the candidate chunks only, with each
    ``storage_index.index`` mapped back to the chunk's position in ``tensor_md.chunks``."""
    if index is None or not local_chunks or index.chunks is not tensor_md.chunks or len(tensor_md.chunks) != index.count:
        return original(fqn, tensor_md, local_chunks)
    picked = candidates(index, local_chunks)
    if picked is None:
        return original(fqn, tensor_md, local_chunks)
    chunks = index.chunks
    sub = dataclasses.replace(tensor_md, chunks=[chunks[i] for i in picked])
    out = []
    for ri in original(fqn, sub, local_chunks):
        si = ri.storage_index
        out.append(dataclasses.replace(ri, storage_index=MetadataIndex(si.fqn, si.offset, picked[si.index])))
    return out


def _is_dcp_function(fn: Any) -> bool:
    return (
        getattr(fn, "__module__", None) == "torch.distributed.checkpoint.planner_helpers"
        and getattr(fn, "__qualname__", None) == "create_read_items_for_chunk_list"
    )


def read_fields(ri: Any) -> tuple:
    """Every field of a ReadItem (``MetadataIndex.index`` is left out of ``==``, not here)."""
    d, s = ri.dest_index, ri.storage_index
    return (ri, d.fqn, d.offset, d.index, s.fqn, s.offset, s.index)


def relabel(items: list, fqn: str) -> list:
    """``items`` as DCP's read planning makes them for another key: only the two MetadataIndex
    names differ. (Items reading into one local chunk share its renamed, immutable dest index.)"""
    dests: dict[int, MetadataIndex] = {}
    out = []
    for ri in items:
        d, s = ri.dest_index, ri.storage_index
        dest = dests.get(id(d))
        if dest is None:
            dest = dests[id(d)] = MetadataIndex(fqn, d.offset, d.index)
        out.append(dataclasses.replace(ri, dest_index=dest, storage_index=MetadataIndex(fqn, s.offset, s.index)))
    return out


def _chunk_key(chunks: Any) -> tuple | None:
    """The chunks' boxes as plain ints (None if any is malformed): what DCP's read planning reads."""
    out = []
    for c in chunks:
        offsets, sizes = tuple(c.offsets), tuple(c.sizes)
        if len(offsets) != len(sizes) or not all(type(v) is int for v in (*offsets, *sizes)):
            return None
        out.append((offsets, sizes))
    return tuple(out)


class ReadPruner:
    """One checkpoint's metadata prepared for many ranks' read planning: per-tensor chunk
    indexes (``pruned_read_items``), and a checked memo across keys with the same layout.

    The memo: ``create_read_items_for_chunk_list(fqn, tensor_md, local_chunks)`` reads the saved
    chunks' boxes, the local chunks' boxes and ``fqn``, and uses ``fqn`` only as the name in each
    ReadItem's two MetadataIndex. So 80 layers of one shape, saved alike and loaded into the same
    local box, get DCP's ReadItems of the first layer with the name replaced. Checked, not
    assumed: the second key of every layout is planned by DCP as well and compared field by
    field; any difference turns the memo off for the rest of the simulation.
    """

    def __init__(self, metadata: Any, min_chunks: int | None = None, memo: bool = True) -> None:
        self._min_chunks = min_chunks
        self._tensors = {
            id(v): v for v in metadata.state_dict_metadata.values() if isinstance(v, TensorStorageMetadata)
        }
        self._indexes: dict[int, ChunkIndex | None] = {}
        self._layouts: dict[int, int | None] = {}  # id(tensor_md) -> layout number
        self._layout_numbers: dict[tuple, int] = {}
        self._memo: dict[tuple, list] = {}  # (layout, local boxes) -> [fqn, items, checked]
        self.memo_on = memo
        self.memo_hits = 0

    def _index_for(self, tensor_md: Any) -> ChunkIndex | None:
        key = id(tensor_md)
        if self._tensors.get(key) is not tensor_md:
            return None  # not this checkpoint's metadata
        if key not in self._indexes:
            try:
                self._indexes[key] = build_index(tensor_md, self._min_chunks)
            except Exception:  # malformed metadata: DCP's own scan decides what happens
                self._indexes[key] = None
        return self._indexes[key]

    def _layout_for(self, tensor_md: Any) -> int | None:
        key = id(tensor_md)
        if key not in self._layouts:
            try:
                boxes = _chunk_key(tensor_md.chunks)
            except Exception:
                boxes = None
            self._layouts[key] = None if boxes is None else self._layout_numbers.setdefault(boxes, len(self._layout_numbers))
        return self._layouts[key]

    def read_items(self, original: Callable[..., list], fqn: str, tensor_md: Any, local_chunks: list) -> list:
        """What DCP's ``create_read_items_for_chunk_list`` returns, the cheapest exact way."""
        if self._tensors.get(id(tensor_md)) is not tensor_md:
            return original(fqn, tensor_md, local_chunks)  # not this checkpoint's metadata
        index = self._index_for(tensor_md)
        layout = self._layout_for(tensor_md) if self.memo_on and local_chunks else None
        local = _chunk_key(local_chunks) if layout is not None else None
        if local is None:
            return pruned_read_items(original, fqn, tensor_md, local_chunks, index)
        key = (layout, local)
        hit = self._memo.get(key)
        if hit is None:
            items = pruned_read_items(original, fqn, tensor_md, local_chunks, index)
            if all(ri.dest_index.fqn == fqn and ri.storage_index.fqn == fqn for ri in items):
                self._memo[key] = [fqn, items, False]
            return items
        first_fqn, first_items, checked = hit
        same = list(first_items) if fqn == first_fqn else relabel(first_items, fqn)
        if not checked:
            planned = pruned_read_items(original, fqn, tensor_md, local_chunks, index)
            if [read_fields(ri) for ri in planned] != [read_fields(ri) for ri in same]:
                self.memo_on = False  # DCP's read planning is not what this memo assumes
                self._memo.clear()
                return planned
            hit[2] = True
            return planned
        self.memo_hits += 1
        return same

    @contextmanager
    def active(self) -> Iterator[bool]:
        """While inside, DCP's ``planner_helpers.create_read_items_for_chunk_list`` is the
        pruned call for this metadata's tensors (and DCP's own for anything else). Yields False
        and changes nothing when the helper is not DCP's own (someone patched it)."""
        original = planner_helpers.create_read_items_for_chunk_list
        if not _is_dcp_function(original):
            yield False
            return

        def create_read_items_for_chunk_list(fqn: str, checkpoint_md: Any, local_chunks: list) -> list:
            return self.read_items(original, fqn, checkpoint_md, local_chunks)

        planner_helpers.create_read_items_for_chunk_list = create_read_items_for_chunk_list
        try:
            yield True
        finally:
            planner_helpers.create_read_items_for_chunk_list = original
