"""Tidy terminal rendering of results (rich): a header, per-rank volumes, dedup, errors."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .tables import _fmt_bytes as fmt_bytes


def add_row(table: Table, *cells: Any) -> None:
    """``table.add_row`` with every string cell taken literally: keys, model and planner names
    are the user's, and rich would read ``[bold]`` or ``[/x]`` in them as markup (or fail on it)."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


def save_summary_renderable(result: Any, max_ranks: int = 16) -> Group:
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
        import pandas as pd

        if pd.isna(value):
            return "-"
    except (TypeError, ValueError):
        pass
    return fmt(value)


def print_result(result: Any, console: Console | None = None) -> None:
    console = console or Console()
    if result.kind == "save":
        console.print(save_summary_renderable(result))
    else:
        from .terminal_load import load_summary_renderable  # added with the load debugger

        console.print(load_summary_renderable(result))
