"""Checkpoint metadata that passes the restricted unpickler but has the wrong types is one
CheckpointError naming the field — never an AttributeError or TypeError from a table or planner."""

import dataclasses
import pickle
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import MetadataIndex

import dcpviz
from dcpviz.core.errors import CheckpointError
from dcpviz.engine.checkpoint.reader import METADATA_FILE, read_metadata


def write_small_checkpoint(path) -> str:
    """A real one-process dcp.save: a matrix, a vector and a Python value (a BYTE_IO entry)."""
    state = {
        "w": torch.arange(16, dtype=torch.float32).reshape(4, 4),
        "b": torch.ones(3),
        "step": 7,
    }
    dcp.save(state, checkpoint_id=str(path))
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt")


def _with_metadata(ckpt, tmp_path, change):
    """A copy of the checkpoint whose .metadata is the real one after ``change(md)``."""
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    md = read_metadata(copy)
    change(md)
    (copy / METADATA_FILE).write_bytes(pickle.dumps(md))
    return copy


def _storage_key(md, fqn):
    return next(k for k in md.storage_data if k.fqn == fqn)


def _int_offset(md):
    key = _storage_key(md, "w")
    info = md.storage_data.pop(key)
    bad = MetadataIndex("w")
    object.__setattr__(bad, "offset", 3)
    md.storage_data[bad] = info


def _record_path(md):
    info = md.storage_data[_storage_key(md, "w")]
    md.storage_data[_storage_key(md, "w")] = dataclasses.replace(
        info, relative_path="sub/../" + info.relative_path
    )


def _dtype_string(md):
    md.state_dict_metadata["w"].properties.dtype = "float32"


CASES = {
    "state_dict_metadata=None": (
        lambda md: setattr(md, "state_dict_metadata", None),
        "state_dict_metadata",
    ),
    "state_dict_metadata=list": (
        lambda md: setattr(md, "state_dict_metadata", [1, 2]),
        "state_dict_metadata",
    ),
    "storage_data=list": (
        lambda md: setattr(md, "storage_data", list(md.storage_data.items())),
        "storage_data",
    ),
    "dtype string": (_dtype_string, "state_dict_metadata['w'].properties.dtype"),
    "int offset": (_int_offset, "MetadataIndex.offset"),
    "chunks=None": (
        lambda md: setattr(md.state_dict_metadata["w"], "chunks", None),
        "state_dict_metadata['w'].chunks",
    ),
    "record path": (_record_path, "relative_path"),
    "negative length": (
        lambda md: setattr(md.storage_data[_storage_key(md, "b")], "length", -1),
        "storage_data['b'].length",
    ),
    "chunk outside": (
        lambda md: setattr(md.state_dict_metadata["b"].chunks[0], "sizes", torch.Size([9])),
        "lies outside",
    ),
    "entry of another type": (
        lambda md: md.state_dict_metadata.__setitem__("w", md.storage_meta),
        "['w']",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_wrong_types_name_the_field(ckpt, tmp_path, case):
    change, needle = CASES[case]
    bad = _with_metadata(ckpt, tmp_path, change)
    with pytest.raises(CheckpointError, match="not valid DCP metadata") as info:
        dcpviz.inspect_checkpoint(bad)
    assert needle in str(info.value)
    assert ".metadata" in str(info.value)


def test_load_planning_refuses_it_too(ckpt, tmp_path):
    bad = _with_metadata(
        ckpt, tmp_path, lambda md: setattr(md.state_dict_metadata["w"], "chunks", None)
    )
    with pytest.raises(CheckpointError, match="chunks"):
        dcpviz.simulate_load(bad, target=dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))


def test_the_real_checkpoint_passes(ckpt):
    info = dcpviz.inspect_checkpoint(ckpt)
    assert info.totals["tensors"] == 2 and info.totals["bytes_entries"] == 1
