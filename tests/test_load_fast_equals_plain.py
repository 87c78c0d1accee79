"""simulate_load's shortcuts (fast=None/True) give the plain path's trace (fast=False), field by field.

The plain path builds every rank's state dict with the recipe, hands DCP's DefaultLoadPlanner
every key, lets DCP scan every saved chunk, and converts every ReadItem and value on its own.
The shortcuts (engine/shortcuts/fastpath.py's template and plan classes, engine/shortcuts/overlap.py's pruned
scan, checked memo, chunk lists per spec and read items per spec, convert_load's memos, shared
storage-less DTensors, the planner state let go after planning) must change nothing a trace
holds: each rank's local, global and final plans (every ReadRecord, in order), what each rank
asked for, every mismatch (with DCP's messages), every error.

Layouts: even, uneven, empty shards, strided (TP+FSDP), replicated dims, a 3-D mesh, world
sizes up and down, nested state dicts, optimizer state, partial loads, and corrupted metadata.
The last tests break one shortcut's key at a time (never its self-check) and show that the
self-check notices and keeps the trace exact, and that without the self-check the break shows.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from sabotage import assert_the_break_shows, assert_the_check_catches
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
from dcpviz.engine.convert import load as convert_load
from dcpviz.engine.job.recipes import fsdp_units, tp_plan_of
from dcpviz.engine.shortcuts import overlap
from dcpviz.engine.simulate import storageless

S = dcpviz.Scenario


def differences(fast, plain) -> list[str]:
    """Every way the two traces differ in what they record about the plans (empty: identical)."""
    t, u = fast.trace, plain.trace
    out = []

    def reads(tr, plans):
        if plans is None:
            return None
        return [
            None if p is None else (p.usable, tuple(tr.reads[i] for i in p.items)) for p in plans
        ]

    for phase in ("local_plans", "global_plans", "final_plans"):
        a, b = reads(t, getattr(t, phase)), reads(u, getattr(u, phase))
        if a != b:
            out.append(phase)
    if [tuple(t.wanted[i] for i in w) for w in t.wanted_by_rank] != [
        tuple(u.wanted[i] for i in w) for w in u.wanted_by_rank
    ]:
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
    (
        "even-resume-fsdp8",
        S(model="llama-tiny", world_size=8, recipe="fsdp"),
        S(model="llama-tiny", world_size=8, recipe="fsdp"),
        {},
    ),
    (
        "uneven-hsdp2x4-to-fsdp6",
        S(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"),
        S(model="mlp", world_size=6, recipe="fsdp"),
        {},
    ),
    (
        "empty-shards-fsdp8-resume",
        S(model="mlp", world_size=8, recipe="fsdp"),
        S(model="mlp", world_size=8, recipe="fsdp"),
        {},
    ),
    (
        "empty-shards-hsdp-to-fsdp24",
        S(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"),
        S(model="mlp", world_size=24, recipe="fsdp"),
        {},
    ),
    (
        "strided-tp+fsdp4x2-resume",
        S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"),
        S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"),
        {},
    ),
    (
        "strided-tp+fsdp4x2-to-tp-outer2x4",
        S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"),
        S(
            model="llama-tiny",
            world_size=8,
            mesh=(2, 4),
            mesh_dim_names=("tp", "dp"),
            recipe="tp+fsdp",
        ),
        {},
    ),
    (
        "strided-fsdp32-to-tp+fsdp4x2",
        S(model="llama-tiny", world_size=32, recipe="fsdp"),
        S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"),
        {},
    ),
    (
        "replicated-ddp3-to-fsdp4",
        S(model="mlp", world_size=3, recipe="replicate"),
        S(model="mlp", world_size=4, recipe="fsdp"),
        {},
    ),
    (
        "replicated-fsdp4-to-hsdp2x4",
        S(model="llama-tiny", world_size=4, recipe="fsdp"),
        S(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="hsdp"),
        {},
    ),
    (
        "up-fsdp4-to-fsdp16",
        S(model="llama-tiny", world_size=4, recipe="fsdp"),
        S(model="llama-tiny", world_size=16, recipe="fsdp"),
        {},
    ),
    (
        "down-tp+fsdp16-to-fsdp3",
        S(model="llama-tiny", world_size=16, mesh=(8, 2), recipe="tp+fsdp"),
        S(model="llama-tiny", world_size=3, recipe="fsdp"),
        {},
    ),
    (
        "3d-hsdp+tp-resume",
        S(model="llama-tiny", world_size=8, recipe=hsdp_tp, **MESH3),
        S(model="llama-tiny", world_size=8, recipe=hsdp_tp, **MESH3),
        {"fast": True},
    ),
    (
        "3d-fsdp16-to-hsdp+tp",
        S(model="llama-tiny", world_size=16, recipe="fsdp"),
        S(model="llama-tiny", world_size=8, recipe=hsdp_tp, **MESH3),
        {"fast": True},
    ),
    (
        "nested-fsdp2-to-tp+fsdp2x2",
        S(model=NestedStateNet, world_size=2, recipe="fsdp"),
        S(model=NestedStateNet, world_size=4, mesh=(2, 2), recipe="tp+fsdp"),
        {},
    ),
    (
        "adamw-tp+fsdp2x2-to-fsdp4",
        S(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp", optimizer="adamw"),
        S(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw"),
        {},
    ),
    (
        "adamw-fsdp32-to-tp+fsdp4x2",
        S(model="llama-tiny", world_size=32, recipe="fsdp", optimizer="adamw"),
        S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp", optimizer="adamw"),
        {},
    ),
    (
        "model-only-into-adamw-fails",
        S(model="llama-tiny", world_size=4, recipe="fsdp"),
        S(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw"),
        {},
    ),
    (
        "partial-load-into-adamw",
        S(model="llama-tiny", world_size=4, recipe="fsdp"),
        S(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw"),
        {"planner": DefaultLoadPlanner(allow_partial_load=True)},
    ),
    (
        "other-dtype-target",
        S(model="llama-tiny", world_size=32, recipe="fsdp"),
        S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp", dtype="bfloat16"),
        {},
    ),
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
    return [
        k
        for k, v in md.state_dict_metadata.items()
        if isinstance(v, TensorStorageMetadata) and len(v.size) == 2
    ]


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
    v.chunks[5] = ChunkStorageMetadata(
        offsets=torch.Size([v.chunks[5].offsets[0]]), sizes=torch.Size([v.chunks[5].sizes[0]])
    )


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


CORRUPTIONS = [
    drop_key,
    grow_size,
    change_dtype,
    chunk_of_wrong_ndim,
    chunk_offsets_not_ints,
    tensor_saved_as_bytes,
    chunks_reversed_and_overlapping,
    missing_chunks,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "target",
    [
        S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp"),
        S(model="llama-tiny", world_size=6, recipe="fsdp"),
    ],
    ids=["tp+fsdp4x2", "fsdp6"],
)
def test_shortcuts_give_the_plain_trace_on_corrupted_metadata(corrupt, target):
    md = copy.deepcopy(_base_metadata())
    corrupt(md)
    fast, plain = both(md, target)
    assert differences(fast, plain) == []


# -- each shortcut's self-check catches the shortcut broken alone ----------------------------------
# A sabotage breaks only the shortcut's key, never its self-check (tests/sabotage.py): the check
# must notice and keep the trace exact, and with the check silenced the break must show.
def _chunk_lists_by_dtype(obj):
    """ChunkLists keyed by dtype alone: every DTensor of a rank gets the first one's chunks."""
    return ("any spec", obj.dtype), ()


