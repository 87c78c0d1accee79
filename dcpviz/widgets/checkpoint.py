"""The checkpoint explorer: what ``dcpviz.inspect_checkpoint`` read from a DCP directory or a
safetensors folder — checks first, the file layout, the files and chunks tables. Numbers come
from the CheckpointReport's tables and ``views.file_layout``."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from dcpviz import views
from dcpviz.core.errors import DcpvizError
from dcpviz.results import CheckpointReport
from dcpviz.views.html import header_html, parts_tables_html
from dcpviz.widgets.checks_tab import checks_widget
from dcpviz.widgets.figure import figure_slot, replace_figure


class CheckpointExplorer(w.VBox):
    """Summary and notes on top, then tabs: Checks, Files (the layout figure), Tables."""

    def __init__(self, report: CheckpointReport) -> None:
        self.result = report
        self.header = w.HTML(header_html(report))
        self.checks = checks_widget(report.checks)
        self.layout_fig = figure_slot()
        if len(report.storage):
            replace_figure(self.layout_fig, views.file_layout(report))
        self.tables = w.HTML(parts_tables_html(report.parts()))
        self.tabs = w.Tab([self.checks, self.layout_fig.widget, self.tables])
        for i, title in enumerate(("Checks", "Files", "Tables")):
            self.tabs.set_title(i, title)
        super().__init__([self.header, self.tabs])


def checkpoint_app(result: Any, compare: Any = None) -> CheckpointExplorer:
    """explore() for a checkpoint (``dcpviz.inspect_checkpoint``'s result)."""
    if compare is not None:
        raise DcpvizError(
            "explore(checkpoint, compare=...): to compare two checkpoints use dcpviz.diff(a, b)."
        )
    return CheckpointExplorer(
        result if isinstance(result, CheckpointReport) else CheckpointReport(result)
    )
