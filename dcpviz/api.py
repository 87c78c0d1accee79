"""The public entry points: each runs a source (which returns a trace) and wraps what it
returns in a result. Sources never see result objects; a result argument is unwrapped here."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

from dcpviz.analysis.checkpoint.hf_tables import hf_checkpoint_info
from dcpviz.analysis.checkpoint.tables import CheckpointInfo, checkpoint_info
from dcpviz.analysis.diff.tables import pairing
from dcpviz.core.errors import DcpvizError
from dcpviz.core.hf.folder import is_hf_folder, scan_folder
from dcpviz.engine.checkpoint.reader import read_checkpoint
from dcpviz.engine.checkpoint.saved import SavedTrace
from dcpviz.engine.diff.source import open_side
from dcpviz.engine.diff.values import compare_sides
from dcpviz.engine.job.scenario import Scenario
from dcpviz.engine.run.launch import DEFAULT_TIMEOUT_S
from dcpviz.engine.run.load import run_load_trace
from dcpviz.engine.run.save import run_save_trace
from dcpviz.engine.simulate.load import plan_load
from dcpviz.engine.simulate.save import plan_save
from dcpviz.results import LoadResult, SaveResult
from dcpviz.results_diff import DiffResult


def _as_source(value: Any) -> Any:
    """A result handed to a source becomes its trace plus the Metadata object it carries."""
    if isinstance(value, (SaveResult, LoadResult)):
        return SavedTrace(value.trace, value._metadata, f"<{type(value).__name__}>")
    return value


def simulate_save(
    scenario: Scenario,
    planner: Any = None,
    *,
    progress: bool | None = None,
    fast: bool | None = None,
    storage_writer: Any = None,
) -> SaveResult:
    """Plan a save of ``scenario`` with DCP's real planner on every rank; return a SaveResult.

    ``planner``: a SavePlanner instance (copied per rank), class, or factory; default
    ``DefaultSavePlanner()``. ``fast``: None (default) uses the exact shortcuts of
    ``engine.shortcuts.fastpath`` where they apply (named recipes, DCP's default planner); True also
    trusts a callable recipe to be SPMD (checked on sample ranks); False runs the recipe and
    the planner on every rank. ``storage_writer``: a StorageWriter (``FileSystemWriter``,
    ``HuggingFaceStorageWriter``, ...) whose own planning steps run as dcp.save calls them,
    writing nothing; ``file_plan`` and ``files`` then show what each rank writes where.
    """
    trace, metadata = plan_save(
        scenario, planner, progress=progress, fast=fast, storage_writer=storage_writer
    )
    return SaveResult(trace, metadata=metadata)


def simulate_load(
    saved: Any,
    target: Scenario,
    planner: Any = None,
    *,
    progress: bool | None = None,
    fast: bool | None = None,
    expected_unused: Iterable[str] = (),
    key_map: Any = None,
) -> LoadResult:
    """Plan loading ``saved`` into ``target`` with DCP's real load planner on every target rank.

    ``saved``: a SaveResult, a save-trace file, a checkpoint directory (only its metadata is
    read, safely) or DCP Metadata. ``target``: a dcpviz.Scenario. ``planner``: None
    (``DefaultLoadPlanner()``), a LoadPlanner instance (deep-copied per rank), class or factory.
    ``fast``: as in simulate_save — the shortcuts of ``engine.shortcuts.fastpath`` (one recipe run, one
    plan per class of ranks, memoised offsets) where they are exact; False plans every rank.
    ``expected_unused``: checkpoint keys (or glob patterns, ``"optim.*"``) left unread on
    purpose; they are no longer shown as problems. Returns a LoadResult; planner failures are
    in its ``errors`` and ``mismatches``.

    A Hugging Face safetensors folder is planned against DCP's HuggingFaceStorageReader's own
    metadata (headers only, each validated first); ``key_map`` ({hf_name: model_name} or a
    callable) renames its keys as a state-dict adapter would (one-to-one, or a DcpvizError).
    """
    quantized: dict[str, str] = {}
    if isinstance(saved, (str, os.PathLike)) and is_hf_folder(saved):
        from dcpviz.engine.storage.hf_load import (  # torch: DCP's HF reader
            hf_saved,
            quantized_unread,
        )

        quantized = quantized_unread(saved, key_map)
        saved = hf_saved(saved, key_map)
    elif key_map is not None:
        raise DcpvizError(
            "key_map applies to a Hugging Face safetensors folder; for a DCP checkpoint use "
            "load.fix_planner(rename=...) or a RenamingLoadPlanner."
        )
    trace, metadata = plan_load(_as_source(saved), target, planner, progress=progress, fast=fast)
    trace = _with_quantized(trace, quantized)
    return LoadResult(_with_expected_unused(trace, expected_unused), metadata=metadata)


def _with_quantized(trace: Any, quantized: dict[str, str]) -> Any:
    """A folder's quantized companions that the load leaves unread are expected (``expected``
    rows, not unread data), with a note saying which and why."""
    unread = sorted(
        {m.fqn for m in trace.mismatches if m.kind == "unexpected" and m.fqn in quantized}
    )
    if not unread:
        return trace
    kinds = sorted({quantized[k] for k in unread})
    note = (
        f"{len(unread)} quantized companion key(s) ({', '.join(kinds)}: {', '.join(unread[:3])}"
        f"{', ...' if len(unread) > 3 else ''}) stay unread, as expected for a model holding "
        "dequantized weights: DCP's QuantizedHuggingFaceStorageReader uses them to dequantize."
    )
    return dataclasses.replace(
        trace,
        expected_unused=tuple(trace.expected_unused) + tuple(unread),
        notes=tuple(trace.notes) + (note,),
    )


def _with_expected_unused(trace: Any, expected_unused: Iterable[str]) -> Any:
    if isinstance(expected_unused, str):
        expected_unused = (expected_unused,)
    keys = tuple(str(k) for k in expected_unused)
    return (
        dataclasses.replace(trace, expected_unused=tuple(trace.expected_unused) + keys)
        if keys
        else trace
    )


def run_save(
    scenario: Scenario,
    checkpoint_dir: str | os.PathLike[str],
    planner: Any = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    start_method: str = "spawn",
    progress: bool | None = None,
    storage_writer: Any = None,
) -> SaveResult:
    """Save ``scenario`` for real: ``world_size`` processes (gloo on CPU; nccl when
    ``scenario.device == 'cuda'``), ``dcp.save`` into ``checkpoint_dir`` (new or empty) through
    a RecordingSavePlanner. Returns a SaveResult: the plans (same tables as simulate_save) plus
    ``storage``, ``files`` and ``storage_volume`` from the checkpoint written, and ``run_info``.
    A worker that raises, dies or times out gives a result whose ``errors`` name the rank; all
    processes are stopped and the port freed whatever happens (also on Ctrl-C). ``progress``: a
    bar of ranks done and the phase each other rank is in (None: once the run has lasted 5 s)."""
    trace, metadata, info = run_save_trace(
        scenario,
        checkpoint_dir,
        planner,
        timeout=timeout,
        start_method=start_method,
        progress=progress,
        storage_writer=storage_writer,
    )
    result = SaveResult(trace, metadata=metadata)
    result.run_info = info
    return result


def run_load(
    checkpoint_dir: str | os.PathLike[str],
    target_scenario: Scenario,
    planner: Any = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    start_method: str = "spawn",
    expected_unused: Iterable[str] = (),
    progress: bool | None = None,
) -> LoadResult:
    """Load the checkpoint in ``checkpoint_dir`` into ``target_scenario`` with ``world_size`` real
    processes (gloo on CPU, nccl for device 'cuda'), through a RecordingLoadPlanner. Returns a
    LoadResult with the same tables as simulate_load (read items, mismatches, hints, volumes)
    and ``run_info`` (processes, per-rank phase times, digests of the chunks each rank loaded).
    A rank that fails (a missing key, a size mismatch) comes back in ``errors`` with its rank.
    ``expected_unused``: as in simulate_load. ``progress``: as in run_save."""
    trace, metadata, info = run_load_trace(
        checkpoint_dir,
        target_scenario,
        planner,
        timeout=timeout,
        start_method=start_method,
        progress=progress,
    )
    result = LoadResult(_with_expected_unused(trace, expected_unused), metadata=metadata)
    result.run_info = info
    return result


def inspect_checkpoint(
    checkpoint_dir: str | os.PathLike[str], *, verify: str = "headers"
) -> CheckpointInfo:
    """Read a DCP checkpoint directory without executing anything from it, and check it; return
    its chunks, storage records and files as tables (a CheckpointInfo).

    ``.metadata`` goes through the restricted unpickler; every storage record must point at a
    file inside the directory and lie within it; ``verify='headers'`` (default) checks each
    record is a torch.save archive of the chunk's exact size and every BYTE_IO value builds with
    torch's weights-only unpickler, ``'full'`` also checks every CRC, ``'none'`` skips record
    checks. Problems raise ``DcpvizError`` naming the entry and the file; nothing is written.

    A Hugging Face safetensors folder (or file) gives the same tables from its headers alone
    (an ``HFCheckpointInfo``: bounded, strict header parsing, no tensor data read, ``verify``
    unused); a header that cannot be read raises ``DcpvizError``.
    """
    if is_hf_folder(checkpoint_dir):
        return hf_checkpoint_info(scan_folder(checkpoint_dir))
    return checkpoint_info(read_checkpoint(checkpoint_dir, verify=verify))


def diff(a: Any, b: Any, values: bool = False, atol: float = 0.0, rtol: float = 0.0) -> DiffResult:
    """Compare two checkpoints: what changed between ``a`` and ``b``.

    ``a``/``b``: each a DCP checkpoint directory, a safetensors folder (or file), a save trace
    (.json) or a SaveResult, in any pairing. Keys only in one side, certain renames (and
    candidates where the evidence allows more than one), shape and dtype changes, and the
    layout (chunks, writer ranks, files, bytes; information only). ``values=True`` also compares
    the contents chunk by chunk, streamed from disk (about 2x the largest chunk in memory): a box
    of A against the overlapping boxes of B, exactly unless ``atol``/``rtol`` are given
    (|a-b| <= atol + rtol*|b|); bytes entries are compared as stored bytes, never unpickled.
    Returns a DiffResult: ``changes`` (the diff table), ``same``, ``exit_code`` and the details.
    """
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0:
            raise DcpvizError(f"{name}={tol!r} must be a number >= 0.")
    side_a, side_b = open_side(_as_source(a), "A"), open_side(_as_source(b), "B")
    found: tuple[list, list] = ([], [])
    if values:
        found = compare_sides(
            side_a, side_b, pairing(side_a, side_b).pairs, float(atol), float(rtol)
        )
    return DiffResult(
        side_a, side_b, *found, compared_values=bool(values), atol=float(atol), rtol=float(rtol)
    )
