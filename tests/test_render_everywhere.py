"""Issue 20: validation decides what is renderable. A save whose local plan failed on one rank
and a load in which no rank reads render on every surface with a clear note; a trace that
would not render (a per-rank list shorter than the world) is refused when read, and
``dcpviz check`` exits 2 on it."""

from __future__ import annotations

import json

import pytest
from render_helpers import render_everywhere
from run_helpers import FailingLocalPlanner

import dcpviz
import dcpviz.views as V
from dcpviz.cli import main


@pytest.fixture(scope="module")
def failed_save(tmp_path_factory):
    root = tmp_path_factory.mktemp("failed_save")
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"), planner=FailingLocalPlanner
    )
    assert res.errors and res.trace.global_plans is None
    path = res.to_json(root / "t.json")
    return dcpviz.load_trace(path), path, root


def test_a_save_whose_local_plan_failed_renders_everywhere(failed_save):
    res, path, root = failed_save
    render_everywhere(res, path, root)
    title = V.rank_volume(res).layout.title.text
    assert "no global plan" in title and "planned before dedup" in title


@pytest.fixture(scope="module")
def no_reads(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_reads")
    save = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    load = dcpviz.simulate_load(
        save, target=dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")
    )
    assert load.rank_volume["nbytes"].isna().all()  # the usual "won't load": no rank reads
    path = load.to_json(root / "l.json")
    return dcpviz.load_trace(path), path, root


def test_a_load_where_no_rank_reads_renders_everywhere(no_reads):
    load, path, root = no_reads
    render_everywhere(load, path, root)
    assert "no rank has a load plan" in V.read_volume(load).layout.title.text


@pytest.mark.parametrize("field", ["wanted_by_rank", "local_plans", "global_plans", "final_plans"])
def test_a_per_rank_list_shorter_than_the_world_is_refused_and_check_exits_2(
    no_reads, tmp_path, field, capsys
):
    load, path, _ = no_reads
    doc = json.loads(path.read_text())
    if doc["trace"][field] is None:
        doc["trace"][field] = []
    doc["trace"][field] = doc["trace"][field][:1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(dcpviz.DcpvizError, match=field):
        dcpviz.load_trace(bad)
    assert main(["check", str(bad)]) == 2


def test_an_older_capture_with_unusable_cached_plans_renders_everywhere(tmp_path):
    save = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    doc = json.loads(save.to_json(tmp_path / "s.json").read_text())
    for key in ("local_plans", "global_plans"):  # what a capture wrote before issue 20
        doc["trace"][key] = [{"items": [], "usable": False} for _ in doc["trace"][key]]
    doc["trace"].pop("tied_keys")  # fields added since: an older file has none of them
    for d in doc["trace"]["value_digests"]:
        d.pop("offsets")
    doc["trace"]["final_plans"] = None
    doc["trace"]["source"] = "capture"
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    old = dcpviz.load_trace(path)
    render_everywhere(old, path, tmp_path)
    row = old.checks[old.checks["check"] == "plans-not-recorded"]  # not an all-clear
    assert list(row["severity"]) == ["warning"] and row.iloc[0]["ranks"] == (0, 1)
