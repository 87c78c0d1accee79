"""A recording planner never changes what DCP does (issue 10, item 5): a trace that cannot be
built or written becomes a RecordingWarning and a problem note; the user's save or load goes on
and writes/reads exactly what it would without recording. A bad path template fails when the
planner is built, never inside dcp.save."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp

import dcpviz
from dcpviz.engine.capture import save as recording


def _state_dict():
    torch.manual_seed(0)
    return {"w": torch.randn(6, 4), "nested": {"b": torch.ones(3)}, "step": 7}


def _unwritable(tmp_path):
    """A trace path whose parent is a file: no process (not even root) can create it."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the trace's directory should be")
    return blocker / "t.json"


def _load_back(ckpt):
    target = {"w": torch.zeros(6, 4), "nested": {"b": torch.zeros(3)}, "step": 0}
    dcp.load(target, storage_reader=dcpviz.SafeFileSystemReader(ckpt))
    return target


def test_save_goes_on_when_the_trace_cannot_be_written(tmp_path):
    rec = dcpviz.RecordingSavePlanner(_unwritable(tmp_path))
    with pytest.warns(dcpviz.RecordingWarning, match="could not write the trace"):
        md = dcp.save(_state_dict(), checkpoint_id=tmp_path / "ckpt", planner=rec)
    with pytest.warns(dcpviz.RecordingWarning, match="could not complete the trace"):
        assert rec.complete(md) is None
    assert any("could not write the trace" in p for p in rec.problems)
    back = _load_back(tmp_path / "ckpt")  # a valid checkpoint with the saved values
    assert torch.equal(back["w"], _state_dict()["w"]) and back["step"] == 7
    assert torch.equal(back["nested"]["b"], torch.ones(3))
    dcpviz.inspect_checkpoint(tmp_path / "ckpt", verify="full")


def test_save_goes_on_when_the_trace_cannot_be_built(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("planted: conversion bug")

    monkeypatch.setattr(recording, "byte_item_sizes", broken)
    monkeypatch.setattr(recording.RecordingSavePlanner, "_build_trace", broken)
    rec = dcpviz.RecordingSavePlanner(tmp_path / "t.json")
    with pytest.warns(dcpviz.RecordingWarning, match="planted: conversion bug"):
        dcp.save(_state_dict(), checkpoint_id=tmp_path / "ckpt", planner=rec)
    assert rec.complete() is None and not (tmp_path / "t.json").exists()
    assert len(rec.problems) == 2
    assert _load_back(tmp_path / "ckpt")["step"] == 7


def test_a_trace_written_later_carries_the_problem_as_a_note(tmp_path, monkeypatch):
    """The first write fails (a transient problem), complete() succeeds: its trace says so."""
    real_write = recording.write_trace
    calls = []

    def flaky(trace, path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError("planted: disk full")
        return real_write(trace, path)

    monkeypatch.setattr(recording, "write_trace", flaky)
    rec = dcpviz.RecordingSavePlanner(tmp_path / "t.json")
    with pytest.warns(dcpviz.RecordingWarning, match="disk full"):
        md = dcp.save(_state_dict(), checkpoint_id=tmp_path / "ckpt", planner=rec)
    assert rec.complete(md) == tmp_path / "t.json"
    notes = dcpviz.load_trace(tmp_path / "t.json").trace.notes
    assert any(n.startswith("Recording problem") and "disk full" in n for n in notes)


def test_load_goes_on_when_the_trace_cannot_be_written(tmp_path):
    dcp.save(_state_dict(), checkpoint_id=tmp_path / "ckpt")
    target = {"w": torch.zeros(6, 4), "nested": {"b": torch.zeros(3)}, "step": 0}
    rec = dcpviz.RecordingLoadPlanner(_unwritable(tmp_path))
    with pytest.warns(dcpviz.RecordingWarning, match="could not write the trace"):
        dcp.load(target, storage_reader=dcpviz.SafeFileSystemReader(tmp_path / "ckpt"), planner=rec)
    assert torch.equal(target["w"], _state_dict()["w"]) and target["step"] == 7
    with pytest.warns(dcpviz.RecordingWarning):
        assert rec.complete() is None
    assert rec.problems


@pytest.mark.parametrize("cls", [dcpviz.RecordingSavePlanner, dcpviz.RecordingLoadPlanner])
@pytest.mark.parametrize(
    "template, match",
    [
        ("plan_{rank}.json", r"placeholder \{rank\}"),
        ("plan_{}.json", r"placeholder \{\}"),
        ("plan_{n.real}.json", r"placeholder \{n.real\}"),
        ("plan_{n.json", "not a valid path template"),
        ("plan_{n:s}.json", "integer"),
    ],
)
def test_bad_path_templates_fail_when_the_planner_is_built(tmp_path, cls, template, match):
    with pytest.raises(dcpviz.DcpvizError, match=match):
        cls(str(tmp_path / template))


def test_good_path_templates(tmp_path):
    rec = dcpviz.RecordingSavePlanner(str(tmp_path / "save_{n:03d}.json"))
    for step in range(2):
        dcp.save(_state_dict(), checkpoint_id=tmp_path / f"c{step}", planner=rec)
    assert sorted(p.name for p in tmp_path.glob("save_*.json")) == [
        "save_000.json",
        "save_001.json",
    ]
    plain = dcpviz.RecordingSavePlanner(tmp_path / "plain.json")
    assert plain.path == tmp_path / "plain.json"
