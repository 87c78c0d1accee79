"""report: one self-contained HTML file (plotly.js embedded, no CDN) with the same figures and
key tables as the explorer. Opens offline in any browser; small enough to attach to a bug.

It renders any result from the parts the result supplies (``result.parts()``): no branch on
whether it is a save or a load."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from dcpviz import views
from dcpviz.analysis.checkpoint.tables import CheckpointInfo
from dcpviz.core.errors import DcpvizError
from dcpviz.core.trace import writable_file
from dcpviz.results import CheckpointReport, FigurePart, HintsPart, MessagesPart, TablePart
from dcpviz.views.html import MAX_TABLE_ROWS, figure_html, hints_html, page, table_html


def _summary_table(result: Any) -> str:
    return '<table class="summary">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in result.summary_rows()) + "</table>"


def _messages(part: MessagesPart) -> str:
    return "\n".join([*(f'<p class="bad">{html.escape(e)}</p>' for e in part.errors),
                      *(f'<p class="note">note: {html.escape(n)}</p>' for n in part.notes)])


def _table(part: TablePart) -> str:
    rows = MAX_TABLE_ROWS if part.max_rows is None else part.max_rows
    return f"<h2>{html.escape(part.title)}</h2>\n" + table_html(part.frame, max_rows=rows, byte_cols=part.byte_cols)


def report_html(result: Any, title: str | None = None) -> str:
    """The whole report page of a result: title, summary, then each of its parts."""
    title = title or result.report_title()
    out = [f"<h1>{html.escape(title)}</h1>", f'<p class="note">{html.escape(result.report_intro())}</p>',
           _summary_table(result)]
    figures = 0
    for part in result.parts():
        if isinstance(part, FigurePart):
            fig = getattr(views, part.view)(result, *part.args, **part.kwargs)
            out.append(f"<h2>{html.escape(part.title)}</h2>\n" + figure_html(fig, first=(figures == 0)))
            figures += 1
        elif isinstance(part, TablePart):
            out.append(_table(part))
        elif isinstance(part, HintsPart):
            out.append(hints_html(list(part.hints)))
        elif isinstance(part, MessagesPart):
            out.append(_messages(part))
    return page(title, "\n".join(p for p in out if p))


def report(result: Any, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write a self-contained HTML report of a save, load or diff result, or of a checkpoint
    (``dcpviz.inspect_checkpoint``: a DCP directory or a safetensors folder), to ``path``."""
    if isinstance(result, CheckpointInfo):
        result = CheckpointReport(result)
    if not callable(getattr(result, "parts", None)) or getattr(result, "kind", None) not in (
            "save", "load", "diff", "checkpoint"):
        raise DcpvizError(f"report() needs a save, load or diff result or a checkpoint "
                          f"(dcpviz.inspect_checkpoint), got {type(result).__name__}.")
    text = report_html(result, title)
    path = writable_file(path, "report")
    path.write_text(text, encoding="utf-8")
    return path
