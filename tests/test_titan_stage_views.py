"""What each pipeline stage and each expert shard writes: the tables equal what DCP's own Metadata
holds (sizes of every saved chunk, split by torchtitan's stage rule worked by hand), and the
figures draw exactly the tables."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

import dcpviz
from dcpviz.analysis.save import stage_tables
from dcpviz.core.errors import DcpvizError
from dcpviz.core.trace import ScenarioInfo

# torchtitan's split of moe-tiny (4 layers) into 2 stages, worked by hand (tests/test_titan_recipe.py).
MOE_TINY_PP2 = {
    0: ["tok_embeddings", "layers.0", "layers.1"],
    1: ["layers.2", "layers.3", "norm", "output"],
}


@pytest.fixture(scope="module")
def tp_save():
    sc = dcpviz.Scenario(
        model="moe-tiny",
        world_size=8,
        mesh=(2, 2, 2),
        mesh_dim_names=("pp", "dp_shard", "tp"),
        recipe="torchtitan",
    )
    return dcpviz.simulate_save(sc)


@pytest.fixture(scope="module")
def ep_save():
    sc = dcpviz.Scenario(
        model="moe-tiny",
        world_size=8,
        mesh=(2, 2, 2),
        mesh_dim_names=("pp", "dp_shard", "ep"),
        recipe="torchtitan",
    )
    return dcpviz.simulate_save(sc)


def _hand_stage(fqn: str) -> int:
    """The stage whose modules hold ``fqn`` (dotted boundaries: layers.1 is not layers.10)."""
    found = {s for s, mods in MOE_TINY_PP2.items() for m in mods if f".{fqn}.".find(f".{m}.") == 0}
    assert len(found) == 1, fqn
    return found.pop()


def _metadata_chunks(save):
    """(fqn, chunk offsets, chunk sizes, bytes) of every chunk in DCP's own Metadata."""
    out = []
    for fqn, md in save.metadata.state_dict_metadata.items():
        assert isinstance(md, TensorStorageMetadata), fqn  # model-only saves: tensors only
        itemsize = torch.empty((), dtype=md.properties.dtype).element_size()
        for ch in md.chunks:
            out.append((fqn, tuple(ch.offsets), tuple(ch.sizes), math.prod(ch.sizes) * itemsize))
    return out


@pytest.mark.parametrize("which", ["tp_save", "ep_save"])
def test_stage_bytes_equal_dcp_metadata_split_by_torchtitans_rule(which, request):
    save = request.getfixturevalue(which)
    table = stage_tables.stage_volume(save)
    hand = pd.Series(0, index=[0, 1])
    for fqn, _, _, nbytes in _metadata_chunks(save):
        hand[_hand_stage(fqn)] += nbytes
    assert table["stage"].tolist() == [0, 1]
    assert table["nbytes"].tolist() == hand.tolist()
    assert table["nbytes"].sum() == sum(c[3] for c in _metadata_chunks(save))
    # pp is the outermost dim: a stage is a block of consecutive ranks.
    assert table["ranks"].tolist() == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert table["keys"].tolist() == [
        sum(_hand_stage(f) == s for f in save.metadata.state_dict_metadata) for s in (0, 1)
    ]
    assert table["modules"].tolist() == ["layers 0-1, tok_embeddings", "layers 2-3, norm, output"]
    assert table["share"].sum() == pytest.approx(1.0)
    # Planned bytes (before dedup) are at least what is written; the per-rank table adds up.
    assert (table["planned_nbytes"] >= table["nbytes"]).all()
    per_rank = stage_tables.stage_rank_volume(save)
    assert per_rank.groupby("stage")["nbytes"].sum().tolist() == table["nbytes"].tolist()
    assert per_rank["nbytes"].tolist() == save.rank_volume["nbytes"].astype(int).tolist()


def test_expert_shards_equal_the_expert_chunks_dcp_recorded(ep_save):
    table = stage_tables.expert_volume(ep_save)
    hand: dict[tuple[int, int, int], int] = {}
    for fqn, offsets, sizes, nbytes in _metadata_chunks(ep_save):
        if ".moe.experts." in fqn:
            key = (_hand_stage(fqn), offsets[0], offsets[0] + sizes[0])
            hand[key] = hand.get(key, 0) + nbytes
    got = {(int(r.stage), r.expert_start, r.expert_stop): r.nbytes for r in table.itertuples()}
    assert got == hand
    # ep2 x dp_shard2 over 4 experts: one expert per rank of a stage (EP Shard(0), then FSDP Shard(0)).
    assert sorted({(r.expert_start, r.expert_stop) for r in table.itertuples()}) == [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
    ]
    assert table["experts"].tolist()[:4] == ["experts 0", "experts 1", "experts 2", "experts 3"]
    assert all(len(r) == 1 for r in table["ranks"])
    assert table["share"].sum() == pytest.approx(1.0)


