"""One figure's place in an explorer: drawn first without a FigureWidget, then updated in place.

A ``FigureSlot`` shows the first figure it is given as plotly's own MIME bundle
(``application/vnd.plotly.v1+json``, drawn by the jupyterlab-plotly extension that ships with
plotly) in an ipywidgets ``Output``. The second figure (a control changed) swaps the ``Output``
for a ``FigureWidget``, which every later figure updates in place.

Why: ``plotly.graph_objects.FigureWidget`` imports ``plotly.io._renderers``, which imports
nbformat -> jsonschema -> rfc3987_syntax, which compiles grammars at import: about 2 s of a fresh
kernel's first view (``bench/bench_explorer.py``). A figure and its JSON (``plotly.io.to_json``)
import none of that. A slot that is never touched never pays for it.
"""

from __future__ import annotations

import json
from typing import Any

import ipywidgets as w
import plotly.graph_objects as go
import plotly.io as pio

MIME = "application/vnd.plotly.v1+json"
STATIC_CLASS = "dcpviz-figure-static"  # the Output holding the first figure
LIVE_CLASS = "dcpviz-figure-live"  # the slot's box, and the FigureWidget, once it has one


def figure_widget() -> go.FigureWidget:
    """An empty FigureWidget (updates in place in notebooks)."""
    return go.FigureWidget()


def replace_figure(target: go.FigureWidget | FigureSlot, fig: go.Figure) -> None:
    """Show ``fig`` in ``target`` without replacing it (controls update in place)."""
    if isinstance(target, FigureSlot):
        target.show(fig)
        return
    with target.batch_update():
        target.data = []
        target.add_traces(list(fig.data))
        # One assignment replaces the whole layout. (Clearing it first with ``layout = {}``
        # inside the batch lost the figure's template: the widget drew plotly's default.)
        target.layout = fig.layout


def mime_bundle(fig: go.Figure) -> dict[str, Any]:
    """The bundle plotly's own ``plotly_mimetype`` renderer displays for ``fig``: its JSON as
    ``plotly.io.to_json`` writes it, as data (plus a line of text where nothing draws it)."""
    data = json.loads(pio.to_json(fig, validate=False, remove_uids=False))
    title = fig.layout.title.text
    text = f"<plotly figure{': ' + title if title else ''}>"
    return {MIME: data, "text/plain": text}


def figure_slot() -> FigureSlot:
    """A place for one figure at a time (see ``FigureSlot``)."""
    return FigureSlot()


class FigureSlot:
    """One figure on screen: the first as a static plotly figure, later ones in a FigureWidget.

    ``widget`` is what an app puts in its layout; ``show(fig)`` draws a figure; ``figure`` is the
    figure on screen (the ``go.Figure`` given first, then the ``FigureWidget``), with ``data``
    and ``layout`` as a figure has them. ``live`` is the FigureWidget once there is one;
    ``figure_widget()`` makes it now (for code that wants to change the figure itself).
    """

    def __init__(self) -> None:
        self.widget = w.VBox()
        self.widget.add_class("dcpviz-figure")
        self._static: go.Figure | None = None
        self.live: go.FigureWidget | None = None

    def show(self, fig: go.Figure) -> None:
        """Draw ``fig``: statically if nothing was drawn yet, else in the FigureWidget."""
        if self._static is None and self.live is None:
            out = w.Output()
            out.add_class(STATIC_CLASS)
            out.outputs = (
                {"output_type": "display_data", "data": mime_bundle(fig), "metadata": {}},
            )
            self._static = fig
            self.widget.children = (out,)
            return
        replace_figure(self.figure_widget(), fig)

    def figure_widget(self) -> go.FigureWidget:
        """The FigureWidget on screen, made now (holding the figure shown) if there is none."""
        if self.live is None:
            live = go.FigureWidget()
            live.add_class(LIVE_CLASS)
            if self._static is not None:
                replace_figure(live, self._static)
            self.live, self._static = live, None
            self.widget.children = (live,)
            self.widget.add_class(LIVE_CLASS)  # the FigureWidget's own element may not show it
        return self.live

    @property
    def figure(self) -> go.Figure:
        """The figure on screen (an empty one before the first ``show``)."""
        if self.live is not None:
            return self.live
        return self._static if self._static is not None else go.Figure()

    @property
    def data(self) -> tuple:
        """The traces of the figure on screen."""
        return self.figure.data

    @property
    def layout(self) -> go.Layout:
        """The layout of the figure on screen."""
        return self.figure.layout

    def to_plotly_json(self) -> dict:
        """``to_plotly_json()`` of the figure on screen."""
        return self.figure.to_plotly_json()

    def to_json(self, **kwargs: Any) -> str:
        """``to_json()`` of the figure on screen."""
        return self.figure.to_json(**kwargs)

    def add_class(self, name: str) -> FigureSlot:
        """Add a CSS class to the slot's widget (as ``Widget.add_class`` does)."""
        self.widget.add_class(name)
        return self

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
