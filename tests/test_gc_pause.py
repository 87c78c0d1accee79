"""``gc_paused``: the collector's state is restored, and many new objects are walked once.

Left to the collector, the objects a paused block made are walked by a generation-1 pass and
often by a full pass after it; ``collect_young`` walks them once as the pause ends. These tests
watch the collections through ``gc.callbacks`` (what ran, not how long it took).
"""

from __future__ import annotations

import gc

import pytest

from dcpviz.core import gc_pause
from dcpviz.core.gc_pause import MANY_OBJECTS, gc_paused


@pytest.fixture
def collections():
    """The generations of every collection that runs while the test does."""
    seen: list[int] = []

    def watch(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    was = gc.isenabled()
    gc.enable()
    gc.collect()
    gc.callbacks.append(watch)
    try:
        yield seen
    finally:
        gc.callbacks.remove(watch)
        (gc.enable if was else gc.disable)()


def _many(n: int) -> list[list[int]]:
    return [[i] for i in range(n)]  # tracked objects (lists), acyclic


def _outnumbering() -> int:
    """Enough new objects for a full pass by CPython's rule (at least a quarter of the oldest
    generation, however much this test process holds), and at least ``MANY_OBJECTS``."""
    return max(MANY_OBJECTS, len(gc.get_objects(2)) // 2)


def test_many_new_objects_are_walked_once_as_the_pause_ends(collections):
    with gc_paused():
        made = _many(3 * MANY_OBJECTS)
        assert collections == []
    assert len(collections) == 1
    oldest = {id(o) for o in gc.get_objects(2)}
    assert id(made[0]) in oldest and id(made[-1]) in oldest  # nothing young left to walk again


def test_the_pass_is_full_only_where_the_collector_would_run_one(collections, monkeypatch):
    """Many objects against a small old generation: full; a few against a huge one: gen 1."""
    with gc_paused():
        made = _many(_outnumbering())
    assert collections == [2]
    collections.clear()
    monkeypatch.setattr(gc_pause, "MANY_OBJECTS", 10)
    with gc_paused():
        few = _many(1000)
    assert collections == [1]
    assert id(few[0]) in {id(o) for o in gc.get_objects(2)}
    del made


def test_few_new_objects_are_left_to_the_collector(collections):
    with gc_paused():
        kept = _many(100)
    assert collections == [] and gc.isenabled()
    assert id(kept[0]) not in {id(o) for o in gc.get_objects(2)}


def test_a_pause_inside_a_pause_leaves_the_walk_to_the_outer_one(collections):
    with gc_paused():
        with gc_paused():
            made = _many(3 * MANY_OBJECTS)
        assert collections == [] and not gc.isenabled()
    assert len(collections) == 1 and gc.isenabled()
    del made


def test_a_disabled_collector_stays_disabled_and_untouched(collections):
    gc.disable()
    with gc_paused():
        made = _many(3 * MANY_OBJECTS)
    assert collections == [] and not gc.isenabled()
    del made


@pytest.mark.parametrize("enabled", [True, False])
def test_an_error_in_the_block_restores_the_collector(enabled, collections):
    (gc.enable if enabled else gc.disable)()
    with pytest.raises(ZeroDivisionError), gc_paused():
        1 / 0  # noqa: B018
    assert gc.isenabled() is enabled


def test_an_interrupted_walk_still_turns_the_collector_back_on(collections, monkeypatch):
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gc_pause, "collect_young", interrupted)
    with pytest.raises(KeyboardInterrupt), gc_paused():
        pass
    assert gc.isenabled()
