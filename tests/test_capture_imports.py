"""The recording planners are what users put inside their training job: importing one must not
load the simulator, its shortcuts, or the model presets and recipes (checked in a fresh process,
on what really lands in sys.modules; import-linter checks the same on the source)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Module names (after "dcpviz.engine.") a recorder must not load, in this layout and the flat
# one it replaced (so the test says the same thing about either).
FORBIDDEN = (
    "simulate",
    "shortcuts",
    "fastpath",
    "validation",
    "write_memo",
    "overlap",
    "phases",
    "models",
    "recipes",
    "job.models",
    "job.recipes",
    "storageless",
)


def _loaded_after(statement: str) -> list[str]:
    code = f"import json, sys\nimport dcpviz\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _forbidden(loaded: list[str]) -> list[str]:
    prefix = "dcpviz.engine."
    return [
        m
        for m in loaded
        if m.startswith(prefix)
        and any(m[len(prefix) :] == f or m[len(prefix) :].startswith(f + ".") for f in FORBIDDEN)
    ]


@pytest.mark.parametrize("name", ["RecordingSavePlanner", "RecordingLoadPlanner"])
def test_a_recording_planner_loads_no_simulator_shortcut_or_preset(name):
    loaded = _loaded_after(f"dcpviz.{name}")
    assert any(m.startswith("dcpviz.engine.") for m in loaded)  # the recorder itself did load
    assert _forbidden(loaded) == []


def test_the_check_sees_the_simulator_when_it_is_loaded():
    assert _forbidden(_loaded_after("dcpviz.simulate_save"))
