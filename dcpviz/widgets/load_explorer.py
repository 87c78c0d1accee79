"""The load explorer: hints and summary on top; tabs for Reads, Volume, Resharding,
Mismatches and Tables. Numbers come from the LoadResult's tables and the load views."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from dcpviz import views
from dcpviz.results import pick_read_tensors
from dcpviz.views.html import header_html, table_html
from dcpviz.widgets.checks_tab import tabs_with_checks
from dcpviz.widgets.figure import figure_slot, replace_figure
from dcpviz.widgets.panels import BuildsTabOnAccess, StaticFallback, TablesPanel
from dcpviz.widgets.stages_tab import stage_pages

LOAD_TABLES = ["problems", "mismatches", "rank_volume", "read_items", "hints_table", "resharding"]


class LoadExplorer(BuildsTabOnAccess, StaticFallback, w.VBox):
    """The load debugger app: hints, mismatches, reads, resharding, tables, checks;
    ``tabs.select(title)`` opens a tab as a click does."""

    TAB_OF = {
        **dict.fromkeys(["search", "fqn_picker", "rank_picker", "read_fig"], "Reads"),
        "volume_fig": "Volume",
        **dict.fromkeys(["reshard_by", "reshard_values", "reshard_fig"], "Resharding"),
    }

    def __init__(self, load: Any) -> None:
        self.result = load
        # The verdict is the summary's first row; each error message once, with its ranks; hints.
        self.header = w.HTML(header_html(load))
        # Each tab is built when first opened (``tabs.select("Volume")`` or a click).
        if (
            load.nothing_planned
        ):  # no reads to draw: the problems first, and why the read tabs are gone
            pages = [
                ("Problems", self._mismatch_tab),
                ("Reads", self._nothing_planned_tab),
                ("Tables", self._tables_tab),
            ]
        else:
            pages = [
                ("Reads", self._reads_tab),
                ("Volume", self._volume_tab),
                ("Resharding", self._resharding_tab),
                ("Mismatches", self._mismatch_tab),
                ("Tables", self._tables_tab),
                *stage_pages(load),  # a job with pipeline stages: a Stages tab
            ]
        self.tabs = tabs_with_checks(pages, load)
        super().__init__([self.header, self.tabs])
        self.add_class("dcpviz-explorer")
        self.add_class("dcpviz-load-explorer")

    def _nothing_planned_tab(self) -> w.Widget:
        return w.HTML(f"<p>{html.escape(self.result.nothing_planned_reason())}</p>")

    def _tables_tab(self) -> w.Widget:
        return TablesPanel(self.result, LOAD_TABLES)

    def _reads_tab(self) -> w.Widget:
        tensors = [t.fqn for t in self.result.trace.saved.tensors]
        first = (pick_read_tensors(self.result, 1) or tensors or [""])[0]
        self.search = w.Text(placeholder="filter tensors (substring)", description="search")
        self.fqn_picker = w.Select(
            options=tensors,
            value=first if first in tensors else None,
            rows=8,
            description="tensor",
            layout=w.Layout(width="460px"),
        )
        W = self.result.trace.scenario.world_size
        self.rank_picker = w.Dropdown(options=list(range(W)), value=0, description="target rank")
        self.read_fig = figure_slot()
        self.search.observe(self._on_search, "value")
        self.fqn_picker.observe(self._draw_reads, "value")
        self.rank_picker.observe(self._draw_reads, "value")
        self._all_tensors = tensors
        self._draw_reads()
        return w.VBox([self.search, self.fqn_picker, self.rank_picker, self.read_fig.widget])

    def _on_search(self, change: Any = None) -> None:
        text = self.search.value.strip().lower()
        opts = [f for f in self._all_tensors if text in f.lower()]
        cur = self.fqn_picker.value
        self.fqn_picker.options = opts
        if cur in opts:
            self.fqn_picker.value = cur
        elif opts:
            self.fqn_picker.value = opts[0]

    def _draw_reads(self, change: Any = None) -> None:
        if self.fqn_picker.value:
            replace_figure(
                self.read_fig,
                views.read_layout(self.result, self.fqn_picker.value, self.rank_picker.value),
            )

    def _volume_tab(self) -> w.Widget:
        self.volume_fig = figure_slot()
        if self.result.summary["reads"]:  # len(read_items), without building it
            replace_figure(self.volume_fig, views.read_volume(self.result))
        return w.VBox([self.volume_fig.widget])

    def _resharding_tab(self) -> w.Widget:
        options = [("by writer rank", "writer_rank")]
        if len(self.result.read_items) and self.result.read_items["file"].notna().any():
            options.append(("by storage file", "file"))
        self.reshard_by = w.ToggleButtons(options=options, value="writer_rank")
        self.reshard_values = w.ToggleButtons(
            options=[
                ("bytes read", "nbytes"),
                ("reads", "reads"),
                ("chunk bytes deserialised", "chunk_nbytes"),
            ],
            value="nbytes",
        )
        self.reshard_fig = figure_slot()
        self.reshard_by.observe(self._draw_resharding, "value")
        self.reshard_values.observe(self._draw_resharding, "value")
        self._draw_resharding()
        return w.VBox([w.HBox([self.reshard_by, self.reshard_values]), self.reshard_fig.widget])

    def _draw_resharding(self, change: Any = None) -> None:
        if len(self.result.read_items):
            replace_figure(
                self.reshard_fig,
                views.resharding(
                    self.result, by=self.reshard_by.value, values=self.reshard_values.value
                ),
            )

    def _mismatch_tab(self) -> w.Widget:
        mm = self.result.mismatches
        if not len(mm):
            return w.HTML(
                "<p>No mismatches: every key the target wants is in the checkpoint with its shape and dtype.</p>"
            )
        # Hints are in the header (once); here one row per problem, then every rank.
        problems = self.result.problems.drop(columns=["n_ranks"])
        per_rank = mm.drop(
            columns=["saved_size", "saved_dtype", "current_size", "current_dtype"], errors="ignore"
        )
        return w.HTML(
            "<h4>One row per problem</h4>"
            + table_html(problems, max_rows=500)
            + "<h4>Every key, every rank</h4>"
            + table_html(per_rank, max_rows=500)
        )
