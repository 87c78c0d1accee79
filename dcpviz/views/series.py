"""plan_series: a periodic series of saves, save x rank — plan-cache hits and misses, and how
each rank's plan changed since the previous save."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dcpviz.analysis.save.series import SERIES_COLUMNS
from dcpviz.core.errors import DcpvizError
from dcpviz.views.style import base_layout

_STATES = ["miss (plan sent)", "hit (cached plan)", "not recorded"]
_COLORS = ["#f58518", "#4c78a8", "#bbbbbb"]


def plan_series(table: pd.DataFrame) -> go.Figure:
    """Heatmap of ``analysis.save.series.plan_series``'s table (``dcpviz.plan_series(saves)``): one
    cell per save and rank, blue where the rank's local plan came from DCP's plan cache, orange
    where it sent a new plan, grey where the trace does not hold it; the cell's text gives the
    items added / removed since the previous save."""
    if not isinstance(table, pd.DataFrame) or not set(SERIES_COLUMNS) <= set(table.columns):
        raise DcpvizError(
            "views.plan_series: pass dcpviz.plan_series(saves) (a DataFrame with columns "
            f"{SERIES_COLUMNS})."
        )
    fig = go.Figure()
    if not len(table):
        fig.update_layout(**base_layout(title="Plan cache per save: no saves"))
        return fig
    state = table["local_cached"].astype(int).where(table["known"], 2)
    z = table.assign(state=state).pivot(index="rank", columns="save", values="state")
    text = table.assign(
        t=[
            _cell_text(*row)
            for row in zip(
                table["known"], table["added"], table["removed"], table["global_changed"]
            )
        ]
    ).pivot(index="rank", columns="save", values="t")
    scale = [[edge / 3, c] for i, c in enumerate(_COLORS) for edge in (i, i + 1)]  # one band each
    fig.add_trace(
        go.Heatmap(
            z=z.values,
            x=list(z.columns),
            y=list(z.index),
            text=text.values,
            texttemplate="%{text}",
            zmin=-0.5,
            zmax=2.5,
            colorscale=[[p, c] for p, c in scale],
            colorbar={"tickvals": [0, 1, 2], "ticktext": _STATES},
            hovertemplate="save %{x}, rank %{y}: %{text}<extra></extra>",
        )
    )
    layout = base_layout(
        title="Plan cache per save and rank (+added −removed items since the last save; "
        "✎ what the rank writes changed)"
    )
    fig.update_layout(**layout)
    fig.update_xaxes(title="save", dtick=1)
    fig.update_yaxes(title="rank", autorange="reversed")
    return fig


def _cell_text(known: bool, added: int, removed: int, changed: bool) -> str:
    """'+a −r' items since the last save ('=' none), '✎' where what the rank writes changed."""
    if not known:
        return " ✎" if changed else ""
    return (f"+{added} −{removed}" if added or removed else "=") + (" ✎" if changed else "")
