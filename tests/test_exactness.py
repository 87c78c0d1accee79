"""simulate_save's per-rank plans equal DCP's plans on DTensors built by hand for each rank."""

from __future__ import annotations

import pytest
import torch
from reference import chunk_rows, hand_state_dict, plan_items, trace_items

import dcpviz
from dcpviz.engine.job.models import PRESETS

CASES = [
    # model, recipe, mesh, names — uneven dims (190 rows / 4) and shards smaller than the
    # shard count (fc2: 3 rows over 4 and 8 ranks -> empty shards) included.
    ("mlp", "fsdp", (4,), ("shard",)),
    ("mlp", "fsdp", (8,), ("shard",)),
    ("mlp", "hsdp", (2, 4), ("replicate", "shard")),
    ("mlp", "replicate", (3,), ("dp",)),
    ("llama-tiny", "fsdp", (4,), ("shard",)),
    ("llama-tiny", "tp", (4,), ("tp",)),
    ("llama-tiny", "tp+fsdp", (2, 2), ("dp", "tp")),
    ("llama-tiny", "tp+fsdp", (2, 4), ("dp", "tp")),
    ("mlp", "tp+fsdp", (2, 2), ("dp", "tp")),
]


def _expected(model, recipe, mesh, names, rank):
    with torch.device("meta"):
        m = PRESETS[model]()
    return plan_items(hand_state_dict(m, recipe, mesh, names, rank, llama=model != "mlp"), rank)


@pytest.mark.parametrize("fast", [False, None], ids=["per-rank", "shortcuts"])
@pytest.mark.parametrize(
    "model,recipe,mesh,names",
    CASES,
    ids=[f"{c[0]}-{c[1]}-{'x'.join(map(str, c[2]))}" for c in CASES],
)
def test_every_rank_matches_hand_built_dtensors(model, recipe, mesh, names, fast):
    W = 1
    for d in mesh:
        W *= d
    result = dcpviz.simulate_save(
        dcpviz.Scenario(model=model, world_size=W, mesh=mesh, mesh_dim_names=names, recipe=recipe),
        fast=fast,
    )
    assert result.ok, result.errors
    for rank in range(W):
        assert trace_items(result, rank) == _expected(model, recipe, mesh, names, rank), (
            f"rank {rank}"
        )


def test_fsdp_offsets_follow_torch_chunk_arithmetic():
    """Third, torch-free check: FSDP row shards are torch.chunk pieces, empty ones included."""
    result = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=8, recipe="fsdp"))
    wi = result.write_items
    for fqn, rows in (("fc1.weight", 190), ("fc2.weight", 3), ("fc2.bias", 3)):
        got = wi[wi.fqn == fqn].sort_values("rank")
        for rank, (off, size) in zip(got["rank"], zip(got["offsets"], got["sizes"])):
            assert (off[0], size[0]) == chunk_rows(rows, 8, rank), (fqn, rank)
    fc2 = wi[wi.fqn == "fc2.weight"]
    assert (fc2["sizes"].map(lambda s: s[0]) == 0).sum() == 5  # 3 rows over 8 ranks: 5 empty shards


def test_strided_tp_fsdp_offsets_are_not_rank_times_size():
    """DESIGN.md: on a 2x2 (dp, tp) mesh, rank 1 holds rows 4-5 of 8 and rank 2 rows 2-3."""

    def strided_model():
        from dcpviz.engine.job.models import LlamaConfig, Transformer

        return Transformer(
            LlamaConfig(dim=8, n_layers=1, n_heads=2, n_kv_heads=2, ffn_dim=8, vocab_size=16)
        )

    result = dcpviz.simulate_save(
        dcpviz.Scenario(model=strided_model, world_size=4, mesh=(2, 2), recipe="tp+fsdp")
    )
    wi = result.write_items
    wq = wi[wi.fqn == "layers.0.attention.wq.weight"].set_index("rank")
    assert [wq.loc[r, "offsets"][0] for r in range(4)] == [0, 4, 2, 6]
    assert all(wq.loc[r, "sizes"][0] == 2 for r in range(4))


def test_hazard_is_caught_without_rebinding(monkeypatch):
    """Without rebinding meshes, per-rank fully_shard in one process hands ranks another rank's
    coordinate; the hand-built comparison must then fail (this test proves the check can fail)."""
    import dcpviz.engine.job.statedict as statedict

    monkeypatch.setattr(statedict, "rebind_to_rank", lambda sd, rank: (sd, 0))
    mesh, names = (2, 4), ("replicate", "shard")
    # The per-rank path is where the hazard lives (the shortcut path builds each rank's DTensors
    # without going through DTensor's dispatch).
    result = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=mesh, recipe="hsdp"), fast=False
    )
    mismatched = [
        r for r in range(8) if trace_items(result, r) != _expected("mlp", "hsdp", mesh, names, r)
    ]
    assert mismatched, "the hazard went unnoticed"
    # ...and DCP's own validation sees the damage too.
    assert any("invalid fill" in e or "overlapping" in e for e in result.errors)


def test_distribute_tensor_recipe_matches_hand_built():
    """A user recipe that calls distribute_tensor itself (column shards of every weight)."""
    from reference import plan_items, rank_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    def cols(model, mesh):
        for mod in model.modules():
            for name, p in list(mod.named_parameters(recurse=False)):
                if p.dim() == 2:
                    mod.register_parameter(
                        name, torch.nn.Parameter(distribute_tensor(p, mesh, [Shard(1)]))
                    )
        return model

    res = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=4, recipe=cols))
    assert res.ok
    with torch.device("meta"):
        m = PRESETS["mlp"]()
    for rank in range(4):
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        mesh = rank_mesh((4,), ("shard",), rank)
        sd = {}
        for fqn, v in m.state_dict().items():
            if isinstance(v, torch.Tensor) and v.dim() == 2 and fqn.endswith("weight"):
                shape, _ = compute_local_shape_and_global_offset(v.shape, mesh, [Shard(1)])
                sd[fqn] = DTensor.from_local(
                    torch.empty(shape, device="meta"),
                    mesh,
                    [Shard(1)],
                    run_check=False,
                    shape=v.shape,
                    stride=v.stride(),
                )
            else:
                sd[fqn] = v
        assert trace_items(res, rank) == plan_items(sd, rank), rank
