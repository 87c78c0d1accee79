"""simulate_load's shortcuts (fast=None/True) give the plain path's trace (fast=False), field by field.

The plain path builds every rank's state dict with the recipe, hands DCP's DefaultLoadPlanner
every key, lets DCP scan every saved chunk, and converts every ReadItem and value on its own.
The shortcuts (engine/fastpath.py's template and plan classes, engine/overlap.py's pruned
scan, checked memo, chunk lists per spec and read items per spec, convert_load's memos, shared
storage-less DTensors, the planner state let go after planning) must change nothing a trace
holds: each rank's local, global and final plans (every ReadRecord, in order), what each rank
asked for, every mismatch (with DCP's messages), every error.

Layouts: even, uneven, empty shards, strided (TP+FSDP), replicated dims, a 3-D mesh, world
sizes up and down, nested state dicts, optimizer state, partial loads, and corrupted metadata.
The last tests break one shortcut at a time and check that this comparison notices.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from test_fastpath import NestedStateNet
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    TensorStorageMetadata,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import parallelize_module

import dcpviz
from dcpviz.engine import convert_load, overlap, simulate_load
from dcpviz.engine.recipes import fsdp_units, tp_plan_of
from dcpviz.engine.world import map_state_dict

S = dcpviz.Scenario


def differences(fast, plain) -> list[str]:
    """Every way the two traces differ in what they record about the plans (empty: identical)."""
    t, u = fast.trace, plain.trace
    out = []

    def reads(tr, plans):
        if plans is None:
            return None
        return [None if p is None else (p.usable, tuple(tr.reads[i] for i in p.items)) for p in plans]

    for phase in ("local_plans", "global_plans", "final_plans"):
        a, b = reads(t, getattr(t, phase)), reads(u, getattr(u, phase))
        if a != b:
            out.append(phase)
    if [tuple(t.wanted[i] for i in w) for w in t.wanted_by_rank] != [tuple(u.wanted[i] for i in w) for w in u.wanted_by_rank]:
        out.append("wanted_by_rank")
    for name in ("mismatches", "errors", "scenario", "planner", "saved", "saved_writers"):
        if getattr(t, name) != getattr(u, name):
            out.append(name)
    return out


def hsdp_tp(model, mesh):
    """A 3-D recipe: TP on the inner dim, HSDP (replicate x shard) on the outer two."""
    parallelize_module(model, mesh["tp"], tp_plan_of(model))
    dp = mesh["replicate", "shard"]
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=dp)
    fully_shard(model, mesh=dp)
    return model


MESH3 = dict(mesh=(2, 2, 2), mesh_dim_names=("replicate", "shard", "tp"))

# (id, saved scenario, target scenario, simulate_load keywords)
LAYOUTS = [
    ("even-resume-fsdp8", S(model="llama-tiny", world_size=8, recipe="fsdp"), S(model="llama-tiny", world_size=8, recipe="fsdp"), {}),
    ("uneven-hsdp2x4-to-fsdp6", S(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"), S(model="mlp", world_size=6, recipe="fsdp"), {}),
    ("empty-shards-fsdp8-resume", S(model="mlp", world_size=8, recipe="fsdp"), S(model="mlp", world_size=8, recipe="fsdp"), {}),
    ("empty-shards-hsdp-to-fsdp24", S(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"), S(model="mlp", world_size=24, recipe="fsdp"), {}),
    ("strided-tp+fsdp4x2-resume", S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"),
     S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"), {}),
    ("strided-tp+fsdp4x2-to-tp-outer2x4", S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"),
     S(model="llama-tiny", world_size=8, mesh=(2, 4), mesh_dim_names=("tp", "dp"), recipe="tp+fsdp"), {}),
    ("strided-fsdp32-to-tp+fsdp4x2", S(model="llama-tiny", world_size=32, recipe="fsdp"),
     S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"), {}),
    ("replicated-ddp3-to-fsdp4", S(model="mlp", world_size=3, recipe="replicate"), S(model="mlp", world_size=4, recipe="fsdp"), {}),
    ("replicated-fsdp4-to-hsdp2x4", S(model="llama-tiny", world_size=4, recipe="fsdp"),
     S(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="hsdp"), {}),
    ("up-fsdp4-to-fsdp16", S(model="llama-tiny", world_size=4, recipe="fsdp"), S(model="llama-tiny", world_size=16, recipe="fsdp"), {}),
    ("down-tp+fsdp16-to-fsdp3", S(model="llama-tiny", world_size=16, mesh=(8, 2), recipe="tp+fsdp"),
     S(model="llama-tiny", world_size=3, recipe="fsdp"), {}),
    ("3d-hsdp+tp-resume", S(model="llama-tiny", world_size=8, recipe=hsdp_tp, **MESH3),
     S(model="llama-tiny", world_size=8, recipe=hsdp_tp, **MESH3), {"fast": True}),
    ("3d-fsdp16-to-hsdp+tp", S(model="llama-tiny", world_size=16, recipe="fsdp"),
     S(model="llama-tiny", world_size=8, recipe=hsdp_tp, **MESH3), {"fast": True}),
    ("nested-fsdp2-to-tp+fsdp2x2", S(model=NestedStateNet, world_size=2, recipe="fsdp"),
     S(model=NestedStateNet, world_size=4, mesh=(2, 2), recipe="tp+fsdp"), {}),
    ("adamw-tp+fsdp2x2-to-fsdp4", S(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp", optimizer="adamw"),
     S(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw"), {}),
    ("adamw-fsdp32-to-tp+fsdp4x2", S(model="llama-tiny", world_size=32, recipe="fsdp", optimizer="adamw"),
     S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp", optimizer="adamw"), {}),
    ("model-only-into-adamw-fails", S(model="llama-tiny", world_size=4, recipe="fsdp"),
     S(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw"), {}),
    ("partial-load-into-adamw", S(model="llama-tiny", world_size=4, recipe="fsdp"),
     S(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw"),
     {"planner": DefaultLoadPlanner(allow_partial_load=True)}),
    ("other-dtype-target", S(model="llama-tiny", world_size=32, recipe="fsdp"),
     S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp", dtype="bfloat16"), {}),
]

_SAVES: dict = {}


def saved(sc):
    key = repr(sc)
    if key not in _SAVES:
        _SAVES[key] = dcpviz.simulate_save(sc, fast=False)
    return _SAVES[key]


def both(saved_obj, target, **kw):
    fast = dcpviz.simulate_load(saved_obj, target, fast=kw.pop("fast", None), **kw)
    plain = dcpviz.simulate_load(saved_obj, target, fast=False, **kw)
    return fast, plain


@pytest.mark.parametrize("case", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_shortcuts_give_the_plain_trace(case):
    _, s, target, kw = case
    fast, plain = both(saved(s), target, **dict(kw))
    assert plain.trace.local_plans, "nothing planned"
    assert differences(fast, plain) == []


def test_layouts_cover_what_they_say():
    """The list above really has failing, partial, multi-chunk and memo-hitting cases."""
    s, target = LAYOUTS[16][1], LAYOUTS[16][2]
    fast, _ = both(saved(s), target)
    assert fast.trace.errors and fast.mismatches is not None and len(fast.mismatches)
    strided = dcpviz.simulate_load(saved(LAYOUTS[6][1]), LAYOUTS[6][2])
    assert any(len(p.items) > 1 for p in strided.trace.local_plans)
    assert strided.ok


# -- corrupted metadata: simulate_load given DCP Metadata that does not match the target --------
def _base_metadata():
    return saved(S(model="llama-tiny", world_size=32, recipe="fsdp")).metadata


def _tensor_keys(md):
    return [k for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata) and len(v.size) == 2]


def drop_key(md):
    del md.state_dict_metadata[_tensor_keys(md)[3]]


def grow_size(md):
    v = md.state_dict_metadata[_tensor_keys(md)[2]]
    v.size = torch.Size([v.size[0] + 1, v.size[1]])


def change_dtype(md):
    v = md.state_dict_metadata[_tensor_keys(md)[1]]
    v.properties = dataclasses.replace(v.properties, dtype=torch.float64)


def chunk_of_wrong_ndim(md):
    v = md.state_dict_metadata[_tensor_keys(md)[0]]
    v.chunks[5] = ChunkStorageMetadata(offsets=torch.Size([v.chunks[5].offsets[0]]), sizes=torch.Size([v.chunks[5].sizes[0]]))


def chunk_offsets_not_ints(md):
    v = md.state_dict_metadata[_tensor_keys(md)[4]]
    c = v.chunks[3]
    v.chunks[3] = ChunkStorageMetadata(offsets=[float(o) for o in c.offsets], sizes=c.sizes)


def tensor_saved_as_bytes(md):
    md.state_dict_metadata[_tensor_keys(md)[5]] = BytesStorageMetadata()


def chunks_reversed_and_overlapping(md):
    for k in _tensor_keys(md)[:6]:
        v = md.state_dict_metadata[k]
        v.chunks.reverse()
        v.chunks[0] = ChunkStorageMetadata(offsets=torch.Size([0, 0]), sizes=v.size)


def missing_chunks(md):
    v = md.state_dict_metadata[_tensor_keys(md)[6]]
    del v.chunks[7:20]


CORRUPTIONS = [drop_key, grow_size, change_dtype, chunk_of_wrong_ndim, chunk_offsets_not_ints, tensor_saved_as_bytes,
               chunks_reversed_and_overlapping, missing_chunks]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("target", [
    S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"),
    S(model="llama-tiny", world_size=6, recipe="fsdp"),
], ids=["tp+fsdp4x2", "fsdp6"])
def test_shortcuts_give_the_plain_trace_on_corrupted_metadata(corrupt, target):
    md = copy.deepcopy(_base_metadata())
    corrupt(md)
    fast, plain = both(md, target)
    assert differences(fast, plain) == []


# -- the comparison notices a broken shortcut ---------------------------------------------------
def _any_spec_chunk_list(self, original, obj):
    """ChunkLists keyed by dtype alone: every DTensor of a rank gets the first one's chunks."""
    if type(obj) is not torch.distributed.tensor.DTensor:
        return original(obj)
    key = ("any", obj.dtype)
    if key not in self._lists:
        out = original(obj)
        self._lists[key] = (obj._spec, out)
        self._owned[id(out)] = out
    return self._lists[key][1]


