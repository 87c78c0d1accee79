"""One template per pipeline stage for simulate_load: the load side of ``stage_templates.py``.

With recipe "torchtitan" and pp > 1, ranks of different stages hold different modules, so rank
0's state dict cannot stand for every target rank; within a stage it can (the stage decides which
modules a rank keeps, the SPMD dims only how they are sharded; see
``engine/shortcuts/stage_templates.py``, whose ``stage_templates`` builds each stage's template
from that stage's first rank). The load views those templates, rank by rank, with what a
16,384-rank load needs on top:

- ``LoadStageViews.view``: rank ``r``'s storage-less state dict, built from its stage's
  ``fastpath.TemplateView`` as ``TemplateView.view`` + ``storageless.to_storageless`` build it:
  one DTensor per layout group (shared by the group's keys, as ``to_storageless``'s ``shared``
  does), on rank ``r``'s meshes, with a storage-less local tensor of ``r``'s local shape.
- ``MeshClones``: rank ``r``'s DeviceMesh for a template mesh. ``DeviceMesh.__init__`` (what
  ``world.rank_mesh`` calls) costs ~5 ms at W=16,384; a clone is ``mesh_copies.mesh_for_rank``
  (the save's worldless ranks' way too): the fields of a mesh ``rank_mesh`` built, with the rank
  and its coordinate from DeviceMesh's own coordinate code given the rank explicitly. Checked,
  not assumed: the first clone of each template mesh is compared, field by field
  (``mesh_copies.same_mesh``), with ``rank_mesh``'s mesh for the same rank built in that rank's
  fake world; any difference turns clones off (``rank_mesh`` in the rank's world from then on).
- ``fastpath.SharedLocalShapes`` (the save's memo too): DTensor's
  ``compute_local_shape_and_global_offset``, a pure function of (global shape, mesh shape, this
  rank's coordinate, placements, skip_offset), asked once per distinct question over the whole
  load (the view asks it for the local shape, DCP's ``_create_chunk_from_dtensor`` for the
  chunk): ranks of different stages with the same coordinates ask the same questions. Every
  answer was computed by DTensor for the same inputs; the first repeat of each layout on
  another rank is computed again and compared.
- ``load_plan_classes``: rank -> representative for DCP's DefaultLoadPlanner (the pp dim and
  every dim some stage's DTensor is sharded on: ``stage_templates.stage_plan_classes``).

World-free planning (``engine/simulate/load.py``): DCP's DefaultLoadPlanner reads the default
process group only for meta tensors (``_init_state_dict``: none here, the values are storage-less
FakeTensors on cpu) and ShardedTensors (``_flatten_sharded_tensors``: refused by
``fastpath.Leaves.blocker``); DTensor's chunk list reads the mesh's stored coordinate. So such a
rank is planned outside any fake world (``init_process_group`` alone costs ~3.5 ms at W=16,384),
and a rank whose planning raises anything is planned again inside its own fake world.

``tests/test_load_stage_templates.py`` compares this path (``fast=None``) with the plain one
(``fast=False``: every target rank runs the recipe itself in its own world, DCP's full chunk
scan) on the layouts it accepts, and shows each self-check catching a broken shortcut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._dtensor_spec import DTensorSpec

from dcpviz.engine.job.world import fake_world, rank_mesh
from dcpviz.engine.shortcuts import fastpath
from dcpviz.engine.shortcuts.mesh_copies import MeshCopies, same_mesh
from dcpviz.engine.shortcuts.stage_templates import stage_plan_classes, stage_size, stage_templates


class MeshClones:
    """Rank ``r``'s DeviceMesh for a template mesh, copied from one ``rank_mesh`` built (see the
    module docstring). ``on`` turns False for good when a clone differs from ``rank_mesh``'s."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._copies = MeshCopies()
        self._checked: set[int] = set()  # template meshes whose first clone was compared
        self.on = True
        self.clones = 0

    def _real(self, template: Any, rank: int) -> Any:
        """``rank_mesh`` of ``template`` for ``rank``, in rank ``rank``'s fake world."""
        with fake_world(rank, self.world_size):
            return rank_mesh(template, rank, {})

    def mesh(self, template: Any, rank: int) -> Any:
        """Rank ``rank``'s mesh for ``template`` (a mesh of a stage template)."""
        if not self.on:
            return self._real(template, rank)
        if not self._copies.knows(template):
            real = self._real(template, rank)
            self._copies.learn(template, real)
            return real
        clone = self._copies.mesh(template, rank)
        if id(template) not in self._checked:
            self._checked.add(id(template))
            real = self._real(template, rank)
            if not same_mesh(clone, real):
                self.on = False
                self._copies.clear()
                return real
        self.clones += 1
        return clone


