"""The explorers build a tab when it is first opened, and it shows what building it up front did.

``explore()`` builds the header and the first visible tab; every other tab is built the first
time it is selected. Each test opens the tabs lazily, in an order unlike the constructor's, and
compares everything on screen (every control's options, value and visibility, every HTML text,
every figure's data and layout) with an explorer whose tabs were all built at construction, in
the order the eager explorer built them, and with the views called directly.
"""

from __future__ import annotations

import json
from typing import Any

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go
import pytest
from run_helpers import mlp_with_rank_state

import dcpviz
import dcpviz.views as V
from dcpviz.analysis.save import tables
from dcpviz.views.dedup import dedup_detail_figure, dedup_overview_figure
from dcpviz.widgets.figure import figure_widget, replace_figure
from dcpviz.widgets.panels import LazyTabs

SAVES = {
    "hsdp": dict(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"),
    "strided": dict(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp"),
    "training-state": dict(model="llama-tiny", world_size=4, recipe="fsdp", optimizer="adamw"),
}


@pytest.fixture(scope="module", params=list(SAVES))
def save(request):
    return dcpviz.simulate_save(dcpviz.Scenario(**SAVES[request.param]))


@pytest.fixture(scope="module")
def data_loss():
    """A save whose checks fail (per-rank values lost to dedup): its explorer opens on Checks."""
    return dcpviz.simulate_save(
        dcpviz.Scenario(model=mlp_with_rank_state, world_size=4, recipe="fsdp"), fast=False
    )


@pytest.fixture(scope="module")
def load():
    saved = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    return dcpviz.simulate_load(saved, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"))


def figure(fig: go.Figure) -> dict:
    """A figure's data and layout as JSON data, without the random trace ids a widget adds."""
    return plain_figure(json.loads(fig.to_json()))


def plain_figure(data: Any) -> Any:
    """Figure JSON without trace ids and without empty objects (``yaxis.title = {}``: a
    FigureWidget drops them, a Figure keeps them; plotly draws neither)."""
    if isinstance(data, dict):
        out = {k: plain_figure(v) for k, v in data.items() if k != "uid"}
        return {k: v for k, v in out.items() if v != {}}
    if isinstance(data, list):
        return [plain_figure(v) for v in data]
    return data


def shown(fig: go.Figure) -> dict:
    """``figure`` of a view as the explorer shows it (swapped into a FigureWidget)."""
    widget = figure_widget()
    replace_figure(widget, fig)
    return figure(widget)


def state(x: Any) -> Any:
    """Everything a widget tree shows, as plain data (model ids left out)."""
    if isinstance(x, go.FigureWidget):
        return {"figure": figure(x)}
    if isinstance(x, w.Output):  # a figure shown first (plotly's MIME bundle), or other output
        return {"outputs": json.loads(json.dumps(x.outputs)), "classes": tuple(x._dom_classes)}
    if isinstance(x, LazyTabs):
        return {
            "titles": x.titles,
            "selected": x.selected_index,
            "pages": [state(x.page(i)) for i in range(len(x.titles))],
        }
    shown = {
        "type": type(x).__name__,
        "display": x.layout.display,
        "classes": tuple(x._dom_classes),
    }
    if isinstance(x, w.Box):
        return {**shown, "children": [state(c) for c in x.children]}
    keys = (
        "value",
        "_options_labels",
        "description",
        "placeholder",
        "rows",
        "min",
        "max",
        "disabled",
    )
    return {**shown, **{k: getattr(x, k) for k in keys if x.has_trait(k)}}


def eager(result: Any, order: list[int] | None = None) -> Any:
    """The explorer with every tab built at construction, as main's explorer did."""
    app = dcpviz.explore(result)
    for i in order or range(len(app.tabs.titles)):
        app.tabs.page(i)
    return app


def test_construction_builds_only_the_first_visible_tab(save):
    app = dcpviz.explore(save)
    assert app.tabs.titles == ("Layout", "Dedup", "Volume", "Phases", "Tables", "Checks")
    assert app.tabs.selected_index == 0
    assert [app.tabs.is_built(i) for i in range(6)] == [True, False, False, False, False, False]
    # A click (selected_index set by the front end) builds the tab, once.
    app.tabs.selected_index = 2
    volume = app.tabs.page(2)
    assert app.tabs.is_built(2) and app.tabs.children[2].children == (volume,)
    app.tabs.selected_index = 0
    app.tabs.selected_index = 2
    assert app.tabs.page(2) is volume


def test_a_failing_check_opens_on_checks_and_builds_nothing_else(data_loss):
    app = dcpviz.explore(data_loss)
    assert app.tabs.titles[app.tabs.selected_index] == "Checks"
    assert [app.tabs.titles[i] for i in range(6) if app.tabs.is_built(i)] == ["Checks"]


def test_each_tab_opened_late_equals_the_eager_explorer(save, data_loss):
    for result in (save, data_loss):
        reference = state(eager(result))
        lazy = dcpviz.explore(result)
        shown_first = lazy.tabs.selected_index
        for i in reversed(range(len(lazy.tabs.titles))):  # the other way round from the constructor
            lazy.tabs.select(i)
        lazy.tabs.selected_index = shown_first
        assert state(lazy) == reference


def test_tabs_show_the_views_and_tables_directly(save):
    app = dcpviz.explore(save)
    first = save.tensor_groups["members"].iloc[0][0]
    assert figure(app.layout_fig) == shown(V.chunk_layout(save, first))
    app.tabs.select("Dedup")
    assert figure(app.dedup_fig) == shown(V.dedup(save))
    app.tabs.select("Volume")
    assert figure(app.volume_fig) == shown(V.rank_volume(save, by=None, depth=1))
    tables_panel = app.tabs.select("Tables")
    assert tables_panel.table_out.value == V.html.table_html(
        save.rank_volume, max_rows=100, byte_cols=dcpviz.widgets.panels.BYTE_COLUMNS
    )


def test_load_explorer_tabs_are_lazy_and_equal_the_eager_ones(load):
    app = dcpviz.explore(load)
    assert (
        app.tabs.titles[0] == "Reads"
        and [app.tabs.is_built(i) for i in range(len(app.tabs.titles))][1:] == [False] * 5
    )
    reference = state(eager(load))
    for i in reversed(range(len(app.tabs.titles))):
        app.tabs.select(i)
    app.tabs.selected_index = 0
    assert state(app) == reference
    assert figure(app.volume_fig) == shown(V.read_volume(load))


def test_one_tensor_tables_equal_the_whole_tables_filtered(save):
    """The layout tab reads one tensor's write items and chunks without building every item's row."""
    every_item, every_chunk = save.write_items, save.chunks
    for fqn in save.tensors["fqn"]:
        mine = every_item[every_item["fqn"] == fqn].reset_index(drop=True)
        pd.testing.assert_frame_equal(tables.write_items(save.trace, fqn), mine)
        pd.testing.assert_frame_equal(
            tables.chunks(save.trace, fqn),
            every_chunk[every_chunk["fqn"] == fqn].reset_index(drop=True),
        )
        pd.testing.assert_frame_equal(
            save.tensor_boxes(fqn), tables.tensor_boxes(every_item, every_chunk, fqn)
        )


def test_dedup_views_from_the_choices_equal_those_from_the_whole_table(save):
    """The overview and each tensor's detail drawn from the full dedup table, as before."""
    W = save.trace.scenario.world_size
    full = save.dedup
    assert shown(V.dedup(save)) == shown(dedup_overview_figure(full, save.tensor_groups, W))
    for fqn in dict.fromkeys(full["fqn"]):
        assert shown(V.dedup(save, fqn=fqn)) == shown(dedup_detail_figure(full, fqn, W))


def test_reading_a_tab_widget_builds_its_tab(save):
    """Code that drives the explorer (``app.volume_mode.value = ...``) works as with eager tabs."""
    app = dcpviz.explore(save)
    assert not app.tabs.is_built("Volume")
    app.volume_mode.value = "module"
    assert app.tabs.is_built("Volume") and app.tabs.selected_index == 0
    assert figure(app.volume_fig) == shown(V.rank_volume(save, by="module", depth=1))
    with pytest.raises(AttributeError):
        app.no_such_widget  # noqa: B018
