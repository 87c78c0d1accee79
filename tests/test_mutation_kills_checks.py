"""Tests written for the checks' surviving mutants (bench/mutate.py, analysis/checks.py).

The load-side checks and the shared helpers are pinned on hand-built traces with hand-computed
rows (what each rule must say, with its numbers); the chunk-coverage rule on boxes whose shared
and missing elements are counted by hand (and by brute force over every element)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace as NS

import pandas as pd
import pytest

from dcpviz.analysis import checks as c
from dcpviz.core.trace import (
    ErrorRecord,
    LoadTrace,
    MismatchRecord,
    PlannerInfo,
    ScenarioInfo,
    TargetValue,
)


def _scenario(world_size=4, components=()):
    return ScenarioInfo(
        "mlp",
        world_size,
        (world_size,),
        ("dp",),
        "fsdp",
        "float32",
        "meta",
        components=tuple(components),
    )


def _trace(
    mismatches=(),
    world_size=4,
    partial=None,
    errors=(),
    wanted=(),
    expected=(),
    saved_components=None,
):
    options = () if partial is None else (("allow_partial_load", partial),)
    saved = _scenario(world_size, saved_components) if saved_components is not None else None
    return LoadTrace(
        scenario=_scenario(world_size),
        planner=PlannerInfo("DefaultLoadPlanner", "x", options),
        saved=None,
        saved_scenario=saved,
        saved_writers=(),
        reads=(),
        local_plans=(),
        global_plans=None,
        final_plans=None,
        wanted=tuple(TargetValue(k, "Tensor", (4, 2), "torch.float32") for k in wanted),
        wanted_by_rank=(),
        mismatches=tuple(mismatches),
        errors=tuple(errors),
        expected_unused=tuple(expected),
    )


def M(
    fqn, kind, ranks=(), saved=None, saved_dtype=None, current=None, current_dtype=None, message=""
):
    return MismatchRecord(
        fqn, kind, tuple(ranks), saved, saved_dtype, current, current_dtype, message
    )


FIX_UNREAD = (
    "load them (add the keys to the state dict you pass to dcp.load), or drop them on purpose"
)
FIX_LOST = (
    "map the target's keys to these (load.hints names the prefix or rename), or declare "
    "them unused on purpose (expected_unused)"
)


def _partial():
    return _trace(
        [
            M("model.a", "missing", [0, 1], current=(4, 2)),
            M("model.b", "missing", [2], current=(3,)),
            M("model.v", "missing", [1]),
            M("ck.c", "unexpected", saved=(4, 2)),
            M("ck.a", "unexpected", saved=(4, 2)),
            M("ck.v", "unexpected"),
            M("ck.z", "unexpected", saved=(5,)),
            M("optim.state.ck.a.exp_avg", "unexpected", saved=(4, 2)),
            M("opt.x.y", "unexpected", saved=(9,)),
            M("ck.e", "unexpected", saved=(4, 2)),
        ],
        partial=True,
        expected=["ck.e"],
        wanted=["model.a", "model.a", "model.b", "model.v", "model.c"],
        saved_components=(("opt", "optim"),),
    )


# -- load ----------------------------------------------------------------------------------------
def test_unread_keys_rows_by_hand():
    rows = c.unread_keys(_partial())
    lost_msg = (
        "the checkpoint holds {!r} but no target rank asks for it, while allow_partial_load skips a "
        "target key of its shape: the load leaves its data behind."
    )
    assert rows[:4] == [
        ("data-loss", "unread-keys", "ck.a", (), lost_msg.format("ck.a"), FIX_LOST),
        ("data-loss", "unread-keys", "ck.c", (), lost_msg.format("ck.c"), FIX_LOST),
        ("data-loss", "unread-keys", "ck.v", (), lost_msg.format("ck.v"), FIX_LOST),
        (
            "warning",
            "unread-keys",
            "ck.z",
            (),
            "the checkpoint holds 'ck.z' but no target rank asks for it: DCP ignores it silently.",
            FIX_UNREAD,
        ),
    ]
    sev, check, fqn, ranks, msg, fix = rows[4]
    # no optimizer key is skipped, so the unread moments could hold no skipped key's data
    assert (sev, check, fqn, ranks) == ("warning", "optimizer-state-not-read", "(2 keys)", ())
    assert msg == (
        "the checkpoint holds optimizer state (2 keys, e.g. opt.x.y, optim.state.ck.a.exp_avg) that "
        "no target rank reads: a resumed run starts its optimizer afresh (Adam's moments reset) "
        "without an error."
    )
    assert fix == (
        "load the optimizer too: get_state_dict(model, optim) -> {'model': ..., 'optim': ...} "
        "in dcp.load, then set_state_dict(model, optim, ...)"
    )
    assert len(rows) == 5


def test_unread_optimizer_state_that_a_skipped_optimizer_key_could_take_is_data_loss():
    t = _trace(
        [
            M("optim.state.a.exp_avg", "missing", [0], current=(4,)),
            M("optim.state.b.exp_avg", "unexpected", saved=(4,)),
        ],
        partial=True,
    )
    assert [r[:3] for r in c.unread_keys(t)] == [
        ("data-loss", "optimizer-state-not-read", "optim.state.b.exp_avg")
    ]


def test_one_unread_optimizer_key_is_named_and_a_warning():
    rows = c.unread_keys(_trace([M("optimizer.step", "unexpected")]))
    assert [r[:3] for r in rows] == [("warning", "optimizer-state-not-read", "optimizer.step")]
    # without a recorded component, 'opt.x' is a model key
    rows = c.unread_keys(_trace([M("opt.x", "unexpected")]))
    assert [r[:3] for r in rows] == [("warning", "unread-keys", "opt.x")]
    assert c.unread_keys(_trace([M("opt.x", "unexpected")], expected=["opt.*"])) == []


def test_rows_beyond_eight_are_summed_up():
    ms = [
        M(f"k{i}", "dtype", [i % 3, 5], saved_dtype="torch.float32", current_dtype="torch.bfloat16")
        for i in range(10)
    ]
    rows = c.dtype_casts(_trace(ms, world_size=8))
    assert len(rows) == 8
    assert rows[0] == (
        "warning",
        "dtype-cast",
        "k0",
        (0, 5),
        "'k0' was saved as torch.float32 and is loaded into torch.bfloat16: DCP does not check "
        "dtypes, it casts with Tensor.copy_ (precision may be lost).",
        "load into a torch.float32 tensor and cast yourself, or accept the cast",
    )
    assert [r[2] for r in rows[:7]] == [f"k{i}" for i in range(7)]
    assert rows[7] == (
        "warning",
        "dtype-cast",
        "(3 more keys)",
        (0, 1, 2, 5),
        "3 more keys are cast silently (k7, k8, k9, ...).",
        "load into tensors of the saved dtype and cast yourself",
    )
    eight = c.dtype_casts(_trace(ms[:8], world_size=8))
    assert [r[2] for r in eight] == [f"k{i}" for i in range(8)]  # eight rows: no summary
    nine = c.dtype_casts(_trace(ms[:9], world_size=8))
    assert (
        nine[7][2] == "(2 more keys)"
        and nine[7][4] == "2 more keys are cast silently (k7, k8, ...)."
    )
    assert nine[7][3] == (1, 2, 5)  # k7 on ranks 1, 5 and k8 on 2, 5
    assert c.dtype_casts(_trace([M("s", "size", [0])])) == []


def test_unread_rows_capped_separately_for_lost_and_plain():
    ms = [M(f"u{i}", "unexpected") for i in range(9)]
    rows = c.unread_keys(_trace(ms))
    assert [r[2] for r in rows] == [f"u{i}" for i in range(7)] + ["(2 more keys)"]
    assert rows[7] == (
        "warning",
        "unread-keys",
        "(2 more keys)",
        (),
        "2 more keys are in the checkpoint and read by no rank (u7, u8, ...).",
        FIX_UNREAD,
    )


def test_partial_load_rows_by_hand():
    rows = c.partial_load(_partial())
    said = (
        "{!r} is not in the checkpoint; allow_partial_load=True makes DCP skip it without a word, so it "
        "keeps its initial value."
    )
    lost_fix = (
        "map the target's keys to the checkpoint's (load.hints, load.fix_planner()); use "
        "allow_partial_load only for keys with no source in the checkpoint"
    )
    fix = "check the key names (load.hints); use allow_partial_load only for keys you mean to skip"
    assert rows == [
        (
            "data-loss",
            "partial-load-leaves-data-unread",
            "model.a",
            (0, 1),
            said.format("model.a")
            + " The checkpoint holds 2 unread key(s) that could hold its data (ck.a, ck.c). "
            "The load restores 1 of 4 target keys.",
            lost_fix,
        ),
        (
            "data-loss",
            "partial-load-leaves-data-unread",
            "model.v",
            (1,),
            said.format("model.v")
            + " The checkpoint holds 1 unread key(s) that could hold its data (ck.v). "
            "The load restores 1 of 4 target keys.",
            lost_fix,
        ),
        ("warning", "partial-load-hides-missing", "model.b", (2,), said.format("model.b"), fix),
    ]
    assert c.partial_load(_trace(_partial().mismatches, partial=False)) == []


def test_partial_load_names_three_sources_then_dots_and_counts_skipped_without_wanted():
    ms = [M("m", "missing", [0], current=(2,))] + [
        M(f"s{i}", "unexpected", saved=(2,)) for i in range(4)
    ]
    (row,) = c.partial_load(_trace(ms, partial=True))
    assert row[4].endswith(
        "The checkpoint holds 4 unread key(s) that could hold its data (s0, s1, s2, ...). "
        "The load restores 0 of 1 target keys."
    )
    (row,) = c.partial_load(_trace(ms[:4], partial=True))
    assert "(s0, s1, s2). The load" in row[4]


def test_bytes_replace_tensors_row_by_hand():
    rows = c.bytes_replace_tensors(
        _trace(
            [
                M("t", "type", [0, 2], current=(4, 2), current_dtype="torch.float32"),
                M("r", "type", [0], current=(4,), message="DCP raised"),
                M("p", "type", [0], saved=(4,)),
            ]
        )
    )
    assert rows == [
        (
            "data-loss",
            "bytes-replace-tensor",
            "t",
            (0, 2),
            "the checkpoint holds a Python value (bytes) under 't' where the target holds a torch.float32 "
            "tensor (4, 2): dcp.load replaces the state dict's entry with the saved value and never "
            "writes the tensor (a model's parameter keeps its initial value; load_state_dict then gets "
            "a non-tensor).",
            "save a tensor under this key, or load it into a Python value and convert it yourself",
        )
    ]


def test_planner_errors_one_row_per_phase_and_message():
    long = "x" * 600
    errors = [
        ErrorRecord("local", 2, "KeyError", "m"),
        ErrorRecord("local", 0, "KeyError", "m"),
        ErrorRecord("local", 0, "KeyError", "m"),
        ErrorRecord("global", None, "RuntimeError", "g"),
        ErrorRecord("read", 1, "OSError", long),
        ErrorRecord("read", 3, "OSError", long + "y"),
    ]
    load = _trace(errors=errors)
    rows = c.planner_errors(load)
    fix = "see the message; the load hints and mismatches name the keys"
    read_fix = (
        "copy the checkpoint's data files again (or re-save it): .metadata names each file and "
        "the bytes it must hold"
    )
    assert rows == [
        ("error", "local-failed", "", (0, 2), "[local, ranks 0, 2] KeyError: m", fix),
        ("error", "global-failed", "", (), "[global, the coordinator] RuntimeError: g", fix),
        ("error", "read-failed", "", (1, 3), f"[read, ranks 1, 3] OSError: {'x' * 500}", read_fix),
    ]
    save = NS(kind="save", errors=errors[:1] + errors[4:5], scenario=_scenario(4))
    assert c.planner_errors(save) == [
        (
            "error",
            "local-failed",
            "",
            (2,),
            "[local, rank 2] KeyError: m",
            "see the message (planner, layout or storage)",
        ),
        (
            "error",
            "read-failed",
            "",
            (1,),
            f"[read, rank 1] OSError: {'x' * 500}",
            "see the message (planner, layout or storage)",
        ),
    ]


def test_load_checks_order_and_counts(monkeypatch):
    monkeypatch.setattr(c, "read_amplification", lambda trace, reads=None: [])
    t = _trace(
        [
            M("d", "dtype", [0], saved_dtype="a", current_dtype="b"),
            M("t", "type", [0], current=(1,), current_dtype="torch.float32"),
            M("u", "unexpected"),
        ],
        errors=[ErrorRecord("local", 0, "E", "m")],
    )
    df = c.load_checks(t)
    assert list(df.columns) == c.CHECK_COLUMNS
    assert list(df["severity"]) == ["data-loss", "error", "warning", "warning"]
    assert list(df["check"]) == [
        "bytes-replace-tensor",
        "local-failed",
        "unread-keys",
        "dtype-cast",
    ]
    assert list(df.index) == [0, 1, 2, 3]
    assert c.counts(df) == {"data-loss": 1, "error": 1, "warning": 2}
    assert c.counts_line(df) == "1 data-loss, 1 error, 2 warnings"
    assert c.failing(df)


def test_counts_and_failing_on_each_severity():
    def frame(*sevs):
        return c._frame([(s, "x", "", (), "", "") for s in sevs])

    empty = frame()
    assert list(empty.columns) == c.CHECK_COLUMNS and len(empty) == 0
    assert (
        c.counts(empty) == {}
        and c.counts_line(empty) == "no findings"
        and c.failing(empty) is False
    )
    assert c.failing(frame("info", "error")) is True and c.failing(frame("data-loss")) is True
    assert c.failing(frame("warning", "info")) is False
    df = frame("info", "warning", "info", "data-loss")
    assert list(df["severity"]) == ["data-loss", "warning", "info", "info"]
    assert c.counts(df) == {"data-loss": 1, "warning": 1, "info": 2}
    assert list(c.counts(df)) == ["data-loss", "warning", "info"]


def test_refused_checkpoint_rows():
    df = c.refused_checkpoint("p", "refusing to build os.system")
    assert [tuple(r) for r in df.itertuples(index=False)] == [
        (
            "error",
            "unsafe-entry",
            "",
            (),
            "refusing to build os.system",
            "do not load it with plain DCP; re-save it from a trusted job",
        )
    ]
    df = c.refused_checkpoint("p", "a broken record")
    assert [tuple(r) for r in df.itertuples(index=False)] == [
        (
            "error",
            "unreadable-checkpoint",
            "",
            (),
            "a broken record",
            "re-save the checkpoint; see the message for the entry and file",
        )
    ]


# -- save: chunk coverage ------------------------------------------------------------------------
def _box(offsets, sizes):
    return NS(offsets=tuple(offsets), sizes=tuple(sizes))


def _brute(size, chunks):
    """(elements in two or more chunks counted once per extra pair, elements in no chunk): by
    visiting every element."""
    shared = missing = 0
    for point in itertools.product(*(range(n) for n in size)):
        k = sum(all(o <= p < o + s for p, o, s in zip(point, b.offsets, b.sizes)) for b in chunks)
        shared += k * (k - 1) // 2
        missing += k == 0
    return shared, missing


@pytest.mark.parametrize(
    ("size", "boxes"),
    [
        ((6, 4), [((0, 0), (4, 4)), ((2, 0), (4, 4))]),  # rows 2-3 twice: 8 elements
        ((6, 4), [((0, 0), (3, 4)), ((4, 0), (2, 4))]),  # row 3 missing: 4 elements
        ((4, 6), [((0, 0), (4, 3)), ((0, 2), (4, 4))]),  # sharded on the second dim: column 2 twice
        (
            (4, 4),
            [
                ((0, 0), (2, 2)),
                ((1, 1), (2, 2)),
                ((2, 2), (2, 2)),
                ((0, 2), (2, 2)),
                ((2, 0), (2, 2)),
            ],
        ),
        ((4, 4), [((0, 0), (4, 4)), ((0, 0), (0, 4))]),  # an empty chunk shares nothing
        ((6,), [((0,), (3,)), ((3,), (3,))]),  # exact cover
        ((6,), [((0,), (4,)), ((3,), (3,)), ((1,), (1,))]),
        ((2, 8), [((0, 0), (1, 8)), ((1, 0), (1, 4)), ((1, 2), (1, 6))]),
    ],
)
def test_chunk_coverage_counts_shared_and_missing_elements(size, boxes):
    chunks = tuple(_box(o, s) for o, s in boxes)
    shared, missing = _brute(size, chunks)
    rows = c.chunk_coverage(NS(metadata=NS(tensors=[NS(fqn="w", size=size, chunks=chunks)])))
    total = 1
    for n in size:
        total *= n
    covered = sum(b.sizes[0] * (b.sizes[1] if len(b.sizes) > 1 else 1) for b in chunks) - shared
    expected = []
    if shared:
        expected.append(
            (
                "error",
                "chunks-overlap",
                "w",
                (),
                f"the saved chunks of 'w' overlap ({shared} elements saved twice), which DCP's "
                "validation rejects (older DCP only logged it).",
                "give every element one owner: check the placements / the planner's chunks",
            )
        )
    if missing:
        expected.append(
            (
                "data-loss",
                "chunks-missing",
                "w",
                (),
                f"the saved chunks of 'w' cover at most {covered} of its {total} elements: part "
                "of the tensor is not saved.",
                "make the chunks cover the tensor: check the placements / the planner's chunks",
            )
        )
    assert rows == expected


def test_chunk_coverage_of_no_metadata_and_of_a_scalar():
    assert c.chunk_coverage(NS(metadata=None)) == []
    scalar = NS(fqn="s", size=(), chunks=(_box((), ()),))
    assert c.chunk_coverage(NS(metadata=NS(tensors=[scalar]))) == []
    assert c._overlaps((_box((), ()), _box((), ()))) == 0


def test_unrecorded_plans_name_the_ranks_with_unusable_plans():
    plans = (NS(usable=True), NS(usable=False), None, NS(usable=False))
    assert c.unrecorded_plans(NS(local_plans=plans)) == [
        (
            "warning",
            "plans-not-recorded",
            "",
            (1, 3),
            "the local plans of ranks 1,3 are DCP's empty 'unchanged' markers (enable_plan_caching), not the cached "
            "plans DCP used: what those ranks write is not in this trace, and no check can see it.",
            "capture with this dcpviz's RecordingSavePlanner (it records the cached plans DCP really uses), or "
            "save without enable_plan_caching",
        )
    ]
    assert c.unrecorded_plans(NS(local_plans=(NS(usable=True), None))) == []


def test_checkpoint_checks_stale_files_and_framing():
    files = pd.DataFrame(
        {
            "file": ["__0_0.distcp", "__1_0.distcp", "old_a", "old_b", "old_c", "old_d"],
            "rank": [0, 1, 3, -1, 3, 2],
            "items": [2, 1, 0, 0, 0, 0],
            "nbytes": [100, 100, 1024, 512, 512, 0],
        }
    )
    info = NS(files=files, totals={"tensor_nbytes": 1000, "framing_nbytes": 101, "chunks": 3})
    rows = [tuple(r) for r in c.checkpoint_checks(info).itertuples(index=False)]
    assert rows == [
        (
            "warning",
            "stale-files",
            "",
            (2, 3),
            "4 data files (old_a, old_b, old_c, ...; 2.0 KB) are referenced by no record: left by an earlier save "
            "into this directory (DCP replaces .metadata, deletes nothing).",
            "save each checkpoint into a new directory (step_{n}/), or delete the stale files",
        ),
        (
            "info",
            "framing-overhead",
            "",
            (),
            "torch.save's framing around each of the 3 chunks takes 101 B for 1000 B of data (10%): many small chunks.",
            "fewer, larger chunks (shard fewer small tensors, or keep small ones unsharded)",
        ),
    ]
    at_threshold = NS(
        files=files[:2], totals={"tensor_nbytes": 1000, "framing_nbytes": 100, "chunks": 3}
    )
    assert len(c.checkpoint_checks(at_threshold)) == 0
    three = NS(
        files=files[:5].assign(rank=[0, 1, 3, -1, 3]).iloc[[0, 2, 3]],
        totals={"tensor_nbytes": 0, "framing_nbytes": 5, "chunks": 1},
    )
    rows = [tuple(r) for r in c.checkpoint_checks(three).itertuples(index=False)]
    assert [r[3:5] for r in rows] == [
        (
            (3,),
            "2 data files (old_a, old_b; 1.5 KB) are referenced by no record: "
            "left by an earlier save into this directory (DCP replaces .metadata, "
            "deletes nothing).",
        )
    ]


# -- save: rank-specific values, on DCP's own dedup ----------------------------------------------
import dataclasses  # noqa: E402

import dcpviz  # noqa: E402
from dcpviz.core.trace import STRUCTURE_PREFIX, ValueDigest  # noqa: E402

PER_RANK_FIX = (
    "save it under a key of its own per rank (f'{key}.rank{rank}', as torchtitan's dataloader "
    "saves dp_rank_{i}), or gather it into one value (dist.all_gather_object) before dcp.save"
)


def _position_per_rank(model, optimizer, rank):
    return {"model": model.state_dict(), "loader": {"position": 100 * rank}, "shared": 7}


@pytest.fixture(scope="module")
def two_ranks():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", state=_position_per_rank)
    ).trace


def _kept_by(trace, fqn, offsets=None):
    """The rank whose global plan (DCP's own dedup) kept ``fqn``'s item."""
    (rank,) = [
        r
        for r, plan in enumerate(trace.global_plans)
        for i in plan.items
        if trace.items[i].fqn == fqn
        and (offsets is None or tuple(trace.items[i].offsets) == offsets)
    ]
    return rank


def _digests(trace, fqn, by_rank, offsets=None):
    """``trace`` with ``fqn``'s digests replaced: rank -> digest (a rank left out has none)."""
    kept = tuple(d for d in trace.value_digests if not (d.fqn == fqn and d.offsets == offsets))
    new = tuple(ValueDigest(fqn, r, h, offsets) for r, h in sorted(by_rank.items()))
    return dataclasses.replace(trace, value_digests=kept + new)


def _rows(trace, fqn):
    return [r for r in c.rank_specific_values(trace) if r[2] == fqn]


def test_a_value_two_ranks_hold_differently_loses_the_copy_dcp_drops(two_ranks):
    kept = _kept_by(two_ranks, "loader.position")
    assert _rows(two_ranks, "loader.position") == [
        (
            "data-loss",
            "rank-specific-value",
            "loader.position",
            (1 - kept,),
            f"2 ranks save 'loader.position' under one key, so DCP treats it as a replica and keeps only rank "
            f"{kept}'s copy; the ranks hold 2 different values, and those of rank {1 - kept} are lost (not on disk).",
            PER_RANK_FIX,
        )
    ]
    assert _rows(two_ranks, "shared") == []  # equal on both ranks


def test_a_value_of_one_rank_unknown_is_a_warning(two_ranks):
    kept = _kept_by(two_ranks, "loader.position")
    t = _digests(two_ranks, "loader.position", {0: "a"})
    assert _rows(t, "loader.position") == [
        (
            "warning",
            "rank-specific-value",
            "loader.position",
            (1,),
            f"2 ranks save 'loader.position' under one key and DCP keeps only rank {kept}'s copy; the values of "
            "rank 1 are not known here (this source did not build those ranks' state), so whether the copies "
            "differ cannot be told.",
            "if the value can differ between ranks (an RNG state, a counter, a position): "
            + PER_RANK_FIX
            + "; run_save or a RecordingSavePlanner checks the real values",
        )
    ]


@pytest.mark.parametrize(
    ("digests", "severity", "ranks"),
    [
        (
            {0: STRUCTURE_PREFIX + "a", 1: STRUCTURE_PREFIX + "b"},
            "data-loss",
            "lost",
        ),  # structures differ
        (
            {0: STRUCTURE_PREFIX + "a", 1: STRUCTURE_PREFIX + "a"},
            "warning",
            (0, 1),
        ),  # equal: values unknown
        ({0: STRUCTURE_PREFIX + "a", 1: "a"}, "warning", (0, 1)),  # a mix tells nothing
        ({0: "a", 1: "a"}, None, None),
    ],
)
def test_structure_digests_tell_only_that_structures_differ(two_ranks, digests, severity, ranks):
    kept = _kept_by(two_ranks, "loader.position")
    rows = _rows(_digests(two_ranks, "loader.position", digests), "loader.position")
    if severity is None:
        assert rows == []
        return
    assert [(r[0], r[3]) for r in rows] == [(severity, (1 - kept,) if ranks == "lost" else ranks)]


def test_three_ranks_with_three_values_lose_two():
    t = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=3, recipe="fsdp", state=_position_per_rank)
    ).trace
    kept = _kept_by(t, "loader.position")
    lost = tuple(r for r in range(3) if r != kept)
    (row,) = _rows(t, "loader.position")
    assert row[:4] == ("data-loss", "rank-specific-value", "loader.position", lost)
    assert (
        f"3 ranks save 'loader.position' under one key, so DCP treats it as a replica and keeps only rank "
        f"{kept}'s copy; the ranks hold 3 different values, and those of ranks "
        f"{lost[0]}{'-' if lost[1] == lost[0] + 1 else ','}{lost[1]} are lost"
    ) in row[4]
    t2 = _digests(t, "loader.position", {0: "a", 1: "a", 2: "b"})
    (row,) = _rows(t2, "loader.position")
    differs = tuple(r for r in range(3) if (r == 2) != (kept == 2))
    assert row[3] == differs and "the ranks hold 2 different values" in row[4]


