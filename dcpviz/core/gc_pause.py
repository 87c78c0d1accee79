"""Pausing Python's cyclic garbage collector around work that makes millions of objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC for a block and restore its state after (also on error).

    Decoding a big trace or simulating 1024 ranks allocates millions of small, acyclic objects;
    each automatic collection walks every tracked object, so collections grow with the heap and
    cost more than the work itself. Reference counting still frees everything not in a cycle;
    cycles made meanwhile are collected by the next automatic collection."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
