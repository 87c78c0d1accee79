"""Fingerprints of values a rank holds.

Chunk digests prove bytes survive a save + load; they are kept out of traces (they describe one
run's values, not a plan): run_save / run_load put them in ``result.run_info.chunk_digests``.
Value digests of non-DTensor values (``value_digests_of``) go into save traces: DCP's dedup keeps
one rank's copy of such a key, and only the digests tell whether the dropped copies differed.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import Any

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.planner_helpers import _create_chunk_list
from torch.distributed.tensor import DTensor

from dcpviz.core.trace import ValueDigest


def chunk_digests(state_dict: dict[str, Any]) -> list[tuple[str, tuple[int, ...], str]]:
    """(fqn, chunk offsets, sha256 prefix of the chunk's bytes) for every tensor this rank holds;
    offsets are DCP's own (``_create_chunk_list``), so strided shards are named as DCP names them."""

    out = []
    for fqn, value in flatten_state_dict(state_dict)[0].items():
        if not isinstance(value, torch.Tensor):
            continue
        local = value.to_local() if isinstance(value, DTensor) else value
        chunks = _create_chunk_list(value)
        offsets = tuple(int(v) for v in chunks[0].offsets) if chunks else ()
        data = local.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        out.append((fqn, offsets, hashlib.sha256(data).hexdigest()[:16]))
    return out


def poison(model: Any) -> None:
    """NaN in every floating parameter and buffer (zero elsewhere): whatever a load does not
    fill stands out, and a load that silently did nothing cannot pass for one that worked."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.fill_(float("nan") if t.is_floating_point() else 0)


# -- value digests: what DCP's dedup of non-DTensor keys keeps or drops -----------------------
_FULL_LIMIT = 1 << 20  # bytes hashed in full; a larger tensor is sampled
_SAMPLES = 1 << 16  # elements sampled from a larger tensor (evenly spaced, first and last included)


def value_digest(value: Any) -> str | None:
    """A short fingerprint of a value DCP saves under one key on several ranks (a plain tensor,
    a Python value), or None where the value does not exist (a meta tensor) or cannot be
    fingerprinted. Different digests prove different values; equal digests of a tensor over
    1 MiB mean equal samples (65536 evenly spaced elements, plus shape and dtype), which is
    what a per-rank counter, RNG state or position differs in — cheap enough for a recording
    planner to run on every rank of a real job."""
    try:
        if isinstance(value, torch.Tensor):
            return _tensor_digest(value)
        return _object_digest(value)
    except Exception:  # an exotic value: not known, never a failure of the caller
        return None


def _tensor_digest(t: Any) -> str | None:
    if t.is_meta or type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
        return None  # meta (no values), or a tensor subclass (fake, DTensor) that holds none here
    flat = t.detach().reshape(-1)
    if flat.numel() * flat.element_size() > _FULL_LIMIT:
        idx = torch.linspace(0, flat.numel() - 1, _SAMPLES, device=flat.device).long()
        flat = flat[idx]
    data = flat.contiguous().cpu().view(torch.uint8).numpy().tobytes()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode())
    h.update(data)
    return h.hexdigest()[:16]


def _object_digest(value: Any) -> str:
    """What DCP writes for a non-tensor is torch.save of it; its pickle stands for it (torch.save
    adds a per-call serialisation id, which would make equal values differ)."""
    if isinstance(value, io.BytesIO):
        payload = b"BytesIO|" + value.getvalue()
    else:
        payload = pickle.dumps(value, protocol=4)
    return hashlib.sha256(payload).hexdigest()[:16]


def value_digests_of(state_dict: dict[str, Any], rank: int) -> list[ValueDigest]:
    """ValueDigests of this rank's non-DTensor values, keyed as DCP's default planner flattens
    the state dict; values without a digest (meta tensors) are left out."""
    out = []
    for fqn, value in flatten_state_dict(state_dict)[0].items():
        if isinstance(value, (DTensor, ShardedTensor)):
            continue  # sharded: every rank saves its own chunk, nothing is deduplicated away
        if isinstance(value, torch.Tensor) and value.is_meta:
            continue
        digest = value_digest(value)
        if digest is not None:
            out.append(ValueDigest(fqn=str(fqn), rank=rank, digest=digest))
    return out
