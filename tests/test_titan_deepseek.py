"""DeepSeek-V3 (MLA, dense first layers, MoE with a shared expert) as torchtitan holds it: the
published shapes and size, torchtitan's names and order, and recipe='torchtitan' exact rank by
rank against hand-built DTensors over pp, dp_replicate, dp_shard, ep, cp and tp."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import load_plan_items, result_reads
from titan_reference import (
    assert_every_rank_matches_hand_built,
    deepseek_tp_rule,
    hand_titan_metadata,
    hand_titan_state_dict,
    titan_scenario,
)

import dcpviz
from dcpviz.core.errors import DcpvizError
from dcpviz.engine.job.deepseek import DEEPSEEK_CONFIGS, DeepSeekTransformer
from dcpviz.engine.job.models import PRESETS
from dcpviz.engine.job.pipeline_stages import stage_modules


def _build(name):
    with torch.device("meta"):
        return PRESETS[name]()


# DeepSeek-V3's published config (DeepSeek's config_671B.json; torchtitan's "671B" flavour in
# torchtitan/models/deepseek_v3/__init__.py), written out here, not read from the preset.
V3 = dict(
    dim=7168,
    n_layers=61,
    n_dense=3,
    heads=128,
    vocab=129280,
    inter=18432,
    moe_inter=2048,
    experts=256,
    shared=1,
    q_lora=1536,
    kv_lora=512,
    nope=128,
    rope=64,
    v=128,
)


def _v3_parameters_by_hand() -> int:
    c = V3
    d, h = c["dim"], c["heads"]
    attn = (
        d * c["q_lora"]  # wq_a
        + c["q_lora"]  # q_norm
        + c["q_lora"] * h * (c["nope"] + c["rope"])  # wq_b
        + d * (c["kv_lora"] + c["rope"])  # wkv_a
        + c["kv_lora"]  # kv_norm
        + c["kv_lora"] * h * (c["nope"] + c["v"])  # wkv_b
        + h * c["v"] * d  # wo
    )
    norms = 2 * d
    dense = 3 * d * c["inter"]
    moe = 3 * c["experts"] * d * c["moe_inter"] + 3 * d * c["moe_inter"] * c["shared"]
    moe += c["experts"] * d  # the router's gate
    layers = c["n_layers"] * (attn + norms) + c["n_dense"] * dense
    layers += (c["n_layers"] - c["n_dense"]) * moe
    return layers + 2 * c["vocab"] * d + d  # embeddings, output, final norm


def test_deepseek_v3_has_the_published_shapes_and_size():
    m = _build("deepseek-v3")
    sd = m.state_dict()
    assert len(m.layers) == 61
    assert sd["tok_embeddings.weight"].shape == (129280, 7168)
    assert sd["output.weight"].shape == (129280, 7168)
    a = "layers.0.attention"
    assert sd[f"{a}.wq_a.weight"].shape == (1536, 7168)
    assert sd[f"{a}.q_norm.weight"].shape == (1536,)
    assert sd[f"{a}.wq_b.weight"].shape == (128 * (128 + 64), 1536)
    assert sd[f"{a}.wkv_a.weight"].shape == (512 + 64, 7168)
    assert sd[f"{a}.kv_norm.weight"].shape == (512,)
    assert sd[f"{a}.wkv_b.weight"].shape == (128 * (128 + 128), 512)
    assert sd[f"{a}.wo.weight"].shape == (7168, 128 * 128)
    assert f"{a}.wq.weight" not in sd
    # The first 3 layers are dense (inter_dim 18432), the other 58 MoE.
    assert sd["layers.2.feed_forward.w1.weight"].shape == (18432, 7168)
    assert sd["layers.2.feed_forward.w2.weight"].shape == (7168, 18432)
    assert not any(k.startswith("layers.2.moe.") for k in sd)
    assert not any(k.startswith("layers.3.feed_forward.") for k in sd)
    assert sd["layers.3.moe.experts.w1"].shape == (256, 2048, 7168)
    assert sd["layers.3.moe.experts.w2"].shape == (256, 7168, 2048)
    assert sd["layers.60.moe.experts.w3"].shape == (256, 2048, 7168)
    assert sd["layers.3.moe.shared_experts.w1.weight"].shape == (2048, 7168)
    assert sd["layers.3.moe.shared_experts.w2.weight"].shape == (7168, 2048)
    assert sd["layers.3.moe.router.gate.weight"].shape == (256, 7168)
    assert sd["layers.3.moe.expert_bias"].dtype == torch.float32
    assert sd["layers.3.moe.expert_bias"].shape == (256,)
    assert sum(k.endswith("moe.expert_bias") for k in sd) == 58
    n = sum(p.numel() for p in m.parameters())
    assert n == _v3_parameters_by_hand() == 671_026_404_352
    # DeepSeek's published total: 671B for the main model (685B with the 14B MTP module, which
    # torchtitan's model does not hold).
    assert round(n / 1e9) == 671


def test_a_block_holds_torchtitans_names_in_its_order():
    """Registration order decides the state dict's order, which DCP's dedup walks (under HSDP
    another order gives other ranks the replicated items than a real torchtitan job does)."""
    sd = list(_build("deepseek-tiny").state_dict())
    dense = [k[len("layers.0.") :] for k in sd if k.startswith("layers.0.")]
    assert dense == [
        "attention.wq_a.weight",
        "attention.q_norm.weight",
        "attention.wq_b.weight",
        "attention.wkv_a.weight",
        "attention.kv_norm.weight",
        "attention.wkv_b.weight",
        "attention.wo.weight",
        "attention_norm.weight",
        "ffn_norm.weight",
        "feed_forward.w1.weight",
        "feed_forward.w2.weight",
        "feed_forward.w3.weight",
    ]
    moe = [k[len("layers.1.") :] for k in sd if k.startswith("layers.1.")]
    # torchtitan's MoE registers its expert_bias buffer (saved before the children), then
    # experts, router, shared_experts (torchtitan/models/moe.py, MoE.__init__).
    assert moe == dense[:9] + [
        "moe.expert_bias",
        "moe.experts.w1",
        "moe.experts.w2",
        "moe.experts.w3",
        "moe.router.gate.weight",
        "moe.shared_experts.w1.weight",
        "moe.shared_experts.w2.weight",
        "moe.shared_experts.w3.weight",
    ]
    assert sd[0] == "tok_embeddings.weight" and sd[-2:] == ["norm.weight", "output.weight"]


def test_the_671b_pipeline_split_follows_torchtitan_by_hand():
    """61 layers + 2 = 63 effective on 8 stages: 7 per stage, the first 7 stages one more; the
    first holds the embeddings and 7 layers, the last 6 layers and norm + output."""
    stages = stage_modules(8, 61)
    assert stages[0] == ["tok_embeddings"] + [f"layers.{i}" for i in range(7)]
    assert stages[1] == [f"layers.{i}" for i in range(7, 15)]
    assert stages[6] == [f"layers.{i}" for i in range(47, 55)]
    assert stages[7] == [f"layers.{i}" for i in range(55, 61)] + ["norm", "output"]


# deepseek-tiny: 4 layers, layer 0 dense, 8 experts. Stages worked by hand (as for moe-tiny in
# tests/test_titan_recipe.py): pp=4 leaves the first stage with only the dense layer.
PP2 = {0: ["tok_embeddings", "layers.0", "layers.1"], 1: ["layers.2", "layers.3", "norm", "output"]}
PP4 = {
    0: ["tok_embeddings", "layers.0"],
    1: ["layers.1", "layers.2"],
    2: ["layers.3"],
    3: ["norm", "output"],
}

CASES = [
    # mesh, names, stages
    ((2, 2), ("pp", "dp_shard"), PP2),
    ((2, 2, 2), ("pp", "dp_shard", "tp"), PP2),
    ((2, 2, 2), ("pp", "dp_shard", "ep"), PP2),
    ((4, 1, 2), ("pp", "dp_shard", "ep"), PP4),
    ((2, 2), ("dp_shard", "tp"), None),
    ((2, 2, 2), ("dp_shard", "ep", "tp"), None),
    ((2, 1, 4), ("dp_replicate", "dp_shard", "ep"), None),
    ((2, 2, 1, 2), ("pp", "dp_replicate", "dp_shard", "tp"), PP2),
    ((2, 2), ("dp_shard", "cp"), None),
    ((2, 2, 2), ("dp_shard", "cp", "tp"), None),
    ((2, 8), ("dp_shard", "ep"), None),  # 2 x 8 > 8 experts: FSDP shards them on dim 1
    ((4,), ("tp",), None),
]


@pytest.mark.parametrize("fast", [False, None], ids=["per-rank", "shortcuts"])
@pytest.mark.parametrize(
    "mesh,names,stages",
    CASES,
    ids=["x".join(f"{n}{s}" for n, s in zip(c[1], c[0])) for c in CASES],
)
def test_every_rank_matches_hand_built_dtensors(mesh, names, stages, fast):
    assert_every_rank_matches_hand_built("deepseek-tiny", mesh, names, stages, fast)


def test_mla_and_the_shared_expert_are_tensor_parallel_like_torchtitan():
    """The rule the hand-built DTensors follow, stated on a rank's write items: wq_a / wkv_a and
    the latent norms whole on every TP rank, wq_b / wkv_b split by rows, wo by columns; the
    shared expert split like a dense MLP (not over EP); routed experts over EP x TP."""
    res = dcpviz.simulate_save(
        dcpviz.Scenario(
            model="deepseek-tiny",
            world_size=4,
            mesh=(1, 2, 2),
            mesh_dim_names=("dp_shard", "ep", "tp"),
            recipe="torchtitan",
        )
    )
    assert res.ok, res.errors
    wi = res.write_items
    r3 = {row.fqn: (row.offsets, row.sizes) for row in wi[wi["rank"] == 3].itertuples()}
    # Rank 3 is ep 1, tp 1. Everything but the routed experts is FSDP-sharded over dp_shard x ep
    # (2 ranks; rank 3 the second), strided inside its TP shard where TP splits the rows.
    a = "layers.1.attention"
    assert r3[f"{a}.wq_a.weight"] == ((12, 0), (12, 64))  # whole on TP: FSDP's half of 24 rows
    assert r3[f"{a}.kv_norm.weight"] == ((8,), (8,))  # whole on TP: FSDP's half of 16
    assert r3[f"{a}.wq_b.weight"] == ((36, 0), (12, 24))  # TP rows 24-47 of 4 x 12, FSDP's half
    assert r3[f"{a}.wkv_b.weight"] == ((48, 0), (16, 16))  # TP rows 32-63 of 4 x 16, FSDP's half
    assert r3[f"{a}.wo.weight"] == ((32, 16), (32, 16))  # TP columns 16-31, FSDP rows 32-63
    # The shared expert (42 wide) as a dense MLP on TP, not on EP: TP rows 21-41, FSDP 11 + 10.
    assert r3["layers.1.moe.shared_experts.w1.weight"] == ((32, 0), (10, 64))
    assert r3["layers.1.moe.shared_experts.w2.weight"] == ((32, 21), (32, 21))
    assert r3["layers.1.moe.router.gate.weight"] == ((4, 0), (4, 64))
    # Routed experts: EP 1 holds experts 4-7, TP 1 their rows 21-41; dp_shard (1) keeps it all.
    assert r3["layers.1.moe.experts.w1"] == ((4, 21, 0), (4, 21, 64))
    # The dense layer's MLP (190 wide): TP rows 95-189, FSDP 48 + 47.
    assert r3["layers.0.feed_forward.w1.weight"] == ((143, 0), (47, 64))
    assert deepseek_tp_rule("layers.1.attention.wq_a.weight").is_replicate()


@pytest.mark.parametrize(
    "model,mesh,names,needle",
    [
        (
            "deepseek-tiny",
            (1, 3),
            ("dp_shard", "ep"),
            r"does not divide the model's 8 experts.*ep in \[1, 2, 4, 8\]",
        ),
        (
            "deepseek-v3",
            (1, 3),
            ("dp_shard", "ep"),
            r"does not divide the model's 256 experts.*ep in \[1, 2, 4, 8, 16, 32, 64, 128, 256\]",
        ),
        ("deepseek-tiny", (8,), ("pp",), "torchtitan refuses more stages"),
    ],
)
def test_meshes_deepseek_cannot_take_are_refused(model, mesh, names, needle):
    sc = titan_scenario(model, mesh, names)
    with pytest.raises(DcpvizError, match=needle):
        dcpviz.simulate_save(sc)


def test_deepseek_v3_plans_under_torchtitan():
    """The 671B preset over pp x dp_shard x ep x tp: it plans, every stage's keys are its own,
    and an expert's shard is 256 / ep experts."""
    sc = dcpviz.Scenario(
        model="deepseek-v3",
        world_size=8,
        mesh=(2, 1, 2, 2),
        mesh_dim_names=("pp", "dp_shard", "ep", "tp"),
        recipe="torchtitan",
    )
    res = dcpviz.simulate_save(sc)
    assert res.ok, res.errors
    wi = res.write_items
    keys = {r: set(wi[wi["rank"] == r].fqn) for r in (0, 4)}
    assert "tok_embeddings.weight" in keys[0] and "output.weight" in keys[4]
    assert not (keys[0] & keys[4])
    w1 = wi[(wi["rank"] == 5) & (wi.fqn == "layers.40.moe.experts.w1")]
    assert list(w1.sizes) == [(128, 1024, 7168)]
    assert res.metadata is not None


