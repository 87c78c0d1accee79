"""RecordingSavePlanner: capture from a real job (torchrun), and wrapping changes nothing."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

import dcpviz

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """Runs exactly `torchrun --nproc_per_node 2 examples/capture_job.py --trace out.json`."""
    cwd = tmp_path_factory.mktemp("capture")
    shutil.copytree(ROOT / "examples", cwd / "examples")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        # torchrun reads any option from PET_<NAME>: a free port, so parallel jobs never collide.
        "PET_MASTER_PORT": str(_free_port()),
        "PET_MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    cmd = [*_torchrun(), "--nproc_per_node", "2", "examples/capture_job.py", "--trace", "out.json"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc.stdout


def test_torchrun_capture_opens_with_load_trace(captured):
    cwd, stdout = captured
    assert "trace written to out.json" in stdout
    res = dcpviz.load_trace(cwd / "out.json")
    t = res.trace
    assert t.source == "capture" and res.ok
    sc = t.scenario
    assert (sc.world_size, sc.mesh, sc.mesh_dim_names, sc.device, sc.dtype) == (
        2,
        (2,),
        ("shard",),
        "cpu",
        "float32",
    )
    assert t.planner.cls == "DefaultSavePlanner" and t.planner.is_dcp_default
    assert len(t.local_plans) == 2 and len(t.global_plans) == 2 and t.final_plans is None
    assert any("final plans" in n for n in t.notes)
    w = res.write_items[res.write_items.fqn == "0.weight"]  # Linear(16, 190) over 2 ranks
    assert dict(zip(w["rank"], w["offsets"])) == {0: (0, 0), 1: (95, 0)}
    assert set(w["sizes"]) == {(95, 16)}
    assert {lay.fqn for lay in t.layouts} >= {"0.weight", "2.bias"}
    assert dict(t.timings)["recording_overhead"] > 0


def test_capture_storage_equals_the_checkpoint_on_disk(captured):
    cwd, _ = captured
    res = dcpviz.load_trace(cwd / "out.json")
    ck = dcpviz.inspect_checkpoint(cwd / "capture_ckpt", verify="full")
    cols = ["fqn", "offsets", "file", "offset", "length", "rank"]
    assert res.storage[cols].equals(ck.storage[cols])
    for row in res.files.itertuples():
        assert row.nbytes == os.path.getsize(cwd / "capture_ckpt" / row.file)
    # The metadata the coordinator recorded is the metadata on disk.
    on_disk = {(r.fqn, r.offsets, r.sizes) for r in ck.chunks.itertuples()}
    assert {(r.fqn, r.offsets, r.sizes) for r in res.chunks.itertuples()} == on_disk


def test_capture_opens_in_the_explorer(captured):
    """The explorer on the captured trace shows what the job did, checked against facts outside
    dcpviz: the job's model (examples/capture_job.py: Linear(16, 190), ReLU, Linear(190, 3),
    FSDP over 2 ranks, so rows 0-95 on rank 0 and 95-190 on rank 1, and the bytes of each rank's
    chunks of those parameters)."""
    cwd, _ = captured
    app = dcpviz.explore(dcpviz.load_trace(cwd / "out.json"))
    assert list(app.tabs.titles[:5]) == ["Layout", "Dedup", "Volume", "Phases", "Tables"]
    app.tabs.select("Layout")
    listed = {m for g in app.group_picker.options for m in app._group_members[g]}
    assert listed == {"0.weight", "0.bias", "2.weight", "2.bias"}
    app.group_picker.value = next(
        g for g in app.group_picker.options if "0.weight" in app._group_members[g]
    )
    app.member_picker.value = "0.weight"
    tiles = [t for t in app.layout_figure.data if (t.meta or {}).get("role") == "tiles"]
    rows = {
        t.meta["writer"]: (
            min(y for y in t.y if y is not None),
            max(y for y in t.y if y is not None),
        )
        for t in tiles
    }
    assert rows == {0: (0, 95), 1: (95, 190)}
    app.tabs.select("Volume")
    (bars,) = [t for t in app.volume_fig.data if t.type == "bar"]  # (a mean line besides)
    # FSDP2 shards dim 0 as torch.chunk does: the bytes of each rank's chunks of the same model.
    model = torch.nn.Sequential(torch.nn.Linear(16, 190), torch.nn.ReLU(), torch.nn.Linear(190, 3))
    owned = {r: sum(p.chunk(2, dim=0)[r].nbytes for p in model.parameters()) for r in (0, 1)}
    assert {int(x): int(y) for x, y in zip(bars.x, bars.y)} == owned == {0: 7988, 1: 7224}


# -- in one process (no process group: dcp.save plans for a world of 1) -------------------------
def _state_dict():
    torch.manual_seed(0)
    return {"w": torch.randn(6, 4), "nested": {"b": torch.ones(3)}, "step": 7}


def _metadata(path: Path):
    with open(path / ".metadata", "rb") as fh:  # our own test checkpoint
        return pickle.load(fh)


def test_wrapping_changes_no_decision(tmp_path):
    dcp.save(_state_dict(), checkpoint_id=tmp_path / "plain", planner=DefaultSavePlanner())
    rec = dcpviz.RecordingSavePlanner(tmp_path / "t.json")
    md = dcp.save(_state_dict(), checkpoint_id=tmp_path / "rec", planner=rec)
    a, b = _metadata(tmp_path / "plain"), _metadata(tmp_path / "rec")
    assert a.state_dict_metadata == b.state_dict_metadata and a.planner_data == b.planner_data

    def strip(m):
        return {
            (k.fqn, k.offset): (v.relative_path, v.offset, v.length)
            for k, v in m.storage_data.items()
        }

    assert strip(a) == strip(b)
    for name in sorted(os.listdir(tmp_path / "plain")):
        if name.endswith(".distcp"):
            assert os.path.getsize(tmp_path / "plain" / name) == os.path.getsize(
                tmp_path / "rec" / name
            )
    # Before complete(): plans and metadata, no storage facts yet (they did not exist).
    res = dcpviz.load_trace(tmp_path / "t.json")
    assert res.storage.empty and res.trace.metadata is not None
    assert rec.complete(md) == tmp_path / "t.json"
    res = dcpviz.load_trace(tmp_path / "t.json")
    assert len(res.storage) == len(b.storage_data)
    assert rec.mappings["nested.b"] == (
        "nested",
        "b",
    )  # the wrapped planner's attributes show through


def test_planner_options_are_recorded(tmp_path):
    inner = DefaultSavePlanner(dedup_save_to_lowest_rank=True)
    dcp.save(
        _state_dict(),
        checkpoint_id=tmp_path / "c",
        planner=dcpviz.RecordingSavePlanner(tmp_path / "t.json", inner),
    )
    planner = dcpviz.load_trace(tmp_path / "t.json").trace.planner
    assert planner.option("dedup_save_to_lowest_rank") is True


class _RejectingPlanner(DefaultSavePlanner):
    def create_global_plan(self, all_plans):
        raise ValueError("planted: the coordinator rejects the plan")


def test_a_failing_global_plan_is_recorded_and_still_raises(tmp_path):
    rec = dcpviz.RecordingSavePlanner(tmp_path / "t.json", _RejectingPlanner())
    with pytest.raises(CheckpointException, match="planted"):
        dcp.save(_state_dict(), checkpoint_id=tmp_path / "c", planner=rec)
    res = dcpviz.load_trace(tmp_path / "t.json")
    assert not res.ok and res.trace.errors[0].phase == "global"
    assert "planted" in res.trace.errors[0].message
    assert res.trace.global_plans is not None  # what DCP had planned before the rejection


def test_bad_arguments(tmp_path):
    with pytest.raises(dcpviz.DcpvizError, match="not a torch.distributed.checkpoint SavePlanner"):
        dcpviz.RecordingSavePlanner(tmp_path / "t.json", object())
    rec = dcpviz.RecordingSavePlanner(tmp_path / "t.json")
    with pytest.raises(dcpviz.DcpvizError, match="already a RecordingSavePlanner"):
        dcpviz.RecordingSavePlanner(tmp_path / "t.json", rec)
    assert rec.complete() is None  # not the coordinator of anything yet


# -- RecordingLoadPlanner in one process ---------------------------------------------------------
def test_recording_load_planner_writes_a_load_trace(tmp_path):
    dcp.save(_state_dict(), checkpoint_id=tmp_path / "c")
    target = {"w": torch.zeros(6, 4), "nested": {"b": torch.zeros(3)}, "step": 0}
    rec = dcpviz.RecordingLoadPlanner(tmp_path / "load.json")
    dcp.load(target, storage_reader=dcpviz.SafeFileSystemReader(tmp_path / "c"), planner=rec)
    assert torch.equal(target["w"], _state_dict()["w"]) and target["step"] == 7
    rec.complete()
    res = dcpviz.load_trace(tmp_path / "load.json")
    assert res.kind == "load" and res.ok and res.trace.source == "capture"
    assert sorted(res.read_items.fqn) == ["nested.b", "step", "w"]
    assert res.trace.mismatches == ()
    assert res.trace.saved_writers and all(w.rank == 0 for w in res.trace.saved_writers)
    w = res.read_items[res.read_items.fqn == "w"].iloc[0]
    assert (w["lengths"], w["nbytes"]) == ((6, 4), 96)


def test_a_failing_local_load_plan_writes_no_trace(tmp_path):
    """dcp.load never calls create_global_plan when a rank's local plan fails, so the
    coordinator has nothing to record: DCP's exception passes through unchanged."""
    dcp.save(_state_dict(), checkpoint_id=tmp_path / "c")
    rec = dcpviz.RecordingLoadPlanner(tmp_path / "load.json")
    with pytest.raises(CheckpointException, match="Missing key in checkpoint state_dict: extra"):
        dcp.load(
            {"w": torch.zeros(6, 4), "extra": torch.zeros(2)},
            checkpoint_id=tmp_path / "c",
            planner=rec,
        )
    assert not (tmp_path / "load.json").exists()
    assert "extra" in rec.rank_record()["messages"]  # DCP's verdict on each key was kept


def test_one_planner_for_periodic_saves(tmp_path):
    rec = dcpviz.RecordingSavePlanner(tmp_path / "save_{n}.json")
    for step in range(2):
        sd = _state_dict()
        sd["step"] = step
        dcp.save(sd, checkpoint_id=tmp_path / f"c{step}", planner=rec)
        rec.complete()
    assert sorted(p.name for p in tmp_path.glob("save_*.json")) == ["save_0.json", "save_1.json"]
    for n in range(2):  # each trace describes its own save, timings not accumulated
        t = dcpviz.load_trace(tmp_path / f"save_{n}.json").trace
        assert {s.relative_path for s in t.metadata.storage} == {"__0_0.distcp"}
        assert sum(1 for k, _ in t.timings if k == "recording_overhead") == 1
