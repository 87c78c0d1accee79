"""Shared load scenarios for the load tests."""

from __future__ import annotations

import torch

import dcpviz
from dcpviz.engine.job.models import MLP


def compiled_mlp():
    return torch.compile(MLP())


def compiled_target_load(saved):
    """Load ``saved`` into a torch.compile'd mlp: every key gains '_orig_mod.'."""
    return dcpviz.simulate_load(
        saved, dcpviz.Scenario(model=compiled_mlp, world_size=2, recipe="fsdp")
    )


class RenamedNormMLP(MLP):
    """The mlp with its LayerNorm renamed: ``norm.*`` is ``ln.*`` (a renamed module)."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = self.norm
        del self.norm


class NestedMLP(torch.nn.Module):
    """The mlp one level down: every key gains ``model.`` (a wrapper's prefix)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = MLP()

    def forward(self, x):
        return self.model(x)

    def fsdp_units(self):
        return self.model.fsdp_units()


class Attn(torch.nn.Module):
    """An attention block with three projections of one shape (q, k, v look alike)."""

    def __init__(
        self, names: tuple[str, str, str] = ("q_proj", "k_proj", "v_proj"), dim: int = 8
    ) -> None:
        super().__init__()
        self.names = names
        for n in names:
            setattr(self, n, torch.nn.Linear(dim, dim, bias=False))
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = (getattr(self, n)(x) for n in self.names)
        return self.out(q * k + v)


class QKV(torch.nn.Module):
    """Two layers of ``Attn``: ``layers.{i}.q_proj.weight`` ..."""

    def __init__(self, names: tuple[str, str, str] = ("q_proj", "k_proj", "v_proj")) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Attn(names) for _ in range(2)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def wqkv():
    """The QKV model with its projections renamed wq/wk/wv: same shapes, no way to tell them apart."""
    return QKV(("wq", "wk", "wv"))


def compiled_wqkv():
    return torch.compile(wqkv())


def compiled_renamed_norm():
    """torch.compile on the mlp whose norm is 'ln': a prefix and a rename at once."""
    return torch.compile(RenamedNormMLP())


def model_and_ema(model, optimizer, rank):
    """{"model": ..., "ema": ...}: two equal trees (an EMA copy of the weights)."""
    sd = model.state_dict()
    ema = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()}
    return {"model": sd, "ema": ema}
