"""Give a model built (and sharded) on the meta device real storage and values that tell shards apart.

The order a training script uses with FSDP2 / TP on meta: shard first, then ``to_empty`` on the
device, then fill — so each rank only ever allocates its own shards. The values are not a
model's initialisation: every element of every saved tensor gets a value that depends only on
the tensor's key and the element's global position. Shards of one tensor therefore differ from
each other (a load that reads the wrong shard changes the bytes), while replicas of a tensor
(plain tensors on every rank, HSDP's replicate dim) are equal, as DCP's dedup assumes.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint._traverse import traverse_state_dict
from torch.distributed.checkpoint.planner_helpers import _create_chunk_list
from torch.distributed.tensor import DTensor

from dcpviz.engine.job.world import rebind_to_rank

_GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash constant: spreads consecutive positions
_MIX = 0x85EBCA6B  # murmur3's finaliser constant


def position_hash(
    key: str, global_shape: tuple[int, ...], offsets: tuple[int, ...], sizes: tuple[int, ...]
) -> torch.Tensor:
    """A 32-bit hash (int64 tensor of shape ``sizes``) of ``key`` and each element's row-major
    position in a tensor of ``global_shape``, for the box ``[offsets, offsets + sizes)``."""
    position = torch.zeros(sizes, dtype=torch.int64)
    stride = 1
    for d in reversed(range(len(global_shape))):
        along = torch.arange(offsets[d], offsets[d] + sizes[d], dtype=torch.int64) * stride
        position = position + along.view([-1 if i == d else 1 for i in range(len(sizes))])
        stride *= global_shape[d]
    # int64 products wrap; only the low 32 bits are kept, and those wrapping preserves.
    h = ((position & 0xFFFFFFFF) * _GOLDEN + zlib.crc32(key.encode())) & 0xFFFFFFFF
    h = h ^ (h >> 15)
    h = (h * _MIX) & 0xFFFFFFFF
    return h ^ (h >> 13)


def position_values(
    key: str,
    global_shape: tuple[int, ...],
    offsets: tuple[int, ...],
    sizes: tuple[int, ...],
    dtype: torch.dtype,
) -> torch.Tensor:
    """The values of the box ``[offsets, offsets + sizes)`` of tensor ``key``: floats in [-1, 1),
    small integers, booleans or complex numbers, each a function of the element's global position."""
    h = position_hash(key, global_shape, offsets, sizes)
    unit = h.double() / 2**31 - 1.0
    if dtype.is_complex:
        imag = position_hash(key + ".imag", global_shape, offsets, sizes).double() / 2**31 - 1.0
        return torch.complex(unit, imag).to(dtype)
    if dtype.is_floating_point:
        return unit.to(dtype)
    if dtype == torch.bool:
        return (h & 1).bool()
    return (h % 97).to(dtype)  # fits every integer dtype, uint8 and int8 included


def local_boxes(value: torch.Tensor) -> list[tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]]:
    """(a tensor this rank holds, its offsets and sizes in the global tensor) for each chunk DCP
    writes for ``value`` (``_create_chunk_list``, so strided shards (FSDP over TP) are placed as
    DCP places them): a DTensor's local tensor, a ShardedTensor's local shards, a whole tensor."""

    if isinstance(value, ShardedTensor):
        locals_ = [shard.tensor for shard in value.local_shards()]
    else:
        locals_ = [value._local_tensor if isinstance(value, DTensor) else value]
    chunks = _create_chunk_list(value)
    if len(chunks) != len(locals_) or any(
        tuple(c.sizes) != tuple(t.shape) for c, t in zip(chunks, locals_)
    ):
        raise RuntimeError(
            f"cannot place local tensors of shapes {[tuple(t.shape) for t in locals_]} in DCP's chunks {chunks}"
        )
    return [
        (t, tuple(int(o) for o in c.offsets), tuple(int(n) for n in c.sizes))
        for t, c in zip(locals_, chunks)
    ]


def fill_by_position(state_dict: dict[str, Any]) -> None:
    """Write position values into every tensor DCP's traversal finds in ``state_dict`` (in place:
    a module's state dict shares its parameters' storage), keyed as DCP keys it."""

    def fill(path: tuple, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            return
        key = ".".join(map(str, path))
        for local, offsets, sizes in local_boxes(value):
            local.copy_(position_values(key, tuple(value.shape), offsets, sizes, value.dtype))

    with torch.no_grad():
        traverse_state_dict(state_dict, fill)


def materialize(model: nn.Module, device: str | torch.device) -> None:
    """``to_empty`` on ``device``; then every tensor the state dict holds gets position values
    and everything else (non-persistent buffers) zeros, never uninitialised memory, which would
    make the saved bytes differ from run to run."""

    model.to_empty(device=device)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.zero_()
    state_dict = model.state_dict()
    if dist.is_initialized():
        # Only in one process playing several ranks can a DTensor carry another rank's mesh
        # (DESIGN.md's dispatch-cache hazard); the rebound DTensors share the local storage.
        state_dict, _ = rebind_to_rank(state_dict, dist.get_rank())
    fill_by_position(state_dict)
