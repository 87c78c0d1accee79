"""Model presets, built on the meta device (never allocated).

``mlp`` is small enough to read every chunk; the llama presets carry the published Llama 3
shapes (torchtitan's module names) so plans match what people see on real jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from dcpviz.core.errors import ScenarioError, UserCodeError, did_you_mean
from dcpviz.engine.job.blocks import (
    Attention,
    FeedForward,
    RMSNorm,
    decoder_tp_plan,
    ffn_tp_plan,
    gqa_tp_plan,
)
from dcpviz.engine.job.deepseek import DEEPSEEK_CONFIGS, DeepSeekTransformer
from dcpviz.engine.job.experts import MOE_CONFIGS, MoETransformer


@dataclass(frozen=True)
class LlamaConfig:
    """The sizes of a Llama-style transformer."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.n_heads


# Published Llama 3 shapes (Meta's model cards / params.json); "tiny" is ours, chosen so that
# shards are uneven on common meshes (ffn_dim 190 over 4 ranks, 2 kv heads).
LLAMA_CONFIGS: dict[str, LlamaConfig] = {
    "llama-tiny": LlamaConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=190, vocab_size=1000
    ),
    "llama3-8b": LlamaConfig(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab_size=128256
    ),
    "llama3-70b": LlamaConfig(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672, vocab_size=128256
    ),
    # torchtitan's llama3 "405B" args: dim 16384, 126 layers, 128 heads, 8 kv heads; its ffn width
    # 53248 comes from ffn_dim_multiplier=1.2, multiple_of=4096 (torchtitan/models/llama3/__init__.py).
    "llama3-405b": LlamaConfig(
        dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, ffn_dim=53248, vocab_size=128256
    ),
}


class TransformerBlock(nn.Module):
    """Attention and feed-forward, each behind an RMSNorm."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Transformer(nn.Module):
    """Llama-shaped parameters with torchtitan's names; only the state dict matters here."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # A ModuleDict keyed "0".."N-1", as torchtitan does, so fqns read layers.7.attention.wq.weight.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    @staticmethod
    def tp_plan() -> dict[str, Any]:
        """torchtitan's Llama TP plan (sequence parallel norms, colwise q/k/v/w1/w3, rowwise o/w2)."""

        return {
            **decoder_tp_plan(),
            **gqa_tp_plan(),
            **ffn_tp_plan("layers.*.feed_forward"),
        }

    def fsdp_units(self) -> list[nn.Module]:
        """The modules a training script wraps with fully_shard: the blocks."""
        return list(self.layers.values())


class StepCounter(nn.Module):
    """Holds training progress as a plain buffer and as extra (non-tensor) state.

    The buffer is a plain tensor on every rank under FSDP (FSDP shards parameters only), so DCP
    plans it on all ranks and dedups it; the extra state becomes a BYTE_IO item.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def reset_parameters(self) -> None:
        """The step back to zero."""
        with torch.no_grad():
            self.step.zero_()

    def get_extra_state(self) -> dict[str, Any]:
        """Non-tensor state (DCP saves it as a BYTE_IO entry)."""
        return {"epoch": 0, "note": "non-tensor state is saved as bytes"}

    def set_extra_state(self, state: Any) -> None:
        """Keep the non-tensor state a checkpoint restored."""
        self._extra = state


class MLP(nn.Module):
    """A small model whose every chunk fits on a slide: uneven rows (190), a bias smaller than
    some meshes (3 rows), a plain buffer, a scalar and a bytes item."""

    def __init__(self, d_in: int = 16, hidden: int = 190, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)
        self.norm = nn.LayerNorm(d_out)
        self.progress = StepCounter()

    @staticmethod
    def tp_plan() -> dict[str, Any]:
        """Tensor-parallel plan: fc1 column-wise, fc2 row-wise."""
        return {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()}

    def fsdp_units(self) -> list[nn.Module]:
        """The modules fully_shard wraps: the layers."""
        return [self.fc1, self.fc2]


PRESETS: dict[str, Callable[[], nn.Module]] = {
    "mlp": MLP,
    **{name: (lambda cfg=cfg: Transformer(cfg)) for name, cfg in LLAMA_CONFIGS.items()},
    # Mixture-of-experts decoders with torchtitan's grouped experts (engine/job/experts.py).
    **{name: (lambda cfg=cfg: MoETransformer(cfg)) for name, cfg in MOE_CONFIGS.items()},
    # DeepSeek-V3: MLA, dense first layers, MoE with a shared expert (engine/job/deepseek.py).
    **{name: (lambda cfg=cfg: DeepSeekTransformer(cfg)) for name, cfg in DEEPSEEK_CONFIGS.items()},
}


def check_model_spec(model: Any) -> None:
    """Raise ScenarioError unless ``model`` is a preset name or a zero-argument callable."""
    if isinstance(model, str):
        if model not in PRESETS:
            raise ScenarioError(
                f"model={model!r} is not a preset.{did_you_mean(model, PRESETS)} "
                f"Use one of {sorted(PRESETS)} or pass a zero-argument callable that returns an nn.Module."
            )
    elif not callable(model):
        raise ScenarioError(
            f"model={model!r} is neither a preset name nor a callable. Pass one of {sorted(PRESETS)} "
            "or a zero-argument callable that returns an nn.Module (e.g. lambda: MyNet())."
        )


def model_name(model: str | Callable[[], nn.Module]) -> str:
    """A model or factory's name for summaries and messages."""
    if isinstance(model, str):
        return model
    mod = getattr(model, "__module__", None) or "?"
    qual = getattr(model, "__qualname__", None) or type(model).__name__
    return f"callable:{mod}.{qual}"


def build_model(
    model: str | Callable[[], nn.Module], device: str | torch.device = "meta"
) -> nn.Module:
    """Build the model under ``torch.device(device)``; meta allocates nothing."""

    check_model_spec(model)
    factory = PRESETS[model] if isinstance(model, str) else model
    try:
        with torch.device(device):
            module = factory()
    except Exception as exc:  # user code: report which callable failed and why
        raise UserCodeError(
            f"the model factory {model_name(model)} raised {type(exc).__name__}: {exc}. "
            "Fix the factory; it must take no arguments and return an nn.Module."
        ) from exc
    if not isinstance(module, nn.Module):
        raise UserCodeError(
            f"the model factory {model_name(model)} returned {type(module).__name__}, not an nn.Module."
        )
    return module
