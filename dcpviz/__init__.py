"""dcpviz: see what PyTorch Distributed Checkpoint plans.

    import dcpviz
    sc = dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    save = dcpviz.simulate_save(sc)
    save.write_items, save.dedup, save.rank_volume, save.chunks
    load = dcpviz.simulate_load(save, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"))
    load.read_items, load.mismatches, load.hints, load.rank_volume
"""

__version__ = "0.1.0"

from .byteio import SafeLoadPlanner
from .checkpoint import SafeFileSystemReader, inspect_checkpoint
from .engine.recording import RecordingSavePlanner
from .engine.recording_load import RecordingLoadPlanner
from .engine.run import run_save
from .engine.run_load import run_load
from .engine.simulate import simulate_save
from .engine.simulate_load import simulate_load
from .engine.statedict import as_rank
from .errors import DcpvizError, RecordingWarning
from .report import report
from .results import LoadResult, SaveResult, load_trace
from .scenario import Scenario
from .widgets import explore

__all__ = [
    "DcpvizError",
    "LoadResult",
    "RecordingLoadPlanner",
    "RecordingSavePlanner",
    "RecordingWarning",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
    "SaveResult",
    "as_rank",
    "Scenario",
    "__version__",
    "explore",
    "inspect_checkpoint",
    "load_trace",
    "report",
    "run_load",
    "run_save",
    "simulate_load",
    "simulate_save",
]
