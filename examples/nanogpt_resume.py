"""A checkpoint that will not load as it is (issue 19's nanoGPT journey, notebook 03): a GPT
trained under HSDP 2x4 with AdamW and ``torch.compile``, saved as ``{"model": compiled.state_dict(), "optim": get_optimizer_state_dict(...)}``; resumed on
6 ranks with plain FSDP, no compile, one LayerNorm renamed (``ln_2`` -> ``norm2``) and the
vocabulary grown by 24 tokens. (Small sizes; input and output embeddings untied.)"""

from __future__ import annotations

import torch
from torch import nn

import dcpviz

VOCAB, GROWN, EMBD, LAYERS, BLOCK = 64, 64 + 24, 16, 2, 8


class Block(nn.Module):
    def __init__(self, norm2: str = "ln_2") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(EMBD)
        self.attn = nn.ModuleDict(
            {"c_attn": nn.Linear(EMBD, 3 * EMBD), "c_proj": nn.Linear(EMBD, EMBD)}
        )
        setattr(self, norm2, nn.LayerNorm(EMBD))
        self.mlp = nn.ModuleDict(
            {"c_fc": nn.Linear(EMBD, 4 * EMBD), "c_proj": nn.Linear(4 * EMBD, EMBD)}
        )
        self.norm2_name = norm2

    def forward(self, x):
        x = x + self.attn["c_proj"](self.attn["c_attn"](self.ln_1(x))[..., :EMBD])
        return x + self.mlp["c_proj"](self.mlp["c_fc"](getattr(self, self.norm2_name)(x)))


class GPT(nn.Module):
    def __init__(self, vocab: int = VOCAB, norm2: str = "ln_2") -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, EMBD),
                "wpe": nn.Embedding(BLOCK, EMBD),
                "h": nn.ModuleList([Block(norm2) for _ in range(LAYERS)]),
                "ln_f": nn.LayerNorm(EMBD),
            }
        )
        self.lm_head = nn.Linear(EMBD, vocab, bias=False)

    def forward(self, idx):
        x = self.transformer["wte"](idx) + self.transformer["wpe"](torch.arange(idx.shape[-1]))
        for block in self.transformer["h"]:
            x = block(x)
        return self.lm_head(self.transformer["ln_f"](x))


def build_trained():
    """The saving job's model: compiled (every model key gains '_orig_mod.')."""
    return torch.compile(GPT())


def build_resume():
    """The resuming job's model: no compile, ln_2 is norm2, 24 more tokens."""
    return GPT(GROWN, norm2="norm2")


def compiled_state(model, optimizer, rank):
    """What the saving job passes to dcp.save: the compiled module's own state_dict (keys with
    '_orig_mod.') and DCP's optimizer state dict (keys without it)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return {"model": model.state_dict(), "optim": get_optimizer_state_dict(model, optimizer)}


SAVED = dcpviz.Scenario(
    model=build_trained,
    world_size=8,
    mesh=(2, 4),
    recipe="hsdp",
    optimizer="adamw",
    state=compiled_state,
)
TARGET = dcpviz.Scenario(model=build_resume, world_size=6, recipe="fsdp", optimizer="adamw")
