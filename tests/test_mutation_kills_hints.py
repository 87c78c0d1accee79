"""Tests written for the load fix's and the hints' surviving mutants (bench/mutate.py:
analysis/load/hints.py, analysis/load/fix.py).

The facts: a fix is executed (its code runs ``dcp.load`` on a real checkpoint, one process, and
the target's tensors then hold the saved values); the rest are hand-computed expectations on
hand-built traces (the key sets a target and a checkpoint differ by, worked out here)."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from dcpviz.analysis.load import fix as lf
from dcpviz.analysis.load import hints as h
from dcpviz.core.keymatch import KeyFacts
from dcpviz.core.trace import LoadTrace, MismatchRecord, PlannerInfo, ScenarioInfo, TargetValue


def _trace(
    target: dict,
    saved: dict,
    partial=None,
    fix_spec=None,
    expected=(),
    source="checkpoint /x",
    bytes_keys=(),
):
    """A load trace of a target state dict {key: tensor} against a checkpoint {key: tensor}: the
    missing and unexpected keys are the two key sets' differences, worked out here."""
    options = tuple(
        x for x in (("allow_partial_load", partial), ("fix_spec", fix_spec)) if x[1] is not None
    )
    mismatches = [
        MismatchRecord(k, "missing", (0,), None, None, tuple(v.shape), str(v.dtype))
        for k, v in sorted(target.items())
        if k not in saved
    ]
    mismatches += [
        MismatchRecord(k, "unexpected", (), tuple(v.shape), str(v.dtype))
        for k, v in sorted(saved.items())
        if k not in target
    ]
    mismatches += [MismatchRecord(k, "unexpected", ()) for k in bytes_keys if k not in target]
    meta = NS(
        tensors=[NS(fqn=k, size=tuple(v.shape), dtype=str(v.dtype)) for k, v in saved.items()],
        bytes_keys=tuple(bytes_keys),
    )
    return LoadTrace(
        scenario=ScenarioInfo("mlp", 1, (1,), ("dp",), "fsdp", "float32", "cpu"),
        planner=PlannerInfo("DefaultLoadPlanner", "x", options),
        saved=meta,
        saved_scenario=None,
        saved_writers=(),
        reads=(),
        local_plans=(),
        global_plans=None,
        final_plans=None,
        wanted=tuple(
            TargetValue(k, "Tensor", tuple(v.shape), str(v.dtype)) for k, v in target.items()
        ),
        wanted_by_rank=(),
        mismatches=tuple(mismatches),
        expected_unused=tuple(expected),
        saved_source=source,
    )


def _run_fix(code: str, sd: dict, ckpt) -> dict:
    exec(compile(code, "<fix>", "exec"), {"sd": sd, "CKPT": str(ckpt)})
    return sd


# -- the fix, executed -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    saved = {
        "model.fc.weight": torch.randn(4, 3),
        "model.fc.bias": torch.randn(4),
        "model.emb": torch.randn(5, 3),
    }
    path = tmp_path_factory.mktemp("fix") / "ckpt"
    dcp.save({k: v.clone() for k, v in saved.items()}, checkpoint_id=path)
    return path, saved


def test_fix_code_by_hand():
    assert lf.fix_code({"b": "y.b", "a": "x.a"}, ["w", "e"], allow_partial_load=True) == "\n".join(
        [
            "import dcpviz",
            "import torch.distributed.checkpoint as dcp",
            "",
            "rename = {  # target key -> checkpoint key (the flattened keys DCP plans with)",
            "    'a': 'x.a',",
            "    'b': 'y.b',",
            "}",
            "resized = [  # loaded at their saved shape: saved rows into the new tensors, the rest keep their values",
            "    'e',",
            "    'w',",
            "]",
            "planner = dcpviz.RenamingLoadPlanner(rename, resized=resized, allow_partial_load=True)",
            "dcp.load(sd, checkpoint_id=CKPT, planner=planner)  # sd: the state you pass to dcp.load, as you nest it",
        ]
    )
    assert lf.fix_code({}, hf=True).split("\n")[3:] == [
        "rename = {}",
        "resized = []",
        "planner = dcpviz.RenamingLoadPlanner(rename, resized=resized)",
        "dcp.load(sd, storage_reader=dcp.HuggingFaceStorageReader(CKPT), planner=planner)  # sd: the state you "
        "pass to dcp.load, as you nest it",
    ]


def test_a_prefix_fix_runs_and_loads_the_saved_values(ckpt):
    path, saved = ckpt
    target = {"fc.weight": torch.zeros(4, 3), "fc.bias": torch.zeros(4), "emb": torch.zeros(5, 3)}
    hints = h.compute_hints(_trace(target, saved))
    assert [x.kind for x in hints] == ["prefix"]
    (hint,) = hints
    assert (
        hint.title == "The checkpoint's keys carry the prefix 'model.' that the target's keys lack"
    )
    assert hint.cause == "a 'model.' prefix in the checkpoint"
    assert sorted(hint.keys) == ["emb", "fc.bias", "fc.weight"]
    with pytest.raises(
        CheckpointException, match="Missing key in checkpoint state_dict"
    ):  # the fact
        dcp.load({k: v.clone() for k, v in target.items()}, checkpoint_id=path)
    loaded = _run_fix(hint.fix, target, path)
    for k, v in loaded.items():
        assert torch.equal(v, saved["model." + k]), k


