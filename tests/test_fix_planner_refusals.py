"""RenamingLoadPlanner's refusals of ``resized`` keys name the key as the user wrote it, and a
resized DTensor whose local tensor is a LocalShardsWrapper (torchrec-style sharding) is refused
up front with a DcpvizError instead of torch's NotImplementedError from slicing it."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp

from dcpviz import DcpvizError
from dcpviz.engine.checkpoint.fix_planner import RenamingLoadPlanner
from dcpviz.engine.checkpoint.reader import SafeFileSystemReader


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("fixr") / "ckpt"
    dcp.save({"ck": {"emb": torch.arange(40.0).reshape(10, 4), "lr": 0.5}}, checkpoint_id=path)
    return path


def _set_up(sd, path, planner):
    planner.set_up_planner(sd, SafeFileSystemReader(path).read_metadata(), False)


def test_not_a_tensor_refusal_names_the_key_as_passed_and_its_checkpoint_key(ckpt):
    with pytest.raises(
        DcpvizError,
        match=r"^RenamingLoadPlanner: resized key 'x' \(checkpoint key 'ck\.lr'\) must be a "
        r"tensor in both the state dict and the checkpoint\.$",
    ):
        _set_up({"x": torch.zeros(3)}, ckpt, RenamingLoadPlanner({"x": "ck.lr"}, resized=["x"]))
    with pytest.raises(
        DcpvizError,
        match=r"^RenamingLoadPlanner: resized key 'ck\.lr' must be a tensor in both",
    ):  # not renamed: one name
        _set_up({"ck": {"lr": 0.0}}, ckpt, RenamingLoadPlanner(resized=["ck.lr"]))


def test_other_dims_refusal_names_the_key_as_passed(ckpt):
    with pytest.raises(
        DcpvizError,
        match=r"^RenamingLoadPlanner: 'e' \(checkpoint key 'ck\.emb'\) was saved with 2 dims, "
        r"the target has 1\.$",
    ):
        _set_up({"e": torch.zeros(40)}, ckpt, RenamingLoadPlanner({"e": "ck.emb"}, resized=["e"]))


def _wrapped_shard(mesh):
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper

    local = LocalShardsWrapper([torch.full((6, 4), -1.0)], [(6, 0)])
    return DTensor.from_local(
        local, mesh, [Shard(0)], run_check=False, shape=torch.Size((12, 4)), stride=(4, 1)
    )


def test_a_local_shards_wrapper_is_refused_naming_the_key_and_the_fix(ckpt, rank1_of_2):
    value = _wrapped_shard(rank1_of_2)
    with pytest.raises(
        DcpvizError,
        match=r"^RenamingLoadPlanner: resized key 'e' \(checkpoint key 'ck\.emb'\) is a DTensor "
        r"whose local tensor is a LocalShardsWrapper \(torchrec-style sharding\)",
    ) as err:
        _set_up({"e": value}, ckpt, RenamingLoadPlanner({"e": "ck.emb"}, resized=["e"]))
    assert "resized" in str(err.value).split("LocalShardsWrapper (torchrec-style sharding)")[1]
    # the user's tensor is untouched
    assert bool((value.to_local().local_shards()[0] == -1).all())


def test_a_plain_local_shards_wrapper_is_refused_too(ckpt):
    from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper

    value = LocalShardsWrapper([torch.zeros(12, 4)], [(0, 0)])
    with pytest.raises(
        DcpvizError,
        match=r"^RenamingLoadPlanner: resized key 'ck\.emb' is a tensor that is a "
        r"LocalShardsWrapper \(torchrec-style sharding\)",
    ):
        _set_up({"ck": {"emb": value}}, ckpt, RenamingLoadPlanner(resized=["ck.emb"]))
