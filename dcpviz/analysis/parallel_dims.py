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


def stage_of_rank(scenario: Any) -> Any:
    """rank -> pipeline stage for a torchtitan scenario with pp > 1 (``pp`` is the outermost dim,
    so a stage is a block of consecutive ranks); None otherwise."""
    names, mesh = tuple(scenario.mesh_dim_names or ()), tuple(scenario.mesh or ())
    if scenario.recipe != "torchtitan" or not names or names[0] != "pp" or mesh[0] < 2:
        return None
    per_stage = scenario.world_size // mesh[0]
    return lambda rank: rank // per_stage
