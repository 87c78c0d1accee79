"""recipe='torchtitan' in real processes: a pp x dp_shard save on 4 gloo ranks writes what the
simulation plans (each stage's ranks hold only their stage's keys)."""

from __future__ import annotations

import pytest

import dcpviz

SCENARIO = dict(model="moe-tiny", world_size=4, mesh=(2, 2), mesh_dim_names=("pp", "dp_shard"), recipe="torchtitan")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    sc = dcpviz.Scenario(**SCENARIO)
    ckpt = tmp_path_factory.mktemp("titan") / "ckpt"
    run = dcpviz.run_save(sc, ckpt, timeout=240)
    assert run.ok, run.errors
    return run, dcpviz.simulate_save(sc), ckpt


def _plans(result, phase):
    return [[result.trace.items[i] for i in p.items] for p in getattr(result.trace, phase)]


def test_real_pp_run_writes_what_the_simulation_plans(pair):
    run, sim, _ = pair
    for phase in ("local_plans", "global_plans", "final_plans"):
        assert _plans(run, phase) == _plans(sim, phase), phase
    assert run.trace.metadata.tensors == sim.trace.metadata.tensors
    for name in ("write_items", "dedup", "rank_volume", "chunks"):
        assert getattr(run, name).equals(getattr(sim, name)), name


def test_each_stage_wrote_only_its_own_keys(pair):
    run, _, _ = pair
    wi = run.write_items
    stage0 = set(wi[wi["rank"].isin([0, 1])].fqn)
    stage1 = set(wi[wi["rank"].isin([2, 3])].fqn)
    assert "tok_embeddings.weight" in stage0 and "output.weight" in stage1
    assert not stage0 & stage1
    assert "layers.0.moe.experts.w1" in stage0 and "layers.3.moe.experts.w2" in stage1
