"""Loads across torchtitan parallelism changes: PP 4 → 2, PP to no PP and back, TP and EP
degree changes, HSDP to FSDP. Each target rank's reads equal DCP's own load planner on
hand-built DTensors against a checkpoint DCP planned from hand-built DTensors; the verdict names
the layout change as harmless; a key missing from every stage is still a real problem."""

from __future__ import annotations

import math

import pytest
from reference import load_plan_items, result_reads
from test_titan_recipe import LLAMA_TINY_PP2, MOE_TINY_PP2, MOE_TINY_PP4
from titan_reference import hand_titan_metadata, hand_titan_state_dict, titan_scenario

import dcpviz
from dcpviz.engine.job.models import LlamaConfig, Transformer

CHANGES = [
    # name, model, saved (mesh, names, stages), target (mesh, names, stages), words in the verdict
    (
        "pp4-to-pp2",
        "moe-tiny",
        ((4, 2), ("pp", "dp_shard"), MOE_TINY_PP4),
        ((2, 2), ("pp", "dp_shard"), MOE_TINY_PP2),
        "Resharding 8 → 4 ranks (pp4×dp_shard2 → pp2×dp_shard2) is fine",
    ),
    (
        "pp-to-none",
        "moe-tiny",
        ((2, 2), ("pp", "dp_shard"), MOE_TINY_PP2),
        ((4,), ("dp_shard",), None),
        "The layout pp2×dp_shard2 → dp_shard4 is fine",
    ),
    (
        "none-to-pp",
        "llama-tiny",
        ((4,), ("dp_shard",), None),
        ((2, 2), ("pp", "dp_shard"), LLAMA_TINY_PP2),
        "The layout dp_shard4 → pp2×dp_shard2 is fine",
    ),
    (
        "tp-degree",
        "llama-tiny",
        ((2, 2), ("dp_shard", "tp"), None),
        ((2, 4), ("dp_shard", "tp"), None),
        "Resharding 4 → 8 ranks (dp_shard2×tp2 → dp_shard2×tp4) is fine",
    ),
    (
        "ep-degree",
        "moe-tiny",
        ((2, 2), ("dp_shard", "ep"), None),
        ((1, 4), ("dp_shard", "ep"), None),
        "The layout dp_shard2×ep2 → dp_shard1×ep4 is fine",
    ),
    (
        "hsdp-to-fsdp",
        "llama-tiny",
        ((2, 2), ("dp_replicate", "dp_shard"), None),
        ((3,), ("dp_shard",), None),
        "Resharding 4 → 3 ranks (dp_replicate2×dp_shard2 → dp_shard3) is fine",
    ),
]


@pytest.mark.parametrize("name,model,saved,target,words", CHANGES, ids=[c[0] for c in CHANGES])
def test_layout_change_loads_cleanly_and_reads_what_dcp_plans(name, model, saved, target, words):
    save = dcpviz.simulate_save(titan_scenario(model, *saved[:2]))
    assert save.ok, save.errors
    load = dcpviz.simulate_load(save, target=titan_scenario(model, *target[:2]))
    assert load.ok and load.verdict.clean, load.verdict.line
    assert load.verdict.line == f"{words}; it loads cleanly."
    assert len(load.mismatches) == 0
    md = hand_titan_metadata(model, *saved)
    for rank in range(math.prod(target[0])):
        expected = load_plan_items(
            hand_titan_state_dict(model, target[0], target[1], rank, target[2]), md
        )
        assert result_reads(load, rank) == expected, f"rank {rank}"


def _llama(n_layers):
    return lambda: Transformer(
        LlamaConfig(
            dim=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, ffn_dim=190, vocab_size=1000
        )
    )


def three_layers():
    """A llama-tiny with a third layer."""
    return _llama(3)()


def test_a_key_missing_from_every_stage_breaks_the_load():
    """Saved with 2 layers on 2 stages, loaded into 3 layers on 2 stages: layers.2 is on the
    last stage of the target and in no stage of the checkpoint: DCP raises on that stage's ranks."""
    save = dcpviz.simulate_save(titan_scenario("llama-tiny", (2, 2), ("pp", "dp_shard")))
    target = dcpviz.Scenario(
        model=three_layers,
        world_size=4,
        mesh=(2, 2),
        mesh_dim_names=("pp", "dp_shard"),
        recipe="torchtitan",
    )
    load = dcpviz.simulate_load(save, target=target)
    assert not load.verdict.loads
    missing = load.mismatches[load.mismatches["kind"] == "missing"]
    assert set(missing.fqn) == {
        f"layers.2.{k}"
        for k in (
            "attention.wq.weight",
            "attention.wk.weight",
            "attention.wv.weight",
            "attention.wo.weight",
            "feed_forward.w1.weight",
            "feed_forward.w2.weight",
            "feed_forward.w3.weight",
            "attention_norm.weight",
            "ffn_norm.weight",
        )
    }
    # Only the last stage's ranks hold layers.2 (stage split of 3 layers on 2 stages: 5 effective,
    # 3 + 2: tok_embeddings, layers.0, layers.1 | layers.2, norm, output).
    assert set(missing["rank"]) == {2, 3}


def test_keys_of_other_stages_are_not_reported_unread():
    """Each stage reads only its own keys; a checkpoint key is unread only if no stage reads it.
    Saved with 3 layers, loaded into 2: layers.2 is read by no rank of any stage."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(
            model=three_layers,
            world_size=4,
            mesh=(2, 2),
            mesh_dim_names=("pp", "dp_shard"),
            recipe="torchtitan",
        )
    )
    load = dcpviz.simulate_load(
        save, target=titan_scenario("llama-tiny", (2, 2), ("pp", "dp_shard"))
    )
    unread = set(load.mismatches[load.mismatches["kind"] == "unexpected"].fqn)
    assert unread and all(k.startswith("layers.2.") for k in unread)
