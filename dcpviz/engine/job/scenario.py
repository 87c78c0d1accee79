"""Scenario: what job is being planned — model, world size, mesh, recipe, optimizer, state, dtype, device."""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dcpviz.core.errors import ScenarioError, did_you_mean
from dcpviz.engine.job.models import check_model_spec, model_name
from dcpviz.engine.job.recipes import RECIPES, recipe_mesh_ndim, recipe_name
from dcpviz.engine.job.titan_recipe import titan_dim_names
from dcpviz.engine.job.training_state import check_optimizer_spec, check_state_spec, spec_name

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "float8_e4m3fn": torch.float8_e4m3fn,
}
DEVICES = ("meta", "cpu", "cuda")
# What traces record as the dtype of a scenario that keeps the model's own dtypes (dtype=None).
AS_BUILT = "as built"


def dtype_name(dtype: str | torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16 or 'bfloat16'; raises ScenarioError for anything else."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = str(dtype).removeprefix("torch.")
        name = {
            "fp32": "float32",
            "bf16": "bfloat16",
            "fp16": "float16",
            "half": "float16",
            "float": "float32",
        }.get(name, name)
    if name not in DTYPES:
        raise ScenarioError(
            f"dtype={dtype!r} is not supported.{did_you_mean(name, DTYPES)} Use one of {sorted(DTYPES)}."
        )
    return name


@dataclass(frozen=True)
class Scenario:
    """A sharded job to plan.

    model: a preset name (``"mlp"``, ``"llama-tiny"``, ``"llama3-8b"``, ``"llama3-70b"``) or a
        zero-argument callable returning an ``nn.Module`` (built under ``torch.device("meta")``).
    world_size: number of ranks.
    mesh: device-mesh shape; defaults to ``(world_size,)`` for 1-D recipes.
    mesh_dim_names: names of the mesh dims; default per recipe (e.g. ``("replicate", "shard")``).
    recipe: ``"replicate"``, ``"fsdp"``, ``"hsdp"``, ``"tp"``, ``"tp+fsdp"``, ``"torchtitan"``
        (parallelisms chosen by ``mesh_dim_names`` from ``pp``, ``dp_replicate``, ``dp_shard``,
        ``ep``, ``cp``, ``tp``; ``engine/job/titan_recipe.py``) or a callable ``(model, device_mesh) -> model``.
    dtype: None (default) keeps the model's own dtypes, tensor by tensor. A dtype (``"bfloat16"``,
        ``torch.float16``, ...) does what ``model.to(dtype)`` does to floating-point parameters
        and buffers, and leaves complex tensors (RoPE's ``freqs_cis``) and integer tensors (step
        counters) as they are.
    device: ``"meta"`` for simulation, ``"cpu"``/``"cuda"`` for real runs.
    optimizer: None (default: only the model's state), ``"adamw"``, ``"adam"``, ``"sgd"``
        (momentum 0.9, so it has state) or a callable ``(params) -> torch.optim.Optimizer``.
        With an optimizer, each rank saves ``{"model": model_sd, "optim": optim_sd}`` exactly as
        DCP's ``torch.distributed.checkpoint.state_dict.get_state_dict(model, optimizer)``
        returns them: FQN-keyed, state initialised, moments sharded like their parameters.
    state: None, a preset (``"dcp-tutorial"``: ``{"app": AppState(model, optimizer)}`` as in
        PyTorch's DCP tutorial; ``"torchtitan"``: torchtitan's CheckpointManager layout) or a
        callable ``(model, optimizer, rank) -> dict``: the object that rank passes to
        ``dcp.save`` / ``dcp.load`` (nested dicts, lists, ``Stateful`` objects, tensors, Python
        values). It runs inside each rank's world, so ``dist.get_rank()`` works in it.
    """

    model: str | Callable[[], torch.nn.Module] = "mlp"
    world_size: int = 4
    mesh: tuple[int, ...] | None = None
    mesh_dim_names: tuple[str, ...] | None = None
    recipe: str | Callable[..., Any] = "fsdp"
    dtype: str | None = None
    device: str = "meta"
    optimizer: str | Callable[..., Any] | None = None
    state: str | Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        check_model_spec(self.model)
        check_optimizer_spec(self.optimizer)
        check_state_spec(self.state)
        ws = self.world_size
        if isinstance(ws, bool) or not isinstance(ws, int) or ws < 1:
            raise ScenarioError(f"world_size={ws!r} must be a positive int (the number of ranks).")
        self._check_recipe()
        mesh = self._normalise_mesh()
        object.__setattr__(self, "mesh", mesh)
        object.__setattr__(self, "mesh_dim_names", self._normalise_dim_names(mesh))
        object.__setattr__(self, "dtype", None if self.dtype is None else dtype_name(self.dtype))
        dev = str(self.device)
        if dev.split(":")[0] not in DEVICES:
            raise ScenarioError(f"device={self.device!r} is not supported. Use one of {DEVICES}.")
        object.__setattr__(self, "device", dev)

    # -- validation --------------------------------------------------------------------------
    def _check_recipe(self) -> None:
        r = self.recipe
        if isinstance(r, str):
            if r not in RECIPES:
                raise ScenarioError(
                    f"recipe={r!r} is unknown.{did_you_mean(r, RECIPES)} Use one of {sorted(RECIPES)} "
                    "or a callable (model, device_mesh) -> model."
                )
        elif not callable(r):
            raise ScenarioError(
                f"recipe={r!r} is neither a recipe name nor a callable (model, device_mesh) -> model."
            )

    def _normalise_mesh(self) -> tuple[int, ...]:
        ws, need = self.world_size, recipe_mesh_ndim(self.recipe)
        if self.mesh is None:
            if need == 2:
                hint = _two_d_hint(ws)
                raise ScenarioError(
                    f"recipe={recipe_name(self.recipe)!r} needs a 2-D mesh; none was given. "
                    f"Pass mesh=(a, b) with a*b == world_size={ws}{hint}."
                )
            return (ws,)
        try:
            # operator.index accepts ints (numpy's too) and refuses 2.5 and "2", which int() would
            # silently turn into 2.
            mesh = tuple(operator.index(d) for d in self.mesh if not isinstance(d, bool))
            if len(mesh) != len(self.mesh):
                raise TypeError
        except TypeError:
            raise ScenarioError(
                f"mesh={self.mesh!r} must be a tuple of ints, e.g. (2, 4)."
            ) from None
        if not mesh or any(d < 1 for d in mesh):
            raise ScenarioError(f"mesh={self.mesh!r} must be a non-empty tuple of positive ints.")
        if math.prod(mesh) != ws:
            raise ScenarioError(
                f"mesh={mesh} holds {math.prod(mesh)} ranks but world_size={ws}. "
                f"Make the product of the mesh equal the world size{_fix_hint(mesh, ws)}."
            )
        if need is not None and len(mesh) != need:
            hint = _two_d_hint(ws) if need == 2 else f", e.g. mesh=({ws},)"
            raise ScenarioError(
                f"recipe={recipe_name(self.recipe)!r} needs a {need}-D mesh but mesh={mesh} is "
                f"{len(mesh)}-D. Pass a {need}-D mesh{hint}."
            )
        return mesh

    def _normalise_dim_names(self, mesh: tuple[int, ...]) -> tuple[str, ...]:
        names = self.mesh_dim_names
        if self.recipe == "torchtitan":
            return titan_dim_names(mesh, names)
        if names is None:
            default = RECIPES[self.recipe].dim_names if isinstance(self.recipe, str) else None
            if default is not None and len(default) == len(mesh):
                return tuple(default)
            return tuple(f"dim{i}" for i in range(len(mesh)))
        if isinstance(names, str):
            names = tuple(n.strip() for n in names.split(","))
        names = tuple(str(n) for n in names)
        if len(names) != len(mesh):
            raise ScenarioError(
                f"mesh_dim_names={names} has {len(names)} names but mesh={mesh} has {len(mesh)} dims. "
                "Give one name per mesh dim."
            )
        if len(set(names)) != len(names):
            raise ScenarioError(
                f"mesh_dim_names={names} repeats a name; each mesh dim needs its own."
            )
        if self.recipe == "hsdp" and (names[0] == "shard" or names[1] == "replicate"):
            # fully_shard on a 2-D mesh replicates along dim 0 and shards along dim 1, whatever
            # the names say; the labels would tell the opposite of what is planned.
            raise ScenarioError(
                f"mesh_dim_names={names} labels the mesh's dims the other way round from what "
                "recipe='hsdp' does: fully_shard replicates along the outer dim and shards along "
                f"the inner one. Use mesh_dim_names=('replicate', 'shard') with mesh=({mesh[1]}, {mesh[0]})."
            )
        return names

    # -- derived -----------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model's name for summaries and messages."""
        return model_name(self.model)

    @property
    def recipe_name(self) -> str:
        """The recipe's name for summaries and messages."""
        return recipe_name(self.recipe)

    @property
    def optimizer_name(self) -> str:
        """'' without an optimizer, else the preset name or 'callable:module.qualname'."""
        return spec_name(self.optimizer)

    @property
    def state_name(self) -> str:
        """'' for the default state, else the preset name or 'callable:module.qualname'."""
        return spec_name(self.state)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The floating-point dtype parameters and buffers are cast to; None keeps the model's."""
        return None if self.dtype is None else DTYPES[self.dtype]

    def coordinate(self, rank: int) -> tuple[int, ...]:
        """Mesh coordinate of a global rank (init_device_mesh lays ranks out row-major)."""
        coord = []
        for d in reversed(self.mesh or ()):
            coord.append(rank % d)
            rank //= d
        return tuple(reversed(coord))

    def describe(self) -> dict[str, Any]:
        """Plain-data description, as stored in traces."""
        return {
            "model": self.model_name,
            "world_size": self.world_size,
            "mesh": list(self.mesh or ()),
            "mesh_dim_names": list(self.mesh_dim_names or ()),
            "recipe": self.recipe_name,
            "dtype": self.dtype or AS_BUILT,
            "device": self.device,
            "optimizer": self.optimizer_name,
            "state": self.state_name,
        }

    def replace(self, **changes: Any) -> Scenario:
        """A copy with some fields changed (validated again)."""

        return dataclasses.replace(self, **changes)


def _divisor_pairs(n: int) -> list[tuple[int, int]]:
    """Every 2-D mesh of ``n`` ranks, (1, n) and (n, 1) included."""
    return [(a, n // a) for a in range(1, n + 1) if n % a == 0]


def _two_d_hint(ws: int) -> str:
    # Prefer a mesh where both dims exceed 1 (the point of a 2-D recipe), outer dim near 2.
    pairs = [p for p in _divisor_pairs(ws) if min(p) > 1] or [(1, ws)]
    best = min(pairs, key=lambda p: abs(p[0] - 2))
    return f", e.g. mesh={best}"


def _fix_hint(mesh: tuple[int, ...], ws: int) -> str:
    if len(mesh) == 1:
        return f": mesh=({ws},)"
    if len(mesh) == 2 and ws % mesh[0] == 0:
        return f", e.g. mesh=({mesh[0]}, {ws // mesh[0]}) or world_size={math.prod(mesh)}"
    return f", or use world_size={math.prod(mesh)}"
