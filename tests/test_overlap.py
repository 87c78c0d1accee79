"""engine/shortcuts/overlap.py: DCP's read planning on the candidate chunks gives DCP's own ReadItems, field
by field (order and storage_index.index included), on generated layouts: even, uneven, empty,
strided (shuffled chunk lists), replicated, N-D, world sizes up and down, and corrupted metadata."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import hand_metadata, hand_state_dict
from torch.distributed.checkpoint import planner_helpers
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    TensorProperties,
    TensorStorageMetadata,
)

import dcpviz
from dcpviz.engine.job.models import PRESETS
from dcpviz.engine.job.world import fake_world
from dcpviz.engine.shortcuts import overlap

DCP_READS = planner_helpers.create_read_items_for_chunk_list


def _box(v):
    return None if v is None else tuple(v) if isinstance(v, (tuple, list, torch.Size)) else v


def fields(items) -> list[tuple]:
    """Every field of every ReadItem, in order (MetadataIndex.index is excluded from ==)."""
    out = []
    for ri in items:
        d, s = ri.dest_index, ri.storage_index
        out.append(
            (
                ri.type,
                d.fqn,
                _box(d.offset),
                d.index,
                _box(ri.dest_offsets),
                s.fqn,
                _box(s.offset),
                s.index,
                _box(ri.storage_offsets),
                _box(ri.lengths),
            )
        )
    return out


def outcome(fn):
    try:
        return "ok", fields(fn())
    except Exception as exc:  # both paths must fail alike
        return "raised", type(exc).__name__, str(exc)


def chunk(offsets, sizes) -> ChunkStorageMetadata:
    """A chunk as DCP builds it (torch.Size), or as corrupted metadata may hold it (plain lists)."""
    if all(type(v) is int for v in (*offsets, *sizes)):
        return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
    return ChunkStorageMetadata(offsets=list(offsets), sizes=list(sizes))


# -- generated layouts -----------------------------------------------------------------------
@st.composite
def partition(draw, n: int) -> list[tuple[int, int]]:
    """(offset, size) pieces covering 0..n: even (torch.chunk-like) or uneven cuts, some empty."""
    if draw(st.booleans()):
        parts = draw(st.integers(1, 9))
        step = -(-n // parts) if n else 0
        return [(min(i * step, n), max(0, min(step, n - min(i * step, n)))) for i in range(parts)]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    bounds = [0, *cuts, n]
    return [(a, b - a) for a, b in zip(bounds, bounds[1:])]


def grid(pieces: list[list[tuple[int, int]]]) -> list[ChunkStorageMetadata]:
    boxes = [((), ())]
    for dim in pieces:
        boxes = [(o + (po,), s + (ps,)) for o, s in boxes for po, ps in dim]
    return [chunk(o, s) for o, s in boxes]


@st.composite
def corrupted(draw, chunks: list, size: tuple[int, ...]) -> list:
    """Overlaps, gaps, out-of-bounds boxes, negative sizes, another ndim, non-int offsets."""
    chunks = list(chunks)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["shift", "grow", "negative", "drop", "ndim", "float", "duplicate"])
        )
        if not chunks:
            break
        i = draw(st.integers(0, len(chunks) - 1))
        c = chunks[i]
        d = draw(st.integers(0, len(size) - 1))
        off, sz = list(c.offsets), list(c.sizes)
        if kind == "shift":
            off[d] += draw(st.integers(-5, 5))
        elif kind == "grow":
            sz[d] += draw(st.integers(1, 7))
        elif kind == "negative":
            sz[d] = -draw(st.integers(1, 4))
        elif kind == "drop":
            del chunks[i]
            continue
        elif kind == "ndim":
            chunks[i] = chunk(off + [0], sz + [1])
            continue
        elif kind == "float":
            chunks[i] = ChunkStorageMetadata(
                offsets=[*off[:d], float(off[d]), *off[d + 1 :]], sizes=sz
            )
            continue
        else:
            chunks.insert(draw(st.integers(0, len(chunks))), c)
            continue
        chunks[i] = chunk(off, sz)
    return chunks


@st.composite
def layouts(draw):
    """(saved TensorStorageMetadata, local chunks) for one tensor."""
    ndim = draw(st.integers(1, 3))
    size = tuple(draw(st.lists(st.integers(0, 24), min_size=ndim, max_size=ndim)))
    saved = grid([draw(partition(n)) for n in size])
    replicas = draw(st.sampled_from([1, 1, 1, 2]))
    saved = [c for c in saved for _ in range(replicas)]
    if draw(st.booleans()):  # strided / arbitrary chunk order, as _StridedShard saves produce
        saved = draw(st.permutations(saved))
    if draw(st.integers(0, 4)) == 0:
        saved = draw(corrupted(saved, size))
    target = grid([draw(partition(n)) for n in size])  # another world size, up or down
    if draw(st.booleans()):
        local = [draw(st.sampled_from(target))]
    else:
        local = draw(
            st.lists(
                st.sampled_from(target),
                min_size=1,
                max_size=3,
                unique_by=lambda c: (tuple(c.offsets), tuple(c.sizes)),
            )
        )
    if draw(st.integers(0, 5)) == 0:  # boxes that are not a partition's, even out of bounds
        local.append(
            chunk(
                [draw(st.integers(-3, n + 3)) for n in size],
                [draw(st.integers(0, n + 3)) for n in size],
            )
        )
    props = TensorProperties(dtype=torch.float32)
    return TensorStorageMetadata(properties=props, size=torch.Size(size), chunks=list(saved)), local


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_pruned_reads_equal_dcps_own_field_by_field(layout):
    md, local = layout
    plain = outcome(lambda: DCP_READS("w", md, local))
    index = None
    try:
        index = overlap.build_index(md, min_chunks=1)
    except Exception:
        pass  # build_index is only called guarded (ReadPruner); a failure means the full scan
    pruned = outcome(lambda: overlap.pruned_read_items(DCP_READS, "w", md, local, index))
    assert pruned == plain


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_layers_alike_share_dcps_reads_with_their_own_names(layout):
    md, local = layout
    # Three keys saved alike (as 80 layers are), one checkpoint.
    entries = {
        k: TensorStorageMetadata(md.properties, md.size, list(md.chunks)) for k in ("a", "b", "c")
    }
    pruner = overlap.ReadPruner(Metadata(state_dict_metadata=entries), min_chunks=1)
    for k in ("a", "b", "c", "b"):
        expected = outcome(lambda k=k: DCP_READS(k, entries[k], local))
        assert (
            outcome(lambda k=k: pruner.read_items(DCP_READS, k, entries[k], local)) == expected
        ), k


def test_the_memo_turns_itself_off_when_dcp_disagrees():
    saved = [chunk((i, 0), (1, 8)) for i in range(32)]
    entries = {
        k: TensorStorageMetadata(
            TensorProperties(dtype=torch.float32), torch.Size((32, 8)), list(saved)
        )
        for k in "abc"
    }
    pruner = overlap.ReadPruner(Metadata(state_dict_metadata=entries))
    local = [chunk((4, 0), (2, 8))]

    def name_dependent(fqn, md, local_chunks):  # a read planner whose answer depends on the name
        items = DCP_READS(fqn, md, local_chunks)
        return items[::-1] if fqn == "b" else items

    assert fields(pruner.read_items(name_dependent, "a", entries["a"], local)) == fields(
        name_dependent("a", entries["a"], local)
    )
    assert fields(pruner.read_items(name_dependent, "b", entries["b"], local)) == fields(
        name_dependent("b", entries["b"], local)
    )
    assert not pruner.memo_on
    assert fields(pruner.read_items(name_dependent, "c", entries["c"], local)) == fields(
        name_dependent("c", entries["c"], local)
    )


def test_a_grid_layout_is_really_pruned():
    # TP+FSDP-like wk: 1024 row chunks, swept along dim 1 by DCP; a FSDP-256 rank's rows meet 4 of them.
    saved = [chunk((i * 1, 0), (1, 64)) for i in range(1024)]
    md = TensorStorageMetadata(
        TensorProperties(dtype=torch.bfloat16), torch.Size((1024, 64)), saved
    )
    local = [chunk((8, 0), (4, 64))]
    index = overlap.build_index(md)
    picked = overlap.candidates(index, local)
    assert picked is not None and len(picked) < 10, picked
    assert fields(overlap.pruned_read_items(DCP_READS, "w", md, local, index)) == fields(
        DCP_READS("w", md, local)
    )


def test_small_or_scalar_or_malformed_tensors_are_not_indexed():
    props = TensorProperties(dtype=torch.float32)
    assert (
        overlap.build_index(TensorStorageMetadata(props, torch.Size((4,)), [chunk((0,), (4,))]))
        is None
    )
    assert (
        overlap.build_index(
            TensorStorageMetadata(props, torch.Size(()), [chunk((), ())] * 20), min_chunks=1
        )
        is None
    )
    mixed = [chunk((i,), (1,)) for i in range(19)] + [chunk((19, 0), (1, 1))]
    assert (
        overlap.build_index(TensorStorageMetadata(props, torch.Size((20,)), mixed), min_chunks=1)
        is None
    )


# -- the patch is scoped ---------------------------------------------------------------------
def _saved_mlp16():
    return dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=16, recipe="fsdp"))


def test_patch_is_restored_even_on_error():
    pruner = overlap.ReadPruner(_saved_mlp16().metadata)
    with pytest.raises(RuntimeError), pruner.active() as on:
        assert on and planner_helpers.create_read_items_for_chunk_list is not DCP_READS
        raise RuntimeError("boom")
    assert planner_helpers.create_read_items_for_chunk_list is DCP_READS


def test_a_patched_helper_is_left_alone(monkeypatch):
    def users_own(fqn, md, local_chunks):
        return DCP_READS(fqn, md, local_chunks)

    monkeypatch.setattr(planner_helpers, "create_read_items_for_chunk_list", users_own)
    with overlap.ReadPruner(_saved_mlp16().metadata).active() as on:
        assert not on
        assert planner_helpers.create_read_items_for_chunk_list is users_own


def test_simulate_load_prunes_and_leaves_dcp_as_it_was(monkeypatch):
    save = _saved_mlp16()
    picked_sizes = []
    real = overlap.candidates

    def spy(index, local_chunks):
        got = real(index, local_chunks)
        picked_sizes.append(None if got is None else len(got))
        return got

    monkeypatch.setattr(overlap, "candidates", spy)
    target = dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp")
    fast = dcpviz.simulate_load(save, target)
    assert planner_helpers.create_read_items_for_chunk_list is DCP_READS
    assert any(n is not None and n < 16 for n in picked_sizes), picked_sizes
    picked_sizes.clear()
    full = dcpviz.simulate_load(save, target, fast=False)
    assert picked_sizes == []  # fast=False: DCP's full scan on every rank
    t, u = fast.trace, full.trace
    resolve = lambda tr: [tuple(tr.reads[i] for i in p.items) for p in tr.local_plans]  # noqa: E731
    assert resolve(t) == resolve(u)


# -- DCP's whole load planner on hand-built DTensors, with and without pruning -----------------
PLANNER_CASES = [
    # (model, saved recipe, saved mesh, names, target recipe, target mesh, names)
    ("llama-tiny", "tp+fsdp", (4, 4), ("dp", "tp"), "fsdp", (6,), ("shard",)),
    ("llama-tiny", "fsdp", (16,), ("shard",), "tp+fsdp", (2, 4), ("dp", "tp")),
    ("llama-tiny", "hsdp", (2, 8), ("replicate", "shard"), "fsdp", (32,), ("shard",)),
    ("mlp", "tp+fsdp", (8, 2), ("dp", "tp"), "tp+fsdp", (2, 2), ("dp", "tp")),
]


@pytest.mark.parametrize(
    "case", PLANNER_CASES, ids=lambda c: f"{c[0]}-{c[1]}{c[2]}-to-{c[4]}{c[5]}"
)
def test_dcp_load_planner_with_pruning_equals_without(case):
    model, s_recipe, s_mesh, s_names, t_recipe, t_mesh, t_names = case
    llama = model != "mlp"
    with torch.device("meta"):
        m = PRESETS[model]()
    md = hand_metadata(m, s_recipe, s_mesh, s_names, llama)
    pruner = overlap.ReadPruner(md, min_chunks=2)
    W = math.prod(t_mesh)
    for rank in sorted({0, 1, W // 2, W - 1}):
        sd = hand_state_dict(m, t_recipe, t_mesh, t_names, rank, llama)
        plans = []
        for prune in (False, True):
            p = DefaultLoadPlanner()
            with fake_world(rank, W):
                if prune:
                    with pruner.active() as on:
                        assert on
                        p.set_up_planner(sd, md, rank == 0)
                        plans.append(fields(p.create_local_plan().items))
                else:
                    p.set_up_planner(sd, md, rank == 0)
                    plans.append(fields(p.create_local_plan().items))
        assert plans[0], "nothing planned"
        assert plans[1] == plans[0], f"rank {rank}"
    assert pruner.memo_hits > 0 or model == "mlp", "layers alike were all planned by DCP"
