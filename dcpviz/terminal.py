"""Tidy terminal rendering of results (rich): a header, per-rank volumes, dedup, errors."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dcpviz.analysis.checks import counts_line
from dcpviz.analysis.groups import ranges
from dcpviz.analysis.load.verdict import load_status
from dcpviz.core.units import fmt_bytes


def add_row(table: Table, *cells: Any) -> None:
    """``table.add_row`` with every string cell taken literally: keys, model and planner names
    are the user's, and rich would read ``[bold]`` or ``[/x]`` in them as markup (or fail on it)."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


def save_summary_renderable(result: Any, max_ranks: int = 16) -> Group:
    """A SaveResult's summary as rich renderables (header, per-rank table)."""
    s = result.summary
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan")
    head.add_column()
    mesh = " x ".join(f"{n}={d}" for n, d in zip(s["mesh_dim_names"], s["mesh"]))
    add_row(head, "model", f"{s['model']}  ({s['dtype']})")
    add_row(head, "job", f"{s['recipe']} on {s['world_size']} ranks, mesh {mesh}")
    opts = ", ".join(f"{k}={v}" for k, v in s["planner_options"].items())
    add_row(head, "planner", f"{s['planner']}({opts})")
    add_row(head, "tensors", f"{s['tensors']} tensors, {s['bytes_entries']} bytes entries")
    add_row(head, "items", f"{s['items_planned']} planned -> {s['items_written']} written after dedup")
    if s["total_bytes"] is not None:
        add_row(
            head, "bytes",
            f"{fmt_bytes(s['total_bytes'])} total; per rank mean {fmt_bytes(s['mean_rank_bytes'])}, "
            f"max {fmt_bytes(s['max_rank_bytes'])}, imbalance (max/mean) {s['imbalance']:.2f}",
        )
    status = Text("valid", style="bold green") if s["validated"] else Text(f"{s['errors']} error(s)", style="bold red")
    add_row(head, "status", status)
    parts: list[Any] = [Panel(head, title="dcpviz save plan", expand=False)]

    vol = result.rank_volume
    t = Table(title="bytes written per rank (final plans)", show_lines=False)
    for col in ("rank", "coordinate", "items", "bytes", "planned items", "planned bytes"):
        t.add_column(col, justify="right")
    shown = vol if len(vol) <= max_ranks else vol.sort_values("nbytes", ascending=False).head(max_ranks)
    for _, row in shown.iterrows():
        add_row(
            t, str(row["rank"]), str(row["coordinate"]), _na(row["items"]), _na(row["nbytes"], fmt_bytes),
            str(row["planned_items"]), fmt_bytes(row["planned_nbytes"]),
        )
    if len(vol) > max_ranks:
        t.caption = f"the {max_ranks} heaviest of {len(vol)} ranks"
    parts.append(t)

    d = result.dedup
    if len(d):
        dt = Table(title=f"dedup: {len(d)} items planned by more than one rank")
        for col in ("fqn", "offsets", "candidates", "writer", "why"):
            dt.add_column(col)
        for _, row in d.head(12).iterrows():
            cands = row["candidates"]
            cand = ",".join(map(str, cands)) if len(cands) <= 8 else f"{len(cands)} ranks"
            add_row(dt, row["fqn"], str(row["offsets"]), cand, str(row["chosen_rank"]), row["why"])
        if len(d) > 12:
            dt.caption = f"first 12 of {len(d)}"
        parts.append(dt)
    for err in result.errors:
        parts.append(Text(err, style="red"))
    for note in result.trace.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    return Group(*parts)


def _na(value: Any, fmt=str) -> str:
    try:

        if pd.isna(value):
            return "-"
    except (TypeError, ValueError):
        pass
    return fmt(value)


def print_result(result: Any, console: Console | None = None) -> None:
    """Print a save or load result's summary to the terminal (rich)."""
    console = console or Console()
    console.print(RENDERABLES[result.kind](result))



def _mesh(names: tuple[str, ...], dims: tuple[int, ...]) -> str:
    return " x ".join(f"{n}={d}" for n, d in zip(names, dims))


def _header(result: Any) -> Panel:
    s = result.summary
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan")
    head.add_column()
    v = result.verdict
    add_row(head, "verdict", Text(v.line, style="bold green" if v.clean else "bold red"))
    add_row(head, "target", f"{s['model']} ({s['dtype']}), {s['recipe']} on {s['world_size']} ranks, "
                  f"mesh {_mesh(s['mesh_dim_names'], s['mesh'])}")
    saved = s["saved_scenario"]
    what = f"{s['saved_source']}: {s['saved_tensors']} tensors, {s['saved_bytes_entries']} bytes entries"
    if saved is not None:
        what += (f"\nsaved by {saved.model} ({saved.dtype}), {saved.recipe} on {saved.world_size} ranks, "
                 f"mesh {_mesh(saved.mesh_dim_names, saved.mesh)}")
    add_row(head, "checkpoint", what)
    opts = ", ".join(f"{k}={v}" for k, v in s["planner_options"].items())
    add_row(head, "planner", f"{s['planner']}({opts})")
    if s["reads"]:
        add_row(
            head, "reads",
            f"{s['reads']} read items ({s['plans']} plans), {fmt_bytes(s['total_bytes'])} in all; per rank "
            f"max {fmt_bytes(s['max_rank_bytes'])}, mean {fmt_bytes(s['mean_rank_bytes'])}",
        )
    said, tone = load_status(s, v)
    add_row(head, "status", Text(said, style={"bad": "bold red", "warn": "bold yellow"}.get(tone, "bold green")))
    return Panel(head, title="dcpviz load plan", expand=False)