def test_tp_experts_are_split_on_the_expert_dim_by_fsdp_only(tp_save):
    table = stage_tables.expert_volume(tp_save)
    # No EP: FSDP's Shard(0) over dp_shard=2 splits the experts in halves; TP splits within them.
    assert table[["stage", "expert_start", "expert_stop"]].values.tolist() == [
        [0, 0, 2],
        [0, 2, 4],
        [1, 0, 2],
        [1, 2, 4],
    ]
    assert table["ranks"].tolist() == [(0, 1), (2, 3), (4, 5), (6, 7)]


@pytest.mark.parametrize("which", ["tp_save", "ep_save"])
def test_figures_draw_the_tables(which, request):
    save = request.getfixturevalue(which)
    stages, per_rank = stage_tables.stage_volume(save), stage_tables.stage_rank_volume(save)
    fig = dcpviz.views.stage_volume(save)
    assert [t.meta["stage"] for t in fig.data] == stages["stage"].tolist()
    assert [t.meta["nbytes"] for t in fig.data] == stages["nbytes"].tolist()
    drawn = [(int(x), int(y)) for t in fig.data for x, y in zip(t.x, t.y)]
    assert drawn == list(zip(per_rank["rank"], per_rank["nbytes"]))
    assert [sum(t.y) for t in fig.data] == stages["nbytes"].tolist()

    experts = stage_tables.expert_volume(save)
    efig = dcpviz.views.expert_volume(save)
    drawn = [(t.meta["stage"], x, int(y)) for t in efig.data for x, y in zip(t.x, t.y)]
    assert drawn == list(zip(experts["stage"].tolist(), experts["experts"], experts["nbytes"]))


def test_stage_comes_from_the_pp_coordinate_only():
    info = ScenarioInfo(
        model="m",
        world_size=8,
        mesh=(2, 2, 2),
        mesh_dim_names=("dp_replicate", "pp", "tp"),
        recipe="torchtitan",
        dtype="",
        device="meta",
    )
    trace = type("T", (), {"scenario": info, "kind": "save"})()
    assert stage_tables.stage_of_ranks(trace).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    no_pp = dataclasses.replace(info, mesh_dim_names=("dp_shard", "cp", "tp"))
    trace.scenario = no_pp
    assert stage_tables.stage_of_ranks(trace).tolist() == [0] * 8
    trace.scenario = dataclasses.replace(info, mesh_dim_names=())
    assert stage_tables.stage_of_ranks(trace).isna().all()


def test_unrecorded_mesh_names_give_one_unknown_stage_not_a_guess(tp_save):
    trace = dataclasses.replace(
        tp_save.trace, scenario=dataclasses.replace(tp_save.trace.scenario, mesh_dim_names=())
    )
    table = stage_tables.stage_volume(trace)
    assert len(table) == 1 and pd.isna(table["stage"].iloc[0])
    assert table["ranks"].iloc[0] == tuple(range(8))
    assert table["nbytes"].iloc[0] == stage_tables.stage_volume(tp_save)["nbytes"].sum()
    assert stage_tables.stage_label(table["stage"].iloc[0]) == "stage unknown"


def test_refusals(tp_save):
    failed = dataclasses.replace(tp_save.trace, global_plans=None, final_plans=None)
    with pytest.raises(DcpvizError, match="no global plan"):
        stage_tables.stage_volume(failed)
    with pytest.raises(DcpvizError, match="needs a save result"):
        dcpviz.views.stage_volume(tp_save.trace)
    plain = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, mesh=(2,), recipe="fsdp")
    )
    assert stage_tables.expert_volume(plain).empty
    with pytest.raises(DcpvizError, match="no grouped expert tensors"):
        dcpviz.views.expert_volume(plain)
    with pytest.raises(DcpvizError, match="need a save"):
        stage_tables.stage_volume(object())


def test_stage_tables_and_views_open_a_trace_without_torch(ep_save, tmp_path):
    """A 4-D job's trace read where torch is not installed: the same tables and figures."""
    from test_no_torch import _env

    path = ep_save.to_json(tmp_path / "save.json")
    script = (
        "import sys, dcpviz\n"
        "from dcpviz.analysis.save import stage_tables as T\n"
        "s = dcpviz.load_trace(sys.argv[1])\n"
        "print(T.stage_volume(s)['nbytes'].tolist(), T.expert_volume(s)['nbytes'].tolist())\n"
        "dcpviz.views.stage_volume(s); dcpviz.views.expert_volume(s)\n"
        "assert 'torch' not in sys.modules\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        env=_env(tmp_path / "site"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == (
        f"{stage_tables.stage_volume(ep_save)['nbytes'].tolist()} "
        f"{stage_tables.expert_volume(ep_save)['nbytes'].tolist()}"
    )
