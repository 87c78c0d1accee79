"""A tiny language model with tied input and output embeddings (GPT-2's wte / lm_head)."""

from __future__ import annotations

import torch
from torch import nn


class TiedLM(nn.Module):
    """wte.weight and lm_head.weight are one Parameter: DCP's state dict holds it under both keys."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(64, 16)
        self.fc1 = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 64, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.fc1(self.wte(x)))


def tied_lm() -> TiedLM:
    return TiedLM()


def ema_clone_state(model, optimizer, rank):
    """The model and an EMA copy of it: the copy's wte / lm_head are two tensors, not tied."""
    sd = model.state_dict()
    return {"model": sd, "ema": {k: v.clone() for k, v in sd.items()}}
