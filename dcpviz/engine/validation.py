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

So DCP's own validation runs first on metadata where, for each tensor whose chunks have more
distinct offsets along another dim than along the one DCP would sweep, that dim is stretched to
be the largest (the sweep then prunes along it). An empty answer is DCP's verdict on the real
metadata. Any problem at all: DCP's validation runs again on the real metadata, so the messages,
their order and the logged warnings are DCP's own (the stretched run logs nothing).

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
    ChunkStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)

MIN_CHUNKS = 64
"""Fewer chunks than this are checked quickly along any dim."""


def _plain_ints(values: Any, ndim: int) -> bool:
    return len(values) == ndim and all(type(v) is int for v in values)


def stretch_for(value: Any, min_chunks: int | None = None) -> tuple[int, int] | None:
    """(dim, factor) that makes DCP sweep ``value``'s chunks along the dim where their offsets
    differ most, or None where DCP's own sweep is kept (bytes, 0-d, few chunks, malformed
    chunks, or the sweep dim is already the best one)."""
    if not isinstance(value, TensorStorageMetadata):
        return None
    size, chunks = value.size, value.chunks
    ndim = len(size)
    least = MIN_CHUNKS if min_chunks is None else min_chunks
    if ndim < 2 or len(chunks) < max(least, 2) or not _plain_ints(size, ndim):
        return None
    for c in chunks:
        if not (_plain_ints(c.offsets, ndim) and _plain_ints(c.sizes, ndim)):
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
        chunks=[ChunkStorageMetadata(offsets=scaled(c.offsets), sizes=scaled(c.sizes)) for c in value.chunks],
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


@contextmanager
def _logger_silenced(logger: Any) -> Iterator[None]:
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def validate(original: Callable[..., list[str]], global_plan: list, metadata: Metadata, min_chunks: int | None = None) -> list[str]:
    """DCP's verdict on ``metadata``: from the stretched copy when it finds nothing, else from
    DCP's own run on the real metadata (its messages and warnings)."""
    try:
        stretched = stretched_metadata(metadata, min_chunks)
    except Exception:  # anything unexpected in the metadata: DCP's own run decides
        stretched = None
    if stretched is not None:
        with _logger_silenced(default_planner.logger):
            errors = original(global_plan, stretched)
        if not errors:
            return []
    return original(global_plan, metadata)


def _is_dcp_function(fn: Any) -> bool:
    return (
        getattr(fn, "__module__", None) == "torch.distributed.checkpoint.default_planner"
        and getattr(fn, "__qualname__", None) == "_validate_global_plan"
    )


@contextmanager
def fast_validation() -> Iterator[bool]:
    """While inside, ``default_planner._validate_global_plan`` (called by DefaultSavePlanner's
    ``create_global_plan``) is ``validate`` around DCP's own. Yields False and changes nothing
    when that function is not DCP's own (someone patched it)."""
    original = default_planner._validate_global_plan
    if not _is_dcp_function(original):
        yield False
        return

    def _validate_global_plan(global_plan: list, metadata: Metadata) -> list[str]:
        return validate(original, global_plan, metadata)

    default_planner._validate_global_plan = _validate_global_plan
    try:
        yield True
    finally:
        default_planner._validate_global_plan = original
