"""report: one self-contained HTML file (plotly.js embedded, no CDN) with the same figures and
key tables as the explorer. Opens offline in any browser; small enough to attach to a bug."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .views.style import fmt_bytes

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


def _figure_html(fig: go.Figure, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=bool(first), config={"displaylogo": False})


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    s = summary
    mesh = " × ".join(f"{n}={d}" for n, d in zip(s["mesh_dim_names"], s["mesh"]))
    status = '<span class="good">valid</span>' if s["validated"] else f'<span class="bad">{s["errors"]} error(s)</span>'
    opts = ", ".join(f"{k}={v}" for k, v in s["planner_options"].items())
    rows = [
        ("model", f"{html.escape(s['model'])} ({s['dtype']})"),
        ("job", f"{html.escape(s['recipe'])} on {s['world_size']} ranks, mesh {mesh}"),
        ("planner", html.escape(f"{s['planner']}({opts})")),
        ("checkpoint", f"{s['tensors']} tensors, {s['bytes_entries']} bytes entries"),
        ("items", f"{s['items_planned']} planned → {s['items_written']} written after dedup"),
    ]
    if s.get("optimizer") or s.get("state"):  # a training state, not only the model's
        parts = [f"optimizer {s['optimizer']}" if s.get("optimizer") else "no optimizer",
                 f"app state {s['state']}" if s.get("state") else "{'model', 'optim'} from get_state_dict"]
        rows.insert(2, ("state", html.escape(" · ".join(parts))))
    if s["total_bytes"] is not None:
        rows.append(
            ("bytes", f"{fmt_bytes(s['total_bytes'])} total · per rank mean {fmt_bytes(s['mean_rank_bytes'])}, "
             f"max {fmt_bytes(s['max_rank_bytes'])} · imbalance (max ÷ mean) {s['imbalance']:.2f}")
        )
    rows.append(("status", status))
    return rows


def pick_layout_tensors(tensors: pd.DataFrame, limit: int = 6) -> list[str]:
    """Tensors worth drawing: the largest, a strided one, one with empty shards, a 1-D one, a
    scalar, a bytes entry — each kind once."""
    picks: list[str] = []

    def add(frame: pd.DataFrame) -> None:
        for f in frame["fqn"]:
            if f not in picks:
                picks.append(f)
                return

    t = tensors
    add(t[t.kind == "tensor"].sort_values("nbytes", ascending=False))
    add(t[t.placements.str.contains("_StridedShard", regex=False)])
    add(t[t.empty_chunks > 0])
    add(t[(t.kind == "tensor") & (t["size"].map(len) == 1)])
    add(t[(t.kind == "tensor") & (t["size"].map(len) == 0)])
    add(t[t.kind == "bytes"])
    return picks[:limit]


def save_report_html(result: Any, title: str | None = None) -> str:
    from . import views

    s = result.summary
    title = title or f"dcpviz · {s['model']} · {s['recipe']} · W={s['world_size']}"
    parts = [f"<h1>{html.escape(title)}</h1>", '<p class="note">DCP save plan, every rank. Generated by dcpviz '
             f"{result.trace.dcpviz_version} with torch {result.trace.torch_version}, source: {result.trace.source}.</p>"]
    parts.append('<table class="summary">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in summary_rows(s)) + "</table>")
    for err in result.errors:
        parts.append(f'<p class="bad">{html.escape(err)}</p>')
    for note in result.trace.notes:
        parts.append(f'<p class="note">note: {html.escape(note)}</p>')
    figs: list[tuple[str, go.Figure]] = []
    modules = result.volume_by_module(1)["module"].nunique()
    figs.append(("Write volume per rank", views.rank_volume(result, by="module" if modules > 1 else None)))
    if len(result.dedup):
        figs.append(("Dedup decisions", views.dedup(result)))
    for fqn in pick_layout_tensors(result.tensors):
        figs.append((f"Chunk layout: {fqn}", views.chunk_layout(result, fqn)))
    for i, (heading, fig) in enumerate(figs):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_figure_html(fig, first=(i == 0)))
    parts.append("<h2>Tensors (alike layers collapsed)</h2>")
    groups = result.tensor_groups.drop(columns=["members", "pattern"])
    parts.append(table_html(groups, byte_cols=("nbytes",)))
    parts.append("<h2>Bytes per rank</h2>")
    parts.append(table_html(result.rank_volume, max_rows=1024, byte_cols=("nbytes", "planned_nbytes")))
    if len(result.dedup):
        parts.append("<h2>Dedup (items planned by more than one rank)</h2>")
        parts.append(table_html(result.dedup, byte_cols=("nbytes",)))
    parts.append("<h2>Checkpoint chunks</h2>")
    parts.append(table_html(result.chunks, byte_cols=("nbytes",)))
    return _page(title, "\n".join(parts))


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>{body}<script>{_SORT_JS}</script></body></html>"
    )


def report(result: Any, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write a self-contained HTML report of a save or load result to ``path``."""
    from .errors import DcpvizError
    from .trace import writable_file

    if getattr(result, "kind", None) == "save":
        text = save_report_html(result, title)
    elif getattr(result, "kind", None) == "load":
        from .report_load import load_report_html  # the load debugger's half

        text = load_report_html(result, title)
    else:
        raise DcpvizError(f"report() needs a save or load result, got {type(result).__name__}.")
    path = writable_file(path, "report")
    path.write_text(text, encoding="utf-8")
    return path