def test_a_resize_and_a_new_key_fix_runs(ckpt):
    """A target whose embedding grew 5 -> 7 rows and that has a key the checkpoint lacks: the
    fix loads the saved rows, keeps the new rows and the new key as they were."""
    path, saved = ckpt
    target = {
        "model.fc.weight": torch.zeros(4, 3),
        "model.fc.bias": torch.zeros(4),
        "model.emb": torch.full((7, 3), 9.0),
        "model.head": torch.full((2,), 3.0),
    }
    trace = _trace({k: v for k, v in target.items()}, saved)
    # the size mismatch DCP reports for the grown embedding
    trace = type(trace)(
        **{
            **{f: getattr(trace, f) for f in trace.__dataclass_fields__ if f != "kind"},
            "mismatches": trace.mismatches
            + (
                MismatchRecord(
                    "model.emb",
                    "size",
                    (0,),
                    (5, 3),
                    "torch.float32",
                    (7, 3),
                    "torch.float32",
                    "size",
                ),
            ),
        }
    )
    hints = h.compute_hints(trace)
    partial = [x for x in hints if x.kind == "partial"]
    assert len(partial) == 1 and partial[0].keys == ("model.head",)
    assert partial[0].title == "1 target key(s) are not in the checkpoint"
    assert partial[0].cause == "1 key(s) missing from the checkpoint"
    fix = partial[0].fix
    assert fix.endswith("\n# these 1 key(s) keep their initial values: 'model.head'")
    loaded = _run_fix(fix, target, path)
    assert torch.equal(loaded["model.fc.weight"], saved["model.fc.weight"])
    assert torch.equal(loaded["model.head"], torch.full((2,), 3.0))


def test_a_partial_load_fix_without_renames_runs(ckpt):
    path, saved = ckpt
    target = {"model.fc.weight": torch.zeros(4, 3), "model.new": torch.ones(2)}
    (hint,) = [
        x
        for x in h.compute_hints(_trace(target, {k: saved[k] for k in ("model.fc.weight",)}))
        if x.kind == "partial"
    ]
    assert hint.fix == (
        "from torch.distributed.checkpoint import DefaultLoadPlanner\n"
        "planner = DefaultLoadPlanner(allow_partial_load=True)\n"
        "dcp.load(sd, checkpoint_id=CKPT, planner=planner)\n"
        "# these 1 key(s) keep their initial values: 'model.new'"
    )
    assert hint.detail == (
        "'model.new': no checkpoint key could fill them. If that is intended (new layers, a new "
        "head), they can keep their initial values."
    )
    loaded = _run_fix("import torch.distributed.checkpoint as dcp\n" + hint.fix, target, path)
    assert torch.equal(loaded["model.fc.weight"], saved["model.fc.weight"])
    assert torch.equal(loaded["model.new"], torch.ones(2))


# -- what an earlier fix did -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "rename", "resized"),
    [
        (None, {}, ()),
        ("", {}, ()),
        ("not json", {}, ()),
        ("[1, 2]", {}, ()),
        ('{"rename": 5}', {}, ()),
        (json.dumps({"rename": [["a", "x.a"]], "resized": ["w"]}), {"a": "x.a"}, ("w",)),
        (json.dumps({"rename": [["a", "x.a"]]}), {"a": "x.a"}, ()),
        (json.dumps({"resized": [3]}), {}, ("3",)),
    ],
)
def test_previous_fix_reads_the_planners_spec(spec, rename, resized):
    assert lf.previous_fix(_trace({}, {}, fix_spec=spec)) == (rename, resized)


def test_a_spec_that_is_not_text_is_no_fix():
    t = _trace({}, {})
    t2 = type(t)(
        **{
            **{f: getattr(t, f) for f in t.__dataclass_fields__ if f != "kind"},
            "planner": PlannerInfo("P", "x", (("fix_spec", 5),)),
        }
    )
    assert lf.previous_fix(t2) == ({}, ())


def test_cumulative_fix_keeps_the_first_round_and_names_resized_by_the_users_key():
    spec = json.dumps({"rename": [["a", "x.a"], ["b", "x.b"]], "resized": ["r0"]})
    t = _trace({}, {}, fix_spec=spec)
    match = NS(
        rename={"x.b": "y.b", "c": "x.c"},
        resized=(("x.a", "z.a", (5,), (7,)), ("d", "d", (1,), (2,))),
    )
    assert lf.cumulative_fix(t, match) == ({"a": "x.a", "b": "y.b", "c": "x.c"}, ("a", "d", "r0"))


def test_trace_facts_and_match_take_the_mismatches_keys_too():
    t = _trace({"a": torch.zeros(2)}, {"m.a": torch.zeros(2)}, bytes_keys=["step"])
    target, saved = lf.trace_facts(t)
    assert target == {"a": KeyFacts((2,), "torch.float32")}
    assert saved == {"m.a": KeyFacts((2,), "torch.float32"), "step": KeyFacts(None)}
    extra = type(t)(
        **{
            **{f: getattr(t, f) for f in t.__dataclass_fields__ if f != "kind"},
            "mismatches": t.mismatches
            + (
                MismatchRecord("n", "missing", (0,), None, None, (3,), "torch.int64"),
                MismatchRecord("u", "unexpected", (), (4,), "torch.bfloat16"),
                MismatchRecord("v", "unexpected", ()),
            ),
        }
    )
    target, saved = lf.trace_facts(extra)
    assert target["n"] == KeyFacts((3,), "torch.int64") and target["a"] == KeyFacts(
        (2,), "torch.float32"
    )
    assert saved["u"] == KeyFacts((4,), "torch.bfloat16") and saved["v"] == KeyFacts(None, None)
    assert lf.trace_match(t).rename == {"a": "m.a"}
    declared = _trace({"a": torch.zeros(2)}, {"m.a": torch.zeros(2)}, expected=["m.*"])
    assert lf.trace_match(declared).rename == {} and lf.trace_match(declared).missing == ("a",)


