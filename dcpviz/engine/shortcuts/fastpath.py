"""Shortcuts that make simulating thousands of ranks cheap, each exact for DCP's default planner.

1. One recipe run, many ranks. Recipes are SPMD: every rank calls ``fully_shard`` /
   ``parallelize_module`` with the same arguments and gets DTensors that differ only in the
   rank they sit on. So the recipe runs once (rank 0's world) and each other rank's state dict
   is that template rebound to the rank's own mesh (the same repair ``world.rebind_to_rank``
   applies to the dispatch-cache hazard), with local tensors of the rank's own local shape.
   Checked, not assumed: the real recipe also runs on sample ranks (the last, a middle one),
   and any difference in keys, placements, meshes, shapes or dtypes falls back to the full path.
2. One plan per class of ranks. DCP's default local plan for a DTensor depends only on the
   rank's coordinates along mesh dims whose placement is not ``Replicate``
   (``compute_local_shape_and_global_offset`` skips replicated dims), and plain tensors and
   bytes are planned identically on every rank. Ranks whose coordinates agree on every dim that
   matters to some DTensor therefore have identical local plans: one representative is planned
   and its plan object shared. Only for ``DefaultSavePlanner`` itself without plan caching; any
   other planner gets every rank planned.
3. One offset computation per distinct question (``SharedLocalShapes``), same condition;
   and one per distinct shard step (``memoized_shard_steps``), shared across ranks: a
   ``_StridedShard`` step costs DTensor ~1.6 ms on a 128-way dim and serves every rank with
   the same coordinate on that dim.
4. One rank view at a time, cheaply (``TemplateView``): the template's leaves, nesting, DTensor
   groups and meshes are worked out once; for ``DefaultSavePlanner`` itself a group's keys hold
   one DTensor object (DCP plans each key on its own, as it does tied weights), DCP's
   WriteItems are reused across the keys of a group (``write_memo.py``), and DCP's flattening
   of the view comes from the template's (``ViewFlattening``), each checked against DCP.

Every shortcut sees the state dict as DCP's planners do: ``Leaves`` walks it with DCP's own
traversal (nested dicts and lists, keys like "model.fc1.weight" and "stack.0"), so a
``{"model": ..., "optim": ...}`` state dict is templated, rebound and classed leaf by leaf. A
template whose tensors DCP cannot reach (inside a tuple it saves as bytes, a ShardedTensor) is
not used, and a planner that does not flatten gets every rank's own state dict.

``tests/test_fastpath.py`` compares the shortcuts with the full per-rank path on several layouts,
flat and nested; ``tests/test_save_shortcuts.py`` compares each rank's local plan with DCP's on
the rank's own state dict, field by field, and shows that a broken shortcut is caught.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.distributed._local_tensor import enabled_local_tensor_mode
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint import (
    _nested_dict,
    _sharded_tensor_utils,
    default_planner,
    planner_helpers,
)
from torch.distributed.checkpoint._traverse import set_element, traverse_state_dict
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.tensor import DTensor, Replicate, _utils
from torch.distributed.tensor._dtensor_spec import DTensorSpec
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils._pytree import tree_leaves

from dcpviz.engine.job.scenario import Scenario
from dcpviz.engine.job.statedict import rank_state_dict
from dcpviz.engine.job.training_state import SPMD_STATE_PRESETS
from dcpviz.engine.job.world import fake_world, rank_mesh
from dcpviz.engine.shortcuts.guards import DEFAULT_PLANNER, is_dcp_function, patched


class Leaves:
    """A state dict as DCP's planners see it: every leaf DCP's own traversal
    (``traverse_state_dict``, what ``flatten_state_dict`` uses) reaches, under the key DCP gives
    it ("model.fc1.weight", "stack.0"), with its object path to rebuild the nesting."""

    def __init__(self, state_dict: dict[str, Any]) -> None:
        self.values: dict[str, Any] = {}
        self.paths: dict[str, tuple] = {}
        self.duplicates: list[str] = []

        def visit(path: tuple, value: Any) -> None:
            key = ".".join(map(str, path))
            if key in self.values:
                self.duplicates.append(key)
            self.values[key] = value
            self.paths[key] = path

        traverse_state_dict(state_dict, visit)

    def blocker(self) -> str | None:
        """Why a template with these leaves cannot stand for other ranks (None if it can).

        ``rank_view`` rebuilds DTensors that DCP plans as tensors; a tensor DCP never reaches
        (inside a tuple or object it saves as bytes) or a ShardedTensor (its local shards are
        rank 0's) would keep rank 0's data, and a key DCP rejects must be rejected by DCP."""

        if self.duplicates:
            return f"the state dict flattens to the key {self.duplicates[0]!r} twice"
        for key, value in self.values.items():
            if isinstance(value, ShardedTensor):
                return f"{key!r} is a ShardedTensor"
            if not isinstance(value, torch.Tensor) and any(
                isinstance(v, torch.Tensor) for v in tree_leaves(value)
            ):
                return f"{key!r} holds tensors inside a value DCP saves as bytes"
        return None


def spec_signature(state_dict: dict[str, Any]) -> tuple:
    """Everything about a state dict that must not depend on the rank for the template to hold:
    for every leaf DCP reaches (nested dicts and lists included), its key and, for tensors,
    shape, dtype, placements and mesh."""
    sig = []
    for key, value in Leaves(state_dict).values.items():
        if isinstance(value, DTensor):
            mesh = value.device_mesh
            sig.append(
                (
                    key,
                    "dtensor",
                    tuple(value.shape),
                    str(value.dtype),
                    tuple(repr(p) for p in value.placements),
                    tuple(mesh.mesh_dim_names or ()),
                    tuple(mesh._flatten_rank_map),
                    str(mesh._layout),
                )
            )
        elif isinstance(value, torch.Tensor):
            sig.append((key, "tensor", tuple(value.shape), str(value.dtype)))
        else:
            sig.append((key, type(value).__name__))
    return tuple(sig)


def per_rank_state_reason(scenario: Scenario) -> str | None:
    """Why the scenario's app state cannot come from one template (None if it can).

    A state callable is user code that may give each rank its own keys and values (torchtitan's
    ``dp_rank_{i}`` data-loader keys, an RNG state): a template would hand every rank rank 0's,
    and no check on sample ranks proves the others equal. Only presets known to be the model's
    and optimizer's state on every rank (``SPMD_STATE_PRESETS``) keep the shortcut."""
    state = scenario.state
    if state is None or (isinstance(state, str) and state in SPMD_STATE_PRESETS):
        return None
    return f"state={scenario.state_name!r} may differ from rank to rank (keys or values)"


def sample_ranks(world_size: int) -> list[int]:
    """The ranks a callable recipe is checked on before it is trusted to be SPMD."""
    return sorted({world_size - 1, world_size // 2} - {0})


def template_state_dict(
    scenario: Scenario, progress_note: list[str], check: bool = True
) -> tuple[dict[str, Any] | None, int]:
    """Rank 0's real state dict; with ``check``, only if the recipe gives the same specs on
    the sample ranks (None otherwise). The named recipes are SPMD by construction and skip it."""
    W = scenario.world_size
    reason = per_rank_state_reason(scenario)
    if reason is not None:
        progress_note.append(f"{reason}, so every rank built and planned its own state.")
        return None, 0
    with fake_world(0, W):
        template, rebound = rank_state_dict(scenario, 0)
        signature = spec_signature(template)
    blocker = Leaves(template).blocker()
    if blocker is not None:
        progress_note.append(
            f"{blocker}: rank 0's state dict cannot stand for other ranks, so every rank ran the recipe itself."
        )
        return None, rebound
    for r in sample_ranks(W) if check else ():
        with fake_world(r, W):
            sd, n = rank_state_dict(scenario, r)
            rebound += n
            if spec_signature(sd) != signature:
                progress_note.append(
                    f"rank {r}'s state dict differs from rank 0's (keys, placements, meshes or shapes): "
                    "the recipe is not SPMD, so every rank ran the recipe itself."
                )
                return None, rebound
    return template, rebound


class _Slot:
    """Where a leaf goes in ``TemplateView``'s skeleton."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _fill(node: Any, values: list) -> Any:
    """The skeleton ``node`` with each slot replaced by its value (dicts and lists rebuilt)."""
    if type(node) is dict:
        return {
            k: (values[v.index] if type(v) is _Slot else _fill(v, values)) for k, v in node.items()
        }
    if type(node) is list:
        return [values[v.index] if type(v) is _Slot else _fill(v, values) for v in node]
    return values[node.index] if type(node) is _Slot else node


def _mesh_key(mesh: Any) -> tuple:
    """What ``world.rank_mesh`` builds a rank's mesh from: equal keys, interchangeable meshes
    (DeviceMesh's own ``==`` looks at less: rank map, layout, device type, names, thread)."""
    rank_map = mesh._rank_map
    return (
        mesh.device_type,
        mesh._layout,
        tuple(rank_map.shape),
        tuple(rank_map.flatten().tolist()),
        mesh.mesh_dim_names,
        id(getattr(mesh, "_root_mesh", None)),
        tuple(getattr(mesh, "_dim_group_names", [])),
    )


class TemplateView:
    """``rank_view`` with the work that does not depend on the rank done once per template:
    the leaves DCP's traversal finds, the nesting they are rebuilt into, which DTensors share
    (shape, dtype, placements, mesh, device) and therefore one spec and local tensor, and which
    template meshes are built alike (the TP+FSDP recipe leaves seven equal mesh objects), so
    that a rank builds each distinct mesh once (~1 ms each)."""

    def __init__(self, template: dict[str, Any]) -> None:
        leaves = Leaves(template)
        self.skeleton: dict[str, Any] = {}
        self.values: list[Any] = []  # each leaf's template value
        self.group_of: list[int | None] = []  # each leaf's DTensor group (None: not a DTensor)
        self.groups: list[DTensor] = []  # one template DTensor per group
        self.mesh_of: list[int] = []  # each group's mesh class
        self.meshes: list[Any] = []  # one template mesh per class
        numbers: dict[tuple, int] = {}
        mesh_numbers: dict[tuple, int] = {}
        for key, value in leaves.values.items():
            group = None
            if isinstance(value, DTensor):
                spec = value._spec
                gk = (spec.tensor_meta, spec.placements, id(spec.mesh), value._local_tensor.device)
                group = numbers.get(gk)
                if group is None:
                    group = numbers[gk] = len(self.groups)
                    self.groups.append(value)
                    mk = _mesh_key(spec.mesh)
                    if mk not in mesh_numbers:
                        mesh_numbers[mk] = len(self.meshes)
                        self.meshes.append(spec.mesh)
                    self.mesh_of.append(mesh_numbers[mk])
            set_element(self.skeleton, leaves.paths[key], _Slot(len(self.values)))
            self.values.append(value)
            self.group_of.append(group)
        self.keys = list(leaves.values)  # each leaf's key as DCP flattens it ("model.fc1.weight")
        self.paths = [leaves.paths[k] for k in self.keys]  # and its object path

    def view(
        self, rank: int, mesh_cache: dict[int, Any], share_dtensors: bool = False
    ) -> dict[str, Any]:
        """The template as rank ``rank`` holds it (see ``rank_view``). ``share_dtensors``: one
        DTensor object per group stands under all its keys, as a tied weight does; only for
        planners that plan each key on its own (DCP's DefaultSavePlanner: ``can_share_plans``)."""
        return self.view_with_leaves(rank, mesh_cache, share_dtensors)[0]

    def view_with_leaves(
        self,
        rank: int,
        mesh_cache: dict[int, Any],
        share_dtensors: bool = False,
        meshes: list | None = None,
    ) -> tuple[dict[str, Any], list]:
        """``view`` and its leaves, in the order of ``keys`` (DCP's traversal order).
        ``meshes``: the rank's meshes, one per template mesh in ``self.meshes`` (default: each
        built by ``world.rank_mesh``, inside the rank's fake world)."""
        if meshes is None:
            meshes = [rank_mesh(m, rank, mesh_cache) for m in self.meshes]
        made = []
        for value, m in zip(self.groups, self.mesh_of):
            spec, mesh = value._spec, meshes[m]
            mesh_cache.setdefault(id(spec.mesh), mesh)
            # Offsets too (DCP asks for them next): the memoised shard steps then serve both.
            local_shape, _ = planner_helpers.compute_local_shape_and_global_offset(
                value.shape, mesh, spec.placements
            )
            local = torch.empty(local_shape, dtype=value.dtype, device=value._local_tensor.device)
            made.append((local, DTensorSpec(mesh, spec.placements, tensor_meta=spec.tensor_meta)))
        if share_dtensors:
            shared = [DTensor(local, spec, requires_grad=False) for local, spec in made]
            values = [v if g is None else shared[g] for v, g in zip(self.values, self.group_of)]
        else:
            values = [
                v if g is None else DTensor(made[g][0], made[g][1], requires_grad=False)
                for v, g in zip(self.values, self.group_of)
            ]
        return _fill(self.skeleton, values), values


def rank_view(template: dict[str, Any], rank: int, mesh_cache: dict[int, Any]) -> dict[str, Any]:
    """The template as rank ``rank`` holds it: each DTensor on the rank's mesh, with a local
    tensor of the rank's local shape, at any depth. Call inside ``fake_world(rank, W)``.

    The nesting is rebuilt from DCP's own traversal (``set_element`` along each leaf's path), so
    DCP flattens the view to the same keys and leaves, DTensors aside, as the template. Layers
    repeat: DTensors with the same (shape, dtype, placements, mesh) share one (immutable) spec
    and one storage-less local tensor. For many ranks, build a ``TemplateView`` once."""
    return TemplateView(template).view(rank, mesh_cache)


class ViewFlattening:
    """DCP's ``set_up_planner`` flattening of a ``TemplateView`` view, from the template's own.

    ``DefaultSavePlanner.set_up_planner`` calls ``flatten_state_dict`` (DCP's traversal: keys
    "a.b.0", the object path of each) and ``_flatten_sharded_tensors`` (the same traversal
    again, rebuilding the flat dict, changing only ShardedTensors). A view has the template's
    nesting, rebuilt from that very traversal, and the same leaf types at the same places (a
    DTensor stays a DTensor; every other leaf is the template's own object); the traversal's
    choices depend only on those types. So DCP's flattening of any view is ``{keys[i]:
    leaves[i]}`` with mappings ``{keys[i]: paths[i]}``, and, no leaf being a ShardedTensor
    (``Leaves.blocker``), ``_flatten_sharded_tensors`` of it is a copy.

    Checked, not assumed: the first view is flattened by DCP too and compared (keys in order,
    leaves by identity, mappings, the second pass); any difference turns this off. Active only
    inside a DefaultSavePlanner's ``set_up_planner`` for the one view handed to ``active``;
    anything else goes to DCP's own functions, which must be DCP's (else nothing is changed).
    """

    def __init__(self, view: TemplateView) -> None:
        self.keys = view.keys
        self.mappings = dict(zip(view.keys, view.paths))
        self.on = True
        self.checked = False
        self.hits = 0

    def _matches(self, flatten: Any, second: Any, state_dict: dict, leaves: list) -> bool:
        flat, mappings = flatten(state_dict)
        again = second(flat)
        ours = dict(zip(self.keys, leaves))
        return (
            list(flat) == self.keys == list(again)
            and all(flat[k] is v and again[k] is v for k, v in ours.items())
            and mappings == self.mappings
        )

    @contextmanager
    def active(self, state_dict: dict, leaves: list) -> Iterator[bool]:
        """While inside, DCP's two flattening helpers in ``default_planner`` answer for
        ``state_dict`` (a view, ``leaves`` its leaves) from the template."""
        flatten, second = (
            default_planner.flatten_state_dict,
            default_planner._flatten_sharded_tensors,
        )
        if (
            not self.on
            or flatten is not _nested_dict.flatten_state_dict
            or second is not _sharded_tensor_utils._flatten_sharded_tensors
        ):
            yield False
            return
        if not self.checked:
            self.checked = True
            try:
                same = self._matches(flatten, second, state_dict, leaves)
            except Exception:  # DCP rejects this state dict: its own set_up_planner will say so
                same = False
            if not same:
                self.on = False
                yield False
                return
        made: list[dict] = []

        def flatten_state_dict(sd: Any) -> Any:
            if sd is not state_dict:
                return flatten(sd)
            self.hits += 1
            flat = dict(zip(self.keys, leaves))
            made.append(flat)
            return flat, dict(self.mappings)

        def _flatten_sharded_tensors(sd: Any) -> Any:
            return dict(sd) if any(sd is m for m in made) else second(sd)

        with patched(
            (default_planner, "flatten_state_dict", flatten_state_dict),
            (default_planner, "_flatten_sharded_tensors", _flatten_sharded_tensors),
        ):
            yield True


def mattering_dims(template: dict[str, Any], root_names: tuple[str, ...]) -> tuple[int, ...]:
    """Root mesh dims along which some DTensor, at any depth, is not replicated (all dims if unsure)."""
    dims: set[int] = set()
    for value in Leaves(template).values.values():
        if not isinstance(value, DTensor):
            continue
        names = value.device_mesh.mesh_dim_names
        for i, p in enumerate(value.placements):
            if isinstance(p, Replicate):
                continue
            if names is None or names[i] not in root_names:
                return tuple(range(len(root_names)))  # a flattened or unnamed dim: no shortcut
            dims.add(root_names.index(names[i]))
    return tuple(sorted(dims))


def plan_classes(scenario: Scenario, dims: tuple[int, ...]) -> dict[int, int]:
    """rank -> the lowest rank with the same coordinates on ``dims`` (its representative)."""
    reps: dict[tuple[int, ...], int] = {}
    out = {}
    for r in range(scenario.world_size):
        c = scenario.coordinate(r)
        key = tuple(c[d] for d in dims)
        out[r] = reps.setdefault(key, r)
    return out


def can_share_plans(planner: Any) -> bool:
    """Whether ranks of one class may share ``planner``'s local plan (DCP's default planner: exact)."""
    return type(planner) is DefaultSavePlanner and not getattr(
        planner, "_enable_plan_caching", False
    )


def finishes_without_world(planner: Any) -> bool:
    """Whether ``planner.finish_plan`` reads nothing of the process's world, so that each rank's
    finish step needs no fake world of its own (W process-group set-ups, each O(W) in c10d).
    DCP's own ``DefaultSavePlanner.finish_plan`` without plan caching stores the plan it is
    given and returns it; any other planner, or a replaced ``finish_plan``, gets its world."""
    return can_share_plans(planner) and is_dcp_function(
        getattr(type(planner), "finish_plan", None),
        "DefaultSavePlanner.finish_plan",
        DEFAULT_PLANNER,
    )


def plans_leaves(planner: Any) -> bool:
    """Whether ``planner`` plans the leaves DCP's traversal finds (it flattens nested state
    dicts). One that does not saves each top-level container whole, as bytes; ``rank_view``
    rebuilds containers as plain dicts and lists, so such a planner gets every rank's own."""
    return bool(getattr(planner, "flatten_state_dict", True))


def _plain(*values: Any) -> bool:
    return all(type(v) is int for v in values)


@contextmanager
def memoized_shard_steps(cache: dict | None = None) -> Iterator[dict]:
    """Memoise DTensor's ``_get_shard_size_and_offsets`` (one placement's step of
    ``compute_local_shape_and_global_offset``) for the first step along a tensor dim.

    DTensor documents it as free of side effects (``maybe_run_for_local_tensor``); it is a
    function of (size so far, mesh dim size, the rank's coordinate on that mesh dim, placement,
    offsets of earlier steps, ``skip_offset``). For ``_StridedShard`` it splits an ``arange``
    of the whole dim into every rank's indices (~1.6 ms for a 128-way dim) to keep one, and
    the answer for one coordinate serves every rank with that coordinate on that mesh dim (the
    8 TP ranks of an FSDP coordinate). Only plain-int questions without earlier offsets, outside
    any torch dispatch mode or LocalTensorMode, are memoised; every answer handed out was
    computed by DTensor for the same inputs (the callers only read the index tensor it holds).
    ``cache`` may be kept across ranks (the questions hold no rank-specific object).
    """
    original = _utils._get_shard_size_and_offsets
    cache = {} if cache is None else cache

    def memo(
        curr_local_size,
        mesh_dim_size,
        rank,
        placement,
        previous_offsets,
        zero_global_offset,
        skip_offset,
    ):
        if (
            previous_offsets is not None
            or not _plain(curr_local_size, mesh_dim_size, rank, zero_global_offset)
            or type(skip_offset) is not bool
            or enabled_local_tensor_mode() is not None
            or _get_current_dispatch_mode() is not None
        ):
            return original(
                curr_local_size,
                mesh_dim_size,
                rank,
                placement,
                previous_offsets,
                zero_global_offset,
                skip_offset,
            )
        key = (
            curr_local_size,
            mesh_dim_size,
            rank,
            type(placement),
            placement,
            zero_global_offset,
            skip_offset,
        )
        try:
            hit = cache.get(key)
        except TypeError:  # a placement that cannot be a key: DTensor answers every time
            return original(
                curr_local_size,
                mesh_dim_size,
                rank,
                placement,
                None,
                zero_global_offset,
                skip_offset,
            )
        if hit is None:
            hit = cache[key] = original(
                curr_local_size,
                mesh_dim_size,
                rank,
                placement,
                None,
                zero_global_offset,
                skip_offset,
            )
        return hit

    with patched((_utils, "_get_shard_size_and_offsets", memo)):
        yield cache


class SharedLocalShapes:
    """DTensor's ``compute_local_shape_and_global_offset`` where DCP's planner helpers call it,
    once per distinct question over a whole save or load (``active``).

    It is a pure function of the global shape, the mesh's shape, this rank's coordinate, the
    placements and ``skip_offset``; the planner asks it once per tensor per rank, and 80 layers
    ask the same question 80 times. For ``_StridedShard`` (FSDP over TP) each answer costs
    DTensor ~0.4 ms of index arithmetic. The key holds no rank-specific object, so one memo
    serves every rank: with pipeline stages, the ranks of every stage with the same coordinates
    on a (dp_shard, tp) mesh ask the same questions of the same layer shapes (``TemplateView``
    and the load's stage views ask through it too). Every answer handed out was computed by
    DTensor itself for the same inputs.

    Checked, not assumed: the first repeat of each (global shape, placements) asked on another
    mesh than the one that filled it (another rank) is computed by DTensor as well and compared
    (``agrees``); a difference turns the memo off (``on``). Each entry holds the mesh that
    filled it, so an identity stands for a live object. ``shard_steps``: the
    ``memoized_shard_steps`` cache DTensor's own computations use (default: a new one)."""

    def __init__(self, shard_steps: dict | None = None) -> None:
        self.cache: dict = {}
        self.shard_steps: dict = {} if shard_steps is None else shard_steps
        self._checked: set = set()  # (global shape, placements) whose first repeat was compared
        self.hits = 0
        self.on = True

    @staticmethod
    def agrees(memo: tuple, dtensor: tuple) -> bool:
        """The self-check: the memo's answer is DTensor's."""
        return tuple(map(tuple, memo)) == tuple(map(tuple, dtensor))

    @staticmethod
    def key(global_shape: Any, mesh: Any, placements: Any, skip_offset: bool) -> tuple:
        """Everything the answer depends on (placement types too: ``Shard(0) ==
        _StridedShard(0, ...)`` may hold from ``Shard``'s side)."""
        return (
            tuple(global_shape),
            tuple(mesh.shape),
            mesh.get_coordinate(),
            tuple(placements),
            tuple(type(p) for p in placements),
            skip_offset,
        )

    def compute(
        self, global_shape: Any, mesh: Any, placements: Any, skip_offset: bool = False
    ) -> tuple:
        """``compute_local_shape_and_global_offset(global_shape, mesh, placements, skip_offset)``."""
        if not self.on:
            return self._dtensor(global_shape, mesh, placements, skip_offset)
        key = self.key(global_shape, mesh, placements, skip_offset)
        entry = self.cache.get(key)
        if entry is None:
            answer = self._dtensor(global_shape, mesh, placements, skip_offset)
            self.cache[key] = (answer, mesh)
            return answer
        hit, asker = entry
        layout = (
            tuple(global_shape),
            tuple(placements),
            tuple(type(p) for p in placements),
            skip_offset,
        )
        if asker is not mesh and layout not in self._checked:
            # The first repeat of a layout asked on another mesh (another rank) is checked.
            self._checked.add(layout)
            answer = self._dtensor(global_shape, mesh, placements, skip_offset)
            if not self.agrees(hit, answer):
                self.on = False
                self.cache.clear()
                return answer
        self.hits += 1
        return hit

    def _dtensor(self, global_shape: Any, mesh: Any, placements: Any, skip_offset: bool) -> tuple:
        with memoized_shard_steps(self.shard_steps):
            return _utils.compute_local_shape_and_global_offset(
                global_shape, mesh, placements, skip_offset=skip_offset
            )

    @contextmanager
    def active(self) -> Iterator[bool]:
        """While inside, DCP's planner helpers ask ``compute`` (only where they hold DTensor's
        own function; else nothing is changed and this yields False)."""
        if planner_helpers.compute_local_shape_and_global_offset is not (
            _utils.compute_local_shape_and_global_offset
        ):
            yield False
            return

        def compute_local_shape_and_global_offset(
            global_shape: Any, mesh: Any, placements: Any, skip_offset: bool = False
        ) -> tuple:
            return self.compute(global_shape, mesh, placements, skip_offset)

        with patched(
            (
                planner_helpers,
                "compute_local_shape_and_global_offset",
                compute_local_shape_and_global_offset,
            )
        ):
            yield True
