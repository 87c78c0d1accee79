"""Tests written for the verdict's surviving mutants (bench/mutate.py, analysis/load/verdict.py).

Each asserts a hand-computed expectation on a hand-built LoadTrace (no torch, no planner): the
words a rank list, a severity, a verdict line must come out as, worked out from the rules the
README states (what dcp.load raises on, what it skips, what it casts). Where the severity is a
claim about dcp.load, the fact it rests on is checked against real DCP elsewhere
(tests/test_load_truth.py, tests/test_planted_bugs.py); here each rule is pinned branch by branch.
"""

from __future__ import annotations

import pandas as pd
import pytest

from dcpviz.analysis.load import verdict as v
from dcpviz.analysis.load.hint_base import Hint
from dcpviz.core.trace import (
    ErrorRecord,
    LoadTrace,
    MismatchRecord,
    PlannerInfo,
    ScenarioInfo,
    TargetValue,
)


def _scenario(world_size=4, mesh=None, recipe="fsdp"):
    mesh = mesh or (world_size,)
    return ScenarioInfo(
        "mlp",
        world_size,
        tuple(mesh),
        tuple(f"d{i}" for i in range(len(mesh))),
        recipe,
        "float32",
        "meta",
    )


def _trace(
    mismatches=(),
    world_size=4,
    partial=None,
    errors=(),
    saved_scenario=None,
    wanted=(),
    expected=(),
    mesh=None,
    recipe="fsdp",
):
    options = () if partial is None else (("allow_partial_load", partial),)
    return LoadTrace(
        scenario=_scenario(world_size, mesh, recipe),
        planner=PlannerInfo("DefaultLoadPlanner", "torch.distributed.checkpoint", options),
        saved=None,
        saved_scenario=saved_scenario,
        saved_writers=(),
        reads=(),
        local_plans=(),
        global_plans=None,
        final_plans=None,
        wanted=tuple(wanted),
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


def _value(fqn):
    return TargetValue(fqn, "Tensor", (4, 2), "torch.float32")


# -- rank lists in words -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ranks", "world", "words"),
    [
        ([], 4, "no rank"),
        ([0], 1, "rank 0"),  # one rank of a one-rank job is not 'all 1 ranks'
        ([1, 0], 2, "all 2 ranks"),
        ([2, 2], 4, "rank 2"),
        ([0, 1], 4, "ranks 0, 1"),  # a run of two is listed, not drawn as a range
        ([3, 4, 5], 8, "ranks 3–5"),
        ([7, 0, 1, 3, 4, 5], 10, "ranks 0, 1, 3–5, 7"),
        ([0, 2, 4], 8, "ranks 0, 2, 4"),
    ],
)
def test_rank_ranges_by_hand(ranks, world, words):
    assert v.rank_ranges(ranks, world) == words


# -- the small rules ---------------------------------------------------------------------------
def test_expected_unused_patterns():
    assert v.is_expected_unused("ema.w", ["ema.*"])
    assert v.is_expected_unused(
        "layers[0].w", ["layers[0].w"]
    )  # '[0]' is a glob class: equality decides
    assert not v.is_expected_unused("model.w", ["ema.*"])
    assert not v.is_expected_unused("Ema.w", ["ema.*"])  # case matters, on every platform
    assert not v.is_expected_unused("model.w", [])


def test_bytes_over_tensor_is_a_python_value_saved_where_the_target_holds_a_tensor():
    assert v.bytes_over_tensor(M("k", "type", saved=None, current=(4,)))
    assert not v.bytes_over_tensor(M("k", "type", saved=(4,), current=None))  # the other way round
    assert not v.bytes_over_tensor(M("k", "type", saved=None, current=None))
    assert not v.bytes_over_tensor(M("k", "size", saved=None, current=(4,)))


def test_unread_and_skipped_keys():
    ms = [
        M("z", "unexpected"),
        M("a", "unexpected"),
        M("a", "unexpected"),
        M("e.x", "unexpected"),
        M("m", "missing", [0]),
        M("b", "missing", [1]),
        M("s", "size", [0]),
    ]
    assert v.unread_keys(_trace(ms, expected=["e.*"])) == ["a", "z"]
    assert v.skipped_keys(_trace(ms, partial=True)) == ["b", "m"]
    assert v.skipped_keys(_trace(ms, partial=False)) == []
    assert v.skipped_keys(_trace(ms)) == []  # allow_partial_load not recorded: DCP's default, False


