"""Diff figures: which keys differ (and how), and which regions of one tensor differ."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from dcpviz.core.errors import DcpvizError
from dcpviz.views.geometry import box_height, pick_dims, project, rects_path, set_box_axes
from dcpviz.views.style import FONT

# change -> colour: content changes warm, same content cool
COLORS = {
    "values differ": "#d62728",
    "dtype": "#ff7f0e",
    "shape": "#e377c2",
    "kind": "#8c564b",
    "renamed": "#9467bd",
    "rename?": "#bcbd22",
    "only in A": "#7f7f7f",
    "only in B": "#444444",
    "layout only": "#17becf",
    "same": "#2ca02c",
    "not compared": "#bbbbbb",
}
SAME, DIFFERS = "#2ca02c", "#d62728"


def _need_diff(result: Any, view: str) -> None:
    if getattr(result, "kind", None) != "diff":
        raise DcpvizError(
            f"views.{view} needs a DiffResult (dcpviz.diff(a, b)), got {type(result).__name__}."
        )


def diff_overview(result: Any, max_rows: int = 60) -> go.Figure:
    """One bar per key (content changes first): coloured by what changed; the hover says how."""
    _need_diff(result, "diff_overview")
    changes = result.changes.head(max_rows)
    fig = go.Figure()
    for change in dict.fromkeys(changes["change"]):
        rows = changes[changes["change"] == change]
        names = [x or y for x, y in zip(rows["fqn"], rows["fqn_b"])]
        fig.add_trace(
            go.Bar(
                y=names,
                x=[1] * len(rows),
                orientation="h",
                name=change,
                marker_color=COLORS.get(change, "#bbbbbb"),
                customdata=rows["detail"],
                hovertemplate="%{y}<br>" + change + "<br>%{customdata}<extra></extra>",
            )
        )
    more = f" (first {max_rows} of {len(result.changes)})" if len(result.changes) > max_rows else ""
    verdict = (
        "same content" if result.same else f"content differs in {len(result.differing)} key(s)"
    )
    fig.update_layout(
        barmode="stack",
        title=f"{verdict}{more}",
        font_family=FONT,
        height=min(1400, 140 + 22 * len(changes)),
        xaxis_visible=False,
        yaxis={"autorange": "reversed", "automargin": True},
        legend_title_text="change",
    )
    return fig


def diff_regions(result: Any, fqn: str, *, dims: tuple[int, int] | None = None) -> go.Figure:
    """One tensor's compared regions (each a chunk of A overlapping a chunk of B), drawn on two
    of its dims: green where equal, red where values differ."""
    _need_diff(result, "diff_regions")
    regions = result.regions[result.regions["fqn"] == fqn]
    if regions.empty:
        raise DcpvizError(
            f"views.diff_regions: no compared regions for {fqn!r}; diff with values=True, "
            "and pass a key both sides hold."
        )
    shape = result.tensors.set_index("fqn").loc[fqn, "shape_a"]
    if len(shape) == 0:
        shape, regions = (
            (1,),
            regions.assign(offsets=[(0,)] * len(regions), sizes=[(1,)] * len(regions)),
        )
    row_dim, col_dim = pick_dims(len(shape), dims, regions["offsets"])
    fig = go.Figure()
    for differs, color, name in ((False, SAME, "equal"), (True, DIFFERS, "differs")):
        rows = regions[(regions["differing"] > 0) == differs]
        if not rows.empty:
            _add_regions(fig, rows, (row_dim, col_dim), color, name)
    set_box_axes(fig, tuple(shape), row_dim, col_dim)
    bad = int((regions["differing"] > 0).sum())
    fig.update_layout(
        title=f"{fqn}: {bad} of {len(regions)} compared regions differ",
        font_family=FONT,
        height=box_height(tuple(shape), row_dim, col_dim),
    )
    return fig


def _add_regions(
    fig: go.Figure, rows: Any, dims: tuple[int | None, int], color: str, name: str
) -> None:
    """Equal or differing regions: one filled path, and a marker with the facts at each centre."""
    rects = [project(o, s, *dims) for o, s in zip(rows["offsets"], rows["sizes"])]
    xs, ys = rects_path(rects)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            fill="toself",
            mode="lines",
            name=name,
            fillcolor=color,
            line={"color": "white", "width": 1},
            opacity=0.8,
            hoverinfo="skip",
        )
    )
    text = [
        f"A chunk {a} x B chunk {b}<br>offsets {o}, sizes {s}<br>{n} differ, max |a-b| {m:.6g}"
        + (f"<br>first at {f}" if f else "")
        for a, b, o, s, n, m, f in zip(
            rows["chunk_a"],
            rows["chunk_b"],
            rows["offsets"],
            rows["sizes"],
            rows["differing"],
            rows["max_abs_diff"],
            rows["first_diff"],
        )
    ]
    fig.add_trace(
        go.Scatter(
            x=[(r[0] + r[1]) / 2 for r in rects],
            y=[(r[2] + r[3]) / 2 for r in rects],
            mode="markers",
            marker={"size": 6, "color": color},
            text=text,
            hovertemplate="%{text}<extra></extra>",
            showlegend=False,
        )
    )
