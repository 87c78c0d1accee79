"""The terminal view of a diff: the verdict, the diff table (content changes first), notes."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

_STYLE = {"same": "green", "layout only": "cyan", "not compared": "yellow", "renamed": "magenta"}


def diff_renderable(result: Any, max_rows: int = 40) -> Group:
    """Verdict line, then one row per changed key (all rows when fewer than ``max_rows``)."""
    same = result.same
    head = Text.from_markup(
        f"[bold]{escape(result.a.label)}[/]\n[bold]{escape(result.b.label)}[/]\n"
        + (f"[bold green]{escape(result.verdict)}[/]" if same else f"[bold red]{escape(result.verdict)}[/]")
        + ("" if result.compared_values else " (keys, shapes and dtypes; values not compared)")
    )
    changes = result.changes
    shown = changes if len(changes) <= max_rows else changes[changes["change"] != "same"].head(max_rows)
    table = Table(title="diff", show_lines=False)
    for col in ("key (A)", "key (B)", "change", "detail"):
        table.add_column(col, overflow="fold")
    for row in shown.itertuples(index=False):
        style = _STYLE.get(row.change, "red")
        table.add_row(escape(row.fqn), escape(row.fqn_b if row.fqn_b != row.fqn else ""),
                      f"[{style}]{escape(row.change)}[/]", escape(row.detail))
    parts: list[Any] = [head, table]
    if len(shown) < len(changes):
        parts.append(Text(f"... {len(changes) - len(shown)} more rows (the same content); --json shows all"))
    parts += [Text(f"note: {n}", style="yellow") for n in result.notes]
    return Group(*parts)
