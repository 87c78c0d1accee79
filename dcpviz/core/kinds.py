"""The closed vocabularies results speak: check severities and load mismatch kinds.

They are string enums: a member equals its text (``Severity.ERROR == "error"``), so tables,
JSON traces and comparisons with plain strings read exactly as before; code names a member
instead of retyping its text, and a typo fails at import instead of matching nothing.
"""

from __future__ import annotations

import enum

if hasattr(enum, "StrEnum"):  # Python 3.11+
    StrEnum = enum.StrEnum
else:  # pragma: no cover - Python 3.10: the same behaviour, spelled out

    class StrEnum(str, enum.Enum):  # type: ignore[no-redef]
        """A str whose value is its text (``str(member)`` is the value)."""

        def __str__(self) -> str:
            return str(self.value)


class Severity(StrEnum):
    """How bad a check's finding is, worst first (the order of ``SEVERITIES``)."""

    DATA_LOSS = "data-loss"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


SEVERITIES = tuple(Severity)  # worst first
FAILING = (Severity.DATA_LOSS, Severity.ERROR)  # what makes `dcpviz check` exit 1
# How a count of findings reads: '1 error, 6 warnings' ('data-loss' and 'info' do not take an s).
_PLURAL = {
    Severity.DATA_LOSS: "data-loss",
    Severity.ERROR: "errors",
    Severity.WARNING: "warnings",
    Severity.INFO: "info",
}


def count_text(severity: str, n: int) -> str:
    """'1 error', '6 warnings', '2 data-loss'."""
    word = str(severity) if n == 1 else _PLURAL.get(Severity(severity), str(severity))
    return f"{n} {word}"


class MismatchKind(StrEnum):
    """What a target and a checkpoint disagree on for one key (``MismatchRecord.kind``)."""

    MISSING = "missing"  # the target wants a key the checkpoint lacks
    SIZE = "size"  # the shapes differ
    TYPE = "type"  # a tensor on one side, a non-tensor on the other
    OTHER = "other"  # DCP raised on the key for a reason none of these describe
    DTYPE = "dtype"  # the dtypes differ (DCP casts silently)
    UNEXPECTED = "unexpected"  # the checkpoint has a key no target rank wants


MISMATCH_ORDER = {k: i for i, k in enumerate(MismatchKind)}  # how tables sort them
