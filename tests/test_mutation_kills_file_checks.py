"""Tests written for analysis/save/file_checks.py's mutants (bench/mutate.py target
``file_checks``).

Hand-built save traces (a storage writer's class and options, the final plans' items, the file
plan): each finding written out in full from what the trace says (which rank writes which key
into which file), as tests/test_hf_checks.py finds them with DCP's own writer."""

from __future__ import annotations

from types import SimpleNamespace as NS

from dcpviz.analysis.save import file_checks as fc

HF = "HuggingFaceStorageWriter"


def _trace(cls=HF, options=(), items=(), plans=None, files=(), unmapped=(), stale=()):
    """``items``: (rank, fqn, item_type, dtype) in final-plan order; ``files``: (rank, fqn, file,
    stage); a rank's final plan lists its items' indices (``plans`` overrides)."""
    planned = [NS(fqn=f, item_type=t, dtype=d) for _, f, t, d in items]
    if plans is None:
        ranks = max((r for r, *_ in items), default=-1) + 1
        plans = [[i for i, it in enumerate(items) if it[0] == r] for r in range(ranks)]
    writer = (
        None
        if cls is None
        else NS(cls=cls, options=tuple(options), unmapped_keys=tuple(unmapped), stale_files=stale)
    )
    return NS(
        storage_writer=writer,
        items=planned,
        final_plans=[NS(items=tuple(p)) for p in plans],
        file_plan=[NS(rank=r, fqn=f, file=n, stage=s) for r, f, n, s in files],
    )


SAFE = (("serialization_format", "SAFETENSORS"),)


def test_which_writers_write_safetensors():
    assert fc.is_safetensors_writer(_trace(options=SAFE))
    assert fc.is_safetensors_writer(_trace(cls="FileSystemWriter", options=SAFE))
    assert not fc.is_safetensors_writer(_trace(options=(("serialization_format", "TORCH_SAVE"),)))
    assert not fc.is_safetensors_writer(_trace(cls=None))
    assert fc._opts(_trace(cls=None)) == {}


# -- non-tensor values in a safetensors file ---------------------------------------------------
def test_non_tensor_values_name_their_file_and_the_tensors_lost():
    items = [
        (0, "w", "TENSOR", "float32"),
        (0, "step", "BYTE_IO", None),
        (0, "b", "SHARD", "float32"),
        (1, "v", "TENSOR", "float32"),
        (1, "a", "BYTE_IO", None),
        (1, "c", "BYTE_IO", None),
        (1, "d", "BYTE_IO", None),
        (1, "e", "BYTE_IO", None),
    ]
    files = [(0, k, "shard-0.safetensors", "write") for k in ("w", "step", "b")]
    files += [(0, "w", "model.safetensors", "consolidate")]  # not a write: not where it goes
    files += [(1, k, "shard-1.safetensors", "write") for k in ("v", "a", "c", "d")]
    # sorted by (rank, file): rank 1's 'its file' (e has no planned file) before shard-1
    rows = fc.non_tensor_values(_trace(options=SAFE, items=items, files=files))
    fix = (
        "save only tensors through the safetensors writer (wrap numbers as torch.tensor, or keep "
        "non-tensor state in a separate DCP checkpoint)"
    )
    assert rows == [
        (
            "data-loss",
            "safetensors-non-tensor",
            "step",
            (0,),
            "1 non-tensor value(s) (step) go into shard-0.safetensors (rank 0) as raw bytes in front "
            "of its safetensors header: the save succeeds, but the file cannot be opened ('header "
            "too large') and its 2 tensor(s) are lost.",
            fix,
        ),
        (
            "data-loss",
            "safetensors-non-tensor",
            "e",
            (1,),
            "1 non-tensor value(s) (e) go into its file (rank 1) as raw bytes in front of its "
            "safetensors header: the save succeeds, but the file cannot be opened ('header too "
            "large') and its 0 tensor(s) are lost.",
            fix,
        ),
        (
            "data-loss",
            "safetensors-non-tensor",
            "a",
            (1,),
            "3 non-tensor value(s) (a, c, d) go into shard-1.safetensors (rank 1) as raw bytes in "
            "front of its safetensors header: the save succeeds, but the file cannot be opened "
            "('header too large') and its 1 tensor(s) are lost.",
            fix,
        ),
    ]
    many = [(0, f"k{i}", "BYTE_IO", None) for i in range(4)]
    (row,) = fc.non_tensor_values(
        _trace(options=SAFE, items=many, files=[(0, f"k{i}", "f", "write") for i in range(4)])
    )
    assert row[4].startswith("4 non-tensor value(s) (k0, k1, k2, ...) go into f (rank 0)")
    # another writer format: nothing
    assert fc.non_tensor_values(_trace(items=items, files=files)) == []


