"""simulate_load's per-rank read items equal DCP's own load plan on DTensors built by hand for
each target rank, against checkpoint metadata DCP built from hand-built saves."""

from __future__ import annotations

import math

import pytest
import torch
from reference import chunk_rows, hand_metadata, hand_state_dict, load_plan_items, result_reads

import dcpviz
from dcpviz.engine.job.models import PRESETS

# (model, saved recipe, saved mesh, saved names, target recipe, target mesh, target names)
CASES = [
    ("mlp", "hsdp", (2, 4), ("replicate", "shard"), "fsdp", (6,), ("shard",)),
    ("llama-tiny", "fsdp", (8,), ("shard",), "tp+fsdp", (4, 2), ("dp", "tp")),
    ("mlp", "replicate", (3,), ("dp",), "fsdp", (4,), ("shard",)),
]
IDS = ["hsdp2x4-to-fsdp6", "fsdp8-to-tp2xfsdp4", "ddp3-to-fsdp4"]


def _meta_model(name):
    with torch.device("meta"):
        return PRESETS[name]()


@pytest.mark.parametrize("fast", [False, None], ids=["per-rank", "shortcuts"])
@pytest.mark.parametrize("model,s_recipe,s_mesh,s_names,t_recipe,t_mesh,t_names", CASES, ids=IDS)
def test_every_target_rank_reads_what_dcp_plans(
    model, s_recipe, s_mesh, s_names, t_recipe, t_mesh, t_names, fast
):
    llama = model != "mlp"
    save = dcpviz.simulate_save(
        dcpviz.Scenario(
            model=model,
            world_size=math.prod(s_mesh),
            mesh=s_mesh,
            mesh_dim_names=s_names,
            recipe=s_recipe,
        ),
        fast=fast,
    )
    W = math.prod(t_mesh)
    load = dcpviz.simulate_load(
        save,
        dcpviz.Scenario(
            model=model, world_size=W, mesh=t_mesh, mesh_dim_names=t_names, recipe=t_recipe
        ),
        fast=fast,
    )
    assert load.ok, load.errors
    assert len(load.mismatches) == 0
    md = hand_metadata(_meta_model(model), s_recipe, s_mesh, s_names, llama)
    m = _meta_model(model)
    for rank in range(W):
        expected = load_plan_items(hand_state_dict(m, t_recipe, t_mesh, t_names, rank, llama), md)
        assert expected, "the reference planned nothing"
        assert result_reads(load, rank) == expected, f"rank {rank}"
    # Every rank reads exactly the bytes of the shards it holds.
    vol = load.rank_volume
    assert (vol["nbytes"].astype("int64") == vol["wanted_nbytes"]).all()


def test_uneven_fsdp6_rows_follow_torch_chunk_arithmetic():
    """Torch-free check: each FSDP-6 rank fills rows torch.chunk gives it, from HSDP's 4 row shards."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    load = dcpviz.simulate_load(save, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"))
    ri = load.read_items
    for rank in range(6):
        rows = ri[(ri["rank"] == rank) & (ri["fqn"] == "fc1.weight")]
        start, size = chunk_rows(190, 6, rank)
        covered = sorted(
            (r.saved_offsets[0] + r.storage_offsets[0], r.lengths[0]) for r in rows.itertuples()
        )
        # The reads tile the rank's rows [start, start+size) with no gap or overlap...
        pos = start
        for s, n in covered:
            assert s == pos, (rank, covered)
            pos += n
        assert pos == start + size
        # ...each from the saved shard that holds them: HSDP shard k holds torch.chunk(190, 4)[k].
        for r in rows.itertuples():
            k = next(k for k in range(4) if chunk_rows(190, 4, k)[0] == r.saved_offsets[0])
            s0, n0 = chunk_rows(190, 4, k)
            assert (
                s0 <= r.saved_offsets[0] + r.storage_offsets[0]
                and r.saved_offsets[0] + r.storage_offsets[0] + r.lengths[0] <= s0 + n0
            )


def test_identity_reshard_reads_only_what_each_rank_wrote():
    """FSDP 8 -> FSDP 8: every rank reads its own shards only; the writer matrix is diagonal."""
    save = dcpviz.simulate_save(dcpviz.Scenario(model="llama-tiny", world_size=8, recipe="fsdp"))
    load = dcpviz.simulate_load(
        save, dcpviz.Scenario(model="llama-tiny", world_size=8, recipe="fsdp")
    )
    m = load.resharding_matrix()
    assert m.shape == (8, 8)
    off_diagonal = m.to_numpy() - torch.diag(torch.tensor(m.to_numpy().diagonal())).numpy()
    assert (off_diagonal == 0).all()
    assert (m.to_numpy().diagonal() == load.rank_volume["nbytes"].astype("int64").to_numpy()).all()
    assert (load.read_items["dest_offsets"] == load.read_items["storage_offsets"]).all()


def test_resharding_matrix_adds_up_and_writers_come_from_the_save():
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    load = dcpviz.simulate_load(save, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"))
    m = load.resharding_matrix()
    assert m.sum(axis=1).tolist() == load.rank_volume["nbytes"].astype("int64").tolist()
    # Writer of each read = the rank the save's final plan wrote that chunk with.
    chunks = save.chunks.set_index(["fqn", "offsets"])["rank"]
    ri = load.read_items[load.read_items["item_type"] == "TENSOR"]
    for r in ri.itertuples():
        assert r.writer_rank == chunks.loc[(r.fqn, r.saved_offsets)]
    # HSDP: shard k lives on ranks k and 4+k; dedup picked one of the two for each chunk.
    for r in ri[ri["fqn"] == "fc1.weight"].itertuples():
        k = [chunk_rows(190, 4, j)[0] for j in range(4)].index(r.saved_offsets[0])
        assert r.writer_rank in (k, 4 + k)


def test_comparison_catches_the_one_process_hazard(monkeypatch):
    """Without rebinding meshes, target ranks get another rank's coordinate; the hand-built
    comparison must then fail (proves the exactness test can fail)."""
    import dcpviz.engine.job.statedict as statedict

    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    monkeypatch.setattr(statedict, "rebind_to_rank", lambda sd, rank: (sd, 0))
    # The per-rank path is where the hazard lives (shortcuts build DTensors without dispatch).
    load = dcpviz.simulate_load(
        save, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"), fast=False
    )
    md = hand_metadata(_meta_model("mlp"), "hsdp", (2, 4), ("replicate", "shard"), False)
    m = _meta_model("mlp")
    wrong = [
        r
        for r in range(6)
        if result_reads(load, r)
        != load_plan_items(hand_state_dict(m, "fsdp", (6,), ("shard",), r, False), md)
    ]
    assert wrong, "the hazard went unnoticed"
