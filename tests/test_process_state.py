"""A simulation leaves the process as it found it (issue 10, item 6).

Each fake ``init_process_group`` wraps ``sys.excepthook`` in a ``[rankN]:`` prefixer that calls the
previous hook; without restoring it, W=512 simulated ranks stack 512 wrappers and the next
traceback ends in ``RecursionError``. Everything else the fake worlds touch is compared too.
"""

from __future__ import annotations

import io
import logging
import sys

import pytest
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

import dcpviz

W = 512  # cheap with the mlp model, and deep enough to overflow the stack with stacked hooks


def _dtensor_cache_size() -> int:
    from torch.distributed.tensor import DTensor

    return DTensor._op_dispatcher.sharding_propagator.propagate_op_sharding.cache_info().currsize


def _process_state() -> dict:
    """Every piece of global state a fake world touches, in comparable form."""
    world = c10d._world
    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)),
    ]
    return {
        "excepthook": sys.excepthook,
        "initialized": dist.is_initialized(),
        "WORLD": c10d.GroupMember.WORLD,
        "default_pg": world.default_pg,
        "backend": c10d._backend,
        "init_method": c10d._default_pg_init_method,
        "pg_map": dict(world.pg_map),
        "pg_names": dict(world.pg_names),
        "pg_group_ranks": dict(world.pg_group_ranks),
        "pg_backend_config": dict(world.pg_backend_config),
        "group_count": world.group_count,
        "tags_to_pg": {k: list(v) for k, v in world.tags_to_pg.items()},
        "pg_to_tag": dict(world.pg_to_tag),
        "pg_coalesce_state": dict(world.pg_coalesce_state),
        "loggers": {
            lg.name: (lg.level, tuple(lg.handlers), lg.propagate, lg.disabled) for lg in loggers
        },
        "logging_disable": logging.root.manager.disable,
        "dtensor_cache": _dtensor_cache_size(),
    }


def _traceback_text() -> str:
    """What the current sys.excepthook prints for a fresh exception."""
    try:
        raise ValueError("after the simulation")
    except ValueError:
        info = sys.exc_info()
    old, sys.stderr = sys.stderr, io.StringIO()
    try:
        sys.excepthook(*info)
        return sys.stderr.getvalue()
    finally:
        sys.stderr = old


@pytest.fixture
def warm_imports():
    """Import what a simulation imports lazily (torch._dynamo via fully_shard registers loggers):
    new modules are not state the simulation changed."""
    dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))


def test_simulation_of_512_ranks_leaves_process_as_found(warm_imports):
    before = _process_state()
    before_loggers = before.pop("loggers")
    sc = dcpviz.Scenario(model="mlp", world_size=W, recipe="fsdp")
    save = dcpviz.simulate_save(sc)
    assert save.ok
    load = dcpviz.simulate_load(save, target=sc)
    assert load.ok
    after = _process_state()
    after_loggers = after.pop("loggers")
    assert after == before
    assert {n: after_loggers[n] for n in before_loggers} == before_loggers
    text = _traceback_text()
    assert "ValueError: after the simulation" in text
    assert "[rank" not in text and "RecursionError" not in text


def test_failing_simulation_leaves_process_as_found(warm_imports):
    """A recipe that raises on one simulated rank (the fake world's ``finally`` path)."""
    before = _process_state()
    before.pop("loggers")
    sc = dcpviz.Scenario(model="mlp", world_size=4, recipe=_recipe_failing_on_rank2)
    with pytest.raises(dcpviz.DcpvizError, match="rank 2's recipe fails"):
        dcpviz.simulate_save(sc)
    after = _process_state()
    after.pop("loggers")
    assert after == before


def _recipe_failing_on_rank2(model, mesh):
    if dist.get_rank() == 2:
        raise RuntimeError("rank 2's recipe fails")
    return model


def test_simulation_restores_logging_a_torch_call_changed(warm_imports, monkeypatch):
    """Whatever a fake world does to logging configuration is undone (the hook here stands in
    for torch code that sets a level or adds a handler while a rank is simulated)."""
    from dcpviz.engine.shortcuts import fastpath
    from dcpviz.engine.simulate import save as simulate

    target = logging.getLogger("torch.distributed")
    before = (target.level, tuple(target.handlers), target.propagate)
    original = simulate.rank_state_dict

    def noisy(scenario, rank):
        target.setLevel(logging.DEBUG)
        target.addHandler(logging.NullHandler())
        target.propagate = False
        return original(scenario, rank)

    monkeypatch.setattr(simulate, "rank_state_dict", noisy)
    monkeypatch.setattr(fastpath, "rank_state_dict", noisy)
    dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    assert (target.level, tuple(target.handlers), target.propagate) == before


def _stale_meshes_on_rank1(sc) -> tuple[int, list[str]]:
    """Be rank 1 (the user's own code after dcpviz ran) and build the scenario's model: how many
    DTensors it has, and which carry another rank's mesh coordinate."""
    from torch.distributed.tensor import DTensor

    from dcpviz.engine.job import statedict, world
    from dcpviz.engine.job.recipes import apply_recipe

    with world.fake_world(1, sc.world_size):
        model = apply_recipe(sc.recipe, statedict.build_model_on_meta(sc), statedict.build_mesh(sc))
        dtensors = {k: v for k, v in model.state_dict().items() if isinstance(v, DTensor)}
        stale = [
            k
            for k, v in dtensors.items()
            if v.device_mesh.get_coordinate() != world.expected_coordinate(v.device_mesh, 1)
        ]
    return len(dtensors), stale


TP_FSDP = dcpviz.Scenario(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp")


def test_a_later_job_gets_its_own_meshes_not_a_simulated_ranks():
    """DTensor's dispatch caches key sharding results by mesh equality, which ignores the rank:
    left filled by a simulation, they hand the next DTensors built on rank 1 the meshes of the
    simulation's ranks (here every one of the 21 DTensors was wrong before the fix)."""
    dcpviz.simulate_save(TP_FSDP)
    count, stale = _stale_meshes_on_rank1(TP_FSDP)
    assert count and stale == []


def test_as_rank_leaves_process_as_found(warm_imports):
    before = _process_state()
    before.pop("loggers")
    with dcpviz.as_rank(TP_FSDP, 3) as sd:
        assert dist.get_rank() == 3 and sd
    after = _process_state()
    after.pop("loggers")
    assert after == before
    count, stale = _stale_meshes_on_rank1(TP_FSDP)
    assert count and stale == []


def _plan_cache_entries() -> dict:
    from torch.distributed.checkpoint.planner import SavePlanner

    names = (
        "_cached_save_plan",
        "_cached_final_save_plan",
        "_cached_all_plans",
        "_cached_global_plan",
        "_cached_metadata",
    )
    return {n: dict(getattr(SavePlanner, n)) for n in names}


def test_simulation_with_plan_caching_leaves_dcps_plan_cache_as_found(warm_imports):
    """DCP's plan cache is class-level: a simulated rank's cached plan left there would be read
    by the next real save of this process (same cache key) as its own 'unchanged' plan."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    before = _plan_cache_entries()
    dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"),
        planner=DefaultSavePlanner(enable_plan_caching=True),
    )
    assert _plan_cache_entries() == before