@pytest.mark.parametrize(
    ("key", "optim"),
    [
        ("state.0.exp_avg", True),
        ("optim.state.fc.weight.step", True),
        ("optimizer.x", True),
        ("optim.x", True),
        ("param_groups.0.lr", True),
        ("model.state.weight", False),
        ("layer.exp_avg", False),
        ("model.optim", False),
        ("model.weight", False),
        ("exp_avg", False),
    ],
)
def test_is_optimizer_key(key, optim):
    assert v.is_optimizer_key(key) is optim


def _partial_case():
    """A partial load: target keys skipped, checkpoint keys unread, matched by side and shape."""
    return _trace(
        [
            M("model.a", "missing", [0, 1], current=(4, 2), current_dtype="torch.float32"),
            M("model.b", "missing", [0], current=(3,)),
            M("model.v", "missing", [1]),  # a Python value
            M("optim.state.model.a.exp_avg", "missing", [0], current=(4, 2)),
            M("ck.c", "unexpected", saved=(4, 2)),
            M("ck.a", "unexpected", saved=(4, 2)),
            M("optim.state.ck.a.exp_avg", "unexpected", saved=(4, 2)),
            M("ck.v", "unexpected"),
            M("ck.z", "unexpected", saved=(5,)),
            M("ck.e", "unexpected", saved=(4, 2)),  # declared unused
        ],
        partial=True,
        expected=["ck.e"],
        wanted=[
            _value(k)
            for k in (
                "model.a",
                "model.a",
                "model.b",
                "model.v",
                "optim.state.model.a.exp_avg",
                "model.c",
            )
        ],
    )


def test_possible_sources_match_side_and_shape():
    assert v.possible_sources(_partial_case()) == {
        "model.a": ("ck.a", "ck.c"),
        "model.b": (),
        "model.v": ("ck.v",),
        "optim.state.model.a.exp_avg": ("optim.state.ck.a.exp_avg",),
    }
    assert v.lossy_keys(_partial_case()) == {
        "model.a",
        "ck.a",
        "ck.c",
        "model.v",
        "ck.v",
        "optim.state.model.a.exp_avg",
        "optim.state.ck.a.exp_avg",
    }
    assert v.leaves_data_unread(_partial_case())
    not_partial = _trace(_partial_case().mismatches, partial=False)
    assert v.possible_sources(not_partial) == {} and not v.leaves_data_unread(not_partial)


@pytest.mark.parametrize(
    ("m", "partial", "expected", "lossy", "sev"),
    [
        (M("k", "unexpected"), False, ["k*"], [], "expected"),
        (M("k", "unexpected"), True, [], ["k"], "loses"),
        (M("k", "unexpected"), True, [], ["j"], "silent"),
        (M("k", "type", [0], current=(4,)), False, [], [], "loses"),  # bytes replace the tensor
        (M("k", "type", [0], current=(4,), message="raised"), False, [], [], "breaks"),
        (M("k", "type", [0], saved=(4,)), False, [], [], "breaks"),
        (M("k", "missing", [0]), True, [], ["k"], "loses"),
        (M("k", "missing", [0]), True, [], [], "silent"),
        (M("k", "missing", [0]), False, [], ["k"], "breaks"),
        (M("k", "dtype", [0]), False, [], [], "silent"),
        (M("k", "size", [0]), True, [], ["k"], "breaks"),
        (M("k", "other", [0]), False, [], [], "breaks"),
    ],
)
def test_severity_rules(m, partial, expected, lossy, sev):
    assert v.severity(m, partial, expected, lossy) == sev


def test_severity_defaults_declare_nothing():
    assert v.severity(M("k", "unexpected"), False) == "silent"
    assert v.severity(M("k", "missing", [0]), True) == "silent"


