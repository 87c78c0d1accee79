"""What every shortcut shares: the test that a function is still DCP's own (a shortcut changes
nothing where someone else replaced it), the test that a box holds plain ints, and ``patched``,
the one way a shortcut swaps a torch module global for the duration of a block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PLANNER_HELPERS = "torch.distributed.checkpoint.planner_helpers"
DEFAULT_PLANNER = "torch.distributed.checkpoint.default_planner"


def is_dcp_function(fn: Any, qualname: str, module: str = PLANNER_HELPERS) -> bool:
    """Whether ``fn`` is the function ``module.qualname`` as torch defines it (not a wrapper or
    a replacement someone else installed)."""
    return (
        getattr(fn, "__module__", None) == module and getattr(fn, "__qualname__", None) == qualname
    )


def plain_ints(values: Any, ndim: int) -> bool:
    """Whether ``values`` is ``ndim`` plain ints (no bool, no SymInt, no tensor)."""
    return len(values) == ndim and all(type(v) is int for v in values)


@contextmanager
def patched(*patches: tuple[Any, str, Any]) -> Iterator[None]:
    """While inside, each ``(owner, name, value)`` has ``owner.name`` set to ``value``; on leaving,
    however the block ends, every original is put back (in reverse order)."""
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)
