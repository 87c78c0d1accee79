"""Tests written for engine/checkpoint/fix_planner.py's mutants (bench/mutate.py target
``fix_planner``).

The facts: real ``dcp.save`` / ``dcp.load`` in one process (the target's tensors then hold the
saved values, or keep their own where the saved tensor does not reach), and, for a DTensor shard
(rank 1 of 2 on a fake process group), DCP's own read items of the box that rank shares with the
saved tensor, worked out by hand."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from dcpviz import DcpvizError
from dcpviz.engine.checkpoint.fix_planner import RenamingLoadPlanner, load_resized
from dcpviz.engine.checkpoint.reader import SafeFileSystemReader

SAVED = torch.arange(40, dtype=torch.float32).reshape(10, 4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("fixp") / "ckpt"
    dcp.save(
        {
            "ck": {
                "emb": SAVED.clone(),
                "w": torch.arange(6.0).reshape(2, 3),
                "lr": 0.5,
                "col": torch.arange(10.0).reshape(10, 1),
                "vec": torch.arange(10.0),
            }
        },
        checkpoint_id=path,
    )
    return path


def _set_up(sd, path, planner):
    """DCP's first step of a load (dcp.load wraps what it raises in a CheckpointException)."""
    planner.set_up_planner(sd, SafeFileSystemReader(path).read_metadata(), True)


def _load(sd, path, planner):
    dcp.load(sd, checkpoint_id=str(path), planner=planner)
    return sd


