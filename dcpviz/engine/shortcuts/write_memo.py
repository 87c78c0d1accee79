"""Save planning at scale: DCP's WriteItems for one DTensor reused for another key with the same layout.

``create_default_local_save_plan`` calls ``_create_write_items(fqn, obj)`` once per key. For a
DTensor (exactly ``DTensor``, not a subclass) that call reads, besides ``fqn``:

- the DTensor's class (``__create_write_items__``) and its spec: ``shape``, ``size()``,
  ``device_mesh`` (its shape and this rank's coordinate) and ``placements`` all come from
  ``_spec`` (``_raise_if_contains_partial_placements`` too);
- its local tensor (``hasattr(_local_tensor, "__create_write_items__")``; ``to_local()`` is the
  local tensor under ``no_grad``, a view of it with the DTensor's ``requires_grad`` otherwise;
  ``TensorProperties.create_from_tensor`` reads its dtype, layout, requires_grad, pinning).

and puts ``fqn`` in one place: ``WriteItem.index.fqn``. So two keys whose DTensors hold the
*same* spec object and the *same* local tensor object (``fastpath.TemplateView`` builds a rank's
80 layers that way), with the same ``requires_grad`` and grad mode, get the same WriteItems but
for that name. The memo hands out DCP's WriteItems of the first such key, renamed; they share
the first key's ``tensor_data`` (frozen; DCP's coordinator copies what it keeps, never mutates).

Checked, not assumed: the second key of every group is planned by DCP as well and compared
field by field (``MetadataIndex.index`` included); any difference turns the memo off for the
rest of the simulation. The memo is active only inside one rank's ``create_local_plan`` of
``DefaultSavePlanner`` itself (``simulate_save``), forgets everything after it (the spec and
local tensor it keys on are held while it remembers them, so their ids stay unique), and
is not used when ``default_planner._create_write_items`` is not DCP's own function.
``tests/test_save_shortcuts.py`` compares it with DCP's plain local plans on many layouts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.distributed.checkpoint import default_planner, planner_helpers
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import WriteItem
from torch.distributed.tensor import DTensor

from dcpviz.engine.shortcuts.guards import is_dcp_function, patched


def write_fields(wi: Any) -> tuple:
    """Every field of a WriteItem (``MetadataIndex.index`` is left out of ``==``, not here)."""
    return (wi, type(wi), wi.index.fqn, wi.index.offset, wi.index.index)


def _with_name(index: MetadataIndex, fqn: str) -> MetadataIndex:
    """``MetadataIndex(fqn, index.offset, index.index)``: its ``__init__`` would only copy the
    (already ``torch.Size``) offset into a new ``torch.Size``; the state is set directly."""
    new = object.__new__(MetadataIndex)
    state = new.__dict__
    state.update(index.__dict__)
    state["fqn"] = fqn
    return new


def renamed(items: list, fqn: str) -> list:
    """``items`` as DCP makes them for key ``fqn``: only ``index.fqn`` differs; the rest
    (``tensor_data``, ``type``, ``bytes_io_data``, ``index.offset``/``index.index``) is shared.
    (WriteItem is a frozen dataclass whose ``__init__`` only sets its fields.)"""
    out = []
    for wi in items:
        new = object.__new__(WriteItem)
        state = new.__dict__
        state.update(wi.__dict__)
        state["index"] = _with_name(wi.index, fqn)
        out.append(new)
    return out


class WriteItemMemo:
    """DCP's ``_create_write_items`` for DTensors sharing spec and local tensor objects, asked
    once per group and checked on the group's second key (see the module docstring)."""

    def __init__(self, on: bool = True) -> None:
        self.on = on
        self.hits = 0
        self.checks = 0
        self._memo: dict[tuple, list] = {}  # key -> [spec, local, first fqn, items, checked]

    def write_items(self, original: Callable[[str, Any], list], fqn: str, obj: Any) -> list:
        """What DCP's ``_create_write_items(fqn, obj)`` returns, the cheapest exact way."""
        if not self.on or type(obj) is not DTensor:
            return original(fqn, obj)
        spec, local = obj._spec, obj._local_tensor
        key = (id(spec), id(local), obj.requires_grad, torch.is_grad_enabled())
        hit = self._memo.get(key)
        if hit is None:
            items = original(fqn, obj)
            if all(type(wi) is WriteItem and wi.index.fqn == fqn for wi in items):
                self._memo[key] = [spec, local, fqn, items, False]
            return items
        _spec, _local, first_fqn, first_items, checked = hit
        try:
            same = renamed(first_items, fqn)
        except Exception:  # WriteItem no longer built as this memo assumes: DCP decides alone
            self.on = False
            self._memo.clear()
            return original(fqn, obj)
        if not checked:
            planned = original(fqn, obj)
            self.checks += 1
            if [write_fields(wi) for wi in planned] != [write_fields(wi) for wi in same]:
                self.on = False  # DCP's write planning is not what this memo assumes
                self._memo.clear()
                return planned
            hit[4] = True
            return planned
        self.hits += 1
        return same

    @contextmanager
    def active(self) -> Iterator[bool]:
        """While inside, ``default_planner._create_write_items`` (what DefaultSavePlanner's
        ``create_local_plan`` calls per key) goes through the memo; on leaving, the memo forgets
        its groups. Yields False and changes nothing when the helper is not DCP's own."""
        original = default_planner._create_write_items
        if (
            not self.on
            or original is not planner_helpers._create_write_items
            or not is_dcp_function(original, "_create_write_items")
        ):
            yield False
            return

        def _create_write_items(fqn: str, object: Any) -> list:  # noqa: A002 - DCP's own parameter name
            return self.write_items(original, fqn, object)

        try:
            with patched((default_planner, "_create_write_items", _create_write_items)):
                yield True
        finally:
            self._memo.clear()
