"""The user's own code named on the command line: ``pkg.module:function`` for a model factory or
a recipe. Names read from a trace or a checkpoint are never resolved here (a trace is data)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from dcpviz.core.errors import DcpvizError

CALLABLE_PREFIX = (
    "callable:"  # how engine.job.models.model_name / recipes.recipe_name name a callable
)


def resolve_spec(value: Any, flag: str) -> Any:
    """A preset name as it is; ``pkg.module:function`` imported (the current directory is on the
    path, as for ``python -m``)."""
    if not isinstance(value, str) or ":" not in value or value.startswith(CALLABLE_PREFIX):
        return value
    module_name, _, attr = value.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise DcpvizError(
            f"{flag} {value}: cannot import {module_name!r} ({exc}). Run from the directory "
            "that holds the package, or install it."
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DcpvizError(f"{flag} {value}: {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DcpvizError(f"{flag} {value}: {attr!r} is not callable.")
    return obj