def test_unflattened_saves_name_the_whole_nested_value():
    from torch.distributed.checkpoint import DefaultSavePlanner

    t = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", state=_position_per_rank),
        DefaultSavePlanner(flatten_state_dict=False),
    ).trace
    kept = _kept_by(t, "loader")
    (row,) = _rows(t, "loader")
    assert row == (
        "data-loss",
        "rank-specific-value",
        "loader",
        (1 - kept,),
        f"2 ranks save 'loader' under one key, so DCP treats it as a replica and keeps only rank {kept}'s copy; "
        f"the ranks hold 2 different values, and those of rank {1 - kept} are lost (not on disk). With "
        "flatten_state_dict=False each rank's whole nested value (its shards included) is one bytes entry.",
        "save with flatten_state_dict=True (DefaultSavePlanner's default): every tensor, and every rank's "
        "shard of a DTensor, is then saved as an item of its own",
    )


@pytest.fixture(scope="module")
def hsdp():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, mesh=(2, 2), recipe="hsdp")
    ).trace


def test_replicas_of_a_dtensor_that_differ_lose_the_dropped_replica(hsdp):
    items = [it for it in hsdp.items if it.fqn == "fc1.bias"]
    first = min(tuple(it.offsets) for it in items)
    holders = sorted(
        {
            r
            for r, p in enumerate(hsdp.local_plans)
            for i in p.items
            if hsdp.items[i].fqn == "fc1.bias" and tuple(hsdp.items[i].offsets) == first
        }
    )
    assert len(holders) == 2
    kept = _kept_by(hsdp, "fc1.bias", first)
    lost = tuple(r for r in holders if r != kept)
    t = _digests(hsdp, "fc1.bias", {holders[0]: "a", holders[1]: "b"}, offsets=first)
    rows = [r for r in _rows(t, "fc1.bias") if r[1] == "replicas-differ"]
    assert rows == [
        (
            "data-loss",
            "replicas-differ",
            "fc1.bias",
            lost,
            f"'fc1.bias' is a replicated DTensor, but its replicas on 2 ranks hold 2 different values (chunk at "
            f"{list(first)}); DCP writes one replica, rank {kept}'s, and the values of rank {lost[0]} are lost "
            "(not on disk).",
            "make the replicas equal before dcp.save (DTensor.from_local(..., run_check=True) broadcasts "
            "rank 0's value; or redistribute from one source), or save a Shard() placement instead",
        )
    ]
    equal = _digests(hsdp, "fc1.bias", {holders[0]: "a", holders[1]: "a"}, offsets=first)
    assert [r for r in _rows(equal, "fc1.bias") if r[1] == "replicas-differ"] == []
    one = _digests(hsdp, "fc1.bias", {holders[0]: "a"}, offsets=first)
    # a replica whose other copy is unknown is no finding for that chunk (no warning either); the
    # other chunk, with no digest at all, is a value nobody knows: a warning naming its holders
    others = sorted(
        {
            r
            for r, p in enumerate(hsdp.local_plans)
            for i in p.items
            if hsdp.items[i].fqn == "fc1.bias" and tuple(hsdp.items[i].offsets) != first
        }
    )
    assert [(r[0], r[3]) for r in _rows(one, "fc1.bias")] == [("warning", tuple(others))]
    # undigested DTensors are DCP's own replicas: nothing to check
    assert [r for r in c.rank_specific_values(hsdp) if r[2].startswith(("fc", "norm"))] == []


