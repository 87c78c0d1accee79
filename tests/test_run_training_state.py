"""run_save / run_load of whole training states: a real AdamW step on real tensors, saved with
DCP's get_state_dict (or an app state's Statefuls) and loaded back with set_state_dict; the
restored optimizer moments are checked byte for byte, on the same layout and resharded."""

from __future__ import annotations

import pytest

import dcpviz

SAVED = dict(model="mlp", world_size=4, mesh=(2, 2), recipe="hsdp", optimizer="adamw")


def by_key(digests):
    return {r: sorted(chunks) for r, chunks in digests.items()}


@pytest.fixture(scope="module")
def adamw_run(tmp_path_factory):
    sc = dcpviz.Scenario(**SAVED)
    ckpt = tmp_path_factory.mktemp("adamw") / "ckpt"
    res = dcpviz.run_save(sc, ckpt, timeout=240)
    assert res.ok, res.errors
    return sc, res, ckpt


def test_real_save_plans_equal_the_simulation(adamw_run):
    sc, run, _ = adamw_run
    sim = dcpviz.simulate_save(sc)
    cols = ["rank", "fqn", "offsets", "sizes", "item_type", "dtype", "nbytes", "kept", "component"]
    assert run.write_items[cols].equals(sim.write_items[cols])
    assert (
        run.trace.scenario.components
        == sim.trace.scenario.components
        == (("model", "model"), ("optim", "optim"))
    )


def test_restored_moments_equal_the_saved_ones_byte_for_byte(adamw_run):
    sc, saved, ckpt = adamw_run
    load = dcpviz.run_load(ckpt, sc, timeout=240)
    assert load.ok, load.errors
    assert by_key(load.run_info.chunk_digests) == by_key(saved.run_info.chunk_digests)
    moments = {
        f
        for chunks in saved.run_info.chunk_digests.values()
        for f, _, _ in chunks
        if f.endswith("exp_avg_sq")
    }
    assert moments and all(f.startswith("optim.state.") for f in moments)


def test_resharded_moments_equal_a_save_made_on_the_target_layout(adamw_run, tmp_path):
    """Values depend only on the global position (run_save fills parameters by position; the
    AdamW step is elementwise), so a checkpoint saved on 2x2 HSDP and loaded into 2-rank FSDP
    must hold exactly the bytes a save made directly on 2-rank FSDP holds."""
    _, _, ckpt = adamw_run
    target = dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", optimizer="adamw")
    load = dcpviz.run_load(ckpt, target, timeout=240)
    assert load.ok, load.errors
    direct = dcpviz.run_save(target, tmp_path / "direct", timeout=240)
    assert direct.ok, direct.errors
    assert by_key(load.run_info.chunk_digests) == by_key(direct.run_info.chunk_digests)


def test_torchtitan_state_saves_and_loads_for_real(tmp_path):
    sc = dcpviz.Scenario(
        model="llama-tiny",
        world_size=4,
        mesh=(2, 2),
        recipe="tp+fsdp",
        optimizer="adamw",
        state="torchtitan",
    )
    saved = dcpviz.run_save(sc, tmp_path / "ckpt", timeout=240)
    assert saved.ok, saved.errors
    sim = dcpviz.simulate_save(sc)
    cols = ["rank", "fqn", "offsets", "sizes", "item_type", "dtype", "kept", "component"]
    assert saved.write_items[cols].equals(sim.write_items[cols])
    load = dcpviz.run_load(tmp_path / "ckpt", sc, timeout=240)
    assert load.ok, load.errors
    assert by_key(load.run_info.chunk_digests) == by_key(saved.run_info.chunk_digests)
    assert any(
        f.startswith("optimizer.state.")
        for c in saved.run_info.chunk_digests.values()
        for f, _, _ in c
    )
