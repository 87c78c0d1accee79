"""Give a model built (and sharded) on the meta device real storage and its initial values.

The order a training script uses with FSDP2 / TP on meta: shard first, then ``to_empty`` on the
device, then run the initialisers — so each rank only ever allocates its own shards.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def materialize(model: nn.Module, device: str | torch.device, seed: int = 0) -> list[str]:
    """``to_empty`` on ``device``, then the model's ``init_weights()`` if it has one, else every
    submodule's ``reset_parameters()``. Every rank seeds the same generator first, so replicas
    of a tensor start equal. Returns the names of parameters and buffers no initialiser covers;
    they are zero-filled (never left as uninitialised memory, which would make the saved bytes
    differ from run to run)."""
    model.to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.zero_()
        init_weights = getattr(model, "init_weights", None)
        if callable(init_weights):
            init_weights()
            return []
        uncovered = []
        for name, module in model.named_modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            prefix = f"{name}." if name else ""
            uncovered += [prefix + n for n, _ in module.named_parameters(recurse=False)]
            uncovered += [prefix + n for n, _ in module.named_buffers(recurse=False)]
    return uncovered
