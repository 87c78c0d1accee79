"""No collectives under simulation: one process plays every rank with torch's fake process
group, which does not communicate. A collective a user's state callable (or a Stateful's
``state_dict``) calls there returns garbage — an ``all_gather_object`` list of this rank's own
value, an ``all_reduce`` that sums nothing, a ``broadcast_object_list`` that reads a size out of
an unfilled buffer and asks the allocator for terabytes. Such a value is not the one a real run
would save, so the simulation refuses it with a DcpvizError that names ``run_save`` instead of
reporting a loss that a real run does not have."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d
from torch.utils._python_dispatch import TorchDispatchMode

from dcpviz.core.errors import ScenarioError

# c10d's communicating calls (point-to-point included); get_rank / get_world_size stay usable.
COLLECTIVES = (
    "all_gather",
    "all_gather_coalesced",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_reduce",
    "all_reduce_coalesced",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "batch_isend_irecv",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "irecv",
    "isend",
    "monitored_barrier",
    "recv",
    "recv_object_list",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "send_object_list",
)


class CollectiveUnderSimulation(ScenarioError):
    """A user's state code called a collective while dcpviz simulated a rank."""


def _refuse(name: str, what: str) -> Any:
    where = name if "." in name else f"torch.distributed.{name}"

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise CollectiveUnderSimulation(
            f"{what} called {where}, a collective. Collectives cannot run under "
            "simulation: one process plays every rank over a fake process group that does not "
            "communicate, so the result would not be what a real job saves. Use "
            "dcpviz.run_save(scenario, checkpoint_dir) to run the scenario in real processes "
            "(its checks compare every rank's real values), or build the value without a collective."
        )

    refused.__name__ = name
    return refused


# The dispatcher's namespaces of communicating ops: functional collectives (DTensor.full_tensor,
# redistribute) and the process group's own ops, which the Python API above reaches too.
_COLLECTIVE_NAMESPACES = frozenset(
    {"_c10d_functional", "_c10d_functional_autograd", "c10d", "_dtensor"}
)
_LOCAL_OPS = frozenset({"wait_tensor"})  # waiting on an issued collective communicates nothing new


class _RefuseCollectiveOps(TorchDispatchMode):
    """Any communicating op reaching the dispatcher (a functional collective behind a DTensor's
    ``full_tensor()`` or ``redistribute``) raises, naming the op."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        op = getattr(func, "_schema", None)
        namespace = getattr(func, "namespace", "")
        name = getattr(getattr(func, "_overloadpacket", None), "__name__", str(op))
        if namespace in _COLLECTIVE_NAMESPACES and name not in _LOCAL_OPS:
            _refuse(
                f"{namespace}.{name} (e.g. behind DTensor.full_tensor or redistribute)", self.what
            )()
        return func(*args, **(kwargs or {}))


@contextmanager
def no_collectives(what: str) -> Iterator[None]:
    """For the block, every collective raises ``CollectiveUnderSimulation`` naming ``what`` (the
    user code running): c10d's Python API, and any communicating op at the dispatcher. Everything
    is put back afterwards, whatever happens."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for name in COLLECTIVES:
            for module in (dist, c10d):
                original = module.__dict__.get(name)
                if original is not None:
                    saved.append((module, name, original))
                    setattr(module, name, _refuse(name, what))
        with _RefuseCollectiveOps(what):
            yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)
