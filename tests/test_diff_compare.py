"""The pieces of diff's value comparison, against brute force: box overlaps of two layouts, and
the blockwise comparison (first differing index, max abs difference, NaN, tolerance) with work
blocks small enough to split every region."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcpviz.analysis.diff.renames import rename_candidates
from dcpviz.core.diff_model import SideChunk, SideEntry, overlap_pairs
from dcpviz.engine.diff import values as diff_values
from dcpviz.engine.diff.values import compare_views


def grid(shape: tuple[int, ...], cuts: list[list[int]]) -> tuple[SideChunk, ...]:
    """A layout: each dim cut at the given points."""
    edges = [sorted({0, n, *[c for c in cs if 0 < c < n]}) for n, cs in zip(shape, cuts)]
    out = []
    for spans in itertools.product(*[list(zip(e, e[1:])) for e in edges]):
        out.append(SideChunk(tuple(a for a, _ in spans), tuple(b - a for a, b in spans)))
    return tuple(out)


layouts = st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda shape: st.tuples(
        st.just(shape),
        *[
            st.lists(st.lists(st.integers(0, 9), max_size=3), min_size=2, max_size=2)
            for _ in range(2)
        ],
    )
)


@settings(max_examples=200, deadline=None)
@given(layouts)
def test_overlap_pairs_cover_every_element_once(case):
    shape, cuts_a, cuts_b = case
    a, b = grid(shape, cuts_a), grid(shape, cuts_b)
    pairs = overlap_pairs(a, b)
    seen = {}
    for i, j, off, size in pairs:
        for idx in itertools.product(*[range(o, o + s) for o, s in zip(off, size)]):
            assert idx not in seen
            seen[idx] = (i, j)
            ca, cb = a[i], b[j]
            assert all(
                c.offsets[d] <= idx[d] < c.offsets[d] + c.sizes[d]
                for c in (ca, cb)
                for d in range(2)
            )
    assert len(seen) == math.prod(shape)


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 20])
def test_compare_views_against_brute_force(monkeypatch, block):
    monkeypatch.setattr(diff_values, "BLOCK", block)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 4, 3, generator=g)
    b = a.clone()
    assert compare_views(a, b, 0, 0) == (0, 0.0, None)
    b[3, 1, 2] += 0.25
    b[4, 0, 0] -= 2.0
    b[1, 2, 1] = float("nan")
    n, worst, first = compare_views(a, b, 0, 0)
    assert (n, first) == (3, (1, 2, 1)) and worst == math.inf  # NaN against a number
    a[1, 2, 1] = float("nan")  # NaN against NaN is equal
    n, worst, first = compare_views(a, b, 0, 0)
    assert (n, first) == (2, (3, 1, 2)) and worst == pytest.approx(2.0)
    assert compare_views(a, b, 0.3, 0)[0] == 1  # the 0.25 change is within atol
    # views of non-contiguous regions, another dtype
    n, worst, first = compare_views(a[2:, 1:], b[2:, 1:].to(torch.float64), 0, 0)
    assert (n, first) == (1, (1, 0, 2))


def test_rename_candidates_never_chosen_by_order():
    e = lambda name, shape=(4, 4): SideEntry(name, "tensor", "float32", shape, ())  # noqa: E731
    only_a = [
        e("model.l.0.wq.weight"),
        e("model.l.0.wk.weight"),
        e("model.l.1.wq.weight"),
        e("model.norm", (4,)),
    ]
    only_b = [e("l.0.wq.weight"), e("l.0.wk.weight"), e("l.1.wq.weight"), e("norm2", (4,))]
    for order in (1, -1):
        got = rename_candidates(only_a[::order], only_b[::order])
        certain = sorted((c.fqn_a, c.fqn_b) for c in got if c.certain)
        assert certain == [
            ("model.l.0.wk.weight", "l.0.wk.weight"),
            ("model.l.0.wq.weight", "l.0.wq.weight"),
            ("model.l.1.wq.weight", "l.1.wq.weight"),
        ]
    # q/k/v with equal shapes renamed to other names: candidates, nothing certain
    got = rename_candidates(
        [e("a.wq.weight"), e("a.wk.weight")], [e("a.q_proj.weight"), e("a.k_proj.weight")]
    )
    assert len(got) == 4 and not any(c.certain for c in got)


def write_layout(folder, name: str, full: torch.Tensor, chunks: tuple[SideChunk, ...]) -> None:
    """A safetensors folder holding ``full`` cut into ``chunks``, one file per chunk, with DCP's
    sharding info (as DCP's Hugging Face writer writes per-rank shards)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    for n, c in enumerate(chunks):
        piece = full[tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes))].contiguous()
        info = json.dumps({name: {"saved_offsets": list(c.offsets)}})
        save_file(
            {name: piece}, folder / f"shard-{n}.safetensors", metadata={"DCP_SHARDING_INFO": info}
        )


@pytest.mark.parametrize("min_run", [0, 1 << 40])  # stream B's runs / read B's chunks whole
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=layouts, seed=st.integers(0, 2**16), n_changes=st.integers(0, 3))
def test_chunk_by_chunk_equals_brute_force(
    tmp_path_factory, monkeypatch, min_run, case, seed, n_changes
):
    import dcpviz

    monkeypatch.setattr(diff_values, "MIN_RUN_BYTES", min_run)
    monkeypatch.setattr(diff_values, "BLOCK", 5)  # many blocks per run
    shape, cuts_a, cuts_b = case
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g)
    b = a.clone()
    for _ in range(n_changes):
        idx = tuple(int(torch.randint(0, s, (1,), generator=g)) for s in shape)
        b[idx] += 1 + float(torch.rand(1, generator=g))
    root = tmp_path_factory.mktemp("layouts")
    write_layout(root / "a", "t", a, grid(shape, cuts_a))
    write_layout(root / "b", "t", b, grid(shape, cuts_b))
    r = dcpviz.diff(root / "a", root / "b", values=True)
    row = r.values.set_index("fqn").loc["t"]
    bad = (a != b).nonzero().tolist()
    assert row["compared"] == a.numel() and row["differing"] == len(bad)
    assert row["first_diff"] == (tuple(bad[0]) if bad else None)
    assert row["max_abs_diff"] == pytest.approx((a.double() - b.double()).abs().max().item())
    assert r.exit_code == (1 if bad else 0)
