"""simulate_load on training states: what DCP does with optimizer, scheduler and data-loader
state, and the hints for what goes wrong (each checked against the mismatches DCP's planner
reports or silently skips)."""

from __future__ import annotations

import pytest
import torch

import dcpviz


def raw_optim_state(model, optimizer, rank):
    """optim.state_dict() before the first step: index-keyed, no moments."""
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}


def stepped_raw_optim_state(model, optimizer, rank):
    """optim.state_dict() after a (zero-gradient) step: moments keyed by parameter index."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    _init_optim_state(optimizer)
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}


def two_groups(params):
    params = list(params)
    return torch.optim.AdamW(
        [{"params": params[:2], "weight_decay": 0.0}, {"params": params[2:]}], lr=1e-3
    )


def without_scheduler(model, optimizer, rank):
    from dcpviz.engine.job.training_state import torchtitan_state

    state = torchtitan_state(model, optimizer, rank)
    del state["lr_scheduler"]
    return state


@pytest.fixture(scope="module")
def adamw_save():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp", optimizer="adamw")
    )


@pytest.fixture(scope="module")
def titan_save():
    return dcpviz.simulate_save(
        dcpviz.Scenario(
            model="mlp", world_size=4, recipe="fsdp", optimizer="adamw", state="torchtitan"
        )
    )


def target(**kw):
    kw.setdefault("model", "mlp")
    kw.setdefault("world_size", 2)
    kw.setdefault("recipe", "fsdp")
    return dcpviz.Scenario(**kw)


def titles(load):
    return [h.title for h in load.hints]


def test_a_training_state_reshards_with_no_mismatch(adamw_save):
    load = dcpviz.simulate_load(
        adamw_save, target(optimizer="adamw", mesh=(1, 2), world_size=2, recipe="hsdp")
    )
    assert load.ok and len(load.mismatches) == 0 and not load.hints
    reads = load.read_items
    assert set(reads.component) == {"model", "optim"}
    # every saved moment byte is read once per target shard holder: total optim bytes equal
    saved = adamw_save.write_items
    moments = saved[saved.fqn.str.endswith("exp_avg") & saved.kept.astype(bool)].nbytes.sum()
    assert reads[reads.fqn.str.endswith("exp_avg")].nbytes.sum() == moments


def test_optimizer_not_stepped_is_a_silent_skip_with_a_hint(adamw_save):
    load = dcpviz.simulate_load(adamw_save, target(optimizer="adamw", state=raw_optim_state))
    assert load.ok, load.errors  # DCP raises nothing: the moments are simply not read
    unexpected = load.mismatches[load.mismatches.kind == "unexpected"]
    assert set(unexpected.fqn) == {
        f for f in adamw_save.write_items.fqn if f.startswith("optim.state.")
    }
    assert len(load.hints) == 1 and "no state yet" in load.hints[0].title
    assert "get_state_dict" in load.hints[0].fix and len(load.hints[0].keys) == len(unexpected)
    # the fix: DCP's get_state_dict initialises the state, and every moment is read
    fixed = dcpviz.simulate_load(adamw_save, target(optimizer="adamw"))
    assert fixed.ok and not fixed.hints and len(fixed.mismatches) == 0


def test_index_keyed_target_against_fqn_keyed_checkpoint(adamw_save):
    load = dcpviz.simulate_load(
        adamw_save, target(optimizer="adamw", state=stepped_raw_optim_state)
    )
    assert not load.ok
    assert any(
        "keyed by parameter names in the checkpoint but by parameter indices" in t
        for t in titles(load)
    )


def test_param_group_count_differs(adamw_save):
    load = dcpviz.simulate_load(adamw_save, target(optimizer=two_groups))
    assert (
        titles(load)[0]
        == "The optimizer has 1 param group(s) in the checkpoint and 2 in the target"
    )


def test_another_optimizer_class(adamw_save):
    load = dcpviz.simulate_load(adamw_save, target(optimizer="sgd"))
    assert titles(load) == [
        "The target's optimizer is another kind than the saved one (other hyper-parameters)"
    ]
    h = load.hints[0]
    assert "momentum" in h.detail and "betas" in h.detail and "momentum_buffer" in h.detail


def test_scheduler_on_one_side_only(titan_save):
    load = dcpviz.simulate_load(
        titan_save, target(world_size=4, optimizer="adamw", state=without_scheduler)
    )
    assert load.ok  # silently not loaded
    assert titles(load) == ["The checkpoint has lr_scheduler state that the target does not load"]
    assert "warmup" in load.hints[0].detail
    back = dcpviz.simulate_save(target(world_size=4, optimizer="adamw", state=without_scheduler))
    load = dcpviz.simulate_load(back, target(world_size=4, optimizer="adamw", state="torchtitan"))
    assert not load.ok
    assert titles(load) == ["The target loads lr_scheduler state that the checkpoint does not have"]


@pytest.mark.parametrize(
    "world_size,title",
    [
        (2, "Data-loader positions of 2 data-parallel rank(s) are read by no target rank"),
        (8, "4 target data-parallel rank(s) have no saved data-loader position"),
    ],
)
def test_dataloader_positions_per_dp_rank(titan_save, world_size, title):
    load = dcpviz.simulate_load(
        titan_save, target(world_size=world_size, optimizer="adamw", state="torchtitan")
    )
    assert titles(load) == [title]
    reads = load.read_items
    got = {
        r.rank: r.fqn
        for r in reads[reads.component == "dataloader"].itertuples()
        if "dp_rank" in r.fqn
    }
    assert got == {r: f"dataloader.dp_rank_{r}" for r in range(min(world_size, 4))}


def test_fast_load_equals_per_rank_load(titan_save, adamw_save):
    for saved, sc in [
        (adamw_save, target(optimizer="adamw", world_size=4, mesh=(2, 2), recipe="hsdp")),
        (titan_save, target(optimizer="adamw", state="torchtitan")),
        (adamw_save, target(optimizer="adamw", state="dcp-tutorial")),
    ]:
        fast, full = dcpviz.simulate_load(saved, sc), dcpviz.simulate_load(saved, sc, fast=False)
        assert fast.read_items.equals(full.read_items)
        assert fast.mismatches.equals(full.mismatches)


def test_views_filter_by_component(adamw_save):
    load = dcpviz.simulate_load(adamw_save, target(optimizer="adamw", world_size=3))
    reads = load.read_items
    optim = reads[reads.component == "optim"]
    fig = dcpviz.views.resharding(load, component="optim")
    assert sum(v for row in fig.data[0].z for v in row if v == v) == optim.nbytes.sum() > 0
    vol = dcpviz.views.read_volume(load, component="model")
    assert sum(vol.data[1].y) == reads[reads.component == "model"].nbytes.sum()
    assert sum(vol.data[2].y) < load.rank_volume.wanted_nbytes.sum()  # the model's shards only
    overview = dcpviz.views.dedup(adamw_save, component="optim")
    labels = {str(y) for t in overview.data if t.y is not None for y in t.y}
    assert labels and all(y.startswith("optim.") for y in labels)
    with pytest.raises(dcpviz.DcpvizError, match="Did you mean 'optim'"):
        dcpviz.views.resharding(load, component="optm")


def test_param_group_keys_are_not_taken_for_index_keyed_state(adamw_save):
    """param_groups.<i> is a list index in get_state_dict's FQN-keyed form too: FQN-keyed state
    on both sides (another optimizer class) is not a keying mismatch (before: "keyed by parameter
    names in the checkpoint but by parameter names in the target")."""
    import dataclasses

    from dcpviz.analysis.load.hints import compute_hints
    from dcpviz.core.trace import MismatchRecord

    base = dcpviz.simulate_load(adamw_save, target(optimizer="adamw")).trace
    records = [  # the target has SGD's group key and moment; the checkpoint another moment
        MismatchRecord("optim.param_groups.0.momentum", "missing", (0, 1)),
        MismatchRecord(
            "optim.state.fc1.weight.momentum_buffer", "missing", (0, 1), current_size=(190, 16)
        ),
        MismatchRecord("optim.state.fc2.weight.exp_avg", "unexpected", (), saved_size=(3, 190)),
    ]
    hints = compute_hints(dataclasses.replace(base, mismatches=tuple(records)))
    assert not any("keyed by" in h.title for h in hints), [h.title for h in hints]


def test_every_training_state_hint_fix_is_code(adamw_save, titan_save, tmp_path):
    """Issue 15: a hint's fix is code (a comment where the fix is a decision, not a line)."""
    loads = [
        dcpviz.simulate_load(adamw_save, target(optimizer="adamw", state=raw_optim_state)),
        dcpviz.simulate_load(adamw_save, target(optimizer="adamw", state=stepped_raw_optim_state)),
        dcpviz.simulate_load(adamw_save, target(optimizer=two_groups)),
        dcpviz.simulate_load(adamw_save, target(optimizer="sgd")),
        dcpviz.simulate_load(
            titan_save, target(world_size=4, optimizer="adamw", state=without_scheduler)
        ),
        dcpviz.simulate_load(
            titan_save, target(world_size=2, optimizer="adamw", state="torchtitan")
        ),
        dcpviz.simulate_load(
            titan_save, target(world_size=8, optimizer="adamw", state="torchtitan")
        ),
        dcpviz.simulate_load(
            dcpviz.simulate_save(target(world_size=4, optimizer="adamw", state=without_scheduler)),
            target(world_size=4, optimizer="adamw", state="torchtitan"),
        ),
    ]
    hints = [h for load in loads for h in load.hints]
    assert len({h.title for h in hints}) >= 7
    for h in hints:
        compile(h.fix, f"<fix of {h.title!r}>", "exec")
    # A fix that is code is run, in a real process, on the mistake it names (an optimizer with no
    # state yet, loaded from a real checkpoint): it must give back the saved moments. A comment
    # in its place would compile and fix nothing.
    (no_state,) = [h for h in loads[0].hints if "no state yet" in h.title]
    assert not no_state.fix.lstrip().startswith("#")
    _run_fix_on_a_real_checkpoint(no_state.fix, tmp_path)


def _run_fix_on_a_real_checkpoint(fix: str, tmp_path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from dcpviz.engine.job.models import build_model

    def job(seed):
        torch.manual_seed(seed)
        model = build_model("mlp", device="cpu")
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, optim = job(0)
    for p in model.parameters():  # (dcpviz's mlp has no forward: gradients set by hand)
        p.grad = torch.randn_like(p)
    optim.step()
    saved = {n: optim.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    model_sd, optim_sd = get_state_dict(model, optim)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp_path / "ckpt")

    model, optim = job(1)  # the resuming job: a fresh optimizer, no state yet
    namespace = {
        "model": model,
        "optim": optim,
        "CKPT": str(tmp_path / "ckpt"),
        "dcp": dcp,
        "get_state_dict": get_state_dict,
        "set_state_dict": set_state_dict,
    }
    exec(compile(fix, "<fix>", "exec"), namespace)
    for n, p in model.named_parameters():
        assert torch.equal(optim.state[p]["exp_avg"], saved[n]), n
