"""recipe='torchtitan' in real processes: a pp x dp_shard save on 4 gloo ranks writes what the
simulation plans (each stage's ranks hold only their stage's keys)."""

from __future__ import annotations

import pytest

import dcpviz

SCENARIO = dict(
    model="moe-tiny",
    world_size=4,
    mesh=(2, 2),
    mesh_dim_names=("pp", "dp_shard"),
    recipe="torchtitan",
)


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


def test_real_load_into_other_stages_reads_what_the_simulation_plans(pair):
    """The pp2 x dp_shard2 checkpoint loaded by 4 real ranks on 4 stages (pp4): every rank passes
    its own stage's keys to dcp.load (key sets differ on every rank), and the load neither hangs
    nor fails; each rank reads what simulate_load plans (in dcp.load's sorted key order)."""
    _, _, ckpt = pair
    target = dcpviz.Scenario(
        model="moe-tiny", world_size=4, mesh=(4,), mesh_dim_names=("pp",), recipe="torchtitan"
    )
    run = dcpviz.run_load(ckpt, target, timeout=240)
    assert run.ok, run.errors
    sim = dcpviz.simulate_load(ckpt, target)
    assert sim.verdict.clean and run.trace.mismatches == sim.trace.mismatches == ()
    for phase in ("local_plans", "final_plans"):
        real = [[run.trace.reads[i] for i in p.items] for p in getattr(run.trace, phase)]
        simulated = [[sim.trace.reads[i] for i in p.items] for p in getattr(sim.trace, phase)]
        assert [sorted(map(repr, r)) for r in real] == [sorted(map(repr, r)) for r in simulated], (
            phase
        )
    keys = [{run.trace.reads[i].fqn for i in p.items} for p in run.trace.final_plans]
    assert all(not keys[a] & keys[b] for a in range(4) for b in range(a + 1, 4))


def test_the_capture_describes_every_stages_dtensors_as_the_simulation_does(pair):
    """run_save records with a RecordingSavePlanner in each of the 4 gloo ranks, and its trace's
    layouts are the coordinator's capture. The coordinator (rank 0) holds only stage 0's keys:
    every later stage's DTensors reach it with their rank's local plan, so the tensors table
    shows stage 1's keys with their real placements (not as plain tensors), as simulate_save
    does for the same layout."""
    run, sim, _ = pair
    columns = ["fqn", "placements", "mesh"]
    real = run.tensors[columns].sort_values("fqn").reset_index(drop=True)
    simulated = sim.tensors[columns].sort_values("fqn").reset_index(drop=True)
    stage1 = dict(zip(real["fqn"], real["placements"]))
    assert stage1["output.weight"] != "(plain tensor)", stage1
    assert stage1["layers.3.moe.experts.w2"] != "(plain tensor)", stage1
    assert real.equals(simulated), real.compare(simulated)
    assert set(run.trace.layouts) == set(sim.trace.layouts)
    assert not any("sent no DTensor layouts" in n for n in run.trace.notes), run.trace.notes
    assert "rank-specific-value" not in set(run.checks["check"]), run.checks


def test_a_load_capture_checks_every_stages_keys_as_the_simulation_does(pair):
    """A real 4-rank gloo dcp.load through RecordingLoadPlanner into pp2 x dp_shard2, where only
    stage 1 (ranks 2, 3) asks for a key the checkpoint lacks (dropped silently under
    allow_partial_load) and holds a float64 copy of a float32 key (cast silently). The
    coordinator (rank 0, stage 0) holds neither: the captured trace sees them because each rank's
    values ride with its local plan, and its wanted values and mismatches equal simulate_load's
    for the same target and planner."""
    from run_helpers import titan_last_stage_drift
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from dcpviz.engine.run.launch import launch_recorded, resolve_device
    from dcpviz.engine.run.load import load_job
    from dcpviz.results import LoadResult

    _, _, ckpt = pair
    target = dcpviz.Scenario(**SCENARIO, state=titan_last_stage_drift)
    planner = DefaultLoadPlanner(allow_partial_load=True)
    scenario, backend, device = resolve_device(target)
    outcome, captured = launch_recorded(
        load_job, scenario, planner, ckpt.resolve(), backend, device, 240, "spawn"
    )
    assert not outcome.errors, outcome.errors  # the load went on
    assert captured is not None and captured.source == "capture"
    sim = dcpviz.simulate_load(ckpt, target, planner=planner)
    found = {(m.fqn, m.kind, m.ranks) for m in captured.mismatches}
    assert ("output.bias", "missing", (2, 3)) in found, captured.mismatches
    assert ("norm.weight", "dtype", (2, 3)) in found, captured.mismatches
    assert captured.mismatches == sim.trace.mismatches

    def wanted(trace):  # in key order: dcp.load hands the planner its keys sorted
        return [sorted((trace.wanted[i] for i in ids), key=repr) for ids in trace.wanted_by_rank]

    assert wanted(captured) == wanted(sim.trace)
    checks = LoadResult(captured).checks
    assert {"output.bias", "norm.weight"} <= set(checks["fqn"]), checks
    assert not any("sent no state-dict values" in n for n in captured.notes), captured.notes