# -- the problems table ------------------------------------------------------------------------
def test_problems_rows_by_hand():
    t = _trace(
        [
            M("u", "unexpected", saved=(2,)),
            M("q.weight_scale_inv", "unexpected", saved=(2,)),
            M("e", "unexpected", saved=(2,)),
            M(
                "d",
                "dtype",
                [0, 1, 2, 3],
                saved=(2,),
                saved_dtype="torch.float32",
                current=(2,),
                current_dtype="torch.bfloat16",
            ),
            M("t", "type", [1], current=(4,), current_dtype="torch.float32"),
            M("o", "other", [0, 1, 2], message="boom"),
            M("s2", "size", [3], saved=(8, 2), current=(6, 2), message="size!"),
            M("s1", "size", [0, 2], saved=(8, 2), current=(6, 2), message="size!"),
            M("n", "missing", [0, 1], current_dtype="torch.float32", message="missing!"),
        ],
        expected=["q.weight_scale_inv", "e"],
    )
    df = v.problems(t)
    assert list(df.columns) == v.PROBLEM_COLUMNS
    assert df["n_ranks"].dtype == "int64"
    rows = [tuple(r) for r in df.itertuples(index=False)]
    assert [r[:8] for r in rows] == [
        ("breaks", "missing", "n", None, "torch.float32", "ranks 0, 1", 2, "missing!"),
        ("breaks", "size", "s1", "(8, 2)", "(6, 2)", "ranks 0, 2", 2, "size!"),
        ("breaks", "size", "s2", "(8, 2)", "(6, 2)", "rank 3", 1, "size!"),
        ("breaks", "other", "o", None, None, "ranks 0–2", 3, "boom"),
        ("loses", "type", "t", None, "torch.float32 (4,)", "rank 1", 1, ""),
        ("silent", "dtype", "d", "torch.float32 (2,)", "torch.bfloat16 (2,)", "all 4 ranks", 4, ""),
        ("silent", "unexpected", "u", "(2,)", None, "no rank reads it", 0, ""),
        ("expected", "unexpected", "e", "(2,)", None, "no rank reads it", 0, ""),
        ("expected", "unexpected", "q.weight_scale_inv", "(2,)", None, "no rank reads it", 0, ""),
    ]
    why = dict(zip(df["fqn"], df["explanation"]))
    assert why["e"] == "declared unused on purpose (expected_unused)"
    assert why["q.weight_scale_inv"] == (
        "a quantized pair's fp8 block scales: expected to stay unread by a model holding dequantized "
        "weights (DCP's QuantizedHuggingFaceStorageReader uses it to dequantize)"
    )
    assert why["o"] == "DCP rejected this key"


def test_problems_of_a_partial_load_that_loses_data_say_so():
    df = v.problems(_partial_case())
    why = dict(zip(df["fqn"], df["explanation"]))
    sev = dict(zip(df["fqn"], df["severity"]))
    suffix = (
        " — while allow_partial_load skips target keys, the checkpoint holds data no rank "
        "reads: the load loses it (see the hints for where it belongs)"
    )
    assert why["model.a"] == (
        "not in the checkpoint; allow_partial_load=True makes DCP skip it, so it keeps "
        "its initial value" + suffix
    )
    assert why["model.b"] == (
        "not in the checkpoint; allow_partial_load=True makes DCP skip it, so it keeps "
        "its initial value"
    )
    assert (
        why["ck.a"]
        == "in the checkpoint but no target rank asks for it; DCP ignores it silently" + suffix
    )
    assert not why["model.b"].endswith(suffix) and not why["ck.z"].endswith(suffix)
    assert (sev["model.a"], sev["ck.a"], sev["model.b"], sev["ck.z"], sev["ck.e"]) == (
        "loses",
        "loses",
        "silent",
        "silent",
        "expected",
    )
    assert list(df["fqn"][:4]) == ["model.a", "model.v", "optim.state.model.a.exp_avg", "ck.a"]


def test_a_kind_this_dcpviz_does_not_know_sorts_last_within_its_severity():
    """A trace from a newer dcpviz may carry a mismatch kind this one does not know: dcp.load
    raised on it ('breaks'), and it is listed after the known kinds of its severity, before any
    lesser severity."""
    t = _trace(
        [
            M("a", "missing", [0], current=(2,)),
            M("z", "newkind", [0]),
            M("b", "size", [0]),
            M("d", "dtype", [0]),
            M("u", "unexpected", saved=(2,)),
        ],
        partial=True,
    )
    df = v.problems(t)
    assert list(zip(df["severity"], df["fqn"])) == [
        ("breaks", "b"),
        ("breaks", "z"),
        ("loses", "a"),
        ("loses", "u"),
        ("silent", "d"),
    ]


