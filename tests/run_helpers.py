"""Module-level helpers that real worker processes import by name (spawned workers get this
directory on sys.path from the parent): planners and model factories that fail (or read wrongly) on purpose."""

from __future__ import annotations

import dataclasses
import os
import time

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import MetadataIndex

from dcpviz.engine.job.models import MLP


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
            dataclasses.replace(
                ri,
                storage_index=MetadataIndex(
                    ri.storage_index.fqn, other[tuple(ri.storage_index.offset)]
                ),
            )
            if ri.storage_index.fqn == self.key
            else ri
            for ri in plan.items
        ]
        return dataclasses.replace(plan, items=items)


class RankState(torch.nn.Module):
    """Python state that differs per rank (a data-loader position, as a seed for this rank's RNG):
    the model's state dict saves it as ``rank_state._extra_state`` on every rank, under one key."""

    def get_extra_state(self):
        rank = dist.get_rank() if dist.is_initialized() else 0
        return {"sample_idx": 1000 * rank, "seed": 17 + rank}

    def set_extra_state(self, state):
        self.loaded = state


class PerRankKeyState(RankState):
    """The fix: each rank's value under a key of its own (as torchtitan's dp_rank_{i})."""

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        rank = dist.get_rank() if dist.is_initialized() else 0
        value = out.pop(prefix + "_extra_state")
        out[f"{prefix}rank{rank}._extra_state"] = value
        return out


def mlp_with_rank_state() -> MLP:
    """The MLP plus a per-rank Python value under one key (lost to DCP's dedup)."""
    m = MLP()
    m.rank_state = RankState()
    return m


def mlp_with_per_rank_keys() -> MLP:
    """The MLP plus a per-rank Python value under a key of its own per rank (nothing lost)."""
    m = MLP()
    m.rank_state = PerRankKeyState()
    return m


def capture_rank_values_job(rank, world, report, ckpt_dir, trace_path, plain_dir):
    """A user's own dcp.save through a RecordingSavePlanner (capture), of a state with a per-rank
    Python value and a per-rank plain tensor under shared keys; then the same save without the
    recorder, for the test to compare what DCP decided."""
    import torch.distributed.checkpoint as dcp

    import dcpviz

    state = {
        "w": torch.full((4,), float(rank)),
        "loader": {"position": 100 * rank},
        "shared": 7,
        "bias": torch.ones(3),
    }
    rec = dcpviz.RecordingSavePlanner(trace_path)
    md = dcp.save(state, checkpoint_id=ckpt_dir, planner=rec)
    rec.complete(md)
    dcp.save(state, checkpoint_id=plain_dir, planner=DefaultSavePlanner())
    return {"problems": list(rec.problems)}


def periodic_cached_saves_job(rank, world, report, root):
    """A user's periodic dcp.save with DCP's plan caching, through one RecordingSavePlanner:
    a per-rank value under a shared key (lost at every save), equal on save 1 and 2 in plan;
    on save 3 rank 1 adds a key (its plan changes: a cache miss)."""
    import torch.distributed.checkpoint as dcp

    import dcpviz

    rec = dcpviz.RecordingSavePlanner(
        os.path.join(root, "plan_{n}.json"), DefaultSavePlanner(enable_plan_caching=True)
    )
    for step in range(3):
        state = {"w": torch.ones(4), "loader": {"position": 100 * rank + step}}
        if step == 2 and rank == 1:
            state["extra"] = torch.zeros(2)
        md = dcp.save(state, checkpoint_id=os.path.join(root, f"ck{step}"), planner=rec)
        rec.complete(md)
    return {"problems": list(rec.problems)}


