"""Shared load scenarios for the load tests."""

from __future__ import annotations

import torch

import dcpviz
from dcpviz.engine.models import MLP


def compiled_mlp():
    return torch.compile(MLP())


def compiled_target_load(saved):
    """Load ``saved`` into a torch.compile'd mlp: every key gains '_orig_mod.'."""
    return dcpviz.simulate_load(saved, dcpviz.Scenario(model=compiled_mlp, world_size=2, recipe="fsdp"))


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
