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
rank only through ``mesh.get_coordinate()``. So ``mesh_for_rank`` gives rank ``r`` the state a
fresh ``DeviceMesh`` of rank ``r`` has: a pristine mesh's state (``snapshot``, taken right after
``world.rank_mesh`` built it inside its rank's fake world) with ``_rank = r`` and the coordinate
from DeviceMesh's own two functions, the rank passed explicitly instead of read from the world.
The view, planner and DCP's code then run outside any world: anything that did read the world
would raise (no default group), never read another rank's.

Checked, not assumed (``WorldlessRanks.check``): on one rank of every stage other than the one
the snapshot came from, its meshes are built both ways and compared field by field (tensors by
identity), and its local plan is made both ways (in its world, and without) and compared item by
item; any difference, or anything raised, turns the shortcut off and every rank gets its world.
A rank that raises without a world is planned again in its world (its failure, if any, is then
DCP's). Only for ``DefaultSavePlanner`` itself with template views (``fastpath.can_share_plans``)
and ``fast`` not False. ``tests/test_titan_scale_shortcuts.py`` compares it with the per-rank
path and shows that a broken copy is caught.
"""

from __future__ import annotations

import copy
from typing import Any

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from dcpviz.engine.shortcuts.write_memo import write_fields

_MUTABLE = (dict, list, set)


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A mesh's state (``vars(mesh)``), its containers copied (a mesh fills its registries)."""
    return {k: (copy.copy(v) if isinstance(v, _MUTABLE) else v) for k, v in state.items()}


def full_mesh(state: dict[str, Any]) -> Any:
    """``_layout.remap_to_tensor(_rank_map)``, DeviceMesh's first step of the coordinate: every
    group of the mesh, the same tensor for every rank (no rank goes in)."""
    return state["_layout"].remap_to_tensor(state["_rank_map"])


def coordinate_of(state: dict[str, Any], rank: int, full: Any = None) -> tuple[int, ...] | None:
    """What ``DeviceMesh._compute_coordinate_on_dim`` gives inside rank ``rank``'s world: its
    own steps, with the rank passed where it would call ``get_rank()``. ``full``:
    ``full_mesh(state)``, worked out once for many ranks."""
    full = full_mesh(state) if full is None else full
    group = DeviceMesh._get_mesh_tensor_from_full_mesh(full, rank)
    return DeviceMesh._compute_coordinates_from_mesh(group, rank)


def mesh_for_rank(state: dict[str, Any], cls: type, rank: int, full: Any = None) -> Any:
    """A mesh with ``state`` (a ``snapshot``) as rank ``rank`` holds it."""
    mesh = object.__new__(cls)
    own = snapshot(state)
    own["_rank"] = rank
    own["_coordinate_on_dim"] = coordinate_of(state, rank, full)
    mesh.__dict__.update(own)
    return mesh


def same_state(a: Any, b: Any) -> bool:
    """Two meshes' states equal field by field (tensors: the same object)."""
    sa, sb = vars(a), vars(b)
    if list(sa) != list(sb) or type(a) is not type(b):
        return False
    for k, va in sa.items():
        vb = sb[k]
        if va is vb:
            continue
        if type(va) is not type(vb) or hasattr(va, "data_ptr"):
            return False
        try:
            if va != vb:
                return False
        except Exception:  # noqa: BLE001 - a field that cannot be compared: not proven equal
            return False
    return True


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
    world (its meshes are the snapshots), its last rank is the check. ``pristine``: per template
    mesh (by id; the template mesh is held), the class and snapshot of a mesh ``world.rank_mesh``
    built for some rank inside that rank's fake world."""

    def __init__(self, per_stage: int) -> None:
        self.per_stage = per_stage
        self.on = True
        self.pristine: dict[int, tuple[Any, type, dict[str, Any], Any]] = {}
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
            self.pristine.clear()

    def learn(self, template_meshes: list, built: list) -> None:
        """Snapshots of meshes just built by ``rank_mesh`` (before anything used them)."""
        for tm, m in zip(template_meshes, built):
            if id(tm) not in self.pristine:
                state = snapshot(vars(m))
                self.pristine[id(tm)] = (tm, type(m), state, full_mesh(state))

    def can_build(self, template_meshes: list) -> bool:
        return self.on and all(id(tm) in self.pristine for tm in template_meshes)

    def meshes(self, template_meshes: list, rank: int) -> list:
        """Rank ``rank``'s meshes, one per template mesh, without reading any world."""
        out = []
        for tm in template_meshes:
            _tm, cls, state, full = self.pristine[id(tm)]
            out.append(mesh_for_rank(state, cls, rank, full))
        return out

    @staticmethod
    def outside_world() -> bool:
        """A worldless rank runs where no default group exists (a read of it raises)."""
        return not dist.is_initialized()
