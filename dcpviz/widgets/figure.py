"""Helpers to keep one FigureWidget on screen and swap its content in place."""

from __future__ import annotations

import plotly.graph_objects as go


def figure_widget() -> go.FigureWidget:
    """A plotly Figure as a FigureWidget (updates in place in notebooks)."""
    return go.FigureWidget()


def replace_figure(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Show ``fig`` in ``widget`` without replacing the widget (controls update in place)."""
    with widget.batch_update():
        widget.data = []
        widget.layout = {}
        widget.add_traces(list(fig.data))
        widget.layout = fig.layout