def test_many_unknown_values_are_capped():
    rows = c._capped(
        [("warning", "x", f"k{i}", (i,), "m", "f") for i in range(9)],
        "warning",
        "x",
        "are odd",
        "fix",
    )
    assert rows[:7] == [("warning", "x", f"k{i}", (i,), "m", "f") for i in range(7)]
    assert rows[7] == (
        "warning",
        "x",
        "(2 more keys)",
        (7, 8),
        "2 more keys are odd (k7, k8, ...).",
        "fix",
    )


# -- save: key sets, write imbalance, tied weights -----------------------------------------------
def _extra_on_rank_0(model, optimizer, rank):
    sd = {"model": model.state_dict()}
    if rank == 0:
        sd["only0"] = 5
    if rank != 2:
        sd["not2"] = 6
    return sd


def test_keys_only_some_ranks_save():
    t = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=3, recipe="fsdp", state=_extra_on_rank_0)
    ).trace
    rows = [r for r in c.key_sets(t) if r[1] == "key-sets-differ"]
    fix = (
        "fine if every rank loads with the same keys it saved; a job that resumes on another "
        "number of ranks must map these keys itself (allow_partial_load hides the ones it misses)"
    )
    tail = (
        " On load a rank reads only the keys its own state dict has: a rank that lacks it restores nothing "
        "for it, and a target rank that asks for a key no rank saved fails (missing key)."
    )
    assert sorted(rows) == [
        (
            "warning",
            "key-sets-differ",
            "not2",
            (2,),
            "'not2' is saved by 2 of 3 ranks (ranks 0-1); rank 2 lacks it." + tail,
            fix,
        ),
        (
            "warning",
            "key-sets-differ",
            "only0",
            (1, 2),
            "'only0' is saved by 1 of 3 ranks (rank 0); ranks 1-2 lack it." + tail,
            fix,
        ),
    ]