def diverged_values_job(rank, world, report, root):
    """Values DCP deduplicates that look alike to a sampled fingerprint or are made alike in
    form only: a Replicate() DTensor whose replicas differ (from_local(run_check=False)), a
    2 MiB tensor that differs per rank in one element between samples, a set of strings that
    is equal on every rank (each process pickles it in its own order), and a dict equal on
    every rank but built in another order."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate

    import dcpviz

    mesh = init_device_mesh("cpu", (world,))
    rep = DTensor.from_local(torch.full((4, 2), float(rank)), mesh, [Replicate()], run_check=False)
    big = torch.zeros(1 << 19)  # 2 MiB of float32
    big[12345] = float(rank)  # not one of 65536 evenly spaced samples
    same_rep = DTensor.from_local(torch.ones(3), mesh, [Replicate()], run_check=False)
    names = {f"layer{i}.weight" for i in range(40)}
    if rank == 1:  # the same set, grown and shrunk: its table, so its order, differs from rank 0's
        names |= {f"tmp{i}" for i in range(1000)}
        names -= {f"tmp{i}" for i in range(1000)}
    order = sorted(names) if rank == 0 else sorted(names, reverse=True)
    state = {
        "rep": rep,
        "same_rep": same_rep,
        "big": big,
        "names": names,
        "table": {k: 1 for k in order},
    }
    rec = dcpviz.RecordingSavePlanner(os.path.join(root, "t.json"))
    md = dcp.save(state, checkpoint_id=os.path.join(root, "ck"), planner=rec)
    rec.complete(md)
    return {
        "problems": list(rec.problems),
        "hashseed": os.environ.get("PYTHONHASHSEED"),
        "set_order": list(names)[:3],
    }


def gathered_position_state(model, optimizer, rank):
    """dcpviz's own advice for a per-rank value: gather it into one value every rank saves."""
    positions = [None] * dist.get_world_size()
    dist.all_gather_object(positions, 100 * rank)
    return {"model": model.state_dict(), "loader": {"positions": positions}}


def broadcast_seed_state(model, optimizer, rank):
    """A seed chosen on rank 0 and broadcast (the same on every rank after the collective)."""
    obj = [{"seed": 1234}] if rank == 0 else [None]
    dist.broadcast_object_list(obj, src=0)
    return {"model": model.state_dict(), "seed": obj[0]}


def equal_set_state(model, optimizer, rank):
    """A set of strings equal on every rank, whose iteration order differs per rank (rank 1's
    table grew and shrank): its pickle differs, its value does not."""
    names = {f"layer{i}.weight" for i in range(40)}
    if rank % 2:
        names |= {f"tmp{i}" for i in range(1000)}
        names -= {f"tmp{i}" for i in range(1000)}
    return {"model": model.state_dict(), "frozen": names}


def lbfgs_optimizer(params):
    """An optimizer whose step needs a closure."""
    return torch.optim.LBFGS(params)


def optimizer_with_a_foreign_parameter(params):
    """An optimizer holding a parameter the model does not have."""
    return torch.optim.AdamW([*params, torch.nn.Parameter(torch.zeros(3))])


def full_tensor_state(model, optimizer, rank):
    """An EMA kept as a sharded DTensor, saved gathered (full_tensor(): a functional collective)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    ema = DTensor.from_local(torch.arange(4.0) + 4 * rank, mesh, [Shard(0)], run_check=False)
    return {"model": model.state_dict(), "ema_full": ema.full_tensor()}


def titan_last_stage_drift(model, optimizer, rank):
    """A torchtitan target whose last pp stage disagrees with the checkpoint and loads anyway:
    it asks for a key the checkpoint lacks (``output.bias``, skipped under
    ``allow_partial_load``) and holds ``norm.weight`` as float64 (DCP casts silently). Only
    the last stage's ranks hold ``output.weight`` and ``norm.weight``, so the coordinator
    (stage 0) holds none of it."""
    sd = model.state_dict()
    if "output.weight" in sd:
        sd["output.bias"] = torch.zeros(3)
        sd["norm.weight"] = sd["norm.weight"].to(torch.float64)
    return sd
