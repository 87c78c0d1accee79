"""A rank's DeviceMesh copied from one ``world.rank_mesh`` built for another rank: the one way
the save (``worldless.py``) and the load (``load_stage_templates.MeshClones``) give a rank its
meshes without ``DeviceMesh.__init__``.

At W=16,384, ``DeviceMesh.__init__`` (``_init_backend=False``, ``_rank`` given: what
``rank_mesh`` calls) costs ~5 ms: it lists the whole rank map (``_flatten_rank_map``) and
compares it with the rank several times, and its coordinate step asks ``get_rank()`` (a fake
world) for the group of a sliced mesh. Every field it sets but the rank and its coordinate is
the same for every rank (layout, rank map and its tuple, names, root mesh, device type; empty
registries). So ``mesh_for_rank`` gives rank ``r`` the state a fresh mesh of rank ``r`` has: a
pristine mesh's state (``snapshot``, taken right after ``rank_mesh`` built it, before anything
used it) with ``_rank = r`` and ``_coordinate_on_dim`` as ``__init__`` computes it,
``_compute_coordinates_from_mesh(_get_mesh_tensor_from_full_mesh(full, r), r)``, with the rank
passed explicitly: DeviceMesh's own ``_compute_coordinates_from_mesh``, given the first row of
the full mesh holding ``r`` (what ``_get_mesh_tensor_from_full_mesh`` returns) from a table
worked out once per mesh (``full_mesh``) instead of a scan of the whole rank map per rank.

Checked, not assumed, by each user: a copy is compared field by field (``same_mesh``) with the
mesh ``rank_mesh`` builds for the same rank in that rank's fake world, and any difference turns
the copies off.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh

_MUTABLE = (dict, list, set)


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A mesh's state (``vars(mesh)``), its containers copied (a mesh fills its registries)."""
    return {k: (copy.copy(v) if isinstance(v, _MUTABLE) else v) for k, v in state.items()}


def full_mesh(state: dict[str, Any]) -> tuple[torch.Tensor, dict[int, int]]:
    """``_layout.remap_to_tensor(_rank_map)`` (DeviceMesh's first step of the coordinate: every
    group of the mesh, the same tensor for every rank) and, for each rank, the first row holding
    it (``(full == rank).nonzero()[0, 0]``), worked out in one pass for every rank."""
    rows = state["_layout"].remap_to_tensor(state["_rank_map"])
    first_row: dict[int, int] = {}
    for i, row in enumerate(rows.reshape(rows.size(0), -1).tolist()):
        for r in row:
            first_row.setdefault(r, i)
    return rows, first_row


def coordinate_of(
    state: dict[str, Any], rank: int, full: tuple | None = None
) -> tuple[int, ...] | None:
    """What ``DeviceMesh._compute_coordinate_on_dim`` gives inside rank ``rank``'s world (see the
    module docstring). ``full``: ``full_mesh(state)``, worked out once for many ranks."""
    rows, first_row = full_mesh(state) if full is None else full
    if rows.size(0) == 1:
        group = rows[0]
    else:
        row = first_row.get(rank)
        if row is None:  # the rank is in no row: __init__ raises there
            raise RuntimeError(f"rank {rank} is in no row of the mesh")
        group = rows[row]
    return DeviceMesh._compute_coordinates_from_mesh(group, rank)


def mesh_for_rank(state: dict[str, Any], cls: type, rank: int, full: tuple | None = None) -> Any:
    """A mesh with ``state`` (a ``snapshot``) as rank ``rank`` holds it."""
    mesh = object.__new__(cls)
    own = snapshot(state)
    own["_rank"] = rank
    own["_coordinate_on_dim"] = coordinate_of(state, rank, full)
    mesh.__dict__.update(own)
    return mesh


def same_mesh(a: Any, b: Any) -> bool:
    """The copies' self-check: ``a`` and ``b`` hold the same fields in the same order with equal
    values; tensors and meshes (the rank map, a root mesh) must be the same object (DeviceMesh's
    own ``==`` ignores the rank and more; this does not). A field that cannot be compared is not
    proven equal."""
    sa, sb = vars(a), vars(b)
    if type(a) is not type(b) or list(sa) != list(sb):
        return False
    for k, va in sa.items():
        vb = sb[k]
        if va is vb:
            continue
        if type(va) is not type(vb) or isinstance(va, (torch.Tensor, DeviceMesh)):
            return False
        try:
            if not bool(va == vb):
                return False
        except Exception:  # noqa: BLE001 - a field that cannot be compared: not proven equal
            return False
    return True


class MeshCopies:
    """Per template mesh (by id; the template is held, so its id stays its own), the class,
    ``snapshot`` and ``full_mesh`` of a mesh ``rank_mesh`` built from it for some rank; from
    them, any rank's copy."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, type, dict[str, Any], tuple]] = {}

    def learn(self, template: Any, built: Any) -> None:
        """Remember ``built`` (just built by ``rank_mesh`` from ``template``, before anything
        used it) unless ``template`` already has one."""
        if id(template) not in self._by_id:
            state = snapshot(vars(built))
            self._by_id[id(template)] = (template, type(built), state, full_mesh(state))

    def knows(self, template: Any) -> bool:
        return id(template) in self._by_id

    def mesh(self, template: Any, rank: int) -> Any:
        """Rank ``rank``'s mesh for ``template`` (``knows(template)``), without any world."""
        _template, cls, state, full = self._by_id[id(template)]
        return mesh_for_rank(state, cls, rank, full)

    def clear(self) -> None:
        self._by_id.clear()
