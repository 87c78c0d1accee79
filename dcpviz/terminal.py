"""The terminal renderer (rich): any result, drawn from what it supplies (``dcpviz.parts``).

The summary rows become a header panel; each part follows in the result's order: a table's
``brief`` (its columns and first rows, names shortened in the middle to fit the width), hints
as panels, errors and notes as lines. Figures are left to the report and the explorer. No
branch on the kind of result: a save, a load, a diff and a checkpoint go through one path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dcpviz.analysis.checks import counts_line
from dcpviz.analysis.groups import ranges
from dcpviz.core.units import fmt_bytes
from dcpviz.parts import Brief, FigurePart, HintsPart, MessagesPart, SummaryRow, TablePart

TONE_STYLE = {"good": "bold green", "bad": "bold red", "warn": "bold yellow"}
# Cells whose value says how bad or what kind of change a row is are coloured by that value.
VALUE_STYLE = {
    "data-loss": "bold red",
    "error": "red",
    "warning": "yellow",
    "info": "dim",  # check severities
    "breaks": "bold red",
    "loses": "bold red",
    "silent": "yellow",
    "expected": "dim",  # load problems
    "same": "green",
    "layout only": "cyan",
    "not compared": "yellow",
    "renamed": "magenta",  # diff changes
}
SEVERITY_STYLE = {k: VALUE_STYLE[k] for k in ("data-loss", "error", "warning", "info")}
NAME_COLUMNS = ("fqn", "fqn_b", "group", "file")  # the user's names: shortened in the middle
ID_COLUMNS = ("severity", "check", "kind", "change")  # short fixed words: never cut
TEXT_COLUMNS = ("message", "why", "detail", "fix", "explanation")  # folded over lines
NUMBER_COLUMNS = (
    "rank",
    "items",
    "nbytes",
    "planned_items",
    "planned_nbytes",
    "reads",
    "chunk_nbytes",
    "writers",
    "files",
    "chosen_rank",
)
MAX_ERRORS = 8
MIN_NAME = 12  # a shortened name keeps at least this many characters


def add_row(table: Table, *cells: Any) -> None:
    """``table.add_row`` with every string cell taken literally: keys, model and planner names
    are the user's, and rich would read ``[bold]`` or ``[/x]`` in them as markup (or fail on it)."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


def middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle, both ends kept (the start says which
    module, the end which parameter): 'layers.0.att…wq.weight'."""
    if len(text) <= width:
        return text
    if width < 3:
        return text[:width]
    keep = width - 1
    head = keep // 2
    return text[:head] + "…" + text[len(text) - (keep - head) :]


def _na(value: Any, fmt: Callable[[Any], str] = str) -> str:
    """A cell's text: '-' for a missing value (None, NaN, NA), ``fmt(value)`` otherwise —
    tuples and lists included, which ``pd.isna`` answers element by element."""
    try:
        if pd.isna(value):
            return "-"
    except (TypeError, ValueError):  # an array-like: pd.isna gives one answer per element
        pass
    return fmt(value)


def _cell(column: str, value: Any, byte_cols: tuple[str, ...]) -> str:
    if column in byte_cols:
        return _na(value, lambda v: fmt_bytes(int(v)))
    if column in ("ranks", "candidates") and isinstance(value, (tuple, list)):
        return ranges(value) if value else "-"
    return _na(value)


def _name_width(brief: Brief, width: int) -> int:
    """How wide a name column may be: its share of the width the other columns leave."""
    names = sum(c in NAME_COLUMNS for c in brief.columns) or 1
    texts = sum(c in TEXT_COLUMNS for c in brief.columns)
    others = len(brief.columns) - names - texts
    free = width - 9 * others - 16 * texts - 3 * len(brief.columns)
    return max(MIN_NAME, free // names)


def _add_column(table: Table, column: str, heading: str, widest: int) -> None:
    """Text folds over lines; a name keeps the width it was shortened to; numbers align right."""
    if column in TEXT_COLUMNS:
        table.add_column(heading, overflow="fold", ratio=3, min_width=16)
    elif column in NAME_COLUMNS:
        table.add_column(
            heading, no_wrap=True, overflow="ellipsis", min_width=max(widest, len(heading))
        )
    elif column in ID_COLUMNS:
        table.add_column(heading, no_wrap=True, min_width=widest)
    else:
        table.add_column(
            heading, overflow="fold", justify="right" if column in NUMBER_COLUMNS else "left"
        )


def _heading(column: str) -> str:
    """A column's heading: 'nbytes' reads 'bytes', underscores are spaces."""
    return column.replace("nbytes", "bytes").replace("_", " ")


