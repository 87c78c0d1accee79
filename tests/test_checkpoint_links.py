"""Nothing is read through a path that leaves the checkpoint directory (issue 10, item 11):
not a ``.metadata`` link, not a storage record naming or linking to a file outside."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import dcpviz


def _state_dict() -> dict:
    torch.manual_seed(0)
    return {"w": torch.randn(4, 3), "step": 3}


@pytest.fixture
def ckpt(tmp_path) -> Path:
    path = tmp_path / "ckpt"
    dcp.save(_state_dict(), checkpoint_id=path)
    return path


def _load_safely(path: Path) -> dict:
    target = {"w": torch.zeros(4, 3), "step": 0}
    dcp.load(target, storage_reader=dcpviz.SafeFileSystemReader(path))
    return target


def test_metadata_link_out_of_the_directory_is_refused(ckpt, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(ckpt / ".metadata", outside / ".metadata")
    (ckpt / ".metadata").symlink_to(outside / ".metadata")
    with pytest.raises(dcpviz.DcpvizError, match="outside the checkpoint directory"):
        dcpviz.inspect_checkpoint(ckpt)
    with pytest.raises(BaseException, match="outside the checkpoint directory"):
        _load_safely(ckpt)


def test_metadata_link_inside_the_directory_is_fine(ckpt):
    (ckpt / ".metadata").rename(ckpt / "meta.real")
    (ckpt / ".metadata").symlink_to("meta.real")
    dcpviz.inspect_checkpoint(ckpt)
    assert _load_safely(ckpt)["step"] == 3


def _point_storage_at(ckpt: Path, rel: str) -> None:
    with open(ckpt / ".metadata", "rb") as fh:  # our own test checkpoint
        md = pickle.load(fh)
    for info in md.storage_data.values():
        info.relative_path = rel
    with open(ckpt / ".metadata", "wb") as fh:
        pickle.dump(md, fh)


def test_safe_reader_refuses_a_storage_record_outside(ckpt, tmp_path):
    """A faithful copy of the data file outside the directory: DCP's reader would read it."""
    shutil.copy(ckpt / "__0_0.distcp", tmp_path / "copy.distcp")
    _point_storage_at(ckpt, "../copy.distcp")
    with pytest.raises(BaseException, match="outside the checkpoint directory"):
        _load_safely(ckpt)


def test_safe_reader_refuses_a_data_file_linking_outside(ckpt, tmp_path):
    shutil.move(ckpt / "__0_0.distcp", tmp_path / "moved.distcp")
    (ckpt / "__0_0.distcp").symlink_to(tmp_path / "moved.distcp")
    with pytest.raises(dcpviz.DcpvizError, match="outside the checkpoint directory"):
        dcpviz.inspect_checkpoint(ckpt)
    with pytest.raises(BaseException, match="outside the checkpoint directory"):
        _load_safely(ckpt)


def test_the_refusal_names_where_the_link_goes_and_the_fix(ckpt, tmp_path):
    """The message is the user's only lead: the real file the link reaches (the path this test
    made), and what to do if they trust it."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(ckpt / ".metadata", outside / ".metadata")
    (ckpt / ".metadata").symlink_to(outside / ".metadata")
    with pytest.raises(dcpviz.DcpvizError) as info:
        dcpviz.inspect_checkpoint(ckpt)
    message = str(info.value)
    assert (
        f"(a link to {str((outside / '.metadata').resolve())!r}); refusing to read it." in message
    )
    assert message.endswith(
        "refusing to read it. Copy the file into the checkpoint directory if you trust it."
    ), message
