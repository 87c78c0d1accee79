"""The errors dcpviz raises on user input.

Every message names the input that was wrong and says how to fix it. A planner failure is *not*
an error here: it is data, recorded in a trace's ``errors``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DcpvizError(Exception):
    """Base of every error dcpviz raises on user input."""


class ScenarioError(DcpvizError, ValueError):
    """A Scenario that cannot describe a real job (bad mesh, unknown preset, ...)."""


class TraceFileError(DcpvizError, ValueError):
    """A trace file that is missing, malformed, of the wrong kind or of a future version."""


class CheckpointError(DcpvizError, ValueError):
    """A checkpoint directory that cannot be read safely."""


class UserCodeError(DcpvizError, RuntimeError):
    """A user-supplied callable (model factory, recipe, planner factory) raised."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class RecordingWarning(UserWarning):
    """A recording planner could not build or write its trace. The user's dcp.save / dcp.load
    went on unchanged; the planner's ``problems`` says what failed."""
