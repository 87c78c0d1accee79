"""inspect_checkpoint: reads a DCP directory without running anything from it, and says
clearly what is wrong with a broken one."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import dcpviz


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A real (single-process) DCP checkpoint: tensors, a 0-d tensor and a bytes entry."""
    path = tmp_path_factory.mktemp("ck") / "ckpt"
    sd = {
        "w": torch.randn(8, 4),
        "b": torch.arange(3.0),
        "step": torch.tensor(5),
        "extra": {"epoch": 3},
    }
    dcp.save(sd, checkpoint_id=path)
    return path


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    """A private copy a test may break."""
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def _snapshot(path: Path) -> dict[str, tuple]:
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(path.iterdir())
    }


def _metadata(path: Path):
    with open(path / ".metadata", "rb") as fh:  # our own test checkpoint: trusted
        return pickle.load(fh)


def _write_metadata(path: Path, md) -> None:
    with open(path / ".metadata", "wb") as fh:
        pickle.dump(md, fh)


def test_inspects_a_good_checkpoint_and_writes_nothing(ckpt):
    before = _snapshot(ckpt)
    ck = dcpviz.inspect_checkpoint(ckpt, verify="full")
    assert _snapshot(ckpt) == before
    assert set(ck.chunks.fqn) == {"w", "b", "step", "extra.epoch"}
    w = ck.chunks[ck.chunks.fqn == "w"].iloc[0]
    assert (w["offsets"], w["sizes"], w["dtype"], w["nbytes"]) == ((0, 0), (8, 4), "float32", 128)
    assert list(ck.files.columns) == ["file", "nbytes", "rank", "items", "stored_nbytes"]
    for row in ck.files.itertuples():
        assert row.nbytes == os.path.getsize(ckpt / row.file) == row.stored_nbytes
        assert row.rank == 0 and row.items == 4
    assert list(ck.storage.columns) == ["fqn", "offsets", "file", "offset", "length", "rank"]
    t = ck.totals
    assert (t["tensors"], t["bytes_entries"], t["chunks"], t["files"]) == (3, 1, 3, 1)
    assert t["tensor_nbytes"] == 128 + 12 + 8 and t["framing_nbytes"] > 0


def test_missing_metadata(ckpt):
    (ckpt / ".metadata").unlink()
    with pytest.raises(dcpviz.DcpvizError, match="no .metadata"):
        dcpviz.inspect_checkpoint(ckpt)
    with pytest.raises(dcpviz.DcpvizError, match="does not exist"):
        dcpviz.inspect_checkpoint(ckpt / "nope")


