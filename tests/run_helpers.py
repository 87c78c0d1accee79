"""Module-level helpers that real worker processes import by name (spawned workers get this
directory on sys.path from the parent): planners and model factories that fail (or read wrongly) on purpose."""

from __future__ import annotations

import dataclasses
import os
import time

import torch.distributed as dist
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import MetadataIndex

from dcpviz.engine.models import MLP


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


class SwapShardsPlanner(DefaultLoadPlanner):
    """DCP's default load planner, except that fc1.weight's two saved shards are read swapped:
    each rank gets the other shard's rows (same size, so dcp.load does not notice)."""

    key = "fc1.weight"

    def create_local_plan(self):
        plan = super().create_local_plan()
        chunks = self.metadata.state_dict_metadata[self.key].chunks
        first, second = (tuple(c.offsets) for c in chunks)
        other = {first: second, second: first}
        items = [
            dataclasses.replace(ri, storage_index=MetadataIndex(ri.storage_index.fqn, other[tuple(ri.storage_index.offset)]))
            if ri.storage_index.fqn == self.key else ri
            for ri in plan.items
        ]
        return dataclasses.replace(plan, items=items)
