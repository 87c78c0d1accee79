"""engine/shortcuts/validation.py: DCP's save validation on stretched metadata gives DCP's own verdict, and
on any problem DCP's own messages and warnings, on generated layouts (even, uneven, empty, N-D,
shuffled, replicated) and corrupted ones (overlaps, gaps, out of bounds, negative sizes)."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import hand_state_dict
from torch.distributed.checkpoint import default_planner
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import SavePlan

import dcpviz
from dcpviz.engine.job.models import PRESETS
from dcpviz.engine.shortcuts import validation

DCP_VALIDATE = default_planner._validate_global_plan


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_logged(fn):
    """(DCP's error list or the exception, warnings logged by DCP's default_planner)."""
    handler = _Captured()
    logger = default_planner.logger
    logger.addHandler(handler)
    try:
        try:
            result = ("ok", fn())
        except Exception as exc:
            result = ("raised", type(exc).__name__, str(exc))
    finally:
        logger.removeHandler(handler)
    return result, handler.messages


def chunk(offsets, sizes) -> ChunkStorageMetadata:
    return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))


@st.composite
def pieces(draw, n: int, many: bool) -> list[tuple[int, int]]:
    parts = draw(st.integers(8, 40) if many else st.integers(1, 4))
    if draw(st.booleans()):  # torch.chunk-like, possibly with empty trailing pieces
        step = -(-n // parts) if n else 0
        return [(min(i * step, n), max(0, min(step, n - min(i * step, n)))) for i in range(parts)]
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=parts - 1, max_size=parts - 1)))
    b = [0, *cuts, n]
    return [(x, y - x) for x, y in zip(b, b[1:])]


@st.composite
def tensor_entries(draw):
    ndim = draw(st.integers(1, 3))
    size = [draw(st.integers(0, 48)) for _ in range(ndim)]
    many = draw(st.integers(0, ndim - 1))  # the dim cut most: often not the largest one
    boxes = [((), ())]
    for d, n in enumerate(size):
        boxes = [(o + (po,), s + (ps,)) for o, s in boxes for po, ps in draw(pieces(n, d == many))]
    chunks = [chunk(o, s) for o, s in boxes]
    if draw(st.booleans()):
        chunks = draw(st.permutations(chunks))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):  # corruption
        kind = draw(st.sampled_from(["shift", "grow", "negative", "drop", "duplicate", "outside"]))
        if not chunks:
            break
        i = draw(st.integers(0, len(chunks) - 1))
        d = draw(st.integers(0, ndim - 1))
        off, sz = list(chunks[i].offsets), list(chunks[i].sizes)
        if kind == "drop":
            del chunks[i]
            continue
        if kind == "duplicate":
            chunks.append(chunks[i])
            continue
        if kind == "shift":
            off[d] += draw(st.integers(-3, 3))
        elif kind == "grow":
            sz[d] += draw(st.integers(1, 5))
        elif kind == "negative":
            sz[d] = -draw(st.integers(1, 3))
        else:
            off[d] = size[d] + draw(st.integers(0, 3))
        chunks[i] = chunk(off, sz)
    return TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size(size), chunks)


@st.composite
def metadatas(draw):
    entries = draw(st.lists(tensor_entries(), min_size=1, max_size=3))
    md = Metadata(state_dict_metadata={f"t{i}": v for i, v in enumerate(entries)})
    ranks = draw(st.sampled_from([1, 2, 4]))  # DCP checks the volume only with more than one plan
    return [SavePlan([]) for _ in range(ranks)], md


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metadatas())
def test_stretched_validation_gives_dcps_verdict_messages_and_logs(case):
    plans, md = case
    expected = run_logged(lambda: DCP_VALIDATE(plans, md))
    got = run_logged(lambda: validation.validate(DCP_VALIDATE, plans, md, min_chunks=2))
    assert got == expected


@st.composite
def repeated_layouts(draw):
    """Metadata where layouts repeat as layers do: the same entry under several keys (sharing
    its chunk objects, as write_memo's do, or as equal copies), now and then with one copy
    corrupted or resized, and bytes entries in between."""
    entries = draw(st.lists(tensor_entries(), min_size=1, max_size=3))
    sd = {}
    for i, value in enumerate(entries):
        for j in range(draw(st.integers(1, 4))):
            how = draw(st.sampled_from(["shared", "copy", "moved", "resized"]))
            chunks = (
                value.chunks
                if how == "shared"
                else [chunk(c.offsets, c.sizes) for c in value.chunks]
            )
            size = value.size
            if how == "moved" and chunks:
                c = chunks[-1]
                chunks[-1] = chunk(
                    (c.offsets[0] + draw(st.integers(1, 3)), *c.offsets[1:]), c.sizes
                )
            if how == "resized":
                size = torch.Size((size[0] + 1, *size[1:]))
            sd[f"t{i}.{j}"] = TensorStorageMetadata(value.properties, size, chunks)
            if draw(st.booleans()):
                sd[f"b{i}.{j}"] = BytesStorageMetadata()
    ranks = draw(st.sampled_from([1, 2, 4]))
    return [SavePlan([]) for _ in range(ranks)], Metadata(state_dict_metadata=sd)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repeated_layouts())
def test_one_tensor_per_layout_gives_dcps_verdict_messages_and_logs(case):
    plans, md = case
    expected = run_logged(lambda: DCP_VALIDATE(plans, md))
    assert (
        run_logged(lambda: validation.validate(DCP_VALIDATE, plans, md, min_chunks=2)) == expected
    )
    assert run_logged(lambda: validation.validate(DCP_VALIDATE, plans, md)) == expected


def test_layers_are_screened_once_per_layout():
    good = _wk_like().state_dict_metadata["wk"]
    sd = {
        f"layers.{i}.wk": TensorStorageMetadata(good.properties, good.size, good.chunks)
        for i in range(80)
    }
    sd["layers.7.wv"] = TensorStorageMetadata(
        good.properties, good.size, [chunk(c.offsets, c.sizes) for c in good.chunks]
    )
    sd["extra"] = BytesStorageMetadata()
    md = Metadata(state_dict_metadata=sd)
    screen = validation.screening_metadata(md)
    assert list(screen.state_dict_metadata) == ["layers.0.wk"]  # equal boxes in other objects too
    moved = list(good.chunks)
    moved[3] = chunk((moved[3].offsets[0] + 1, 0), moved[3].sizes)
    sd["layers.79.wk"] = TensorStorageMetadata(good.properties, good.size, moved)
    assert list(validation.screening_metadata(md).state_dict_metadata) == [
        "layers.0.wk",
        "layers.79.wk",
    ]
    plans = [SavePlan([])] * 2
    expected = run_logged(lambda: DCP_VALIDATE(plans, md))
    assert (
        expected[0][1]
        and run_logged(lambda: validation.validate(DCP_VALIDATE, plans, md)) == expected
    )


def _wk_like(rows: int = 128, cols: int = 512, parts: int = 128):
    step = rows // parts
    chunks = [chunk((i * step, 0), (step, cols)) for i in range(parts)]
    return Metadata(
        state_dict_metadata={
            "wk": TensorStorageMetadata(
                TensorProperties(dtype=torch.bfloat16), torch.Size((rows, cols)), chunks
            )
        }
    )


def test_row_sharded_wide_tensor_is_stretched_and_passes():
    md = _wk_like()
    assert validation.stretch_for(md.state_dict_metadata["wk"]) == (0, 5)  # 128*5 > 512
    stretched = validation.stretched_metadata(md)
    assert stretched is not None and stretched.state_dict_metadata["wk"].size == torch.Size(
        (640, 512)
    )
    assert md.state_dict_metadata["wk"].size == torch.Size(
        (128, 512)
    )  # the real metadata untouched
    calls = []

    def counting(plans, m):
        calls.append(m)
        return DCP_VALIDATE(plans, m)

    assert validation.validate(counting, [SavePlan([])] * 2, md) == []
    assert calls == [stretched] or (len(calls) == 1 and calls[0] is not md)


def test_a_problem_reruns_dcp_on_the_real_metadata():
    md = _wk_like()
    chunks = md.state_dict_metadata["wk"].chunks
    chunks[5] = chunk((9, 0), (1, 512))  # overlaps chunk 9, leaves a gap at row 5
    plans = [SavePlan([])] * 2
    expected = run_logged(lambda: DCP_VALIDATE(plans, md))
    assert expected[0][1], "the corruption is an error for DCP"
    assert run_logged(lambda: validation.validate(DCP_VALIDATE, plans, md)) == expected


def test_patch_is_scoped_and_restored_even_on_error():
    with pytest.raises(RuntimeError), validation.fast_validation() as on:
        assert on and default_planner._validate_global_plan is not DCP_VALIDATE
        raise RuntimeError("boom")
    assert default_planner._validate_global_plan is DCP_VALIDATE
    assert not default_planner.logger.disabled


def test_a_patched_validator_is_left_alone(monkeypatch):
    def users_own(plans, md):
        return DCP_VALIDATE(plans, md)

    monkeypatch.setattr(default_planner, "_validate_global_plan", users_own)
    with validation.fast_validation() as on:
        assert not on and default_planner._validate_global_plan is users_own


# -- DCP's coordinator on real local plans, with and without the shortcut ---------------------
def _local_plans(model: str, mesh, names, recipe: str):
    with torch.device("meta"):
        m = PRESETS[model]()
    plans = []
    for rank in range(math.prod(mesh)):
        p = DefaultSavePlanner()
        p.set_up_planner(
            hand_state_dict(m, recipe, mesh, names, rank, model != "mlp"),
            storage_meta=None,
            is_coordinator=rank == 0,
        )
        plans.append(p.create_local_plan())
    return plans


def _coordinator(plans, fast: bool):
    def plan():
        p = DefaultSavePlanner()
        if fast:
            with validation.fast_validation():
                global_plan, md = p.create_global_plan(plans)
        else:
            global_plan, md = p.create_global_plan(plans)
        return global_plan, md

    return run_logged(plan)


def _corrupt(plans, rank: int, fqn: str, shift: int):
    """Rank ``rank`` writes its ``fqn`` chunk ``shift`` rows lower: an overlap and a gap."""
    items = []
    for wi in plans[rank].items:
        if wi.index.fqn == fqn and wi.tensor_data is not None:
            c = wi.tensor_data.chunk
            moved = chunk((c.offsets[0] + shift, *c.offsets[1:]), c.sizes)
            wi = dataclasses.replace(
                wi, tensor_data=dataclasses.replace(wi.tensor_data, chunk=moved)
            )
        items.append(wi)
    out = list(plans)
    out[rank] = dataclasses.replace(plans[rank], items=items)
    return out


def test_dcp_coordinator_with_shortcut_equals_without(monkeypatch):
    monkeypatch.setattr(validation, "MIN_CHUNKS", 2)
    plans = _local_plans("llama-tiny", (4, 4), ("dp", "tp"), "tp+fsdp")
    assert validation.stretched_metadata(_coordinator(plans, False)[0][1][1]) is not None, (
        "nothing to stretch"
    )
    ok_plain, ok_fast = _coordinator(plans, False), _coordinator(plans, True)
    assert ok_plain[0][0] == "ok" and ok_fast == ok_plain
    bad = _corrupt(plans, 5, "layers.0.attention.wk.weight", 1)
    bad_plain, bad_fast = _coordinator(bad, False), _coordinator(bad, True)
    assert bad_plain[0][0] == "raised" and bad_plain[1], bad_plain
    assert bad_fast == bad_plain


def test_simulate_save_uses_it_and_matches_the_plain_path(monkeypatch):
    monkeypatch.setattr(validation, "MIN_CHUNKS", 2)
    stretched = []
    real = validation.stretched_metadata
    monkeypatch.setattr(
        validation, "stretched_metadata", lambda md, m=None: stretched.append(1) or real(md, m)
    )
    sc = dcpviz.Scenario(model="llama-tiny", world_size=16, mesh=(4, 4), recipe="tp+fsdp")
    fast = dcpviz.simulate_save(sc)
    assert stretched and fast.ok
    plain = dcpviz.simulate_save(sc, fast=False)
    assert fast.metadata == plain.metadata
    assert fast.trace.global_plans == plain.trace.global_plans
    assert default_planner._validate_global_plan is DCP_VALIDATE
