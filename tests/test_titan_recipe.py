"""recipe='torchtitan': per-rank plans equal DCP's on hand-built DTensors, stage by stage; the
stage split equals torchtitan's rule worked by hand; bad meshes are refused with the fix."""

from __future__ import annotations

import pytest
from titan_reference import (
    assert_every_rank_matches_hand_built,
    hand_titan_state_dict,
    titan_scenario,
)

import dcpviz
from dcpviz.core.errors import DcpvizError
from dcpviz.engine.job.pipeline_stages import stage_modules

# Stages worked by hand from torchtitan's generate_llm_fqn_per_model_part (embeddings and
# norm+output weigh one layer each; effective layers split evenly, the first stages take the rest).
LLAMA_TINY_PP2 = {0: ["tok_embeddings", "layers.0"], 1: ["layers.1", "norm", "output"]}
MOE_TINY_PP2 = {
    0: ["tok_embeddings", "layers.0", "layers.1"],
    1: ["layers.2", "layers.3", "norm", "output"],
}
MOE_TINY_PP4 = {
    0: ["tok_embeddings", "layers.0"],
    1: ["layers.1", "layers.2"],
    2: ["layers.3"],
    3: ["norm", "output"],
}

CASES = [
    # model, mesh, names, stages
    ("llama-tiny", (2, 2), ("pp", "dp_shard"), LLAMA_TINY_PP2),
    ("llama-tiny", (2, 2, 2), ("pp", "dp_replicate", "dp_shard"), LLAMA_TINY_PP2),
    ("llama-tiny", (2, 2, 2), ("pp", "dp_shard", "tp"), LLAMA_TINY_PP2),
    ("llama-tiny", (2, 4), ("dp_shard", "tp"), None),
    ("llama-tiny", (2, 2), ("dp_shard", "cp"), None),
    ("moe-tiny", (4, 2), ("pp", "dp_shard"), MOE_TINY_PP4),
    ("moe-tiny", (2, 2), ("dp_shard", "ep"), None),
    ("moe-tiny", (1, 4), ("dp_shard", "ep"), None),
    ("moe-tiny", (2, 2, 2), ("pp", "dp_shard", "ep"), MOE_TINY_PP2),
    ("moe-tiny", (2, 1, 2), ("dp_replicate", "dp_shard", "ep"), None),
]


@pytest.mark.parametrize("fast", [False, None], ids=["per-rank", "shortcuts"])
@pytest.mark.parametrize(
    "model,mesh,names,stages",
    CASES,
    ids=[f"{c[0]}-{'x'.join(f'{n}{s}' for n, s in zip(c[2], c[1]))}" for c in CASES],
)
def test_every_rank_matches_hand_built_dtensors(model, mesh, names, stages, fast):
    assert_every_rank_matches_hand_built(model, mesh, names, stages, fast)


def test_stage_split_follows_torchtitan_by_hand():
    """llama3-405b on 16 stages: 126 layers + 2 = 128 effective, 8 per stage: the first stage
    holds the embeddings and 7 layers, the last 7 layers and norm + output."""
    stages = stage_modules(16, 126)
    assert stages[0] == ["tok_embeddings"] + [f"layers.{i}" for i in range(7)]
    assert stages[1] == [f"layers.{i}" for i in range(7, 15)]
    assert stages[15] == [f"layers.{i}" for i in range(119, 126)] + ["norm", "output"]
    assert sum(len(s) for s in stages) == 126 + 3
    assert stage_modules(2, 4) == [v for _, v in sorted(MOE_TINY_PP2.items())]
    assert stage_modules(4, 4) == [v for _, v in sorted(MOE_TINY_PP4.items())]


def test_key_sets_differ_per_stage_and_cover_the_model():
    sc = dcpviz.Scenario(
        model="moe-tiny", world_size=4, mesh=(4,), mesh_dim_names=("pp",), recipe="torchtitan"
    )
    res = dcpviz.simulate_save(sc)
    assert res.ok, res.errors
    wi = res.write_items
    keys = {r: set(wi[wi["rank"] == r].fqn) for r in range(4)}
    assert all(not (keys[a] & keys[b]) for a in range(4) for b in range(a + 1, 4))
    import torch

    with torch.device("meta"):
        whole = set(dcpviz.engine.job.models.PRESETS["moe-tiny"]().state_dict())
    assert set().union(*keys.values()) == whole