LOADS = [
    # name, saved (mesh, names, stages), target (mesh, names, stages), words in the verdict
    (
        "pp2-ep2-to-pp4-ep2",
        ((2, 2, 2), ("pp", "dp_shard", "ep"), PP2),
        ((4, 1, 2), ("pp", "dp_shard", "ep"), PP4),
        "The layout pp2×dp_shard2×ep2 → pp4×dp_shard1×ep2 is fine",
    ),
    (
        "etp-to-tp",
        ((2, 2, 2), ("dp_shard", "ep", "tp"), None),
        ((2, 2), ("pp", "tp"), PP2),
        "Resharding 8 → 4 ranks (dp_shard2×ep2×tp2 → pp2×tp2) is fine",
    ),
]


@pytest.mark.parametrize("name,saved,target,words", LOADS, ids=[c[0] for c in LOADS])
def test_layout_changes_load_cleanly_and_read_what_dcp_plans(name, saved, target, words):
    """As tests/test_titan_load.py for the other presets: the verdict names the change as
    harmless, and each target rank reads what DCP's load planner reads on hand-built DTensors
    against the Metadata DCP builds from hand-built ones."""
    save = dcpviz.simulate_save(titan_scenario("deepseek-tiny", *saved[:2]))
    assert save.ok, save.errors
    load = dcpviz.simulate_load(save, target=titan_scenario("deepseek-tiny", *target[:2]))
    assert load.ok and load.verdict.clean, load.verdict.line
    assert load.verdict.line == f"{words}; it loads cleanly."
    md = hand_titan_metadata("deepseek-tiny", *saved)
    for rank in range(math.prod(target[0])):
        expected = load_plan_items(
            hand_titan_state_dict("deepseek-tiny", target[0], target[1], rank, target[2]), md
        )
        assert result_reads(load, rank) == expected, f"rank {rank}"