def _hints(result: Any) -> list[Any]:
    out: list[Any] = []
    for h in result.hints:
        body = Text()
        body.append(h.detail + "\n")
        body.append("fix: ", style="bold")
        body.append(h.fix, style="green")
        if h.mapping:
            shown = ", ".join(f"{a!r}: {b!r}" for a, b in h.mapping[:3])
            more = f", ... ({len(h.mapping)} in all)" if len(h.mapping) > 3 else ""
            body.append(f"\nrename {{target key: checkpoint key}}: {{{shown}{more}}}", style="dim")
        out.append(Panel(body, title=Text(f"hint: {h.title}"), title_align="left", border_style="yellow", expand=True))
    return out


_SEVERITY_STYLE = {"breaks": "bold red", "loses": "bold red", "silent": "yellow", "expected": "dim"}


def _mismatches(result: Any, max_rows: int) -> Table | None:
    df = result.problems
    if not len(df):
        return None
    t = Table(title=f"problems: {len(df)} (one row per key and message; every rank in result.mismatches)")
    for col in ("", "kind", "fqn", "saved", "current", "ranks", "DCP's message (dim: dcpviz's note)"):
        t.add_column(col, overflow="fold")
    for i, row in enumerate(df.itertuples(index=False)):
        if i >= max_rows:
            t.caption = f"first {max_rows} of {len(df)}; all in result.problems"
            break
        add_row(t, Text(row.severity, style=_SEVERITY_STYLE.get(row.severity, "")), row.kind, row.fqn,
                str(row.saved or "-"), str(row.current or "-"), row.ranks,
                row.message or Text(row.explanation, style="dim"))
    return t


def _volume(result: Any, max_ranks: int) -> Table:
    vol = result.rank_volume
    t = Table(title="reads per target rank")
    on_disk = bool(result.read_items["file"].notna().any())
    cols = ["rank", "coordinate", "reads", "bytes", "saved-chunk bytes", "writers"] + (["files"] if on_disk else [])
    for col in cols:
        t.add_column(col, justify="right")
    shown = vol if len(vol) <= max_ranks else vol.sort_values("nbytes", ascending=False, na_position="first").head(max_ranks)
    for _, row in shown.iterrows():
        cells = [str(row["rank"]), str(row["coordinate"]), _na(row["reads"]), _na(row["nbytes"], fmt_bytes),
                 _na(row["chunk_nbytes"], fmt_bytes), _na(row["writers"])]
        add_row(t, *cells, *([_na(row["files"])] if on_disk else []))
    if len(vol) > max_ranks:
        t.caption = f"the {max_ranks} heaviest of {len(vol)} ranks"
    t.caption = ((t.caption + "; ") if t.caption else "") + (
        "saved-chunk bytes: whole saved chunks, which FileSystemReader deserialises before narrowing")
    return t


def _na(value: Any, fmt: Any = str) -> str:
    return "-" if pd.isna(value) else fmt(value)


def load_summary_renderable(result: Any, max_ranks: int = 16, max_mismatches: int = 20) -> Group:
    """Header (the verdict first), hints (most likely cause first), one row per problem with its
    ranks, per-rank reads (or why there are none), errors (each message once) and notes."""
    parts: list[Any] = [_header(result), *_hints(result)]
    mm = _mismatches(result, max_mismatches)
    if mm is not None:
        parts.append(mm)
    if result.nothing_planned:
        parts.append(Text(result.nothing_planned_reason(), style="yellow"))
    else:
        parts.append(_volume(result, max_ranks))
    errors = result.error_lines()
    for err in errors[:8]:
        parts.append(Text(err, style="red"))
    if len(errors) > 8:
        parts.append(Text(f"... {len(errors) - 8} more errors in result.errors", style="red"))
    for note in result.trace.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    return Group(*parts)


# Which renderable each kind of result gets (a table, not a branch: a new kind adds a line).
RENDERABLES = {"save": save_summary_renderable, "load": load_summary_renderable}


# -- checks ---------------------------------------------------------------------------------------
SEVERITY_STYLE = {"data-loss": "bold red", "error": "red", "warning": "yellow", "info": "dim"}


def checks_renderable(checks: pd.DataFrame, source: str = "") -> Group:
    """The checks table (``result.checks``) for the terminal: one row per finding, worst first."""
    title = f"dcpviz check{(' ' + source) if source else ''}: {counts_line(checks)}"
    if not len(checks):
        return Group(Text(title, style="green"))
    t = Table(title=title, show_lines=True, expand=True)
    t.add_column("severity", no_wrap=True)
    t.add_column("check", no_wrap=True)
    for col in ("fqn", "ranks", "message", "fix"):
        t.add_column(col, overflow="fold", ratio=4 if col in ("message", "fix") else 1)
    for row in checks.itertuples(index=False):
        ranks = ranges(row.ranks)
        add_row(t, Text(row.severity, style=SEVERITY_STYLE.get(row.severity, "")), row.check, row.fqn, ranks,
                row.message, row.fix)
    return Group(t)