def _global_nbytes(trace):
    """Bytes each rank writes: the items of its global plan (DCP's own dedup), summed."""
    return [sum(trace.items[i].nbytes for i in plan.items) for plan in trace.global_plans]


def test_write_imbalance_row_by_hand():
    from torch.distributed.checkpoint import DefaultSavePlanner

    from dcpviz.core.units import fmt_bytes

    t = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, recipe="replicate"),
        DefaultSavePlanner(dedup_save_to_lowest_rank=True),
    ).trace
    per_rank = _global_nbytes(t)
    mean, mx = sum(per_rank) / 4, max(per_rank)
    assert per_rank[1:] == [0, 0, 0] and mx / mean == 4.0
    alt = t.dedup_alternative
    alt_mean, alt_max = sum(alt.rank_nbytes) / 4, max(alt.rank_nbytes)
    (row,) = c.write_imbalance(t)
    assert row == (
        "warning",
        "write-imbalance",
        "",
        (0,),
        f"rank volume is uneven: max {fmt_bytes(mx)} vs mean {fmt_bytes(mean)} per rank (imbalance 4.00, over 1.5) "
        "with dedup_save_to_lowest_rank=True; the heaviest are rank 0, and the save takes as long as its slowest "
        f"rank. With dedup_save_to_lowest_rank=False (DCP's dedup on the same local plans): max {fmt_bytes(alt_max)}, "
        f"imbalance {alt_max / alt_mean:.2f}.",
        "planner=DefaultSavePlanner(dedup_save_to_lowest_rank=False)",
    )
    no_alt = dataclasses.replace(t, dedup_alternative=None)
    (row,) = c.write_imbalance(no_alt)
    assert row[4].endswith("the save takes as long as its slowest rank.")
    assert row[5] == (
        "try DefaultSavePlanner(dedup_save_to_lowest_rank=False), or shard the plain tensors (FSDP) "
        "so every rank holds its own part"
    )
    same = dataclasses.replace(
        t, dedup_alternative=dataclasses.replace(alt, rank_nbytes=tuple(per_rank))
    )
    (row,) = c.write_imbalance(same)
    assert "imbalance 4.00." in row[4]
    assert row[5] == (
        "the other dedup option is no better: the imbalance comes from the layout (what each rank "
        "holds); shard the plain tensors (FSDP) or write the replicated ones from more ranks"
    )
    zero = dataclasses.replace(
        t, dedup_alternative=dataclasses.replace(alt, rank_nbytes=(0, 0, 0, 0))
    )
    (row,) = c.write_imbalance(zero)
    assert "imbalance nan." in row[4] and row[5].startswith("the other dedup option is no better")


