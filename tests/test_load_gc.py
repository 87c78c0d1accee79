"""simulate_load runs Python's cyclic GC on the young generations between ranks, and leaves GC
as it found it (enabled or not, thresholds), even when planning raises."""

from __future__ import annotations

import gc
import weakref

import pytest

import dcpviz
from dcpviz.engine.simulate import load as simulate_load
from dcpviz.engine.simulate.load import young_gc_only


def _save():
    return dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))


def _target():
    return dcpviz.Scenario(model="mlp", world_size=40, recipe="fsdp")


def test_gc_is_left_as_found():
    save = _save()
    thresholds = gc.get_threshold()
    assert gc.isenabled()
    dcpviz.simulate_load(save, _target())
    assert gc.isenabled() and gc.get_threshold() == thresholds
    gc.disable()
    try:
        dcpviz.simulate_load(save, _target())
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_gc_is_enabled_again_when_planning_raises(monkeypatch):
    def boom(run, r):
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate_load, "_plan_rank", boom)
    with pytest.raises(KeyboardInterrupt):
        dcpviz.simulate_load(_save(), _target())
    assert gc.isenabled()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic GC frees it


def test_cyclic_garbage_is_freed_when_asked_and_gc_stays_off_between():
    with young_gc_only() as collect_young:
        assert not gc.isenabled()
        ref = weakref.ref(_Node())
        assert ref() is not None  # reference counting alone cannot free a cycle
        collect_young()
        assert ref() is None
    assert gc.isenabled()


def test_plain_path_keeps_automatic_gc(monkeypatch):
    seen = []
    real = young_gc_only

    def spy(on=True):
        seen.append(on)
        return real(on)

    monkeypatch.setattr(simulate_load, "young_gc_only", spy)
    dcpviz.simulate_load(_save(), _target(), fast=False)
    assert seen == [False]