def _unchecked_memo(self, original, fqn, tensor_md, local_chunks):
    """The layout memo keyed by saved layout alone (local boxes forgotten)."""
    layout = self._layout_for(tensor_md)
    hit = self._memo.get(("broken", layout))
    if hit is None:
        items = original(fqn, tensor_md, local_chunks)
        self._memo[("broken", layout)] = [fqn, items, True]
        return items
    return overlap.relabel(hit[1], fqn)


def _target_values_by_fqn_suffix(self, fqn, value):
    """TargetValues keyed by the last part of the name (layers of different shapes mixed up)."""
    key = fqn.rsplit(".", 1)[-1]
    if key not in self._parts:
        tv = convert_load.target_value(fqn, value, self._chunk_list)
        self._parts[key] = (None, (tv.kind, tv.size, tv.dtype, tv.chunks, tv.placements))
        return tv
    return convert_load.TargetValue(fqn, *self._parts[key][1])


def _record_memo_without_itemsize(ri, itemsizes, memo=None):
    """read_record's memo without the saved dtype in its key."""
    if memo is None:
        return REAL_READ_RECORD(ri, itemsizes)
    key = (ri.dest_offsets, ri.lengths)
    if key not in memo:
        memo[key] = REAL_READ_RECORD(ri, itemsizes)
    return dataclasses.replace(memo[key], fqn=ri.dest_index.fqn)


