"""The render protocol: what a result supplies, and every renderer draws.

A result (save, load, diff, a checkpoint) is ``Renderable``: a title, a one-line intro, its summary
as ``SummaryRow``s (plain text and a tone, never markup), the ``header_parts()`` an explorer shows
under it, and its ``parts()`` in order. The HTML
report (``html_report``), the terminal (``terminal``) and the explorers' headers, checks and
messages (``widgets``) draw those and nothing else, so no renderer branches on save vs load:

    TablePart     a titled DataFrame; ``brief`` says which columns and rows the terminal shows
    FigurePart    a titled ``dcpviz.views.<view>(result, ...)`` (the terminal skips figures)
    HintsPart     likely causes and their fixes, most likely first
    MessagesPart  errors (failures) and notes
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from dcpviz.analysis.load.hints import Hint

TONES = ("", "good", "bad", "warn")  # how a summary value is coloured: plain, fine, broken, careful


@dataclass(frozen=True)
class SummaryRow:
    """One line of a result's summary: a label and plain text (renderers escape and colour it)."""

    label: str
    text: str
    tone: str = ""


@dataclass(frozen=True)
class Brief:
    """How the terminal shows a table: these columns (``headings`` renames them), at most
    ``rows`` rows, the largest ``sort_by`` first when there are more; ``title`` replaces the
    part's where the terminal says it otherwise (it has no 'below')."""

    columns: tuple[str, ...]
    rows: int = 12
    sort_by: str | None = None
    headings: Mapping[str, str] = field(default_factory=dict)
    title: str | None = None


@dataclass(frozen=True)
class TablePart:
    """A titled table; ``byte_cols`` are shown human-readable; ``brief``: the terminal's cut
    of it (None: the table is for the report and the explorer only); ``note``: a line under it."""

    title: str
    frame: pd.DataFrame
    byte_cols: tuple[str, ...] = ()
    max_rows: int | None = None
    brief: Brief | None = None
    note: str = ""


@dataclass(frozen=True)
class FigurePart:
    """A titled figure: ``dcpviz.views.<view>(result, *args, **kwargs)`` (named, so results need
    not import the views layer above them)."""

    title: str
    view: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HintsPart:
    """Likely causes and their fixes, most likely first."""

    hints: tuple[Hint, ...]


@dataclass(frozen=True)
class MessagesPart:
    """Errors (shown as failures) and notes."""

    errors: tuple[str, ...]
    notes: tuple[str, ...]


Part = TablePart | FigurePart | HintsPart | MessagesPart


@runtime_checkable
class Renderable(Protocol):
    """What every renderer needs of a result."""

    kind: str

    def report_title(self) -> str:
        """The page's or panel's title."""

    def report_intro(self) -> str:
        """One line under the title: what this is and what made it."""

    def summary_rows(self) -> list[SummaryRow]:
        """The result in a few labelled lines, the most important first."""

    def header_parts(self) -> list[Part]:
        """What an explorer shows under the summary, above its tabs (hints, errors, notes);
        cheap: no table is built for it."""

    def parts(self) -> list[Part]:
        """Everything else, in the order a reader should see it."""


def is_renderable(result: Any) -> bool:
    """Whether ``result`` supplies the protocol (a save, load or diff result, a checkpoint)."""
    return isinstance(result, Renderable) and isinstance(getattr(result, "kind", None), str)