@pytest.mark.parametrize(
    "kw,needle",
    [
        (
            dict(mesh=(2, 2), mesh_dim_names=("pp", "fsdp")),
            "'fsdp' is not a torchtitan parallel dim. Did you mean 'dp_shard'",
        ),
        (
            dict(mesh=(2, 2), mesh_dim_names=("pp", "dp_shrd")),
            "'dp_shrd' is not a torchtitan parallel dim",
        ),
        (dict(mesh=(2, 2), mesh_dim_names=("tp", "pp")), "torchtitan's order"),
        (dict(mesh=(2, 2), mesh_dim_names=None), "chooses the parallelisms by mesh_dim_names"),
        (dict(mesh=(2, 4), mesh_dim_names=("pp", "tp")), "holds 8 ranks but world_size=4"),
        (dict(mesh=(4,), mesh_dim_names=("ep",)), "Add a 'dp_shard' dim"),
    ],
)
def test_bad_meshes_are_refused_with_the_fix(kw, needle):
    with pytest.raises(DcpvizError, match=needle):
        dcpviz.Scenario(model="moe-tiny", world_size=4, recipe="torchtitan", **kw)


@pytest.mark.parametrize(
    "model,mesh,names,needle",
    [
        ("llama-tiny", (8,), ("pp",), "torchtitan refuses more stages"),
        (
            "moe-tiny",
            (1, 3),
            ("dp_shard", "ep"),
            r"does not divide the model's 4 experts.*ep in \[1, 2, 4\]",
        ),
        ("llama-tiny", (1, 2), ("dp_shard", "ep"), "has no MoE blocks"),
        ("mlp", (2,), ("pp",), "lacks tok_embeddings"),
    ],
)
def test_meshes_the_model_cannot_take_are_refused(model, mesh, names, needle):
    sc = titan_scenario(model, mesh, names)
    with pytest.raises(DcpvizError, match=needle):
        dcpviz.simulate_save(sc)


def test_stage_templates_are_used_and_equal_the_per_rank_path():
    """With pp, each stage's first rank builds a template for its stage (engine/shortcuts/stage_templates.py);
    every plan, the global plan and the Metadata equal those of every rank building its own."""
    sc = titan_scenario("moe-tiny", (2, 2, 2), ("pp", "dp_shard", "ep"))
    fast, plain = dcpviz.simulate_save(sc), dcpviz.simulate_save(sc, fast=False)
    assert any("pipeline stages" in n for n in fast.trace.notes)
    assert not any("pipeline stages" in n for n in plain.trace.notes)
    for phase in ("local_plans", "global_plans", "final_plans"):
        a = [[fast.trace.items[i] for i in p.items] for p in getattr(fast.trace, phase)]
        b = [[plain.trace.items[i] for i in p.items] for p in getattr(plain.trace, phase)]
        assert a == b, phase
    assert fast.trace.metadata == plain.trace.metadata


@pytest.mark.parametrize("fast", [False, None], ids=["per-rank", "shortcuts"])
def test_every_stages_dtensors_are_described_not_only_the_coordinators(fast):
    """With pp, rank 0 holds only stage 0's keys. Every DTensor key of every stage has its
    placements recorded as the hand-built DTensors of that stage's first rank have them, and a
    DTensor replicated over tp on a later stage (a norm weight) is not taken for a plain tensor
    whose copies might differ (a rank-specific-value warning on a good save)."""
    from torch.distributed.tensor import DTensor

    from dcpviz.analysis.save import tables

    mesh, names = (2, 2, 2), ("pp", "dp_shard", "tp")
    result = dcpviz.simulate_save(
        dcpviz.Scenario(
            model="llama-tiny", world_size=8, mesh=mesh, mesh_dim_names=names, recipe="torchtitan"
        ),
        fast=fast,
    )
    frame = tables.tensors(result.trace)
    placements = dict(zip(frame["fqn"], frame["placements"]))
    expected = {}
    for first_rank in (0, 4):
        hand = hand_titan_state_dict("llama-tiny", mesh, names, first_rank, LLAMA_TINY_PP2)
        for fqn, value in hand.items():
            if isinstance(value, DTensor):
                expected[fqn] = "(" + ", ".join(repr(p) for p in value.placements) + ")"
    assert "layers.1.attention_norm.weight" in expected and "norm.weight" in expected
    assert {k: placements[k] for k in expected} == expected
    assert "rank-specific-value" not in set(result.checks["check"]), result.checks


def test_a_key_laid_out_differently_on_two_ranks_is_not_shown_as_one_ranks():
    """Layouts merged across ranks: new keys are added, the same layout stays, and a key whose
    layout differs between ranks says so instead of showing the first rank's."""
    from dcpviz.core.trace import TensorLayout
    from dcpviz.engine.convert.save import DIFFERS_BY_RANK, merged_layouts

    a = TensorLayout("w", "(Shard(dim=0),)", ("dp",), (2,))
    b = TensorLayout("w", "(Replicate(),)", ("dp",), (2,))
    c = TensorLayout("v", "(Shard(dim=0),)", ("dp",), (2,))
    assert merged_layouts((a,), (a, c)) == (a, c)
    merged = merged_layouts(merged_layouts((a,), (b,)), (a,))
    assert [(x.fqn, x.placements) for x in merged] == [("w", DIFFERS_BY_RANK)]
