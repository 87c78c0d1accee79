"""Long real runs show progress (issue 19, item 6): ranks done and the phase every other rank is in."""

from __future__ import annotations

import time

import dcpviz
from dcpviz.engine.run.procs import PROGRESS_AFTER_S, RunInfo, RunProgress, _Gather


def gather(world: int, phases: dict[int, str], done: tuple[int, ...]) -> _Gather:
    g = _Gather(
        info=RunInfo(backend="gloo", device="cpu", world_size=world, start_method="spawn"),
        world=world,
        t0=time.monotonic(),
    )
    g.info.phases.update(phases)
    g.payloads.update({r: {} for r in done})
    return g


def test_a_short_run_stays_quiet_and_a_long_one_shows_ranks_and_phases(capsys):
    g = gather(4, {0: "load", 1: "load", 2: "build", 3: "load"}, done=(0,))
    quiet = RunProgress(4, None, time.monotonic())
    quiet.tick(g)
    assert quiet.bar is None  # under PROGRESS_AFTER_S: nothing printed
    late = RunProgress(4, None, time.monotonic() - PROGRESS_AFTER_S - 1)
    late.tick(g)
    assert late.bar is not None and late.bar.n == 1  # shown (unless TQDM_DISABLE, as in this suite)
    late.close()
    asked = RunProgress(4, True, time.monotonic())
    asked.tick(g)
    asked.close()
    err = capsys.readouterr().err
    assert "real run" in err and "1/4" in err and "2 in load" in err and "1 in build" in err
    never = RunProgress(4, False, time.monotonic() - 100)
    never.tick(g)
    assert never.bar is None


def test_a_real_run_reports_progress(tmp_path, capsys):
    res = dcpviz.run_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"), tmp_path / "ck", progress=True
    )
    assert res.ok, res.errors
    err = capsys.readouterr().err
    assert "real run" in err and "2/2" in err
