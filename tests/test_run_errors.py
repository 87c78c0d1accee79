"""run_save when things go wrong: the error names the rank, nothing hangs, nothing is left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import run_helpers
import torch

import dcpviz

TWO = dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")


def _gone(info) -> None:
    for pid in info.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # joined and reaped: not even a zombie
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", info.port), timeout=2).close()


def test_planner_raising_on_rank1_comes_back_with_its_rank(tmp_path):
    res = dcpviz.run_save(TWO, tmp_path / "ck", run_helpers.FailingLocalPlanner, timeout=120)
    assert not res.ok
    ranks = {e.rank for e in res.trace.errors}
    assert ranks == {1}, res.errors  # DCP raises on every rank; the failure is rank 1's
    err = res.trace.errors[0]
    assert err.exc_type == "RuntimeError" and "planted failure in create_local_plan" in err.message
    assert err.phase == "plan"  # DCP's own name for the step (reduce_scatter "plan")
    assert "run_helpers.py" in err.message  # where, without a traceback dump
    assert res.trace.global_plans is None and res.trace.local_plans[1] is None
    assert not (tmp_path / "ck" / ".metadata").exists()
    _gone(res.run_info)


def test_model_factory_raising_outside_dcp(tmp_path):
    sc = TWO.replace(model=run_helpers.model_failing_on_rank1)
    res = dcpviz.run_save(sc, tmp_path / "ck", timeout=120)
    assert not res.ok
    first = res.trace.errors[0]
    assert (
        first.rank == 1
        and first.phase == "build"
        and "planted failure in the model factory" in first.message
    )
    _gone(res.run_info)


def test_timeout_stops_every_process(tmp_path):
    sc = TWO.replace(model=run_helpers.model_hanging_on_rank1)
    t0 = time.monotonic()
    res = dcpviz.run_save(sc, tmp_path / "ck", timeout=6)
    assert time.monotonic() - t0 < 30
    assert res.run_info.timed_out and not res.ok
    err = res.trace.errors[-1]
    assert err.phase == "timeout" and "timeout=6s" in err.message and "rank 1" in err.message
    _gone(res.run_info)


def test_ctrl_c_stops_every_process(tmp_path):
    """SIGINT to the process calling run_save (only to it): its workers are stopped too."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = textwrap.dedent(f"""
        import dcpviz, run_helpers
        sc = dcpviz.Scenario(model=run_helpers.model_sleeping_everywhere, world_size=2, recipe="fsdp")
        dcpviz.run_save(sc, {str(tmp_path / "ck")!r}, timeout=300)
    """)
    env = {
        **os.environ,
        "DCPVIZ_TEST_PID_DIR": str(pid_dir),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a test runner's worker (pytest-xdist) may ignore
        # SIGINT, and an ignored signal stays ignored in its children.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 90
        while (
            len(list(pid_dir.iterdir())) < 2 and time.monotonic() < deadline and proc.poll() is None
        ):
            time.sleep(0.2)
        pids = [int(p.stem) for p in pid_dir.iterdir()]
        assert len(pids) == 2, (
            proc.stderr.read() if proc.poll() is not None else "workers never started"
        )
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"run_save did not stop within 60 s of Ctrl-C; its stderr:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in err
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_clear_errors_before_starting_anything(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.distcp").write_bytes(b"x")
    with pytest.raises(dcpviz.DcpvizError, match="not empty"):
        dcpviz.run_save(TWO, tmp_path / "full")
    with pytest.raises(dcpviz.DcpvizError, match="lambda"):
        dcpviz.run_save(TWO.replace(model=lambda: torch.nn.Linear(2, 2)), tmp_path / "a")
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        with pytest.raises(dcpviz.DcpvizError, match="needs 2 CUDA devices"):
            dcpviz.run_save(TWO.replace(device="cuda"), tmp_path / "b")
