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
second key of every layout; see ``ReadPruner``). On one rank the layers share a DTensorSpec per
layout, so DCP's ``_create_chunk_list`` is asked once per spec (``ChunkLists``) and
``_create_read_items`` answers a spec's repeat from that checked memo (``ReadPruner.create_read_items``).

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

from torch.distributed.checkpoint import default_planner, planner_helpers
from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.tensor import DTensor

from dcpviz.engine.convert.load import spec_layout
from dcpviz.engine.shortcuts.guards import is_dcp_function, patched, plain_ints

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


def build_index(
    tensor_md: TensorStorageMetadata, min_chunks: int | None = None
) -> ChunkIndex | None:
    """The index of ``tensor_md``'s chunks, or None where DCP's own full scan must run
    (``min_chunks``: fewer chunks than this are not worth indexing; default ``MIN_CHUNKS``)."""
    chunks = tensor_md.chunks
    ndim = len(tensor_md.size)
    least = MIN_CHUNKS if min_chunks is None else min_chunks
    if ndim == 0 or not isinstance(chunks, list) or len(chunks) < least:
        return None
    for c in chunks:
        if not (plain_ints(c.offsets, ndim) and plain_ints(c.sizes, ndim)):
            return None
    starts, order, largest, reach = [], [], [], set()
    for d in range(ndim):
        pos = sorted(range(len(chunks)), key=lambda i: chunks[i].offsets[d])
        order.append(pos)
        starts.append([chunks[i].offsets[d] for i in pos])
        largest.append(max(c.sizes[d] for c in chunks))
        reach.add(max(range(len(chunks)), key=lambda i: chunks[i].offsets[d] + chunks[i].sizes[d]))
    return ChunkIndex(
        chunks, len(chunks), ndim, tuple(starts), tuple(order), tuple(largest), frozenset(reach)
    )


def candidates(index: ChunkIndex, local_chunks: list) -> list[int] | None:
    """Positions (ascending) of the saved chunks that can overlap any local chunk, plus the
    extent-reaching ones; None where the full list must be used."""
    ndim = index.ndim
    chunks = index.chunks
    picked: set[int] = set(index.reach)
    for lc in local_chunks:
        if not (plain_ints(lc.offsets, ndim) and plain_ints(lc.sizes, ndim)):
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
            if all(
                c.offsets[e] < lo_end[e] and c.offsets[e] + c.sizes[e] > lo_off[e]
                for e in range(ndim)
            ):
                picked.add(pos)
    if len(picked) >= index.count:
        return None
    return sorted(picked)


def pruned_read_items(
    original: Callable[..., list],
    fqn: str,
    tensor_md: TensorStorageMetadata,
    local_chunks: list,
    index: ChunkIndex | None,
) -> list:
    """DCP's ``create_read_items_for_chunk_list`` on the candidate chunks only, with each
    ``storage_index.index`` mapped back to the chunk's position in ``tensor_md.chunks``."""
    if (
        index is None
        or not local_chunks
        or index.chunks is not tensor_md.chunks
        or len(tensor_md.chunks) != index.count
    ):
        return original(fqn, tensor_md, local_chunks)
    picked = candidates(index, local_chunks)
    if picked is None:
        return original(fqn, tensor_md, local_chunks)
    chunks = index.chunks
    sub = dataclasses.replace(tensor_md, chunks=[chunks[i] for i in picked])
    out = []
    for ri in original(fqn, sub, local_chunks):
        si = ri.storage_index
        out.append(
            _with_indexes(ri, ri.dest_index, MetadataIndex(si.fqn, si.offset, picked[si.index]))
        )
    return out


# ReadItem's fields as this module builds them; any other shape (a newer torch) goes through
# dataclasses.replace, and the memo's check against DCP stays the judge either way.
_READ_ITEM_FIELDS = (
    "type",
    "dest_index",
    "dest_offsets",
    "storage_index",
    "storage_offsets",
    "lengths",
)
_PLAIN_READ_ITEM = tuple(f.name for f in dataclasses.fields(ReadItem)) == _READ_ITEM_FIELDS