def _memo_by_layout_alone(self, tensor_md, local_chunks):
    """The layout memo keyed by saved layout alone (local boxes forgotten)."""
    layout = self._layout_for(tensor_md) if self.memo_on and local_chunks else None
    return None if layout is None else ("layout alone", layout)


def _spec_key_without_spec(layout, obj):
    """Read items per spec keyed by the saved layout alone (the rank's spec forgotten)."""
    return (layout, "any spec", obj.dtype), ()


def _target_values_by_dtype(value):
    """TargetValues keyed by dtype alone (layers of different shapes mixed up)."""
    return ("any spec", value.dtype), ()


def _record_key_without_itemsize(ri, itemsizes):
    """read_record's memo key without the saved dtype's element size."""
    return REAL_RECORD_KEY(ri, itemsizes)[:-2] + REAL_RECORD_KEY(ri, itemsizes)[-1:]


def _shared_by_dtype(value):
    """Shared storage-less DTensors keyed by dtype alone (every layer gets the first one)."""
    return ("any", value.dtype), ()


REAL_RECORD_KEY = convert_load.record_key

# (shortcut, owner of its key, key's name, broken key, owner of its self-check, self-check's name)
SABOTAGE = [
    (
        "ChunkLists",
        overlap.ChunkLists,
        "_key",
        staticmethod(_chunk_lists_by_dtype),
        overlap.ChunkLists,
        "_agrees",
    ),
    (
        "read-items memo",
        overlap.ReadPruner,
        "_memo_key",
        _memo_by_layout_alone,
        overlap.ReadPruner,
        "_agrees",
    ),
    (
        "read items per spec",
        overlap.ReadPruner,
        "_spec_key",
        staticmethod(_spec_key_without_spec),
        overlap.ReadPruner,
        "_agrees",
    ),
    (
        "TargetValues",
        convert_load.TargetValues,
        "_key",
        staticmethod(_target_values_by_dtype),
        convert_load.TargetValues,
        "_agrees",
    ),
    (
        "read_record memo",
        convert_load,
        "record_key",
        _record_key_without_itemsize,
        convert_load,
        "record_agrees",
    ),
    ("storage-less sharing", storageless, "shared_key", _shared_by_dtype, storageless, "describes"),
]


def _sabotaged_pair():
    s = S(model="llama-tiny", world_size=32, recipe="fsdp", dtype="bfloat16")
    target = S(model="llama-tiny", world_size=8, mesh=(4, 2), recipe="tp+fsdp")
    md = copy.deepcopy(saved(s).metadata)
    change_dtype(md)  # one saved tensor in another dtype: the read volume depends on it
    return both(md, target)


@pytest.mark.parametrize("sabotage", SABOTAGE, ids=lambda s: s[0])
def test_the_self_check_catches_a_broken_shortcut(sabotage, monkeypatch):
    assert_the_check_catches(sabotage, monkeypatch, _sabotaged_pair, differences)


@pytest.mark.parametrize("sabotage", SABOTAGE, ids=lambda s: s[0])
def test_a_broken_shortcut_without_its_self_check_shows(sabotage, monkeypatch):
    assert_the_break_shows(sabotage, monkeypatch, _sabotaged_pair, differences)
