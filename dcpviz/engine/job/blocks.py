"""The transformer blocks the presets share, with torchtitan's module names and shapes.

One copy for the Llama presets (``engine/job/models.py``), the MoE presets
(``engine/job/experts.py``) and DeepSeek-V3 (``engine/job/deepseek.py``): the norms, Llama's
grouped-query attention, the gated MLP (torchtitan's ``FeedForward``: a Llama block's MLP, a
DeepSeek dense layer, a MoE's shared experts), and the pieces of torchtitan's TP plan they
share. Only the parameters matter here (the models are built on meta and planned, never run),
so the blocks hold torchtitan's names and shapes and nothing of its forward passes but the norm's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Llama's; torchtitan uses ``nn.RMSNorm``: one ``weight``)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        # Models built on meta get real storage later (run_save); this is their initialiser.
        """Weights to one."""
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` by its root mean square, then scale."""
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    """Grouped-query attention's projections (``wq``, ``wk``, ``wv``, ``wo``), heads of
    ``dim // n_heads`` (torchtitan's llama3 ``Attention``)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        hd = dim // n_heads
        self.wq = nn.Linear(dim, n_heads * hd, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(n_heads * hd, dim, bias=False)


class FeedForward(nn.Module):
    """The gated MLP (``w1``, ``w2``, ``w3``): torchtitan's ``FeedForward``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)


def decoder_tp_plan() -> dict[str, Any]:
    """The TP plan of a decoder's ends and its blocks' norms (torchtitan's ``apply_non_moe_tp``
    for llama3, llama4 and deepseek_v3 alike): row-wise embeddings, sequence-parallel norms,
    column-wise output."""
    return {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
        "layers.*.attention_norm": SequenceParallel(),
        "layers.*.ffn_norm": SequenceParallel(),
    }


def gqa_tp_plan() -> dict[str, Any]:
    """Grouped-query attention's TP plan: column-wise q/k/v, row-wise o."""
    return {
        "layers.*.attention.wq": ColwiseParallel(),
        "layers.*.attention.wk": ColwiseParallel(),
        "layers.*.attention.wv": ColwiseParallel(),
        "layers.*.attention.wo": RowwiseParallel(output_layouts=Shard(1)),
    }


def ffn_tp_plan(prefix: str, w2: RowwiseParallel | None = None) -> dict[str, Any]:
    """A gated MLP's TP plan under ``prefix``: column-wise w1/w3, row-wise w2 (the weights'
    placements are the same whatever ``w2``'s output layout)."""
    return {
        f"{prefix}.w1": ColwiseParallel(),
        f"{prefix}.w2": w2 if w2 is not None else RowwiseParallel(output_layouts=Shard(1)),
        f"{prefix}.w3": ColwiseParallel(),
    }
