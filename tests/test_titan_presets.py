"""The presets with published shapes: llama3-405b (torchtitan's llama3 405B args) and
mixtral-8x7b (Mistral AI's), experts as grouped 3-D parameters; their parameter counts equal
the published ones."""

from __future__ import annotations

import pytest
import torch

import dcpviz
from dcpviz.engine.job.models import PRESETS


def _build(name):
    with torch.device("meta"):
        return PRESETS[name]()


def test_llama3_405b_has_the_published_shapes_and_size():
    m = _build("llama3-405b")
    sd = m.state_dict()
    assert len(m.layers) == 126
    assert sd["tok_embeddings.weight"].shape == (128256, 16384)
    assert sd["layers.0.attention.wq.weight"].shape == (128 * 128, 16384)
    assert sd["layers.0.attention.wk.weight"].shape == (8 * 128, 16384)
    assert sd["layers.125.feed_forward.w1.weight"].shape == (53248, 16384)
    # Meta's model card: 405B parameters (405.85e9 with untied embeddings).
    assert round(sum(p.numel() for p in m.parameters()) / 1e9, 1) == 405.9


def test_mixtral_has_grouped_experts_and_the_published_size():
    m = _build("mixtral-8x7b")
    sd = m.state_dict()
    assert sd["layers.0.moe.experts.w1"].shape == (8, 14336, 4096)
    assert sd["layers.0.moe.experts.w2"].shape == (8, 4096, 14336)
    assert sd["layers.31.moe.router.gate.weight"].shape == (8, 4096)
    assert "layers.0.moe.shared_experts.w1.weight" not in sd
    assert sd["layers.0.moe.expert_bias"].dtype == torch.float32
    # Mistral AI: 46.7B parameters in all (router and expert_bias included here; the buffer is
    # not a parameter).
    assert round(sum(p.numel() for p in m.parameters()) / 1e9, 1) == 46.7


@pytest.mark.parametrize("model", ["llama3-405b", "mixtral-8x7b"])
def test_big_presets_plan_under_torchtitan(model):
    # No pp for 405B here: stages are planned rank by rank (~10 s each for 126 layers on meta).
    names = (
        ("pp", "dp_shard", "ep") if model == "mixtral-8x7b" else ("dp_replicate", "dp_shard", "tp")
    )
    sc = dcpviz.Scenario(
        model=model, world_size=8, mesh=(2, 2, 2), mesh_dim_names=names, recipe="torchtitan"
    )
    res = dcpviz.simulate_save(sc)
    assert res.ok, res.errors
    assert res.metadata is not None
