"""BYTE_IO entries are never unpickled with plain pickle (issue 10, item 4).

DCP stores every non-tensor value of a state dict as a torch.save record and its
DefaultLoadPlanner reads it back with torch.load(weights_only=False). A record planted in a
real checkpoint (here: the payload appended to the data file, the .metadata pointing at it, as
an attacker who can write the directory would do) must be refused by run_load,
SafeFileSystemReader, SafeLoadPlanner and inspect_checkpoint, naming the entry and the class;
ordinary values must still load exactly as DCP loads them.
"""

from __future__ import annotations

import collections
import datetime
import io
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import dcpviz
from dcpviz.engine.checkpoint.byteio import load_byte_io

PLANTED_KEY = "extra.str"  # dcp.save flattens nested dicts into dotted keys


class _RunsCode:
    """Unpickling this calls os.system: what a malicious BYTE_IO record would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _values() -> dict:
    """Non-tensor values DCP saves as BYTE_IO, one of each ordinary kind."""
    return {
        "bytes": b"\x00raw bytes\xff",
        "buffer": io.BytesIO(b"a BytesIO buffer"),
        "int": 7,
        "float": 0.25,
        "str": "run-1",
        "none": None,
        "cfg": {"lr": 0.1, "betas": (0.9, 0.95), "tags": ["a", "b"], "nested": {"k": 1}},
        "ordered": collections.OrderedDict(a=1, b=2),
        "set": {1, 2, 3},
        "frozen": frozenset({"x"}),
        "when": datetime.datetime(2024, 5, 1, 12, 30),
        "span": datetime.timedelta(seconds=90),
        "tensor_in_list": [torch.arange(3)],
    }


def _state_dict() -> dict:
    torch.manual_seed(0)
    return {"w": torch.randn(4, 3), "extra": _values()}


def _blank(value):
    """``value`` with the same structure as DCP flattens it (dicts, lists) and every leaf
    replaced, so a load has to fill each one."""
    if isinstance(value, dict):
        return type(value)((k, _blank(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_blank(v) for v in value]
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    return io.BytesIO() if isinstance(value, io.BytesIO) else "unset"


def _target() -> dict:
    return _blank(_state_dict())


def _same(a, b) -> bool:
    if isinstance(a, io.BytesIO):
        return isinstance(b, io.BytesIO) and a.getvalue() == b.getvalue()
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.fixture
def saved(tmp_path):
    """A real dcp.save (one process) of a tensor and every ordinary kind of BYTE_IO value."""
    path = tmp_path / "ckpt"
    dcp.save(_state_dict(), checkpoint_id=path)
    return path


def _metadata(path: Path):
    with open(path / ".metadata", "rb") as fh:  # our own test checkpoint
        return pickle.load(fh)


def _plant(path: Path, key: str, payload: object) -> Path:
    """Replace ``key``'s record with a torch.save archive of ``payload``: appended to the same
    data file, the .metadata's storage record pointing at it."""
    md = _metadata(path)
    index = next(i for i in md.storage_data if i.fqn == key)
    info = md.storage_data[index]
    buf = io.BytesIO()
    torch.save(payload, buf)
    data_file = path / info.relative_path
    offset = data_file.stat().st_size
    with open(data_file, "ab") as fh:
        fh.write(buf.getvalue())
    md.storage_data[index] = type(info)(
        relative_path=info.relative_path, offset=offset, length=len(buf.getvalue())
    )
    with open(path / ".metadata", "wb") as fh:
        pickle.dump(md, fh)
    return path


def test_the_planted_payload_is_live(saved, tmp_path):
    """Plain DCP runs the planted code (so the refusals below are meaningful)."""
    marker = tmp_path / "pwned"
    _plant(saved, PLANTED_KEY, _RunsCode(marker))
    dcp.load(_target(), checkpoint_id=saved)
    assert marker.exists()


def test_safe_reader_loads_every_ordinary_value_like_dcp(saved):
    plain, safe = _target(), _target()
    dcp.load(plain, checkpoint_id=saved)
    dcp.load(safe, storage_reader=dcpviz.SafeFileSystemReader(saved))
    assert _same(safe, plain)
    expected = _state_dict()
    assert torch.equal(safe["w"], expected["w"])
    for key, value in _values().items():
        assert _same(safe["extra"][key], value), key


