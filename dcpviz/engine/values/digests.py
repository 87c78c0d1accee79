"""Fingerprints of values a rank holds.

Chunk digests prove bytes survive a save + load; they are kept out of traces (they describe one
run's values, not a plan): run_save / run_load put them in ``result.run_info.chunk_digests``.
Value digests (``value_digests_of``) go into save traces: of every value DCP's dedup decides
between (plain tensors, Python values, bytes entries, the local shards of replicated DTensors),
over every byte, after canonicalising sets and dict order. DCP keeps one rank's copy of such a
key, and only the digests tell whether the dropped copies differed. ``tied_keys`` finds the
keys that hold one tensor (tied weights), which DCP writes once per key.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import xxhash
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.planner_helpers import _create_chunk_list
from torch.distributed.tensor import DTensor, Replicate

from dcpviz.core.trace import STRUCTURE_PREFIX, ValueDigest


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


# -- value digests: what DCP's dedup keeps or drops ----------------------------------------------
class _Unknown(Exception):
    """A value holds something without values here (a meta or fake tensor): no digest."""


_MAX_DEPTH = 64  # deeper containers (or a cycle) are fingerprinted by their pickle


def value_digest(value: Any) -> str | None:
    """The fingerprint of a value DCP saves under one key on several ranks (a plain tensor, a
    Python value, a whole nested dict under ``flatten_state_dict=False``, the local shard of a
    replicated DTensor), or None where the value does not exist here (a meta tensor) or cannot
    be fingerprinted. Every byte of every tensor is hashed (xxh3-128; bench/bench_digests.py
    measures the cost), so equal digests mean equal values. Values are canonicalised first:
    a set, or a dict in another insertion order, that is equal on every rank has one digest
    in every process, whatever its hash seed."""
    return _digest(value, shapes_only=False)


def structure_digest(value: Any) -> str | None:
    """A digest of a container's structure where its tensors have no values (meta, in
    simulation): keys, Python values, and each tensor's shape, dtype, placements and where its
    shard sits, but no tensor bytes. Ranks whose structure digests differ hold different values
    for certain (a bytes entry holding rank 0's shard of fc1.weight is not rank 1's); equal ones
    tell nothing about the values."""
    digest = _digest(value, shapes_only=True)
    return None if digest is None else STRUCTURE_PREFIX + digest[:30]


def _digest(value: Any, shapes_only: bool) -> str | None:
    h = xxhash.xxh3_128()
    try:
        _feed(h, value, 0, shapes_only)
    except _Unknown:
        return None
    except Exception:  # an exotic value: not known, never a failure of the caller
        return None
    return h.hexdigest()[:32]


def _feed(h: Any, value: Any, depth: int, shapes_only: bool = False) -> None:  # noqa: C901 - one branch per kind of value
    if depth > _MAX_DEPTH:
        _pickled(h, value)
        return
    if isinstance(value, torch.Tensor):
        _tensor(h, value, shapes_only)
    elif value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        h.update(f"{type(value).__name__}:{len(repr(value))}:".encode())
        h.update(repr(value).encode())
    elif isinstance(value, io.BytesIO):
        h.update(b"BytesIO|")
        h.update(value.getbuffer())
    elif type(value) in (list, tuple) and all(type(v) in _PRIMITIVE for v in value):
        # a list of plain values at C speed: repr tells 1, 1.0, '1' and True apart
        h.update(f"prims:{type(value).__name__}:{len(value)}|".encode())
        h.update(repr(value).encode())
    elif isinstance(value, OrderedDict):
        # order is part of an OrderedDict's value (== compares it), so it is hashed in order
        h.update(f"odict:{type(value).__qualname__}:{len(value)}|".encode())
        for k, v in value.items():
            _feed(h, k, depth + 1, shapes_only)
            _feed(h, v, depth + 1, shapes_only)
    elif type(value) is dict and all(
        type(k) in _PRIMITIVE and type(v) in _PRIMITIVE for k, v in value.items()
    ):
        # plain entries at C speed, in a canonical order (dict order is not part of the value)
        h.update(f"primmap:{len(value)}|".encode())
        h.update("\n".join(sorted(repr(e) for e in value.items())).encode())
    elif isinstance(value, Mapping):
        # dict order is not part of the value: the entries are hashed in the order of their digests
        _unordered(
            h,
            f"map:{type(value).__qualname__}",
            [(k, v) for k, v in value.items()],
            depth,
            shapes_only,
        )
    elif type(value) in (set, frozenset) and all(type(v) in _PRIMITIVE for v in value):
        h.update(f"primset:{type(value).__name__}:{len(value)}|".encode())
        h.update("\n".join(sorted(map(repr, value))).encode())  # a canonical order, not hash order
    elif isinstance(value, (set, frozenset)):
        _unordered(h, f"set:{type(value).__qualname__}", list(value), depth, shapes_only)
    elif isinstance(value, (list, tuple)):
        h.update(f"seq:{type(value).__qualname__}:{len(value)}|".encode())
        for v in value:
            _feed(h, v, depth + 1, shapes_only)
    else:
        _object(h, value, depth, shapes_only)


_PRIMITIVE = frozenset({type(None), bool, int, float, str})


def _unordered(h: Any, tag: str, entries: list[Any], depth: int, shapes_only: bool) -> None:
    parts = []
    for e in entries:
        sub = xxhash.xxh3_128()
        _feed(sub, e, depth + 1, shapes_only)
        parts.append(sub.digest())
    h.update(f"{tag}:{len(parts)}|".encode())
    for part in sorted(parts):
        h.update(part)


def _object(h: Any, value: Any, depth: int, shapes_only: bool) -> None:
    """Any other object through its pickle recipe (``__reduce_ex__``, what torch.save stores),
    so sets and dicts inside it are canonicalised too; its plain pickle where that fails."""
    try:
        recipe = value.__reduce_ex__(4)
    except Exception:
        _pickled(h, value)
        return
    if isinstance(recipe, str):  # a global (a function, a class)
        h.update(f"global:{type(value).__module__}.{recipe}|".encode())
        return
    h.update(f"obj:{type(value).__module__}.{type(value).__qualname__}|".encode())
    func, args, *rest = (*recipe, None, None, None)[:5]
    h.update(
        f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}|".encode()
    )
    _feed(
        h,
        tuple(
            a if not isinstance(a, type) else f"{a.__module__}.{a.__qualname__}" for a in args or ()
        ),
        depth + 1,
        shapes_only,
    )
    state, listitems, dictitems = (list(rest) + [None, None, None])[:3]
    _feed(h, state, depth + 1, shapes_only)
    if listitems is not None:
        _feed(h, list(listitems), depth + 1, shapes_only)
    if dictitems is not None:
        _feed(h, dict(dictitems), depth + 1, shapes_only)


def _pickled(h: Any, value: Any) -> None:
    h.update(b"pickle|")
    h.update(pickle.dumps(value, protocol=4))


def _tensor(h: Any, t: torch.Tensor, shapes_only: bool = False) -> None:
    """Shape, dtype and every byte; a DTensor also by its placements and where its local
    shard sits (a bytes entry that holds one rank's shard is not another rank's)."""
    if isinstance(t, DTensor):
        chunks = _create_chunk_list(t)
        offsets = tuple(int(v) for v in chunks[0].offsets) if chunks else ()
        h.update(f"DTensor:{tuple(t.shape)}:{t.placements}:{offsets}|".encode())
        t = t.to_local()
    if shapes_only:
        h.update(f"Tensor:{tuple(t.shape)}:{t.dtype}|".encode())
        return
    if t.is_meta or type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise _Unknown  # meta (no values), or a subclass (fake, sharded) that holds none here
    h.update(f"Tensor:{tuple(t.shape)}:{t.dtype}|".encode())
    data = t.detach().contiguous().cpu().reshape(-1)
    if data.numel():
        h.update(data.view(torch.uint8).numpy())  # the buffer itself: no copy into bytes


def _replicated(value: DTensor) -> bool:
    return any(isinstance(p, Replicate) for p in value.placements)


def _planner_view(state_dict: dict[str, Any], flatten: bool) -> dict[str, Any]:
    return flatten_state_dict(state_dict)[0] if flatten else dict(state_dict)


def tied_parameter_names(model: Any) -> tuple[tuple[str, ...], ...]:
    """Groups of a module's parameter names that are one Parameter (tied weights)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return tuple(tuple(g) for g in groups.values() if len(g) > 1)


