"""run_load: 4 real processes load the HSDP and TP+FSDP checkpoints of run_save.

The reads equal simulate_load's (in dcp.load's key order), and every chunk holds exactly the
bytes that were saved (the target starts as NaN, so a load that did nothing cannot pass).
"""

from __future__ import annotations

import os

import pytest

import dcpviz


@pytest.fixture(scope="module", params=["hsdp", "tp+fsdp"])
def loaded(request, real_save):
    sc, saved, ckpt = real_save(request.param)
    res = dcpviz.run_load(ckpt, sc, timeout=240)
    assert res.ok, res.errors
    return sc, saved, res, dcpviz.simulate_load(ckpt, sc), ckpt


def _reads(result, phase):
    return [[result.trace.reads[i] for i in p.items] for p in getattr(result.trace, phase)]


@pytest.mark.parametrize("phase", ["local_plans", "global_plans", "final_plans"])
def test_reads_equal_simulate_load_in_dcp_load_order(loaded, phase):
    """dcp.load sorts the state dict's keys before planning (state_dict_loader.load); the
    simulation plans in the model's order. Same reads, and the real order is the sorted one."""
    _, _, run, sim, _ = loaded
    real, simulated = _reads(run, phase), _reads(sim, phase)
    assert [sorted(map(repr, r)) for r in real] == [sorted(map(repr, r)) for r in simulated]
    assert real == [sorted(r, key=lambda x: x.fqn) for r in simulated]


def test_values_mismatches_and_tables_equal_simulate_load(loaded):
    _, _, run, sim, _ = loaded
    assert run.trace.mismatches == sim.trace.mismatches == ()
    wanted = [
        sorted((run.trace.wanted[i] for i in ids), key=lambda v: v.fqn)
        for ids in run.trace.wanted_by_rank
    ]
    assert wanted == [
        sorted((sim.trace.wanted[i] for i in ids), key=lambda v: v.fqn)
        for ids in sim.trace.wanted_by_rank
    ]
    assert run.trace.saved == sim.trace.saved and run.trace.saved_writers == sim.trace.saved_writers
    cols = ["rank", "reads", "nbytes"]
    assert run.rank_volume[cols].equals(sim.rank_volume[cols])


def test_every_chunk_holds_the_saved_bytes(loaded):
    """Same layout: each rank's chunks after the load hash like the chunks it saved — including
    replicas DCP's dedup did not write (HSDP) and strided shards (TP+FSDP)."""
    _, saved, run, _, _ = loaded
    assert saved.run_info.chunk_digests.keys() == run.run_info.chunk_digests.keys()
    for r, chunks in saved.run_info.chunk_digests.items():
        assert sorted(run.run_info.chunk_digests[r]) == sorted(chunks), f"rank {r}"


def test_load_processes_are_gone(loaded):
    _, _, run, _, _ = loaded
    assert run.run_info.exitcodes == [0, 0, 0, 0] and run.trace.source == "run"
    for pid in run.run_info.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_failing_load_names_ranks_and_keys_like_simulate_load(real_save, tmp_path):
    """The mlp checkpoint into a llama: every rank's plan fails; errors carry the ranks and the
    mismatches are the simulation's (DCP's own messages)."""
    _, _, ckpt = real_save("hsdp")
    target = dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")
    res = dcpviz.run_load(ckpt, target, timeout=240)
    assert not res.ok
    assert {e.rank for e in res.trace.errors} == {0, 1} and {e.phase for e in res.trace.errors} == {
        "plan"
    }
    assert "Missing key in checkpoint state_dict" in res.trace.errors[0].message
    sim = dcpviz.simulate_load(ckpt, target)
    assert set(res.trace.mismatches) == set(sim.trace.mismatches) and res.trace.mismatches
    assert res.trace.global_plans is None


def test_planted_metadata_never_reaches_a_worker(real_save, tmp_path):
    import pickle
    import shutil

    _, _, ckpt = real_save("hsdp")
    bad = shutil.copytree(ckpt, tmp_path / "bad")
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (bad / ".metadata").write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(dcpviz.DcpvizError, match="refusing to unpickle posix.system"):
        dcpviz.run_load(bad, dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    assert not marker.exists()


def test_a_load_that_reads_the_wrong_shard_is_caught(real_save):
    """Shards hold different bytes (values depend on the global position), so a planner that
    swaps fc1.weight's two shards gives every rank chunks that no longer hash as saved."""
    import run_helpers

    sc, saved, ckpt = real_save("hsdp")
    res = dcpviz.run_load(ckpt, sc, run_helpers.SwapShardsPlanner, timeout=240)
    assert res.ok, res.errors  # dcp.load itself does not notice
    for r, chunks in saved.run_info.chunk_digests.items():
        loaded = dict(((f, o), h) for f, o, h in res.run_info.chunk_digests[r])
        for fqn, offsets, digest in chunks:
            assert (loaded[(fqn, offsets)] == digest) == (fqn != "fc1.weight"), (r, fqn)
