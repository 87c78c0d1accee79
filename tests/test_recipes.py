"""Named recipes on ordinary models: FSDP units are what a training script wraps (each block of
the repeated stack, then the root), whatever containers hold them; TP goes on the dim named "tp"."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dcpviz
from dcpviz.engine.job.recipes import fsdp_units


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)  # fused QKV
        self.c_proj = nn.Linear(d, d)
        self.register_buffer("mask", torch.tril(torch.ones(8, 8)), persistent=False)

    def forward(self, x):
        return self.c_proj(self.c_attn(x)[..., : x.shape[-1]])


class MoE(nn.Module):
    """3-D expert weights: one parameter per projection, experts along dim 0."""

    def __init__(self, d: int, n_experts: int = 3, hidden: int = 10) -> None:
        super().__init__()
        self.router = nn.Linear(d, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(n_experts, d, hidden))
        self.w2 = nn.Parameter(torch.randn(n_experts, hidden, d))

    def forward(self, x):
        return x


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d)
        self.mlp = MoE(d)

    def forward(self, x):
        return x + self.mlp(self.attn(self.ln_1(x)))


class NanoGPT(nn.Module):
    """nanoGPT's layout: transformer = ModuleDict(wte, wpe, h=ModuleList(blocks), ln_f), lm_head
    tied to wte, a non-persistent buffer and complex RoPE frequencies kept as a buffer."""

    def __init__(self, d: int = 16, vocab: int = 50, n_layer: int = 3) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, d),
                wpe=nn.Embedding(8, d),
                h=nn.ModuleList([Block(d) for _ in range(n_layer)]),
                ln_f=nn.LayerNorm(d),
            )
        )
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.register_buffer("freqs_cis", torch.ones(8, 4, dtype=torch.complex64), persistent=False)

    def forward(self, idx):
        return self.lm_head(self.transformer.ln_f(self.transformer.wte(idx)))


class GPTBlocks(nn.Module):
    """GPT-style: the stack is called ``blocks``; input and output embeddings tied."""

    def __init__(self, d: int = 16, vocab: int = 40) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(2)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.norm(self.embed(x)))


class DeepContainers(nn.Module):
    """No repeated stack; parameters under containers without forward, two levels deep."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(
            {
                "a": nn.ModuleList([nn.Linear(4, 6), nn.LayerNorm(6)]),
                "b": nn.ModuleDict({"proj": nn.Linear(4, 5)}),
            }
        )
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(x)


def names_of(model: nn.Module, units: list[nn.Module]) -> list[str]:
    by_id = {id(m): n for n, m in model.named_modules()}
    return [by_id[id(u)] for u in units]


def test_units_are_the_blocks_of_the_stack_at_any_depth():
    nano, gpt = NanoGPT(), GPTBlocks()
    assert names_of(nano, fsdp_units(nano)) == [
        "transformer.h.0",
        "transformer.h.1",
        "transformer.h.2",
    ]
    assert names_of(gpt, fsdp_units(gpt)) == ["blocks.0", "blocks.1"]


def test_without_a_stack_units_look_through_forwardless_containers():
    model = DeepContainers()
    assert names_of(model, fsdp_units(model)) == ["heads.a.0", "heads.a.1", "heads.b.proj", "out"]


def test_tied_modules_are_not_units_of_their_own():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.mid, self.head = (
                nn.Embedding(10, 4),
                nn.Linear(4, 4),
                nn.Linear(4, 10, bias=False),
            )
            self.head.weight = self.embed.weight

    model = Tied()
    assert names_of(model, fsdp_units(model)) == ["mid"]