def tied_keys(
    state_dict: dict[str, Any], flatten: bool = True, tied_names: tuple[tuple[str, ...], ...] = ()
) -> tuple[tuple[str, ...], ...]:
    """Groups of the planner's keys whose tensors are one tensor: tied weights, which DCP saves
    once per key. Real tensors group by storage (the same storage, offset, shape, strides and
    dtype; a DTensor by its local shard). Meta tensors hold no storage to compare, so they group
    only by ``tied_names`` (the model's tied parameter names, from ``tied_parameter_names``):
    keys ending in the names of one tie, under one prefix ("model.")."""
    tie_of = {name: i for i, group in enumerate(tied_names) for name in group}
    groups: dict[tuple, list[str]] = {}
    for fqn, value in _planner_view(state_dict, flatten).items():
        if not isinstance(value, torch.Tensor) or isinstance(value, ShardedTensor):
            continue
        local = value.to_local() if isinstance(value, DTensor) else value
        key = _meta_tie(str(fqn), tie_of, local) if local.is_meta else _storage_key(local)
        if key is not None:
            groups.setdefault(key, []).append(str(fqn))
    return tuple(sorted(tuple(g) for g in groups.values() if len(g) > 1))


def _storage_key(t: torch.Tensor) -> tuple | None:
    if t.numel() == 0 or type(t) not in (torch.Tensor, torch.nn.Parameter):
        return None
    try:
        return (
            "storage",
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
            t.device,
        )
    except Exception:  # a tensor without a storage: never grouped
        return None


