"""Tests written for analysis/checkpoint/hf_checks.py (bench/mutate.py target ``hf_checks``).

Hand-built folders (each file's name, readable header entries or an error, DCP's offsets; the
index), each finding written out from what the folder holds, as tests/test_hf_inspect.py finds
them on folders DCP's own writer wrote."""

from __future__ import annotations

from types import SimpleNamespace as NS

from dcpviz.analysis.checkpoint import hf_checks as hc

SHARD0 = "shard-00001-model-00001-of-00002.safetensors"  # DCP's name for rank 0's file
SHARD1 = "shard-00002-model-00001-of-00002.safetensors"


def _file(name, entries=None, offsets=(), error=""):
    """``entries``: {key: (shape, dtype, nbytes)}; None: an unreadable header."""
    from dcpviz.core.hf.folder import shard_rank

    header = (
        None
        if entries is None
        else NS(
            entries=[NS(name=k, shape=s, dtype=d, nbytes=n) for k, (s, d, n) in entries.items()]
        )
    )
    return NS(name=name, header=header, offsets=tuple(offsets), error=error, rank=shard_rank(name))


def _folder(files, index=None, index_error="", total=None, sharded=None):
    return NS(
        files=tuple(files),
        index=None if index is None else tuple(sorted(index.items())),
        index_error=index_error,
        index_total_size=total,
        sharded=sharded,
    )


F32 = ((2, 2), "float32", 16)


def test_unreadable_files_and_index():
    folder = _folder(
        [
            _file(SHARD1, None, error="header too large"),
            _file("model.safetensors", None, error="truncated"),
            _file("ok.safetensors", {"w": F32}),
        ],
        index_error="model.safetensors.index.json is not JSON",
    )
    fix = (
        "re-export; save only tensors through DCP's HF writer (a non-tensor value is written as "
        "raw bytes in front of the header)"
    )
    assert hc.unreadable(folder) == [
        (
            "data-loss",
            "safetensors-unreadable",
            "",
            (1,),
            f"{SHARD1} cannot be read: header too large",
            fix,
        ),
        (
            "data-loss",
            "safetensors-unreadable",
            "",
            (),
            "model.safetensors cannot be read: truncated",
            fix,
        ),
        (
            "error",
            "index-unreadable",
            "",
            (),
            "model.safetensors.index.json is not JSON",
            "re-export, or delete the broken model.safetensors.index.json",
        ),
    ]
    assert hc.unreadable(_folder([_file("ok.safetensors", {"w": F32})])) == []


def test_no_index():
    fix = (
        "save with DCP's HF writer without save_distributed, or with enable_consolidation=True "
        "(it writes the index)"
    )
    two = _folder([_file(SHARD0, {"a": F32}), _file(SHARD1, {"b": F32})])
    assert hc.no_index(two) == [
        (
            "warning",
            "no-index-json",
            "",
            (),
            "no model.safetensors.index.json next to 2 safetensors file(s): Hugging Face loaders "
            "cannot open a folder of several files without it.",
            fix,
        )
    ]
    (row,) = hc.no_index(_folder([_file(SHARD0, {"a": F32})]))
    assert row[4] == (
        "no model.safetensors.index.json next to 1 safetensors file(s): Hugging Face loaders "
        "look for model.safetensors or an index."
    )
    assert hc.no_index(_folder([_file("model.safetensors", {"a": F32})])) == []
    assert hc.no_index(_folder([])) == []
    assert hc.no_index(_folder(two.files, index={"a": SHARD0, "b": SHARD1})) == []
    assert hc.no_index(_folder(two.files, index_error="bad")) == []


def test_an_index_naming_a_file_the_folder_lacks():
    folder = _folder(
        [_file(SHARD0, {"a": F32})],
        index={
            "a": SHARD0,
            "c": "gone.safetensors",
            "b": "gone.safetensors",
            "d": "lost.safetensors",
        },
        total=10**6,  # not compared: a file is missing
    )
    rows = hc.index_checks(folder)
    fix = "re-export the folder; copy every shard file with the index"
    assert rows == [
        (
            "error",
            "index-missing-file",
            "b",
            (),
            "the index maps 2 key(s) to gone.safetensors, which is not in the folder.",
            fix,
        ),
        (
            "error",
            "index-missing-file",
            "d",
            (),
            "the index maps 1 key(s) to lost.safetensors, which is not in the folder.",
            fix,
        ),
    ]