def test_is_hf_source():
    assert lf.is_hf_source(_trace({}, {}, source="safetensors folder /x"))
    assert not lf.is_hf_source(_trace({}, {}, source="checkpoint /x safetensors folder"))


# -- optimizer state ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "form"),
    [
        ("optim.state.0.exp_avg", "index"),
        ("state.12.step", "index"),
        ("optim.state.fc.weight.exp_avg", "name"),
        ("optim.param_groups.0.lr", "name"),
        ("optim.param_groups.0.foo", None),
        ("model.state.weight", None),
        ("xstate.0.exp_avg", None),
        ("state.0.exp_avg.x1", None),
        ("fc.exp_avg", None),
        ("param_groups", None),
    ],
)
def test_optim_key_forms(key, form):
    assert h._optim_key(key) == form


def test_index_vs_name_optimizer_hint_by_hand():
    missing = {"optim.state.0.exp_avg", "optim.state.1.exp_avg", "model.x"}
    unexpected = {"optim.state.fc.weight.exp_avg", "optim.state.fc.bias.exp_avg", "ckpt.y"}
    (hint,) = h._optimizer_hints(missing, unexpected)
    assert hint.kind == "optimizer"
    assert (
        hint.title
        == "Optimizer state is keyed by parameter names in the checkpoint but by parameter indices in the target"
    )
    assert hint.detail == (
        "checkpoint keys like 'optim.state.fc.bias.exp_avg' and 1 more, target keys like "
        "'optim.state.0.exp_avg' and 1 more: optimizer.state_dict() keys state by parameter "
        "index, get_optimizer_state_dict by FQN."
    )
    assert hint.fix == (
        "# use torch.distributed.checkpoint.state_dict.get_optimizer_state_dict(model, optim) to "
        "save and set_optimizer_state_dict(model, optim, sd) to load, on both sides"
    )
    assert hint.keys == (
        "optim.state.0.exp_avg",
        "optim.state.1.exp_avg",
        "optim.state.fc.bias.exp_avg",
        "optim.state.fc.weight.exp_avg",
    )
    assert hint.cause == "optimizer state keyed by index on one side, by name on the other"
    assert missing == {"model.x"} and unexpected == {"ckpt.y"}  # the keys it explains are taken
    (other,) = h._optimizer_hints({"optim.state.fc.exp_avg"}, {"optim.state.3.exp_avg"})
    assert (
        other.title
        == "Optimizer state is keyed by parameter indices in the checkpoint but by parameter names in the target"
    )


def test_one_sided_optimizer_hints_by_hand():
    missing = {"optim.state.a.exp_avg", "optim.state.b.exp_avg", "optim.state.c.step"}
    (hint,) = h._optimizer_hints(missing, {"x"})
    assert (hint.title, hint.detail, hint.fix, hint.keys, hint.cause) == (
        "The target loads optimizer state the checkpoint does not have",
        "3 optimizer keys ('optim.state.a.exp_avg', 'optim.state.b.exp_avg' and 1 more) are missing: a model-only "
        "checkpoint?",
        "load the model alone: dcp.load({'model': model_sd}, ...); or "
        "planner=DefaultLoadPlanner(allow_partial_load=True) to leave the optimizer state as initialised",
        ("optim.state.a.exp_avg", "optim.state.b.exp_avg", "optim.state.c.step"),
        "optimizer state the checkpoint does not have",
    )
    assert missing == set()
    unexpected = {"optim.state.0.exp_avg"}
    (hint,) = h._optimizer_hints(set(), unexpected)
    assert (hint.title, hint.detail, hint.fix, hint.keys, hint.cause) == (
        "The checkpoint carries optimizer state the target does not load",
        "1 optimizer keys ('optim.state.0.exp_avg') are read by no rank; DCP ignores them.",
        "# nothing to do for inference or a fresh optimizer; to resume training, add the optimizer with "
        "torch.distributed.checkpoint.state_dict.get_optimizer_state_dict(model, optim) to save and "
        "set_optimizer_state_dict(model, optim, sd) to load, on both sides",
        ("optim.state.0.exp_avg",),
        "",
    )
    assert unexpected == set()
    same_form = ({"optim.state.a.exp_avg"}, {"optim.state.b.exp_avg"})
    assert h._optimizer_hints(*same_form) == [] and same_form == (
        {"optim.state.a.exp_avg"},
        {"optim.state.b.exp_avg"},
    )
    assert h._optimizer_hints({"a"}, {"b"}) == []


@pytest.mark.parametrize(
    ("a", "b", "narrower"),
    [
        ("bfloat16", "float32", True),
        ("float32", "bfloat16", False),
        ("float16", "bfloat16", True),
        ("bfloat16", "float16", True),
        ("float16", "float16", False),
        ("float32", "float32", False),
        ("int64", "float32", True),
        ("float32", "int64", False),
        ("float8_e4m3fn", "float16", True),
        ("float64", "float32", False),
    ],
)
def test_narrower_by_bits(a, b, narrower):
    assert h._narrower(a, b) is narrower


