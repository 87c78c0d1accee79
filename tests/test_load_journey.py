"""The failing load, answered in a minute (issue 15): a verdict first, one row per problem with
its ranks, a fix planner that is checked (simulated and real), fix texts that are code, the CLI
describing the user's own job, keys left unread on purpose."""

from __future__ import annotations

import pickle

import pytest
import torch
from load_cases import NestedMLP, RenamedNormMLP, compiled_mlp
from rich.console import Console

import dcpviz
from dcpviz.analysis.verdict import rank_ranges
from dcpviz.engine.models import LLAMA_CONFIGS, Transformer
from dcpviz.html_report import report_html
from dcpviz.results import MessagesPart, TablePart
from dcpviz.terminal import print_result


@pytest.fixture(scope="module")
def hsdp8():
    return dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp"))


@pytest.fixture(scope="module")
def compiled6(hsdp8):
    return dcpviz.simulate_load(hsdp8, dcpviz.Scenario(model=compiled_mlp, world_size=6, recipe="fsdp"))


def terminal_text(result) -> str:
    console = Console(width=400, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_result(result, console)
    return console.export_text()


def test_rank_ranges():
    assert rank_ranges(range(6), 6) == "all 6 ranks"
    assert rank_ranges([3], 6) == "rank 3"
    assert rank_ranges([0, 1, 2, 3, 4], 8) == "ranks 0–4"
    assert rank_ranges([0, 1, 2, 5], 8) == "ranks 0–2, 5"
    assert rank_ranges([0, 1], 8) == "ranks 0, 1"


def test_verdict_names_the_harmless_change_and_what_breaks(compiled6):
    v = compiled6.verdict
    assert not v.loads
    assert v.line.startswith("Resharding 8 → 6 ranks (hsdp → fsdp) is fine; 1 thing breaks the load: ")
    assert "'_orig_mod.' prefix (torch.compile)" in v.line


def test_one_row_per_problem_with_its_ranks(compiled6):
    keys = set(compiled6.mismatches.query("kind == 'missing'")["fqn"])
    broken = compiled6.problems.query("severity == 'breaks'")
    assert sorted(broken["fqn"]) == sorted(keys)  # one row per key, not one per rank
    assert set(broken["ranks"]) == {"all 6 ranks"}
    assert len(compiled6.mismatches.query("kind == 'missing'")) == 6 * len(keys)  # per-rank table kept


def test_terminal_carries_the_verdict_and_each_message_once(compiled6):
    text = terminal_text(compiled6)
    assert compiled6.verdict.line in text
    for msg in set(compiled6.problems["message"]) - {""}:
        assert text.count(msg) == 1, msg
    first = compiled6.trace.errors[0].message  # each rank raised it; shown once
    assert text.count(first) == 1
    assert "No reads to show: the local plan failed on all 6 ranks" in text
    assert "reads per target rank" not in text


def test_report_carries_the_verdict_problems_once_and_hides_reads(compiled6):
    page = report_html(compiled6)
    assert compiled6.verdict.line.replace("'", "&#x27;") in page
    parts = compiled6.parts()
    problems = [p for p in parts if isinstance(p, TablePart) and p.title.startswith("Problems")]
    assert len(problems) == 1 and problems[0].frame["fqn"].is_unique
    errors = [e for p in parts if isinstance(p, MessagesPart) for e in p.errors]
    assert errors == []  # every DCP message is already in the problems table, next to its key
    assert not any(isinstance(p, TablePart) and p.title == "Read items" for p in parts)
    assert "No reads to show" in page


def test_fix_planner_turns_prefix_and_rename_into_clean_loads(hsdp8):
    for model in (compiled_mlp, NestedMLP, RenamedNormMLP):
        target = dcpviz.Scenario(model=model, world_size=6, recipe="fsdp")
        broken = dcpviz.simulate_load(hsdp8, target)
        assert not broken.ok and not broken.verdict.loads
        planner = broken.fix_planner()
        assert pickle.loads(pickle.dumps(planner)).rename == planner.rename  # run_load's workers get it
        fixed = dcpviz.simulate_load(hsdp8, target, planner=planner)
        assert fixed.ok and len(fixed.mismatches) == 0, (model, fixed.mismatches)
        assert fixed.verdict.loads and "loads cleanly" in fixed.verdict.line
        # The same reads as the model without the rename/prefix.
        plain = dcpviz.simulate_load(hsdp8, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"))
        rename = dict(planner.rename)
        got = sorted((r.rank, rename.get(r.fqn, r.fqn), r.saved_offsets, r.lengths) for r in fixed.read_items.itertuples())
        want = sorted((r.rank, r.fqn, r.saved_offsets, r.lengths) for r in plain.read_items.itertuples())
        assert got == want


def test_fix_planner_passes_a_real_run_load(real_save):
    sc, _, ckpt = real_save("hsdp")
    target = sc.replace(model=NestedMLP)
    broken = dcpviz.simulate_load(ckpt, target)
    assert not broken.ok
    fixed = dcpviz.run_load(ckpt, target, planner=broken.fix_planner(), timeout=240)
    assert fixed.ok, fixed.errors
    assert len(fixed.mismatches) == 0
    same = dcpviz.run_load(ckpt, sc, timeout=240)
    rename = broken.fix_planner().rename
    # every chunk each rank holds after the load is the saved one (the target starts as NaN)
    renamed = [{rename.get(k, k) if isinstance(k, str) else k: v for k, v in d.items()}
               for d in fixed.run_info.chunk_digests] if isinstance(fixed.run_info.chunk_digests, list) else None
    if renamed is not None:
        assert renamed == same.run_info.chunk_digests


def _all_hints(hsdp8):
    from torch.distributed.checkpoint import DefaultLoadPlanner

    def bigger_vocab():
        return Transformer(__import__("dataclasses").replace(LLAMA_CONFIGS["llama-tiny"], vocab_size=1024))

    tiny = dcpviz.simulate_save(dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp"))
    loads = [
        dcpviz.simulate_load(hsdp8, dcpviz.Scenario(model=m, world_size=2, recipe="fsdp"))
        for m in (compiled_mlp, NestedMLP, RenamedNormMLP)
    ]
    loads.append(dcpviz.simulate_load(dcpviz.simulate_save(dcpviz.Scenario(model=NestedMLP, world_size=2, recipe="fsdp")),
                                      dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")))
    loads.append(dcpviz.simulate_load(tiny, dcpviz.Scenario(model=bigger_vocab, world_size=2, recipe="fsdp")))
    loads.append(dcpviz.simulate_load(tiny, dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp", dtype="bfloat16")))
    loads.append(dcpviz.simulate_load(hsdp8, dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")))
    loads.append(dcpviz.simulate_load(hsdp8, dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp"),
                                      planner=DefaultLoadPlanner(allow_partial_load=True)))
    return [(load, h) for load in loads for h in load.hints]


def _run_fix(h) -> list:
    """Run a rename/prefix hint's fix text on a state dict of its target keys; return what it
    handed to dcp.load."""
    calls: list = []

    class dcp:  # noqa: N801 - stands for torch.distributed.checkpoint
        @staticmethod
        def load(sd, checkpoint_id):
            calls.append(sd)

    exec(h.fix, {"sd": {k: object() for k, _ in h.mapping}, "dcp": dcp, "CKPT": "ckpt"})
    return calls


def test_every_hint_fix_is_code_and_renames_run(hsdp8):
    pairs = _all_hints(hsdp8)
    assert {h.kind for _, h in pairs} >= {"prefix", "rename", "size", "dtype", "partial", "unexpected"}
    for _, h in pairs:
        compile(h.fix, f"<fix of a {h.kind} hint>", "exec")
        if h.kind not in ("prefix", "rename"):
            continue
        # Run it: the state dict it hands to dcp.load has the checkpoint's keys.
        (loaded,) = _run_fix(h)
        flat = {f"model.{k}" for k in loaded["model"]} if set(loaded) == {"model"} else set(loaded)
        assert flat == {c for _, c in h.mapping}, h


def test_load_resized_copies_the_saved_rows(tmp_path):
    import torch.distributed.checkpoint as dcp

    saved = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    dcp.save({"emb": saved, "other": torch.ones(3)}, checkpoint_id=tmp_path)
    sd = {"emb": torch.full((12, 4), -1.0), "other": torch.zeros(3)}
    from dcpviz.analysis.hints import _size_hints
    from dcpviz.core.trace import MismatchRecord

    (hint,) = _size_hints([MismatchRecord("emb", "size", (0,), (10, 4), "float32", (12, 4), "float32")])
    exec(hint.fix, {"sd": sd, "dcp": dcp, "CKPT": str(tmp_path), "dcpviz": dcpviz})  # the size hint's own fix, run
    assert torch.equal(sd["emb"][:10], saved) and bool((sd["emb"][10:] == -1).all())
    assert torch.equal(sd["other"], torch.ones(3))


def test_expected_unused_keys_stop_being_problems(hsdp8, tmp_path):
    class SkipNorm(torch.distributed.checkpoint.DefaultLoadPlanner):
        def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
            super().set_up_planner({k: v for k, v in state_dict.items() if not k.startswith("norm.")}, metadata, is_coordinator)

    target = dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp")
    red = dcpviz.simulate_load(hsdp8, target, planner=SkipNorm)
    assert set(red.problems["severity"]) == {"silent"} and "read by no rank" in red.verdict.line
    declared = dcpviz.simulate_load(hsdp8, target, planner=SkipNorm, expected_unused=["norm.*"])
    assert set(declared.problems["severity"]) == {"expected"}
    assert declared.hints == []
    assert declared.verdict.line.endswith("it loads cleanly (2 checkpoint keys left unread on purpose).")
    assert dcpviz.load_trace(declared.to_json(tmp_path / "l.json")).trace.expected_unused == ("norm.*",)
