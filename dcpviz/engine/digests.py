"""Fingerprints of the tensor chunks a rank holds, to prove bytes survive a save + load.

Kept out of traces (they describe one run's random values, not a plan): run_save / run_load put
them in ``result.run_info.chunk_digests``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.planner_helpers import _create_chunk_list
from torch.distributed.tensor import DTensor


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
