"""The safetensors header reader (dcpviz.core.hf.safetensors): files written by the safetensors
library read back exactly; fuzzed and mutated headers give a correct result or a DcpvizError,
and whatever it accepts the safetensors library accepts with the same tensors; folders with an
index, traversal and links out of the folder are refused."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file

from dcpviz.core.errors import CheckpointError, DcpvizError
from dcpviz.core.hf.safetensors import parse_header, read_folder, read_header

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
]
NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.bool: "bool",
}

tensor_dicts = st.dictionaries(
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
    ).filter(lambda s: s != "__metadata__"),
    st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3)),
    max_size=5,
)


def build(spec: dict) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(shape, dtype=dt) for k, (dt, shape) in spec.items()}


def agrees(data: bytes) -> None:
    """parse_header's answer, checked against the safetensors library when it accepts."""
    try:
        header = parse_header(data, len(data), "<fuzz>")
    except DcpvizError:
        return
    lib = st_load(data)  # the library must accept what dcpviz accepts
    assert {
        e.name: (NAMES[lib[e.name].dtype], tuple(lib[e.name].shape)) for e in header.entries
    } == {k: (NAMES[v.dtype], tuple(v.shape)) for k, v in lib.items()}
    for e in header.entries:
        raw = data[header.data_start + e.begin : header.data_start + e.end]
        assert raw == lib[e.name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor_dicts)
def test_library_files_read_exactly(spec):
    tensors = build(spec)
    data = st_save(tensors, metadata={"format": "pt"})
    header = parse_header(data, len(data))
    assert {e.name: (e.dtype, e.shape) for e in header.entries} == {
        k: (NAMES[v.dtype], tuple(v.shape)) for k, v in tensors.items()
    }
    assert dict(header.metadata) == {"format": "pt"}
    agrees(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor_dicts, st.data())
def test_mutated_headers_are_right_or_refused(spec, data):
    raw = bytearray(st_save(build(spec)))
    (n,) = struct.unpack("<Q", raw[:8])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, max(0, min(len(raw), 8 + n) - 1)))
        if raw:
            raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    agrees(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    agrees(data)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-2, 2**65) | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=12,
    ),
    st.binary(max_size=40),
)
def test_arbitrary_json_headers(doc, tail):
    text = json.dumps(doc).encode()
    agrees(struct.pack("<Q", len(text)) + text + tail)


def header_file(path, doc: dict, data: bytes = b"") -> None:
    text = json.dumps(doc).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(
    "doc, data, match",
    [
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "do not hold"),
        (
            {
                "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            b"\0" * 4,
            "overlaps",
        ),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gap"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9, "extra bytes"),
        ({"x": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "does not read"),
        ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "non-negative"),
        (
            {"x": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
            b"\0" * 4,
            "non-negative",
        ),
        ({"__metadata__": {"a": 1}}, b"", "strings"),
    ],
)
def test_bad_headers_named(tmp_path, doc, data, match):
    header_file(tmp_path / "m.safetensors", doc, data)
    with pytest.raises(CheckpointError, match=match):
        read_header(tmp_path / "m.safetensors")


def test_huge_claimed_length_is_refused_before_reading(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(CheckpointError, match="limit"):
        read_header(tmp_path / "m.safetensors")
    text = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {}}'
    (tmp_path / "d.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 4)
    with pytest.raises(CheckpointError, match="duplicate"):
        read_header(tmp_path / "d.safetensors")


def test_folder_with_index(tmp_path):
    save_file({"a": torch.ones(2), "b": torch.zeros(3)}, tmp_path / "m1.safetensors")
    save_file({"c": torch.ones(1)}, tmp_path / "m2.safetensors")
    save_file({"stale": torch.ones(1)}, tmp_path / "old.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "m1.safetensors", "b": "m1.safetensors", "c": "m2.safetensors"},
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    folder = read_folder(tmp_path)
    assert [n for n, _ in folder.files] == ["m1.safetensors", "m2.safetensors"]
    assert folder.unindexed_files == ("old.safetensors",)
    index["weight_map"]["d"] = "m2.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="disagree"):
        read_folder(tmp_path)
    index["weight_map"] = {"a": "../m1.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a file name"):
        read_folder(tmp_path)


def test_link_out_of_the_folder_refused(tmp_path):
    outside = tmp_path / "outside.safetensors"
    save_file({"a": torch.ones(2)}, outside)
    folder = tmp_path / "f"
    folder.mkdir()
    os.symlink(outside, folder / "m.safetensors")
    with pytest.raises(CheckpointError, match="link out"):
        read_folder(folder)
