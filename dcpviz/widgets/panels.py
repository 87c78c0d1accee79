"""Pieces shared by the explorers."""

from __future__ import annotations

from typing import Any

import ipywidgets as w
import pandas as pd

from dcpviz.views.html import table_html

BYTE_COLUMNS = ("nbytes", "planned_nbytes", "chunk_nbytes", "wanted_nbytes", "storage_nbytes")


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
        super().__init__([
            w.HBox([self.table_name, self.table_filter]),
            w.HBox([self.table_sort, self.table_desc, self.table_rows]),
            self.table_out,
        ])

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
            df = df.sort_values(self.table_sort.value, ascending=not self.table_desc.value, kind="stable")
        self.table_out.value = table_html(df, max_rows=self.table_rows.value, byte_cols=BYTE_COLUMNS)


def summary_html(rows: list[tuple[str, str]], errors: list[str]) -> str:
    """Summary rows and errors as an HTML table."""
    body = "".join(
        f'<tr><td style="font-weight:600;color:#2a5d9f;padding-right:12px">{k}</td><td>{v}</td></tr>' for k, v in rows
    )
    errs = "".join(f'<div style="color:#b00020">{e}</div>' for e in errors)
    return f'<div class="dcpviz-summary"><table>{body}</table>{errs}</div>'
