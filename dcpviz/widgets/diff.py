"""The diff explorer: the verdict, the overview figure, a tensor picker for the regions
compared, and the diff table. Numbers come from the DiffResult's tables and the diff views."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from dcpviz import views
from dcpviz.core.errors import DcpvizError
from dcpviz.views.html import header_html, table_html
from dcpviz.widgets.figure import figure_slot, replace_figure


class DiffExplorer(w.VBox):
    """Verdict and notes on top, what differs, one tensor's regions (picked), the diff table."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.header = w.HTML(header_html(result))
        self.overview = figure_slot()
        replace_figure(self.overview, views.diff_overview(result))
        regions = result.regions
        keys = (
            (
                regions.assign(bad=regions["differing"] > 0)
                .sort_values(["bad", "fqn"], ascending=[False, True])["fqn"]
                .drop_duplicates()
                .tolist()
            )
            if len(regions)
            else []
        )
        self.picker = w.Dropdown(options=keys, description="tensor", layout={"width": "60%"})
        self.regions_fig = figure_slot()
        self.picker.observe(lambda _change: self._show_regions(), names="value")
        self._show_regions()
        self.table = w.HTML(table_html(result.changes))
        parts: list[Any] = [self.header, self.overview.widget]
        if keys:
            parts += [self.picker, self.regions_fig.widget]
        super().__init__([*parts, self.table])

    def _show_regions(self) -> None:
        if self.picker.value:
            replace_figure(self.regions_fig, views.diff_regions(self.result, self.picker.value))


def diff_app(result: Any, compare: Any = None) -> DiffExplorer:
    """explore() for a DiffResult (``compare`` is for save results only)."""
    if compare is not None:
        raise DcpvizError("explore(diff, compare=...) : a diff already compares two checkpoints.")
    return DiffExplorer(result)
