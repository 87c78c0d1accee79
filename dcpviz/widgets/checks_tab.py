"""The Checks tab both explorers get: the result's findings, opened first when any of them is
'data-loss' or 'error'."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from dcpviz.analysis.checks import counts_line, failing
from dcpviz.views.html import table_html

TITLE = "Checks"


def checks_widget(checks: Any) -> w.Widget:
    """The findings as a table, with a one-line count above it."""
    head = w.HTML(f"<b>{counts_line(checks)}</b> — what DCP does silently here that loses data, fails or costs; "
                  "each row says what happens and the fix.")
    body = w.HTML(table_html(checks, max_rows=200) if len(checks) else "")
    return w.VBox([head, body])


def add_checks_tab(app: Any, result: Any) -> Any:
    """Append a Checks tab to ``app.tabs`` (any explorer); select it when something fails."""
    checks = result.checks
    tabs = app.tabs
    tabs.children = (*tabs.children, checks_widget(checks))
    index = len(tabs.children) - 1
    tabs.set_title(index, TITLE)
    if failing(checks):
        tabs.selected_index = index
    return app
