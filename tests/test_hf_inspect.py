"""inspect_checkpoint / dcpviz check on Hugging Face safetensors folders, headers only.

Folders are written by DCP's own HF writer (torch 2.13, one process) and by ``safetensors``
itself; tables are checked against DCP's HF reader's metadata and the bytes on disk.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException

import dcpviz

STATE = {
    "fc1.weight": torch.arange(12.0).reshape(4, 3),
    "fc1.bias": torch.ones(4, dtype=torch.bfloat16),
    "emb": torch.arange(10.0, dtype=torch.float16).reshape(5, 2),
}


def save(sd, writer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=writer)


def checks_of(path):
    return dcpviz.inspect_checkpoint(path).checks


def cli_check(path) -> int:
    return subprocess.run(
        [sys.executable, "-m", "dcpviz", "check", str(path)],
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
    ).returncode


def _reader_chunks(path):
    md = HuggingFaceStorageReader(str(path)).read_metadata()
    out = set()
    for fqn, t in md.state_dict_metadata.items():
        for c in t.chunks:
            out.add(
                (
                    fqn,
                    tuple(c.offsets),
                    tuple(c.sizes),
                    str(t.properties.dtype).removeprefix("torch."),
                    tuple(t.size),
                )
            )
    return out


@pytest.mark.parametrize("kind", ["mapped", "distributed", "safetensors"])
def test_tables_equal_dcps_hf_reader_and_the_bytes(tmp_path, kind):
    d = tmp_path / kind
    if kind == "mapped":
        save(
            STATE,
            HuggingFaceStorageWriter(
                str(d), fqn_to_index_mapping={"fc1.weight": 1, "fc1.bias": 2, "emb": 2}
            ),
        )
    elif kind == "distributed":
        save(STATE, HuggingFaceStorageWriter(str(d), save_distributed=True))
    else:
        d.mkdir()
        save_file(STATE, str(d / "model.safetensors"))
    ck = dcpviz.inspect_checkpoint(d)
    assert ck.metadata is None
    mine = {(r.fqn, r.offsets, r.sizes, r.dtype, r.global_size) for r in ck.chunks.itertuples()}
    assert mine == _reader_chunks(d)
    # Every storage record points at exactly the tensor's bytes.
    for r in ck.storage.itertuples():
        raw = (d / r.file).read_bytes()[r.offset : r.offset + r.length]
        want = load_file(str(d / r.file))[r.fqn]
        assert raw == want.contiguous().view(torch.uint8).numpy().tobytes()
    for r in ck.files.itertuples():
        assert r.nbytes == (d / r.file).stat().st_size
    assert list(ck.files["rank"]) == ([0] if kind == "distributed" else [-1] * len(ck.files))
    assert ck.totals["tensor_nbytes"] == sum(t.numel() * t.element_size() for t in STATE.values())


def test_consolidated_shards_chunks_and_offsets(tmp_path):
    """A consolidating save: the consolidated folder and its sharded/ folder both read."""
    d = tmp_path / "c"
    save(STATE, HuggingFaceStorageWriter(str(d), save_distributed=True, enable_consolidation=True))
    ck = dcpviz.inspect_checkpoint(d)
    assert ck.checks.empty, ck.checks
    assert {(r.fqn, r.offsets) for r in ck.chunks.itertuples()} == {
        (k, (0,) * v.dim()) for k, v in STATE.items()
    }
    shards = dcpviz.inspect_checkpoint(d / "sharded")
    assert {r[0] for r in _reader_chunks(d / "sharded")} == set(shards.chunks.fqn)


def _bad(tmp_path, name, data: bytes) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "model.safetensors").write_bytes(data)
    return d


def _header(doc) -> bytes:
    raw = json.dumps(doc).encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 4,  # shorter than the length
        struct.pack("<Q", 10**12) + b"{}",  # header larger than the limit
        struct.pack("<Q", 100) + b"{}",  # runs past the end
        _header([1, 2]),  # not an object
        _header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}),  # data missing
        _header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})
        + b"\0" * 4,  # wrong size
        _header({"x": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}})
        + b"\0",  # unknown dtype
    ],
)
def test_malformed_headers_are_refused(tmp_path, data):
    d = _bad(tmp_path, "bad", data)
    with pytest.raises(dcpviz.DcpvizError):
        dcpviz.inspect_checkpoint(d)
    assert list(checks_of_cli_rows(d).severity) == ["data-loss"]
    assert cli_check(d) == 1


def checks_of_cli_rows(d):
    from dcpviz.analysis.checkpoint.hf_checks import folder_checks
    from dcpviz.core.hf.folder import scan_folder

    return folder_checks(scan_folder(d))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300), st.integers(0, 299))
def test_fuzzed_files_give_tables_or_a_dcpviz_error(tmp_path_factory, noise, cut):
    good = (
        _header(
            {
                "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "__metadata__": {"format": "pt"},
            }
        )
        + b"\1" * 16
    )
    data = (good[:cut] + noise + good[cut + len(noise) :])[: len(good) + 8]
    d = tmp_path_factory.mktemp("fuzz")
    (d / "model.safetensors").write_bytes(data)
    rows = checks_of_cli_rows(d)  # the folder checks never raise: an unreadable file is a finding
    try:
        ck = dcpviz.inspect_checkpoint(d)
    except dcpviz.DcpvizError:
        assert "safetensors-unreadable" in set(rows.check)
        return
    assert int(ck.storage["length"].sum()) <= len(data)
    assert "safetensors-unreadable" not in set(rows.check)


def test_cli_exit_codes(tmp_path):
    save(STATE, HuggingFaceStorageWriter(str(tmp_path / "ok")))
    assert cli_check(tmp_path / "ok") == 0
    save(STATE, HuggingFaceStorageWriter(str(tmp_path / "dist"), save_distributed=True))
    assert cli_check(tmp_path / "dist") == 0  # a warning (no index.json) does not fail
    assert cli_check(tmp_path / "missing") == 2


# -- hazards found on disk, each in a folder DCP's own writer left --------------------------------
def found(path, check):
    c = checks_of_cli_rows(path)
    return c[c.check == check]


def test_non_tensor_value_found_on_disk(tmp_path):
    save({**STATE, "hp": 3}, HuggingFaceStorageWriter(str(tmp_path / "x")))
    rows = found(tmp_path / "x", "safetensors-unreadable")
    assert list(rows.severity) == ["data-loss"]
    assert "non-tensor" in rows.message.iloc[0]


def test_stale_files_found_on_disk(tmp_path):
    d = tmp_path / "x"
    old = {**STATE, "old.weight": torch.ones(3)}
    save(
        old,
        HuggingFaceStorageWriter(
            str(d), fqn_to_index_mapping={k: 1 + i for i, k in enumerate(sorted(old))}
        ),
    )
    save(STATE, HuggingFaceStorageWriter(str(d)))
    md = HuggingFaceStorageReader(str(d)).read_metadata()
    assert "old.weight" in md.state_dict_metadata  # what DCP's reader really does
    rows = found(d, "stale-safetensors")
    assert set(rows.severity) == {"data-loss", "warning"}
    assert "old.weight" in set(rows.fqn)
    assert cli_check(d) == 1


def test_missing_index_found_on_disk(tmp_path):
    save(STATE, HuggingFaceStorageWriter(str(tmp_path / "x"), save_distributed=True))
    assert list(found(tmp_path / "x", "no-index-json").severity) == ["warning"]
    save(STATE, HuggingFaceStorageWriter(str(tmp_path / "y")))
    assert found(tmp_path / "y", "no-index-json").empty


def test_failed_consolidation_found_on_disk(tmp_path):
    d = tmp_path / "x"
    with pytest.raises(CheckpointException, match="finfo"):
        save(
            {**STATE, "step": torch.zeros((), dtype=torch.int64)},
            HuggingFaceStorageWriter(str(d), save_distributed=True, enable_consolidation=True),
        )
    assert not list(d.glob("*.safetensors"))
    from dcpviz.analysis.checkpoint.hf_checks import folder_checks
    from dcpviz.core.hf.folder import HFFolder, scan_folder

    sub = scan_folder(d / "sharded")
    rows = folder_checks(HFFolder(d, (), None, sharded=sub))
    rows = rows[rows.check == "consolidation-incomplete"]
    assert list(rows.fqn) == ["step"] and list(rows.severity) == ["error"]


def test_duplicate_chunks_without_an_index(tmp_path):
    """Two writers (DCP's and safetensors') leave the same key in two files, no index."""
    d = tmp_path / "x"
    save(STATE, HuggingFaceStorageWriter(str(d), save_distributed=True))
    save_file({"emb": torch.zeros(5, 2, dtype=torch.float16)}, str(d / "old.safetensors"))
    md = HuggingFaceStorageReader(str(d)).read_metadata()
    assert len(md.state_dict_metadata["emb"].chunks) == 2  # DCP's reader: two chunks, one box
    rows = found(d, "duplicate-chunk")
    assert list(rows.fqn) == ["emb"] and list(rows.severity) == ["error"]


def test_quantized_pairs_are_information(tmp_path):
    d = tmp_path / "q"
    d.mkdir()
    save_file(
        {
            "l.weight": torch.zeros(4, 4, dtype=torch.uint8),
            "l.weight_scale_inv": torch.ones(1, 1),
            "e.w_blocks": torch.zeros(2, 8, dtype=torch.uint8),
            "e.w_scales": torch.zeros(2, dtype=torch.uint8),
        },
        str(d / "model.safetensors"),
    )
    rows = found(d, "quantized-pair")
    assert set(rows.severity) == {"info"} and len(rows) == 3
    assert cli_check(d) == 0


def test_a_lone_quantized_suffix_is_not_a_pair(tmp_path):
    """A scales key without its weight (or blocks without scales) is an ordinary key: advising
    QuantizedHuggingFaceStorageReader for it would be wrong (it reads X.weight_scale_inv only
    next to X.weight)."""
    d = tmp_path / "lone"
    d.mkdir()
    save_file(
        {"m.weight_scale_inv": torch.ones(1, 1), "e.w_blocks": torch.zeros(2, dtype=torch.uint8)},
        str(d / "model.safetensors"),
    )
    assert found(d, "quantized-pair").empty


@pytest.mark.parametrize(
    "index, check",
    [
        (b"not json", "index-unreadable"),
        (b'{"weight_map": [1]}', "index-unreadable"),
        (b'{"weight_map": {"emb": "../../etc/passwd"}}', "index-missing-file"),
        (b'{"weight_map": {"fc1.weight": "model.safetensors"}}', "index-disagrees"),
        (
            b'{"metadata": {"total_size": 1}, "weight_map": {"fc1.weight": "model.safetensors", '
            b'"fc1.bias": "model.safetensors", "emb": "model.safetensors"}}',
            "index-total-size",
        ),
    ],
)
def test_bad_index_files(tmp_path, index, check):
    """An index is read bounded and strictly; the files it names are never opened by name."""
    d = tmp_path / "x"
    d.mkdir()
    save_file(STATE, str(d / "model.safetensors"))
    (d / "model.safetensors.index.json").write_bytes(index)
    rows = checks_of_cli_rows(d)
    assert check in set(rows.check)
    assert cli_check(d) == (0 if check == "index-total-size" else 1)
