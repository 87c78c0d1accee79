"""report: one self-contained HTML file (plotly.js embedded, no CDN) with the same figures and
key tables as the explorer. Opens offline in any browser; small enough to attach to a bug.

It renders any result from what the result supplies (``dcpviz.parts``: its summary rows and
parts): no branch on whether it is a save, a load, a diff or a checkpoint."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from dcpviz import views
from dcpviz.analysis.checkpoint.tables import CheckpointInfo
from dcpviz.core.errors import DcpvizError
from dcpviz.core.trace import writable_file
from dcpviz.parts import FigurePart, HintsPart, MessagesPart, TablePart, is_renderable
from dcpviz.results import CheckpointReport
from dcpviz.views.html import (
    MAX_TABLE_ROWS,
    figure_html,
    hints_html,
    messages_html,
    page,
    summary_html,
    table_html,
)


def _table(part: TablePart) -> str:
    rows = MAX_TABLE_ROWS if part.max_rows is None else part.max_rows
    note = f'<p class="note">{html.escape(part.note)}</p>' if part.note else ""
    return (
        f"<h2>{html.escape(part.title)}</h2>\n"
        + table_html(part.frame, max_rows=rows, byte_cols=part.byte_cols)
        + note
    )


def _figure(result: Any, part: FigurePart, first: bool) -> str:
    fig = getattr(views, part.view)(result, *part.args, **part.kwargs)
    return f"<h2>{html.escape(part.title)}</h2>\n" + figure_html(fig, first=first)


def part_html(result: Any, part: Any, first_figure: bool) -> str:
    """One part of a result as HTML (a figure embeds plotly.js when it is the first)."""
    if isinstance(part, FigurePart):
        return _figure(result, part, first_figure)
    if isinstance(part, TablePart):
        return _table(part)
    if isinstance(part, HintsPart):
        return hints_html(list(part.hints))
    if isinstance(part, MessagesPart):
        return messages_html(part.errors, part.notes)
    raise TypeError(f"no HTML rendering for {type(part).__name__}")


def report_html(result: Any, title: str | None = None) -> str:
    """The whole report page of a result: title, summary, then each of its parts."""
    title = title or result.report_title()
    out = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(result.report_intro())}</p>',
        summary_html(result.summary_rows()),
    ]
    figures = 0
    for part in result.parts():
        out.append(part_html(result, part, first_figure=figures == 0))
        figures += isinstance(part, FigurePart)
    return page(title, "\n".join(p for p in out if p))


def report(result: Any, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write a self-contained HTML report of a save, load or diff result, or of a checkpoint
    (``dcpviz.inspect_checkpoint``: a DCP directory or a safetensors folder), to ``path``."""
    if isinstance(result, CheckpointInfo):
        result = CheckpointReport(result)
    if not is_renderable(result):
        raise DcpvizError(
            f"report() needs a save, load or diff result or a checkpoint "
            f"(dcpviz.inspect_checkpoint), got {type(result).__name__}."
        )
    text = report_html(result, title)
    path = writable_file(path, "report")
    path.write_text(text, encoding="utf-8")
    return path