def test_write_imbalance_threshold_and_empty_saves(two_ranks):
    # the fsdp mlp of two ranks: rank 0 writes the plain values too, under 1.5x the mean
    per_rank = _global_nbytes(two_ranks)
    assert max(per_rank) / (sum(per_rank) / 2) <= 1.5
    assert c.write_imbalance(two_ranks) == []


def test_tied_weights_row_by_hand():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tied_models import tied_lm

    t = dcpviz.simulate_save(dcpviz.Scenario(model=tied_lm, world_size=2, recipe="fsdp")).trace
    assert t.tied_keys == (("wte.weight", "lm_head.weight"),)
    assert c.tied_weights(t) == [
        (
            "info",
            "tied-weights-saved-twice",
            "wte.weight",
            (),
            "'wte.weight', 'lm_head.weight' are one tensor (tied weights), and DCP writes each key in full: 4.0 KB "
            "on disk for 1 extra copy. On load both keys are read into the one tensor.",
            "nothing to fix for correctness; to save the bytes, drop the tied key from the state dict before "
            "dcp.save (e.g. del sd['lm_head.weight']) and tie the weights again after loading",
        )
    ]
    three = dataclasses.replace(
        t, tied_keys=(("wte.weight", "lm_head.weight", "fc1.weight", "gone"),)
    )
    (row,) = c.tied_weights(three)
    assert row[4].startswith(
        "'wte.weight', 'lm_head.weight', 'fc1.weight' are one tensor (tied weights), and DCP "
        "writes each key in full: 5.0 KB on disk for 2 extra copies."
    )  # 64x16 + 16x16 float32
    assert "del sd['fc1.weight']" in row[5]
    assert c.tied_weights(dataclasses.replace(t, tied_keys=(("wte.weight", "gone"),))) == []
    assert c.tied_weights(dataclasses.replace(t, global_plans=None)) == []


