"""Dedup decisions, as DCP's coordinator made them, and the replayed explanation."""

import dataclasses

import pytest
import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.planner import TensorWriteData

import dcpviz

HSDP = dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")


@pytest.fixture(scope="module")
def default():
    return dcpviz.simulate_save(HSDP)


@pytest.fixture(scope="module")
def lowest():
    return dcpviz.simulate_save(HSDP, planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True))


def test_hsdp_keeps_each_shard_exactly_once(default):
    wi = default.write_items
    kept = wi[wi.kept]
    assert not kept.duplicated(["fqn", "offsets"]).any()
    # Every shard that was planned is written by exactly one rank...
    assert set(map(tuple, wi[["fqn", "offsets"]].values.tolist())) == set(
        map(tuple, kept[["fqn", "offsets"]].values.tolist())
    )
    # ...each shard was planned by its two replicas (same shard coordinate, both replica rows).
    shards = default.dedup[default.dedup.fqn == "fc1.weight"]
    assert sorted(shards.candidates) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    # The writers in the metadata are the ranks DCP kept.
    ch = default.chunks
    for _, row in ch[ch.kind == "tensor"].iterrows():
        k = wi[(wi.fqn == row.fqn) & (wi.offsets == row.offsets) & wi.kept]
        assert list(k["rank"]) == [row["rank"]]


def test_plain_buffer_planned_by_all_written_once(default):
    row = default.dedup.set_index("fqn").loc["progress.step"]
    assert row.candidates == tuple(range(8))
    wi = default.write_items
    step = wi[wi.fqn == "progress.step"]
    assert len(step) == 8 and step.kept.sum() == 1 and (step.item_type == "TENSOR").all()
    assert row.chosen_rank == int(step[step.kept]["rank"].iloc[0])


def test_replay_explains_dcps_choice(default):
    assert default.dedup.replay_agrees.all()
    assert default.dedup.rule.eq("fewest planned bytes").all()


def test_lowest_rank_option_moves_replicated_items_to_rank_0(default, lowest):
    d = lowest.dedup
    assert (d.chosen_rank == d.candidates.map(min)).all() and d.replay_agrees.all()
    assert (d.rule == "lowest rank").all()
    assert lowest.dedup.set_index("fqn").loc["progress.step", "chosen_rank"] == 0
    # The volume shows it: only the first replica row (ranks 0-3) writes.
    vol = lowest.rank_volume.set_index("rank")
    assert (vol.loc[4:7, "nbytes"] == 0).all() and (vol.loc[0:3, "nbytes"] > 0).all()
    assert default.rank_volume.set_index("rank").loc[4:7, "nbytes"].gt(0).any()
    # Same bytes in total, different balance.
    assert vol["nbytes"].sum() == default.rank_volume["nbytes"].sum()


def test_dcp_balances_on_global_tensor_size_not_shard_size(default):
    """A fact worth seeing: DCP's dedup tally adds tensor_storage_size(), the *global* size."""
    wi = default.write_items
    shard = wi[(wi.fqn == "fc1.weight")].iloc[0]
    assert shard["dcp_size"] == 190 * 16 * 4 and shard["nbytes"] == shard["sizes"][0] * 16 * 4


class OverlappingPlanner(DefaultSavePlanner):
    """Claims one extra row before each row-shard, so neighbouring chunks overlap."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        items = []
        for wi in plan.items:
            td = wi.tensor_data
            if td is not None and wi.type.name == "SHARD" and td.chunk.offsets[0] > 0:
                off = torch.Size([td.chunk.offsets[0] - 1, *td.chunk.offsets[1:]])
                size = torch.Size([td.chunk.sizes[0] + 1, *td.chunk.sizes[1:]])
                wi = dataclasses.replace(
                    wi,
                    index=MetadataIndex(wi.index.fqn, off),
                    tensor_data=TensorWriteData(
                        ChunkStorageMetadata(off, size), td.properties, td.size
                    ),
                )
            items.append(wi)
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan


def test_overlapping_planner_yields_dcps_validation_text():
    result = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"), planner=OverlappingPlanner
    )
    assert not result.ok
    assert any(
        "Failed to validate global plan" in e and "overlapping chunks" in e for e in result.errors
    )
    assert result.trace.global_plan_validated is False
    # What was planned so far is still there to look at.
    assert len(result.write_items) > 0 and len(result.chunks) > 0
    assert result.summary["validated"] is False


def test_user_model_and_user_recipe():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6)
            self.head = torch.nn.Linear(6, 5)

    def my_recipe(model, mesh):
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.head, mesh=mesh)  # only the head: emb stays a plain tensor
        return model

    result = dcpviz.simulate_save(dcpviz.Scenario(model=Net, world_size=4, recipe=my_recipe))
    assert result.ok
    wi = result.write_items
    assert set(wi[wi.fqn == "emb.weight"].item_type) == {"TENSOR"}
    head = wi[wi.fqn == "head.weight"].sort_values("rank")
    assert list(head.offsets) == [(0, 0), (2, 0), (4, 0), (5, 0)]
    assert list(head.sizes) == [(2, 6), (2, 6), (1, 6), (0, 6)]
    assert result.trace.scenario.recipe.endswith("my_recipe")


def test_why_names_the_losers_tallies_and_the_whole_tensor_charge():
    """The dedup lesson, told: on llama-tiny HSDP 2x4, rank 0 wins the 1000x64 embedding's shard
    first, is charged the whole tensor for it, and so loses the layers to rank 4."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    d = save.dedup.set_index("fqn", drop=False)
    emb = save.write_items[
        (save.write_items.fqn == "tok_embeddings.weight") & (save.write_items["rank"] == 0)
    ].iloc[0]
    assert emb["global_size"] == (1000, 64) and emb["sizes"] == (250, 64)
    wk = d[(d.fqn == "layers.0.attention.wk.weight") & (d.candidates == (0, 4))].iloc[0]
    tallies = dict(zip(wk.candidates, wk.candidate_planned_bytes))
    assert tallies[0] == 1000 * 64 * 4  # the whole embedding, not the 250x64 shard rank 0 stores
    assert wk.chosen_rank == 4
    assert wk.why == (
        f"rank 4: {dcpviz.core.units.fmt_bytes(tallies[4])} < rank 0: 250.0 KB — rank 0 was charged the whole "
        "1000×64 tensor for a 250×64 shard of tok_embeddings.weight (250.0 KB counted, 62.5 KB stored)"
    )
    # Every row names its winner's tally first and each losing tally (up to three groups).
    for row in save.dedup.itertuples():
        tally = dict(zip(row.candidates, row.candidate_planned_bytes))
        assert row.why.startswith(
            f"rank {row.chosen_rank}: {dcpviz.core.units.fmt_bytes(tally[row.chosen_rank])}"
        )
        for b in sorted({t for t in tally.values() if t > tally[row.chosen_rank]})[:3]:
            assert f": {dcpviz.core.units.fmt_bytes(b)}" in row.why


def test_why_says_a_tie_and_the_lowest_rank_rule(default, lowest):
    step = default.dedup.set_index("fqn").loc["progress.step"]
    assert "(a tie: the first candidate wins)" in step.why
    assert lowest.dedup.why.str.startswith("dedup_save_to_lowest_rank: rank ").all()