def test_non_tensor_values_come_from_the_final_plans():
    items = [(0, "x", "BYTE_IO", None), (1, "y", "BYTE_IO", None)]
    # rank 0's final plan drops its item (dedup); rank 1's keeps its own
    rows = fc.non_tensor_values(_trace(options=SAFE, items=items, plans=[[], [1]]))
    assert [(r[2], r[3]) for r in rows] == [("y", (1,))]
    assert fc.non_tensor_values(_trace(options=SAFE, items=items, plans=None)) != []
    assert fc._final_items(NS(final_plans=None, items=[])) == []


# -- integer tensors under consolidation -------------------------------------------------------
CONSOLIDATE = (("save_distributed", "True"), ("enable_consolidation", "True"))


def test_integer_and_bool_tensors_under_consolidation():
    items = [
        (0, "w", "SHARD", "float32"),
        (0, "h", "SHARD", "bfloat16"),
        (0, "z", "SHARD", "complex64"),
        (0, "steps", "SHARD", "int64"),
        (1, "steps", "SHARD", "int64"),
        (1, "mask", "TENSOR", "bool"),
        (1, "blob", "BYTE_IO", None),
        (1, "odd", "BYTE_IO", "int8"),  # a bytes entry is never sized by dtype
        (2, "untyped", "TENSOR", None),
    ]
    rows = fc.consolidation_dtypes(_trace(options=CONSOLIDATE, items=items))
    fix = (
        "drop integer/bool buffers from the export (or cast them to a floating dtype), or save "
        "without enable_consolidation"
    )
    tail = (
        ": consolidation sizes every dtype with torch.finfo, so finish() raises TypeError after "
        "every shard is written, and no consolidated file or index.json is written."
    )
    assert rows == [
        ("error", "consolidation-dtype", "mask", (1,), "mask is bool" + tail, fix),
        ("error", "consolidation-dtype", "steps", (0, 1), "steps is int64" + tail, fix),
    ]


def test_consolidation_dtypes_need_hf_distributed_and_consolidation():
    items = [(0, "steps", "TENSOR", "int64")]
    assert fc.consolidation_dtypes(_trace(options=CONSOLIDATE, items=items)) != []
    for cls, opts in (
        ("FileSystemWriter", CONSOLIDATE),
        (HF, (("save_distributed", "True"),)),
        (HF, (("enable_consolidation", "True"),)),
        (HF, (("save_distributed", "False"), ("enable_consolidation", "True"))),
        (HF, (("save_distributed", "True"), ("enable_consolidation", "False"))),
    ):
        assert fc.consolidation_dtypes(_trace(cls=cls, options=opts, items=items)) == [], opts


# -- keys missing from fqn_to_index_mapping ----------------------------------------------------
def test_unmapped_keys():
    tail = (
        "): DCP's write_data raises a bare KeyError in the middle of the save, after other files "
        "may have been written."
    )
    fix = "add every saved key to fqn_to_index_mapping (or drop the keys from the state dict)"
    assert fc.unmapped_keys(_trace(unmapped=("a", "b"))) == [
        (
            "error",
            "unmapped-key",
            "a",
            (),
            "2 key(s) are not in fqn_to_index_mapping (a, b" + tail,
            fix,
        )
    ]
    (row,) = fc.unmapped_keys(_trace(unmapped=tuple("abcde")))
    assert row[4] == "5 key(s) are not in fqn_to_index_mapping (a, b, c, d, ..." + tail
    (row,) = fc.unmapped_keys(_trace(unmapped=tuple("abcd")))
    assert row[4] == "4 key(s) are not in fqn_to_index_mapping (a, b, c, d" + tail
    assert fc.unmapped_keys(_trace()) == [] and fc.unmapped_keys(_trace(cls=None)) == []