def _texts(
    shown: pd.DataFrame, columns: tuple[str, ...], byte_cols: tuple[str, ...], name_width: int
) -> list[list[str]]:
    """Each shown row's cells as text, names shortened in the middle to ``name_width``."""
    rows = []
    for _, row in shown.iterrows():
        cells = [_cell(col, row[col], byte_cols) for col in columns]
        rows.append(
            [middle(c, name_width) if col in NAME_COLUMNS else c for col, c in zip(columns, cells)]
        )
    return rows


def _rows(part: TablePart) -> pd.DataFrame:
    brief = part.brief
    df = part.frame
    if brief.sort_by is not None and len(df) > brief.rows:
        df = df.sort_values(brief.sort_by, ascending=False, na_position="first", kind="stable")
    return df.head(brief.rows)


def table_renderable(part: TablePart, width: int) -> Table:
    """A table part's brief as a rich table that fits ``width`` columns: names shortened in the
    middle, long text folded, the rest in the report."""
    brief = part.brief
    shown = _rows(part)
    rows = _texts(shown, brief.columns, part.byte_cols, _name_width(brief, width))
    t = Table(title=brief.title or part.title, expand=any(c in TEXT_COLUMNS for c in brief.columns))
    for i, col in enumerate(brief.columns):
        widest = max((len(r[i]) for r in rows), default=0)
        _add_column(t, col, brief.headings.get(col, _heading(col)), widest)
    for cells in rows:
        add_row(t, *(Text(c, style=VALUE_STYLE.get(c, "")) for c in cells))
    notes = (
        [f"first {len(shown)} of {len(part.frame)}; all in the report"]
        if len(shown) < len(part.frame)
        else []
    )
    t.caption = "; ".join(notes + ([part.note] if part.note else [])) or None
    return t


def header_renderable(title: str, rows: Iterable[SummaryRow]) -> Panel:
    """The summary rows as a labelled panel."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan", no_wrap=True)
    head.add_column()
    for row in rows:
        add_row(head, row.label, Text(row.text, style=TONE_STYLE.get(row.tone, "")))
    return Panel(head, title=Text(title), expand=False)


def hints_renderable(hints: Iterable[Any]) -> list[Panel]:
    """One panel per hint: what is likely wrong, the fix, the renames it would apply."""
    out = []
    for h in hints:
        body = Text()
        body.append(h.detail + "\n")
        body.append("fix: ", style="bold")
        body.append(h.fix, style="green")
        if h.mapping:
            shown = ", ".join(f"{a!r}: {b!r}" for a, b in h.mapping[:3])
            more = f", ... ({len(h.mapping)} in all)" if len(h.mapping) > 3 else ""
            body.append(f"\nrename {{target key: checkpoint key}}: {{{shown}{more}}}", style="dim")
        out.append(
            Panel(body, title=Text(f"hint: {h.title}"), title_align="left", border_style="yellow")
        )
    return out


def messages_renderable(part: MessagesPart) -> list[Text]:
    """Errors in red (the first few, each once), notes dimmed."""
    out = [Text(e, style="red") for e in part.errors[:MAX_ERRORS]]
    if len(part.errors) > MAX_ERRORS:
        out.append(
            Text(f"... {len(part.errors) - MAX_ERRORS} more errors in result.errors", style="red")
        )
    return out + [Text(f"note: {n}", style="dim") for n in part.notes]


def _part_renderables(part: Any, width: int) -> list[Any]:
    if isinstance(part, TablePart):
        return [table_renderable(part, width)] if part.brief is not None and len(part.frame) else []
    if isinstance(part, HintsPart):
        return hints_renderable(part.hints)
    if isinstance(part, MessagesPart):
        return messages_renderable(part)
    if isinstance(part, FigurePart):
        return []  # figures are drawn by the report and the explorer
    raise TypeError(f"no terminal rendering for {type(part).__name__}")


def renderable(result: Any, width: int = 100) -> Group:
    """Any result (save, load, diff, checkpoint) for the terminal: its summary, then its parts."""
    out: list[Any] = [header_renderable(result.report_title(), result.summary_rows())]
    for part in result.parts():
        out += _part_renderables(part, width)
    return Group(*out)


def print_result(result: Any, console: Console | None = None) -> None:
    """Print a result to the terminal (rich), fitted to the console's width."""
    console = console or Console()
    console.print(renderable(result, console.width))


# -- checks ---------------------------------------------------------------------------------------
def checks_renderable(checks: pd.DataFrame, source: str = "", width: int = 100) -> Group:
    """The checks table (``result.checks``) for the terminal: one row per finding, worst first,
    with its fix."""
    title = f"dcpviz check{(' ' + source) if source else ''}: {counts_line(checks)}"
    if not len(checks):
        return Group(Text(title, style="green"))
    part = TablePart(
        title,
        checks,
        brief=Brief(("severity", "check", "fqn", "ranks", "message", "fix"), rows=len(checks)),
    )
    t = table_renderable(part, width)
    t.show_lines = True
    return Group(t)
