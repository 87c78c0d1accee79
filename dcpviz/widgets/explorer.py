"""The explorer: a summary header and tabs for Layout, Dedup, Volume, Phases, Tables and Checks.

Every number on screen comes from a result's tables or a view; controls only choose what to
show, and update the figures in place.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w
import plotly.graph_objects as go

from dcpviz import views
from dcpviz.analysis.checkpoint.tables import CheckpointInfo
from dcpviz.core.errors import DcpvizError
from dcpviz.core.units import fmt_bytes
from dcpviz.views.html import header_html, table_html
from dcpviz.views.style import base_layout
from dcpviz.widgets.checkpoint import checkpoint_app
from dcpviz.widgets.checks_tab import tabs_with_checks
from dcpviz.widgets.diff import diff_app
from dcpviz.widgets.figure import figure_slot, replace_figure
from dcpviz.widgets.load_explorer import LoadExplorer
from dcpviz.widgets.panels import BuildsTabOnAccess, StaticFallback, TablesPanel
from dcpviz.widgets.stages_tab import stage_pages

PHASES = [
    ("1 · local plans", "local"),
    ("2 · global plan (dedup)", "global"),
    ("3 · final plans", "final"),
]
PHASE_TEXT = {
    "local": "Each rank's <code>create_local_plan()</code>: every rank plans every item it holds; "
    "replicas (plain tensors, Replicate dims) are planned by several ranks.",
    "global": "The coordinator's <code>create_global_plan()</code>: dedup keeps each replicated item on one rank, "
    "builds the checkpoint Metadata and validates that chunks tile each tensor.",
    "final": "Each rank's <code>finish_plan()</code> on the plan the coordinator sent back; "
    "DCP's default returns it unchanged.",
}
TABLES = [
    "rank_volume",
    "write_items",
    "dedup",
    "chunks",
    "tensors",
    "tensor_groups",
    "phase_changes",
]


class Explorer(BuildsTabOnAccess, StaticFallback, w.VBox):
    """Interactive view of a save result (``dcpviz.explore(result)``): tabs Layout, Dedup,
    Volume, Phases, Tables and Checks; ``tabs.select(title)`` opens one as a click does."""

    def __init__(self, result: Any, compare: Any = None) -> None:
        self.result = result
        self.compare = compare
        self.header = w.HTML(self._header_html())
        # Each tab is built when first opened (``tabs.select("Dedup")`` or a click): on a
        # 1024-rank trace building them all up front took seconds the first view does not need.
        pages = [
            ("Layout", self._layout_tab),
            ("Dedup", self._dedup_tab),
            ("Volume", self._volume_tab),
            ("Phases", self._phase_tab),
            ("Tables", self._tables_tab),
            *stage_pages(result),  # a job with pipeline stages or ep experts: a Stages tab
        ]
        self.tabs = tabs_with_checks(pages, result)
        super().__init__([self.header, self.tabs])
        self.add_class("dcpviz-explorer")

    # -- header ---------------------------------------------------------------------------
    def _header_html(self) -> str:
        return header_html(self.result)

    # -- layout tab -----------------------------------------------------------------------
    _hold_layout = False  # True while _on_group sets the pickers
    TAB_OF = {
        **dict.fromkeys(
            [
                "search",
                "component_picker",
                "group_picker",
                "member_picker",
                "rank_picker",
                "dim_rows",
                "dim_cols",
                "layout_fig",
            ],
            "Layout",
        ),
        **dict.fromkeys(["dedup_picker", "dedup_fig"], "Dedup"),
        **dict.fromkeys(["volume_mode", "volume_depth", "volume_fig"], "Volume"),
        **dict.fromkeys(["phase", "phase_text", "phase_fig", "phase_table"], "Phases"),
        "tables": "Tables",
    }

    def _layout_tab(self) -> w.Widget:
        groups = self.result.tensor_groups
        self._group_members = dict(zip(groups["group"], groups["members"]))
        self._group_component = dict(zip(groups["group"], groups["component"]))
        self.search = w.Text(
            placeholder="filter tensors (substring)",
            description="search",
            layout=w.Layout(width="320px"),
        )
        # A training state's parts (model, optim, lr_scheduler, ...): pick one to list its tensors.
        parts = list(dict.fromkeys(groups["component"]))
        self.component_picker = w.Dropdown(
            options=[("all", "")] + [(c, c) for c in parts], value="", description="component"
        )
        self.component_picker.layout.display = "" if len(parts) > 1 else "none"
        self.component_picker.observe(self._on_search, "value")
        self.group_picker = w.Select(
            options=list(groups["group"]),
            rows=10,
            description="tensor",
            layout=w.Layout(width="460px"),
        )
        self.member_picker = w.Dropdown(description="layer", layout=w.Layout(width="460px"))
        W = self.result.trace.scenario.world_size
        self.rank_picker = w.Dropdown(
            options=[("none", -1)] + [(str(r), r) for r in range(W)],
            value=-1,
            description="highlight",
        )
        self.dim_rows = w.Dropdown(description="rows dim")
        self.dim_cols = w.Dropdown(description="cols dim")
        self.layout_fig = figure_slot()
        self.layout_fig.add_class("dcpviz-layout-figure")
        self.search.observe(self._on_search, "value")
        self.group_picker.observe(self._on_group, "value")
        for ctl in (self.member_picker, self.rank_picker, self.dim_rows, self.dim_cols):
            ctl.observe(self._draw_layout, "value")
        if len(groups):
            self.group_picker.value = groups["group"].iloc[0]
            self._on_group()
        controls = w.VBox(
            [
                w.HBox([self.search, self.component_picker]),
                self.group_picker,
                self.member_picker,
                w.HBox([self.rank_picker]),
                w.HBox([self.dim_rows, self.dim_cols]),
            ]
        )
        return w.VBox([controls, self.layout_fig.widget])

    def _on_search(self, change: Any = None) -> None:
        text = self.search.value.strip().lower()
        part = self.component_picker.value
        options = [
            g
            for g, members in self._group_members.items()
            if (not part or self._group_component[g] == part)
            and (not text or any(text in m.lower() for m in members) or text in g.lower())
        ]
        current = self.group_picker.value
        self.group_picker.options = options
        if current in options:
            self.group_picker.value = current
        elif options:
            self.group_picker.value = options[0]

    def _on_group(self, change: Any = None) -> None:
        # Setting the pickers fires their observers; draw once, when all of them are set.
        self._hold_layout = True
        try:
            members = list(self._group_members.get(self.group_picker.value, ()))
            self.member_picker.options = members
            self.member_picker.layout.display = "" if len(members) > 1 else "none"
            if members:
                self.member_picker.value = members[0]
            fqn = self.member_picker.value
            size = self._size_of(fqn) if fqn else ()
            dims = list(range(len(size)))
            show = len(size) > 2
            for ctl in (self.dim_rows, self.dim_cols):
                ctl.layout.display = "" if show else "none"
            if show:
                self.dim_rows.options, self.dim_cols.options = dims, dims
                self.dim_rows.value, self.dim_cols.value = 0, 1
        finally:
            self._hold_layout = False
        self._draw_layout()

    def _size_of(self, fqn: str) -> tuple[int, ...]:
        t = self.result.tensors
        row = t[t["fqn"] == fqn]
        return tuple(row["size"].iloc[0]) if len(row) else ()

    def _draw_layout(self, change: Any = None) -> None:
        fqn = self.member_picker.value
        if not fqn or self._hold_layout:
            return
        dims = None
        if len(self._size_of(fqn)) > 2:
            if self.dim_rows.value == self.dim_cols.value:
                return
            dims = (self.dim_rows.value, self.dim_cols.value)
        rank = self.rank_picker.value
        fig = views.chunk_layout(
            self.result, fqn, dims=dims, highlight_rank=None if rank < 0 else rank
        )
        replace_figure(self.layout_fig, fig)

    @property
    def layout_figure(self):
        """The chunk-layout figure of the selected tensor (the figure on screen)."""
        return self.layout_fig.figure

    # -- dedup tab ------------------------------------------------------------------------
    def _dedup_tab(self) -> w.Widget:
        d = self.result.dedup_choices  # the dedup table's rows, without the replay's reasons
        fqns = list(dict.fromkeys(d["fqn"]))
        self.dedup_picker = w.Dropdown(
            options=[("all tensors (grouped)", "")] + [(f, f) for f in fqns], description="show"
        )
        self.dedup_fig = figure_slot()
        self._has_dedup = bool(len(d))
        self.dedup_picker.observe(self._draw_dedup, "value")
        self._draw_dedup()
        if not len(d):
            return w.HTML("<p>No item was planned by more than one rank: nothing to dedup.</p>")
        return w.VBox([self.dedup_picker, self.dedup_fig.widget])

    def _draw_dedup(self, change: Any = None) -> None:
        if not self._has_dedup:
            return
        fqn = self.dedup_picker.value or None
        replace_figure(self.dedup_fig, views.dedup(self.result, fqn=fqn))

    # -- volume tab -----------------------------------------------------------------------
    def _volume_tab(self) -> w.Widget:
        options = [("total", "total"), ("by module", "module")]
        if self.result.volume_by_component["component"].nunique() > 1:
            options.append(("by component", "component"))
        if self.compare is not None:
            options.append(("compare", "compare"))
        self.volume_mode = w.ToggleButtons(
            options=options, value="compare" if self.compare is not None else "total"
        )
        self.volume_depth = w.BoundedIntText(value=1, min=1, max=4, description="depth")
        self.volume_fig = figure_slot()
        self.volume_mode.observe(self._draw_volume, "value")
        self.volume_depth.observe(self._draw_volume, "value")
        self._draw_volume()
        return w.VBox([w.HBox([self.volume_mode, self.volume_depth]), self.volume_fig.widget])

    def _draw_volume(self, change: Any = None) -> None:
        mode = self.volume_mode.value
        self.volume_depth.layout.display = "" if mode == "module" else "none"
        if mode == "compare":
            fig = views.rank_volume(self.result, compare=self.compare)
        else:
            fig = views.rank_volume(
                self.result,
                by=mode if mode in ("module", "component") else None,
                depth=self.volume_depth.value,
            )
        replace_figure(self.volume_fig, fig)

    # -- phase stepper --------------------------------------------------------------------
    def _phase_tab(self) -> w.Widget:
        available = {
            p
            for p in ("local", "global", "final")
            if (p == "local" or getattr(self.result.trace, f"{p}_plans") is not None)
        }
        self.phase = w.ToggleButtons(
            options=[(label, key) for label, key in PHASES if key in available],
            value="local",
            style={"button_width": "auto"},
        )  # fixed widths cut "2 · global plan (dedup)"
        self.phase_text = w.HTML()
        self.phase_fig = figure_slot()
        self.phase_table = w.HTML()
        self.phase.observe(self._draw_phase, "value")
        self._draw_phase()
        return w.VBox([self.phase, self.phase_text, self.phase_fig.widget, self.phase_table])

    def _draw_phase(self, change: Any = None) -> None:
        phase = self.phase.value
        vol = self.result.phase_volume
        # The local plans change nothing (no rows): the item-by-item diff, hundreds of thousands
        # of rows at 1024 ranks, is computed when a later phase is first shown.
        changes = self.result.phase_changes if phase != "local" else None
        here = changes[changes["phase"] == phase] if changes is not None else ()
        cur = vol[vol["phase"] == phase]
        text = PHASE_TEXT[phase]
        n_items = int(cur["items"].sum())
        if phase == "local":
            text += (
                f"<br><b>{n_items}</b> items planned in total, {fmt_bytes(cur['nbytes'].sum())}."
            )
        else:
            dropped = here[here["change"] != "added"]
            text += (
                f"<br>This phase changed <b>{len(here)}</b> items ({len(dropped)} removed, "
                f"{int((here['change'] == 'added').sum())} added): {n_items} items, {fmt_bytes(cur['nbytes'].sum())} remain."
            )
        self.phase_text.value = f"<div style='max-width:900px'>{text}</div>"
        fig = go.Figure()
        for p, color in (("local", "#c6dbef"), ("global", "#6baed6"), ("final", "#08519c")):
            sub = vol[vol["phase"] == p]
            if len(sub) and (p == phase or p == "local"):
                fig.add_trace(
                    go.Bar(
                        x=sub["rank"],
                        y=sub["nbytes"],
                        name=f"{p} plans",
                        marker_color=color,
                        hovertemplate="rank %{x}: %{y:,} bytes<extra>" + p + "</extra>",
                    )
                )
        fig.update_layout(
            **base_layout(
                barmode="overlay",
                height=320,
                xaxis_title="rank",
                yaxis_title="bytes",
                title=f"Bytes per rank after the {phase} phase (over the local plans)",
            )
        )
        fig.update_xaxes(
            type="category" if len(vol["rank"].unique()) <= 64 else "linear"
        )  # every rank named
        replace_figure(self.phase_fig, fig)
        self.phase_table.value = (
            table_html(here, max_rows=200, byte_cols=("nbytes",)) if len(here) else ""
        )

    # -- tables tab -----------------------------------------------------------------------
    def _tables_tab(self) -> w.Widget:
        self.tables = TablesPanel(self.result, TABLES)
        return self.tables


def _load_app(result: Any, compare: Any = None) -> LoadExplorer:
    return LoadExplorer(result)


# Which app each kind of result gets (a table, not a branch: a new kind adds a line).
APPS = {"save": Explorer, "load": _load_app, "diff": diff_app, "checkpoint": checkpoint_app}


def explore(result: Any, compare: Any = None) -> Explorer | LoadExplorer:
    """The explorer app for a result: the save explorer (pass ``compare=`` a second save result
    to compare volumes) or the load debugger."""
    if isinstance(
        result, CheckpointInfo
    ):  # inspect_checkpoint's result: a DCP directory or an HF folder
        return checkpoint_app(result, compare=compare)
    app = APPS.get(getattr(result, "kind", None))
    if app is None:
        raise DcpvizError(
            f"explore() needs a result from simulate_save/load_trace, got {type(result).__name__}."
        )
    return app(result, compare=compare)
