"""One rank's view of a W-rank job, inside this one process.

``fake_world(rank, W)`` installs torch's *fake* process group (no communication) as the default
group with that rank, so ``init_device_mesh``, mesh slicing, ``fully_shard`` and
``parallelize_module`` behave as on that rank of a real job, including ``get_rank()``.

One hazard remains (see DESIGN.md): DTensor's dispatch caches sharding results keyed by
``DeviceMesh`` equality, which ignores the rank. A DTensor created on rank r may come back from
the cache carrying the mesh object of an earlier rank, and with it that rank's coordinate.
``rebind_to_rank`` detects each such DTensor and gives it a mesh for rank r; tests compare the
result with offsets computed independently per rank.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._dtensor_spec import DTensorSpec

# Importing fake_pg also registers the "fake" backend with c10d (idempotent).
from torch.testing._internal.distributed.fake_pg import FakeStore

from dcpviz.core.errors import DcpvizError

try:
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache
except ImportError:  # a torch without these internals: nothing to clear
    _clear_sharding_prop_cache = None


@contextmanager
def fake_world(rank: int, world_size: int) -> Iterator[None]:
    """Make this process look like ``rank`` of ``world_size`` for the duration of the block."""
    if dist.is_initialized():
        raise DcpvizError(
            "simulation needs this process to have no default process group, but one is "
            f"initialised (backend {dist.get_backend()!r}). Simulate in a separate process, or "
            "use dcpviz.RecordingSavePlanner inside your distributed job instead."
        )
    saved = _C10dGlobals.capture()
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()
        saved.restore()


@dataclass(frozen=True)
class _C10dGlobals:
    """What ``init_process_group`` changes beyond the group registries (which
    ``destroy_process_group`` empties): it wraps ``sys.excepthook`` in a ``[rankN]:`` prefixer
    that calls the previous hook — never unwrapped, so W fake worlds stack W wrappers and a
    later traceback recurses — and it sets c10d's module-level backend and init method."""

    excepthook: Any
    backend: Any
    init_method: Any

    @classmethod
    def capture(cls) -> _C10dGlobals:
        return cls(
            sys.excepthook,
            getattr(c10d, "_backend", None),
            getattr(c10d, "_default_pg_init_method", None),
        )

    def restore(self) -> None:
        sys.excepthook = self.excepthook
        c10d._backend = self.backend
        c10d._default_pg_init_method = self.init_method


@dataclass(frozen=True)
class _LoggingState:
    """Level, handlers, propagation and disabled flag of every logger that exists now, and the
    global ``logging.disable`` level (torch configures loggers as a side effect of some calls)."""

    loggers: tuple[tuple[logging.Logger, int, tuple[logging.Handler, ...], bool, bool], ...]
    disable: int

    @classmethod
    def capture(cls) -> _LoggingState:
        found = [
            logging.getLogger(),
            *(
                lg
                for lg in list(logging.root.manager.loggerDict.values())
                if isinstance(lg, logging.Logger)
            ),
        ]
        return cls(
            tuple((lg, lg.level, tuple(lg.handlers), lg.propagate, lg.disabled) for lg in found),
            logging.root.manager.disable,
        )

    def restore(self) -> None:
        for lg, level, handlers, propagate, disabled in self.loggers:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
        logging.disable(self.disable)


def clear_dtensor_caches() -> None:
    """Forget DTensor's sharding-propagation caches (the Python one and the C++ dispatch fast
    path's), with torch's own helper. Their entries are keyed by ``DeviceMesh`` equality, which
    ignores the rank and the process group: left behind, they would hand a later job's DTensor
    ops the mesh of a simulated rank (whose groups no longer exist). They are pure caches, so
    clearing them only costs recomputation."""
    if _clear_sharding_prop_cache is not None:
        _clear_sharding_prop_cache()


@contextmanager
def process_as_found() -> Iterator[None]:
    """Run a simulation and leave the process as it was: c10d globals and ``sys.excepthook``,
    logging configuration, and DTensor's caches (filled with the fake worlds' meshes)."""
    c10d_globals, logging_state = _C10dGlobals.capture(), _LoggingState.capture()
    try:
        yield
    finally:
        clear_dtensor_caches()
        logging_state.restore()
        c10d_globals.restore()


_F = TypeVar("_F", bound=Callable[..., Any])


def leaves_process_as_found(fn: _F) -> _F:
    """Decorator form of :func:`process_as_found` for the simulation entry points."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with process_as_found():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def mesh_device_type(device: str) -> str:
    """The DeviceMesh device type for a scenario device ('meta' tensors live on a cpu mesh)."""
    dev = device.split(":")[0]
    return "cpu" if dev == "meta" else dev


def rank_mesh(mesh: Any, rank: int, cache: dict[int, Any]) -> Any:
    """``mesh`` as seen from ``rank`` (must be called inside ``fake_world(rank, ...)``)."""
    key = id(mesh)
    if key not in cache:
        fresh = DeviceMesh(
            mesh.device_type,
            _layout=mesh._layout,
            _rank_map=mesh._rank_map,
            mesh_dim_names=mesh.mesh_dim_names,
            _root_mesh=getattr(mesh, "_root_mesh", None),
            _init_backend=False,
            _rank=rank,
        )
        fresh._dim_group_names = list(getattr(mesh, "_dim_group_names", []))
        cache[key] = fresh
    return cache[key]


def expected_coordinate(mesh: Any, rank: int) -> tuple[int, ...] | None:
    """Coordinate of ``rank`` in ``mesh`` computed from the mesh tensor alone."""
    return DeviceMesh._compute_coordinates_from_mesh(mesh.mesh, rank)


def map_state_dict(obj: Any, fn: Any) -> Any:
    """``obj`` (a state dict, nested or flat) with every leaf replaced by ``fn(leaf)``; dicts,
    lists and plain tuples are rebuilt, named tuples and everything else are leaves."""
    if isinstance(obj, dict):
        return type(obj)((k, map_state_dict(v, fn)) for k, v in obj.items())
    if isinstance(obj, list):
        return [map_state_dict(v, fn) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(map_state_dict(v, fn) for v in obj)
    return fn(obj)


def rebind_to_rank(obj: Any, rank: int, cache: dict[int, Any] | None = None) -> tuple[Any, int]:
    """Return ``obj`` (a state dict, nested or flat) with every DTensor on rank ``rank``'s mesh.

    Returns the new object and how many DTensors had to be rebound.
    """

    cache = {} if cache is None else cache
    count = 0

    def fix(value: Any) -> Any:
        nonlocal count
        if isinstance(value, DTensor):
            mesh = value.device_mesh
            want = expected_coordinate(mesh, rank)
            if mesh.get_coordinate() == want:
                return value
            count += 1
            spec = value._spec
            new_spec = DTensorSpec(
                rank_mesh(mesh, rank, cache), spec.placements, tensor_meta=spec.tensor_meta
            )
            return DTensor(value._local_tensor, new_spec, requires_grad=value.requires_grad)
        return value

    return map_state_dict(obj, fix), count