def test_leftover_hints_by_hand():
    t = _trace({}, {}, partial=True)
    match = NS(rename={}, resized=())
    (hint,) = h._leftover_hints({"n2", "n1"}, set(), True, match, t)
    assert (hint.kind, hint.title, hint.detail, hint.fix, hint.keys, hint.cause) == (
        "partial",
        "2 target key(s) are not in the checkpoint and keep their initial values",
        "'n1', 'n2': allow_partial_load=True makes DCP skip them.",
        "# nothing to do if these are new (e.g. a new head); otherwise check the checkpoint",
        ("n1", "n2"),
        "",
    )
    (hint,) = h._leftover_hints(set(), {"u3", "u1", "u2", "u4"}, False, match, t)
    assert (hint.kind, hint.title, hint.detail, hint.fix, hint.keys) == (
        "unexpected",
        "4 checkpoint key(s) are read by no target rank",
        "'u1', 'u2', 'u3' and 1 more. DCP ignores them silently: if the target should have them, its model is "
        "missing modules.",
        "# nothing to do if they are dropped on purpose (declare them: simulate_load(..., expected_unused=[...])); "
        "otherwise add the modules to the target",
        ("u1", "u2", "u3", "u4"),
    )
    assert h._leftover_hints(set(), set(), False, match, t) == []
    hf = _trace({}, {}, source="safetensors folder /x")
    (hint,) = h._leftover_hints({"n"}, set(), False, NS(rename={"a": "b"}, resized=()), hf)
    assert (
        "dcp.HuggingFaceStorageReader(CKPT)" in hint.fix and "allow_partial_load=True" in hint.fix
    )


def test_compute_hints_leaves_declared_keys_alone_and_tables_them():
    t = _trace(
        {"new": torch.zeros(3)},
        {"old.x": torch.zeros(5), "ema.x": torch.zeros(5)},
        expected=["ema.*"],
    )
    hints = h.compute_hints(t)
    assert [(x.kind, x.keys) for x in hints] == [("partial", ("new",)), ("unexpected", ("old.x",))]
    partial = h.compute_hints(_trace({"new": torch.zeros(3)}, {}, partial=True))
    assert [(x.kind, x.title) for x in partial] == [
        ("partial", "1 target key(s) are not in the checkpoint and keep their initial values")
    ]
    df = h.hints_table(hints)
    assert list(df.columns) == h.HINT_COLUMNS
    assert df.to_dict("records")[0] == {
        "kind": "partial",
        "title": hints[0].title,
        "detail": hints[0].detail,
        "fix": hints[0].fix,
        "keys": 1,
        "mapping": {},
    }


# -- the hint of each rule, by hand --------------------------------------------------------------
from dcpviz.core.keymatch import Ambiguity, Match, Rule  # noqa: E402

NEXT_TIME = (
    " Next time, get_model_state_dict(model) / get_state_dict(model, optim) "
    "(torch.distributed.checkpoint.state_dict) build keys without it."
)


def _fields(hint):
    return (hint.kind, hint.title, hint.detail, hint.fix, hint.mapping, hint.keys, hint.cause)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            Rule(
                "wrapper", "", "_orig_mod", (("fc.w", "_orig_mod.fc.w"), ("fc.b", "_orig_mod.fc.b"))
            ),
            (
                "prefix",
                "The checkpoint's keys carry the wrapper segment '_orig_mod.' that the other side's lack",
                "2 keys are equal but for it ('_orig_mod': torch.compile), wherever it stands in the key; "
                "e.g. 'fc.w' -> '_orig_mod.fc.w'." + NEXT_TIME,
                "a '_orig_mod.' prefix (torch.compile)",
            ),
        ),
        (
            Rule(
                "wrapper",
                "module, _fsdp_wrapped_module",
                "",
                (("module._fsdp_wrapped_module.w", "w"),),
            ),
            (
                "prefix",
                "The target's keys carry the wrapper segment 'module.', '_fsdp_wrapped_module.' that the other side's lack",
                "1 keys are equal but for it ('module': DistributedDataParallel / DataParallel; '_fsdp_wrapped_module': "
                "FSDP1's wrapper), wherever it stands in the key; e.g. 'module._fsdp_wrapped_module.w' -> 'w'."
                + NEXT_TIME,
                "a 'module.' prefix (DistributedDataParallel / DataParallel) on the target, a '_fsdp_wrapped_module.' "
                "prefix (FSDP1's wrapper) on the target",
            ),
        ),
        (
            Rule(
                "wrapper",
                "",
                "_checkpoint_wrapped_module",
                (("w", "_checkpoint_wrapped_module.w"),),
            ),
            (
                "prefix",
                "The checkpoint's keys carry the wrapper segment '_checkpoint_wrapped_module.' that the other "
                "side's lack",
                "1 keys are equal but for it ('_checkpoint_wrapped_module': activation checkpointing's "
                "wrapper), wherever it stands in the key; e.g. 'w' -> '_checkpoint_wrapped_module.w'.",
                "a '_checkpoint_wrapped_module.' prefix (activation checkpointing's wrapper)",
            ),
        ),
        (
            Rule("choice", "wq", "q_proj", (("l.wq", "l.q_proj"),)),
            (
                "rename",
                "Your choice {'wq': 'q_proj'} maps 1 key(s)",
                "e.g. 'l.wq' -> 'l.q_proj'.",
                "your choice {'wq': 'q_proj'}",
            ),
        ),
        (
            Rule(
                "rewrite",
                "feed_forward",
                "mlp",
                (("l.feed_forward.w", "l.mlp.w"), ("m.feed_forward.w", "m.mlp.w")),
            ),
            (
                "rename",
                "The segment 'feed_forward' in the target's keys is 'mlp' in the checkpoint's",
                "2 keys differ only by that one segment, in every layer and component (e.g. 'l.feed_forward.w' -> "
                "'l.mlp.w'): a renamed module.",
                "a renamed module ('mlp' → 'feed_forward')",
            ),
        ),
        (
            Rule("rewrite", "", "model.", (("w", "model.w"),)),
            (
                "prefix",
                "The checkpoint's keys carry the prefix 'model.' that the target's keys lack",
                "1 checkpoint keys are target keys with 'model.' in front — the checkpoint was saved as "
                "{'model': state_dict} (e.g. 'w' -> 'model.w').",
                "a 'model.' prefix in the checkpoint",
            ),
        ),
        (
            Rule("rewrite", "", "app.", (("w", "app.w"),)),
            (
                "prefix",
                "The checkpoint's keys carry the prefix 'app.' that the target's keys lack",
                "1 checkpoint keys are target keys with 'app.' in front (e.g. 'w' -> 'app.w').",
                "a 'app.' prefix in the checkpoint",
            ),
        ),
        (
            Rule("rewrite", "model.", "", (("model.w", "w"),)),
            (
                "prefix",
                "The target's keys carry the prefix 'model.' that the checkpoint's keys lack",
                "1 target keys are checkpoint keys with 'model.' in front — the target is nested as {'model': ...} "
                "but the checkpoint was saved flat (e.g. 'model.w' -> 'w').",
                "a 'model.' prefix on the target",
            ),
        ),
        (
            Rule("rewrite", "app.", "", (("app.w", "w"),)),
            (
                "prefix",
                "The target's keys carry the prefix 'app.' that the checkpoint's keys lack",
                "1 target keys are checkpoint keys with 'app.' in front (e.g. 'app.w' -> 'w').",
                "a 'app.' prefix on the target",
            ),
        ),
        (
            Rule("rewrite", "x.", "y.", (("x.w", "y.w"),)),
            (
                "prefix",
                "'x.' in the target's keys is 'y.' in the checkpoint's",
                "1 keys differ only there (e.g. 'x.w' -> 'y.w').",
                "'x.' saved as 'y.'",
            ),
        ),
        (
            Rule("rewrite", "x", "y.", (("x.w", "y..w"),)),
            (
                "prefix",
                "'x' in the target's keys is 'y.' in the checkpoint's",
                "1 keys differ only there (e.g. 'x.w' -> 'y..w').",
                "'x' saved as 'y.'",
            ),
        ),
        (
            Rule("rewrite", "x.", "y", (("x.w", "yw"),)),
            (
                "prefix",
                "'x.' in the target's keys is 'y' in the checkpoint's",
                "1 keys differ only there (e.g. 'x.w' -> 'yw').",
                "'x.' saved as 'y'",
            ),
        ),
    ],
)
def test_rule_hints_by_hand(rule, expected):
    kind, title, detail, cause = expected
    assert _fields(lf._rule_hint(rule, "CODE")) == (
        kind,
        title,
        detail,
        "CODE",
        rule.pairs,
        tuple(m for m, _ in rule.pairs),
        cause,
    )