def test_an_index_and_a_file_that_disagree():
    folder = _folder(
        [
            _file(SHARD0, {"a": F32, "x": F32, "y": F32}),
            _file(SHARD1, None, error="bad"),  # unreadable: named by `unreadable`, not here
        ],
        index={"a": SHARD0, "b": SHARD0, "c": SHARD0, "z": SHARD1},
    )
    assert hc.index_checks(folder) == [
        (
            "error",
            "index-disagrees",
            "b",
            (),
            f"the index and {SHARD0} disagree about 4 key(s) (b, c, x): the index belongs to "
            "another save.",
            "re-export the folder",
        )
    ]
    assert hc.index_checks(_folder([_file(SHARD0, {"a": F32})])) == []


def test_files_the_index_does_not_name():
    folder = _folder(
        [
            _file(SHARD0, {"a": F32, "b": F32}),
            _file("old.safetensors", {"a": F32, "b": F32, "c": F32, "d": F32, "e": F32}),
            _file("older.safetensors", {"q": F32}),
            _file("broken.safetensors", None, error="bad"),
        ],
        index={"a": SHARD0, "b": SHARD0},
    )
    fresh = "save into a new, empty folder (or delete the files left by the earlier save)"
    assert hc.unindexed_files(folder) == [
        (
            "data-loss",
            "stale-safetensors",
            "a",
            (),
            "old.safetensors is not in the index but DCP's HF reader reads every *.safetensors "
            "file: 2 key(s) it holds are also in other files (a, b), so a load gets a second, older "
            "chunk (which one wins depends on the listing order).",
            fresh,
        ),
        (
            "warning",
            "stale-safetensors",
            "c",
            (),
            "old.safetensors is not in the index but DCP's HF reader reads it: 3 key(s) the index "
            "does not have come back (c, d, e).",
            fresh,
        ),
        (
            "warning",
            "stale-safetensors",
            "q",
            (),
            "older.safetensors is not in the index but DCP's HF reader reads it: 1 key(s) the "
            "index does not have come back (q).",
            fresh,
        ),
    ]
    assert hc.unindexed_files(_folder(folder.files)) == []
    # index_checks includes them
    assert [r[1] for r in hc.index_checks(folder)] == ["stale-safetensors"] * 3


def test_total_size_against_the_data():
    files = [
        _file(SHARD0, {"a": F32, "b": ((3,), "int64", 24)}),
        _file("x.safetensors", {"c": F32}),
    ]
    index = {"a": SHARD0, "b": SHARD0}
    assert hc.index_checks(_folder(files[:1], index=index, total=40)) == []
    (row,) = hc.index_checks(_folder(files[:1], index=index, total=41))
    assert row == (
        "warning",
        "index-total-size",
        "",
        (),
        "the index says total_size 41 but its files hold 40 bytes of tensor data.",
        "re-export the folder",
    )
    # a file the index does not name is not counted
    rows = hc.index_checks(_folder(files, index=index, total=40))
    assert [r[1] for r in rows] == ["stale-safetensors"]
    # no total_size: nothing to compare; an unreadable indexed file: not known
    assert hc.index_checks(_folder(files[:1], index=index)) == []
    unread = [_file(SHARD0, {"a": F32, "b": F32}), _file(SHARD1, None, error="bad")]
    rows = hc.index_checks(_folder(unread, index={**index, "z": SHARD1}, total=1))
    assert rows == []


def test_one_chunk_in_several_files_without_an_index():
    files = [
        _file(SHARD0, {"w": F32, "v": F32}, offsets=[("w", (0, 0)), ("v", (2, 0))]),
        _file(SHARD1, {"w": F32, "v": F32}, offsets=[("w", (2, 0)), ("v", (2, 0))]),
        _file("old.safetensors", {"w": F32, "u": F32}),  # no DCP offsets: at the origin
        _file("older.safetensors", {"w": F32}),
        _file("bad.safetensors", None, error="x"),
    ]
    fresh = "save into a new, empty folder (or delete the files left by the earlier save)"
    assert hc.duplicate_chunks(_folder(files)) == [
        (
            "error",
            "duplicate-chunk",
            "v",
            (),
            f"v at offsets (2, 0) is in 2 files ({SHARD0}, {SHARD1}): DCP's HF reader keeps one of "
            "them by listing order; an earlier save's file is left here.",
            fresh,
        ),
        (
            "error",
            "duplicate-chunk",
            "w",
            (),
            f"w at offsets (0, 0) is in 3 files ({SHARD0}, old.safetensors, older.safetensors): "
            "DCP's HF reader keeps one of them by listing order; an earlier save's file is left "
            "here.",
            fresh,
        ),
    ]
    assert hc.duplicate_chunks(_folder(files, index={"w": SHARD0})) == []


def test_many_duplicate_chunks_are_summed_up():
    keys = {f"k{i:02}": F32 for i in range(10)}
    rows = hc.duplicate_chunks(
        _folder([_file("a.safetensors", keys), _file("b.safetensors", keys)])
    )
    assert len(rows) == 8
    assert rows[-1][2] == "(3 more keys)"
    assert rows[-1][4] == "3 more keys are in several files (k07, k08, k09, ...)."


