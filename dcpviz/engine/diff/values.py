"""Compare the values of two checkpoints chunk by chunk, streamed from disk in bounded memory.

Each chunk of A is compared with the chunks of B that overlap it, so a checkpoint saved on 8
ranks compares with one saved on 6. A's chunks are read whole (the next one read ahead in a
second thread); B's part of each overlap is streamed in blocks where B stores it row-major, else
B's chunk is read whole and the read-ahead stops: about 2x the largest chunk plus a constant.
Reading (safe on untrusted files, nothing unpickled with plain pickle) is ``engine.diff.chunk_reader``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from dcpviz.core.diff_model import (
    DCP_RECORD,
    SAFETENSORS_RAW,
    DiffSide,
    RegionResult,
    SideEntry,
    ValueResult,
    overlap_pairs,
)
from dcpviz.engine.diff.chunk_reader import ChunkReader, Located, contiguous_strides

BLOCK = 1 << 20  # elements per work block (a few float64 temporaries of this size)


# -- comparing --------------------------------------------------------------------------------
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype and the same bits everywhere (NaNs with equal bits count as equal)."""
    if a.dtype != b.dtype:
        return False
    bits = _BITS.get(a.dtype.itemsize)
    if bits is None or a.dtype.is_complex:
        return bool(torch.equal(a, b))
    a, b = a.view(bits), b.view(bits)
    if a.is_contiguous() and b.is_contiguous():  # numpy's compare is the faster one here
        return bool(np.array_equal(a.numpy(), b.numpy()))
    return bool(torch.equal(a, b))