def test_ambiguity_hints_by_hand():
    tie = Ambiguity(
        "wq",
        ("q_proj", "k_proj"),
        ("l.0.wq", "l.1.wq"),
        (("l.0.wq", "l.0.q_proj"), ("l.0.wq", "l.0.k_proj"), ("l.1.wq", "l.1.q_proj")),
    )
    assert _fields(lf._ambiguity_hint(tie)) == (
        "ambiguous",
        "Ambiguous: 'wq' in the target's keys could be 'q_proj' or 'k_proj' in the checkpoint",
        "2 target key(s) ('l.0.wq', 'l.1.wq') have 2 candidate sources of equal shape; names and shapes do not "
        "say which, so nothing is loaded from either until you choose.",
        "# choose for each ambiguous name, e.g. load.fix_planner(rename={'wq': 'q_proj'}); candidates for 'wq': "
        "'q_proj', 'k_proj'",
        (),
        ("l.0.wq", "l.1.wq"),
        "an ambiguous rename ('wq' could be 'q_proj' or 'k_proj')",
    )
    one = Ambiguity("", ("model.",), ("a", "b"), (("b", "model.b"), ("a", "model.a")))
    assert _fields(lf._ambiguity_hint(one)) == (
        "ambiguous",
        "the target's root '' may be 'model.' in the checkpoint, but one pair is not a pattern",
        "'a', 'b' could load from 'model.a', 'model.b': equal shapes, one key. dcpviz does not apply it by itself.",
        "# choose for each ambiguous name, e.g. load.fix_planner(rename={'': 'model.'}); candidates for '': "
        "'model.'",
        (),
        ("a", "b"),
        "a possible rename (the target's root '' → 'model.', not certain)",
    )


def test_possible_sources_hint_by_hand():
    ambs = [Ambiguity(f"t{i}", (f"s{i}", f"r{i}"), (f"t{i}",), ()) for i in range(6)]
    assert lf._possible_hint([]) == []
    (hint,) = lf._possible_hint(ambs)
    listed = "; ".join(f"'t{i}': 's{i}' or 'r{i}'" for i in range(5))
    assert _fields(hint) == (
        "ambiguous",
        "6 target key(s) have a possible source in the checkpoint but no certain one",
        "'t0', 't1', 't2' and 3 more: unread checkpoint keys with the same leaf, layer and kind could fill them "
        "(e.g. 't0' from 's0' or 'r0'), but no rule that holds for other keys says which. They are not skipped "
        "silently: choose, or build the target as it was saved.",
        "# choose a source per key, e.g. load.fix_planner(rename={'t0': 's0'}); "
        + listed
        + "; ...",
        (),
        tuple(f"t{i}" for i in range(6)),
        "6 key(s) with a possible but uncertain source",
    )
    (five,) = lf._possible_hint(ambs[:5])
    assert five.fix.endswith("'t4': 's4' or 'r4'")


def _match(**kw):
    base = dict(
        mapping=(),
        rules=(),
        ambiguities=(),
        resized=(),
        reshaped=(),
        cast=(),
        missing=(),
        unexpected=(),
    )
    return Match(**{**base, **kw})


