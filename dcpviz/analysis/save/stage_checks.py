"""Save checks for pipeline stages (recipe "torchtitan" with pp): whose keys differ by design,
and keys that several stages save under one name.

torchtitan keeps every module on exactly one stage (``pipeline_module_split``), under the whole
model's names, so a stage's keys are saved by that stage's ranks only: expected, not a warning.
A key saved by ranks of two stages can only come from a layers ``ModuleList``, which
``pipeline_module_split`` rebuilds with the stage's layers renumbered from 0: every stage then
saves ``layers.0...`` under one key, DCP's dedup keeps one stage's chunks (equal boxes look like
replicas) and the other stages' layers are not on disk. No torch.
"""

from __future__ import annotations

from typing import Any

from dcpviz.analysis.parallel_dims import stage_of_rank

Row = tuple[str, str, str, tuple[int, ...], str, str]

COLLISION_FIX = (
    "keep the layers in an nn.ModuleDict keyed by the layer number (as torchtitan's models "
    "do): pipeline_module_split then deletes the other stages' layers and keeps the names"
)


def renumbered_layer(fqn: str) -> bool:
    """``layers.0.…``: a numbered entry of a top-level container. Only a ModuleList can put it on
    several stages (a ModuleDict keeps the stage's own names; every other module is on one
    stage); a root-level tensor every stage keeps is another matter (left to the replica checks)."""
    parts = fqn.split(".")
    return len(parts) >= 3 and parts[1].isdigit()


def stage_key_rows(
    scenario: Any, holders: dict[str, set[int]], everyone: set[int]
) -> tuple[list[Row], list[Row], set[str]]:
    """(data-loss rows, one per key several stages save as a renumbered layer; the info row for the
    keys each stage saves by design; the keys these rows account for)."""
    stage_of = stage_of_rank(scenario)
    if stage_of is None:
        return [], [], set()
    rows: list[Row] = []
    handled: set[str] = set()
    per_stage = 0
    for fqn, ranks in holders.items():
        stages = sorted({stage_of(r) for r in ranks})
        if len(stages) > 1 and renumbered_layer(fqn):
            handled.add(fqn)
            rows.append(
                (
                    "data-loss",
                    "stages-share-a-key",
                    fqn,
                    tuple(sorted(ranks)),
                    f"{fqn!r} is saved by ranks of pipeline stages {', '.join(map(str, stages))} under one key: each "
                    "stage holds a different layer under this name (a ModuleList renumbered from 0 on every stage by "
                    "torchtitan's pipeline_module_split), DCP's dedup keeps one stage's chunks as if they were "
                    "replicas, and the other stages' layers are not on disk.",
                    COLLISION_FIX,
                )
            )
        elif ranks != everyone and ranks == {r for r in everyone if stage_of(r) == stages[0]}:
            handled.add(fqn)
            per_stage += 1
    info: list[Row] = []
    if per_stage:
        info.append(
            (
                "info",
                "keys-per-stage",
                "",
                (),
                f"{per_stage} keys are saved by one pipeline stage's ranks each (pp={scenario.mesh[0]}): each stage "
                "holds only its own modules, as torchtitan splits them. A load reads each key on the ranks whose "
                "stage holds it; a key no target stage holds stays unread, a target key no stage saved fails.",
                "nothing to fix",
            )
        )
    return rows, info, handled