@pytest.mark.skipif(
    not os.environ.get("DCPVIZ_TORCHTITAN"),
    reason="set DCPVIZ_TORCHTITAN to an unpacked torchtitan 0.2.2 wheel (tests/torchtitan_models.py)",
)
def test_presets_equal_torchtitans_own_models():
    """torchtitan's own DeepSeekV3Model('671B') and llama3 Transformers, built on meta in another
    process: the same keys, shapes, dtypes and order as the presets, the same parameter count;
    and torchtitan's own parallelize functions give every rank the plan the recipe gives."""
    script = Path(__file__).with_name("torchtitan_models.py")
    repo = str(
        Path(__file__).resolve().parent.parent
    )  # this checkout's dcpviz, not an installed one
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    run = subprocess.run(
        [sys.executable, str(script), os.environ["DCPVIZ_TORCHTITAN"]],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(run.stdout.strip().splitlines()[-1])
    differ = found.pop("recipe")
    assert found["deepseek-v3"] == [True, 1025, 671_026_404_352, 671_026_404_352]
    assert all(v[0] and v[2] == v[3] for v in found.values()), found
    # torchtitan's own apply_non_moe_tp / apply_moe_ep_tp / apply_fsdp on its own model: every
    # rank's local plan equals recipe='torchtitan' on deepseek-tiny (5 layouts, no rank differs).
    assert len(differ) == 5 and differ == {k: [] for k in differ}, differ


def _no_q_lora():
    """deepseek-tiny with q_lora_rank 0 (torchtitan's 16B flavour's choice): one wq."""
    cfg = DEEPSEEK_CONFIGS["deepseek-tiny"]
    return DeepSeekTransformer(dataclasses.replace(cfg, q_lora_rank=0))


def test_without_q_lora_a_single_wq_is_column_wise():
    """torchtitan builds wq instead of wq_a / q_norm / wq_b when q_lora_rank is 0, and its plan
    makes wq column-wise: 4 heads x (8 + 4) = 48 rows, 24 per TP rank."""
    res = dcpviz.simulate_save(
        dcpviz.Scenario(
            model=_no_q_lora, world_size=2, mesh=(2,), mesh_dim_names=("tp",), recipe="torchtitan"
        )
    )
    assert res.ok, res.errors
    wi = res.write_items
    r1 = {row.fqn: (row.offsets, row.sizes) for row in wi[wi["rank"] == 1].itertuples()}
    assert r1["layers.0.attention.wq.weight"] == ((24, 0), (24, 64))
    assert not any(".wq_a." in k or ".q_norm." in k or ".wq_b." in k for k in r1)