def test_frame_keeps_each_severitys_rows_in_their_order():
    """Most severe first, and within a severity the order the checks gave (a stable sort: many
    rows, where an unstable sort reorders ties)."""
    sevs = ["info", "warning", "error", "data-loss"]
    rows = [(sevs[(i * 7) % 4], "x", f"k{i:03d}", (), "", "") for i in range(200)]
    df = c._frame(rows)
    expected = [r[2] for s in ("data-loss", "error", "warning", "info") for r in rows if r[0] == s]
    assert list(df["fqn"]) == expected and list(df.index) == list(range(200))


def test_checkpoint_checks_at_their_edges():
    """Rank 0's stale file counts; three stale names are listed without '...'; one byte of data
    with one byte of framing is 100% framing."""
    files = pd.DataFrame(
        {
            "file": ["a", "b", "c", "d"],
            "rank": [0, 0, 1, 2],
            "items": [0, 0, 0, 5],
            "nbytes": [1, 1, 1, 1],
        }
    )
    info = NS(files=files, totals={"tensor_nbytes": 1, "framing_nbytes": 1, "chunks": 1})
    rows = [tuple(r) for r in c.checkpoint_checks(info).itertuples(index=False)]
    assert [r[:4] for r in rows] == [
        ("warning", "stale-files", "", (0, 1)),
        ("info", "framing-overhead", "", ()),
    ]
    assert rows[0][4].startswith("3 data files (a, b, c; 3 B) are referenced by no record")
    assert "takes 1 B for 1 B of data (100%)" in rows[1][4]


def _volumes(monkeypatch, nbytes):
    """write_imbalance on hand-given bytes per rank (what save_tables.rank_volume would say)."""
    vol = pd.DataFrame(
        {"rank": list(range(len(nbytes))), "nbytes": pd.array(nbytes, dtype="Int64")}
    )
    monkeypatch.setattr(c.tables, "rank_volume", lambda trace: vol)


def _plain_trace(options=()):
    return NS(
        planner=PlannerInfo("DefaultSavePlanner", "x", tuple(options)), dedup_alternative=None
    )


@pytest.mark.parametrize(
    ("nbytes", "heavy"),
    [
        ([0, 0, 0, 0], None),  # nothing written: no imbalance (and no division by zero)
        ([1, 0, 0, 0], (0,)),  # one byte is 4x the mean of a quarter byte
        ([3, 1], None),  # exactly 1.5x the mean is not over it
        ([9, 6, 1, 0], (0,)),  # rank 1 writes exactly 1.5x the mean: not among the heaviest
        ([None, None], None),  # no final plans: volumes unknown, no finding
        ([], None),
    ],
)
def test_write_imbalance_threshold_by_hand(monkeypatch, nbytes, heavy):
    _volumes(monkeypatch, nbytes)
    rows = c.write_imbalance(_plain_trace())
    if heavy is None:
        assert rows == []
        return
    (row,) = rows
    assert row[:4] == ("warning", "write-imbalance", "", heavy)
    assert "with dedup_save_to_lowest_rank=False;" in row[4]  # not recorded: DCP's default


def test_write_imbalance_names_the_recorded_option(monkeypatch):
    _volumes(monkeypatch, [8, 0])
    (row,) = c.write_imbalance(_plain_trace((("dedup_save_to_lowest_rank", True),)))
    assert row == (
        "warning",
        "write-imbalance",
        "",
        (0,),
        "rank volume is uneven: max 8 B vs mean 4 B per rank (imbalance 2.00, over 1.5) with "
        "dedup_save_to_lowest_rank=True; the heaviest are rank 0, and the save takes as long as its "
        "slowest rank.",
        "try DefaultSavePlanner(dedup_save_to_lowest_rank=False), or shard the plain tensors (FSDP) so "
        "every rank holds its own part",
    )


def test_chunk_coverage_with_an_overlap_and_a_gap():
    """Rows 0-3 and 2-5 of 8: rows 2-3 twice, rows 6-7 nowhere; 6 of 8 rows covered, by hand."""
    chunks = (_box((0, 0), (4, 2)), _box((2, 0), (4, 2)))
    assert _brute((8, 2), chunks) == (4, 4)
    rows = c.chunk_coverage(NS(metadata=NS(tensors=[NS(fqn="w", size=(8, 2), chunks=chunks)])))
    assert [r[1] for r in rows] == ["chunks-overlap", "chunks-missing"]
    assert "(4 elements saved twice)" in rows[0][4]
    assert "cover at most 12 of its 16 elements" in rows[1][4]


def test_write_imbalance_of_a_tiny_alternative(monkeypatch):
    """The other option's numbers of a save of one byte: max 1 B over a mean of half a byte."""
    _volumes(monkeypatch, [8, 0])
    trace = NS(
        planner=PlannerInfo("DefaultSavePlanner", "x", ()),
        dedup_alternative=NS(lowest_rank=True, rank_nbytes=(1, 0)),
    )
    (row,) = c.write_imbalance(trace)
    assert row[4].endswith(
        "With dedup_save_to_lowest_rank=True (DCP's dedup on the same local plans): max 1 B, "
        "imbalance 2.00."
    )
    assert row[5] == (
        "the other dedup option is no better: the imbalance comes from the layout (what each rank "
        "holds); shard the plain tensors (FSDP) or write the replicated ones from more ranks"
    )


