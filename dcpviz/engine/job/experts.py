"""Mixture-of-experts decoders as torchtitan holds them: experts as grouped 3-D parameters.

torchtitan's MoE (``torchtitan/models/moe/moe.py``) keeps a layer's routed experts in one
``GroupedExperts`` module with three parameters ``w1 [E, hidden, dim]``, ``w2 [E, dim, hidden]``,
``w3 [E, hidden, dim]``, a router ``router.gate`` (a ``Linear(dim, E)``), optional
``shared_experts`` (a gated MLP), and a persistent float32 buffer ``expert_bias [E]`` (load
balancing; ``tokens_per_expert`` is not persistent). A block has ``attention``,
``attention_norm``, ``ffn_norm`` and ``moe``; the decoder has torchtitan's top-level names
(``tok_embeddings``, ``layers``, ``norm``, ``output``), so pipeline stages split it as they
split a Llama.

How the experts are sharded follows ``torchtitan/distributed/expert_parallel.py``:
``ExpertParallel`` distributes each expert parameter ``Shard(0)`` (the expert dimension) on the
EP mesh; ``TensorParallel`` (TP without EP) shards ``w1``/``w3`` on dim 1 and ``w2`` on dim 2;
``ExpertTensorParallel`` (EP and TP) does both on a 2-D ``(ep, tp)`` mesh. The router gets
``NoParallel`` (replicated on the TP mesh). Both call ``distribute_tensor``; so do these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import RowwiseParallel

from dcpviz.engine.job.blocks import (
    Attention,
    FeedForward,
    RMSNorm,
    decoder_tp_plan,
    ffn_tp_plan,
    gqa_tp_plan,
)


@dataclass(frozen=True)
class MoEConfig:
    """The sizes of a MoE decoder (attention as Llama's; every layer's MLP is a MoE)."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    expert_dim: int  # hidden width of one routed expert
    num_experts: int
    vocab_size: int
    shared_expert_dim: int = 0  # 0: no shared experts
    top_k: int = 2
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.n_heads


# Mixtral 8x7B's published shapes (Mistral AI's params.json / Hugging Face config: hidden 4096,
# 32 layers, 32 heads, 8 kv heads, intermediate 14336, 8 experts, top-2, vocab 32000).
# "moe-tiny" is ours: 4 layers so pp=2 and pp=4 split it, 4 experts so ep=2 and ep=4 divide
# them, uneven expert rows (hidden 90 over 4) and one shared expert.
MOE_CONFIGS: dict[str, MoEConfig] = {
    "moe-tiny": MoEConfig(
        dim=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        expert_dim=90,
        num_experts=4,
        vocab_size=1000,
        shared_expert_dim=48,
        top_k=2,
    ),
    "mixtral-8x7b": MoEConfig(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        expert_dim=14336,
        num_experts=8,
        vocab_size=32000,
        top_k=2,
    ),
}


class GroupedExperts(nn.Module):
    """torchtitan's grouped experts: one 3-D parameter per projection, experts on dim 0."""

    def __init__(self, dim: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden, dim))

    def reset_parameters(self) -> None:
        """Small normal weights (models built on meta get storage in real runs)."""
        for p in (self.w1, self.w2, self.w3):
            nn.init.normal_(p, std=0.02)


class Router(nn.Module):
    """The token-choice router: a gate ``Linear(dim, num_experts)``."""

    def __init__(self, dim: int, num_experts: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, num_experts, bias=False)