def _meta_tie(fqn: str, tie_of: dict[str, int], t: torch.Tensor) -> tuple | None:
    """A meta tensor's tie: the model's tie its key names, under its prefix, and its meta storage
    (which a copy, e.g. an EMA's clone, does not share; unrelated meta tensors can)."""
    try:
        storage = t.untyped_storage()._cdata
    except Exception:
        return None
    for name, tie in tie_of.items():
        if fqn == name or fqn.endswith("." + name):
            return ("tie", tie, fqn[: len(fqn) - len(name)], storage)
    return None


def value_digests_of(
    state_dict: dict[str, Any], rank: int, flatten: bool = True
) -> list[ValueDigest]:
    """ValueDigests of this rank's values that DCP's dedup decides between: every non-DTensor
    value (a plain tensor, a Python value, a whole nested dict DCP writes as one bytes entry
    when ``flatten`` is off) and the local shard of every DTensor with a ``Replicate``
    placement (DCP keeps one replica; replicas made with ``from_local(run_check=False)`` can
    differ). Keys are the planner's (``flatten``: DCP's default flattening). Values without a
    digest here (meta tensors) are left out: the checks call them unknown."""
    out = []
    for fqn, value in _planner_view(state_dict, flatten).items():
        offsets = None
        if isinstance(value, DTensor):
            if not _replicated(value):
                continue  # sharded only: every rank saves its own chunk, nothing is dropped
            chunks = _create_chunk_list(value)
            offsets = tuple(int(v) for v in chunks[0].offsets) if chunks else ()
        elif isinstance(value, ShardedTensor):
            continue
        elif isinstance(value, torch.Tensor) and value.is_meta:
            continue
        digest = value_digest(value.to_local() if isinstance(value, DTensor) else value)
        if digest is None and isinstance(value, (Mapping, list, tuple)):
            digest = structure_digest(value)  # a bytes entry of meta shards: its layout still tells
        if digest is not None:
            out.append(ValueDigest(fqn=str(fqn), rank=rank, digest=digest, offsets=offsets))
    return out
