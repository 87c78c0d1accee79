"""The trace's records carry no per-instance ``__dict__``.

A decoded 1024-rank load trace holds ~470k records. With a ``__dict__`` each, the cyclic GC
walked ~1.2 M tracked objects in every full pass the explorer's first view triggered (about
0.9 s of a 2.1 s first view); with slots it walks ~0.77 M. These tests keep that shape, and
check the save conversion's hot constructor builds the same record as the dataclass's own.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import inspect
import pickle

import pytest

import dcpviz
from dcpviz.core import trace as trace_model
from dcpviz.core.trace import PlannedItem
from dcpviz.engine.convert.save import _planned_item

RECORD_CLASSES = [
    cls
    for _, cls in inspect.getmembers(trace_model, inspect.isclass)
    if dataclasses.is_dataclass(cls) and cls.__module__ == trace_model.__name__
]


def test_every_trace_class_is_found():
    names = {cls.__name__ for cls in RECORD_CLASSES}
    assert {"ReadRecord", "PlannedItem", "ChunkInfo", "TargetValue", "SaveTrace"} <= names
    assert len(RECORD_CLASSES) == 20


@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=lambda c: c.__name__)
def test_trace_classes_have_slots_and_no_instance_dict(cls):
    assert "__slots__" in vars(cls)
    assert "__dict__" not in dir(cls)


@pytest.mark.parametrize(
    "values",
    [
        ("a.b", "TENSOR", (0, 0), (4, 4), (8, 8), "bfloat16", 32, 64, None),
        ("a.b", "SHARD", (4,), (4,), (8,), "float32", 16, 32, (0,)),
        ("step", "BYTE_IO", None, None, None, None, 120, None, None),
        ("scalar", "TENSOR", (), (), (), "float32", 4, 4, None),
    ],
)
def test_planned_item_fast_constructor_equals_the_dataclass(values):
    fast, plain = _planned_item(*values), PlannedItem(*values)
    assert fast == plain and hash(fast) == hash(plain) and repr(fast) == repr(plain)
    assert dataclasses.astuple(fast) == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.fqn = "other"  # type: ignore[misc]


@pytest.fixture(scope="module")
def small_traces():
    sc = dcpviz.Scenario(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="hsdp")
    save = dcpviz.simulate_save(sc, progress=False)
    load = dcpviz.simulate_load(save, sc, progress=False)
    return save.trace, load.trace


def test_traces_survive_copy_pickle_and_json(small_traces, tmp_path):
    for tr in small_traces:
        assert copy.deepcopy(tr) == tr
        assert pickle.loads(pickle.dumps(tr)) == tr
        path = trace_model.write_trace(tr, tmp_path / f"{tr.kind}.json")
        assert dcpviz.load_trace(path).trace == tr


def test_decoded_records_are_single_tracked_objects(small_traces, tmp_path):
    """Each decoded record is one tracked object (no instance dict beside it)."""
    _, load = small_traces
    path = trace_model.write_trace(load, tmp_path / "load.json")
    decoded = dcpviz.load_trace(path).trace
    read = decoded.reads[0]
    assert gc.is_tracked(read)
    assert not any(isinstance(r, dict) for r in gc.get_referents(read))
