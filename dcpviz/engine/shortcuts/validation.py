"""Save validation at scale: DCP's own ``_validate_global_plan`` on metadata stretched so its sweep prunes.

DCP's coordinator validates a save by sweeping each tensor's chunks along the tensor's *largest*
dim. When the chunks are cut along a smaller dim (TP+FSDP's ``wk``/``wv``: 1024 row blocks of a
1024 x 8192 matrix, swept along the columns), every chunk stays active and the sweep does n^2/2
box checks: 28 s of a 1024-rank llama3-70b TP+FSDP save.

Every check ``_validate_global_plan`` makes is unchanged when one dim of a tensor and of all its
chunks is multiplied by the same integer k >= 1:

- bounds: ``offset < 0``, ``size < 0`` and ``offset + size > tensor size`` hold for k*x iff for x;
- overlap (``_check_box_overlap``): ``a.off >= b.off + b.size`` holds for k*x iff for x;
- volume: every chunk's volume and the tensor's volume are multiplied by k, so they are equal
  (and the sum is) iff they were;
- the sweep finds *every* overlapping pair whichever dim it sweeps when no size is negative (a
  chunk is pruned only once the sweep has passed its end), and a negative size is itself a
  bounds error, reported on either run.

Layers repeat, too: ``_validate_global_plan`` checks each tensor on its own, reading only its
size and its chunks' boxes (bytes entries are skipped), plus the number of plans, which is the
same for all. Tensors with the same size and the same boxes (80 layers' ``wq``) get the same
verdict, so one of each stands for all.

So DCP's own validation runs first on screening metadata: one tensor per distinct (size, chunk
boxes), and, for each tensor whose chunks have more distinct offsets along another dim than
along the one DCP would sweep, that dim stretched to be the largest (the sweep then prunes along
it). An empty answer is DCP's verdict on the real metadata. Any problem at all: DCP's validation
runs again on the real metadata, so the messages, their order and the logged warnings are DCP's
own (the screening run logs nothing).

Used only for ``DefaultSavePlanner`` itself (``fast`` not False), only while its
``create_global_plan`` runs in ``simulate_save``, and only when
``default_planner._validate_global_plan`` is DCP's own function; restored even on error.
``tests/test_validation.py`` compares verdicts, messages and logs with DCP's on generated layouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.distributed.checkpoint import default_planner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)

from dcpviz.engine.shortcuts.guards import DEFAULT_PLANNER, is_dcp_function, patched, plain_ints

MIN_CHUNKS = 64
"""Fewer chunks than this are checked quickly along any dim."""


def stretch_for(value: Any, min_chunks: int | None = None) -> tuple[int, int] | None:
    """(dim, factor) that makes DCP sweep ``value``'s chunks along the dim where their offsets
    differ most, or None where DCP's own sweep is kept (bytes, 0-d, few chunks, malformed
    chunks, or the sweep dim is already the best one)."""
    if not isinstance(value, TensorStorageMetadata):
        return None
    size, chunks = value.size, value.chunks
    ndim = len(size)
    least = MIN_CHUNKS if min_chunks is None else min_chunks
    if ndim < 2 or len(chunks) < max(least, 2) or not plain_ints(size, ndim):
        return None
    for c in chunks:
        if not (plain_ints(c.offsets, ndim) and plain_ints(c.sizes, ndim)):
            return None
    sweep = max(range(ndim), key=lambda d: size[d])  # DCP's own choice
    distinct = [len({c.offsets[d] for c in chunks}) for d in range(ndim)]
    best = max(range(ndim), key=lambda d: distinct[d])
    if distinct[best] <= distinct[sweep] or size[best] <= 0:
        return None
    widest_other = max(size[d] for d in range(ndim) if d != best)
    return best, widest_other // size[best] + 1  # strictly the largest dim afterwards


def _stretch(value: TensorStorageMetadata, dim: int, k: int) -> TensorStorageMetadata:
    def scaled(t: Any) -> torch.Size:
        return torch.Size(x * k if i == dim else x for i, x in enumerate(t))

    return dataclasses.replace(
        value,
        size=scaled(value.size),
        chunks=[
            ChunkStorageMetadata(offsets=scaled(c.offsets), sizes=scaled(c.sizes))
            for c in value.chunks
        ],
    )


def stretched_metadata(metadata: Metadata, min_chunks: int | None = None) -> Metadata | None:
    """A copy of ``metadata`` (state_dict_metadata only matters to validation) with the tensors
    that profit stretched; None when none does."""
    entries = metadata.state_dict_metadata
    out, changed = {}, False
    for key, value in entries.items():
        how = stretch_for(value, min_chunks)
        if how is None:
            out[key] = value
        else:
            out[key] = _stretch(value, *how)
            changed = True
    return dataclasses.replace(metadata, state_dict_metadata=out) if changed else None


def distinct_layouts(metadata: Metadata) -> Metadata | None:
    """A copy of ``metadata`` with one tensor per distinct (size, chunk boxes) and no bytes
    entries (DCP's validation skips them); None when that drops nothing, or when an entry is
    neither (DCP's own run decides what happens to it). Chunk objects shared between tensors
    (``write_memo``) make most comparisons identity checks."""
    entries = metadata.state_dict_metadata
    out: dict[str, Any] = {}
    by_identity: set[tuple] = set()
    by_value: set[tuple] = set()
    boxes: dict[int, tuple] = {}

    def box(c: Any) -> tuple:
        hit = boxes.get(id(c))  # the chunks stay alive in ``metadata``: ids are unique
        if hit is None:
            hit = boxes[id(c)] = (tuple(c.offsets), tuple(c.sizes))
        return hit

    for key, value in entries.items():
        if isinstance(value, BytesStorageMetadata):
            continue
        if not isinstance(value, TensorStorageMetadata):
            return None
        size = tuple(value.size)
        same_objects = (size, tuple(map(id, value.chunks)))
        if same_objects in by_identity:
            continue
        by_identity.add(same_objects)
        same_boxes = (size, tuple(map(box, value.chunks)))
        if same_boxes in by_value:
            continue
        by_value.add(same_boxes)
        out[key] = value
    if len(out) == len(entries):
        return None
    return dataclasses.replace(metadata, state_dict_metadata=out)


def screening_metadata(metadata: Metadata, min_chunks: int | None = None) -> Metadata | None:
    """What DCP's validation runs on first: ``distinct_layouts``, stretched where that helps;
    None when it would be the real metadata again."""
    distinct = distinct_layouts(metadata)
    base = metadata if distinct is None else distinct
    stretched = stretched_metadata(base, min_chunks)
    return stretched if stretched is not None else distinct


def validate(
    original: Callable[..., list[str]],
    global_plan: list,
    metadata: Metadata,
    min_chunks: int | None = None,
) -> list[str]:
    """DCP's verdict on ``metadata``: from the screening metadata when it finds nothing, else
    from DCP's own run on the real metadata (its messages and warnings)."""
    try:
        screen = screening_metadata(metadata, min_chunks)
    except Exception:  # anything unexpected in the metadata: DCP's own run decides
        screen = None
    if screen is not None:
        with patched((default_planner.logger, "disabled", True)):
            errors = original(global_plan, screen)
        if not errors:
            return []
    return original(global_plan, metadata)


@contextmanager
def fast_validation() -> Iterator[bool]:
    """While inside, ``default_planner._validate_global_plan`` (called by DefaultSavePlanner's
    ``create_global_plan``) is ``validate`` around DCP's own. Yields False and changes nothing
    when that function is not DCP's own (someone patched it)."""
    original = default_planner._validate_global_plan
    if not is_dcp_function(original, "_validate_global_plan", DEFAULT_PLANNER):
        yield False
        return

    def _validate_global_plan(global_plan: list, metadata: Metadata) -> list[str]:
        return validate(original, global_plan, metadata)

    with patched((default_planner, "_validate_global_plan", _validate_global_plan)):
        yield True
