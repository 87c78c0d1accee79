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

from dcpviz.engine.job.world import map_state_dict


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


def to_storageless(
    obj: Any, mode: Any, cache: dict | None = None, shared: dict | None = None
) -> Any:
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
    Pass a fresh dict per state dict: it holds the objects its ids stand for. Checked, not
    assumed: a shared DTensor is handed out only if it describes the value (``describes``);
    otherwise sharing stops for this state dict."""

    def conv(value: Any) -> Any:
        if isinstance(value, DTensor):
            share = shared is not None and type(value) is DTensor and not shared.get(_SHARING_OFF)
            key, guards = shared_key(value) if share else (None, ())
            hit = shared.get(key) if share else None
            if (
                hit is not None
                and len(hit[0]) == len(guards)
                and all(a is b for a, b in zip(hit[0], guards))
            ):
                if describes(hit[1], value):
                    return hit[1]
                shared.clear()
                shared[_SHARING_OFF] = True
                share = False
            local = _fake_like(value._local_tensor, mode, cache)
            out = DTensor(local, value._spec, requires_grad=False)
            if share:
                shared[key] = (guards, out)
            return out
        if isinstance(value, torch.Tensor):
            return _fake_like(value, mode, cache)
        return value

    return map_state_dict(obj, conv)


_SHARING_OFF = ("sharing off",)


def shared_key(value: Any) -> tuple[tuple, tuple]:
    """(key of ``to_storageless``'s ``shared``, objects it stands for: a hit holds these very objects)."""
    return (id(value._local_tensor), id(value._spec)), (value._local_tensor, value._spec)


def describes(fake: Any, value: Any) -> bool:
    """The self-check of sharing: ``fake`` is ``value`` without storage — the same spec object
    and a local tensor of the same type, shape, stride and dtype (all DCP's planning reads)."""
    a, b = fake._local_tensor, value._local_tensor
    return (
        fake._spec is value._spec
        and tuple(a.shape) == tuple(b.shape)
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and type(fake) is type(value)
    )