def test_size_hints_by_hand():
    DETAIL = (
        ". DCP cannot reshape; the fix reads each saved tensor at its saved shape and copies the rows both "
        "shapes share into the new (sharded) tensor; the rest keep their values."
    )
    match = _match(
        resized=(
            ("tok_embeddings.weight", "tok_embeddings.weight", (5, 3), (7, 3)),
            ("output.weight", "model.output.weight", (5, 3), (7, 3)),
            ("fc.w", "fc.w", (4, 4), (2, 2)),
            ("norm", "norm", (8,), (6,)),
        )
    )
    assert [_fields(x) for x in lf._size_hint(match, "CODE")] == [
        (
            "size",
            "A dimension grew from 5 to 7 in 2 tensor(s) — a resized vocabulary?",
            "'output.weight', 'tok_embeddings.weight'" + DETAIL,
            "CODE",
            (("output.weight", "model.output.weight"),),
            ("output.weight", "tok_embeddings.weight"),
            "a resized vocabulary",
        ),
        (
            "size",
            "A dimension shrank from 8 to 6 in 1 tensor(s)",
            "'norm'" + DETAIL,
            "CODE",
            (),
            ("norm",),
            "1 resized tensor(s)",
        ),
        (
            "size",
            "1 tensor(s) changed shape from (4, 4) to (2, 2)",
            "'fc.w'" + DETAIL,
            "CODE",
            (),
            ("fc.w",),
            "1 resized tensor(s)",
        ),
    ]
    assert lf._size_hint(_match(), "CODE") == []
    (same,) = lf._size_hint(_match(resized=(("lm_head.w", "x", (3, 2), (3, 4)),)), "C")
    assert same.title == "A dimension grew from 2 to 4 in 1 tensor(s) — a resized vocabulary?"


def test_reshaped_and_dtype_hints_by_hand():
    assert lf._reshaped_hint(_match()) == []
    (hint,) = lf._reshaped_hint(
        _match(reshaped=(("a", "b", (4,), (2, 2)), ("c", "c", (1,), (1, 1))))
    )
    assert _fields(hint) == (
        "size",
        "2 tensor(s) changed their number of dims",
        "'a', 'c' (e.g. saved (4,), target (2, 2)): no load fills them as they are.",
        "# reshape the saved tensor yourself (load it at its saved shape with dcp.load into a plain tensor), or "
        "build the target as it was saved",
        (),
        ("a", "c"),
        "2 reshaped tensor(s)",
    )
    match = _match(
        cast=(
            ("b", "b", "float32", "bfloat16"),
            ("a", "a", "float32", "bfloat16"),
            ("c", "c", "bfloat16", "float32"),
        )
    )
    assert [_fields(x) for x in lf._dtype_hints(match, h._narrower)] == [
        (
            "dtype",
            "1 tensor(s) were saved as bfloat16 but the target holds float32",
            "'c'. DCP does not check dtypes: the load succeeds and Tensor.copy_ casts bfloat16 -> float32 silently.",
            "model.to(torch.bfloat16)  # if the cast is unintended: build the target in the saved dtype before "
            "loading (in dcpviz: Scenario(dtype='bfloat16'))",
            (),
            ("c",),
            "1 tensor(s) cast bfloat16 → float32",
        ),
        (
            "dtype",
            "2 tensor(s) were saved as float32 but the target holds bfloat16",
            "'a', 'b'. DCP does not check dtypes: the load succeeds and Tensor.copy_ casts float32 -> bfloat16 "
            "silently (precision is lost).",
            "model.to(torch.float32)  # if the cast is unintended: build the target in the saved dtype before "
            "loading (in dcpviz: Scenario(dtype='float32'))",
            (),
            ("a", "b"),
            "2 tensor(s) cast float32 → bfloat16",
        ),
    ]


def test_match_hints_put_every_rule_tie_and_change_in_order():
    tie = Ambiguity("wq", ("q_proj", "k_proj"), ("l.0.wq", "l.1.wq"), ())
    lone = Ambiguity("t0", ("s0",), ("t0",), ())
    match = _match(
        mapping=(("a", "model.a"), ("x.b", "y.b")),
        rules=(
            Rule("rewrite", "", "model.", (("a", "model.a"),)),
            Rule("rewritten", "", "", (("x.b", "y.b"),)),
        ),
        ambiguities=(tie, lone),
        resized=(("a", "model.a", (5,), (7,)),),
        reshaped=(("r", "r", (4,), (2, 2)),),
        cast=(("c", "c", "float32", "bfloat16"),),
    )
    trace = _trace({}, {}, partial=True)
    hints = lf.match_hints(trace, match, h._narrower)
    code = lf.fix_code({"a": "model.a", "x.b": "y.b"}, ["a"], True)
    assert [x.kind for x in hints] == [
        "prefix",
        "rename",
        "ambiguous",
        "ambiguous",
        "size",
        "size",
        "dtype",
    ]
    assert hints[0].fix == hints[1].fix == hints[4].fix == code
    assert _fields(hints[1]) == (
        "rename",
        "1 more key(s) match once the rules above are applied",
        "e.g. 'x.b' -> 'y.b'.",
        code,
        (("x.b", "y.b"),),
        ("x.b",),
        "1 key(s) with several causes",
    )
    assert hints[2].keys == ("l.0.wq", "l.1.wq") and hints[3].keys == ("t0",)
    assert (
        "dcp.HuggingFaceStorageReader(CKPT)"
        in lf.match_hints(_trace({}, {}, source="safetensors folder /x"), match, h._narrower)[0].fix
    )
    assert lf.match_hints(_trace({}, {}), _match(), h._narrower) == []
    unpartial = lf.match_hints(_trace({}, {}), match, h._narrower)
    assert unpartial[0].fix == lf.fix_code({"a": "model.a", "x.b": "y.b"}, ["a"], False)