REAL_READ_RECORD = convert_load.read_record


def _read_items_by_layout_alone(self, original, fqn, md, obj):
    """Read items per spec keyed by the saved layout alone (the rank's spec forgotten)."""
    layout = self._layout_for(md) if self._tensors.get(id(md)) is md else None
    hit = self._by_spec.get(("broken", layout)) if layout is not None else None
    if hit is not None:
        return overlap.relabel(hit, fqn)
    items = original(fqn, md, obj)
    if layout is not None and all(ri.dest_index.fqn == fqn for ri in items):
        self._by_spec[("broken", layout)] = items
    return items


REAL_TO_STORAGELESS = simulate_load.to_storageless


def _one_dtensor_per_dtype(obj, mode, cache=None, shared=None):
    """Shared storage-less DTensors keyed by dtype alone (every layer gets the first one)."""
    if shared is None:
        return REAL_TO_STORAGELESS(obj, mode, cache, shared)
    first: dict = {}

    def one(value):
        if isinstance(value, torch.distributed.tensor.DTensor):
            return first.setdefault(value.dtype, value)
        return value

    return REAL_TO_STORAGELESS(map_state_dict(obj, one), mode, cache, shared)

SABOTAGE = [
    (overlap.ChunkLists, "chunk_list", _any_spec_chunk_list),
    (overlap.ReadPruner, "read_items", _unchecked_memo),
    (convert_load.TargetValues, "value", _target_values_by_fqn_suffix),
    (convert_load, "read_record", _record_memo_without_itemsize),
    (overlap.ReadPruner, "create_read_items", _read_items_by_layout_alone),
    (simulate_load, "to_storageless", _one_dtensor_per_dtype),
]


@pytest.mark.parametrize("sabotage", SABOTAGE, ids=lambda s: s[2].__name__.strip("_"))
def test_a_broken_shortcut_is_caught(sabotage, monkeypatch):
    owner, name, broken = sabotage
    s = S(model="llama-tiny", world_size=32, recipe="fsdp", dtype="bfloat16")
    target = S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp")
    md = copy.deepcopy(saved(s).metadata)
    change_dtype(md)  # one saved tensor in another dtype: the read volume depends on it
    monkeypatch.setattr(owner, name, broken)
    fast, plain = both(md, target)
    assert differences(fast, plain) != []
