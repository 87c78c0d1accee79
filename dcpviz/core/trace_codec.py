"""Read trace JSON into the trace dataclasses: typed decoding (msgspec), then the rules.

msgspec checks every value's type and bound (non-negative sizes and positions, world sizes
within ``MAX_WORLD_SIZE``) in one C pass and names the field's path when one is wrong;
``trace_validate`` then checks what no single field can say (positions in range, one plan per
rank, mesh vs. world size). A file that gets past both is never second-guessed afterwards.
Imports neither torch nor plotly: a trace opens anywhere.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from dcpviz.core.errors import TraceFileError
from dcpviz.core.gc_pause import gc_paused
from dcpviz.core.trace import SCHEMA, VERSION, LoadTrace, SaveTrace, Trace
from dcpviz.core.trace_validate import validate_trace

T = TypeVar("T")
_KINDS: dict[str, type] = {"save": SaveTrace, "load": LoadTrace}
_NOT_A_TRACE = (
    "Pass a file written by result.to_json(path), `dcpviz simulate --trace`, or a "
    "RecordingSavePlanner."
)


class _Envelope(msgspec.Struct):
    """The file's outer object; ``trace`` is left raw until the kind says what it is."""

    schema: Any = None
    version: Any = None
    kind: Any = None
    trace: msgspec.Raw = msgspec.Raw(b"null")


@cache
def _decoder(tp: type) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(tp)


def _where(exc: msgspec.ValidationError, root: str) -> str:
    """msgspec's "... - at `$.a[0].b`" with ``$`` spelled as ``root``."""
    return re.sub(r"`\$", f"`{root}", str(exc))


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and fully validate a trace file; anything malformed raises TraceFileError."""
    path = Path(path)
    if not path.is_file():
        raise TraceFileError(f"trace file {str(path)!r} does not exist (or is not a file).")
    try:
        data = path.read_bytes()
    except OSError as exc:  # unreadable: permissions, an I/O error
        raise TraceFileError(
            f"cannot read trace file {str(path)!r}: {exc.strerror or exc}."
        ) from None
    return decode_trace(data, repr(str(path)))


def decode_trace(data: bytes | str, source: str = "<bytes>") -> Trace:
    """The trace in JSON ``data``; ``source`` names it in errors."""
    try:
        env = msgspec.json.decode(data, type=_Envelope)
    except msgspec.ValidationError as exc:  # valid JSON, but not an object, or an absurd number
        raise TraceFileError(
            f"{source} is not a dcpviz trace ({_where(exc, 'file')}). {_NOT_A_TRACE}"
        ) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise TraceFileError(
            f"trace file {source} is not valid JSON ({_reason(exc)}). Traces are JSON written by "
            "dcpviz; pickles and checkpoints are not traces (use dcpviz.inspect_checkpoint for a "
            "checkpoint directory)."
        ) from None
    kind = _check_envelope(env.schema, env.version, env.kind, source)
    try:
        with gc_paused():
            trace = _decoder(_KINDS[kind]).decode(env.trace)
    except msgspec.ValidationError as exc:
        raise TraceFileError(
            f"{source} is malformed: {_where(exc, 'trace')}. Re-create the trace."
        ) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise TraceFileError(
            f"{source} is malformed: {_reason(exc)}. Re-create the trace."
        ) from None
    _validate(trace, kind, source)
    return trace


def trace_from_dict(doc: Any, source: str = "<dict>") -> Trace:
    """A trace from plain data (e.g. ``json.load`` of a trace file), checked like a file."""
    if not isinstance(doc, dict):
        raise TraceFileError(
            f'{source} is not a dcpviz trace (no "schema": "{SCHEMA}"). {_NOT_A_TRACE}'
        )
    kind = _check_envelope(doc.get("schema"), doc.get("version"), doc.get("kind"), source)
    trace = decode_plain(_KINDS[kind], doc.get("trace"), "trace", source)
    _validate(trace, kind, source)
    return trace


def decode_plain(tp: type[T], value: Any, where: str, source: str = "<data>") -> T:
    """``value`` (plain dicts/lists, e.g. a record a worker sent) as the trace type ``tp``,
    with the same checks as a file."""
    try:
        return msgspec.convert(value, type=tp)
    except (msgspec.ValidationError, RecursionError) as exc:
        raise TraceFileError(
            f"{source} is malformed: {_where(exc, where)}. Re-create the trace."
        ) from None


def _check_envelope(schema: Any, version: Any, kind: Any, source: str) -> str:
    """The trace's kind, once schema, version and kind say it is one this dcpviz reads."""
    if schema != SCHEMA:
        raise TraceFileError(
            f'{source} is not a dcpviz trace (no "schema": "{SCHEMA}"). {_NOT_A_TRACE}'
        )
    if type(version) is not int:
        raise TraceFileError(f"{source}: trace version {_short(version)} is not an integer.")
    if version > VERSION:
        raise TraceFileError(
            f"{source} is trace version {version}, newer than this dcpviz reads ({VERSION}). "
            "Upgrade dcpviz (pip install -U dcpviz) to open it."
        )
    if version != VERSION:
        raise TraceFileError(
            f"{source} is trace version {version}; this dcpviz reads version {VERSION} only. "
            "Re-create the trace with this dcpviz."
        )
    if not isinstance(kind, str) or kind not in _KINDS:
        raise TraceFileError(
            f"{source}: unknown trace kind {_short(kind)}; expected 'save' or 'load'."
        )
    return kind


def _validate(trace: Trace, kind: str, source: str) -> None:
    try:
        validate_trace(trace, kind)
    except TraceFileError as exc:
        raise TraceFileError(f"{source} is malformed: {exc}. Re-create the trace.") from None


def _short(value: Any, limit: int = 60) -> str:
    """A value for a message: a huge one (a 5000-digit int) is cut, never fully printed."""
    text = (
        repr(value) if not isinstance(value, int) or abs(value) < 10**limit else "<a huge integer>"
    )
    return text if len(text) <= limit else text[:limit] + "..."


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)
