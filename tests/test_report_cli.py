"""The offline HTML report and the `dcpviz` command line."""

import re
import subprocess
import sys

import pytest

import dcpviz


@pytest.fixture(scope="module")
def hsdp():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )


def test_report_is_self_contained(hsdp, tmp_path):
    path = dcpviz.report(hsdp, tmp_path / "r.html")
    text = path.read_text()
    # Nothing is fetched at view time: no external scripts, plotly.js itself is inline.
    assert not re.search(r"<script[^>]+src=", text)
    assert "plotly.js v" in text or "plotly.js" in text[:200_000]
    assert text.count("Plotly.newPlot") >= 4
    assert path.stat().st_size < 10 * 2**20
    # Its tables carry the result's numbers.
    for n in hsdp.rank_volume.nbytes:
        assert f'data-v="{int(n)}"' in text


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dcpviz", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_cli_simulate_writes_trace_and_report(tmp_path):
    r = run_cli(
        "simulate",
        "--model",
        "llama-tiny",
        "-W",
        "4",
        "--mesh",
        "2x2",
        "--recipe",
        "tp+fsdp",
        "--trace",
        str(tmp_path / "t.json"),
        "--report",
        str(tmp_path / "r.html"),
    )
    assert r.returncode == 0, r.stderr
    assert "tp+fsdp on 4 ranks" in r.stdout and "valid" in r.stdout
    res = dcpviz.load_trace(tmp_path / "t.json")
    assert res.trace.scenario.recipe == "tp+fsdp" and (tmp_path / "r.html").stat().st_size > 0
    shown = run_cli("show", str(tmp_path / "t.json"))
    assert shown.returncode == 0 and "tp+fsdp on 4 ranks" in shown.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["simulate", "--mesh", "2x3", "-W", "8"], "holds 6 ranks but world_size=8"),
        (["simulate", "--model", "gpt5"], "is not a preset"),
        (["simulate", "--mesh", "2y4"], "write the mesh as 2x4"),
        (["simulate", "--recipe", "hsdp", "-W", "8"], "needs a 2-D mesh"),
        (["show", "no-such-trace.json"], "does not exist"),
        (["simulate", "--world-size", "many"], "invalid int value"),
    ],
)
def test_cli_bad_input_is_one_clear_line(args, needle, tmp_path):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_show_malformed_trace(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"schema": "dcpviz.trace", "version": 1, "kind": "save", "trace": {"scenario": []}}'
    )
    r = run_cli("show", str(bad))
    assert r.returncode == 2 and "malformed" in r.stderr and "Traceback" not in r.stderr


def test_cli_load_from_a_save_trace(tmp_path):
    assert (
        run_cli(
            "simulate",
            "-W",
            "8",
            "--mesh",
            "2x4",
            "--recipe",
            "hsdp",
            "--model",
            "mlp",
            "--trace",
            str(tmp_path / "s.json"),
            "-q",
        ).returncode
        == 0
    )
    r = run_cli(
        "load",
        str(tmp_path / "s.json"),
        "--model",
        "mlp",
        "-W",
        "6",
        "--recipe",
        "fsdp",
        "--trace",
        str(tmp_path / "l.json"),
        "--report",
        str(tmp_path / "l.html"),
    )
    assert r.returncode == 0, r.stderr
    assert "plans cleanly" in r.stdout
    assert dcpviz.load_trace(tmp_path / "l.json").kind == "load"
    bad = run_cli("load", str(tmp_path / "missing-dir"), "-W", "2")
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_demo_next_steps_include_a_load_and_each_runs(tmp_path, monkeypatch, capsys):
    """The commands `make demo` suggests work as printed, and lead on to `dcpviz load`."""
    import shlex

    from dcpviz.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    steps = [
        line.split("#")[0].split()
        for line in out.splitlines()
        if line.strip().startswith(".venv/bin/dcpviz ")
    ]
    assert any(s[1] == "load" for s in steps), out
    for step in steps:
        if "--help" in step:
            continue
        assert main(step[1:]) == 0, shlex.join(step)
        said = capsys.readouterr().out
        if step[1] == "load":
            assert "mismatch" not in said.lower() or "no mismatch" in said.lower(), (
                said
            )  # the same model: it loads
    assert (tmp_path / "plan.json").exists() and (tmp_path / "load.html").stat().st_size > 0