# -- the fix as a file, executed -----------------------------------------------------------------
def test_fix_file_by_hand_and_executed(ckpt):
    path, saved = ckpt
    code = lf.fix_code({"w": "model.fc.weight"}, [])
    trace = _trace({}, {})
    text = lf.fix_file(code, str(path), trace, command="dcpviz load X --emit-fix")
    assert text.split("\n")[:7] == [
        f'"""The load fix dcpviz found for {path} (written by `dcpviz load X --emit-fix`).',
        "",
        "In your job, on every rank:  from fix import load_fixed; load_fixed(sd)",
        "    (sd: the state you pass to dcp.load, nested as you build it, e.g. {'model': ..., 'optim': ...})",
        "Check it for real first:     python fix.py",
        "    (loads the checkpoint into the target job below with 1 real processes, with this fix)",
        '"""',
    ]
    assert text.split('"""', 2)[2].split("\n")[1:] == [
        "import dcpviz",
        "import torch.distributed.checkpoint as dcp",
        "",
        "rename = {  # target key -> checkpoint key (the flattened keys DCP plans with)",
        "    'w': 'model.fc.weight',",
        "}",
        "resized = []",
        "",
        f"CKPT = {str(path)!r}",
        "",
        "",
        "def planner():",
        '    """A fresh fix planner (one per dcp.load call)."""',
        "    return dcpviz.RenamingLoadPlanner(rename, resized=resized, allow_partial_load=False)",
        "",
        "",
        "def load_fixed(sd, checkpoint_id=CKPT):",
        '    """dcp.load with the fix: call it on every rank, as dcp.load."""',
        "    dcp.load(sd, checkpoint_id=checkpoint_id, planner=planner())",
        "",
        "",
        'if __name__ == "__main__":',
        "    from dcpviz.engine.job.userspec import resolve_spec, saved_spec",
        "",
        "    def spec(name, flag):",
        "        return resolve_spec(saved_spec(name, flag), flag) if name else None",
        "",
        "    target = dcpviz.Scenario(",
        "        model=spec('mlp', '--model'), world_size=1, mesh=(1,),",
        "        mesh_dim_names=('dp',), recipe=spec('fsdp', '--recipe'), dtype='float32',",
        "        optimizer=spec('', '--optimizer'), state=spec('', '--state'))",
        "    result = dcpviz.run_load(CKPT, target, planner=planner())",
        "    print(result.verdict.line)",
        "    raise SystemExit(0 if result.ok and result.verdict.loads else 1)",
        "",
    ]
    ns = {"__name__": "fix"}
    exec(compile(text, "fix.py", "exec"), ns)
    sd = {"w": torch.zeros(4, 3)}
    ns["load_fixed"](sd)  # the file's fix, run: the saved values arrive under the user's key
    assert torch.equal(sd["w"], saved["model.fc.weight"])
    plain = lf.fix_file(
        lf.fix_code({}, [], allow_partial_load=True),
        "C",
        _trace({}, {}, source="safetensors folder"),
    )
    assert plain.split("\n")[0] == '"""The load fix dcpviz found for C.'
    assert (
        "allow_partial_load=True)" in plain
        and "planner = " not in plain
        and "\ndcp.load(" not in plain
    )
    assert (
        "    dcp.load(sd, storage_reader=dcp.HuggingFaceStorageReader(checkpoint_id), planner=planner())"
        in plain
    )
    built = dataclass_replace_scenario(trace, dtype="as built")
    assert "dtype=None," in lf.fix_file(code, "C", built)


def dataclass_replace_scenario(trace, **kw):
    import dataclasses

    return dataclasses.replace(trace, scenario=dataclasses.replace(trace.scenario, **kw))


def test_narrower_of_two_unknown_dtypes_is_false():
    assert h._narrower("int64", "int32") is False


def test_two_wrapper_segments_in_the_checkpoint_are_each_named():
    rule = Rule("wrapper", "", "module, _orig_mod", (("w", "module._orig_mod.w"),))
    assert lf._rule_hint(rule, "C").cause == (
        "a 'module.' prefix (DistributedDataParallel / DataParallel), "
        "a '_orig_mod.' prefix (torch.compile)"
    )


def test_a_tie_is_no_missing_key_and_a_choice_settles_it():
    """wq/wk against q_proj/k_proj, all of one shape (DESIGN's look-alike hazard): a tie, and the
    tied keys are not also called missing or unread; the caller's choice settles it."""
    target = {f"l{i}.attn.{n}.weight": torch.zeros(2) for i in range(2) for n in ("wq", "wk")}
    saved = {
        f"l{i}.attn.{n}.weight": torch.zeros(2) for i in range(2) for n in ("q_proj", "k_proj")
    }
    hints = h.compute_hints(_trace(target, saved))
    assert [x.kind for x in hints] == ["ambiguous", "ambiguous"]
    chosen = h.compute_hints(_trace(target, saved), choices={"wq": "q_proj", "wk": "k_proj"})
    assert [(x.kind, x.title) for x in chosen] == [
        ("rename", "Your choice {'wk': 'k_proj'} maps 2 key(s)"),
        ("rename", "Your choice {'wq': 'q_proj'} maps 2 key(s)"),
    ]


def test_a_prefix_with_a_cast_says_both(ckpt):
    target = {"fc.bias": torch.zeros(4, dtype=torch.bfloat16)}
    hints = h.compute_hints(_trace(target, {"model.fc.bias": torch.zeros(4)}))
    assert [x.kind for x in hints] == ["prefix", "dtype"]
    assert hints[1].detail.endswith("casts torch.float32 -> torch.bfloat16 silently.")


