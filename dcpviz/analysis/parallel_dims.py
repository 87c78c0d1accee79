"""A job's parallelisms in words, as torchtitan names its mesh dims ("pp16×dp_shard128×tp8").

For the verdict of a load between layouts of ``recipe="torchtitan"`` (or from/to another
recipe): "resharding 8 → 4 ranks (pp4×dp_shard2 → pp2×dp_shard2)". No torch.
"""

from __future__ import annotations

from typing import Any


def parallelism_words(scenario: Any) -> str:
    """'pp2×dp_shard2' for a torchtitan scenario; 'fsdp 4' (recipe and mesh) for another."""
    dims = "×".join(f"{n}{s}" for n, s in zip(scenario.mesh_dim_names, scenario.mesh))
    if scenario.recipe == "torchtitan":
        return dims or "one rank"
    return f"{scenario.recipe} {'x'.join(map(str, scenario.mesh))}".strip()


def parallelism_change(saved: Any, target: Any) -> str:
    """The layout change between two scenarios in words ('' when nothing changed)."""
    before, after = parallelism_words(saved), parallelism_words(target)
    if saved.world_size != target.world_size:
        return f"resharding {saved.world_size} → {target.world_size} ranks ({before} → {after})"
    if before != after:
        return f"the layout {before} → {after}"
    return ""
