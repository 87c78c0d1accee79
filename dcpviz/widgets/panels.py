"""Pieces shared by the explorers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as w
import pandas as pd

from dcpviz.views.html import table_html

BYTE_COLUMNS = ("nbytes", "planned_nbytes", "chunk_nbytes", "wanted_nbytes", "storage_nbytes")


class StaticFallback:
    """Adds a static HTML copy of an app's summary to its display bundle.

    Jupyter renders the live widget; where widgets cannot run (a notebook exported with nbconvert
    without widget state, a code-hosting site's preview) the summary shows instead of nothing.
    Needs ``self.header`` (an HTML widget) and ``self.tabs``.
    """

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        data = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        if data is not None:
            data["text/html"] = self.static_html()
        return data

    def static_html(self) -> str:
        """The summary header, and what the interactive tabs would show."""
        tabs = ", ".join(self.tabs.get_title(i) for i in range(len(self.tabs.children)))  # type: ignore[attr-defined]
        note = (
            '<p style="color:#666;font-size:12px">Static summary: the interactive explorer (tabs: '
            f"{tabs}) needs a running Jupyter kernel with ipywidgets. Run the notebook to use it.</p>"
        )
        return f'<div class="dcpviz-static">{self.header.value}{note}</div>'  # type: ignore[attr-defined]


Page = tuple[str, Callable[[], w.Widget]]


class LazyTabs(w.Tab):
    """Tabs whose content is built the first time each one is shown.

    Each page is a title and a function that builds its widget. The selected page is built at
    once; another page is built when it is first selected (by a click or by setting
    ``selected_index``), into a box that stands in for it until then. Nothing else changes: a
    page shows exactly what building it up front would have shown.
    """

    def __init__(self, pages: Sequence[Page], selected: int = 0) -> None:
        self._builders = [build for _, build in pages]
        self._built: list[w.Widget | None] = [None] * len(pages)
        # The selected page is built before its box, so the front end gets it with the box's
        # first state rather than as a later update to a box it may already be drawing.
        first = self._built[selected] = self._builders[selected]()
        super().__init__(
            children=[w.VBox([first] if i == selected else []) for i in range(len(pages))],
            titles=[title for title, _ in pages],
            selected_index=selected,
        )
        self.observe(self._on_select, "selected_index")

    def page(self, key: int | str) -> w.Widget:
        """The content of a page (by index or title), built now if it was not yet."""
        index = self.titles.index(key) if isinstance(key, str) else key
        built = self._built[index]
        if built is None:
            built = self._built[index] = self._builders[index]()
            self.children[index].children = (built,)
        return built

    def select(self, key: int | str) -> w.Widget:
        """Select a page (by index or title), as a click on its tab does; return its content."""
        index = self.titles.index(key) if isinstance(key, str) else key
        self.selected_index = index
        return self.page(index)

    def is_built(self, key: int | str) -> bool:
        """Whether a page's content exists yet."""
        index = self.titles.index(key) if isinstance(key, str) else key
        return self._built[index] is not None

    def _on_select(self, change: Any) -> None:
        if change["new"] is not None:
            self.page(change["new"])


class BuildsTabOnAccess:
    """Reading a tab's widget (``app.volume_mode``, ``app.phase``, ...) before the tab was opened
    builds that tab first, so code that drives an explorer works as when every tab was built up
    front. ``TAB_OF`` maps each such attribute to its tab's title; needs ``self.tabs``."""

    TAB_OF: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: a widget of a tab not built yet, or a typo.
        title = type(self).TAB_OF.get(name)
        tabs = self.__dict__.get("tabs")
        if title is None or tabs is None or title not in tabs.titles or tabs.is_built(title):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        tabs.page(title)
        return object.__getattribute__(self, name)


class TablesPanel(w.VBox):
    """Pick one of a result's tables; filter by fqn, sort, show N rows."""

    def __init__(self, result: Any, names: list[str]) -> None:
        self.result = result
        self.table_name = w.Dropdown(options=names, value=names[0], description="table")
        self.table_filter = w.Text(placeholder="fqn contains…", description="filter")
        self.table_sort = w.Dropdown(description="sort by")
        self.table_desc = w.Checkbox(value=False, description="descending")
        self.table_rows = w.BoundedIntText(value=100, min=10, max=5000, description="rows")
        self.table_out = w.HTML()
        self.table_name.observe(self._on_table, "value")
        for ctl in (self.table_filter, self.table_sort, self.table_desc, self.table_rows):
            ctl.observe(self._draw, "value")
        self._on_table()
        super().__init__(
            [
                w.HBox([self.table_name, self.table_filter]),
                w.HBox([self.table_sort, self.table_desc, self.table_rows]),
                self.table_out,
            ]
        )

    def frame(self) -> pd.DataFrame:
        """The DataFrame of the table selected in the panel."""
        return getattr(self.result, self.table_name.value)

    def _on_table(self, change: Any = None) -> None:
        self.table_sort.options = ["(table order)"] + list(self.frame().columns)
        self.table_sort.value = "(table order)"
        self._draw()

    def _draw(self, change: Any = None) -> None:
        df = self.frame()
        text = self.table_filter.value.strip()
        if text and "fqn" in df.columns:
            df = df[df["fqn"].astype(str).str.contains(text, regex=False)]
        if self.table_sort.value and self.table_sort.value != "(table order)":
            df = df.sort_values(
                self.table_sort.value, ascending=not self.table_desc.value, kind="stable"
            )
        self.table_out.value = table_html(
            df, max_rows=self.table_rows.value, byte_cols=BYTE_COLUMNS
        )