def test_another_optimizer_kind_and_a_prefix_at_once():
    """AdamW's param group (lr, betas) against SGD's (lr, momentum), plus a 'model.' prefix: the
    optimizer hint takes its keys first, the prefix hint follows, and nothing else is said."""
    import dataclasses

    t = _trace(
        {"w": torch.zeros(2)},
        {"model.w": torch.zeros(2)},
        bytes_keys=["optim.param_groups.0.lr", "optim.param_groups.0.momentum"],
    )
    wanted = t.wanted + tuple(
        TargetValue(k, "float", None, None)
        for k in ("optim.param_groups.0.lr", "optim.param_groups.0.betas")
    )
    mismatches = tuple(m for m in t.mismatches if m.fqn != "optim.param_groups.0.lr") + (
        MismatchRecord("optim.param_groups.0.betas", "missing", (0,)),
    )
    t = dataclasses.replace(t, wanted=wanted, mismatches=mismatches)
    hints = h.compute_hints(t)
    assert [(x.kind, x.keys) for x in hints] == [
        ("optimizer", ("optim.param_groups.0.betas", "optim.param_groups.0.momentum")),
        ("prefix", ("w",)),
    ]
    assert lf.trace_facts(t)[0]["optim.param_groups.0.betas"] == KeyFacts(None, None)


def test_a_missing_key_next_to_a_rename_keeps_the_rename_in_its_fix(ckpt):
    path, saved = ckpt
    target = {"fc.weight": torch.zeros(4, 3), "fc.bias": torch.zeros(4), "new": torch.ones(2)}
    (hint,) = [
        x
        for x in h.compute_hints(
            _trace(target, {k: saved[k] for k in ("model.fc.weight", "model.fc.bias")})
        )
        if x.kind == "partial"
    ]
    assert "    'fc.weight': 'model.fc.weight'," in hint.fix.split("\n")
    loaded = _run_fix(hint.fix, target, path)
    assert torch.equal(loaded["fc.weight"], saved["model.fc.weight"]) and torch.equal(
        loaded["new"], torch.ones(2)
    )


def test_optimizer_hints_are_of_kind_optimizer():
    cases = [
        ({"optim.state.0.exp_avg"}, {"optim.state.fc.exp_avg"}),
        ({"optim.state.a.exp_avg"}, set()),
        (set(), {"optim.state.0.exp_avg"}),
    ]
    assert [[x.kind for x in h._optimizer_hints(set(m), set(u))] for m, u in cases] == [
        ["optimizer"]
    ] * 3


def test_size_hints_in_order_of_their_text_and_an_embedding_is_a_vocabulary():
    match = _match(
        resized=(
            ("a", "a", (5,), (7,)),
            ("b", "b", (10,), (12,)),
            ("tok_embed.w", "tok_embed.w", (3, 2), (3, 4)),
        )
    )
    assert (
        [x.title for x in lf._size_hint(match, "C")]
        == [
            "A dimension grew from 10 to 12 in 1 tensor(s)",  # repr order: "('dim', 10" before "('dim', 2"
            "A dimension grew from 2 to 4 in 1 tensor(s) — a resized vocabulary?",
            "A dimension grew from 5 to 7 in 1 tensor(s)",
        ]
    )


def test_a_missing_python_value_has_no_size():
    t = _trace({}, {})
    import dataclasses

    t = dataclasses.replace(t, mismatches=(MismatchRecord("step", "missing", (0,)),))
    assert lf.trace_facts(t)[0] == {"step": KeyFacts(None, None)}


@pytest.mark.parametrize("key", ["output.weight", "wte.weight", "lm_head.weight"])
def test_each_vocabulary_name_alone_is_a_vocabulary(key):
    (hint,) = lf._size_hint(_match(resized=((key, key, (5, 2), (7, 2)),)), "C")
    assert hint.cause == "a resized vocabulary"


def test_unread_optimizer_state_names_two_examples():
    (hint,) = h._optimizer_hints(set(), {f"optim.state.{i}.exp_avg" for i in range(4)})
    assert hint.detail == (
        "4 optimizer keys ('optim.state.0.exp_avg', 'optim.state.1.exp_avg' and 2 more) are "
        "read by no rank; DCP ignores them."
    )


def test_keys_the_optimizer_hint_explains_are_no_source_for_the_rename_rules():
    """Adam saved, SGD in the target, and the target has one more key, 'ema.w.exp_avg', of the
    same leaf and size as the saved 'optim.state.w.exp_avg'. Worked out by hand: the optimizer hint
    explains exp_avg (state the other optimizer kind saves), so it is no source for the EMA key;
    offered to the matcher, it would be read as a prefix rename 'ema.' -> 'optim.state.' that
    loads Adam's moment into the EMA."""
    import dataclasses

    t = _trace(
        {
            "w": torch.zeros(2),
            "optim.state.w.momentum_buffer": torch.zeros(2),
            "ema.w.exp_avg": torch.zeros(2),
        },
        {"w": torch.zeros(2), "optim.state.w.exp_avg": torch.zeros(2)},
        bytes_keys=["optim.param_groups.0.lr", "optim.param_groups.0.betas"],
    )
    wanted = t.wanted + tuple(
        TargetValue(k, "float", None, None)
        for k in ("optim.param_groups.0.lr", "optim.param_groups.0.momentum")
    )
    mismatches = tuple(m for m in t.mismatches if m.fqn != "optim.param_groups.0.lr") + (
        MismatchRecord("optim.param_groups.0.momentum", "missing", (0,)),
    )
    hints = h.compute_hints(dataclasses.replace(t, wanted=wanted, mismatches=mismatches))
    assert [(x.kind, x.keys) for x in hints] == [
        (
            "optimizer",
            (
                "optim.param_groups.0.betas",
                "optim.param_groups.0.momentum",
                "optim.state.w.exp_avg",
                "optim.state.w.momentum_buffer",
            ),
        ),
        ("partial", ("ema.w.exp_avg",)),
    ]
