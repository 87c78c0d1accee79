"""HTML fragments shared by the report and the widgets: sortable tables, figures, hints, pages."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dcpviz.core.units import fmt_bytes

MAX_TABLE_ROWS = 300

_CSS = """
body{font-family:Inter,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f3f5f8;cursor:pointer;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums}
.summary td:first-child{font-weight:600;color:#2a5d9f;white-space:nowrap} .bad{color:#b00020;font-weight:600}
.good{color:#137333;font-weight:600} .note{color:#666;font-size:12px} .scroll{max-height:420px;overflow:auto;display:inline-block}
"""
# Click a header to sort its table (numbers numerically). Inline: the report must work offline.
_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],rows=Array.from(b.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
rows.sort(function(x,y){var a=x.cells[i].dataset.v||x.cells[i].innerText,c=y.cells[i].dataset.v||y.cells[i].innerText;
var na=parseFloat(a),nc=parseFloat(c);var r=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);return asc?r:-r;});
rows.forEach(function(r){b.appendChild(r);});});});
"""


def table_html(df: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS, byte_cols: tuple[str, ...] = ()) -> str:
    """A sortable HTML table; byte columns are shown human-readable but sort by value."""
    shown = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = []
    for row in shown.itertuples(index=False):
        cells = []
        for col, value in zip(shown.columns, row):
            if col in byte_cols and _is_number(value):
                cells.append(f'<td class="num" data-v="{int(value)}">{fmt_bytes(value)}</td>')
            elif _is_number(value):
                cells.append(f'<td class="num">{value}</td>')
            else:
                cells.append(f"<td>{html.escape(_plain(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="note">first {max_rows} of {len(df)} rows</p>' if len(df) > max_rows else ""
    return f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{more}'


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and v == v


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
        f"<li><b>{html.escape(h.title)}</b><br>{html.escape(h.detail)}<br>fix: <code>{html.escape(h.fix)}</code></li>"
        for h in hints
    )
    return f'<div class="hints"><h2>What is likely wrong</h2><ol>{items}</ol></div>'
