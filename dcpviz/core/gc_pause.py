"""Pausing Python's cyclic garbage collector around work that makes millions of objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Below this many new tracked objects the collector's own passes are cheap: left to it.
MANY_OBJECTS = 100_000


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC for a block and restore its state after (also on error).

    Decoding a big trace or simulating 1024 ranks allocates millions of small, acyclic objects;
    each automatic collection walks every tracked object, so collections grow with the heap and
    cost more than the work itself. Reference counting still frees everything not in a cycle.

    Where the block made many objects, one collection walks them as the pause ends (see
    ``collect_young``): left to the collector, they would each be walked two or three times."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            try:
                collect_young()
            finally:  # an interrupt during the walk still leaves the collector on
                gc.enable()


def collect_young() -> None:
    """Walk the young generations' objects once, if they are many.

    The collector would move them to the oldest generation with a generation-1 pass (every
    object walked) and, while the objects moved there since the last full pass number at least a
    quarter of the oldest generation (CPython's rule), a full pass too (every object walked
    again). One collection does either's work once: a full one where the rule would call one
    anyway, else a generation-1 one. Nothing it frees differs (cycles are collected sooner)."""
    young = gc.get_count()[0]  # tracked objects made (net) since the last collection
    if young < MANY_OBJECTS:
        return
    # The oldest generation is counted only here (a list of pointers: far cheaper than a walk).
    gc.collect(2 if young * 4 >= len(gc.get_objects(2)) else 1)
