"""The load simulation allocates no tensor memory: DCP's set_up_planner materialises meta
tensors (``_init_state_dict``), so the engine hands it storage-less FakeTensors instead."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.distributed.checkpoint import DefaultLoadPlanner

import dcpviz


class RecordingPlanner(DefaultLoadPlanner):
    """Records, after DCP's own set_up_planner ran (and with it _init_state_dict), whether any
    tensor the planner now holds is backed by real memory. Shared across the per-rank copies."""

    seen: list[tuple[int, int]] = []  # (tensors, tensors with real storage) per rank

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
        super().set_up_planner(state_dict, metadata, is_coordinator)
        from torch.distributed.tensor import DTensor

        tensors = real = 0
        for v in self.state_dict.values():
            if isinstance(v, DTensor):
                v = v._local_tensor
            if isinstance(v, torch.Tensor):
                tensors += 1
                real += v.untyped_storage().device.type != "meta"
        RecordingPlanner.seen.append((tensors, real))


class Huge(nn.Module):
    """One 4 TiB weight (2**20 x 2**20 float32) and a bias: far beyond any machine's memory."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2**20, 2**20)


def _load(monkeypatch=None):
    RecordingPlanner.seen = []
    save = dcpviz.simulate_save(dcpviz.Scenario(model=Huge, world_size=4, recipe="fsdp"))
    return dcpviz.simulate_load(
        save, dcpviz.Scenario(model=Huge, world_size=8, recipe="fsdp"), RecordingPlanner
    )


def test_a_4_tib_model_plans_without_any_storage():
    load = _load()
    assert load.ok, load.errors
    assert RecordingPlanner.seen == [(2, 0)] * 8
    # And the plan is real: every rank reads its 2**17 rows of the weight, from one saved shard.
    w = load.read_items[load.read_items["fqn"] == "proj.weight"]
    assert sorted(w["rank"]) == list(range(8))
    assert (w["lengths"] == (2**17, 2**20)).all()
    assert load.rank_volume["nbytes"].astype("int64").sum() == (2**40 + 2**20) * 4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_storage_check_can_fail(monkeypatch):
    """Without the storage-less conversion DCP materialises the meta tensors; the recording
    planner must see real storage then (small model: the allocation is harmless)."""
    import dcpviz.engine.simulate.load as sl

    monkeypatch.setattr(sl, "to_storageless", lambda sd, mode, *more: sd)
    RecordingPlanner.seen = []
    save = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    dcpviz.simulate_load(
        save, dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"), RecordingPlanner
    )
    assert RecordingPlanner.seen and all(real > 0 for _, real in RecordingPlanner.seen)
