"""The bulk passes over a checkpoint directory's records (issue 22 item 4): the cyclic GC is off
while they run and back as it was after, and the per-record shortcuts (a message built only for
a record that has a problem) give the facts and messages the record-by-record reading gives."""

from __future__ import annotations

import gc
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import _StorageInfo

import dcpviz
from dcpviz.core.gc_pause import gc_paused
from dcpviz.engine.checkpoint.reader import (
    read_checkpoint,
    read_metadata,
    read_metadata_bytes,
    storage_shortfalls,
)
from dcpviz.engine.checkpoint.saved import resolve_saved


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A real DCP save over three data files: tensors, a 0-d tensor, a bytes entry."""
    path = tmp_path_factory.mktemp("bulk") / "ck"
    sd = {
        "a": torch.randn(64),
        "b": torch.randn(8, 4),
        "c": torch.randn(16),
        "step": torch.tensor(5),
        "extra": {"epoch": 3},
    }
    with pytest.warns(UserWarning):
        dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(path), thread_count=3), no_dist=True)
    return path


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def _records(path: Path) -> dict:
    with open(path / ".metadata", "rb") as fh:  # our own test checkpoint: trusted
        return pickle.load(fh).storage_data


@pytest.mark.parametrize("enabled", [True, False])
def test_the_gc_is_left_as_it_was(enabled):
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with gc_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
        with pytest.raises(ZeroDivisionError), gc_paused():
            1 / 0  # noqa: B018
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_readers_leave_the_gc_on_after_success_and_failure(ckpt, tmp_path):
    assert gc.isenabled()
    read_metadata(ckpt)
    read_checkpoint(ckpt, verify="full")
    resolve_saved(str(ckpt))
    assert gc.isenabled()
    with pytest.raises(dcpviz.DcpvizError):
        read_metadata_bytes(b"ctorch\nzeros\n.", "src")
    with pytest.raises(dcpviz.DcpvizError):
        read_metadata_bytes(pickle.dumps(3), "src")
    (tmp_path / "empty").mkdir()
    with pytest.raises(dcpviz.DcpvizError):
        read_checkpoint(tmp_path / "empty")
    assert gc.isenabled()


def test_storage_shortfalls_name_exactly_the_records_past_the_end(ckpt):
    """Independent of the reader: the expected dict from the records and the damaged sizes."""
    records = _records(ckpt)
    files = sorted({str(s.relative_path) for s in records.values()})
    assert len(files) == 3
    assert storage_shortfalls(ckpt, read_metadata(ckpt)) == {}
    cut, gone = files[0], files[1]
    cut_size = min(s.offset + s.length for s in records.values() if s.relative_path == cut) - 1
    os.truncate(ckpt / cut, cut_size)
    (ckpt / gone).unlink()
    want = {}
    for index, s in records.items():
        off = tuple(index.offset) if index.offset is not None else None
        where = f"{index.fqn!r} chunk {off}" if off is not None else f"{index.fqn!r}"
        if s.relative_path == gone:
            want[(index.fqn, off)] = (
                "FileNotFoundError",
                f"{where} is stored in {gone!r}, which does not exist in the checkpoint "
                "directory (deleted, renamed or never copied)",
            )
        elif s.relative_path == cut and s.offset + s.length > cut_size:
            want[(index.fqn, off)] = (
                "RuntimeError",
                f"{where} is stored at bytes {s.offset}..{s.offset + s.length} of {cut!r}, but "
                f"the file has only {cut_size} bytes (truncated, or .metadata belongs to another "
                "save)",
            )
    assert want and any(k[0] for k in want)
    got = storage_shortfalls(ckpt, read_metadata(ckpt))
    assert got == want and list(got) == list(want)  # the same records, in metadata order
    assert resolve_saved(str(ckpt)).unreadable == want


def test_storage_shortfalls_leave_absolute_and_empty_names_to_the_readers(ckpt):
    md = read_metadata(ckpt)
    first = next(iter(md.storage_data))
    for rel in ("/abs/x", ""):
        info = md.storage_data[first]
        md.storage_data[first] = _StorageInfo(rel, info.offset, info.length)
        assert storage_shortfalls(ckpt, md) == {}


@pytest.mark.parametrize(
    "damage, message",
    [
        ("outside", r"'a' chunk \(0,\) points outside the checkpoint directory \('\.\./x'\)"),
        ("missing", r"'a' chunk \(0,\) is stored in 'nope\.distcp', which does not exist in .*"),
        ("past", r"'a' chunk \(0,\) is stored at bytes 0\.\.1099511627776 of '.*', but the file"),
        ("bytes", r"^'extra\.epoch' is stored in 'nope\.distcp', which does not exist in .*"),
    ],
)
def test_record_messages_name_the_record(ckpt, damage, message):
    """The messages built only on a problem name the record as before (fqn, chunk offsets)."""
    md = read_metadata(ckpt)
    fqn = "extra.epoch" if damage == "bytes" else "a"
    index = next(k for k in md.storage_data if k.fqn == fqn)
    info = md.storage_data[index]
    rel, length = str(info.relative_path), info.length
    if damage == "outside":
        rel = "../x"
        (ckpt.parent / "x").write_bytes(b"")
    elif damage in ("missing", "bytes"):
        rel = "nope.distcp"
    else:
        length = 1 << 40
    md.storage_data[index] = _StorageInfo(rel, 0 if damage == "past" else info.offset, length)
    if damage == "outside":
        # the metadata checks refuse '..' first; _storage_rows' own refusal is for links
        (ckpt / "link.distcp").symlink_to(ckpt.parent / "x")
        md.storage_data[index] = _StorageInfo("link.distcp", info.offset, info.length)
        message = r"'a' chunk \(0,\) points outside the checkpoint directory \('link\.distcp'\)"
    with open(ckpt / ".metadata", "wb") as fh:
        pickle.dump(md, fh)
    with pytest.raises(dcpviz.DcpvizError, match=message):
        read_checkpoint(ckpt, verify="none")


def test_the_tables_of_a_real_save_are_unchanged(ckpt):
    """chunks and storage rows hold plain tuples of ints, as tuple(map(int, ...)) gave them."""
    facts = read_checkpoint(ckpt, verify="full")
    for row in facts.chunk_rows:
        for box in (row[2], row[3], row[7]):
            assert type(box) is tuple and all(type(v) is int for v in box)
    assert len(facts.storage_rows) == 5
    for row in facts.storage_rows:
        assert type(row[1]) is tuple and all(type(v) is int for v in row[1])
        assert row[5] == 0  # the writer rank, from the file name (__0_n.distcp)
    info = dcpviz.inspect_checkpoint(ckpt)
    assert list(info.chunks.itertuples(index=False, name=None)) == [
        ("a", 0, (0,), (64,), "float32", 256, "tensor", (64,)),
        ("b", 0, (0, 0), (8, 4), "float32", 128, "tensor", (8, 4)),
        ("c", 0, (0,), (16,), "float32", 64, "tensor", (16,)),
        ("step", 0, (), (), "int64", 8, "tensor", ()),
        ("extra.epoch", 0, (), (), "", 0, "bytes", ()),
    ]
    assert set(info.storage.fqn) == {"a", "b", "c", "step", "extra.epoch"}
