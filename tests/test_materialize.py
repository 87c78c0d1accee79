"""materialize: every element's value depends on its tensor's key and global position only, so
shards of a tensor differ and the shards of every rank assemble into the unsharded tensor."""

from __future__ import annotations

import torch

import dcpviz
from dcpviz.engine.job.recipes import apply_recipe
from dcpviz.engine.job.statedict import build_mesh, build_model_on_meta
from dcpviz.engine.job.world import fake_world
from dcpviz.engine.values.materialize import materialize


def materialized_state(scenario: dcpviz.Scenario, rank: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s state dict after materialize on cpu: its local tensors, cloned."""
    from torch.distributed.tensor import DTensor

    with fake_world(rank, scenario.world_size):
        model = apply_recipe(
            scenario.recipe, build_model_on_meta(scenario), build_mesh(scenario, "cpu")
        )
        materialize(model, "cpu")
        return {
            k: (v.to_local() if isinstance(v, DTensor) else v).clone()
            for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor)
        }


def test_fsdp_shards_assemble_into_the_unsharded_values():
    whole = materialized_state(
        dcpviz.Scenario(model="llama-tiny", world_size=1, recipe="replicate"), 0
    )
    sc = dcpviz.Scenario(model="llama-tiny", world_size=3, recipe="fsdp")
    shards = [materialized_state(sc, r) for r in range(3)]
    for key, full in whole.items():
        if full.dim() == 0:  # not sharded: every rank holds the same
            assert all(torch.equal(s[key], full) for s in shards), key
            continue
        # fully_shard splits dim 0 as torch.chunk does, in rank order (DTensor's Shard(0)).
        assert torch.equal(torch.cat([s[key] for s in shards]), full), key
    w = [s["layers.0.feed_forward.w1.weight"] for s in shards]  # 190 rows: 64, 64, 62
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[0][:62], w[2])


def test_replicas_agree_and_shards_differ_on_hsdp():
    sc = dcpviz.Scenario(model="mlp", world_size=4, mesh=(2, 2), recipe="hsdp")
    s = [materialized_state(sc, r) for r in range(4)]
    assert torch.equal(s[0]["fc1.weight"], s[2]["fc1.weight"])  # same shard, other replica
    assert not torch.equal(s[0]["fc1.weight"], s[1]["fc1.weight"])  # rows 0-94 vs 95-189
    assert torch.equal(s[0]["progress.step"], s[3]["progress.step"])  # a plain tensor everywhere


def test_every_dtype_gets_position_values():
    from dcpviz.engine.values.materialize import position_values

    for dtype in (
        torch.float32,
        torch.bfloat16,
        torch.float64,
        torch.complex64,
        torch.int64,
        torch.uint8,
        torch.bool,
        torch.float8_e4m3fn,
    ):
        top = position_values("w", (4, 6), (0, 0), (2, 6), dtype)
        bottom = position_values("w", (4, 6), (2, 0), (2, 6), dtype)
        assert top.dtype == dtype and top.shape == (2, 6)
        assert not torch.equal(top.view(torch.uint8), bottom.view(torch.uint8)), dtype
        whole = position_values("w", (4, 6), (0, 0), (4, 6), dtype)
        assert torch.equal(torch.cat([top, bottom]).view(torch.uint8), whole.view(torch.uint8)), (
            dtype
        )


def test_sharded_tensor_shards_get_their_global_positions():
    """ShardedTensor (FSDP1-era state dicts): each local shard holds its rows of the whole."""
    from torch.distributed._shard.sharded_tensor import Shard as STShard
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed._shard.sharded_tensor.metadata import (
        ShardedTensorMetadata,
        ShardMetadata,
        TensorProperties,
    )

    from dcpviz.engine.values.materialize import fill_by_position, position_values

    with fake_world(1, 2):
        shards = [
            ShardMetadata(shard_offsets=[3 * r, 0], shard_sizes=[3, 4], placement=f"rank:{r}/cpu")
            for r in (0, 1)
        ]
        md = ShardedTensorMetadata(
            shards, torch.Size([6, 4]), TensorProperties(dtype=torch.float32)
        )
        st = ShardedTensor._init_from_local_shards_and_global_metadata(
            [STShard(torch.zeros(3, 4), shards[1])], md
        )
        fill_by_position({"w": st})
        whole = position_values("w", (6, 4), (0, 0), (6, 4), torch.float32)
        assert torch.equal(st.local_shards()[0].tensor, whole[3:])