def test_problems_of_no_mismatch():
    df = v.problems(_trace())
    assert list(df.columns) == v.PROBLEM_COLUMNS and len(df) == 0
    assert df["n_ranks"].dtype == "int64"


# -- what the planner raised -------------------------------------------------------------------
def test_error_groups_and_lines():
    errors = [
        ErrorRecord("local", 0, "KeyError", "m"),
        ErrorRecord("local", 1, "KeyError", "m"),
        ErrorRecord("global", None, "RuntimeError", "g"),
        ErrorRecord("local", 2, "KeyError", "n"),
        ErrorRecord("local", 3, "ValueError", "m"),
    ]
    df = v.error_groups(errors, 4)
    assert list(df.columns) == v.ERROR_GROUP_COLUMNS
    assert [tuple(r) for r in df.itertuples(index=False)] == [
        ("local", "KeyError", "m", "ranks 0, 1", 2),
        ("global", "RuntimeError", "g", "coordinator", 0),
        ("local", "KeyError", "n", "rank 2", 1),
        ("local", "ValueError", "m", "rank 3", 1),
    ]
    t = _trace(errors=errors)
    assert v.error_lines(t, skip_messages=["m"]) == [
        "[global, coordinator] RuntimeError: g",
        "[local, rank 2] KeyError: n",
    ]
    assert v.error_lines(t)[0] == "[local, ranks 0, 1] KeyError: m"
    everywhere = [ErrorRecord("finish", r, "E", "all") for r in range(4)]
    assert v.error_groups(everywhere, 4)["ranks"].tolist() == ["all 4 ranks"]
    assert v.error_lines(_trace(errors=everywhere)) == ["[finish, all 4 ranks] E: all"]


# -- the verdict line --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("verdict", "line"),
    [
        (v.Verdict(True, "", (), ()), "It loads cleanly."),
        (
            v.Verdict(True, "", (), (), expected=1),
            "It loads cleanly (1 checkpoint key left unread on purpose).",
        ),
        (
            v.Verdict(True, "the recipe a → b", (), (), expected=2),
            "The recipe a → b is fine; it loads cleanly (2 checkpoint keys left unread on purpose).",
        ),
        (
            v.Verdict(False, "resharding 8 → 6 ranks", ("a",), ()),
            "Resharding 8 → 6 ranks is fine; 1 thing breaks the load: a.",
        ),
        (
            v.Verdict(False, "", ("a", "b"), ("s",), losing=("l",)),
            "2 things break the load: a, b; besides, l; s.",
        ),
        (v.Verdict(False, "", ("a",), ("s", "t")), "1 thing breaks the load: a; besides, s; t."),
        (
            v.Verdict(True, "", (), ("s",), losing=("l1", "l2")),
            "No error, but the load loses data: l1; l2; besides, s.",
        ),
        (v.Verdict(True, "", (), (), losing=("l",)), "No error, but the load loses data: l."),
        (v.Verdict(True, "", (), ("s1", "s2")), "It loads, but s1; s2."),
    ],
)
def test_verdict_lines_by_hand(verdict, line):
    assert verdict.line == line and str(verdict) == line


def test_clean_means_loads_and_loses_nothing():
    assert v.Verdict(True, "", (), ("s",)).clean
    assert not v.Verdict(True, "", (), (), losing=("l",)).clean
    assert not v.Verdict(False, "", ("b",), ()).clean


