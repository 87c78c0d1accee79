"""The explorers' figures: the first one drawn without a FigureWidget, then a FigureWidget.

Each figure an explorer shows first is plotly's own MIME bundle in an ipywidgets ``Output``
(``widgets/figure.py``); the first redraw swaps it for a ``FigureWidget`` that later redraws
update in place. Checked here: the bundle is the one plotly's own renderer writes; what the
Output shows equals what the FigureWidget path shows for the same view; after a control change
the FigureWidget shows the view of the new choice, and stays the same widget; a fresh process
that opens an explorer imports none of plotly's renderer chain (the cold-kernel cost).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import ipywidgets as w
import plotly.graph_objects as go
import pytest
from test_explorer_lazy import figure, plain_figure, shown

import dcpviz
import dcpviz.views as V
from dcpviz.widgets.figure import (
    LIVE_CLASS,
    MIME,
    STATIC_CLASS,
    FigureSlot,
    figure_widget,
    mime_bundle,
    replace_figure,
)


@pytest.fixture(scope="module")
def save():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp")
    )


@pytest.fixture(scope="module")
def load():
    saved = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    return dcpviz.simulate_load(saved, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"))


def on_screen(slot: FigureSlot) -> tuple[str, dict]:
    """What a slot's widget shows: ('static', the bundle's figure) or ('live', the widget's)."""
    (child,) = slot.widget.children
    if isinstance(child, w.Output):
        assert STATIC_CLASS in child._dom_classes
        (out,) = child.outputs
        assert out["output_type"] == "display_data"
        # As the kernel sends it: JSON (an array left in the bundle would fail here).
        return "static", plain_figure(json.loads(json.dumps(out["data"][MIME])))
    assert isinstance(child, go.FigureWidget) and LIVE_CLASS in child._dom_classes
    assert child is slot.live
    return "live", figure(child)


def test_the_bundle_is_plotlys_own(save):
    """The Output holds what plotly's ``plotly_mimetype`` renderer displays for the figure."""
    from plotly.io._base_renderers import PlotlyRenderer

    for fig in (V.chunk_layout(save, "tok_embeddings.weight"), V.dedup(save), go.Figure()):
        ours = mime_bundle(fig)
        theirs = PlotlyRenderer().to_mimebundle(fig.to_dict())
        assert ours[MIME] == theirs[MIME]
        assert set(ours) == {MIME, "text/plain"}


def test_the_figurewidget_shows_the_figure_with_its_template(save):
    """``replace_figure`` puts the figure in the widget as it is (the old one lost the
    figure's template inside its batch update: the widget drew plotly's default)."""
    for fig in (V.chunk_layout(save, "output.weight"), V.rank_volume(save), V.dedup(save)):
        widget = figure_widget()
        replace_figure(widget, go.Figure(go.Bar(x=[1], y=[1])))  # something shown before
        replace_figure(widget, fig)
        assert figure(widget) == figure(fig)
        assert widget.layout.template.layout.plot_bgcolor == "white"  # plotly_white's


def test_save_explorer_first_figures_static_then_live(save):
    app = dcpviz.explore(save)
    first = save.tensor_groups["members"].iloc[0][0]
    assert on_screen(app.layout_fig) == ("static", shown(V.chunk_layout(save, first)))
    assert app.layout_fig.live is None
    assert figure(app.layout_fig) == shown(V.chunk_layout(save, first))
    for tab, slot, view in (
        ("Dedup", "dedup_fig", V.dedup(save)),
        ("Volume", "volume_fig", V.rank_volume(save, by=None, depth=1)),
    ):
        app.tabs.select(tab)
        assert on_screen(getattr(app, slot)) == ("static", shown(view))
    # A control change: the FigureWidget takes over, showing the new choice ...
    app.rank_picker.value = 1
    live = app.layout_fig.live
    assert on_screen(app.layout_fig) == (
        "live",
        shown(V.chunk_layout(save, first, highlight_rank=1)),
    )
    # ... and later changes update that same widget in place.
    app.member_picker.value = app.member_picker.options[-1]
    app.search.value = "output"
    assert app.layout_fig.live is live and on_screen(app.layout_fig) == (
        "live",
        shown(V.chunk_layout(save, "output.weight", highlight_rank=1)),
    )
    app.volume_mode.value = "module"
    assert on_screen(app.volume_fig) == ("live", shown(V.rank_volume(save, by="module", depth=1)))


def test_load_explorer_first_figure_static_then_live(load):
    app = dcpviz.explore(load)
    fqn, rank = app.fqn_picker.value, app.rank_picker.value
    assert on_screen(app.read_fig) == ("static", shown(V.read_layout(load, fqn, rank)))
    app.rank_picker.value = 3
    assert on_screen(app.read_fig) == ("live", shown(V.read_layout(load, fqn, 3)))
    app.tabs.select("Resharding")
    assert on_screen(app.reshard_fig) == ("static", shown(V.resharding(load)))
    app.reshard_values.value = "reads"
    assert on_screen(app.reshard_fig) == ("live", shown(V.resharding(load, values="reads")))


def test_slot_before_any_figure_and_on_demand_widget():
    slot = FigureSlot()
    assert slot.widget.children == () and slot.data == () and slot.live is None
    fig = go.Figure(go.Bar(x=[1, 2], y=[3, 4]), layout=dict(title="t"))
    slot.show(fig)
    assert slot.figure is fig and slot.layout.title.text == "t"
    widget = slot.figure_widget()  # code that wants the widget gets it, holding the figure
    assert slot.widget.children == (widget,) and figure(widget) == figure(fig)
    assert slot.figure_widget() is widget


def _run(code: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_fresh_process_draws_the_first_view_without_plotlys_renderers(save, load, tmp_path):
    """What made a fresh kernel's first view slow: FigureWidget imports plotly.io._renderers
    (nbformat, jsonschema, ...). The explorers' first views import none of it; the first
    control change does (it makes the FigureWidget)."""
    save.to_json(tmp_path / "save.json")
    load.to_json(tmp_path / "load.json")
    seen = _run(
        f"""
        import json, sys
        import dcpviz
        HEAVY = ("plotly.io._renderers", "plotly.basewidget", "nbformat", "jsonschema")
        def heavy():
            return sorted(m for m in HEAVY if m in sys.modules)
        out = {{}}
        save = dcpviz.explore(dcpviz.load_trace({str(tmp_path / "save.json")!r}))
        load = dcpviz.explore(dcpviz.load_trace({str(tmp_path / "load.json")!r}))
        out["first views"] = heavy()
        save.rank_picker.value = 1
        out["after a change"] = heavy()
        print(json.dumps(out))
        """
    )
    assert seen["first views"] == []
    assert "plotly.basewidget" in seen["after a change"]