def test_a_consolidation_that_did_not_finish():
    sub = _folder(
        [
            _file(SHARD0, {"w": F32, "steps": ((1,), "int64", 8), "h": ((2,), "bfloat16", 4)}),
            _file(SHARD1, {"mask": ((2,), "bool", 2), "z": ((2,), "complex64", 16)}),
            _file("bad.safetensors", None, error="x"),
        ]
    )
    fix = (
        "drop or cast integer/bool tensors before exporting, then run DCP's "
        "consolidate_safetensors_files on sharded/"
    )
    assert hc.consolidation(_folder([], sharded=sub)) == [
        (
            "error",
            "consolidation-incomplete",
            "mask",
            (),
            "3 shard file(s) in sharded/ and no consolidated index.json: the save's consolidation "
            "did not finish. It holds non-floating tensors (mask, steps), which make "
            "consolidation's torch.finfo raise TypeError.",
            fix,
        )
    ]
    floats = _folder([_file(SHARD0, {"w": F32})])
    (row,) = hc.consolidation(_folder([], sharded=floats))
    assert row[2] == "" and row[4] == (
        "1 shard file(s) in sharded/ and no consolidated index.json: the save's consolidation did "
        "not finish."
    )
    assert hc.consolidation(_folder([], index={"w": "model.safetensors"}, sharded=sub)) == []
    assert hc.consolidation(_folder([])) == []


def test_quantized_keys_are_information():
    files = [
        _file(
            "model.safetensors",
            {
                "l.weight": F32,
                "l.weight_scale_inv": F32,
                "m.weight_scale_inv": F32,
                "e_blocks": F32,
                "e_scales": F32,
                "f_blocks": F32,
                "g_blocks": F32,
                "h_blocks": F32,
            },
        )
    ]
    fix = "load with QuantizedHuggingFaceStorageReader, and pass these keys as expected_unused"
    tail = (
        ": DCP's HuggingFaceStorageReader loads them as stored; "
        "QuantizedHuggingFaceStorageReader dequantizes the weights and leaves them unread."
    )
    # Lone keys with a quantized suffix (m.weight_scale_inv without m.weight, f/g/h_blocks
    # without their scales) are ordinary keys, not pairs.
    assert hc.quantized_pairs(_folder(files)) == [
        ("info", "quantized-pair", "e_blocks", (), "1 MXFP4 blocks key(s) (e_blocks)" + tail, fix),
        ("info", "quantized-pair", "e_scales", (), "1 MXFP4 scales key(s) (e_scales)" + tail, fix),
        (
            "info",
            "quantized-pair",
            "l.weight_scale_inv",
            (),
            "1 fp8 block scales key(s) (l.weight_scale_inv)" + tail,
            fix,
        ),
    ]
    two = {f"k{i}_blocks": F32 for i in range(4)} | {f"k{i}_scales": F32 for i in range(4)}
    (blocks,) = [
        r for r in hc.quantized_pairs(_folder([_file("m.safetensors", two)])) if r[2] == "k0_blocks"
    ]
    assert blocks[4].startswith("4 MXFP4 blocks key(s) (k0_blocks, k1_blocks, k2_blocks)")
    assert hc.quantized_pairs(_folder([_file("model.safetensors", {"w": F32})])) == []


def test_folder_checks_most_severe_first():
    folder = _folder(
        [
            _file("model.safetensors", {"l.weight": F32, "l.weight_scale_inv": F32}),
            _file("x.safetensors", None, error="bad"),
        ]
    )
    df = hc.folder_checks(folder)
    assert list(df["check"]) == ["safetensors-unreadable", "no-index-json", "quantized-pair"]
    assert list(df["severity"]) == ["data-loss", "warning", "info"]
    assert hc.folder_checks(_folder([_file("model.safetensors", {"w": F32})])).empty


def test_unindexed_files_show_three_keys_and_skip_keys_the_index_maps_elsewhere():
    keys = {k: F32 for k in "abcd"}
    folder = _folder(
        [_file(SHARD0, keys), _file("old.safetensors", keys)], index=dict.fromkeys(keys, SHARD0)
    )
    (row,) = hc.unindexed_files(folder)
    assert "4 key(s) it holds are also in other files (a, b, c), so a load" in row[4]
    # the index maps `x` to a file that lacks it; the old file's `x` is in no other file, and
    # the index has it: neither a second copy nor a key coming back
    folder = _folder(
        [_file(SHARD0, {"a": F32}), _file("old.safetensors", {"x": F32})],
        index={"a": SHARD0, "x": SHARD0},
    )
    assert hc.unindexed_files(folder) == []
