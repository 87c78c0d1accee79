"""Traces are versioned JSON that round-trip exactly; bad files give clear errors."""

import json

import pandas as pd
import pytest

import dcpviz
from dcpviz.core.trace import VERSION


@pytest.fixture(scope="module")
def hsdp():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )


def test_round_trip_is_exact(hsdp, tmp_path):
    path = hsdp.to_json(tmp_path / "t.json")
    again = dcpviz.load_trace(path)
    assert again.trace == hsdp.trace
    for name in ("write_items", "dedup", "rank_volume", "chunks"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(hsdp, name))
    # The rebuilt torch Metadata equals DCP's object in everything the planner reads.
    a, b = again.metadata, hsdp.metadata
    assert a.state_dict_metadata.keys() == b.state_dict_metadata.keys()
    for k, v in b.state_dict_metadata.items():
        w = a.state_dict_metadata[k]
        assert type(w) is type(v)
        if hasattr(v, "chunks"):
            assert (w.size, w.properties.dtype, w.chunks) == (v.size, v.properties.dtype, v.chunks)
    assert a.planner_data == b.planner_data


def test_no_pickle_in_the_file(hsdp, tmp_path):
    path = hsdp.to_json(tmp_path / "t.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == "dcpviz.trace" and doc["version"] == VERSION and doc["kind"] == "save"


@pytest.mark.parametrize(
    "content,needle",
    [
        ("not json at all", "not valid JSON"),
        ('{"hello": 1}', "not a dcpviz trace"),
        (
            '{"schema": "dcpviz.trace", "version": 99, "kind": "save", "trace": {}}',
            "newer than this dcpviz",
        ),
        (
            '{"schema": "dcpviz.trace", "version": 1, "kind": "bake", "trace": {}}',
            "unknown trace kind",
        ),
        (
            '{"schema": "dcpviz.trace", "version": 1, "kind": "save", "trace": {"scenario": 3}}',
            "malformed",
        ),
    ],
)
def test_bad_trace_files(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(dcpviz.DcpvizError, match=needle):
        dcpviz.load_trace(path)


def test_truncated_and_corrupted_values(hsdp, tmp_path):
    doc = json.loads(hsdp.to_json(tmp_path / "t.json").read_text())
    doc["trace"]["local_plans"][0]["items"] = ["x"]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(dcpviz.DcpvizError, match="local_plans"):
        dcpviz.load_trace(tmp_path / "c.json")
    text = (tmp_path / "t.json").read_text()
    (tmp_path / "trunc.json").write_text(text[: len(text) // 2])
    with pytest.raises(dcpviz.DcpvizError, match="not valid JSON"):
        dcpviz.load_trace(tmp_path / "trunc.json")


def test_missing_file(tmp_path):
    with pytest.raises(dcpviz.DcpvizError, match="does not exist"):
        dcpviz.load_trace(tmp_path / "nope.json")