@pytest.mark.parametrize("model", [NanoGPT, GPTBlocks, DeepContainers])
@pytest.mark.parametrize("recipe,mesh", [("fsdp", (4,)), ("hsdp", (2, 2))])
def test_fsdp_recipes_plan_ordinary_models(model, recipe, mesh):
    """Every parameter is a DTensor sharded on dim 0 over the shard dim; DCP plans and validates
    the save; the fast path gives the per-rank path's plans."""
    sc = dcpviz.Scenario(model=model, world_size=4, mesh=mesh, recipe=recipe)
    fast, full = dcpviz.simulate_save(sc), dcpviz.simulate_save(sc, fast=False)
    assert fast.ok and full.ok, (fast.errors, full.errors)
    t, u = fast.trace, full.trace
    assert [[t.items[i] for i in p.items] for p in t.final_plans] == [
        [u.items[i] for i in p.items] for p in u.final_plans
    ]
    keys = set(model().state_dict())  # a tied weight under both its names
    assert {lay.fqn for lay in t.layouts} == keys
    assert {lay.placements for lay in t.layouts} == {
        "(Shard(dim=0))" if recipe == "fsdp" else "(Replicate(), Shard(dim=0))"
    }
    if model is NanoGPT:
        assert "freqs_cis" not in set(fast.write_items.fqn) and "transformer.h.0.mlp.w1" in keys


def fc1_rows(result, ranks):
    wi = result.write_items
    rows = set()
    for row in wi[(wi["fqn"] == "fc1.weight") & wi["rank"].isin(ranks)].itertuples():
        rows |= set(range(row.offsets[0], row.offsets[0] + row.sizes[0]))
    return rows


def test_tp_fsdp_puts_tp_on_the_dim_named_tp():
    """mesh_dim_names=("tp", "dp"): ranks 0 and 1 share the outer ("tp") coordinate 0, so
    together they hold TP's first half of fc1.weight's 190 rows; ranks 2 and 3 the second."""
    sc = dcpviz.Scenario(
        model="mlp", world_size=4, mesh=(2, 2), recipe="tp+fsdp", mesh_dim_names=("tp", "dp")
    )
    res = dcpviz.simulate_save(sc)
    assert res.ok, res.errors
    assert fc1_rows(res, [0, 1]) == set(range(95)) and fc1_rows(res, [2, 3]) == set(range(95, 190))
    default = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, mesh=(2, 2), recipe="tp+fsdp")
    )
    assert fc1_rows(default, [0, 2]) == set(range(95))  # ("dp", "tp"): TP on the inner dim


def test_a_container_as_the_whole_model_is_a_clear_error():
    sc = dcpviz.Scenario(
        model=lambda: nn.ModuleDict({"a": nn.Linear(4, 4)}), world_size=2, recipe="fsdp"
    )
    with pytest.raises(dcpviz.DcpvizError, match="ModuleDict without forward"):
        dcpviz.simulate_save(sc)


class DictBlocks(nn.Module):
    """A stack whose blocks are ``ModuleDict``s (no forward): the model's forward calls
    ``block["attn"]`` and ``block["mlp"]`` itself. fully_shard refuses a ModuleDict, so the
    units are what each block holds."""

    def __init__(self, d: int = 8, n_layer: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, d)
        self.h = nn.ModuleList(
            [
                nn.ModuleDict({"attn": nn.Linear(d, d), "mlp": nn.Linear(d, 2 * d)})
                for _ in range(n_layer)
            ]
        )
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        x = self.embed(x)
        for block in self.h:
            x = block["attn"](x)
        return self.out(x)


def test_blocks_without_forward_are_wrapped_through():
    model = DictBlocks()
    assert names_of(model, fsdp_units(model)) == ["h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp"]


@pytest.mark.parametrize(
    "recipe,mesh,names", [("fsdp", (4,), ("shard",)), ("hsdp", (2, 2), ("replicate", "shard"))]
)
def test_fsdp_on_dict_blocks_plans_what_dcp_plans_on_hand_built_dtensors(recipe, mesh, names):
    """Before: fully_shard(ModuleDict) raised a raw ValueError. Now every rank's plan equals
    DCP's own local plan on DTensors built by hand (Shard(0) over the shard dim)."""
    from reference import hand_state_dict, plan_items, trace_items

    res = dcpviz.simulate_save(
        dcpviz.Scenario(model=DictBlocks, world_size=4, mesh=mesh, recipe=recipe)
    )
    assert res.ok, res.errors
    for rank in range(4):
        torch.manual_seed(0)
        want = plan_items(
            hand_state_dict(DictBlocks(), recipe, mesh, names, rank, llama=False), rank
        )
        assert trace_items(res, rank) == want