class LoadStageViews:
    """Each pipeline stage's template, prepared once; rank ``r`` views its own stage's."""

    def __init__(self, templates: list[dict], per_stage: int, world_size: int) -> None:
        self.templates = templates
        self.views = [fastpath.TemplateView(t) for t in templates]
        self.per_stage = per_stage
        self.meshes = MeshClones(world_size)
        self.shapes = fastpath.SharedLocalShapes()
        self._locals: dict[tuple, Any] = {}  # (local shape, dtype, device) -> storage-less tensor

    def stage_of(self, rank: int) -> int:
        """The pipeline stage of ``rank`` (pp is the outermost mesh dim)."""
        return rank // self.per_stage

    def _local(self, shape: tuple, like: torch.Tensor, storageless: Callable[[Any], Any]) -> Any:
        key = (shape, like.dtype, like.device)
        hit = self._locals.get(key)
        if hit is None:
            # The local tensor TemplateView.view makes, then its storage-less stand-in.
            hit = self._locals[key] = storageless(
                torch.empty(shape, dtype=like.dtype, device=like.device)
            )
        return hit

    def plain_view(self, rank: int) -> dict[str, Any]:
        """Rank ``rank``'s state dict as ``fastpath.rank_view`` builds it (a DTensor per key; for
        planners other than DCP's own). Call inside ``fake_world(rank, W)``."""
        return self.views[self.stage_of(rank)].view(rank, {})

    def view(self, rank: int, storageless: Callable[[Any], Any]) -> dict[str, Any]:
        """Rank ``rank``'s state dict, storage-less: ``storageless`` is
        ``storageless.to_storageless`` for one value. Needs no fake world."""
        tv = self.views[self.stage_of(rank)]
        meshes = [self.meshes.mesh(m, rank) for m in tv.meshes]
        made = []
        for value, m in zip(tv.groups, tv.mesh_of):
            spec, mesh = value._spec, meshes[m]
            local_shape, _ = self.shapes.compute(value.shape, mesh, spec.placements)
            local = self._local(tuple(local_shape), value._local_tensor, storageless)
            made.append(
                DTensor(
                    local,
                    DTensorSpec(mesh, spec.placements, tensor_meta=spec.tensor_meta),
                    requires_grad=False,
                )
            )
        values = [storageless(v) if g is None else made[g] for v, g in zip(tv.values, tv.group_of)]
        return fastpath._fill(tv.skeleton, values)


def load_stage_views(scenario: Any, notes: list[str]) -> LoadStageViews | None:
    """The stage templates of ``scenario`` (None where one cannot stand for its stage's ranks;
    ``stage_templates`` says why in ``notes``)."""
    templates = stage_templates(scenario, notes)
    if templates is None:
        return None
    return LoadStageViews(templates, stage_size(scenario), scenario.world_size)


def load_plan_classes(scenario: Any, views: LoadStageViews) -> dict[int, int]:
    """rank -> its representative for DCP's DefaultLoadPlanner (see the module docstring)."""
    return stage_plan_classes(scenario, views.templates)
