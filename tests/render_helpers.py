"""Render a result on every surface a user has: tables, checks, views, report, explorer (every
tab built), ``dcpviz show`` and ``dcpviz check``. Issue 20: a trace that passes validation
renders everywhere; tests call this on odd but valid traces and on fuzzed ones."""

from __future__ import annotations

import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import dcpviz
import dcpviz.views as V
from dcpviz.cli import main

SAVE_TABLES = (
    "write_items",
    "dedup",
    "rank_volume",
    "chunks",
    "tensors",
    "tensor_groups",
    "phase_changes",
    "phase_volume",
    "storage",
    "files",
    "storage_volume",
    "checks",
)
LOAD_TABLES = (
    "read_items",
    "rank_volume",
    "resharding",
    "mismatches",
    "hints",
    "hints_table",
    "checks",
)


def render_everywhere(result: Any, trace_path: Path, out_dir: Path) -> None:
    """Everything must work (no exception at all): a valid trace is renderable."""
    _ = result.summary, repr(result), result.errors
    for name in SAVE_TABLES if result.kind == "save" else LOAD_TABLES:
        getattr(result, name)
    if result.kind == "save":
        V.rank_volume(result)
        V.rank_volume(result, by="module")
        V.dedup(result)
        fqns = list(result.tensors["fqn"]) if len(result.tensors) else []
        if fqns:
            V.chunk_layout(result, fqns[0])
    else:
        V.read_volume(result)
        V.resharding(result)
        tensors = [t.fqn for t in result.trace.saved.tensors]
        if tensors:
            V.read_layout(result, tensors[0], 0)
    dcpviz.report(result, out_dir / "report.html")
    app = dcpviz.explore(result)
    for i in range(len(app.tabs.titles)):
        app.tabs.page(i)
    with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
        # show is a gate like check: 1 for a trace whose plan failed or whose checks fail
        assert main(["show", str(trace_path)]) in (0, 1)
        assert main(["check", str(trace_path)]) in (0, 1)
