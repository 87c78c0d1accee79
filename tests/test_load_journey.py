"""The failing load, answered in a minute (issue 15): a verdict first, one row per problem with
its ranks, a fix planner that is checked (simulated and real), fix texts that are code, the CLI
describing the user's own job, keys left unread on purpose."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from load_cases import NestedMLP, RenamedNormMLP, compiled_mlp
from rich.console import Console

import dcpviz
from dcpviz.analysis.load.verdict import rank_ranges
from dcpviz.engine.job.models import LLAMA_CONFIGS, Transformer
from dcpviz.html_report import report_html
from dcpviz.results import MessagesPart, TablePart
from dcpviz.terminal import print_result


@pytest.fixture(scope="module")
def hsdp8():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )


@pytest.fixture(scope="module")
def compiled6(hsdp8):
    return dcpviz.simulate_load(
        hsdp8, dcpviz.Scenario(model=compiled_mlp, world_size=6, recipe="fsdp")
    )


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
    assert v.line.startswith(
        "Resharding 8 → 6 ranks (hsdp → fsdp) is fine; 1 thing breaks the load: "
    )
    assert "'_orig_mod.' prefix (torch.compile)" in v.line


def test_one_row_per_problem_with_its_ranks(compiled6):
    keys = set(compiled6.mismatches.query("kind == 'missing'")["fqn"])
    broken = compiled6.problems.query("severity == 'breaks'")
    assert sorted(broken["fqn"]) == sorted(keys)  # one row per key, not one per rank
    assert set(broken["ranks"]) == {"all 6 ranks"}
    assert len(compiled6.mismatches.query("kind == 'missing'")) == 6 * len(
        keys
    )  # per-rank table kept


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
    failed = compiled6.checks.query(
        "check == 'local-failed'"
    )  # the checks table too: a message once
    assert len(failed) == len({e.message for e in compiled6.trace.errors})
    assert (
        set(failed["ranks"]) == {tuple(range(6))}
        and failed["message"].str.contains("all 6 ranks").all()
    )


def test_fix_planner_turns_prefix_and_rename_into_clean_loads(hsdp8):
    for model in (compiled_mlp, NestedMLP, RenamedNormMLP):
        target = dcpviz.Scenario(model=model, world_size=6, recipe="fsdp")
        broken = dcpviz.simulate_load(hsdp8, target)
        assert not broken.ok and not broken.verdict.loads
        planner = broken.fix_planner()
        assert (
            pickle.loads(pickle.dumps(planner)).rename == planner.rename
        )  # run_load's workers get it
        fixed = dcpviz.simulate_load(hsdp8, target, planner=planner)
        assert fixed.ok and len(fixed.mismatches) == 0, (model, fixed.mismatches)
        assert fixed.verdict.loads and "loads cleanly" in fixed.verdict.line
        # The same reads as the model without the rename/prefix.
        plain = dcpviz.simulate_load(
            hsdp8, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp")
        )
        rename = dict(planner.rename)
        got = sorted(
            (r.rank, rename.get(r.fqn, r.fqn), r.saved_offsets, r.lengths)
            for r in fixed.read_items.itertuples()
        )
        want = sorted(
            (r.rank, r.fqn, r.saved_offsets, r.lengths) for r in plain.read_items.itertuples()
        )
        assert got == want


def test_fix_planner_passes_a_real_run_load(real_save):
    sc, saved, ckpt = real_save("hsdp")
    target = sc.replace(model=NestedMLP)  # every key gains 'model.'
    broken = dcpviz.simulate_load(ckpt, target)
    assert not broken.ok
    planner = broken.fix_planner()
    fixed = dcpviz.run_load(ckpt, target, planner=planner, timeout=240)
    assert fixed.ok, fixed.errors
    assert len(fixed.mismatches) == 0 and fixed.verdict.loads

    # Every chunk each rank holds after the load is the one saved (the target starts as NaN).
    def renamed(digests):
        return {
            r: sorted((planner.rename.get(f, f), o, h) for f, o, h in d) for r, d in digests.items()
        }

    assert renamed(fixed.run_info.chunk_digests) == {
        r: sorted(d) for r, d in saved.run_info.chunk_digests.items()
    }


def _all_hints(hsdp8):
    from torch.distributed.checkpoint import DefaultLoadPlanner

    def bigger_vocab():
        return Transformer(
            __import__("dataclasses").replace(LLAMA_CONFIGS["llama-tiny"], vocab_size=1024)
        )

    tiny = dcpviz.simulate_save(dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp"))
    loads = [
        dcpviz.simulate_load(hsdp8, dcpviz.Scenario(model=m, world_size=2, recipe="fsdp"))
        for m in (compiled_mlp, NestedMLP, RenamedNormMLP)
    ]
    loads.append(
        dcpviz.simulate_load(
            dcpviz.simulate_save(dcpviz.Scenario(model=NestedMLP, world_size=2, recipe="fsdp")),
            dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"),
        )
    )
    loads.append(
        dcpviz.simulate_load(tiny, dcpviz.Scenario(model=bigger_vocab, world_size=2, recipe="fsdp"))
    )
    loads.append(
        dcpviz.simulate_load(
            tiny, dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp", dtype="bfloat16")
        )
    )
    loads.append(
        dcpviz.simulate_load(
            hsdp8, dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")
        )
    )
    loads.append(
        dcpviz.simulate_load(
            hsdp8,
            dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp"),
            planner=DefaultLoadPlanner(allow_partial_load=True),
        )
    )
    return [(load, h) for load in loads for h in load.hints]


def _run_fix(h) -> list:
    """Run a hint's fix code as the user's job would (dcp.load stands in); return the
    (state dict, planner) it handed to dcp.load."""
    import torch.distributed.checkpoint as dcp

    calls: list = []
    real = dcp.load
    dcp.load = lambda sd, checkpoint_id, planner=None: calls.append((sd, planner))
    try:
        exec(h.fix, {"sd": {"model": {}}, "CKPT": "ckpt"})
    finally:
        dcp.load = real
    return calls


def test_every_hint_fix_is_code_and_renames_run(hsdp8):
    pairs = _all_hints(hsdp8)
    assert {h.kind for _, h in pairs} >= {
        "prefix",
        "rename",
        "size",
        "dtype",
        "partial",
        "unexpected",
    }
    for load, h in pairs:
        compile(h.fix, f"<fix of a {h.kind} hint>", "exec")
        if h.kind not in ("prefix", "rename", "size"):
            continue
        # Run it: one planner with the whole fix, on the state dict as the user passes it.
        ((sd, planner),) = _run_fix(h)
        assert sd == {"model": {}}
        assert isinstance(planner, dcpviz.RenamingLoadPlanner)
        assert dict(h.mapping).items() <= planner.rename.items(), h
        assert (
            planner.rename == load.fix_planner().rename
            and planner.resized == load.fix_planner().resized
        )


def test_size_hint_fix_loads_saved_rows_into_a_nested_state(tmp_path):
    """The size fix on a {"model": ...} state (issue 19: the hint's code and load_resized
    assumed a flat dict keyed by checkpoint names)."""
    import torch.distributed.checkpoint as dcp

    saved = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    dcp.save({"model": {"emb": saved, "other": torch.ones(3)}}, checkpoint_id=tmp_path)
    sd = {"model": {"emb": torch.full((12, 4), -1.0), "other": torch.zeros(3)}}
    dcp.load(
        sd, checkpoint_id=str(tmp_path), planner=dcpviz.RenamingLoadPlanner(resized=["model.emb"])
    )
    assert torch.equal(sd["model"]["emb"][:10], saved) and bool(
        (sd["model"]["emb"][10:] == -1).all()
    )
    assert torch.equal(sd["model"]["other"], torch.ones(3))
    sd2 = {"model": {"emb": torch.full((12, 4), -1.0), "other": torch.zeros(3)}}
    assert dcpviz.load_resized(sd2, tmp_path, ["model.emb"]) == {"model.emb": (10, 4)}
    assert torch.equal(sd2["model"]["emb"][:10], saved) and bool(
        (sd2["model"]["emb"][10:] == -1).all()
    )
    assert torch.equal(
        sd2["model"]["other"], torch.zeros(3)
    )  # load_resized loads only the resized keys


def test_expected_unused_keys_stop_being_problems(hsdp8, tmp_path):
    class SkipNorm(torch.distributed.checkpoint.DefaultLoadPlanner):
        def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
            super().set_up_planner(
                {k: v for k, v in state_dict.items() if not k.startswith("norm.")},
                metadata,
                is_coordinator,
            )

    target = dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp")
    red = dcpviz.simulate_load(hsdp8, target, planner=SkipNorm)
    assert set(red.problems["severity"]) == {"silent"} and "read by no rank" in red.verdict.line
    declared = dcpviz.simulate_load(hsdp8, target, planner=SkipNorm, expected_unused=["norm.*"])
    assert set(declared.problems["severity"]) == {"expected"}
    assert declared.hints == []
    assert declared.verdict.line.endswith(
        "it loads cleanly (2 checkpoint keys left unread on purpose)."
    )
    assert dcpviz.load_trace(declared.to_json(tmp_path / "l.json")).trace.expected_unused == (
        "norm.*",
    )


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dcpviz", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "COLUMNS": "300"},
    )


def test_cli_load_defaults_to_the_saved_job_and_takes_the_users_factory(tmp_path):
    trace = tmp_path / "s.json"
    assert (
        run_cli(
            "simulate",
            "--model",
            "llama-tiny",
            "-W",
            "8",
            "--mesh",
            "2x4",
            "--recipe",
            "hsdp",
            "--dtype",
            "float32",
            "--trace",
            str(trace),
            "-q",
        ).returncode
        == 0
    )
    same = run_cli(
        "load", str(trace), "--trace", str(tmp_path / "l.json")
    )  # no flags: the saved job
    assert same.returncode == 0, same.stderr
    load = dcpviz.load_trace(tmp_path / "l.json")
    assert len(load.mismatches) == 0 and load.verdict.loads  # no invented mlp / bfloat16 mismatches
    sc = load.trace.scenario
    assert (sc.model, sc.recipe, sc.dtype, sc.world_size, sc.mesh) == (
        "llama-tiny",
        "hsdp",
        "float32",
        8,
        (2, 4),
    )
    assert "It loads cleanly." in same.stdout
    fewer = run_cli("load", str(trace), "-W", "6", "--recipe", "fsdp")  # the saved model and dtype
    assert fewer.returncode == 0, fewer.stderr
    assert "Resharding 8 → 6 ranks (hsdp → fsdp) is fine; it loads cleanly." in fewer.stdout
    # The user's own model factory, as pkg.module:function (imported from the current directory).
    mlp = tmp_path / "m.json"
    assert (
        run_cli(
            "simulate",
            "-W",
            "4",
            "--recipe",
            "fsdp",
            "--dtype",
            "float32",
            "--trace",
            str(mlp),
            "-q",
        ).returncode
        == 0
    )
    mine = run_cli(
        "load",
        str(mlp),
        "--model",
        "load_cases:RenamedNormMLP",
        "-W",
        "2",
        "--recipe",
        "fsdp",
        cwd=Path(__file__).parent,
    )
    assert mine.returncode == 1, mine.stderr  # a gate: the load would fail
    assert "1 thing breaks the load: a renamed module ('norm' → 'ln')" in mine.stdout
    bad = run_cli("load", str(mlp), "--model", "no_such_pkg.models:build")
    assert bad.returncode == 2 and "cannot import 'no_such_pkg.models'" in bad.stderr


def test_cli_help_texts_say_the_real_defaults_with_examples():
    load = run_cli("load", "--help").stdout
    assert (
        "pkg.module:function" in load
        and "examples:" in load
        and "dcpviz load path/to/ckpt --model" in load
    )
    assert "(default: the saved recipe)" in load and "(default hsdp)" not in load
    sim = run_cli("simulate", "--help").stdout
    assert "(default: hsdp)" in sim and "examples:" in sim
    assert "examples:" in run_cli("show", "--help").stdout


def _only_a_teardown_abort(job: subprocess.CompletedProcess) -> None:
    """Accept a failed exit only when every rank's checks passed and the one that did not leave the
    process group died of gloo's known abort at shutdown (a worker thread still joinable at exit);
    anything else fails the test."""
    died = [r for r in (0, 1) if f"rank {r}: left the process group" not in job.stdout]
    assert died, job.stderr[-3000:]
    assert "terminate called without an active exception" in job.stderr, job.stderr[-3000:]
    warnings.warn(
        f"rank(s) {died} aborted in gloo's teardown after every check passed", stacklevel=2
    )


def test_load_resized_fills_fsdp_shards_in_a_real_job(tmp_path):
    """The size hint's fix in a real 2-process torchrun job (examples/resized_vocab_job.py): a
    1000-token llama-tiny saved with FSDP, loaded into a 1024-token one; every rank checks its
    shards against the saved values (and the new rows are left as they were)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(repo / "examples" / "resized_vocab_job.py"),
            str(tmp_path / "ckpt"),
            "llama-tiny",
            "1000",
            "1024",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for rank in (0, 1):
        assert f"rank {rank}: every check passed" in job.stdout, job.stderr[-3000:]
    if job.returncode != 0:
        _only_a_teardown_abort(job)
    assert (
        "rank 1: tok_embeddings.weight rows 512-1023: 488 saved rows loaded, 24 new rows left as they were"
        in job.stdout
    )
    assert "every other tensor holds exactly the saved values" in job.stdout


def test_verdict_names_training_state_hints_that_do_not_stop_the_load():
    saved = dcpviz.simulate_save(
        dcpviz.Scenario(
            model="mlp", world_size=4, recipe="fsdp", optimizer="adamw", state="torchtitan"
        )
    )
    load = dcpviz.simulate_load(
        saved,
        dcpviz.Scenario(
            model="mlp", world_size=2, recipe="fsdp", optimizer="adamw", state="torchtitan"
        ),
    )
    assert load.verdict.loads
    assert load.verdict.line == (
        "Resharding 4 → 2 ranks is fine; it loads, but data-loader positions of 2 "
        "data-parallel rank(s) are read by no target rank."
    )
