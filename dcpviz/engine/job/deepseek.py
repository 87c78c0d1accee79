"""DeepSeek-V3 as torchtitan holds it: multi-head latent attention, dense first layers, MoE after.

Names, shapes and order follow torchtitan's ``torchtitan/models/deepseek_v3/model/model.py``
(``Attention``, ``TransformerBlock``, ``DeepSeekV3Model``) and its MoE
(``torchtitan/models/moe.py``, here ``engine/job/experts.py``):

- the decoder: ``tok_embeddings``, ``layers`` (a ``ModuleDict`` keyed ``"0"``..), ``norm``,
  ``output`` (so pipeline stages split it as they split a Llama; ``freqs_cis`` is not
  persistent and is not saved);
- a block: ``attention``, ``attention_norm``, ``ffn_norm``, then ``feed_forward`` (a gated MLP of
  ``inter_dim``) on the first ``n_dense_layers`` layers and ``moe`` on the others
  (``moe_enabled = layer_id >= n_dense_layers``);
- MLA: with ``q_lora_rank > 0`` ``wq_a [q_lora_rank, dim]``, ``q_norm [q_lora_rank]``,
  ``wq_b [n_heads * (qk_nope + qk_rope), q_lora_rank]`` (else one ``wq``), ``wkv_a
  [kv_lora_rank + qk_rope, dim]``, ``kv_norm [kv_lora_rank]``, ``wkv_b [n_heads * (qk_nope +
  v_head), kv_lora_rank]``, ``wo [dim, n_heads * v_head]``;
- a MoE layer: routed experts as grouped 3-D parameters ``[num_experts, moe_inter_dim, dim]``,
  a router ``gate``, shared experts (one gated MLP of ``moe_inter_dim * num_shared_experts``) and
  the float32 ``expert_bias`` buffer.

The TP plan is torchtitan's ``apply_non_moe_tp`` of ``torchtitan/models/deepseek_v3/infra/
parallelize.py``: ``wq_a``, ``q_norm``, ``wkv_a``, ``kv_norm`` ``NoParallel`` (replicated on the
TP mesh), ``wq``/``wq_b``/``wkv_b`` column-wise, ``wo`` row-wise, dense ``feed_forward`` as
Llama's; the MoE part (router ``NoParallel``, shared experts column/row-wise, routed experts
``TensorParallel``/``ExpertParallel``/``ExpertTensorParallel``) is llama4's ``apply_moe_ep_tp``,
which deepseek_v3 reuses (``experts.shard_experts`` and the shared experts' entries below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from torch.distributed.tensor import distribute_module
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from dcpviz.engine.job.blocks import FeedForward, RMSNorm, decoder_tp_plan, ffn_tp_plan
from dcpviz.engine.job.experts import MoE


@dataclass(frozen=True)
class DeepSeekConfig:
    """The sizes of a DeepSeek-V3 decoder (torchtitan's ``DeepSeekV3ModelArgs`` and ``MoEArgs``
    fields that shape the state)."""

    dim: int
    n_layers: int
    n_dense_layers: int
    n_heads: int
    vocab_size: int
    inter_dim: int  # hidden width of a dense layer's MLP
    moe_inter_dim: int  # hidden width of one routed expert
    num_experts: int
    num_shared_experts: int
    top_k: int
    q_lora_rank: int  # 0: one wq instead of wq_a / q_norm / wq_b
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    norm_eps: float = 1e-5


# DeepSeek-V3's published shapes, as torchtitan's "671B" flavour holds them
# (torchtitan/models/deepseek_v3/__init__.py, deepseekv3_configs["671B"]: vocab 129280, dim 7168,
# inter_dim 18432, moe_inter_dim 2048, 61 layers of which 3 dense, 128 heads, 256 experts,
# 1 shared, top-8, q_lora_rank 1536, kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128; the
# same numbers as DeepSeek's config_671B.json). The multi-token-prediction module of the released
# checkpoint is not part of torchtitan's model and is not here.
# "deepseek-tiny" is ours, the same structure at tiny sizes: 4 layers (the first dense) so pp=2
# and pp=4 split it and pp=4 leaves a stage with no MoE layer, 8 experts (ep 2, 4, 8 divide them),
# uneven rows on 4 ranks (inter_dim 190, moe_inter_dim 42), q_lora_rank > 0 as in the 671B.
DEEPSEEK_CONFIGS: dict[str, DeepSeekConfig] = {
    "deepseek-tiny": DeepSeekConfig(
        dim=64,
        n_layers=4,
        n_dense_layers=1,
        n_heads=4,
        vocab_size=1000,
        inter_dim=190,
        moe_inter_dim=42,
        num_experts=8,
        num_shared_experts=1,
        top_k=2,
        q_lora_rank=24,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
    ),
    "deepseek-v3": DeepSeekConfig(
        dim=7168,
        n_layers=61,
        n_dense_layers=3,
        n_heads=128,
        vocab_size=129280,
        inter_dim=18432,
        moe_inter_dim=2048,
        num_experts=256,
        num_shared_experts=1,
        top_k=8,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
    ),
}


class NoParallel(ParallelStyle):
    """torchtitan's ``NoParallel`` (``torchtitan/distributed/__init__.py``) as far as the state
    goes: ``distribute_module`` with no partition function, so the module's parameters become
    ``Replicate`` DTensors on the TP mesh (its input/output hooks move activations only)."""

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        return distribute_module(module, device_mesh)


class MLAttention(nn.Module):
    """Multi-head latent attention's projections and norms (torchtitan's deepseek_v3
    ``Attention``; registration order as there)."""

    def __init__(self, cfg: DeepSeekConfig) -> None:
        super().__init__()
        self.q_lora_rank = cfg.q_lora_rank
        qk_head_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank == 0:
            self.wq = nn.Linear(cfg.dim, cfg.n_heads * qk_head_dim, bias=False)
        else:
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.wq_b = nn.Linear(cfg.q_lora_rank, cfg.n_heads * qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(cfg.dim, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank, cfg.norm_eps)
        self.wkv_b = nn.Linear(
            cfg.kv_lora_rank, cfg.n_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False
        )
        self.wo = nn.Linear(cfg.n_heads * cfg.v_head_dim, cfg.dim, bias=False)


class DeepSeekBlock(nn.Module):
    """MLA and a dense MLP or a MoE, each behind an RMSNorm (torchtitan's names and order)."""

    def __init__(self, layer_id: int, cfg: DeepSeekConfig) -> None:
        super().__init__()
        self.attention = MLAttention(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.moe_enabled = layer_id >= cfg.n_dense_layers
        if self.moe_enabled:
            self.moe = MoE(
                cfg.dim,
                cfg.moe_inter_dim,
                cfg.num_experts,
                cfg.moe_inter_dim * cfg.num_shared_experts,
            )
        else:
            self.feed_forward = FeedForward(cfg.dim, cfg.inter_dim)


class DeepSeekTransformer(nn.Module):
    """A DeepSeek-V3 decoder with torchtitan's names; only the state dict matters here."""

    def __init__(self, cfg: DeepSeekConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleDict({str(i): DeepSeekBlock(i, cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def tp_plan(self) -> dict[str, Any]:
        """The parallelize_module part of torchtitan's deepseek_v3 TP plan for the layers this
        model holds now (a pipeline stage keeps some): MLA, the dense layers' MLP, the shared
        experts. The routed experts and the router are sharded by ``experts.shard_experts``."""
        attn = "layers.*.attention"
        plan: dict[str, Any] = {
            **decoder_tp_plan(),
            f"{attn}.wkv_a": NoParallel(),
            f"{attn}.kv_norm": NoParallel(),
            f"{attn}.wkv_b": ColwiseParallel(),
            f"{attn}.wo": RowwiseParallel(),
        }
        if self.config.q_lora_rank == 0:
            plan[f"{attn}.wq"] = ColwiseParallel()
        else:
            plan.update(
                {
                    f"{attn}.wq_a": NoParallel(),
                    f"{attn}.q_norm": NoParallel(),
                    f"{attn}.wq_b": ColwiseParallel(),
                }
            )
        # Dense and MoE blocks differ, so these entries name each layer (as torchtitan's
        # per-block plan does); a wildcard would miss on the other kind of block.
        for name, block in self.layers.items():
            if block.moe_enabled and block.moe.shared_experts is not None:
                plan.update(ffn_tp_plan(f"layers.{name}.moe.shared_experts", w2=RowwiseParallel()))
            elif not block.moe_enabled:
                plan.update(ffn_tp_plan(f"layers.{name}.feed_forward"))
        return plan

    def fsdp_units(self) -> list[nn.Module]:
        """The modules a training script wraps with fully_shard: the blocks."""
        return list(self.layers.values())