def _nine_keys_on_rank_0(model, optimizer, rank):
    sd = {"model": model.state_dict()}
    if rank == 0:
        sd.update({f"extra{i}": i for i in range(9)})
    return sd


def test_keys_only_some_ranks_save_are_capped():
    t = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", state=_nine_keys_on_rank_0)
    ).trace
    rows = c.key_sets(t)
    assert len(rows) == 8 and all(
        r[:2] == ("warning", "key-sets-differ") and r[3] == (1,) for r in rows
    )
    assert rows[-1][2] == "(2 more keys)" and rows[-1][4].startswith(
        "2 more keys are saved by some ranks only (extra"
    )
    assert (
        rows[-1][5]
        == rows[0][5]
        == (
            "fine if every rank loads with the same keys it saved; a job that resumes on another "
            "number of ranks must map these keys itself (allow_partial_load hides the ones it misses)"
        )
    )


def test_a_tied_group_with_one_written_key_does_not_hide_the_next():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tied_models import tied_lm

    t = dcpviz.simulate_save(dcpviz.Scenario(model=tied_lm, world_size=2, recipe="fsdp")).trace
    two = dataclasses.replace(
        t, tied_keys=(("wte.weight", "gone"), ("wte.weight", "lm_head.weight"))
    )
    assert [r[2] for r in c.tied_weights(two)] == ["wte.weight"]


def _read_volumes(monkeypatch, files_known):
    """read_amplification on hand-given per-rank read volumes (what load_tables would say)."""
    reads = pd.DataFrame({"file": ["__0_0.distcp" if files_known else None, None]})
    vol = pd.DataFrame(
        {
            "rank": [0, 1, 2, 3],
            "planned": [True, True, True, False],
            "nbytes": [10, 1, 0, 10],
            "chunk_nbytes": [30, 2, 50, 100],
            "files": [3, 5, 2, 9],
            "writers": [2, 4, 1, 7],
        }
    )
    trace = object()

    def rank_volume(t, r):
        assert t is trace and r is reads
        return vol

    def read_items(t):
        assert t is trace
        return reads

    def column_rank_volume(t):  # the same numbers from the read columns (no read_items)
        assert t is trace
        return vol

    def on_disk(t):
        assert t is trace
        return files_known

    monkeypatch.setattr(c.load_tables, "rank_volume", rank_volume)
    monkeypatch.setattr(c.load_tables, "read_items", read_items)
    monkeypatch.setattr(c.read_columns, "rank_volume", column_rank_volume)
    monkeypatch.setattr(c.read_columns, "on_disk", on_disk)
    return trace, reads


@pytest.mark.parametrize("files_known", [True, False])
def test_read_amplification_by_hand(monkeypatch, files_known):
    """Rank 0 reads 30 B to keep 10 (3x: over 2x); rank 1 reads 2 B to keep 1 (2x: not over);
    rank 2 keeps nothing and rank 3 planned nothing (both left out). Ranks 0-1 read from up to 5
    files, or from up to 4 writer ranks where the files are not known."""
    trace, reads = _read_volumes(monkeypatch, files_known)
    spread = "5 files" if files_known else "4 writer ranks"
    expected = [
        (
            "warning",
            "read-amplification",
            "",
            (0,),
            "1 target ranks deserialise more than 2x the bytes they keep: rank 0 reads 30 B of saved chunks "
            f"to keep 10 B (3.0x); a rank reads from up to {spread}. DCP loads each saved chunk whole before "
            "taking the part a rank needs.",
            "load with the layout it was saved with (same sharded dim), or reshard offline once "
            "(dcp_to_torch_save / a one-off conversion) instead of at every restart",
        )
    ]
    assert c.read_amplification(trace) == expected
    assert c.read_amplification(trace, reads) == expected


def test_read_amplification_takes_the_reads_it_is_given(monkeypatch):
    given = pd.DataFrame({"file": [None, None]})

    def rank_volume(t, r):
        assert r is given
        return _vol_of(r)

    def read_items(t):
        raise AssertionError("the reads were given")

    monkeypatch.setattr(c.load_tables, "rank_volume", rank_volume)
    monkeypatch.setattr(c.load_tables, "read_items", read_items)
    (row,) = c.read_amplification(object(), given)
    assert "a rank reads from up to 4 writer ranks." in row[4]


def _vol_of(_):
    return pd.DataFrame(
        {
            "rank": [0, 1, 2, 3],
            "planned": [True, True, True, False],
            "nbytes": [10, 1, 0, 10],
            "chunk_nbytes": [30, 2, 50, 100],
            "files": [3, 5, 2, 9],
            "writers": [2, 4, 1, 7],
        }
    )


def test_no_read_amplification_without_heavy_or_planned_ranks(monkeypatch):
    for vol in (
        _vol_of(None).assign(chunk_nbytes=[20, 2, 50, 100]),
        _vol_of(None).assign(planned=False),
    ):
        monkeypatch.setattr(c.load_tables, "rank_volume", lambda t, r, vol=vol: vol)
        assert c.read_amplification(object(), pd.DataFrame({"file": [None]})) == []


def test_bytes_over_tensors_beyond_eight_are_summed_up():
    ms = [M(f"t{i}", "type", [0], current=(2,), current_dtype="torch.float32") for i in range(9)]
    rows = c.bytes_replace_tensors(_trace(ms))
    assert len(rows) == 8 and rows[6][2] == "t6"
    assert rows[7] == (
        "data-loss",
        "bytes-replace-tensor",
        "(2 more keys)",
        (0,),
        "2 more keys are replaced by saved Python values (t7, t8, ...).",
        "save tensors under these keys, or load them into Python values",
    )


def test_load_checks_pass_the_reads_on(monkeypatch):
    given = pd.DataFrame({"file": []})
    seen = []
    monkeypatch.setattr(c, "read_amplification", lambda trace, reads=None: seen.append(reads) or [])
    c.load_checks(_trace(), given)
    assert seen == [given] and seen[0] is given


def test_partial_load_reads_past_other_kinds():
    t = _trace(
        [
            M("s", "size", [0]),
            M("u", "unexpected", saved=(9,)),
            M("m", "missing", [0], current=(2,)),
        ],
        partial=True,
    )
    assert [r[2] for r in c.partial_load(t)] == ["m"]