class MoE(nn.Module):
    """Router, grouped experts, optional shared experts, and the load-balancing buffers
    (torchtitan's ``MoE``; ``shared_dim`` is its ``hidden_dim * num_shared_experts``, 0: none)."""

    def __init__(self, dim: int, expert_dim: int, num_experts: int, shared_dim: int = 0) -> None:
        super().__init__()
        # torchtitan's order (experts, router, shared experts): the state dict's order, which
        # DCP's dedup walks when it balances replicated items (HSDP) over ranks.
        self.experts = GroupedExperts(dim, expert_dim, num_experts)
        self.router = Router(dim, num_experts)
        self.shared_experts = FeedForward(dim, shared_dim) if shared_dim else None
        self.register_buffer(
            "expert_bias", torch.zeros(num_experts, dtype=torch.float32), persistent=True
        )
        self.register_buffer(
            "tokens_per_expert", torch.zeros(num_experts, dtype=torch.float32), persistent=False
        )

    def reset_parameters(self) -> None:
        """Buffers back to zero."""
        with torch.no_grad():
            self.expert_bias.zero_()
            self.tokens_per_expert.zero_()


class MoEBlock(nn.Module):
    """Attention and a MoE, each behind an RMSNorm (torchtitan's block names)."""

    moe_enabled = True

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads)
        self.moe = MoE(cfg.dim, cfg.expert_dim, cfg.num_experts, cfg.shared_expert_dim)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)


class MoETransformer(nn.Module):
    """A MoE decoder with torchtitan's names; only the state dict matters here."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleDict({str(i): MoEBlock(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def tp_plan(self) -> dict[str, Any]:
        """The parallelize_module part of torchtitan's TP plan: the Llama attention plan and the
        shared experts (colwise w1/w3, rowwise w2). The routed experts and the router are not
        ParallelStyles of torch; recipe 'torchtitan' shards them (``shard_experts``)."""
        plan: dict[str, Any] = {**decoder_tp_plan(), **gqa_tp_plan()}
        if self.config.shared_expert_dim:
            plan.update(ffn_tp_plan("layers.*.moe.shared_experts", w2=RowwiseParallel()))
        return plan

    def fsdp_units(self) -> list[nn.Module]:
        """The modules a training script wraps with fully_shard: the blocks."""
        return list(self.layers.values())


def moe_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` that hold a MoE (torchtitan's ``moe_enabled``)."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, (nn.ModuleDict, nn.ModuleList)):
        return []
    blocks = layers.values() if isinstance(layers, nn.ModuleDict) else layers
    return [b for b in blocks if getattr(b, "moe_enabled", False) and hasattr(b, "moe")]


def num_experts_of(model: nn.Module) -> int | None:
    """The number of routed experts of a MoE model (None for a dense one)."""
    blocks = moe_blocks(model)
    return blocks[0].moe.experts.num_experts if blocks else None


def _distribute(module: nn.Module, mesh: Any, placements: dict[str, list]) -> None:
    for name, pl in placements.items():
        param = getattr(module, name)
        module.register_parameter(name, nn.Parameter(distribute_tensor(param, mesh, pl)))


def shard_experts(model: nn.Module, tp_mesh: Any, ep_mesh: Any, ep_tp_mesh: Any) -> None:
    """Shard every MoE block's experts and router as torchtitan's ``apply_moe_ep_tp``:
    ``ExpertParallel`` (EP only: ``Shard(0)``), ``TensorParallel`` (TP only: w1/w3 ``Shard(1)``,
    w2 ``Shard(2)``), ``ExpertTensorParallel`` (both, on the ``(ep, tp)`` mesh); the router's gate
    ``NoParallel`` (``Replicate`` on the TP mesh) when TP is on."""
    for block in moe_blocks(model):
        experts = block.moe.experts
        if tp_mesh is not None:
            _distribute(block.moe.router.gate, tp_mesh, {"weight": [Replicate()]})
        if ep_mesh is None and tp_mesh is not None:
            _distribute(experts, tp_mesh, {"w1": [Shard(1)], "w2": [Shard(2)], "w3": [Shard(1)]})
        elif ep_mesh is not None and tp_mesh is None:
            _distribute(experts, ep_mesh, {"w1": [Shard(0)], "w2": [Shard(0)], "w3": [Shard(0)]})
        elif ep_mesh is not None:
            _distribute(
                experts,
                ep_tp_mesh,
                {
                    "w1": [Shard(0), Shard(1)],
                    "w2": [Shard(0), Shard(2)],
                    "w3": [Shard(0), Shard(1)],
                },
            )
