"""The fast save tables (issue 13) equal main's plain ones, row for row, on every kind of save:
sharded, strided, replicated with ties, the lowest-rank option, plain per-rank values, a
training state, torchtitan's state, and a planner whose chunks overlap."""

from __future__ import annotations

import pandas as pd
import pytest
import reference_tables as plain
from run_helpers import mlp_with_rank_state
from torch.distributed.checkpoint import DefaultSavePlanner

import dcpviz
from dcpviz.analysis import checks
from dcpviz.analysis.save import tables

S = dcpviz.Scenario
CASES = {
    "hsdp": (S(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"), {}),
    "hsdp-lowest-rank": (
        S(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"),
        {"planner": DefaultSavePlanner(dedup_save_to_lowest_rank=True)},
    ),
    "replicate-ties": (S(model="mlp", world_size=4, recipe="replicate"), {}),
    "strided-tp+fsdp": (S(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp"), {}),
    "uneven-fsdp": (S(model="llama-tiny", world_size=6, recipe="fsdp"), {}),
    "training-state": (S(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw"), {}),
    "torchtitan-hsdp": (
        S(
            model="llama-tiny",
            world_size=8,
            mesh=(2, 4),
            recipe="hsdp",
            optimizer="adamw",
            state="torchtitan",
        ),
        {},
    ),
    "per-rank-values": (S(model=mlp_with_rank_state, world_size=4, recipe="fsdp"), {"fast": False}),
}


@pytest.fixture(scope="module", params=list(CASES))
def trace(request):
    scenario, kwargs = CASES[request.param]
    return dcpviz.simulate_save(scenario, **kwargs).trace


def test_dedup_equals_the_plain_replay(trace):
    expected = plain.dedup(trace)
    assert len(expected) or trace.scenario.recipe == "fsdp"
    pd.testing.assert_frame_equal(tables.dedup(trace), expected)
    tables.item_columns(trace).memo.clear()
    for fqns in (
        set(),
        {expected["fqn"].iloc[0]} if len(expected) else {"x"},
        set(expected["fqn"][::2]),
    ):
        subset = expected[expected["fqn"].isin(fqns)].reset_index(drop=True)
        # The same rows; no row at all is an empty dedup table (object columns, not str ones).
        pd.testing.assert_frame_equal(
            tables.dedup(trace, fqns=fqns), subset, check_dtype=len(subset) > 0
        )
    pd.testing.assert_frame_equal(tables.dedup(trace), expected)  # cached, and a copy each time
    mine = tables.dedup(trace)
    mine["why"] = ""  # a caller changing its frame changes no one else's
    pd.testing.assert_frame_equal(tables.dedup(trace), expected)


def test_checks_read_the_same_dedup_rows(trace):
    dd = plain.dedup(trace)
    dtensors = {lay.fqn for lay in trace.layouts}
    digested = {d.fqn for d in trace.value_digests}
    if len(dd):
        dd = dd[dd["fqn"].map(lambda f: f in digested or f not in dtensors)].reset_index(drop=True)
    # The checks read the rows (itertuples); an empty answer is an empty dedup table.
    pd.testing.assert_frame_equal(checks._replicated_plain_keys(trace), dd, check_dtype=len(dd) > 0)


def test_planned_by_and_key_holders_equal_the_loops(trace):
    assert tables.planned_by(trace) == plain.planned_by(trace)
    assert list(tables.key_holders(trace).items()) == list(plain.key_holders(trace).items())


def test_the_dedup_overlapping_planner_case():
    """A planner that sends overlapping chunks: the tables still match the plain loops."""
    from test_dedup import OverlappingPlanner

    res = dcpviz.simulate_save(
        S(model="mlp", world_size=4, recipe="fsdp"), planner=OverlappingPlanner
    )
    assert not res.ok
    pd.testing.assert_frame_equal(tables.dedup(res.trace), plain.dedup(res.trace))
    assert list(tables.key_holders(res.trace).items()) == list(plain.key_holders(res.trace).items())


def test_phase_changes_equal_the_plain_diff(trace):
    pd.testing.assert_frame_equal(tables.phase_changes(trace), plain.phase_changes(trace))


def test_dedup_choices_are_the_dedup_tables_first_columns(trace):
    expected = plain.dedup(trace)[tables.CHOICE_COLUMNS]
    pd.testing.assert_frame_equal(
        tables.dedup_choices(trace), expected, check_dtype=len(expected) > 0
    )


def test_writer_index_answers_as_writer_ranks(trace):
    from dcpviz.core.plans import writer_ranks

    expected = writer_ranks(trace)
    index = tables._writers(trace)
    assert all(index.get(key) == rank for key, rank in expected.items())
    others = [(it.fqn, (10**9,)) for it in trace.items] + [("no such key", None)]
    assert all(index.get(key) == -1 for key in others if key not in expected)