@pytest.mark.parametrize(
    ("saved", "target", "words"),
    [
        (None, _scenario(6, recipe="fsdp"), ""),
        (
            _scenario(8, (2, 4), "hsdp"),
            _scenario(6, recipe="fsdp"),
            "resharding 8 → 6 ranks (hsdp → fsdp)",
        ),
        (_scenario(8, (2, 4)), _scenario(6, (2, 3)), "resharding 8 → 6 ranks"),
        (_scenario(8, (2, 4)), _scenario(8, (4, 2)), "the mesh 2x4 → 4x2"),
        (
            _scenario(8, (2, 4), "hsdp"),
            _scenario(8, (4, 2), "fsdp"),
            "the mesh 2x4 → 4x2 (hsdp → fsdp)",
        ),
        (_scenario(8, recipe="hsdp"), _scenario(8, recipe="fsdp"), "the recipe hsdp → fsdp"),
        (_scenario(8), _scenario(8), ""),
    ],
)
def test_layout_change_by_hand(saved, target, words):
    t = _trace(
        world_size=target.world_size, mesh=target.mesh, recipe=target.recipe, saved_scenario=saved
    )
    assert v.layout_change(t) == words


def _hint(kind, keys, title="Title here", cause=""):
    return Hint(kind, title, "detail", "fix", keys=tuple(keys), cause=cause)


def test_verdict_sorts_hints_into_breaking_losing_and_silent():
    t = _trace(
        [
            M("s", "size", [0], saved=(8,), current=(6,), message="size!"),
            M("s2", "size", [1], saved=(8,), current=(6,), message="size!"),
            M("r1", "size", [0], saved=(8,), current=(6,)),
            M("r2", "other", [0]),
            M("d", "dtype", [0], saved_dtype="torch.float32", current_dtype="torch.bfloat16"),
            M("u", "unexpected", saved=(2,)),
            M("e", "unexpected", saved=(2,)),
            M("e2", "unexpected", saved=(2,)),
        ],
        world_size=2,
        expected=["e*"],
    )
    hints = [
        _hint("size", ["s"], cause="a grown vocabulary"),
        _hint("size", ["s2", "zz"], cause="a grown vocabulary"),  # named once
        _hint(
            "dtype",
            ["d", "s"],
            title="bf16 weights were saved as torch.float32 but the target holds torch.bfloat16",
        ),
        _hint("unexpected", ["u", "u2"]),
        _hint("prefix", ["nothing"], title="Some Title"),
        _hint("prefix", ["nothing"], cause="a cause"),
    ]
    got = v.verdict(t, hints)
    assert got.breaking == ("a grown vocabulary", "2 key(s) DCP rejects ('r1', ...)")
    assert got.silent == (
        "bf16 weights are saved as torch.float32, cast silently to torch.bfloat16",
        "2 checkpoint key(s) are read by no rank",
        "some Title",
        "a cause",
    )
    assert got.expected == 2 and not got.loads and got.losing == () and got.harmless == ""
    one_left = v.verdict(_trace([M("r1", "size", [0])]), [])
    assert one_left.breaking == ("1 key(s) DCP rejects ('r1')",)


def test_verdict_names_the_title_when_a_breaking_hint_has_no_cause():
    got = v.verdict(_trace([M("s", "size", [0])]), [_hint("size", ["s"], title="Sizes differ")])
    assert got.breaking == ("Sizes differ",)


def test_verdict_on_partial_load_losses():
    t = _partial_case()
    hints = [
        _hint("rename", ["model.a", "ck.a"], cause="a renamed module ('model' → 'ck')"),
        _hint("rename", ["model.a"], title="Renamed"),
        _hint("partial", ["model.b", "model.a"], title="Partial hint"),  # said by the loss itself
        _hint("unexpected", ["ck.z", "ck.c"], title="Unexpected hint"),  # said by the loss itself
        _hint("unexpected", ["ck.z"]),
        _hint("optimizer", ["ck.v"], title="Title here"),
        _hint("rename", ["ck.c"], cause="renamed"),
    ]  # a cause named once
    got = v.verdict(t, hints)
    assert got.loads and not got.clean and got.breaking == ()
    assert got.losing == (
        "allow_partial_load restores 1 of 5 target keys; 3 keep their initial values while 4 checkpoint "
        "key(s) that could hold them are read by no rank (a renamed module ('model' → 'ck'), renamed, "
        "title here)",
    )
    assert got.silent == ("1 checkpoint key(s) are read by no rank",)
    assert got.expected == 1
    no_wanted = v.verdict(_trace(t.mismatches, partial=True, expected=["ck.e"]), [])
    assert no_wanted.losing[0].startswith("allow_partial_load restores 0 of 4 target keys; 3 keep")
    assert no_wanted.losing[0].endswith("are read by no rank")


