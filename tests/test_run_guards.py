"""run_save / run_load refuse what would fail in the workers, before anything starts, and leave
nothing behind (issue 10, items 10 and 11)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import run_helpers
import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

import dcpviz

TWO = dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
ROOT = Path(__file__).resolve().parents[1]


def _run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "train_job.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_script_without_main_guard_is_refused_before_any_worker(tmp_path):
    proc = _run_script(
        tmp_path,
        f"""
        import dcpviz
        sc = dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
        res = dcpviz.run_save(sc, {str(tmp_path / "ck")!r})
        print("errors:", res.errors)
    """,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert "DcpvizError" in err and "WorkerDied" not in proc.stdout + err
    assert "train_job.py" in err and "(line 4)" in err
    assert 'if __name__ == "__main__":\n        main()' in err
    assert not (tmp_path / "ck").exists()


def test_run_load_from_a_script_without_main_guard_is_refused(tmp_path):
    proc = _run_script(
        tmp_path,
        f"""
        import dcpviz

        def main():
            dcpviz.run_load({str(tmp_path / "nothing")!r}, dcpviz.Scenario(model="mlp", world_size=2))

        main()
    """,
    )
    assert proc.returncode == 1
    assert "run_load was called from the top level" in proc.stderr and "(line 7)" in proc.stderr


@pytest.mark.parametrize("guard", ['if __name__ == "__main__":', "if '__main__' == __name__:"])
def test_a_guarded_script_passes(tmp_path, guard):
    proc = _run_script(
        tmp_path,
        f"""
        from dcpviz.engine.run.procs import check_main_guard

        def main():
            check_main_guard("spawn", "run_save")
            print("passed")

        {guard}
            main()
    """,
    )
    assert proc.returncode == 0 and "passed" in proc.stdout, proc.stderr


def test_fork_needs_no_guard(tmp_path):
    proc = _run_script(
        tmp_path,
        """
        from dcpviz.engine.run.procs import check_main_guard
        check_main_guard("fork", "run_save")
        print("passed")
    """,
    )
    assert proc.returncode == 0 and "passed" in proc.stdout, proc.stderr


# -- the checkpoint directory -------------------------------------------------------------------
def test_a_refused_run_creates_no_directory(tmp_path):
    target = tmp_path / "new" / "ck"
    with pytest.raises(dcpviz.DcpvizError, match="lambda"):
        dcpviz.run_save(TWO.replace(model=lambda: torch.nn.Linear(2, 2)), target)
    assert not (tmp_path / "new").exists()
    with pytest.raises(dcpviz.DcpvizError, match="lambda"):
        dcpviz.run_save(TWO, target, planner=lambda: DefaultSavePlanner())
    assert not (tmp_path / "new").exists()


def test_a_directory_the_user_made_is_kept(tmp_path):
    target = tmp_path / "ck"
    target.mkdir()
    with pytest.raises(dcpviz.DcpvizError, match="lambda"):
        dcpviz.run_save(TWO.replace(model=lambda: torch.nn.Linear(2, 2)), target)
    assert target.is_dir()


def test_a_run_that_writes_nothing_leaves_no_directory(tmp_path):
    target = tmp_path / "new" / "ck"
    res = dcpviz.run_save(
        TWO.replace(model=run_helpers.model_failing_on_rank1), target, timeout=120
    )
    assert not res.ok
    assert not (tmp_path / "new").exists()
