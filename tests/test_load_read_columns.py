"""The load's numbers from its read columns (``analysis.load.read_columns``) equal the ones
computed from the whole ``read_items`` table, on every kind of load: resharding, strided
shards, a training state with bytes entries, ranks whose plan failed, a load with nothing
planned, a renaming fix planner (reads under another storage key), and checkpoint directories
whose reads name their files (one process, and two real gloo writers).

These numbers are what the load explorer's header, checks and first tab show: the explorer
opens without building ``read_items`` (one row per read of every rank)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from checkpoint_helpers import save_one_process, write_fsdp_mlp_checkpoint
from load_cases import compiled_mlp

import dcpviz
from dcpviz.analysis import checks
from dcpviz.analysis.load import read_columns
from dcpviz.analysis.load import tables as load_tables
from dcpviz.engine.job.models import MLP
from dcpviz.results import LoadResult, pick_read_tensors
from dcpviz.views.reads import read_layout, read_layout_figure

S = dcpviz.Scenario
HSDP = S(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")


def _resharded():
    return dcpviz.simulate_load(
        dcpviz.simulate_save(HSDP), S(model="mlp", world_size=6, recipe="fsdp")
    )


def _strided():
    saved = dcpviz.simulate_save(S(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp"))
    return dcpviz.simulate_load(saved, S(model="llama-tiny", world_size=3, recipe="fsdp"))


def _same_layout():
    return dcpviz.simulate_load(dcpviz.simulate_save(HSDP), HSDP)


def _training_state():
    sc = S(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw")
    target = S(model="llama-tiny", world_size=2, recipe="fsdp", optimizer="adamw")
    return dcpviz.simulate_load(dcpviz.simulate_save(sc), target)


def _nothing_planned():
    # Every key gains '_orig_mod.': a strict load fails on every rank.
    return dcpviz.simulate_load(
        dcpviz.simulate_save(HSDP), S(model=compiled_mlp, world_size=2, recipe="fsdp")
    )


def _fixed():
    saved = dcpviz.simulate_save(HSDP)
    target = S(model=compiled_mlp, world_size=3, recipe="fsdp")
    first = dcpviz.simulate_load(saved, target)
    return dcpviz.simulate_load(saved, target, planner=first.fix_planner())


def _one_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("one") / "ckpt"
    save_one_process(MLP().state_dict(), path)
    return dcpviz.simulate_load(str(path), S(model="mlp", world_size=3, recipe="fsdp"))


def _two_writers(tmp_path_factory):
    path = write_fsdp_mlp_checkpoint(str(tmp_path_factory.mktemp("two") / "ckpt"), world_size=2)
    return dcpviz.simulate_load(path, S(model="mlp", world_size=3, recipe="fsdp"))


CASES = {
    "resharded": _resharded,
    "strided": _strided,
    "same-layout": _same_layout,
    "training-state": _training_state,
    "nothing-planned": _nothing_planned,
    "fix-planner": _fixed,
    "one-file": _one_file,
    "two-writers": _two_writers,
}


@pytest.fixture(scope="module", params=list(CASES))
def load(request, tmp_path_factory):
    make = CASES[request.param]
    return make(tmp_path_factory) if make in (_one_file, _two_writers) else make()


def plain_pick_read_tensors(load, limit: int = 3) -> list[str]:
    """main's pick_read_tensors, from the whole read_items table."""
    picks: list[str] = []
    saved = {t.fqn for t in load.trace.saved.tensors}
    mm = load.mismatches
    for f in mm[mm["kind"].isin(["size", "dtype"])]["fqn"]:
        if f in saved and f not in picks:
            picks.append(f)
            break
    ri = load.read_items
    if len(ri):
        spread = (
            ri[ri["rank"] == 0]
            .groupby("fqn")["saved_offsets"]
            .nunique()
            .sort_values(ascending=False)
        )
        for f in list(spread.index[:1]) + list(
            ri.groupby("fqn")["nbytes"].sum().sort_values(ascending=False).index[:1]
        ):
            if f in saved and f not in picks:
                picks.append(f)
    return picks[:limit]


