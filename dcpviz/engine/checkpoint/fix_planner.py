"""Fixes for a load that does not go through, as code a user runs in their own job.

``RenamingLoadPlanner``: DCP's ``DefaultLoadPlanner`` that renames the target's keys to the
checkpoint's before DCP plans — every prefix and rename a load's hints found, at once. DCP's
planner matches the target's flattened keys with the checkpoint's metadata keys by name
(``create_default_local_load_plan``), so renaming the flattened state dict is all it takes; the
values are the same objects, so tensors still load in place into the model, and BYTE_IO values
land at their original place in the user's nested dict (the flatten mapping is renamed too).
Module-level and plain-data, so it pickles into ``run_load``'s workers.

It also loads tensors whose shape changed (a grown vocabulary), which DCP alone cannot: for
each ``resized`` key, DCP's own read planning (``create_read_items_for_chunk_list``) of the box
the rank's shard shares with the saved tensor, read straight into that part of the shard; the
rest keeps its values. ``load_resized`` does that for a few keys alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    create_default_local_load_plan,
)
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.tensor import DTensor

try:
    from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper
except ImportError:  # a private module: if a later torch moves it, no value is refused by type
    LocalShardsWrapper = ()  # isinstance(x, ()) is False

from dcpviz.core.errors import DcpvizError
from dcpviz.engine.checkpoint.reader import SafeFileSystemReader


class RenamingLoadPlanner(DefaultLoadPlanner):
    """A ``DefaultLoadPlanner`` that renames target keys ``{target key: checkpoint key}`` before
    DCP plans, and loads the ``resized`` target keys (named before the rename) at their saved
    shape: each rank reads the box its own shard shares with the saved tensor, straight into that
    part of its shard; the rest keep their values. Keys are the flattened keys DCP plans with, so
    it works on any nesting (``{"model": ..., "optim": ...}``). Usable as is:
    ``dcp.load(sd, checkpoint_id=..., planner=RenamingLoadPlanner(rename, resized=[...]))``.
    Keys not in ``rename`` keep their name."""

    def __init__(
        self,
        rename: Mapping[str, str] | None = None,
        *,
        resized: Iterable[str] = (),
        flatten_state_dict: bool = True,
        flatten_sharded_tensors: bool = True,
        allow_partial_load: bool = False,
    ) -> None:
        super().__init__(
            flatten_state_dict, flatten_sharded_tensors, allow_partial_load=allow_partial_load
        )
        self.rename = dict(sorted((str(k), str(v)) for k, v in (rename or {}).items()))
        self.resized = tuple(sorted(str(k) for k in resized))
        # What this planner fixes, as one plain-text option: a load trace records it, so the next
        # round's fix planner adds to it (dcpviz.analysis.load.fix.previous_fix).
        self.fix_spec = json.dumps(
            {"rename": sorted(self.rename.items()), "resized": list(self.resized)}
        )
        self._boxes: dict[str, tuple[Any, tuple[int, ...], tuple[int, ...]]] = {}

    def set_up_planner(
        self, state_dict: Any, metadata: Any = None, is_coordinator: bool = False
    ) -> None:
        """DCP's set up, then the flattened keys (and their place in the nested dict) renamed, and
        the resized keys taken aside."""
        super().set_up_planner(state_dict, metadata, is_coordinator)
        renamed = {self.rename.get(k, k): v for k, v in self.state_dict.items()}
        if len(renamed) != len(self.state_dict):
            raise DcpvizError(
                "RenamingLoadPlanner: the rename maps two target keys onto one checkpoint key "
                f"({_collisions(self.state_dict, self.rename)}). Each target key needs its own checkpoint key."
            )
        if self.mappings:
            self.mappings = {self.rename.get(k, k): v for k, v in self.mappings.items()}
        self._boxes = {}
        for key in self.resized:
            new = self.rename.get(key, key)
            if new not in renamed:
                raise DcpvizError(
                    f"RenamingLoadPlanner: resized key {key!r} is not in the state dict. "
                    "Name resized keys as the state dict's flattened keys (before the rename)."
                )
            self._boxes[new] = _resized_box(key, new, renamed.pop(new), metadata)
        self.state_dict = renamed

    def create_local_plan(self) -> LoadPlan:
        """DCP's own local plan of the renamed keys (``create_default_local_load_plan``), plus, for
        each resized key, DCP's own reads (``create_read_items_for_chunk_list``) of the box this
        rank's shard shares with the saved tensor. DefaultLoadPlanner's pre-2.4 key fallback is
        not run: it would re-flatten the user's dict and undo the rename."""
        plan = create_default_local_load_plan(
            self.state_dict, self.metadata, not self.allow_partial_load
        )
        items = list(plan.items)
        for key, (_, offsets, sizes) in sorted(self._boxes.items()):
            if all(s > 0 for s in sizes):
                md = self.metadata.state_dict_metadata[key]
                items += create_read_items_for_chunk_list(
                    key,
                    md,
                    [ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))],
                )
        return LoadPlan(items, plan.storage_data, plan.planner_data)

    def lookup_tensor(self, index: Any) -> Any:
        """A resized key's shared box of this rank's shard; else DCP's own lookup."""
        box = self._boxes.get(index.fqn)
        if box is not None:
            return box[0]
        return super().lookup_tensor(index)

    def __repr__(self) -> str:
        return (
            f"RenamingLoadPlanner({len(self.rename)} renamed keys, {len(self.resized)} resized, "
            f"allow_partial_load={self.allow_partial_load})"
        )


