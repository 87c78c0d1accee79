"""The explorers' Stages tab, for a job with pipeline stages (a ``pp`` mesh dim) or experts
sharded over ``ep``: what each stage writes or reads, grouped, and which experts each rank holds.

Built when first opened, like every tab (``widgets.panels.LazyTabs``). A job whose stages are not
known (no ``pp`` dim, no dim names) and that has no ep-sharded experts gets no Stages tab: the
other tabs show it whole.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from dcpviz import views
from dcpviz.analysis.facets import EXPERT_DIM, is_grouped_expert, stage_facet
from dcpviz.analysis.load.stage_tables import stage_facets, stage_resharding
from dcpviz.analysis.save import stage_tables
from dcpviz.views.html import table_html
from dcpviz.widgets.figure import figure_slot, replace_figure
from dcpviz.widgets.panels import Page

TITLE = "Stages"
BYTE_COLUMNS = ("nbytes", "planned_nbytes", "chunk_nbytes")


def stage_pages(result: Any) -> list[Page]:
    """[("Stages", build)] for a save or load whose job has pipeline stages, or experts sharded
    over ep (a load: grouped expert tensors in the checkpoint and an ``ep`` dim on either side);
    [] otherwise."""
    kind = getattr(result, "kind", None)
    if kind == "save":
        has_pp = stage_facet(result.trace.scenario).ok
        if result.trace.global_plans is None:  # planning failed: nothing written to group
            return []
        if has_pp or stage_tables.ep_expert_keys(result.trace):
            return [(TITLE, lambda: SaveStages(result))]
    elif kind == "load":
        # From the recorded meshes alone: the reads table (seconds on a large load) is built
        # when the tab is first opened, not for deciding whether there is one.
        if any(f.ok for f in stage_facets(result.trace)) or _load_has_ep_experts(result.trace):
            return [(TITLE, lambda: LoadStages(result))]
    return []


def _has_experts(trace: Any) -> bool:
    return any(is_grouped_expert(t.fqn, tuple(t.size)) for t in trace.saved.tensors)


def _load_has_ep_experts(trace: Any) -> bool:
    """Grouped experts in the checkpoint and an ``ep`` dim on the target or the saved side."""
    sides = (trace.scenario, trace.saved_scenario)
    named = any(EXPERT_DIM in tuple(sc.mesh_dim_names or ()) for sc in sides if sc is not None)
    return named and _has_experts(trace)


def _note(text: str) -> w.HTML:
    return w.HTML(f"<p style='color:#555'>{html.escape(text)}</p>")


class SaveStages(w.VBox):
    """A save's stages: the stage table, bytes per rank faceted by stage (total or by module),
    a tensor's chunk layout with its writers by stage, expert bytes per expert shard, and the
    chunk layout of an expert tensor by expert shard."""

    def __init__(self, result: Any) -> None:
        self.result = result
        facet = stage_facet(result.trace.scenario, "this save")
        self.experts = stage_tables.ep_expert_keys(result.trace)
        options = []
        if facet.ok:
            options += [
                ("bytes per rank", "total"),
                ("by module", "module"),
                ("layout by stage", "stage_layout"),
            ]
        if not stage_tables.expert_volume(result.trace).empty:
            options.append(("expert shards", "experts"))
        if self.experts:
            options.append(("expert layout", "layout"))
        self.table = w.HTML(
            table_html(stage_tables.stage_volume(result.trace), byte_cols=BYTE_COLUMNS)
            if facet.ok
            else ""
        )
        self.why = _note("" if facet.ok else f"No stage grouping: {facet.reason}.")
        self.view = w.ToggleButtons(options=options, value=options[0][1])
        self.expert_picker = w.Dropdown(
            options=self.experts,
            value=self.experts[0] if self.experts else None,
            description="tensor",
            layout=w.Layout(width="460px"),
        )
        tensors = [t.fqn for t in result.trace.metadata.tensors] if facet.ok else []
        self.tensor_picker = w.Dropdown(
            options=tensors,
            value=tensors[0] if tensors else None,
            description="tensor",
            layout=w.Layout(width="460px"),
        )
        self.fig = figure_slot()
        for ctl in (self.view, self.expert_picker, self.tensor_picker):
            ctl.observe(self._draw, "value")
        self._draw()
        super().__init__(
            [
                self.table,
                self.why,
                self.view,
                self.tensor_picker,
                self.expert_picker,
                self.fig.widget,
            ]
        )

    def _draw(self, change: Any = None) -> None:
        mode = self.view.value
        self.expert_picker.layout.display = "" if mode == "layout" else "none"
        self.tensor_picker.layout.display = "" if mode == "stage_layout" else "none"
        if mode == "experts":
            fig = views.expert_volume(self.result)
        elif mode == "layout":
            fig = views.chunk_layout(self.result, self.expert_picker.value, facet="expert")
        elif mode == "stage_layout":
            fig = views.chunk_layout(self.result, self.tensor_picker.value, facet="stage")
        else:
            fig = views.rank_volume(
                self.result, by="module" if mode == "module" else None, facet="stage"
            )
        replace_figure(self.fig, fig)


class LoadStages(w.VBox):
    """A load by stage: what each target stage reads from each saved stage (table, and the
    resharding view faceted by both), bytes read per target stage, and which experts each
    target rank reads (when the checkpoint has grouped expert tensors)."""

    def __init__(self, load: Any) -> None:
        self.result = load
        target, saved = stage_facets(load.trace)
        staged = target.ok or saved.ok
        why = [f.reason for f in (target, saved) if not f.ok]
        self.table = w.HTML(
            table_html(stage_resharding(load.trace, load.read_items), byte_cols=BYTE_COLUMNS)
            if staged
            else ""
        )
        self.why = _note(f"Not split by stage: {'; '.join(why)}." if why else "")
        options = (
            [("who reads from whom", "writer_rank"), ("bytes read", "volume")] if staged else []
        )
        if _has_experts(load.trace):
            options.append(("experts read", "expert"))
        self.view = w.ToggleButtons(options=options, value=options[0][1])
        self.values = w.ToggleButtons(
            options=[
                ("bytes read", "nbytes"),
                ("reads", "reads"),
                ("chunk bytes deserialised", "chunk_nbytes"),
            ],
            value="nbytes",
        )
        self.fig = figure_slot()
        self.view.observe(self._draw, "value")
        self.values.observe(self._draw, "value")
        self._draw()
        super().__init__([self.table, self.why, self.view, self.values, self.fig.widget])

    def _draw(self, change: Any = None) -> None:
        view = self.view.value
        self.values.layout.display = "" if view == "writer_rank" else "none"
        if view == "volume":
            fig = views.read_volume(self.result, facet="stage")
        elif view == "expert":
            fig = views.resharding(self.result, by="expert", facet="stage")
        else:
            fig = views.resharding(self.result, values=self.values.value, facet="stage")
        replace_figure(self.fig, fig)
