"""dcpviz: see what PyTorch Distributed Checkpoint plans.

    import dcpviz
    sc = dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    save = dcpviz.simulate_save(sc)
    save.write_items, save.dedup, save.rank_volume, save.chunks
    load = dcpviz.simulate_load(save, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"))
    load.read_items, load.mismatches, load.hints, load.rank_volume

Public names are loaded on first use (PEP 562), so ``import dcpviz; dcpviz.load_trace(path)``
imports neither torch nor plotly: a trace captured on a cluster opens without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dcpviz.core.errors import DcpvizError, RecordingWarning
from dcpviz.core.version import __version__

# public name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "LoadResult": "dcpviz.results",
    "SaveResult": "dcpviz.results",
    "load_trace": "dcpviz.results",
    "report": "dcpviz.html_report",
    "explore": "dcpviz.widgets",
    "simulate_save": "dcpviz.api",
    "simulate_load": "dcpviz.api",
    "run_save": "dcpviz.api",
    "run_load": "dcpviz.api",
    "inspect_checkpoint": "dcpviz.api",
    "diff": "dcpviz.api",
    "DiffResult": "dcpviz.results_diff",
    "SafeFileSystemReader": "dcpviz.engine.checkpoint.reader",
    "SafeLoadPlanner": "dcpviz.engine.checkpoint.byteio",
    "RecordingSavePlanner": "dcpviz.engine.capture.save",
    "RecordingLoadPlanner": "dcpviz.engine.capture.load",
    "as_rank": "dcpviz.engine.job.statedict",
    "RenamingLoadPlanner": "dcpviz.engine.checkpoint.fix_planner",
    "load_resized": "dcpviz.engine.checkpoint.fix_planner",
    "Scenario": "dcpviz.engine.job.scenario",
    "plan_series": "dcpviz.analysis.save.series",
}

if TYPE_CHECKING:
    from dcpviz.analysis.save.series import plan_series
    from dcpviz.api import (
        diff,
        inspect_checkpoint,
        run_load,
        run_save,
        simulate_load,
        simulate_save,
    )
    from dcpviz.engine.capture.load import RecordingLoadPlanner
    from dcpviz.engine.capture.save import RecordingSavePlanner
    from dcpviz.engine.checkpoint.byteio import SafeLoadPlanner
    from dcpviz.engine.checkpoint.fix_planner import RenamingLoadPlanner, load_resized
    from dcpviz.engine.checkpoint.reader import SafeFileSystemReader
    from dcpviz.engine.job.scenario import Scenario
    from dcpviz.engine.job.statedict import as_rank
    from dcpviz.html_report import report
    from dcpviz.results import LoadResult, SaveResult, load_trace
    from dcpviz.results_diff import DiffResult
    from dcpviz.widgets import explore


# public subpackages reachable as attributes after a plain `import dcpviz` (dcpviz.views.dedup(...))
_SUBPACKAGES = ("views", "widgets")


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"dcpviz.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dcpviz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Every public name, loaded or not."""
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))


__all__ = [
    "DcpvizError",
    "DiffResult",
    "LoadResult",
    "RecordingLoadPlanner",
    "RecordingSavePlanner",
    "RecordingWarning",
    "RenamingLoadPlanner",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
    "SaveResult",
    "as_rank",
    "Scenario",
    "__version__",
    "diff",
    "explore",
    "inspect_checkpoint",
    "load_resized",
    "load_trace",
    "plan_series",
    "report",
    "run_load",
    "run_save",
    "simulate_load",
    "simulate_save",
]