def test_rename_loads_tensors_and_python_values_into_their_nested_place(ckpt):
    sd = {"tg": {"w": torch.zeros(2, 3), "lr": 0.0, "emb": torch.zeros(10, 4)}}
    rename = {"tg.w": "ck.w", "tg.lr": "ck.lr", "tg.emb": "ck.emb"}
    _load(sd, ckpt, RenamingLoadPlanner(rename))
    assert torch.equal(sd["tg"]["w"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(sd["tg"]["emb"], SAVED)
    assert sd["tg"]["lr"] == 0.5  # a BYTE_IO value lands at its own place in the nested dict
    assert set(sd) == {"tg"} and set(sd["tg"]) == {"w", "lr", "emb"}


def test_two_keys_onto_one_checkpoint_key_are_refused_naming_both(ckpt):
    sd = {"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}
    with pytest.raises(
        DcpvizError,
        match=r"^RenamingLoadPlanner: the rename maps two target keys onto one checkpoint key "
        r"\('a' and 'b' -> 'ck\.w'\)\. Each target key needs its own checkpoint key\.$",
    ):
        _set_up(sd, ckpt, RenamingLoadPlanner({"a": "ck.w", "b": "ck.w"}))
    sd = {"a": torch.zeros(2, 3), "ck.w": torch.zeros(2, 3)}
    with pytest.raises(DcpvizError, match=r"\('a' and 'ck\.w' -> 'ck\.w'\)"):
        _set_up(sd, ckpt, RenamingLoadPlanner({"a": "ck.w"}))


def test_resized_key_not_in_the_state_dict_is_refused(ckpt):
    sd = {"ck": {"emb": torch.zeros(12, 4)}}
    with pytest.raises(
        DcpvizError,
        match=r"^RenamingLoadPlanner: resized key 'ck\.nope' is not in the state dict\. Name "
        r"resized keys as the state dict's flattened keys \(before the rename\)\.$",
    ):
        _set_up(sd, ckpt, RenamingLoadPlanner(resized=["ck.nope"]))


def test_resized_key_must_be_a_tensor_on_both_sides(ckpt):
    with pytest.raises(
        DcpvizError,
        match=r"^RenamingLoadPlanner: resized key 'ck\.lr' must be a tensor in both the state "
        r"dict and the checkpoint\.$",
    ):
        _set_up({"ck": {"lr": 0.0}}, ckpt, RenamingLoadPlanner(resized=["ck.lr"]))
    # without the checkpoint's metadata nothing says what was saved
    with pytest.raises(DcpvizError, match=r"resized key 'ck\.emb' must be a tensor in both"):
        RenamingLoadPlanner(resized=["ck.emb"]).set_up_planner({"ck": {"emb": torch.zeros(2)}})
    with pytest.raises(DcpvizError, match=r"resized key 'x' \(checkpoint key 'ck\.lr'\) must be"):
        _set_up({"x": torch.zeros(3)}, ckpt, RenamingLoadPlanner({"x": "ck.lr"}, resized=["x"]))


def test_resized_key_with_other_dims_is_refused(ckpt):
    with pytest.raises(DcpvizError, match=r"'ck\.emb' was saved with 2 dims, the target has 1\."):
        _set_up({"ck": {"emb": torch.zeros(40)}}, ckpt, RenamingLoadPlanner(resized=["ck.emb"]))


def test_resized_reads_the_shared_box_and_keeps_the_rest(ckpt):
    # fewer rows and more columns than saved: rows 0-7 and columns 0-3 come from the checkpoint
    sd = {"tg": {"emb": torch.full((8, 6), -1.0), "w": torch.zeros(2, 3)}}
    _load(
        sd,
        ckpt,
        RenamingLoadPlanner({"tg.emb": "ck.emb"}, resized=["tg.emb"], allow_partial_load=True),
    )
    assert torch.equal(sd["tg"]["emb"][:, :4], SAVED[:8])
    assert bool((sd["tg"]["emb"][:, 4:] == -1).all())
    assert torch.equal(sd["tg"]["w"], torch.zeros(2, 3))  # not renamed: no source, partial load


def test_a_resized_key_without_elements_reads_nothing(ckpt):
    sd = {"ck": {"emb": torch.zeros(0, 4)}}
    planner = RenamingLoadPlanner(resized=["ck.emb"], allow_partial_load=True)
    _load(sd, ckpt, planner)
    assert sd["ck"]["emb"].shape == (0, 4)
    plan = planner.create_local_plan()
    assert [i.dest_index.fqn for i in plan.items] == []


def test_partial_load_is_passed_to_dcp(ckpt):
    sd = {"ck": {"w": torch.zeros(2, 3), "new": torch.full((2,), 7.0)}}
    _load(sd, ckpt, RenamingLoadPlanner(allow_partial_load=True))
    assert torch.equal(sd["ck"]["w"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(sd["ck"]["new"], torch.full((2,), 7.0))
    with pytest.raises(CheckpointException):
        _load({"ck": {"new": torch.zeros(2)}}, ckpt, RenamingLoadPlanner())


def test_spec_and_repr_are_sorted_plain_text():
    p = RenamingLoadPlanner({"b": "y", "a": "x"}, resized=["z", "c"], allow_partial_load=True)
    assert list(p.rename) == ["a", "b"]
    assert p.resized == ("c", "z")
    assert json.loads(p.fix_spec) == {"rename": [["a", "x"], ["b", "y"]], "resized": ["c", "z"]}
    assert repr(p) == "RenamingLoadPlanner(2 renamed keys, 2 resized, allow_partial_load=True)"
    q = RenamingLoadPlanner()
    assert (q.rename, q.resized, q.allow_partial_load) == ({}, (), False)
    assert q.flatten_state_dict and q.flatten_sharded_tensors
    assert repr(q) == "RenamingLoadPlanner(0 renamed keys, 0 resized, allow_partial_load=False)"
    r = RenamingLoadPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)
    assert not r.flatten_state_dict and not r.flatten_sharded_tensors


def test_load_resized_with_a_rename_loads_only_those_keys(ckpt):
    sd = {"m": {"emb": torch.full((12, 4), -1.0), "w": torch.zeros(2, 3)}}
    assert load_resized(sd, ckpt, ["m.emb", "m.emb"], rename={"m.emb": "ck.emb"}) == {
        "m.emb": (10, 4)
    }
    assert torch.equal(sd["m"]["emb"][:10], SAVED) and bool((sd["m"]["emb"][10:] == -1).all())
    assert torch.equal(sd["m"]["w"], torch.zeros(2, 3))
    got = load_resized(
        sd, ckpt, ["m.emb"], rename={"m.emb": "ck.emb"}, storage_reader=SafeFileSystemReader(ckpt)
    )
    assert got == {"m.emb": (10, 4)}


def test_load_resized_names_where_a_key_is_not(ckpt):
    sd = {"m": {"emb": torch.zeros(12, 4)}, "ck": {"lr": 0.0}}
    with pytest.raises(DcpvizError, match=r"'m\.nope' is not in the state dict \(its flattened"):
        load_resized(sd, ckpt, ["m.nope"])
    with pytest.raises(DcpvizError, match=r"'m\.emb' is not in the checkpoint \(as a tensor\)\."):
        load_resized(sd, ckpt, ["m.emb"])
    with pytest.raises(DcpvizError, match=r"'ck\.lr' is not in the checkpoint \(as a tensor\)"):
        load_resized(sd, ckpt, ["ck.lr"])


def _shard(mesh, rows):
    from torch.distributed.tensor import DTensor, Shard

    local = torch.full((rows - (rows + 1) // 2, 4), -1.0)
    return DTensor.from_local(
        local, mesh, [Shard(0)], run_check=False, shape=torch.Size((rows, 4)), stride=(4, 1)
    )


@pytest.mark.parametrize(
    "rows, box",
    [
        (12, ((6, 0), (4, 4))),  # rank 1 holds rows 6-11; the saved tensor has rows 6-9 of them
        (8, ((4, 0), (4, 4))),  # rank 1 holds rows 4-7, all saved (the saved tensor is longer)
        (24, None),  # rank 1 holds rows 12-23: none saved
        (1, None),  # rank 1 holds no row
    ],
)
def test_a_shard_reads_the_box_it_shares_with_the_saved_tensor(ckpt, rank1_of_2, rows, box):
    value = _shard(rank1_of_2, rows)
    planner = RenamingLoadPlanner({"emb": "ck.emb"}, resized=["emb"])
    planner.set_up_planner({"emb": value}, SafeFileSystemReader(ckpt).read_metadata(), False)
    items = planner.create_local_plan().items
    if box is None:
        assert items == []
        return
    ((item),) = items
    assert item.dest_index.fqn == "ck.emb"
    assert tuple(item.storage_offsets) == box[0] and tuple(item.lengths) == box[1]
    assert tuple(item.dest_offsets) == (0, 0)  # within the box's view
    view = planner.lookup_tensor(item.dest_index)
    assert view.shape == (4, 4)
    view.fill_(5.0)
    local = value.to_local()
    assert bool((local[:4] == 5).all()) and bool((local[4:] == -1).all())


def test_a_rank_whose_local_tensor_names_no_single_chunk_reads_nothing(ckpt, rank1_of_2):
    # DTensor asks its local tensor for its chunks when the local tensor is a subclass that
    # knows them (TorchRec's LocalShardsWrapper): none means this rank holds nothing of the key.
    # (A LocalShardsWrapper itself cannot be sliced: torch raises NotImplementedError on it, so
    # this rank's chunk list is given here on a plain shard.)
    value = _shard(rank1_of_2, 12)
    value.__create_chunk_list__ = lambda: []
    planner = RenamingLoadPlanner({"emb": "ck.emb"}, resized=["emb"])
    planner.set_up_planner({"emb": value}, SafeFileSystemReader(ckpt).read_metadata(), False)
    assert planner.create_local_plan().items == []


def test_a_resized_key_with_a_dim_of_one_is_read(ckpt):
    sd = {"ck": {"col": torch.full((12, 1), -1.0)}}
    _load(sd, ckpt, RenamingLoadPlanner(resized=["ck.col"], allow_partial_load=True))
    assert torch.equal(sd["ck"]["col"][:10], torch.arange(10.0).reshape(10, 1))
    assert bool((sd["ck"]["col"][10:] == -1).all())


def test_set_up_keeps_dcps_coordinator_flag(ckpt):
    md = SafeFileSystemReader(ckpt).read_metadata()
    for flag in (True, False):
        p = RenamingLoadPlanner()
        p.set_up_planner({"ck": {"w": torch.zeros(2, 3)}}, md, flag)
        assert p.is_coordinator is flag
    p = RenamingLoadPlanner()
    p.set_up_planner({"ck": {"w": torch.zeros(2, 3)}}, md)  # DCP's default: not the coordinator
    assert p.is_coordinator is False


def test_python_values_not_renamed_still_land_in_their_nested_place(ckpt):
    sd = {"ck": {"lr": 0.0}, "tg": {"w": torch.zeros(2, 3)}}
    _load(sd, ckpt, RenamingLoadPlanner({"tg.w": "ck.w"}))
    assert sd["ck"]["lr"] == 0.5
    assert torch.equal(sd["tg"]["w"], torch.arange(6.0).reshape(2, 3))


def test_an_empty_shard_inside_the_saved_length_plans_no_read(ckpt, rank1_of_2):
    # a 1-d key of one element on two ranks: rank 1 holds nothing, at offset 1 (inside the saved
    # length 10): DCP would plan a read of zero elements for it; the planner plans none
    from torch.distributed.tensor import DTensor, Shard

    value = DTensor.from_local(
        torch.zeros(0), rank1_of_2, [Shard(0)], run_check=False, shape=torch.Size((1,)), stride=(1,)
    )
    assert [tuple(c.offsets) for c in value.__create_chunk_list__()] == [(1,)]
    planner = RenamingLoadPlanner({"v": "ck.vec"}, resized=["v"])
    planner.set_up_planner({"v": value}, SafeFileSystemReader(ckpt).read_metadata(), False)
    assert planner.create_local_plan().items == []
