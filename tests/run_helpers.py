"""Module-level helpers that real worker processes import by name (spawned workers get this
directory on sys.path from the parent): planners and model factories that fail on purpose."""

from __future__ import annotations

import os
import time

import torch.distributed as dist
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

from dcpviz.models import MLP


class FailingLocalPlanner(DefaultSavePlanner):
    """DCP's default planner, except that rank 1's create_local_plan raises."""

    def create_local_plan(self):
        if dist.get_rank() == 1:
            raise RuntimeError("planted failure in create_local_plan on rank 1")
        return super().create_local_plan()


def model_failing_on_rank1() -> MLP:
    if dist.get_rank() == 1:
        raise ValueError("planted failure in the model factory on rank 1")
    return MLP()


def model_hanging_on_rank1() -> MLP:
    """Rank 1 never returns (a hung job); rank 0 goes on into dcp.save and waits for it there."""
    if dist.get_rank() == 1:
        time.sleep(600)
    return MLP()


def model_sleeping_everywhere() -> MLP:
    """Writes this worker's pid where the test says, then hangs (for the Ctrl-C test)."""
    d = os.environ.get("DCPVIZ_TEST_PID_DIR")
    if d:
        with open(os.path.join(d, f"{os.getpid()}.pid"), "w") as fh:
            fh.write(str(dist.get_rank()))
    time.sleep(600)
    return MLP()
