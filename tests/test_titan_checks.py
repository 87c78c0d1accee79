"""Save checks with pipeline stages: keys per stage are by design (one info row, no warning); a
layers ModuleList, which torchtitan's pipeline_module_split renumbers from 0 on every stage, makes
the stages save different layers under one key, and DCP's dedup keeps one stage's: data loss."""

from __future__ import annotations

import torch.nn as nn

import dcpviz
from dcpviz.engine.job.models import LlamaConfig, Transformer


def layers_in_a_module_list():
    """llama-tiny shapes with 4 layers held in a ModuleList instead of torchtitan's ModuleDict."""
    m = Transformer(
        LlamaConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=190, vocab_size=1000)
    )
    m.layers = nn.ModuleList(list(m.layers.values()))
    return m


def _save(model):
    return dcpviz.simulate_save(
        dcpviz.Scenario(
            model=model,
            world_size=4,
            mesh=(2, 2),
            mesh_dim_names=("pp", "dp_shard"),
            recipe="torchtitan",
        )
    )


def test_keys_per_stage_are_expected_not_a_warning():
    res = _save("moe-tiny")
    checks = res.checks
    assert "key-sets-differ" not in set(checks.check)
    info = checks[checks.check == "keys-per-stage"]
    assert len(info) == 1 and info.severity.iloc[0] == "info"
    assert info.message.iloc[0].startswith(
        f"{len(res.trace.metadata.tensors)} keys are saved by one pipeline stage"
    )


def test_a_renumbered_module_list_loses_the_other_stages_layers():
    res = _save(layers_in_a_module_list)
    # What DCP wrote: 4 layers in the model, 2 in the checkpoint (stage 1's layers 2 and 3 were
    # saved as layers.0 and layers.1, deduplicated against stage 0's).
    saved_layers = {
        t.fqn.split(".")[1] for t in res.trace.metadata.tensors if t.fqn.startswith("layers.")
    }
    assert saved_layers == {"0", "1"}
    loss = res.checks[res.checks.check == "stages-share-a-key"]
    assert set(loss.severity) == {"data-loss"}
    assert "ModuleDict" in loss.fix.iloc[0]
    assert not res.checks[res.checks.check == "key-sets-differ"].fqn.str.startswith("layers.").any()


def test_per_rank_keys_inside_a_pipeline_job_are_still_a_warning():
    """torchtitan's app state saves one dataloader key per rank: within a stage some ranks lack
    it, so it stays a key-sets-differ warning next to the stage info."""
    res = dcpviz.simulate_save(
        dcpviz.Scenario(
            model="moe-tiny",
            world_size=4,
            mesh=(2, 2),
            mesh_dim_names=("pp", "dp_shard"),
            recipe="torchtitan",
            optimizer="adamw",
            state="torchtitan",
        )
    )
    assert res.ok, res.errors
    differ = set(res.checks[res.checks.check == "key-sets-differ"].fqn)
    assert {k for k in differ if k.startswith("dataloader.")}
    assert not {
        k for k in differ if k.startswith(("layers.", "tok_embeddings", "output", "optimizer"))
    }
    assert "keys-per-stage" in set(res.checks.check)