# -- stale files -------------------------------------------------------------------------------
def test_stale_files_written_again_gone_and_unreadable():
    files = [(0, k, "shard-0.safetensors", "write") for k in ("a", "b", "c", "d")]
    stale = (
        ("old-1.safetensors", ("d", "b", "a", "c", "x")),
        ("old-2.safetensors", ("z", "y")),
        ("broken.safetensors", None),
    )
    rows = fc.stale_files(_trace(files=files, stale=stale))
    fix = "save into a new, empty folder (or delete the old files first)"
    assert rows == [
        (
            "data-loss",
            "stale-safetensors",
            "a",
            (),
            "old-1.safetensors, left by an earlier save, holds 4 key(s) this save writes again "
            "(a, b, c, ...): DCP's HF reader reads both files, and which copy a load gets depends "
            "on the folder listing order.",
            fix,
        ),
        (
            "warning",
            "stale-safetensors",
            "x",
            (),
            "old-1.safetensors, left by an earlier save, holds 1 key(s) this save does not write "
            "(x): DCP's HF reader brings them back in every load of this folder.",
            fix,
        ),
        (
            "warning",
            "stale-safetensors",
            "y",
            (),
            "old-2.safetensors, left by an earlier save, holds 2 key(s) this save does not write "
            "(y, z): DCP's HF reader brings them back in every load of this folder.",
            fix,
        ),
        (
            "error",
            "stale-safetensors",
            "",
            (),
            "broken.safetensors is already in the output folder and cannot be read: DCP's HF "
            "reader reads every *.safetensors file in the folder, so a load will fail on it.",
            fix,
        ),
    ]
    assert fc.stale_files(_trace(files=files)) == [] and fc.stale_files(_trace(cls=None)) == []
    (row,) = fc.stale_files(_trace(files=files, stale=(("o", ("a", "b", "c")),)))
    assert "holds 3 key(s) this save writes again (a, b, c): " in row[4]


# -- no index.json; ranks sharing a file name --------------------------------------------------
def test_a_distributed_save_without_consolidation_has_no_index():
    row = (
        "warning",
        "no-index-json",
        "",
        (),
        "save_distributed=True without enable_consolidation writes per-rank shard files and no "
        "model.safetensors.index.json: Hugging Face loaders cannot open the folder.",
        "enable_consolidation=True (or consolidate afterwards with DCP's "
        "consolidate_safetensors_files)",
    )
    assert fc.no_index(_trace(options=(("save_distributed", "True"),))) == [row]
    assert fc.no_index(
        _trace(options=(("save_distributed", "True"), ("enable_consolidation", "False")))
    ) == [row]
    assert fc.no_index(_trace(options=CONSOLIDATE)) == []
    assert fc.no_index(_trace(options=(("save_distributed", "False"),))) == []
    assert (
        fc.no_index(_trace(cls="FileSystemWriter", options=(("save_distributed", "True"),))) == []
    )
    assert fc.no_index(_trace(cls=None)) == []


def test_ranks_writing_one_file_name():
    files = [
        (0, "a", "model.safetensors", "write"),
        (1, "b", "model.safetensors", "write"),
        (2, "c", "model.safetensors", "write"),
        (0, "a2", "model.safetensors", "write"),
        (3, "d", "own.safetensors", "write"),
        (4, "d", "own.safetensors", "consolidate"),
    ]
    assert fc.shared_file_names(_trace(files=files)) == [
        (
            "data-loss",
            "ranks-share-a-file",
            "",
            (0, 1, 2),
            "3 ranks write the same file model.safetensors: each overwrites the others', so only "
            "one rank's items survive.",
            "save_distributed=True (one shard file per rank), or save a full state dict from one "
            "rank",
        )
    ]


def test_every_check_in_order_and_none_without_a_writer():
    items = [(0, "x", "BYTE_IO", None), (1, "steps", "TENSOR", "int64")]
    files = [(0, "x", "f", "write"), (1, "steps", "f", "write")]
    tr = _trace(
        options=(*SAFE, *CONSOLIDATE),
        items=items,
        files=files,
        unmapped=("u",),
        stale=(("old", ("x",)),),
    )
    assert [r[1] for r in fc.file_plan_checks(tr)] == [
        "safetensors-non-tensor",
        "ranks-share-a-file",
        "consolidation-dtype",
        "unmapped-key",
        "stale-safetensors",
    ]
    tr = _trace(options=(("save_distributed", "True"),))
    assert [r[1] for r in fc.file_plan_checks(tr)] == ["no-index-json"]
    assert fc.file_plan_checks(_trace(cls=None, items=items, files=files)) == []


def test_stale_files_after_an_unreadable_one_are_still_named():
    files = [(0, "a", "shard-0.safetensors", "write")]
    stale = (("broken.safetensors", None), ("old.safetensors", ("a", "z")))
    rows = fc.stale_files(_trace(files=files, stale=stale))
    assert [(r[0], r[2]) for r in rows] == [("error", ""), ("data-loss", "a"), ("warning", "z")]