def test_verdict_partial_hint_on_kept_keys_is_silent_text():
    t = _trace([M("m", "missing", [0, 1])], world_size=2, partial=True)
    got = v.verdict(t, [_hint("partial", ["m"]), _hint("optimizer", ["m"])])
    assert got.loads and got.clean
    assert got.silent == (
        "1 key(s) keep their initial values (allow_partial_load)",
        "the checkpoint's optimizer state is not loaded",
    )


def test_verdict_on_bytes_that_replace_tensors():
    t = _trace(
        [
            M("t2", "type", [0], current=(4,)),
            M("t1", "type", [1], current=(2,)),
            M("t3", "type", [1], current=(2,), message="raised"),
        ]
    )
    got = v.verdict(t, [])
    assert got.losing == (
        "2 target tensor(s) are never written: the checkpoint holds a Python value (bytes) "
        "there, which replaces the state dict's entry ('t1', ...)",
    )
    one = v.verdict(_trace([M("t1", "type", [1], current=(2,))]), [])
    assert one.losing[0].endswith("entry ('t1')") and one.loads and not one.clean


def test_verdict_on_planner_errors():
    read = [
        ErrorRecord("read", 1, "OSError", "short"),
        ErrorRecord("read", 2, "OSError", "short"),
        ErrorRecord("read", None, "OSError", "x"),
    ]
    got = v.verdict(_trace(errors=read), [])
    assert got.breaking == (
        "ranks 1, 2 read data files that are missing or shorter than .metadata says",
    )
    local = [ErrorRecord("global", None, "E", "x"), ErrorRecord("local", 0, "E", "y")]
    got = v.verdict(_trace(errors=local), [])
    assert got.breaking == ("the planner raised in the global phase",) and not got.loads
    got = v.verdict(_trace([M("s", "size", [0])], errors=local), [])
    assert got.breaking == ("1 key(s) DCP rejects ('s')",)
    # an error alone (no breaking phrase) still means dcp.load fails
    coordinator_read = v.verdict(_trace(errors=[ErrorRecord("read", None, "E", "x")]), [])
    assert not coordinator_read.loads and coordinator_read.breaking == ()
    everywhere = v.verdict(_trace(errors=[ErrorRecord("read", r, "E", "x") for r in range(4)]), [])
    assert everywhere.breaking == (
        "all 4 ranks read data files that are missing or shorter than .metadata says",
    )


@pytest.mark.parametrize(
    ("summary", "verdict", "status"),
    [
        (
            {"world_size": 4, "failed_ranks": [0, 2], "ok": False, "errors": 2},
            v.Verdict(False, "", ("b",), ()),
            ("dcp.load would fail: the local plan raised on 2 of 4 ranks", "bad"),
        ),
        (
            {"world_size": 4, "failed_ranks": [], "ok": False, "errors": 3},
            v.Verdict(False, "", ("b",), ()),
            ("dcp.load would fail: 3 error(s)", "bad"),
        ),
        (
            {"world_size": 4, "failed_ranks": [], "ok": True, "errors": 0},
            v.Verdict(True, "", (), ("s",), losing=("l",)),
            ("dcp.load goes through but loses checkpoint data (see the verdict)", "bad"),
        ),
        (
            {"world_size": 4, "failed_ranks": [], "ok": True, "errors": 0},
            v.Verdict(True, "", (), ("s",)),
            ("plans, with mismatches DCP does not stop on", "warn"),
        ),
        (
            {"world_size": 4, "failed_ranks": [], "ok": True, "errors": 0},
            v.Verdict(True, "", (), (), expected=3),
            ("plans cleanly", "good"),
        ),
    ],
)
def test_load_status_by_hand(summary, verdict, status):
    assert v.load_status(summary, verdict) == status


def test_problems_keeps_absent_values_as_none():
    df = v.problems(_trace([M("u", "unexpected")]))
    assert df["saved"][0] is None and df["current"][0] is None
    assert isinstance(df, pd.DataFrame)