def _blocks(a: torch.Tensor, b: torch.Tensor, prefix: tuple[int, ...] = ()) -> Iterator[tuple]:
    """(index prefix, start along the next dim, block of a, block of b): views of at most
    BLOCK elements, in row-major order."""
    if a.dim() == 0 or a.numel() <= BLOCK:
        yield prefix, 0, a, b
        return
    inner = math.prod(a.shape[1:])
    if inner <= BLOCK:
        rows = max(1, BLOCK // max(inner, 1))
        for s in range(0, a.shape[0], rows):
            yield prefix, s, a[s : s + rows], b[s : s + rows]
        return
    for s in range(a.shape[0]):
        yield from _blocks(a[s], b[s], (*prefix, s))


def _work_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    return torch.complex128 if (a.is_complex or b.is_complex) else torch.float64


def compare_views(
    a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float
) -> tuple[int, float, tuple[int, ...] | None]:
    """(elements differing, max abs difference, first differing index) of two equal-shape views.
    Exact by default (atol=rtol=0: equal values; NaN equals NaN); else |a-b| <= atol + rtol*|b|.
    A NaN against a number differs by inf."""
    if _bits_equal(a, b):
        return 0, 0.0, None
    work = _work_dtype(a.dtype, b.dtype)
    differing, worst, first = 0, 0.0, None
    for prefix, start, ba, bb in _blocks(a, b):
        da, db = ba.to(work), bb.to(work)
        bad = ~torch.isclose(da, db, rtol=rtol, atol=atol, equal_nan=True)
        diff = (da - db).abs()
        del da, db
        # a NaN against a number differs by inf; NaN against NaN (or inf against inf) by 0
        diff = torch.where(bad, diff.nan_to_num(nan=math.inf), diff.nan_to_num(nan=0.0))
        if diff.numel():
            worst = max(worst, float(diff.max()))
        n = int(bad.sum())
        if n:
            differing += n
            if first is None:
                flat = int(torch.argmax(bad.reshape(-1).to(torch.uint8)))
                local = _unravel(flat, tuple(bad.shape))
                if local:
                    local = (local[0] + start, *local[1:])
                first = (*prefix, *local)
    return differing, worst, first


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for d in reversed(shape):
        out.append(flat % d if d else 0)
        flat = flat // d if d else 0
    return tuple(reversed(out))


def compare_tensor(
    ra: ChunkReader, ea: SideEntry, rb: ChunkReader, eb: SideEntry, atol: float, rtol: float
) -> tuple[ValueResult, list[RegionResult]]:
    """Every overlap of ``ea``'s chunks with ``eb``'s. A's chunks are read whole, the next one
    in a second thread while the current one is compared (two in memory); B's part of each
    overlap is streamed in small blocks where B stores it in long contiguous runs (the usual
    row-major chunks), else B's chunk is read whole (then A's are not read ahead)."""
    elements = math.prod(ea.shape or ())
    regions: list[RegionResult] = []
    pairs = overlap_pairs(ea.chunks, eb.chunks)
    order = list(dict.fromkeys(i for i, *_ in pairs))  # A's chunks in the order they are needed
    located: dict[int, Located] = {}
    cache_b: tuple[int, torch.Tensor | None] = (-1, None)
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = _ReadAhead(pool, ra, ea, order)
        for i, j, off, size in pairs:
            va = _region(ahead.get(i), ea.chunks[i].offsets, off, size)
            found = None
            if cache_b[0] != j:
                loc = located.get(j) or located.setdefault(j, rb.locate(eb, j))
                found = _compare_streamed(va, rb, loc, eb.chunks[j].offsets, off, size, atol, rtol)
            if found is None:
                ahead.stop()  # a whole chunk of B now takes the read-ahead's place in memory
                if cache_b[0] != j:
                    cache_b = (-1, None)
                    cache_b = (j, rb.tensor(eb, j))
                found = compare_views(
                    va, _region(cache_b[1], eb.chunks[j].offsets, off, size), atol, rtol
                )
            del va
            n, worst, first = found
            glob = (
                tuple(o + f for o, f in zip(off, first, strict=True)) if first is not None else None
            )
            regions.append(RegionResult(ea.fqn, off, size, i, j, n, worst, glob))
        ahead.stop()
    compared = sum(math.prod(r.sizes) for r in regions)
    differing = sum(r.differing for r in regions)
    firsts = [r.first_diff for r in regions if r.first_diff is not None]
    worst = max((r.max_abs_diff for r in regions), default=0.0)
    status, reason = ("differs" if differing else "equal"), ""
    if compared < elements:
        reason = f"{elements - compared} elements are not stored on both sides"
        status = "differs"
    return ValueResult(
        ea.fqn,
        eb.fqn,
        "tensor",
        status,
        reason,
        elements,
        compared,
        differing,
        worst,
        min(firsts) if firsts else None,
    ), regions


class _ReadAhead:
    """A's chunks in ``order``, each read into the buffer slot the current one does not use,
    the next one while the current one is compared (file reads release the GIL)."""

    def __init__(
        self, pool: ThreadPoolExecutor, reader: ChunkReader, entry: SideEntry, order: list[int]
    ) -> None:
        self.pool, self.reader, self.entry, self.order = pool, reader, entry, order
        self.pos, self.current, self.pending = -1, (-1, None), None
        self.enabled = True

    def _submit(self, pos: int) -> None:
        if self.enabled and pos < len(self.order):
            self.pending = (
                pos,
                self.pool.submit(self.reader.tensor, self.entry, self.order[pos], pos % 2),
            )

    def get(self, index: int) -> torch.Tensor:
        if self.current[0] == index:
            return self.current[1]
        self.pos += 1
        assert self.order[self.pos] == index
        self.current = (-1, None)  # the slot of the chunk before is free again
        if self.pending is not None and self.pending[0] == self.pos:
            tensor = self.pending[1].result()
        elif self.enabled:
            tensor = self.reader.tensor(self.entry, index, self.pos % 2)
        else:  # one buffer only
            self.reader.free(1)
            tensor = self.reader.tensor(self.entry, index, 0)
        self.pending = None
        self.current = (index, tensor)
        self._submit(self.pos + 1)
        return tensor

    def stop(self) -> None:
        """No more reading ahead: wait for a read in flight, keep one A chunk in memory."""
        self.enabled = False
        if self.pending is not None:
            self.pending[1].result()
            self.pending = None
            self.reader.free((self.pos + 1) % 2)  # the chunk read ahead, never used


MIN_RUN_BYTES = 1 << 18  # shorter contiguous runs are read as one whole chunk instead


def _compare_streamed(
    va: torch.Tensor,
    rb: ChunkReader,
    loc: Located,
    b_offsets: tuple[int, ...],
    off: tuple[int, ...],
    size: tuple[int, ...],
    atol: float,
    rtol: float,
) -> tuple[int, float, tuple[int, ...] | None] | None:
    """Compare ``va`` (A's part of one overlap) with B's part, read from B's storage in blocks
    of at most BLOCK elements; None when B's chunk is not row-major or its runs are short."""
    shape = loc.shape
    if not shape or loc.stride != contiguous_strides(shape) or 0 in size:
        return None
    lo = tuple(o - b for o, b in zip(off, b_offsets, strict=True))
    # k: the outermost dim from which the overlap spans B's chunk fully: each index over the
    # dims before k is one contiguous run of B's storage.
    k = len(shape) - 1
    while k > 0 and size[k] == shape[k]:
        k -= 1
    inner = math.prod(shape[k + 1 :])
    runs = math.prod(size[:k])
    if (size[k] * inner * loc.dtype.itemsize < MIN_RUN_BYTES and runs > 1) or inner > BLOCK:
        return None
    rows = max(1, BLOCK // max(inner, 1))
    differing, worst, first = 0, 0.0, None
    for outer in itertools.product(*[range(s) for s in size[:k]]):
        base = loc.storage_offset + sum((lo[d] + outer[d]) * loc.stride[d] for d in range(k))
        a_run = va[outer] if outer else va
        for r0 in range(0, size[k], rows):
            nr = min(rows, size[k] - r0)
            vb = rb.elements(loc, base + (lo[k] + r0) * loc.stride[k], nr * inner).view(
                nr, *shape[k + 1 :]
            )
            n, w, f = compare_views(a_run.narrow(0, r0, nr), vb, atol, rtol)
            worst = max(worst, w)
            if n:
                differing += n
                if first is None:
                    first = (*outer, f[0] + r0, *f[1:])
    return differing, worst, first


def _region(
    t: Any, chunk_offsets: tuple[int, ...], off: tuple[int, ...], size: tuple[int, ...]
) -> torch.Tensor:
    out = t
    for d, (o, c, s) in enumerate(zip(off, chunk_offsets, size, strict=True)):
        out = out.narrow(d, o - c, s)
    return out


def compare_bytes(ra: ChunkReader, ea: SideEntry, rb: ChunkReader, eb: SideEntry) -> ValueResult:
    """Two bytes entries, compared as stored bytes (never unpickled)."""
    ca, cb = ea.chunks[0], eb.chunks[0]
    la, lb = int(ca.length or 0), int(cb.length or 0)
    pos, first = 0, None
    ia, ib = ra.raw_bytes(ca), rb.raw_bytes(cb)
    bufa, bufb = b"", b""
    while first is None:
        if not bufa:
            bufa = next(ia, b"")
        if not bufb:
            bufb = next(ib, b"")
        if not bufa or not bufb:
            if bufa or bufb:
                first = pos
            break
        n = min(len(bufa), len(bufb))
        if bufa[:n] != bufb[:n]:
            first = pos + next(k for k in range(n) if bufa[k] != bufb[k])
        pos += n
        bufa, bufb = bufa[n:], bufb[n:]
    differs = first is not None or la != lb
    if differs and first is None:
        first = min(la, lb)
    return ValueResult(
        ea.fqn,
        eb.fqn,
        "bytes",
        "differs" if differs else "equal",
        f"A stores {la} bytes, B {lb}" if la != lb else "",
        la,
        min(la, lb),
        int(differs),
        0.0,
        (first,) if differs else None,
    )


def compare_sides(
    a: DiffSide,
    b: DiffSide,
    pairs: tuple[tuple[str, str], ...],
    atol: float = 0.0,
    rtol: float = 0.0,
) -> tuple[list[ValueResult], list[RegionResult]]:
    """Values of every (key of A, key of B) pair: tensors chunk by chunk, bytes entries as bytes.
    A pair that cannot be compared (a trace side, another shape or kind) is 'skipped' with why."""
    ea, eb = a.by_fqn(), b.by_fqn()
    values: list[ValueResult] = []
    regions: list[RegionResult] = []
    ra, rb = ChunkReader(a), ChunkReader(b)
    try:
        for x, y in pairs:
            u, v = ea[x], eb[y]
            reason = _skip_reason(a, b, u, v)
            if reason:
                values.append(ValueResult(x, y, u.kind, "skipped", reason))
            elif u.kind == "bytes":
                values.append(compare_bytes(ra, u, rb, v))
            else:
                value, found = compare_tensor(ra, u, rb, v, atol, rtol)
                values.append(value)
                regions += found
    finally:
        ra.close()
        rb.close()
    return values, regions


def _skip_reason(a: DiffSide, b: DiffSide, u: SideEntry, v: SideEntry) -> str:
    for side in (a, b):
        if side.storage not in (DCP_RECORD, SAFETENSORS_RAW):
            return f"{side.label.split(':')[0]} is a save trace: it holds no values"
    for side, e in ((a, u), (b, v)):
        used = sorted({t for c in e.chunks for t in c.transforms})
        if used:
            return (
                f"{side.label.split(':')[0]} stores it through storage transforms ({', '.join(used)}), "
                "which dcpviz does not run (no third-party code on checkpoint bytes)"
            )
    if u.kind != v.kind:
        return "a tensor on one side, a bytes entry on the other"
    if u.kind == "tensor" and u.shape != v.shape:
        return "shapes differ"
    return ""
