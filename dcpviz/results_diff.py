"""DiffResult: two checkpoints (or traces) compared, as tables, a verdict and report parts."""

from __future__ import annotations

import html
import json
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from dcpviz.analysis.diff import tables as dt
from dcpviz.core.diff_model import DiffSide, RegionResult, ValueResult
from dcpviz.core.trace import writable_file
from dcpviz.parts import Brief, FigurePart, MessagesPart, Part, SummaryRow, TablePart


class DiffResult:
    """What changed between A and B: ``changes`` (the diff table), ``tensors``, ``layout``,
    ``values``, ``regions``, ``renames``; ``same`` and ``exit_code`` (0 same content, 1 differs).
    A layout-only difference (other chunks, ranks or files) is the same content."""

    kind = "diff"

    def __init__(
        self,
        a: DiffSide,
        b: DiffSide,
        values: list[ValueResult] | None = None,
        regions: list[RegionResult] | None = None,
        *,
        compared_values: bool = False,
        atol: float = 0.0,
        rtol: float = 0.0,
    ) -> None:
        self.a, self.b = a, b
        self._values, self._regions = list(values or ()), list(regions or ())
        self.compared_values, self.atol, self.rtol = compared_values, atol, rtol

    @cached_property
    def pairing(self) -> dt.Pairing:
        """Which key of A goes with which key of B (common keys and certain renames)."""
        return dt.pairing(self.a, self.b)

    @cached_property
    def tensors(self) -> pd.DataFrame:
        """Paired keys: kind, dtype and shape on each side, and what changed."""
        return dt.tensors_table(self.a, self.b, self.pairing)

    @cached_property
    def layout(self) -> pd.DataFrame:
        """Chunks, writer ranks, files and bytes per paired key on each side (information)."""
        return dt.layout_table(self.a, self.b, self.pairing)

    @cached_property
    def values(self) -> pd.DataFrame:
        """Per key: values compared, differing elements, max abs difference, first differing index."""
        return dt.values_table(self._values)

    @cached_property
    def regions(self) -> pd.DataFrame:
        """Per compared overlap of a chunk of A with a chunk of B."""
        return dt.regions_table(self._regions)

    @cached_property
    def renames(self) -> pd.DataFrame:
        """Rename candidates (``certain`` ones are paired; the rest are for the caller to choose)."""
        return dt.renames_table(self.pairing)

    @cached_property
    def changes(self) -> pd.DataFrame:
        """The diff table: one row per key of A or B (content changes first)."""
        return dt.changes_table(
            self.a,
            self.b,
            self.pairing,
            self.tensors,
            self.layout,
            self.values,
            self.compared_values,
        )

    @property
    def unverified(self) -> list[str]:
        """Keys whose values were asked for (``values=True``) but could not be compared (a trace
        side, a storage transform): their content is not known to be the same."""
        if not self.compared_values or not len(self.values):
            return []
        return sorted(self.values.loc[self.values["status"] == "skipped", "fqn"].tolist())

    @property
    def same(self) -> bool:
        """True when the content is known to be the same (layout differences allowed). With
        ``values=True``, values that could not be compared are not called the same."""
        return not dt.differs(self.changes) and not self.unverified

    @property
    def verdict(self) -> str:
        """The answer in words: same content, differs in N keys, or not known (values asked for
        but not comparable)."""
        if self.same:
            return "same content"
        if self.differing:
            return f"content differs in {len(self.differing)} key(s)"
        return f"not known to be the same: values of {len(self.unverified)} key(s) could not be compared"

    @property
    def exit_code(self) -> int:
        """0 when the content is the same, 1 when it differs."""
        return 0 if self.same else 1

    @property
    def differing(self) -> list[str]:
        """Keys whose content differs (A's name, or B's for keys only in B)."""
        c = self.changes[self.changes["change"].isin(dt.CONTENT_CHANGES)]
        return [x or y for x, y in zip(c["fqn"], c["fqn_b"])]

    @property
    def notes(self) -> list[str]:
        """What the diff could not look at, and files it ignored."""
        out = [*self.a.notes, *self.b.notes]
        if not self.compared_values:
            out.append(
                "Values were not compared (keys, shapes, dtypes only): pass values=True / --values."
            )
        skipped = (
            self.values[self.values["status"] == "skipped"] if len(self.values) else self.values
        )
        if len(skipped):
            out.append(f"{len(skipped)} key(s) not compared by value: {skipped['reason'].iloc[0]}.")
        return out

    @property
    def summary(self) -> dict[str, Any]:
        """Counts of each change kind, plus the verdict."""
        counts = self.changes["change"].value_counts()
        return {
            "a": self.a.label,
            "b": self.b.label,
            "same": self.same,
            "keys_a": len(self.a.entries),
            "keys_b": len(self.b.entries),
            "changes": {c: int(counts.get(c, 0)) for c in dt.CHANGES if counts.get(c, 0)},
            "values_compared": self.compared_values,
            "atol": self.atol,
            "rtol": self.rtol,
        }

    def summary_rows(self) -> list[SummaryRow]:
        """The diff in a few lines: A, B, the verdict, key counts, changes, how values were compared."""
        s = self.summary
        counts = ", ".join(f"{n} {c}" for c, n in s["changes"].items())
        tolerance = (
            f" (atol={self.atol}, rtol={self.rtol})" if self.atol or self.rtol else " exactly"
        )
        values = (
            ("compared" + tolerance)
            if s["values_compared"]
            else "not compared (keys, shapes and dtypes only)"
        )
        return [
            SummaryRow("A", self.a.label),
            SummaryRow("B", self.b.label),
            SummaryRow("verdict", self.verdict, "good" if s["same"] else "bad"),
            SummaryRow("keys", f"{s['keys_a']} in A, {s['keys_b']} in B"),
            SummaryRow("changes", counts),
            SummaryRow("values", values),
        ]

    def report_title(self) -> str:
        """The report's default title."""
        return "dcpviz diff · " + self.verdict

    def report_intro(self) -> str:
        """One line under the title."""
        return "Two checkpoints compared key by key" + (
            ", chunk by chunk." if self.compared_values else "."
        )

    def messages(self) -> MessagesPart:
        """Notes of what was not compared."""
        return MessagesPart((), tuple(self.notes))

    def header_parts(self) -> list[Part]:
        """Under an explorer's summary: what was not compared."""
        return [self.messages()]

    def parts(self) -> list[Part]:
        """What the report shows: notes, the figures, the diff table, then the details."""
        out: list[Part] = [self.messages(), FigurePart("What differs", "diff_overview")]
        if len(self.regions):
            bad = self.regions[self.regions["differing"] > 0]["fqn"].drop_duplicates().tolist()[:3]
            out += [FigurePart(f"Regions compared: {fqn}", "diff_regions", (fqn,)) for fqn in bad]
        out.append(
            TablePart(
                "Diff",
                self.changes,
                brief=Brief(
                    ("fqn", "fqn_b", "change", "detail"),
                    rows=40,
                    headings={"fqn": "key (A)", "fqn_b": "key (B)"},
                ),
            )
        )
        if len(self.renames):
            out.append(TablePart("Rename candidates", self.renames))
        if len(self.values):
            out.append(TablePart("Values", self.values))
        out.append(TablePart("Layout (information only)", self.layout, ("nbytes_a", "nbytes_b")))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The whole result as plain JSON-able data."""

        def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]

        return {
            "a": self.a.label,
            "b": self.b.label,
            "same": self.same,
            "exit_code": self.exit_code,
            "summary": self.summary,
            "notes": self.notes,
            "changes": records(self.changes),
            "renames": records(self.renames),
            "tensors": records(self.tensors),
            "values": records(self.values),
            "regions": records(self.regions),
            "layout": records(self.layout),
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``to_dict()`` as JSON."""
        out = writable_file(path, "diff")
        out.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return out

    def _repr_html_(self) -> str:
        # The repr as preformatted text; the summary as a table is the views' job.
        return f"<pre>{html.escape(repr(self))}</pre>"

    def __repr__(self) -> str:
        s = self.summary
        verdict = self.verdict
        if not self.compared_values:
            verdict += " (values not compared)"
        return f"<DiffResult {verdict}; {s['keys_a']} keys in A, {s['keys_b']} in B>"


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
