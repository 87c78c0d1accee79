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
