"""Load DCP BYTE_IO entries (the non-tensor values of a state dict) without running code.

``dcp.save`` stores every non-tensor value (an int, a dict, ``bytes``, an ``io.BytesIO``, ...)
as a ``torch.save`` record, and ``DefaultLoadPlanner.load_bytes`` reads it back with
``torch.load(weights_only=False)``: plain pickle, so a planted record runs code in every rank.
Here each record goes through torch's weights-only unpickler, which builds only allowlisted
types (containers, numbers, strings, bytes, tensors, dtypes, ...) plus the few harmless
standard types below that DCP users save. Anything else is refused with a ``CheckpointError``
naming the entry and the class the record tried to build.

Three ways in: ``SafeFileSystemReader`` (any planner), ``SafeLoadPlanner`` (any reader), and
``load_byte_io`` for one record.
"""

from __future__ import annotations

import collections
import datetime
import io
import re
from typing import IO, Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem

from dcpviz.core.errors import CheckpointError

# Standard types whose construction from a pickle runs no user code, beyond torch's own
# weights-only allowlist (which already covers dict, list, tuple, set, OrderedDict, int, float,
# complex, str, bytes, bytearray, bool, None, torch.Size, dtypes, devices and tensors).
EXTRA_SAFE_GLOBALS: tuple[Any, ...] = (
    io.BytesIO,
    frozenset,
    slice,
    range,
    collections.deque,
    datetime.date,
    datetime.datetime,
    datetime.time,
    datetime.timedelta,
    datetime.timezone,
)

_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL (\S+) was not an allowed global")


def load_byte_io(data: bytes | IO[bytes], where: str) -> Any:
    """The value of one BYTE_IO record, built by torch's weights-only unpickler (plus
    ``EXTRA_SAFE_GLOBALS``). ``where`` names the entry in errors. Classes allowed with
    ``torch.serialization.add_safe_globals`` / ``safe_globals`` are honoured, so a user who
    trusts a custom class of their own can admit it explicitly."""
    raw = data if isinstance(data, (bytes, bytearray)) else _read_all(data)
    with torch.serialization.safe_globals(list(EXTRA_SAFE_GLOBALS)):
        try:
            return torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as exc:  # UnpicklingError for a refused global; anything for garbage
            raise _refusal(raw, where, exc) from None


def _read_all(stream: IO[bytes]) -> bytes:
    if hasattr(stream, "seek"):
        stream.seek(0)
    return stream.read()


def _refusal(raw: bytes, where: str, exc: Exception) -> CheckpointError:
    """Name the class the record tried to build: from torch's static scan of the pickle when it
    can read it, else from the unpickler's own message."""
    unsafe: list[str] = []
    try:
        unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(raw)))
    except Exception:  # not a zip archive, or a pickle the static scan cannot follow
        pass
    found = _GLOBAL_IN_MESSAGE.search(str(exc))
    if not unsafe and found:
        name = found.group(1)
        unsafe = [name if "." in name else f"builtins.{name}"]  # torch drops the builtins module
    if unsafe:
        return CheckpointError(
            f"refusing to load {where}: unpickling it would build {', '.join(unsafe)}, which a saved "
            "value never needs. The checkpoint may be malicious: do not load it with plain "
            "torch.distributed.checkpoint either (DCP unpickles these entries with "
            "torch.load(weights_only=False)). If the class is your own and you trust this "
            "checkpoint, allow it with torch.serialization.safe_globals([YourClass])."
        )
    first = next(
        (ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln),
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
    )
    return CheckpointError(
        f"refusing to load {where}: it is not a value torch's weights-only unpickler can build "
        f"({first}). The record may be corrupt or malicious."
    )


def sanitized_stream(value: IO[bytes], where: str) -> io.BytesIO:
    """A BYTE_IO stream that any ``load_bytes`` may read, even with plain ``torch.load``: the
    record's value built by the restricted unpickler, saved again. Only objects of allowed
    types are in it, so unpickling it builds nothing else."""
    out = io.BytesIO()
    torch.save(load_byte_io(value, where), out)
    out.seek(0)
    return out


def entry_name(read_item: ReadItem) -> str:
    """The checkpoint key a ReadItem reads, for messages."""
    fqn = read_item.storage_index.fqn
    dest = read_item.dest_index.fqn
    return f"BYTE_IO entry {fqn!r}" + (f" (loaded into {dest!r})" if dest != fqn else "")


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's ``DefaultLoadPlanner`` whose ``load_bytes`` first builds the value with the
    restricted unpickler (DCP's own uses ``torch.load(weights_only=False)``), for any storage
    reader::

        dcp.load(state_dict, checkpoint_id=path, planner=dcpviz.SafeLoadPlanner())

    Planning is DCP's, untouched. ``SafeFileSystemReader`` does the same for any planner.
    """

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        """Build a BYTE_IO value with torch's weights-only unpickler (never plain pickle)."""
        super().load_bytes(read_item, sanitized_stream(value, entry_name(read_item)))


class SafeBytesPlanner:
    """Stands in for a planner while a storage reader reads data: ``load_bytes`` gets a
    sanitised stream, every other attribute is the planner's own."""

    def __init__(self, planner: Any, source: str) -> None:
        self._planner = planner
        self._source = source

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        """Build a BYTE_IO value with torch's weights-only unpickler (never plain pickle)."""
        where = f"{entry_name(read_item)} of {self._source}"
        return self._planner.load_bytes(read_item, sanitized_stream(value, where))

    def __getattr__(self, name: str) -> Any:
        if name == "_planner":
            raise AttributeError(name)
        return getattr(self._planner, name)
