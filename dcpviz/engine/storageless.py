"""State dicts whose tensors have shapes, dtypes and placements but no memory.

DCP's load planner cannot be given meta tensors: ``set_up_planner`` calls ``_init_state_dict``,
which replaces every meta tensor (plain or a DTensor's local tensor) with
``torch.empty_like(..., device=<default device>)`` — a real allocation the size of the rank's
shard. Simulating a 70B model on 256 ranks would then ask for the whole model, once per rank.

FakeTensors (``torch._subclasses.fake_tensor``) report device ``cpu`` — so ``_init_state_dict``
leaves them alone — but are backed by meta storage. Everything the planner reads (``size()``,
``dtype``, a DTensor's mesh and placements, ``__create_chunk_list__``) is exact, and nothing is
allocated. The planner itself runs outside the FakeTensorMode: inside it, DTensor's own index
arithmetic (mesh coordinates kept as tensors) becomes data-dependent and raises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.tensor import DTensor

from dcpviz.engine.world import map_state_dict


def new_fake_mode() -> Any:
    """A FakeTensorMode for storage-less target state dicts."""
    # Non-fake inputs are allowed so a user planner mixing in a real tensor does not crash here.
    return FakeTensorMode(allow_non_fake_inputs=True)


def _fake_like(t: torch.Tensor, mode: Any, cache: dict | None = None) -> torch.Tensor:
    key = (tuple(t.shape), tuple(t.stride()), t.dtype)
    if cache is not None and key in cache:
        return cache[key]
    with mode:
        fake = torch.empty_strided(key[0], key[1], dtype=t.dtype, device="cpu")
    if cache is not None:
        cache[key] = fake
    return fake


def to_storageless(obj: Any, mode: Any, cache: dict | None = None, shared: dict | None = None) -> Any:
    """``obj`` (a state dict, nested or flat) with every tensor, and every DTensor's local tensor,
    replaced by a FakeTensor of the same shape, stride and dtype. DTensors keep their spec (mesh,
    placements, global shape and stride) unchanged.

    ``cache``: share one FakeTensor per (shape, stride, dtype) — they hold no data, and a
    70B-shaped model has a dozen distinct shapes among its 720 tensors (creating a FakeTensor
    costs ~0.2 ms).

    ``shared``: one storage-less DTensor for every DTensor of ``obj`` with the same local tensor
    and spec objects (``fastpath.rank_view`` shares both among a layout's keys). DCP's load
    planning reads a value's type, size, mesh coordinate and chunk list, never its identity, so
    keys holding one object plan as keys holding equal ones (tests/test_load_fast_equals_plain.py).
    Pass a fresh dict per state dict: it holds the objects its ids stand for."""

    def conv(value: Any) -> Any:
        if isinstance(value, DTensor):
            key = (id(value._local_tensor), id(value._spec))
            hit = shared.get(key) if shared is not None and type(value) is DTensor else None
            if hit is not None and hit[0] is value._local_tensor and hit[1] is value._spec:
                return hit[2]
            local = _fake_like(value._local_tensor, mode, cache)
            out = DTensor(local, value._spec, requires_grad=False)
            if shared is not None and type(value) is DTensor:
                shared[key] = (value._local_tensor, value._spec, out)
            return out
        if isinstance(value, torch.Tensor):
            return _fake_like(value, mode, cache)
        return value

    return map_state_dict(obj, conv)

