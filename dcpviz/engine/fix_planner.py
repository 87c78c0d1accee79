"""Fixes for a load that does not go through, as code a user runs in their own job.

``RenamingLoadPlanner``: DCP's ``DefaultLoadPlanner`` that renames the target's keys to the
checkpoint's before DCP plans — every prefix and rename a load's hints found, at once. DCP's
planner matches the target's flattened keys with the checkpoint's metadata keys by name
(``create_default_local_load_plan``), so renaming the flattened state dict is all it takes; the
values are the same objects, so tensors still load in place into the model, and BYTE_IO values
land at their original place in the user's nested dict (the flatten mapping is renamed too).
Module-level and plain-data, so it pickles into ``run_load``'s workers.

``load_resized``: what DCP cannot do — load a tensor whose shape changed (a grown vocabulary):
each rank reads the saved tensor at its saved shape and copies the overlapping box into its own
shard of the new (sharded) tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.tensor import DTensor

from dcpviz.core.errors import DcpvizError
from dcpviz.engine.checkpoint import SafeFileSystemReader


class RenamingLoadPlanner(DefaultLoadPlanner):
    """A ``DefaultLoadPlanner`` that renames target keys ``{target key: checkpoint key}`` before
    DCP plans. Usable as is: ``dcp.load(sd, checkpoint_id=..., planner=RenamingLoadPlanner(rename))``.
    Keys not in ``rename`` keep their name."""

    def __init__(self, rename: Mapping[str, str] | None = None, *, flatten_state_dict: bool = True,
                 flatten_sharded_tensors: bool = True, allow_partial_load: bool = False) -> None:
        super().__init__(flatten_state_dict, flatten_sharded_tensors, allow_partial_load=allow_partial_load)
        self.rename = dict(rename or {})

    def set_up_planner(self, state_dict: Any, metadata: Any = None, is_coordinator: bool = False) -> None:
        """DCP's set up, then the flattened keys (and their place in the nested dict) renamed."""
        super().set_up_planner(state_dict, metadata, is_coordinator)
        renamed = {self.rename.get(k, k): v for k, v in self.state_dict.items()}
        if len(renamed) != len(self.state_dict):
            raise DcpvizError(
                "RenamingLoadPlanner: the rename maps two target keys onto one checkpoint key "
                f"({_collisions(self.state_dict, self.rename)}). Each target key needs its own checkpoint key."
            )
        self.state_dict = renamed
        if self.mappings:
            self.mappings = {self.rename.get(k, k): v for k, v in self.mappings.items()}

    def __repr__(self) -> str:
        return f"RenamingLoadPlanner({len(self.rename)} renamed keys, allow_partial_load={self.allow_partial_load})"


def _collisions(state_dict: Mapping[str, Any], rename: Mapping[str, str]) -> str:
    seen: dict[str, str] = {}
    for k in state_dict:
        new = rename.get(k, k)
        if new in seen:
            return f"{seen[new]!r} and {k!r} -> {new!r}"
        seen[new] = k
    return "?"


def _overlap(a: tuple[int, ...], offsets: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """The box ``[0, a)`` ∩ ``[offsets, offsets + sizes)``, as (global slices, local slices)."""
    glob, loc = [], []
    for extent, off, size in zip(a, offsets, sizes):
        stop = min(extent, off + size)
        if stop <= off:
            return None
        glob.append(slice(off, stop))
        loc.append(slice(0, stop - off))
    return tuple(glob), tuple(loc)


def _local_box(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
    """(this rank's local tensor, its global offsets, its sizes): a DTensor's own shard (as DCP
    sees it, ``__create_chunk_list__``), or the whole of a plain tensor."""
    if isinstance(t, DTensor):
        (chunk,) = t.__create_chunk_list__()
        return t.to_local(), tuple(chunk.offsets), tuple(chunk.sizes)
    return t, (0,) * t.dim(), tuple(t.shape)


def load_resized(state_dict: Mapping[str, Any], checkpoint_id: str | os.PathLike[str], keys: Iterable[str], *,
                 storage_reader: Any = None) -> dict[str, tuple[int, ...]]:
    """Load tensors whose shape changed since the save: for each of ``keys``, every rank reads the
    saved tensor whole at its saved shape (``dcp.load`` into a plain tensor) and copies the box both
    shapes share into its own shard of ``state_dict[key]`` (a DTensor, or a plain tensor); elements
    outside the saved shape (new vocabulary rows) keep their values. Call it on every rank, after
    loading the other keys. Reads ``.metadata`` with dcpviz's restricted unpickler by default.
    Returns ``{key: saved shape}``."""
    keys = list(keys)
    reader = storage_reader or SafeFileSystemReader(checkpoint_id)
    saved = reader.read_metadata().state_dict_metadata
    shapes: dict[str, tuple[int, ...]] = {}
    for key in keys:
        if key not in state_dict or key not in saved or not hasattr(saved[key], "size"):
            where = "the state dict" if key not in state_dict else "the checkpoint (as a tensor)"
            raise DcpvizError(f"load_resized: {key!r} is not in {where}. Pass the keys the size hint names.")
        target = state_dict[key]
        shape = tuple(saved[key].size)
        if len(shape) != target.dim():
            raise DcpvizError(f"load_resized: {key!r} was saved with {len(shape)} dims, the target has {target.dim()}.")
        old = torch.empty(shape, dtype=target.dtype, device=_local_box(target)[0].device)
        dcp.load({key: old}, storage_reader=storage_reader or SafeFileSystemReader(checkpoint_id))
        local, offsets, sizes = _local_box(target)
        box = _overlap(shape, offsets, sizes)
        if box is not None:
            with torch.no_grad():
                local[box[1]].copy_(old[box[0]])
        shapes[key] = shape
    return shapes