def test_truncated_metadata(ckpt):
    data = (ckpt / ".metadata").read_bytes()
    (ckpt / ".metadata").write_bytes(data[: len(data) // 2])
    with pytest.raises(dcpviz.DcpvizError, match="truncated or corrupt"):
        dcpviz.inspect_checkpoint(ckpt)


def test_truncated_data_file(ckpt):
    f = ckpt / "__0_0.distcp"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(dcpviz.DcpvizError, match="truncated"):
        dcpviz.inspect_checkpoint(ckpt)


def test_dangling_file_reference(ckpt):
    (ckpt / "__0_0.distcp").unlink()
    with pytest.raises(dcpviz.DcpvizError, match=r"__0_0\.distcp.*does not exist.*dangling"):
        dcpviz.inspect_checkpoint(ckpt)


def test_dangling_offset(ckpt):
    md = _metadata(ckpt)
    index = next(k for k in md.storage_data if k.fqn == "b")
    md.storage_data[index].offset = 10**6
    _write_metadata(ckpt, md)
    with pytest.raises(dcpviz.DcpvizError, match=r"'b' chunk \(0,\).*only \d+ bytes"):
        dcpviz.inspect_checkpoint(ckpt)


def test_chunk_without_storage_record(ckpt):
    md = _metadata(ckpt)
    del md.storage_data[next(k for k in md.storage_data if k.fqn == "w")]
    _write_metadata(ckpt, md)
    with pytest.raises(dcpviz.DcpvizError, match="'w' chunk .* no storage record"):
        dcpviz.inspect_checkpoint(ckpt)


def test_reference_outside_the_directory(ckpt):
    md = _metadata(ckpt)
    for info in md.storage_data.values():
        info.relative_path = "../../etc/passwd"
    _write_metadata(ckpt, md)
    with pytest.raises(dcpviz.DcpvizError, match="outside the checkpoint directory"):
        dcpviz.inspect_checkpoint(ckpt)


def _record(ckpt: Path, fqn: str):
    md = _metadata(ckpt)
    return next(v for k, v in md.storage_data.items() if k.fqn == fqn)


def test_corrupt_record_header(ckpt):
    rec = _record(ckpt, "w")
    f = ckpt / rec.relative_path
    data = bytearray(f.read_bytes())
    data[rec.offset : rec.offset + 8] = b"garbage!"
    f.write_bytes(bytes(data))
    with pytest.raises(dcpviz.DcpvizError, match="'w' chunk .* corrupt"):
        dcpviz.inspect_checkpoint(ckpt)


def test_corrupt_tensor_bytes_caught_by_full_verify(ckpt):
    """Flipped data bytes keep the archive's directory intact: 'headers' cannot see it, the
    CRC check of verify='full' does."""
    rec = _record(ckpt, "w")
    f = ckpt / rec.relative_path
    data = bytearray(f.read_bytes())
    blob = bytes(data[rec.offset : rec.offset + rec.length])
    start = rec.offset + blob.index(b"data/0") + 64  # inside the 128 data bytes of 'w'
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    dcpviz.inspect_checkpoint(ckpt)  # headers still fine
    with pytest.raises(dcpviz.DcpvizError, match="CRC"):
        dcpviz.inspect_checkpoint(ckpt, verify="full")


def test_record_with_wrong_data_size(ckpt):
    """A record of the right format but another tensor's bytes (e.g. a mixed-up file)."""
    md = _metadata(ckpt)
    w = next(k for k in md.storage_data if k.fqn == "w")
    b = next(k for k in md.storage_data if k.fqn == "b")
    md.storage_data[w] = md.storage_data[b]
    _write_metadata(ckpt, md)
    with pytest.raises(
        dcpviz.DcpvizError, match="holds 12 bytes of tensor data but the metadata's chunk needs 128"
    ):
        dcpviz.inspect_checkpoint(ckpt)


def test_stale_files_are_noted(ckpt):
    (ckpt / "__7_0.distcp").write_bytes(b"left over")
    ck = dcpviz.inspect_checkpoint(ckpt)
    assert "__7_0.distcp" in ck.notes[0] and ck.totals["unreferenced_files"] == 1
    stale = ck.files[ck.files.file == "__7_0.distcp"].iloc[0]
    assert (stale["rank"], stale["items"], stale["nbytes"]) == (7, 0, 9)


class _RunsCode:
    """Unpickling this calls os.system: what a malicious .metadata would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_metadata_runs_nothing(ckpt, tmp_path):
    marker = tmp_path / "pwned"
    # Prove the payload is live: plain pickle (what DCP's FileSystemReader uses) runs it.
    pickle.loads(pickle.dumps(_RunsCode(marker)))
    assert marker.exists()
    marker.unlink()
    md = _metadata(ckpt)
    md.planner_data = {"x": _RunsCode(marker)}  # hidden deep inside real metadata
    _write_metadata(ckpt, md)
    with pytest.raises(dcpviz.DcpvizError, match=r"refusing to unpickle posix\.system"):
        dcpviz.inspect_checkpoint(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize(
    "global_", ["builtins.eval", "builtins.exec", "subprocess.Popen", "torch.load"]
)
def test_other_dangerous_globals_refused(ckpt, global_):
    module, name = global_.rsplit(".", 1)
    payload = f"c{module}\n{name}\n(S'1'\ntR.".encode()  # protocol 0: GLOBAL, a call
    (ckpt / ".metadata").write_bytes(payload)
    with pytest.raises(dcpviz.DcpvizError, match=f"refusing to unpickle {module}.{name}"):
        dcpviz.inspect_checkpoint(ckpt)


def test_safe_reader_loads_like_dcp(saved):
    sd = {
        "w": torch.zeros(8, 4),
        "b": torch.zeros(3),
        "step": torch.tensor(0),
        "extra": {"epoch": 0},
    }
    dcp.load(sd, storage_reader=dcpviz.SafeFileSystemReader(saved))
    ref = {
        "w": torch.zeros(8, 4),
        "b": torch.zeros(3),
        "step": torch.tensor(0),
        "extra": {"epoch": 0},
    }
    dcp.load(ref, checkpoint_id=saved)  # DCP's own reader (plain pickle): our own checkpoint
    assert torch.equal(sd["w"], ref["w"]) and torch.equal(sd["b"], torch.arange(3.0))
    assert sd["extra"]["epoch"] == 3 and int(sd["step"]) == 5


def test_safe_reader_refuses_planted_metadata(ckpt, tmp_path):
    marker = tmp_path / "pwned"
    md = _metadata(ckpt)
    md.planner_data = {"x": _RunsCode(marker)}
    _write_metadata(ckpt, md)
    with pytest.raises(BaseException, match=r"refusing to unpickle posix\.system"):
        dcp.load({"w": torch.zeros(8, 4)}, storage_reader=dcpviz.SafeFileSystemReader(ckpt))
    assert not marker.exists()
