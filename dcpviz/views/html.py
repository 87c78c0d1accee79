"""HTML fragments shared by the report and the widgets: sortable tables, figures, hints, pages."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dcpviz.analysis.groups import ranges
from dcpviz.core.units import fmt_bytes
from dcpviz.parts import HintsPart, MessagesPart, SummaryRow, TablePart

MAX_TABLE_ROWS = 300

_CSS = """
body{font-family:Inter,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f3f5f8;cursor:pointer;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums}
.summary td:first-child{font-weight:600;color:#2a5d9f;white-space:nowrap} .bad{color:#b00020;font-weight:600}
.good{color:#137333;font-weight:600} .warn{color:#9a6700;font-weight:600} .note{color:#666;font-size:12px}
.scroll{max-height:420px;overflow:auto;display:inline-block}
"""
# A table's own rules, scoped to its class: the explorer shows tables inside JupyterLab, whose
# styles (not the report's page) would otherwise run the headers together.
TABLE_CSS = (
    "<style>table.dcpviz-table{border-collapse:collapse;font-size:12px;margin:8px 0}"
    "table.dcpviz-table th,table.dcpviz-table td{border:1px solid #ddd;padding:3px 8px;text-align:left;"
    "vertical-align:top}"
    "table.dcpviz-table th{background:#f3f5f8;white-space:nowrap;font-weight:600}"
    "table.dcpviz-table td.num{text-align:right;font-variant-numeric:tabular-nums}</style>"
)
RANK_COLUMNS = ("ranks",)  # tuples of ranks, shown as ranges ('0-3,5'), '–' when empty
# Click a header to sort its table (numbers numerically). Inline: the report must work offline.
_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],rows=Array.from(b.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
rows.sort(function(x,y){var a=x.cells[i].dataset.v||x.cells[i].innerText,c=y.cells[i].dataset.v||y.cells[i].innerText;
var na=parseFloat(a),nc=parseFloat(c);var r=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);return asc?r:-r;});
rows.forEach(function(r){b.appendChild(r);});});});
"""


def table_html(
    df: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS, byte_cols: tuple[str, ...] = ()
) -> str:
    """A sortable HTML table; byte columns are shown human-readable but sort by value."""
    shown = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = [
        "<tr>"
        + "".join(_td(col, value, byte_cols) for col, value in zip(shown.columns, row))
        + "</tr>"
        for row in shown.itertuples(index=False)
    ]
    more = f'<p class="note">first {max_rows} of {len(df)} rows</p>' if len(df) > max_rows else ""
    return (
        f'{TABLE_CSS}<div class="scroll"><table class="sortable dcpviz-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{more}"
    )


def _td(col: str, value: Any, byte_cols: tuple[str, ...]) -> str:
    """One cell: ranks as ranges, bytes human-readable (sorting by value), numbers right-aligned."""
    if col in RANK_COLUMNS and isinstance(value, (tuple, list)):
        return f"<td>{html.escape(ranges(value)) if value else '–'}</td>"
    if col in byte_cols and _is_number(value):
        return f'<td class="num" data-v="{int(value)}">{fmt_bytes(value)}</td>'
    if _is_number(value):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(_plain(value))}</td>"


def _is_number(v: Any) -> bool:
    return (
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, (bool, np.bool_))
        and v == v
    )


def _plain(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
        return "–"
    return str(v)


def figure_html(fig: go.Figure, first: bool) -> str:
    """A figure as an HTML fragment; plotly.js is embedded once, with the first figure."""
    return fig.to_html(full_html=False, include_plotlyjs=bool(first), config={"displaylogo": False})


def page(title: str, body: str) -> str:
    """A whole self-contained HTML page (styles and the table-sorting script inline)."""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>{body}<script>{_SORT_JS}</script></body></html>"
    )


def hints_html(hints: list[Any]) -> str:
    """Hints as an ordered list, most likely first (empty when there are none)."""
    if not hints:
        return ""
    items = "".join(
        f"<li><b>{html.escape(h.title)}</b><br>{html.escape(h.detail)}<br>{_fix_html(h.fix)}</li>"
        for h in hints
    )
    return f'<div class="hints"><h2>What is likely wrong</h2><ol>{items}</ol></div>'


def summary_html(rows: list[SummaryRow], errors: list[str] = ()) -> str:
    """A result's summary rows as a two-column table (values escaped, coloured by their tone),
    then its errors."""
    body = "".join(
        f'<tr><td style="font-weight:600;color:#2a5d9f;padding-right:12px;white-space:nowrap">'
        f"{html.escape(r.label)}</td><td>{_toned(r)}</td></tr>"
        for r in rows
    )
    errs = "".join(f'<div style="color:#b00020">{html.escape(e)}</div>' for e in errors)
    return f'<div class="dcpviz-summary"><table class="summary">{body}</table>{errs}</div>'


_TONE_STYLE = {
    "good": "color:#137333;font-weight:600",
    "bad": "color:#b00020;font-weight:600",
    "warn": "color:#9a6700;font-weight:600",
}


def _toned(row: SummaryRow) -> str:
    text = html.escape(row.text)
    style = _TONE_STYLE.get(row.tone)
    return f'<span class="{row.tone}" style="{style}">{text}</span>' if style else text


def parts_tables_html(parts: list[Any]) -> str:
    """The table parts of a result, each under its title (an explorer's Tables tab)."""
    return "".join(
        f"<h4>{html.escape(p.title)}</h4>"
        + table_html(p.frame, MAX_TABLE_ROWS if p.max_rows is None else p.max_rows, p.byte_cols)
        for p in parts
        if isinstance(p, TablePart) and not p.title.startswith("Checks")
    )


def header_html(result: Any) -> str:
    """A result's summary and its header parts (errors, notes, hints): what every explorer
    shows above its tabs."""
    out = [summary_html(result.summary_rows())]
    for part in result.header_parts():
        if isinstance(part, MessagesPart):
            out.append(messages_html(part.errors, part.notes))
        elif isinstance(part, HintsPart):
            out.append(hints_html(list(part.hints)))
    return "".join(out)


def messages_html(errors: Any = (), notes: Any = ()) -> str:
    """Errors as failures, notes as quiet lines."""
    return "\n".join(
        [
            *(f'<p class="bad">{html.escape(e)}</p>' for e in errors),
            *(f'<p class="note">note: {html.escape(n)}</p>' for n in notes),
        ]
    )


def _fix_html(fix: str) -> str:
    """A one-line fix inline; a fix that is code over several lines as a block, lines kept (inline,
    the browser ran them into one line)."""
    if "\n" in fix:
        return (
            'fix:<pre style="background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px">'
            f"{html.escape(fix)}</pre>"
        )
    return f"fix: <code>{html.escape(fix)}</code>"
