"""One template per pipeline stage: ``engine/shortcuts/fastpath.py``'s shortcuts for recipe "torchtitan" with pp.

With pipeline stages, ranks hold different modules, so rank 0's state dict cannot stand for every
rank. Within one stage it can: torchtitan's SPMD parallelisms (FSDP, HSDP, TP, EP) run on the
stage's modules alike on every rank of the stage (``titan_recipe``: the stage decides which
modules are kept, the other dims only how they are sharded), and the stages are the blocks of
``W / pp`` consecutive ranks (``pp`` is the outermost mesh dim, as in torchtitan's
``ParallelDims``). So each stage's first rank builds that stage's template, and every rank views
its own stage's template (``fastpath.TemplateView``), with DCP's flattening of the view from that
template (``fastpath.ViewFlattening``, checked against DCP on the stage's first view).

Ranks share a plan class only within a stage: the pp coordinate always matters, besides the dims
where some DTensor of some stage is not replicated (``fastpath.mattering_dims``).
``tests/test_titan_recipe.py`` compares this path (``fast=None``) with the per-rank path and
with hand-built DTensors, stage by stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dcpviz.engine.job.statedict import rank_state_dict
from dcpviz.engine.job.world import fake_world
from dcpviz.engine.shortcuts import fastpath


def stage_size(scenario: Any) -> int:
    """Ranks per stage: the product of the mesh dims inside ``pp`` (the outermost)."""
    return scenario.world_size // scenario.mesh[0]


class StageViews:
    """Per-stage ``TemplateView``s behind the one-template interface ``simulate`` uses."""

    def __init__(self, templates: list[dict], per_stage: int) -> None:
        self.views = [fastpath.TemplateView(t) for t in templates]
        self.per_stage = per_stage
        self.current = 0  # the stage of the rank whose view was built last (for its flattening)

    def stage_of(self, rank: int) -> int:
        return rank // self.per_stage

    def template_meshes(self, rank: int) -> list:
        """The template meshes of rank ``rank``'s stage (``TemplateView.meshes``)."""
        return self.views[rank // self.per_stage].meshes

    def view_with_leaves(
        self, rank: int, mesh_cache: dict, share_dtensors: bool = False, meshes: list | None = None
    ) -> tuple[dict, list]:
        """Rank ``rank``'s view of its own stage's template."""
        self.current = rank // self.per_stage
        return self.views[self.current].view_with_leaves(rank, mesh_cache, share_dtensors, meshes)


class StageFlattening:
    """One ``ViewFlattening`` per stage; answers for the stage of the view built last (a rank's
    view is built, then planned, before the next rank's: ``simulate._plan_rank``)."""

    def __init__(self, views: StageViews) -> None:
        self.views = views
        self.by_stage = [fastpath.ViewFlattening(v) for v in views.views]

    @contextmanager
    def active(self, state_dict: dict, leaves: list) -> Iterator[bool]:
        with self.by_stage[self.views.current].active(state_dict, leaves) as on:
            yield on


def stage_templates(scenario: Any, notes: list[str]) -> list[dict] | None:
    """Each stage's template: its first rank's real state dict (None where the state may differ
    by rank within a stage, or a template cannot stand for other ranks: ``fastpath``'s rules)."""
    reason = fastpath.per_rank_state_reason(scenario)
    if reason is not None:
        notes.append(f"{reason}, so every rank built and planned its own state.")
        return None
    per_stage, W = stage_size(scenario), scenario.world_size
    templates = []
    for stage in range(scenario.mesh[0]):
        with fake_world(stage * per_stage, W):
            template, _ = rank_state_dict(scenario, stage * per_stage)
        blocker = fastpath.Leaves(template).blocker()
        if blocker is not None:
            notes.append(
                f"{blocker}: a stage's first rank cannot stand for its other ranks, so every rank "
                "ran the recipe itself."
            )
            return None
        templates.append(template)
    notes.append(
        f"{len(templates)} pipeline stages: each stage's first rank built its state dict and the "
        "stage's other ranks view it (exact; see engine/shortcuts/stage_templates.py)."
    )
    return templates


def stage_plan_classes(scenario: Any, templates: list[dict]) -> dict[int, int]:
    """rank -> its representative: the pp dim and every dim some stage's DTensor is sharded on."""
    names = tuple(scenario.mesh_dim_names)
    dims = {0}
    for t in templates:
        dims |= set(fastpath.mattering_dims(t, names))
    return fastpath.plan_classes(scenario, tuple(sorted(dims)))
