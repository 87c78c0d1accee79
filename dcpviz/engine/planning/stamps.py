"""The stamps every trace carries, whichever source made it: the scenario as plain data, the
torch version, the time, and a planner failure as an error record."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

import torch

from dcpviz.core.trace import ErrorRecord, ScenarioInfo

if TYPE_CHECKING:  # a Scenario is only described here; capture must not load the presets
    from dcpviz.engine.job.scenario import Scenario


def error_record(phase: str, rank: int | None, exc: BaseException) -> ErrorRecord:
    """A planner failure as trace data."""
    return ErrorRecord(phase=phase, rank=rank, exc_type=type(exc).__name__, message=str(exc))


def scenario_info(scenario: Scenario) -> ScenarioInfo:
    """The trace's plain-data description of a Scenario."""
    d = scenario.describe()
    return ScenarioInfo(
        model=d["model"],
        world_size=d["world_size"],
        mesh=tuple(d["mesh"]),
        mesh_dim_names=tuple(d["mesh_dim_names"]),
        recipe=d["recipe"],
        dtype=d["dtype"],
        device=d["device"],
        optimizer=d["optimizer"],
        state=d["state"],
    )


def torch_version() -> str:
    """The torch version a trace was made with."""
    return torch.__version__


def now() -> str:
    """The time a trace was made (UTC, ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