def _resized_box(
    key: str, new: str, value: Any, metadata: Any
) -> tuple[Any, tuple[int, ...], tuple[int, ...]]:
    """(view of this rank's local tensor on the box it shares with the saved tensor, the box's
    global offsets, its sizes), for the resized target key ``key`` (checkpoint key ``new``)."""
    name = repr(key) if key == new else f"{key!r} (checkpoint key {new!r})"
    md = metadata.state_dict_metadata.get(new) if metadata is not None else None
    if not isinstance(value, torch.Tensor) or not hasattr(md, "size"):
        raise DcpvizError(
            f"RenamingLoadPlanner: resized key {name} must be a tensor in both the state dict "
            "and the checkpoint."
        )
    wrapped = value.to_local() if isinstance(value, DTensor) else value
    if isinstance(wrapped, LocalShardsWrapper):
        what = "a DTensor whose local tensor is" if wrapped is not value else "a tensor that is"
        raise DcpvizError(
            f"RenamingLoadPlanner: resized key {name} is {what} a LocalShardsWrapper "
            "(torchrec-style sharding), which a resized load cannot read into (its shards cannot "
            "be sliced). For the load, pass it as a DTensor with a plain local tensor (Shard or "
            "Replicate placements), or leave it out of `resized`, load a tensor of its saved shape "
            "and copy that into yours."
        )
    saved = tuple(int(v) for v in md.size)
    local, offsets, sizes = _local_box(value)
    if len(saved) != len(sizes):
        raise DcpvizError(
            f"RenamingLoadPlanner: {name} was saved with {len(saved)} dims, the target has {len(sizes)}."
        )
    box = _overlap(saved, offsets, sizes)
    if box is None:
        return local[tuple(slice(0, 0) for _ in sizes)], offsets, (0,) * len(sizes)
    glob, loc = box
    view = local[loc]
    return view, tuple(g.start for g in glob), tuple(g.stop - g.start for g in glob)


def _collisions(state_dict: Mapping[str, Any], rename: Mapping[str, str]) -> str:
    seen: dict[str, str] = {}
    for k in state_dict:
        new = rename.get(k, k)
        if new in seen:
            return f"{seen[new]!r} and {k!r} -> {new!r}"
        seen[new] = k
    return "?"


def _overlap(
    a: tuple[int, ...], offsets: tuple[int, ...], sizes: tuple[int, ...]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
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
        chunks = t.__create_chunk_list__()
        if len(chunks) != 1:  # this rank holds nothing of it
            return t.to_local(), (0,) * t.dim(), (0,) * t.dim()
        return t.to_local(), tuple(chunks[0].offsets), tuple(chunks[0].sizes)
    return t, (0,) * t.dim(), tuple(t.shape)


def load_resized(
    state_dict: Mapping[str, Any],
    checkpoint_id: str | os.PathLike[str],
    keys: Iterable[str],
    *,
    rename: Mapping[str, str] | None = None,
    storage_reader: Any = None,
) -> dict[str, tuple[int, ...]]:
    """Load only the tensors whose shape changed since the save: for each of ``keys`` (the
    flattened keys DCP plans with, e.g. ``model.tok_embeddings.weight`` in a ``{"model": ...}``
    state), every rank reads the box its own shard shares with the saved tensor into that part of
    its shard; elements outside the saved shape (new vocabulary rows) keep their values.
    ``state_dict`` is the state as passed to ``dcp.load`` (flat or nested); ``rename``: target key
    -> checkpoint key where the names differ. Call it on every rank. Reads ``.metadata`` with
    dcpviz's restricted unpickler by default. Returns ``{key: saved shape}``. (Simpler: one
    ``dcp.load(sd, planner=RenamingLoadPlanner(rename, resized=keys))`` loads everything.)"""
    keys = sorted(set(keys))
    rename = dict(rename or {})
    flat, _ = flatten_state_dict(dict(state_dict))
    reader = storage_reader or SafeFileSystemReader(checkpoint_id)
    saved = reader.read_metadata().state_dict_metadata
    shapes: dict[str, tuple[int, ...]] = {}
    for key in keys:
        src = rename.get(key, key)
        if key not in flat or src not in saved or not hasattr(saved[src], "size"):
            where = (
                "the state dict (its flattened keys)"
                if key not in flat
                else "the checkpoint (as a tensor)"
            )
            raise DcpvizError(
                f"load_resized: {key!r} is not in {where}. Pass the keys the size hint names."
            )
        shapes[key] = tuple(int(v) for v in saved[src].size)
    sub = {k: flat[k] for k in keys}
    dcp.load(
        sub,
        storage_reader=storage_reader or SafeFileSystemReader(checkpoint_id),
        planner=RenamingLoadPlanner({k: rename[k] for k in keys if k in rename}, resized=keys),
    )
    return shapes
