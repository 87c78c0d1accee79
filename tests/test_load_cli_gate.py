"""`dcpviz load` decides (issue 19, item 6): exit 0 clean, 1 when the load would fail or lose data,
2 on bad input; `-q` prints just the verdict; a trace never makes dcpviz import or call a name
it holds; -W must be a positive number of ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import dcpviz
from dcpviz.cli import main

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def mlp_trace(tmp_path_factory):
    res = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))
    return res.to_json(tmp_path_factory.mktemp("t") / "s.json")


def with_scenario(trace_path: Path, out: Path, **fields) -> Path:
    """A copy of a save trace whose saved job names other factories (as a trace from another
    machine could)."""
    doc = json.loads(trace_path.read_text())
    doc["trace"]["scenario"].update(fields)
    out.write_text(json.dumps(doc))
    return out


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dcpviz", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_clean_load_exits_0_and_quiet_prints_just_the_verdict(mlp_trace, capsys):
    assert main(["load", str(mlp_trace), "-W", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines() == [out.strip()] and out.startswith(
        "Resharding 4 → 2 ranks is fine"
    )


def test_failing_load_exits_1_and_quiet_prints_the_verdict(mlp_trace, capsys, monkeypatch):
    """Before: `-q` printed nothing and exited 0 when every rank failed."""
    monkeypatch.chdir(TESTS)  # load_cases is importable from here, as a user's package would be
    code = main(["load", str(mlp_trace), "--model", "load_cases:compiled_mlp", "-W", "2", "-q"])
    out = capsys.readouterr().out
    assert code == 1
    assert len(out.strip().splitlines()) == 1 and "break" in out and "_orig_mod." in out


def test_data_losing_load_exits_1(mlp_trace, capsys, monkeypatch):
    """allow_partial_load past a compile prefix goes through and restores nothing: exit 1."""
    monkeypatch.chdir(TESTS)
    code = main(
        [
            "load",
            str(mlp_trace),
            "--model",
            "load_cases:compiled_mlp",
            "-W",
            "2",
            "-q",
            "--allow-partial-load",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "loses data" in out and "restores 0 of" in out
    # Declared unused on purpose, the same load is clean.
    assert (
        main(
            [
                "load",
                str(mlp_trace),
                "--model",
                "load_cases:compiled_mlp",
                "-W",
                "2",
                "-q",
                "--allow-partial-load",
                "--expected-unused",
                "*",
            ]
        )
        == 0
    )
    capsys.readouterr()


@pytest.mark.parametrize("world", ["0", "-3"])
@pytest.mark.parametrize("command", ["load", "simulate"])
def test_world_size_must_be_positive(mlp_trace, capsys, world, command):
    """Before: -W 0 silently became 8."""
    args = ["load", str(mlp_trace)] if command == "load" else ["simulate"]
    assert main([*args, "-W", world, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dcpviz: error: --world-size") and "positive" in err


def test_a_trace_naming_os_abort_is_never_called(mlp_trace, tmp_path):
    """Before: `dcpviz load TRACE` imported and called the factory named in the JSON (the
    process died of SIGABRT). Now it names what to pass and exits 2."""
    bad = with_scenario(mlp_trace, tmp_path / "abort.json", model="callable:os.abort")
    r = run_cli("load", str(bad), cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "--model os:abort" in r.stderr and "never imports or calls" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_trace_never_imports_the_saved_factory_but_the_flag_does(
    mlp_trace, tmp_path, monkeypatch, capsys
):
    """A module whose import leaves a mark: named in the trace, it is not imported (the message
    says what to pass); passed by the user as --model, it is used."""
    (tmp_path / "usermodels_mark.py").write_text(
        "import pathlib\npathlib.Path('imported').write_text('yes')\n"
        "def build():\n    from dcpviz.engine.job.models import MLP\n    return MLP()\n"
    )
    trace = with_scenario(
        mlp_trace,
        tmp_path / "t.json",
        model="callable:usermodels_mark.build",
        recipe="callable:usermodels_mark.shard",
    )
    monkeypatch.chdir(tmp_path)
    assert main(["load", str(trace), "-W", "2"]) == 2
    err = capsys.readouterr().err
    assert not (tmp_path / "imported").exists()
    assert "--model usermodels_mark:build --recipe usermodels_mark:shard" in err
    assert "the saved model factory was usermodels_mark.build" in err.lower()
    assert (
        main(
            [
                "load",
                str(trace),
                "-W",
                "2",
                "--model",
                "usermodels_mark:build",
                "--recipe",
                "fsdp",
                "-q",
            ]
        )
        == 0
    )
    assert (tmp_path / "imported").exists()
    sys.modules.pop("usermodels_mark", None)
    capsys.readouterr()


def test_a_captured_trace_says_what_to_pass(mlp_trace, tmp_path, capsys):
    captured = with_scenario(mlp_trace, tmp_path / "c.json", model="captured", recipe="captured")
    assert main(["load", str(captured)]) == 2
    err = capsys.readouterr().err
    assert (
        "--model pkg.module:function --recipe pkg.module:function" in err
        and "recording planner" in err
    )
    # With them it works (the model and recipe are the user's to name).
    assert main(["load", str(captured), "--model", "mlp", "--recipe", "fsdp", "-q"]) == 0
    capsys.readouterr()


def test_show_is_a_gate_too(mlp_trace, tmp_path, capsys):
    """`dcpviz show` of a load trace exits as `dcpviz load` did: 1 for a load that breaks, 0 for a
    clean one (commands are gates on every subcommand)."""
    saved = dcpviz.load_trace(mlp_trace)
    clean = dcpviz.simulate_load(
        saved, target=dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
    )
    broken = dcpviz.simulate_load(
        saved, target=dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")
    )
    assert clean.verdict.clean and not broken.verdict.clean
    assert main(["show", str(clean.to_json(tmp_path / "clean.json"))]) == 0
    assert main(["show", str(broken.to_json(tmp_path / "broken.json"))]) == 1
    assert main(["show", str(mlp_trace)]) == 0
