"""Rank views planned without a fake world of their own: at W=16,384, a fake world costs c10d
an O(W) rank table per rank and a rank's ``DeviceMesh`` an O(W) rank list, so per-rank set-up
grew with W (quadratic in all).

What reads the world in a template rank's local step (``simulate/save._plan_rank``)? Only the
construction of the rank's meshes: ``DeviceMesh.__init__`` (``_init_backend=False``, ``_rank``
given) computes ``_coordinate_on_dim`` as
``_compute_coordinates_from_mesh(_get_mesh_tensor_from_full_mesh(remap_to_tensor(rank_map)), rank)``,
where ``_get_mesh_tensor_from_full_mesh`` asks ``get_rank()`` for the group of a sliced mesh.
Everything else it sets is the same for every rank (layout, rank map and its tuple, names,
root mesh, device type; empty registries), and DCP's ``create_local_plan`` of a view reads the
rank only through ``mesh.get_coordinate()``. So a worldless rank's meshes are copies
(``mesh_copies.mesh_for_rank``, the load's way too): the state of a mesh ``world.rank_mesh``
built inside its rank's fake world, with the rank and its coordinate from DeviceMesh's own
coordinate code, the rank passed explicitly instead of read from the world.
The view, planner and DCP's code then run outside any world: anything that did read the world
would raise (no default group), never read another rank's.

Checked, not assumed (``WorldlessRanks.check``): on one rank of every stage other than the one
the snapshot came from, its meshes are built both ways and compared field by field
(``mesh_copies.same_mesh``), and its local plan is made both ways (in its world, and without)
and compared item by item; any difference, or anything raised, turns the shortcut off and every rank gets its world.
A rank that raises without a world is planned again in its world (its failure, if any, is then
DCP's). Only for ``DefaultSavePlanner`` itself with template views (``fastpath.can_share_plans``)
and ``fast`` not False. ``tests/test_titan_scale_shortcuts.py`` compares it with the per-rank
path and shows that a broken copy is caught.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from dcpviz.engine.shortcuts.mesh_copies import MeshCopies
from dcpviz.engine.shortcuts.write_memo import write_fields


def same_plan(a: Any, b: Any) -> bool:
    """Two local SavePlans equal item by item, every field (``write_memo.write_fields``), and in
    their other fields."""
    return (
        type(a) is type(b)
        and [write_fields(wi) for wi in a.items] == [write_fields(wi) for wi in b.items]
        and a.storage_data == b.storage_data
        and a.planner_data == b.planner_data
        and a.usable == b.usable
    )


class WorldlessRanks:
    """Which ranks are planned without a world, and their meshes (see the module docstring).

    Stages are blocks of ``per_stage`` consecutive ranks; a stage's first rank is planned in its
    world (its meshes are the snapshots), its last rank is the check. ``copies``: per template
    mesh, a mesh ``world.rank_mesh`` built for some rank inside that rank's fake world
    (``mesh_copies.MeshCopies``)."""

    def __init__(self, per_stage: int) -> None:
        self.per_stage = per_stage
        self.on = True
        self.copies = MeshCopies()
        self.checked: set[int] = set()  # stages whose check passed
        self.worldless = 0
        self.reason: str | None = None

    def first_of_stage(self, rank: int) -> bool:
        return rank % self.per_stage == 0

    def check_rank(self, first: int) -> int:
        """The rank checked for the stage that starts at ``first``: its last."""
        return first + self.per_stage - 1

    def covers(self, rank: int) -> bool:
        """Whether rank ``rank`` may be planned worldless (its stage checked, not its first)."""
        return rank // self.per_stage in self.checked and not self.first_of_stage(rank)

    def turn_off(self, reason: str) -> None:
        if self.on:
            self.on, self.reason = False, reason
            self.copies.clear()

    def learn(self, template_meshes: list, built: list) -> None:
        """Snapshots of meshes just built by ``rank_mesh`` (before anything used them)."""
        for tm, m in zip(template_meshes, built):
            self.copies.learn(tm, m)

    def can_build(self, template_meshes: list) -> bool:
        return self.on and all(self.copies.knows(tm) for tm in template_meshes)

    def meshes(self, template_meshes: list, rank: int) -> list:
        """Rank ``rank``'s meshes, one per template mesh, without reading any world."""
        return [self.copies.mesh(tm, rank) for tm in template_meshes]

    @staticmethod
    def outside_world() -> bool:
        """A worldless rank runs where no default group exists (a read of it raises)."""
        return not dist.is_initialized()
