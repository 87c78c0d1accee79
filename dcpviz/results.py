"""Results: a trace plus the tables derived from it (computed on first access)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from . import load_tables, tables
from .hints import Hint, compute_hints, hints_table
from .trace import LoadTrace, SaveTrace, read_trace, write_trace


class _Result:
    """What both result kinds share: the trace, its scenario, errors, JSON."""

    kind = ""

    def __init__(self, trace: Any, metadata: Any = None) -> None:
        self.trace = trace
        self._metadata = metadata

    @property
    def scenario(self):
        return self.trace.scenario

    @property
    def errors(self) -> list[str]:
        return [str(e) for e in self.trace.errors]

    @property
    def ok(self) -> bool:
        return not self.trace.errors

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        return write_trace(self.trace, path)


class SaveResult(_Result):
    """What a save planner did, on every rank. Tables are pandas DataFrames:

    ``write_items`` every local-plan item (``kept`` after dedup) · ``dedup`` each index planned by
    more than one rank · ``rank_volume`` bytes per rank after dedup · ``chunks`` the checkpoint
    metadata with writer ranks · ``metadata`` DCP's Metadata · ``errors`` planner errors.
    """

    kind = "save"
    trace: SaveTrace


    # -- tables ----------------------------------------------------------------------------
    @cached_property
    def write_items(self) -> pd.DataFrame:
        return tables.write_items(self.trace)

    @cached_property
    def dedup(self) -> pd.DataFrame:
        return tables.dedup(self.trace)

    @cached_property
    def rank_volume(self) -> pd.DataFrame:
        return tables.rank_volume(self.trace)

    @cached_property
    def chunks(self) -> pd.DataFrame:
        return tables.chunks(self.trace)

    @cached_property
    def summary(self) -> dict[str, Any]:
        return tables.summary(self.trace)

    @cached_property
    def tensors(self) -> pd.DataFrame:
        """One row per checkpoint entry: shape, dtype, chunks, bytes, placements."""
        return tables.tensors(self.trace)

    @cached_property
    def tensor_groups(self) -> pd.DataFrame:
        """Entries that differ only by layer number and are sharded alike, one row each."""
        return tables.tensor_groups(self.trace)

    def volume_by_module(self, depth: int = 1) -> pd.DataFrame:
        return tables.volume_by_module(self.trace, depth)

    @cached_property
    def volume_by_component(self) -> pd.DataFrame:
        """Bytes each rank writes per training-state component (model, optim, lr_scheduler, ...)."""
        return tables.volume_by_component(self.trace)

    @cached_property
    def phase_changes(self) -> pd.DataFrame:
        """What the global plan (dedup) and finish_plan changed, item by item."""
        return tables.phase_changes(self.trace)

    @cached_property
    def phase_volume(self) -> pd.DataFrame:
        """Items and bytes per rank after each phase (local, global, final)."""
        return tables.phase_volume(self.trace)

    @cached_property
    def storage(self) -> pd.DataFrame:
        """fqn, offsets, file, offset, length, rank: where bytes were really written (empty for
        a simulation, which writes nothing)."""
        return tables.storage(self.trace)

    @cached_property
    def files(self) -> pd.DataFrame:
        """file, rank, items, nbytes: each data file DCP wrote (empty for a simulation)."""
        return tables.files(self.trace)

    @cached_property
    def storage_volume(self) -> pd.DataFrame:
        """rank, files, items, nbytes: bytes each rank really stored (zeros for a simulation)."""
        return tables.storage_volume(self.trace)

    # -- facts -----------------------------------------------------------------------------
    # Set by run_save: backend, pids, port, wall time of the real processes (not in the trace:
    # they mean nothing once the processes are gone).
    run_info: Any = None

    @property
    def metadata(self):
        """DCP's Metadata: the object DCP built, or one rebuilt from the trace's facts."""
        if self._metadata is None and self.trace.metadata is not None:
            from .engine.convert import torch_metadata

            self._metadata = torch_metadata(self.trace.metadata)
        return self._metadata

    def _repr_html_(self) -> str:
        from .report import summary_rows

        rows = "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in summary_rows(self.summary))
        errors = "".join(f"<div style='color:#b00020'>{e}</div>" for e in self.errors)
        return f"<div><b>dcpviz SaveResult</b><table>{rows}</table>{errors}</div>"

    def __repr__(self) -> str:
        s = self.summary
        status = "valid" if s["validated"] else f"{s['errors']} error(s)"
        return (
            f"<SaveResult {s['model']} {s['recipe']} W={s['world_size']} mesh={s['mesh']}: "
            f"{s['items_planned']} items planned, {s['items_written']} written, "
            f"imbalance {s['imbalance']:.2f}, {status}>"
        )


class LoadResult(_Result):
    """What a load planner did against a checkpoint, on every rank of the target layout.

    Tables are pandas DataFrames: ``read_items`` every read of every rank (which box of which
    saved chunk, written by which rank, in which file) · ``rank_volume`` reads and bytes per
    rank · ``resharding`` target rank x writer rank (x file) · ``mismatches`` every key or
    tensor the target and checkpoint disagree on, every rank, with DCP's own message · ``hints``
    likely causes and their fixes · ``errors`` what the planner raised.
    """

    kind = "load"
    trace: LoadTrace


    # -- tables ----------------------------------------------------------------------------
    @cached_property
    def read_items(self) -> pd.DataFrame:
        return load_tables.read_items(self.trace)

    @cached_property
    def rank_volume(self) -> pd.DataFrame:
        return load_tables.rank_volume(self.trace, self.read_items)

    @cached_property
    def resharding(self) -> pd.DataFrame:
        return load_tables.resharding(self.trace, self.read_items)

    def resharding_matrix(self, by: str = "writer_rank", values: str = "nbytes") -> pd.DataFrame:
        """Target rank x ``by`` ('writer_rank', or 'file' when the checkpoint is on disk) ->
        ``values`` ('nbytes', 'reads' or 'chunk_nbytes')."""
        return load_tables.resharding_matrix(self.trace, by, values, self.read_items)

    @cached_property
    def mismatches(self) -> pd.DataFrame:
        return load_tables.mismatches(self.trace)

    @cached_property
    def hints(self) -> list[Hint]:
        """Likely causes of the mismatches, most likely first, each with its fix."""
        return compute_hints(self.trace)

    @cached_property
    def hints_table(self) -> pd.DataFrame:
        """``hints`` as a DataFrame: kind, title, detail, fix, keys (count), mapping."""
        return hints_table(self.hints)

    @cached_property
    def summary(self) -> dict[str, Any]:
        return load_tables.summary(self.trace, self.read_items)

    # -- facts -----------------------------------------------------------------------------
    @property
    def metadata(self):
        """The checkpoint's DCP Metadata the load was planned against."""
        if self._metadata is None:
            from .engine.convert import torch_metadata

            self._metadata = torch_metadata(self.trace.saved)
        return self._metadata

    def __repr__(self) -> str:
        s = self.summary
        kinds = ", ".join(f"{n} {k}" for k, n in s["mismatch_keys"].items()) or "no mismatches"
        status = "ok" if s["ok"] else f"{s['errors']} error(s)"
        return (
            f"<LoadResult {s['model']} {s['recipe']} W={s['world_size']} mesh={s['mesh']}: "
            f"{s['reads']} reads ({s['plans']} plans), {kinds}, {status}>"
        )


def load_trace(path: str | os.PathLike[str]) -> SaveResult | LoadResult:
    """Open a trace written by ``result.to_json``, the CLI, or a recording planner."""
    trace = read_trace(path)
    return SaveResult(trace) if isinstance(trace, SaveTrace) else LoadResult(trace)
