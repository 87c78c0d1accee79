"""Bad inputs to simulate_load raise a DcpvizError naming the input and the fix; planner
failures are data; a LoadTrace round-trips through JSON exactly."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from load_cases import compiled_target_load
from torch.distributed.checkpoint import DefaultLoadPlanner, DefaultSavePlanner

import dcpviz
from dcpviz.core.errors import CheckpointError, ScenarioError, TraceFileError


@pytest.fixture(scope="module")
def save():
    return dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))


TARGET = dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a DCP checkpoint: it has no .metadata"):
        dcpviz.simulate_load(tmp_path, TARGET)


def test_file_inside_a_checkpoint_points_to_its_directory(tmp_path):
    (tmp_path / ".metadata").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pass the checkpoint directory itself"):
        dcpviz.simulate_load(tmp_path / ".metadata", TARGET)


def test_missing_path(tmp_path):
    with pytest.raises(dcpviz.DcpvizError, match="does not exist"):
        dcpviz.simulate_load(tmp_path / "nope", TARGET)


def test_load_trace_as_saved_is_the_wrong_kind(save, tmp_path):
    load = dcpviz.simulate_load(save, TARGET)
    path = load.to_json(tmp_path / "load.json")
    with pytest.raises(TraceFileError, match="is a \\*load\\* trace"):
        dcpviz.simulate_load(path, TARGET)
    with pytest.raises(TraceFileError, match="is a \\*load\\* trace"):
        dcpviz.simulate_load(load, TARGET)


def test_save_trace_file_works_like_the_result(save, tmp_path):
    from_file = dcpviz.simulate_load(save.to_json(tmp_path / "save.json"), TARGET)
    direct = dcpviz.simulate_load(save, TARGET)
    pd.testing.assert_frame_equal(from_file.read_items, direct.read_items)


def test_target_not_a_scenario(save):
    with pytest.raises(dcpviz.DcpvizError, match="not a dcpviz.Scenario.*swap"):
        dcpviz.simulate_load(TARGET, save)
    with pytest.raises(dcpviz.DcpvizError, match="not a dcpviz.Scenario"):
        dcpviz.simulate_load(save, {"model": "mlp"})


def test_target_mesh_that_does_not_fit():
    with pytest.raises(ScenarioError, match="holds 8 ranks but world_size=6"):
        dcpviz.Scenario(model="mlp", world_size=6, mesh=(4, 2), recipe="tp+fsdp")
    with pytest.raises(ScenarioError, match="needs a 2-D mesh"):
        dcpviz.Scenario(model="mlp", world_size=6, recipe="hsdp")


def test_failed_save_has_nothing_to_load():
    class Broken(DefaultSavePlanner):
        def create_local_plan(self):
            raise RuntimeError("boom")

    bad = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"), planner=Broken
    )
    with pytest.raises(dcpviz.DcpvizError, match="no checkpoint metadata: its save plan failed"):
        dcpviz.simulate_load(bad, TARGET)


def test_not_a_load_planner(save):
    with pytest.raises(dcpviz.DcpvizError, match="not a LoadPlanner"):
        dcpviz.simulate_load(save, TARGET, planner=DefaultSavePlanner())


def test_planner_failures_are_data_with_phase_and_rank(save):
    class FailsGlobally(DefaultLoadPlanner):
        def create_global_plan(self, plans):
            raise ValueError("no global plan today")

    class FailsOnRank1(DefaultLoadPlanner):
        def finish_plan(self, plan):
            import torch.distributed as dist

            if dist.get_rank() == 1:
                raise KeyError("rank 1 refuses")
            return plan

    g = dcpviz.simulate_load(save, TARGET, FailsGlobally)
    assert [(e.phase, e.rank, e.message) for e in g.trace.errors] == [
        ("global", None, "no global plan today")
    ]
    assert g.trace.final_plans is None and len(g.read_items) > 0  # local plans are still shown
    f = dcpviz.simulate_load(save, TARGET, FailsOnRank1())
    assert [(e.phase, e.rank, e.exc_type) for e in f.trace.errors] == [("finish", 1, "KeyError")]
    assert set(f.read_items["rank"]) == {0}


def test_load_trace_round_trip_is_exact(save, tmp_path):
    for load in (dcpviz.simulate_load(save, TARGET), compiled_target_load(save)):
        path = load.to_json(tmp_path / "l.json")
        doc = json.loads(path.read_text())
        assert doc["kind"] == "load" and doc["schema"] == "dcpviz.trace"
        again = dcpviz.load_trace(path)
        assert isinstance(again, dcpviz.LoadResult)
        assert again.trace == load.trace
        for name in ("read_items", "rank_volume", "resharding", "mismatches"):
            pd.testing.assert_frame_equal(getattr(again, name), getattr(load, name))
        assert again.hints == load.hints and again.errors == load.errors


def test_repr_and_terminal_output(save):
    from rich.console import Console

    from dcpviz.terminal import print_result

    load = compiled_target_load(save)
    console = Console(record=True, width=160)
    print_result(load, console)
    text = console.export_text()
    # Verdict, hints, one row per problem; no read table when no rank planned (issue 15), and why.
    assert (
        text.index("verdict")
        < text.index("hint:")
        < text.index("problems:")
        < text.index("No reads to show")
    )
    assert "reads per target rank" not in text
    assert "_orig_mod." in text and "dcp.load would fail" in text
    assert "9 missing" in repr(load)
