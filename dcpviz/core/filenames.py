"""DCP data file names: the one place that parses them."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import PurePosixPath

# FileSystemWriter names data files f"__{rank}_{n}.distcp" (rank: the writer's position in the
# global plan, i.e. its rank in the process group).
_DATA_FILE = re.compile(r"^__(\d+)_(\d+)\.distcp$")


def writer_from_file(name: str) -> int | None:
    """The writer rank encoded in a DCP data file name (a path's last part counts), or None for
    another naming scheme."""
    # A checkpoint names ~one file per rank in up to a million records: each name parsed once.
    return _writer_of(name) if type(name) is str else _writer_of.__wrapped__(name)


@lru_cache(maxsize=1 << 16)
def _writer_of(name: str) -> int | None:
    m = _DATA_FILE.match(PurePosixPath(str(name).replace("\\", "/")).name)
    return int(m.group(1)) if m else None


def file_rank(name: str) -> int:
    """``writer_from_file`` for an int64 table column: -1 where the name carries no rank."""
    rank = writer_from_file(name)
    return -1 if rank is None else rank
