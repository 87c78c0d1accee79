"""The Checks tab both explorers get: the result's findings, opened first when any of them is
'data-loss' or 'error'."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as w

from dcpviz.analysis.checks import counts_line, failing
from dcpviz.views.html import table_html
from dcpviz.widgets.panels import LazyTabs, Page

TITLE = "Checks"


def checks_widget(checks: Any) -> w.Widget:
    """The findings as a table, with a one-line count above it."""
    head = w.HTML(
        f"<b>{counts_line(checks)}</b> — what DCP does silently here that loses data, fails or costs; "
        "each row says what happens and the fix."
    )
    body = w.HTML(table_html(checks, max_rows=200) if len(checks) else "")
    return w.VBox([head, body])


def tabs_with_checks(pages: Sequence[Page], result: Any) -> LazyTabs:
    """The app's pages and a last Checks page, which is the one shown first when a check fails
    (the checks are computed now to know that; every other page is built when first opened)."""
    checks = result.checks
    pages = [*pages, (TITLE, lambda: checks_widget(checks))]
    return LazyTabs(pages, selected=len(pages) - 1 if failing(checks) else 0)