def _with_indexes(ri: Any, dest: MetadataIndex, storage: MetadataIndex) -> Any:
    """``dataclasses.replace(ri, dest_index=dest, storage_index=storage)``, without its
    per-call field introspection where ReadItem is the six-field dataclass it is in torch 2.x."""
    if _PLAIN_READ_ITEM and type(ri) is ReadItem:
        return ReadItem(ri.type, dest, ri.dest_offsets, storage, ri.storage_offsets, ri.lengths)
    return dataclasses.replace(ri, dest_index=dest, storage_index=storage)


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
        out.append(_with_indexes(ri, dest, MetadataIndex(fqn, s.offset, s.index)))
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


class ChunkLists:
    """DCP's own ``_create_chunk_list`` for the DTensors of one rank, once per DTensorSpec.

    For a DTensor (exactly that class) whose local tensor has no ``__create_chunk_list__`` of its
    own, DCP's answer (``DTensor.__create_chunk_list__``: the partial-placement check, then
    ``_create_chunk_from_dtensor``) reads only the spec: global shape, placements and mesh, whose
    coordinate is this rank's. The layers of a model share one spec object per layout on a rank
    (``fastpath.rank_view`` and ``SharedLeaves`` hand them out), so DCP computes each answer once
    and every key of the layout gets that very list. Every answer came out of DCP for the same
    spec on the same rank; ``clear`` between ranks (the mesh coordinate changes). The specs are
    held, so an ``id`` never stands for a collected object.

    Checked, not assumed: the first repeat of each spec is asked of DCP as well and its boxes
    compared (``_agrees``), once per ``spec_layout`` over the whole run (a rank whose specs have
    the layouts and coordinates of an earlier rank's asks nothing again); a difference turns
    the memo off (``on``) for the rest of the run.
    """

    def __init__(self) -> None:
        self._lists: dict[tuple, list] = {}  # key -> [guards, DCP's list, checked]
        self._owned: dict[int, list] = {}  # id(list) -> a list handed out (kept alive here)
        self._boxes: dict[int, tuple | None] = {}  # id(owned list) -> its boxes
        self._checked: set[tuple] = set()  # spec layouts whose repeat was checked (every rank)
        self.hits = 0
        self.on = True

    def clear(self) -> None:
        """Forget the previous rank's answers."""
        self._lists.clear()
        self._owned.clear()
        self._boxes.clear()

    @staticmethod
    def _key(obj: Any) -> tuple[tuple, tuple]:
        """(memo key, objects the key stands for: a hit must hold these very objects)."""
        return (id(obj._spec), obj.dtype), (obj._spec,)

    @staticmethod
    def _agrees(memo: list, dcp: list) -> bool:
        """The self-check: the memo's answer has DCP's boxes."""
        return _chunk_key(memo) == _chunk_key(dcp)

    def chunk_list(self, original: Callable[[Any], list], obj: Any) -> list:
        """``original(obj)`` (DCP's ``_create_chunk_list``), asked once per spec of this rank."""
        if (
            not self.on
            or type(obj) is not DTensor
            or hasattr(obj._local_tensor, "__create_chunk_list__")
        ):
            return original(obj)
        key, guards = self._key(obj)
        hit = self._lists.get(key)
        if (
            hit is not None
            and len(hit[0]) == len(guards)
            and all(a is b for a, b in zip(hit[0], guards))
        ):
            if not hit[2]:
                layout = spec_layout(obj)
                if layout not in self._checked:
                    out = original(obj)
                    if not self._agrees(hit[1], out):
                        self.on = False  # DCP's chunk lists are not what this memo assumes
                        self.clear()
                        return out
                    self._checked.add(layout)
                hit[2] = True
            self.hits += 1
            return hit[1]
        out = original(obj)
        self._lists[key] = [guards, out, False]
        self._owned[id(out)] = out
        return out

    def known(self, spec: Any, dtype: Any) -> list | None:
        """The list handed out for ``spec`` on this rank, if any."""
        hit = self._lists.get((id(spec), dtype)) if self.on else None
        return hit[1] if hit is not None and hit[0] and hit[0][0] is spec else None

    def boxes(self, local_chunks: list) -> tuple | None:
        """``_chunk_key(local_chunks)``, worked out once for each list this memo handed out."""
        key = id(local_chunks)
        if self._owned.get(key) is not local_chunks:
            return _chunk_key(local_chunks)
        if key not in self._boxes:
            self._boxes[key] = _chunk_key(local_chunks)
        return self._boxes[key]


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

    def __init__(
        self,
        metadata: Any,
        min_chunks: int | None = None,
        memo: bool = True,
        chunk_lists: ChunkLists | None = None,
    ) -> None:
        self._min_chunks = min_chunks
        # Where given, DCP's _create_chunk_list is asked once per spec of a rank (see ChunkLists).
        self.chunk_lists = chunk_lists
        self._tensors = {
            id(v): v
            for v in metadata.state_dict_metadata.values()
            if isinstance(v, TensorStorageMetadata)
        }
        self._indexes: dict[int, ChunkIndex | None] = {}
        self._layouts: dict[int, int | None] = {}  # id(tensor_md) -> layout number
        self._layout_numbers: dict[tuple, int] = {}
        self._memo: dict[tuple, list] = {}  # (layout, local boxes) -> [fqn, items, checked]
        self._by_spec: dict[
            tuple, tuple
        ] = {}  # (layout, id(spec), dtype) -> (spec, memo key); one rank
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
            self._layouts[key] = (
                None
                if boxes is None
                else self._layout_numbers.setdefault(boxes, len(self._layout_numbers))
            )
        return self._layouts[key]

    def read_items(
        self, original: Callable[..., list], fqn: str, tensor_md: Any, local_chunks: list
    ) -> list:
        """What DCP's ``create_read_items_for_chunk_list`` returns, the cheapest exact way."""
        if self._tensors.get(id(tensor_md)) is not tensor_md:
            return original(fqn, tensor_md, local_chunks)  # not this checkpoint's metadata
        key = self._memo_key(tensor_md, local_chunks)
        if key is None:
            return pruned_read_items(
                original, fqn, tensor_md, local_chunks, self._index_for(tensor_md)
            )
        hit = self._memo.get(key)
        if hit is None:
            items = pruned_read_items(
                original, fqn, tensor_md, local_chunks, self._index_for(tensor_md)
            )
            if all(ri.dest_index.fqn == fqn and ri.storage_index.fqn == fqn for ri in items):
                self._memo[key] = [fqn, items, False]
            return items
        first_fqn, first_items, checked = hit
        same = list(first_items) if fqn == first_fqn else relabel(first_items, fqn)
        if not checked:
            planned = pruned_read_items(
                original, fqn, tensor_md, local_chunks, self._index_for(tensor_md)
            )
            if not self._agrees(same, planned):
                self.memo_on = False  # DCP's read planning is not what this memo assumes
                self._memo.clear()
                return planned
            # Equal to DCP's answer; the memo's is given, so a check that wrongly agrees shows.
            hit[2] = True
        else:
            self.memo_hits += 1
        return same

    @staticmethod
    def _agrees(memo: list, dcp: list) -> bool:
        """The self-check: the memo's ReadItems are DCP's, field by field."""
        return [read_fields(ri) for ri in memo] == [read_fields(ri) for ri in dcp]

    def _memo_key(self, tensor_md: Any, local_chunks: list) -> tuple | None:
        """(layout of the saved chunks, local boxes): what the memo answers for (None: no memo)."""
        layout = self._layout_for(tensor_md) if self.memo_on and local_chunks else None
        if layout is None:
            return None
        local = (
            self.chunk_lists.boxes(local_chunks)
            if self.chunk_lists is not None
            else _chunk_key(local_chunks)
        )
        return None if local is None else (layout, local)

    def new_rank(self) -> None:
        """Forget what held for the previous rank's mesh coordinate (chunk lists by spec)."""
        self._by_spec.clear()
        if self.chunk_lists is not None:
            self.chunk_lists.clear()

    def create_read_items(self, original: Callable[..., list], fqn: str, md: Any, obj: Any) -> list:
        """What DCP's ``planner_helpers._create_read_items(fqn, md, obj)`` returns.

        For a DTensor it is ``create_read_items_for_chunk_list(fqn, md, _create_chunk_list(obj))``:
        the chunk list is a function of the spec on this rank (``ChunkLists``), so a key whose
        DTensor shares a spec object with an earlier key of this rank, and whose saved chunks
        have the same layout, asks ``read_items`` the very question (layout, local boxes) that
        key asked. Where the memo has checked that answer against DCP, it is given at once
        (renamed); anything else goes through DCP's own function.
        """
        if (
            self.chunk_lists is None
            or not self.memo_on
            or type(obj) is not DTensor
            or self._tensors.get(id(md)) is not md
            or hasattr(obj._local_tensor, "__create_chunk_list__")
        ):
            return original(fqn, md, obj)
        spec = obj._spec
        layout = self._layout_for(md)
        key, guards = self._spec_key(layout, obj)
        seen = self._by_spec.get(key)
        if (
            seen is not None
            and len(seen[0]) == len(guards)
            and all(a is b for a, b in zip(seen[0], guards))
        ):
            hit = self._memo.get(seen[1])
            if hit is not None and hit[2]:
                same = list(hit[1]) if fqn == hit[0] else relabel(hit[1], fqn)
                if seen[2]:
                    self.memo_hits += 1
                    return same
                # The first repeat of each spec is planned by DCP as well (the self-check).
                items = original(fqn, md, obj)
                if not self._agrees(same, items):
                    self.memo_on = False
                    self._memo.clear()
                    self._by_spec.clear()
                    return items
                seen[2] = True
                return same
        items = original(fqn, md, obj)
        if layout is not None and seen is None:
            local = self.chunk_lists.known(spec, obj.dtype)
            inner = self._memo_key(md, local) if local else None
            if inner is not None:
                self._by_spec[key] = [guards, inner, False]
        return items

    @staticmethod
    def _spec_key(layout: int | None, obj: Any) -> tuple[tuple, tuple]:
        """(key of a spec's repeat, objects the key stands for: a hit must hold these very objects)."""
        return (layout, id(obj._spec), obj.dtype), (obj._spec,)

    @contextmanager
    def active(self) -> Iterator[bool]:
        """While inside, DCP's ``planner_helpers.create_read_items_for_chunk_list`` is the
        pruned call for this metadata's tensors (and DCP's own for anything else), and, with
        ``chunk_lists``, ``planner_helpers._create_chunk_list`` is DCP's own asked once per spec
        and ``default_planner._create_read_items`` answers a spec's repeat from the checked memo.
        Yields False and changes nothing when a helper is not DCP's own (someone patched it)."""
        original = planner_helpers.create_read_items_for_chunk_list
        original_chunks = planner_helpers._create_chunk_list
        original_items = default_planner._create_read_items
        if not (
            is_dcp_function(original, "create_read_items_for_chunk_list")
            and is_dcp_function(original_chunks, "_create_chunk_list")
            and is_dcp_function(original_items, "_create_read_items")
        ):
            yield False
            return

        def create_read_items_for_chunk_list(
            fqn: str, checkpoint_md: Any, local_chunks: list
        ) -> list:
            return self.read_items(original, fqn, checkpoint_md, local_chunks)

        memo = self.chunk_lists

        def _create_chunk_list(tensor: Any) -> list:
            return memo.chunk_list(original_chunks, tensor)

        def _create_read_items(fqn: str, md: Any, obj: Any) -> list:
            return self.create_read_items(original_items, fqn, md, obj)

        patches = [
            (planner_helpers, "create_read_items_for_chunk_list", create_read_items_for_chunk_list)
        ]
        if memo is not None:
            patches += [
                (planner_helpers, "_create_chunk_list", _create_chunk_list),
                (default_planner, "_create_read_items", _create_read_items),
            ]
        with patched(*patches):
            yield True
