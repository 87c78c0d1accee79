"""One side of a diff, whatever it was read from (a DCP directory, a safetensors folder, a save
trace): its entries, each entry's chunks, and where each chunk's bytes lie. Plain data, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

Box = tuple[int, ...]

# how a side's chunk bytes are stored: what reads them back
DCP_RECORD = "dcp"  # one torch.save archive per chunk (FileSystemWriter)
SAFETENSORS_RAW = "safetensors"  # raw little-endian elements, row-major
NO_DATA = "trace"  # a plan: boxes only


@dataclass(frozen=True)
class SideChunk:
    """One stored chunk (a bytes entry has one, with empty boxes). ``file``/``offset``/``length``:
    where its bytes lie (None when the side has no data); ``rank``: the writer, when known."""

    offsets: Box
    sizes: Box
    file: str | None = None
    offset: int | None = None
    length: int | None = None
    rank: int | None = None
    # DCP storage transforms the record was written through (compression, encryption: the
    # ``transform_descriptors`` of its storage record); such bytes are not read, only described
    transforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class SideEntry:
    """One key: a tensor (``dtype``, ``shape``) or a bytes entry (``kind='bytes'``)."""

    fqn: str
    kind: str  # 'tensor' | 'bytes'
    dtype: str | None
    shape: Box | None
    chunks: tuple[SideChunk, ...]


@dataclass(frozen=True)
class DiffSide:
    """Everything a diff needs to know of one side. ``storage`` is one of DCP_RECORD,
    SAFETENSORS_RAW, NO_DATA; ``root``: the directory the chunk files are in."""

    label: str
    source: str  # 'dcp' | 'safetensors' | 'trace'
    storage: str
    root: str | None
    entries: tuple[SideEntry, ...]
    notes: tuple[str, ...] = ()

    def by_fqn(self) -> dict[str, SideEntry]:
        """Entries by key."""
        return {e.fqn: e for e in self.entries}


def intersect(off_a: Box, size_a: Box, off_b: Box, size_b: Box) -> tuple[Box, Box] | None:
    """The overlap of two boxes as (offsets, sizes), or None when they share no element."""
    lo = tuple(max(a, b) for a, b in zip(off_a, off_b, strict=True))
    hi = tuple(min(a + s, b + t) for a, s, b, t in zip(off_a, size_a, off_b, size_b, strict=True))
    if any(h <= low for low, h in zip(lo, hi)):
        return None
    return lo, tuple(h - low for low, h in zip(lo, hi))


def overlap_pairs(
    a: tuple[SideChunk, ...], b: tuple[SideChunk, ...]
) -> list[tuple[int, int, Box, Box]]:
    """(index in a, index in b, offsets, sizes) of every overlap, ordered by a's chunk offsets
    then b's, so consecutive pairs mostly reuse the chunk of b read last. A sweep along the
    first dim keeps this O(n log n + pairs) for the usual row-sharded layouts."""
    order_a = sorted(range(len(a)), key=lambda i: (a[i].offsets, a[i].sizes))
    order_b = sorted(range(len(b)), key=lambda j: (b[j].offsets, b[j].sizes))
    if not a or not b:
        return []
    if not a[0].offsets:  # 0-d tensors: one element each
        return [(i, j, (), ()) for i in order_a for j in order_b]
    starts = [b[j].offsets[0] for j in order_b]
    reach = 0  # furthest end along dim 0 of any b chunk so far: bounds how far back to look
    ends = []
    for j in order_b:
        reach = max(reach, b[j].offsets[0] + b[j].sizes[0])
        ends.append(reach)
    out = []
    for i in order_a:
        ca = a[i]
        lo = _first_reaching(ends, ca.offsets[0])
        for k in range(lo, len(order_b)):
            if starts[k] >= ca.offsets[0] + ca.sizes[0]:
                break
            j = order_b[k]
            box = intersect(ca.offsets, ca.sizes, b[j].offsets, b[j].sizes)
            if box is not None:
                out.append((i, j, *box))
    return out


def _first_reaching(ends: list[int], start: int) -> int:
    """The first position whose running end passes ``start`` (``ends`` is non-decreasing)."""
    lo, hi = 0, len(ends)
    while lo < hi:
        mid = (lo + hi) // 2
        if ends[mid] <= start:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class RegionResult:
    """One compared overlap of a chunk of A and a chunk of B (global offsets and sizes)."""

    fqn: str
    offsets: Box
    sizes: Box
    chunk_a: int
    chunk_b: int
    differing: int
    max_abs_diff: float
    first_diff: Box | None  # global index of the first differing element (row-major)


@dataclass(frozen=True)
class ValueResult:
    """One key's values compared. ``status``: 'equal' | 'differs' | 'skipped' (``reason`` says
    why). Bytes entries compare their stored bytes: ``first_diff`` is then a byte offset."""

    fqn: str
    fqn_b: str
    kind: str  # 'tensor' | 'bytes'
    status: str
    reason: str = ""
    elements: int = 0
    compared: int = 0
    differing: int = 0
    max_abs_diff: float = 0.0
    first_diff: Box | None = None
    nbytes_read: int = 0
