"""``tensor_groups`` from numbered plan signatures equals the plain way of building it.

``tables.plan_signatures`` numbers each planned item's (offsets, sizes) and the set of ranks that
plan it, so the save explorer's tensor list needs no per-item Python tuples. The plain way kept
here (main's ``tensor_groups`` up to 6952c84) builds, per fqn, the sorted tuple of
``(offsets, sizes, ranks)`` of its items; the two must split tensors into the same groups on every
kind of save, and the codes must be equal exactly when the plain signatures are.
"""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from run_helpers import mlp_with_rank_state

import dcpviz
from dcpviz.analysis.groups import collapsed_label, numbers_of, pattern_of
from dcpviz.analysis.save import tables

SAVES = {
    "hsdp": dict(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"),
    "strided": dict(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp"),
    "training-state": dict(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw"),
    "pp-stages": dict(
        model="moe-tiny",
        world_size=8,
        mesh=(2, 2, 2),
        mesh_dim_names=("pp", "dp_shard", "ep"),
        recipe="torchtitan",
    ),
    "rank-values": dict(model=mlp_with_rank_state, world_size=4, recipe="fsdp"),
    "uneven": dict(model="llama-tiny", world_size=3, recipe="fsdp"),
}


@pytest.fixture(scope="module", params=list(SAVES))
def save(request):
    spec = SAVES[request.param]
    return dcpviz.simulate_save(dcpviz.Scenario(**spec), fast=not callable(spec["model"]))


def plain_signatures(trace) -> dict[str, tuple]:
    by_fqn: dict[str, list[tuple]] = {}
    for i, ranks in tables.planned_by(trace).items():
        it = trace.items[i]
        by_fqn.setdefault(it.fqn, []).append((it.offsets or (), it.sizes or (), ranks))
    return {f: tuple(sorted(v)) for f, v in by_fqn.items()}


def plain_groups(trace) -> pd.DataFrame:
    tens = tables.tensors(trace)
    sig = plain_signatures(trace)
    buckets: dict[tuple, list[int]] = {}
    for i, row in enumerate(tens.itertuples(index=False)):
        key = (pattern_of(row.fqn), row.size, row.dtype, row.placements, sig.get(row.fqn, ()))
        buckets.setdefault(key, []).append(i)
    rows = []
    for (pattern, size, dtype, placements, _), idx in buckets.items():
        members = tuple(
            tens.fqn.iloc[i] for i in sorted(idx, key=lambda i: numbers_of(tens.fqn.iloc[i]))
        )
        rows.append(
            (
                collapsed_label(list(members)),
                pattern,
                members,
                len(members),
                size,
                dtype,
                int(tens.chunks.iloc[idx[0]]),
                int(tens.nbytes.iloc[idx].sum()),
                placements,
                tens.component.iloc[idx[0]],
            )
        )
    return pd.DataFrame(rows, columns=tables.GROUP_COLUMNS)


def test_groups_equal_the_plain_way(save):
    pd.testing.assert_frame_equal(tables.tensor_groups(save.trace), plain_groups(save.trace))


def test_codes_equal_exactly_when_signatures_are(save):
    plain = plain_signatures(save.trace)
    coded = tables.plan_signatures(save.trace)
    assert set(coded) == set(plain)
    for a, b in itertools.combinations(sorted(plain), 2):
        assert (coded[a] == coded[b]) == (plain[a] == plain[b]), (a, b)


def test_a_layer_planned_by_other_ranks_is_its_own_group():
    """Two layers alike in shape but planned by different ranks (pipeline stages) must not be
    grouped; with equal plans they are."""
    save = dcpviz.simulate_save(dcpviz.Scenario(**SAVES["pp-stages"]))
    plain = plain_signatures(save.trace)
    coded = tables.plan_signatures(save.trace)
    differ = [
        (a, b)
        for a, b in itertools.combinations(sorted(plain), 2)
        if pattern_of(a) == pattern_of(b) and plain[a] != plain[b]
    ]
    same = [
        (a, b)
        for a, b in itertools.combinations(sorted(plain), 2)
        if a != b and plain[a] == plain[b]
    ]
    assert differ and same  # the case is really there
    assert all(coded[a] != coded[b] for a, b in differ)
    assert all(coded[a] == coded[b] for a, b in same)
