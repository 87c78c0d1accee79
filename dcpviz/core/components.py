"""Which part of a training state a saved key belongs to: ``model``, ``optim``, ``lr_scheduler``,
``dataloader``, ... (the first level of the saved state). No torch: tables use it on traces.

A source that sees the state dict records key prefixes (``state_components``) in the trace's
scenario; a trace without them (captured, inspected) falls back to the key's first segment when
it is a usual component name, else ``model``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KNOWN_COMPONENTS = frozenset(
    {
        "model",
        "optim",
        "optimizer",
        "lr_scheduler",
        "lr_schedulers",
        "dataloader",
        "data_loader",
        "train_state",
        "rng",
        "scheduler",
        "app",
    }
)


def state_components(state_dict: Mapping[str, Any], app_state: bool) -> tuple[tuple[str, str], ...]:
    """Key prefix -> component for the state dict DCP's planner sees (Statefuls already turned
    into their state dicts).

    Each top-level dict is a component of its own, except one that itself holds ``model`` /
    ``optim`` parts (the DCP tutorial's ``app``): its parts are the components ("app.model" ->
    "model"). Top-level non-dict values are the model's own keys when they are dotted FQNs
    ("tok_embeddings.weight": torchtitan puts the model at the top level; dotted keys are always
    the model's) and, for an app state (``app_state``), components of their own otherwise
    ("step", "rng_state"). A plain model state dict has no components recorded."""
    out: list[tuple[str, str]] = []
    for key, value in state_dict.items():
        key = str(key)
        if "." in key:
            continue  # a model FQN at the top level (torchtitan), whatever its value
        if isinstance(value, Mapping):
            inner = [str(k) for k in value]
            if key not in ("model", "optim") and {"model", "optim"} & set(inner):
                out += [(f"{key}.{k}", k) for k in inner]
            else:
                out.append((key, key))
        elif app_state and "." not in key:
            out.append((key, key))
    return tuple(out)


def captured_components(state_dict: Any) -> tuple[tuple[str, str], ...]:
    """Components of a state dict a recording planner sees: a training state (some top-level
    value is a dict) has them; a flat model state dict has none (everything is "model")."""
    if not isinstance(state_dict, Mapping):
        return ()
    if not any(isinstance(v, Mapping) and "." not in str(k) for k, v in state_dict.items()):
        return ()
    return state_components(state_dict, app_state=True)


def component_of(fqn: str, prefixes: Mapping[str, str]) -> str:
    """The component of a saved key: its longest recorded prefix; without one, its first segment
    when that is a usual component name, else "model"."""
    parts = fqn.split(".")
    for n in range(len(parts), 0, -1):
        hit = prefixes.get(".".join(parts[:n]))
        if hit is not None:
            return hit
    return parts[0] if parts[0] in KNOWN_COMPONENTS else "model"
