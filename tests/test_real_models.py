"""Named recipes and training states on model code nobody here wrote: Hugging Face
``transformers`` tiny configs (GPT-2 with tied embeddings, Llama, Mixtral's 3-D experts) built
on meta, and the nanoGPT-style model of test_recipes.py. Every rank's write items equal DCP's
plan on DTensors built by hand; every preset model plans under every recipe, with and without
an optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from reference import plan_items, rank_mesh, trace_items
from test_recipes import NanoGPT
from test_training_state import MOMENTS, hand_param_group
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

import dcpviz
from dcpviz.engine.job.models import PRESETS
from dcpviz.engine.job.recipes import RECIPES

transformers = pytest.importorskip("transformers")


def hf_gpt2():
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=100,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def hf_llama():
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(cfg)


def hf_mixtral():
    cfg = transformers.MixtralConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    return transformers.MixtralForCausalLM(cfg)


MODELS = [hf_gpt2, hf_llama, hf_mixtral, NanoGPT]
FSDP_LAYOUTS = [("fsdp", (4,), ("shard",)), ("hsdp", (2, 2), ("replicate", "shard"))]


def hand_model_state(model, recipe, mesh_shape, names, rank):
    """fully_shard's documented layout, by hand: every parameter (a tied one under each of its
    names) Shard(0) over the shard dim, replicated over HSDP's outer dim; buffers plain."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    placements = (Shard(0),) if recipe == "fsdp" else (Replicate(), Shard(0))
    mesh = rank_mesh(mesh_shape, names, rank)
    out = {}
    for fqn, value in model.state_dict().items():
        if fqn not in params:
            out[fqn] = value
            continue
        local_shape, _ = compute_local_shape_and_global_offset(value.shape, mesh, placements)
        local = torch.empty(local_shape, dtype=value.dtype, device="meta")
        out[fqn] = DTensor.from_local(
            local, mesh, placements, run_check=False, shape=value.shape, stride=value.stride()
        )
    return out


def hand_state(model_factory, recipe, mesh, names, rank, optimizer):
    with torch.device("meta"):
        model = model_factory()
    model_sd = hand_model_state(model, recipe, mesh, names, rank)
    if optimizer is None:
        return model_sd
    fqns = [n for n, _ in model.named_parameters()]  # a tied parameter once, under its first name
    state = {
        f: {"step": torch.tensor(0.0), **{m: model_sd[f] for m in MOMENTS[optimizer]}} for f in fqns
    }
    return {
        "model": model_sd,
        "optim": {"state": state, "param_groups": [hand_param_group(optimizer, fqns)]},
    }


@pytest.mark.parametrize("optimizer", [None, "adamw"])
@pytest.mark.parametrize("recipe,mesh,names", FSDP_LAYOUTS)
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_real_models_agree_with_hand_built_dtensors(model, recipe, mesh, names, optimizer):
    sc = dcpviz.Scenario(
        model=model, world_size=math.prod(mesh), mesh=mesh, recipe=recipe, optimizer=optimizer
    )
    res = dcpviz.simulate_save(sc)
    assert res.ok, res.errors
    for rank in range(sc.world_size):
        assert trace_items(res, rank) == plan_items(
            hand_state(model, recipe, mesh, names, rank, optimizer), rank
        ), rank


def test_mixture_of_experts_weights_are_3d_and_sharded_on_the_expert_dim():
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model=hf_mixtral, world_size=4, recipe="fsdp", optimizer="adamw")
    )
    chunks = res.chunks
    experts = chunks[chunks.fqn.str.endswith("experts.gate_up_proj.exp_avg")]
    assert len(experts) > 0 and all(len(s) == 3 for s in experts.sizes)
    # 4 experts over 4 ranks: one expert's full matrix per rank.
    assert {s[0] for s in experts.sizes} == {1}


PRESET_LAYOUTS = {
    "replicate": (2,),
    "fsdp": (4,),
    "hsdp": (2, 2),
    "tp": (2,),
    "tp+fsdp": (2, 2),
    "torchtitan": (2, 2),
}
# Published shapes at scale, checked in tests/test_titan_presets.py and tests/test_titan_deepseek.py
# (their plans take the code paths of llama3-70b, moe-tiny and deepseek-tiny; minutes more here).
SHAPE_ONLY_PRESETS = {"llama3-405b", "mixtral-8x7b", "deepseek-v3"}
# recipe="torchtitan" chooses its parallelisms by name (no pp: the mlp has no stages).
PRESET_NAMES = {"torchtitan": ("dp_shard", "tp")}


@pytest.mark.parametrize("optimizer", [None, "adamw"])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("model", sorted(set(PRESETS) - SHAPE_ONLY_PRESETS))
def test_every_preset_model_plans_under_every_recipe(model, recipe, optimizer):
    mesh = PRESET_LAYOUTS[recipe]
    res = dcpviz.simulate_save(
        dcpviz.Scenario(
            model=model,
            world_size=math.prod(mesh),
            mesh=mesh,
            recipe=recipe,
            mesh_dim_names=PRESET_NAMES.get(recipe),
            optimizer=optimizer,
        )
    )
    assert res.ok, res.errors
    assert set(res.write_items.component) == (
        {"model"} if optimizer is None else {"model", "optim"}
    )


@pytest.mark.parametrize("model", [hf_llama, hf_gpt2], ids=lambda m: m.__name__)
def test_tp_on_a_hugging_face_plan_is_a_clear_error(model):
    """HF models carry tp_plan as style names (or empty): not a parallelize_module plan."""
    with pytest.raises(dcpviz.DcpvizError, match="Hugging Face's tensor-parallel plan"):
        dcpviz.simulate_save(dcpviz.Scenario(model=model, world_size=2, recipe="tp"))