def same_summary(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert isinstance(b[k], float) and math.isnan(b[k]), k
        else:
            assert a[k] == b[k] and type(a[k]) is type(b[k]), k


def test_the_cases_cover_what_the_columns_count(load):
    """Each case is what its name says (a case that stopped covering its kind would pass
    vacuously)."""
    ri = load.read_items
    vol = load_tables.rank_volume(load.trace, ri)
    if load.nothing_planned:
        assert not len(ri) and not vol["planned"].any()
    else:
        assert len(ri) and vol["planned"].all()
    if load.trace.saved_source.startswith("checkpoint"):
        assert ri["file"].notna().all() and ri["writer_rank"].ge(0).all()


def test_rank_volume_equals_the_one_from_read_items(load):
    fresh = LoadResult(load.trace)
    fast = fresh.rank_volume
    assert "read_items" not in fresh.__dict__  # not built on the way
    plain = load_tables.rank_volume(load.trace, load_tables.read_items(load.trace))
    pd.testing.assert_frame_equal(fast, plain)


def test_summary_and_checks_equal_the_ones_from_read_items(load):
    ri = load_tables.read_items(load.trace)
    same_summary(read_columns.summary(load.trace), load_tables.summary(load.trace, ri))
    pd.testing.assert_frame_equal(
        checks.load_checks(load.trace), checks.load_checks(load.trace, ri)
    )
    assert read_columns.on_disk(load.trace) == bool(ri["file"].notna().any())


def test_picked_tensors_and_spreads_equal_the_plain_groupbys(load):
    assert pick_read_tensors(load, 3) == plain_pick_read_tensors(load, 3)
    ri = load.read_items
    if not len(ri):
        return
    spread, by_bytes = read_columns.tensor_spread(load.trace)
    plain_spread = ri[ri["rank"] == 0].groupby("fqn")["saved_offsets"].nunique()
    pd.testing.assert_series_equal(spread, plain_spread)
    pd.testing.assert_series_equal(by_bytes, ri.groupby("fqn")["nbytes"].sum())
    assert list(by_bytes.sort_values(ascending=False).index) == list(
        ri.groupby("fqn")["nbytes"].sum().sort_values(ascending=False).index
    )


def test_one_ranks_reads_of_one_tensor_equal_the_filtered_table(load):
    tr = load.trace
    ri = load_tables.read_items(tr)
    fqns = [t.fqn for t in tr.saved.tensors] + ["not-a-key"]
    for rank in range(tr.scenario.world_size):
        for fqn in fqns:
            plain = ri[(ri["rank"] == rank) & (ri["fqn"] == fqn)].reset_index(drop=True)
            pd.testing.assert_frame_equal(read_columns.reads_of(tr, fqn, rank), plain)


def test_the_read_layout_equals_the_one_drawn_from_read_items(load, tmp_path):
    tr = load.trace
    ri = load_tables.read_items(tr)
    fresh = dcpviz.load_trace(load.to_json(tmp_path / "load.json"))  # nothing built yet
    for fqn in pick_read_tensors(load, 3):
        for rank in {0, tr.scenario.world_size - 1}:
            entry = next(t for t in tr.saved.tensors if t.fqn == fqn)
            size, dtype, wanted = load_tables.wanted_boxes(tr, fqn, rank)
            plain = read_layout_figure(
                load_tables.saved_boxes(tr, ri, fqn, rank),
                load_tables.read_boxes(ri, fqn, rank),
                wanted,
                fqn,
                rank,
                entry.size,
                entry.dtype,
                size,
                dtype,
                tr.saved_scenario.world_size if tr.saved_scenario else 1,
            )
            assert read_layout(fresh, fqn, rank).to_json() == plain.to_json()
    assert "read_items" not in fresh.__dict__


def test_the_load_explorer_opens_without_the_read_table(load, tmp_path):
    fresh = dcpviz.load_trace(load.to_json(tmp_path / "load.json"))
    app = dcpviz.explore(fresh)
    assert "read_items" not in fresh.__dict__
    built = fresh.__dict__.keys()
    assert {"summary", "checks"} <= built
    # Volume is drawn from rank_volume; opening Resharding builds the table (its figure is
    # per writer); the header is unchanged.
    header = app.header.value
    if "Volume" in app.tabs.titles:
        app.tabs.select("Volume")
        assert "read_items" not in fresh.__dict__
    if "Resharding" in app.tabs.titles:
        app.tabs.select("Resharding")
        assert "read_items" in fresh.__dict__
    assert app.header.value == header


def test_wanted_nbytes_equals_the_plain_sum(load):
    """Bytes each rank's own shards hold: per value, the sum over its chunks of elements times
    the dtype's size (per dtype looked up once, one chunk summed without a generator)."""
    from dcpviz.analysis.save.tables import components_of
    from dcpviz.core.units import itemsize

    tr = load.trace
    parts = components_of(tr, [tv.fqn for tv in tr.wanted])
    for component in (None, *dict.fromkeys(parts)):
        plain = [
            sum(
                sum(math.prod(c.sizes) for c in tr.wanted[i].chunks) * itemsize(tr.wanted[i].dtype)
                for i in ids
                if tr.wanted[i].dtype is not None and component in (None, parts[i])
            )
            for ids in tr.wanted_by_rank
        ]
        assert load_tables.wanted_nbytes(tr, component).tolist() == plain


def test_trace_facts_keep_each_keys_first_value(load):
    from dcpviz.analysis.load.fix import trace_facts
    from dcpviz.core.keymatch import KeyFacts

    first: dict = {}
    for tv in load.trace.wanted:
        first.setdefault(tv.fqn, KeyFacts(None if tv.size is None else tuple(tv.size), tv.dtype))
    target, _ = trace_facts(load.trace)
    assert {k: target[k] for k in first} == first