def test_without_global_plans_the_survivor_is_dcps_rule_replayed(two_ranks):
    """A trace that holds no global plans names the survivor by DCP's dedup rule replayed: the
    rank DCP's own global plans kept (read from the full trace)."""
    kept = _kept_by(two_ranks, "loader.position")
    bare = dataclasses.replace(two_ranks, global_plans=None, final_plans=None)
    (row,) = _rows(bare, "loader.position")
    assert row[3] == (1 - kept,) and f"keeps only rank {kept}'s copy" in row[4]


def test_three_ranks_with_one_value_unknown():
    """Ranks 0 and 1 known and different, rank 2 unknown: the ranks whose known value differs
    from the survivor's are lost; if the survivor's own value is unknown, every known one is."""
    t = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=3, recipe="fsdp", state=_position_per_rank)
    ).trace
    kept = _kept_by(t, "loader.position")
    others = [r for r in range(3) if r != kept]
    (row,) = _rows(_digests(t, "loader.position", {kept: "a", others[0]: "b"}), "loader.position")
    assert row[:4] == ("data-loss", "rank-specific-value", "loader.position", (others[0],))
    assert "the ranks hold 2 different values" in row[4]
    (row,) = _rows(
        _digests(t, "loader.position", {others[0]: "a", others[1]: "b"}), "loader.position"
    )
    assert row[3] == tuple(others)


def _nine_plain_values(model, optimizer, rank):
    return {"model": model.state_dict(), **{f"v{i}": i for i in range(9)}}


def test_many_values_of_unknown_ranks_are_capped():
    t = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", state=_nine_plain_values)
    ).trace
    t = dataclasses.replace(t, value_digests=tuple(d for d in t.value_digests if d.rank == 0))
    rows = c.rank_specific_values(t)
    # the model's progress.step (a meta tensor: no value on either rank), its two extra-state
    # values and v0-v8 (rank 1's values unknown): twelve rows, seven shown and five summed up
    assert [r[2] for r in rows[:7]] == [
        "model.progress.step",
        "model.progress._extra_state.epoch",
        "model.progress._extra_state.note",
        "v0",
        "v1",
        "v2",
        "v3",
    ]
    assert rows[7] == (
        "warning",
        "rank-specific-value",
        "(5 more keys)",
        (1,),
        "5 more keys are kept from one rank with other ranks' values unknown (v4, v5, v6, ...).",
        PER_RANK_FIX,
    )


def test_lost_unread_keys_beyond_eight_are_summed_up():
    ms = [M("m", "missing", [0], current=(2,))] + [
        M(f"s{i}", "unexpected", saved=(2,)) for i in range(9)
    ]
    rows = c.unread_keys(_trace(ms, partial=True))
    assert [r[2] for r in rows] == [f"s{i}" for i in range(7)] + ["(2 more keys)"]
    assert rows[7] == (
        "data-loss",
        "unread-keys",
        "(2 more keys)",
        (),
        "2 more keys are in the checkpoint and read by no rank (s7, s8, ...).",
        FIX_LOST,
    )


def test_unread_optimizer_state_by_component_and_examples():
    """A key whose recorded component is 'optimizer' is optimizer state; the message names three
    examples, not four."""
    ms = [M(k, "unexpected") for k in ("opt.a", "opt.b", "opt.c", "opt.d")]
    (row,) = c.unread_keys(_trace(ms, saved_components=(("opt", "optimizer"),)))
    assert row[:3] == ("warning", "optimizer-state-not-read", "(4 keys)")
    assert "(4 keys, e.g. opt.a, opt.b, opt.c) that no target rank reads" in row[4]


def test_planner_errors_on_every_rank():
    errors = [ErrorRecord("local", r, "KeyError", "m") for r in range(4)]
    assert c.planner_errors(_trace(errors=errors))[0][4] == "[local, all 4 ranks] KeyError: m"


def test_the_survivor_is_whose_global_plan_holds_the_value(two_ranks):
    """A planner that keeps the other rank's copy than DCP's rule would (a custom dedup): the
    global plans decide, not the rule replayed."""
    kept = _kept_by(two_ranks, "loader.position")
    ids = {
        r: i
        for r, p in enumerate(two_ranks.local_plans)
        for i in p.items
        if two_ranks.items[i].fqn == "loader.position"
    }
    plans = list(two_ranks.global_plans)
    plans[kept] = dataclasses.replace(
        plans[kept], items=tuple(i for i in plans[kept].items if i != ids[kept])
    )
    other = 1 - kept
    plans[other] = dataclasses.replace(
        plans[other], items=tuple(sorted(plans[other].items + (ids[other],)))
    )
    swapped = dataclasses.replace(two_ranks, global_plans=tuple(plans), final_plans=tuple(plans))
    (row,) = _rows(swapped, "loader.position")
    assert row[3] == (kept,) and f"keeps only rank {other}'s copy" in row[4]


def test_an_unrecorded_flatten_option_is_dcps_default(two_ranks):
    t = dataclasses.replace(two_ranks, planner=dataclasses.replace(two_ranks.planner, options=()))
    (row,) = _rows(t, "loader.position")
    assert row[4].endswith("are lost (not on disk).") and row[5] == PER_RANK_FIX


def test_two_replicated_dtensors_that_differ_are_both_named(hsdp):
    t = hsdp
    for fqn in ("fc1.bias", "fc2.bias"):
        first = min(tuple(it.offsets) for it in t.items if it.fqn == fqn)
        holders = sorted(
            {
                r
                for r, p in enumerate(t.local_plans)
                for i in p.items
                if t.items[i].fqn == fqn and tuple(t.items[i].offsets) == first
            }
        )
        t = _digests(t, fqn, {holders[0]: "a", holders[1]: "b"}, offsets=first)
    assert [r[2] for r in c.rank_specific_values(t) if r[1] == "replicas-differ"] == [
        "fc1.bias",
        "fc2.bias",
    ]


def test_partial_load_rows_beyond_eight_are_summed_up():
    lost = [M(f"m{i}", "missing", [0], current=(2,)) for i in range(9)] + [
        M("src", "unexpected", saved=(2,))
    ]
    hidden = [M(f"h{i}", "missing", [1], current=(3,)) for i in range(9)]
    rows = c.partial_load(_trace(lost + hidden, partial=True))
    assert len(rows) == 16
    assert rows[7] == (
        "data-loss",
        "partial-load-leaves-data-unread",
        "(2 more keys)",
        (0,),
        "2 more keys are skipped while their data is unread (m7, m8, ...).",
        "map the target's keys to the checkpoint's (load.hints, load.fix_planner()); use "
        "allow_partial_load only for keys with no source in the checkpoint",
    )
    assert rows[15] == (
        "warning",
        "partial-load-hides-missing",
        "(2 more keys)",
        (1,),
        "2 more keys are skipped silently (h7, h8, ...).",
        "check the key names (load.hints); use allow_partial_load only for keys you mean to skip",
    )