def test_safe_planner_loads_every_ordinary_value_like_dcp(saved):
    safe = _target()
    dcp.load(safe, checkpoint_id=saved, planner=dcpviz.SafeLoadPlanner())
    for key, value in _values().items():
        assert _same(safe["extra"][key], value), key


def test_inspect_checks_every_ordinary_value(saved):
    for verify in ("headers", "full"):
        ck = dcpviz.inspect_checkpoint(saved, verify=verify)
        assert ck.totals["bytes_entries"] == 16  # dcp.save flattens the nested dicts


REFUSED = r"refusing to load BYTE_IO entry 'extra\.str'.*would build posix\.system"


def test_safe_reader_refuses_a_planted_record(saved, tmp_path):
    marker = tmp_path / "pwned"
    _plant(saved, PLANTED_KEY, _RunsCode(marker))
    with pytest.raises(BaseException, match=REFUSED) as info:
        dcp.load(_target(), storage_reader=dcpviz.SafeFileSystemReader(saved))
    assert not marker.exists()
    # DCP wraps a rank's failure in CheckpointException (a BaseException); ours is inside.
    failures = getattr(info.value, "failures", {}) or {}
    inner = [f[0] if isinstance(f, tuple) else f for f in failures.values()] or [info.value]
    assert all(isinstance(e, dcpviz.DcpvizError) for e in inner)


def test_safe_reader_protects_any_planner(saved, tmp_path):
    """Also a planner the user passes in (here the recording one around DCP's default)."""
    marker = tmp_path / "pwned"
    _plant(saved, PLANTED_KEY, _RunsCode(marker))
    rec = dcpviz.RecordingLoadPlanner(tmp_path / "load.json")
    with pytest.raises(BaseException, match=REFUSED):
        dcp.load(_target(), storage_reader=dcpviz.SafeFileSystemReader(saved), planner=rec)
    assert not marker.exists()


def test_safe_planner_refuses_a_planted_record(saved, tmp_path):
    marker = tmp_path / "pwned"
    _plant(saved, PLANTED_KEY, _RunsCode(marker))
    with pytest.raises(BaseException, match=REFUSED):
        dcp.load(_target(), checkpoint_id=saved, planner=dcpviz.SafeLoadPlanner())
    assert not marker.exists()


@pytest.mark.parametrize("verify", ["headers", "full"])
def test_inspect_reports_a_planted_record(saved, tmp_path, verify):
    marker = tmp_path / "pwned"
    _plant(saved, PLANTED_KEY, _RunsCode(marker))
    with pytest.raises(dcpviz.DcpvizError, match=REFUSED):
        dcpviz.inspect_checkpoint(saved, verify=verify)
    assert not marker.exists()


def test_run_load_refuses_a_planted_record_before_starting_workers(tmp_path):
    """A checkpoint of the mlp preset plus a planted BYTE_IO entry: run_load refuses it in the
    parent, naming the entry and the class (no worker ever reads it)."""
    from dcpviz.engine.job.models import PRESETS

    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt"
    state = dict(PRESETS["mlp"]().state_dict())
    state["extra"] = {"str": "run-1"}
    dcp.save(state, checkpoint_id=path)
    _plant(path, PLANTED_KEY, _RunsCode(marker))
    with pytest.raises(dcpviz.DcpvizError, match=REFUSED):
        dcpviz.run_load(path, dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    assert not marker.exists()


@pytest.mark.parametrize(
    "global_", ["builtins.eval", "builtins.exec", "subprocess.Popen", "torch.load"]
)
def test_other_dangerous_globals_refused(global_):
    """A bare pickle (legacy torch.save format) calling a dangerous global."""
    module, name = global_.rsplit(".", 1)
    payload = f"c{module}\n{name}\n(S'1'\ntR.".encode()
    with pytest.raises(dcpviz.DcpvizError, match=f"refusing to load the record.*{module}.{name}"):
        load_byte_io(payload, "the record")


def test_refuses_code_even_when_torch_is_told_to_load_unsafely(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 flips torch.load's *default* to the full unpickler: the
    safe reader must ask for weights_only=True explicitly, so the environment cannot undo it."""
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save(_RunsCode(marker), buf)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(dcpviz.DcpvizError, match="system"):
        load_byte_io(buf.getvalue(), "planted")
    assert not marker.exists()
