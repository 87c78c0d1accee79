"""Facets: one view's figure drawn once per group of ranks (a pipeline stage), side by side.

``facet_grid`` lays out figures a view already draws (one per facet) on one grid of subplots,
as plotly express's ``facet_col`` / ``facet_row`` do: each panel keeps its traces, axes and
lines; a legend entry shows once. ``no_facet`` marks a figure drawn without the facet it was
asked for, and says why in its subtitle. The figure's ``layout.meta`` says which (``facet``,
``facet_reason``), so a reader or test need not parse the title.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from dcpviz.core.errors import DcpvizError

FACETS = ("stage",)


def need_facet(facet: Any, view: str, allowed: Sequence[str] = FACETS) -> None:
    """``facet`` must be None or one of ``allowed``."""
    if facet is not None and facet not in allowed:
        raise DcpvizError(
            f"views.{view}: facet={facet!r}: use facet=None or one of {list(allowed)}."
        )


def _axis_name(axis: str, index: int) -> str:
    return axis if index == 1 else f"{axis}{index}"


def _copy_shapes(fig: go.Figure, panel: go.Figure, index: int) -> None:
    """The panel's lines (a mean line: ``xref='x domain'``) moved onto subplot ``index``."""
    for shape in panel.layout.shapes or ():
        s = shape.to_plotly_json()
        for ref, axis in (("xref", "x"), ("yref", "y")):
            value = s.get(ref, axis)
            if value == "paper":
                continue
            s[ref] = value.replace(axis, _axis_name(axis, index), 1)
        fig.add_shape(s)


def facet_grid(
    panels: Sequence[Sequence[tuple[str, go.Figure] | None]],
    *,
    column_widths: Sequence[float] | None = None,
    row_heights: Sequence[float] | None = None,
    shared_xaxes: bool | str = False,
    shared_yaxes: bool | str = True,
    panel_height: int = 300,
) -> go.Figure:
    """A grid of panels (rows of (title, figure); None leaves a cell empty) as one figure. Each
    panel's traces, lines and axis settings move to its subplot; a legend entry (by legend group,
    else by name) shows once; the title and the rest of the layout are the caller's."""
    # Deferred: plotly.subplots imports plotly's figure machinery (~60 ms), which a fresh
    # kernel's first view need not pay for unless it draws a facet.
    from plotly.subplots import make_subplots

    n_rows = len(panels)
    n_cols = max(len(r) for r in panels)
    titles = [(cell[0] if cell else "") for row in panels for cell in row]
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=titles,
        column_widths=list(column_widths) if column_widths else None,
        row_heights=list(row_heights) if row_heights else None,
        shared_xaxes=shared_xaxes,
        shared_yaxes=shared_yaxes,
        horizontal_spacing=min(0.06, 0.4 / max(1, n_cols)),
        vertical_spacing=min(0.12, 0.5 / max(1, n_rows)),
    )
    shown: set[str] = set()
    for r, row in enumerate(panels, start=1):
        for c, cell in enumerate(row, start=1):
            if cell is None:
                continue
            _, panel = cell
            index = (r - 1) * n_cols + c
            for trace in panel.data:
                key = trace.legendgroup or trace.name or ""
                if trace.showlegend is not False and key:
                    if key in shown:
                        trace.showlegend = False
                    shown.add(key)
                fig.add_trace(trace, row=r, col=c)
            _copy_shapes(fig, panel, index)
            x, y = panel.layout.xaxis, panel.layout.yaxis
            fig.update_xaxes(
                type=x.type,
                categoryorder=x.categoryorder,
                categoryarray=x.categoryarray,
                autorange=x.autorange,
                side=x.side,
                showgrid=x.showgrid,
                row=r,
                col=c,
            )
            fig.update_yaxes(
                type=y.type,
                tickformat=y.tickformat,
                ticksuffix=y.ticksuffix,
                autorange=y.autorange,
                showgrid=y.showgrid,
                row=r,
                col=c,
            )
    first = panels[0][0][1] if panels and panels[0] and panels[0][0] else None
    if first is not None:
        # Axis titles once: the x title under the bottom row, the y title beside the first column.
        fig.update_xaxes(title=first.layout.xaxis.title.text, row=n_rows)
        fig.update_yaxes(title=first.layout.yaxis.title.text, col=1)
        fig.update_layout(barmode=first.layout.barmode, bargap=first.layout.bargap)
    fig.update_layout(height=max(420, 140 + panel_height * n_rows))
    for a in fig.layout.annotations:  # the panel titles: small, so a narrow panel's fits
        a.font = dict(size=11)
    return fig


def mark_facet(fig: go.Figure, facet: str | None, reason: str = "", **facts: Any) -> go.Figure:
    """Record in ``fig.layout.meta`` which facet the figure shows (None: none, and why)."""
    meta = dict(fig.layout.meta or {}) if isinstance(fig.layout.meta, dict) else {}
    meta.update(facet=facet, facet_reason=reason, **facts)
    fig.update_layout(meta=meta)
    return fig


def add_subtitle(fig: go.Figure, line: str) -> None:
    """One more line under the figure's title (the plot moves down to make room)."""
    title = fig.layout.title.text or ""
    if "</sup>" in title:
        title = title[: title.rindex("</sup>")] + f"<br>{line}</sup>"
    else:
        title += f"<br><sup>{line}</sup>"
    top = fig.layout.margin.t
    fig.update_layout(title_text=title, height=(fig.layout.height or 420) + 16)
    if top is not None:
        fig.update_layout(margin_t=top + 16)


def no_facet(fig: go.Figure, facet: str, reason: str) -> go.Figure:
    """``fig`` as drawn without the facet asked for, its subtitle saying why."""
    add_subtitle(fig, f"no {facet} facet: {reason}")
    return mark_facet(fig, None, reason)
