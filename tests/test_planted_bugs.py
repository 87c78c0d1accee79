"""Bugs once planted in a copy of dcpviz that no test caught (issue 25), each pinned by a fact
that does not come from the code under test:

- the verdict: a hint names what breaks a load when *any* of its keys breaks it (planted: all);
  the fact is a real ``dcp.load`` in this process, which raises on the hint's key;
- trace validation: a plan that points one past the item table, or a rank equal to world_size,
  is refused as a bad trace file (planted: ``> n_items`` / ``> world``); the fact is the trace
  JSON edited by hand, one past the end of a table whose length the test counts;
- the dedup replay's ``replay_agrees``: a planner whose dedup is not DCP's rule (it keeps the
  highest rank's copy, by construction) must not be reported as agreeing (planted: always True).
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.state_dict import _init_optim_state, get_state_dict

import dcpviz
from dcpviz.engine.job.models import build_model


# -- the verdict ------------------------------------------------------------------------------
def _index_keyed_optimizer(model, optimizer, rank):
    """The resuming job passes optim.state_dict() (moments keyed by parameter index)."""
    _init_optim_state(optimizer)
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}


@pytest.fixture(scope="module")
def named_checkpoint(tmp_path_factory):
    """A real one-process checkpoint of dcpviz's mlp and AdamW, optimizer keyed by names."""
    torch.manual_seed(0)
    model = build_model("mlp", device="cpu")
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _init_optim_state(optim)
    model_sd, optim_sd = get_state_dict(model, optim)
    path = tmp_path_factory.mktemp("named") / "ckpt"
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    return path


def test_the_verdict_names_the_hint_whose_key_dcp_raises_on(named_checkpoint):
    # The fact: dcp.load itself, in this process, on the same mistake.
    torch.manual_seed(1)
    model = build_model("mlp", device="cpu")
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(CheckpointException) as raised:
        dcp.load(_index_keyed_optimizer(model, optim, 0), checkpoint_id=named_checkpoint)
    raised_on = re.findall(r"Missing key in checkpoint state_dict: (optim\S+)\.", str(raised.value))
    assert raised_on and raised_on[0].startswith("optim.state.0."), str(raised.value)[-500:]

    load = dcpviz.simulate_load(
        named_checkpoint,
        dcpviz.Scenario(
            model="mlp",
            world_size=1,
            recipe="fsdp",
            optimizer="adamw",
            state=_index_keyed_optimizer,
        ),
    )
    assert not load.verdict.loads
    # The hint that explains the key DCP raised on also names keys DCP does not raise on (the
    # checkpoint's name-keyed moments, read by no rank): it breaks the load all the same.
    (hint,) = [h for h in load.hints if raised_on[0] in h.keys]
    assert any(k not in str(raised.value) for k in hint.keys)
    assert (hint.cause or hint.title) in load.verdict.breaking


# -- trace validation ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def save_doc(tmp_path_factory):
    save = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    return json.loads(save.to_json(tmp_path_factory.mktemp("doc") / "t.json").read_text())


def _load_doc(tmp_path_factory, model):
    saved = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    load = dcpviz.simulate_load(saved, dcpviz.Scenario(model=model, world_size=3, recipe="fsdp"))
    return json.loads(load.to_json(tmp_path_factory.mktemp("doc") / "t.json").read_text())


@pytest.fixture(scope="module")
def load_doc(tmp_path_factory):
    return _load_doc(tmp_path_factory, "mlp")  # loads: every rank has a plan


@pytest.fixture(scope="module")
def mismatch_doc(tmp_path_factory):
    return _load_doc(tmp_path_factory, "llama-tiny")  # every key mismatches


def _read(doc, tmp_path):
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    return dcpviz.load_trace(path)


def _use(result):
    """Read every table a user reads (a bad index shows up here as an IndexError)."""
    for name in (
        ("write_items", "dedup", "rank_volume", "chunks")
        if result.kind == "save"
        else ("read_items", "rank_volume", "mismatches", "hints")
    ):
        getattr(result, name)


@pytest.mark.parametrize("plans", ["local_plans", "global_plans", "final_plans"])
def test_a_plan_one_past_the_item_table_is_refused(save_doc, tmp_path, plans):
    n_items = len(save_doc["trace"]["items"])
    doc = json.loads(json.dumps(save_doc))
    doc["trace"][plans][1]["items"][-1] = n_items - 1  # the last item: fine
    _use(_read(doc, tmp_path))
    doc["trace"][plans][1]["items"][-1] = n_items  # one past the end
    with pytest.raises(dcpviz.DcpvizError, match=f"item {n_items}"):
        _use(_read(doc, tmp_path))


def test_a_load_plan_one_past_the_reads_is_refused(load_doc, tmp_path):
    n_reads = len(load_doc["trace"]["reads"])
    doc = json.loads(json.dumps(load_doc))
    doc["trace"]["local_plans"][0]["items"].append(n_reads - 1)
    _read(doc, tmp_path)
    doc["trace"]["local_plans"][0]["items"].append(n_reads)
    with pytest.raises(dcpviz.DcpvizError, match=f"item {n_reads}"):
        _use(_read(doc, tmp_path))


def test_a_value_one_past_the_wanted_table_is_refused(load_doc, tmp_path):
    n_wanted = len(load_doc["trace"]["wanted"])
    doc = json.loads(json.dumps(load_doc))
    doc["trace"]["wanted_by_rank"][0].append(n_wanted)
    with pytest.raises(dcpviz.DcpvizError, match=f"value {n_wanted}"):
        _use(_read(doc, tmp_path))


def test_a_rank_equal_to_world_size_is_refused(save_doc, tmp_path):
    world = save_doc["trace"]["scenario"]["world_size"]
    doc = json.loads(json.dumps(save_doc))
    error = {"phase": "local", "rank": world - 1, "exc_type": "ValueError", "message": "x"}
    doc["trace"]["errors"] = [error]
    assert _read(doc, tmp_path).errors
    doc["trace"]["errors"] = [{**error, "rank": world}]
    with pytest.raises(dcpviz.DcpvizError, match=f"rank {world} is not below"):
        _read(doc, tmp_path)


def test_a_mismatch_rank_equal_to_world_size_is_refused(mismatch_doc, tmp_path):
    world = mismatch_doc["trace"]["scenario"]["world_size"]
    doc = json.loads(json.dumps(mismatch_doc))
    assert doc["trace"]["mismatches"], "the llama-into-mlp load has mismatches"
    doc["trace"]["mismatches"][0]["ranks"] = [world - 1]
    _read(doc, tmp_path)
    doc["trace"]["mismatches"][0]["ranks"] = [world]
    with pytest.raises(dcpviz.DcpvizError, match=f"rank {world} is not below"):
        _read(doc, tmp_path)


# -- the dedup replay ---------------------------------------------------------------------------
class HighestRankDedup(DefaultSavePlanner):
    """DCP's planner, but its coordinator keeps each replicated item's copy on the highest rank
    that planned it: a rule DCP's replay cannot explain wherever balance would pick another."""

    def create_global_plan(self, all_plans):
        highest = {}
        for rank, plan in enumerate(all_plans):
            for item in plan.items:
                highest[item.index] = rank
        kept = [
            dataclasses.replace(p, items=[i for i in p.items if highest[i.index] == r])
            for r, p in enumerate(all_plans)
        ]
        return super().create_global_plan(kept)  # DCP's own dedup then finds nothing to drop


def test_replay_agrees_is_false_where_the_planner_did_not_follow_dcps_rule():
    sc = dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    default = dcpviz.simulate_save(sc)
    custom = dcpviz.simulate_save(sc, planner=HighestRankDedup())
    d = custom.dedup
    assert len(d) and (d.chosen_rank == d.candidates.map(max)).all()  # the planner's own rule
    # Where DCP's rule (the default planner's real choice) is not the highest rank, the replay of
    # DCP's rule cannot agree with this planner.
    dcps = dict(zip(zip(default.dedup.fqn, default.dedup.offsets), default.dedup.chosen_rank))
    differs = [dcps[(f, o)] != r for f, o, r in zip(d.fqn, d.offsets, d.chosen_rank)]
    assert any(differs)
    assert list(~d.replay_agrees) == differs
    assert default.dedup.replay_agrees.all()


def test_the_replay_picks_what_dcps_own_global_plans_kept():
    """The replay's rank against DCP's real choice, read by the test from the global plans
    DCP's coordinator returned (the rank whose global plan still holds the item); the layout is
    one where DCP's balance picks neither the lowest nor always the highest candidate, so a
    replay of another rule fails here."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    t = save.trace
    kept = {}
    for rank, plan in enumerate(t.global_plans):
        for i in plan.items:
            kept.setdefault((t.items[i].fqn, tuple(t.items[i].offsets or ())), []).append(rank)
    d = save.dedup
    dcps = [kept[(f, tuple(o or ()))] for f, o in zip(d.fqn, d.offsets)]
    assert all(len(r) == 1 for r in dcps)
    dcps = [r[0] for r in dcps]
    assert list(d.chosen_rank) == dcps and list(d.replay_rank) == dcps
    assert d.replay_agrees.all()
    assert any(r != min(c) for r, c in zip(dcps, d.candidates))
    assert any(r != max(c) for r, c in zip(dcps, d.candidates))


# -- rank-specific values, two ranks ----------------------------------------------------------
def _loader_position_per_rank(model, optimizer, rank):
    """Each rank's data-loader position under one shared key: 0 on rank 0, 100 on rank 1."""
    return {"model": model.state_dict(), "loader": {"position": 100 * rank}, "shared": 7}


def test_two_ranks_with_two_values_lose_one(tmp_path):
    """Two ranks, two different values under one key: DCP keeps one rank's copy (the rank whose
    global plan holds the key, read from DCP's own plans here), the other rank's value is lost.
    The same value on both ranks ('shared') loses nothing."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", state=_loader_position_per_rank)
    )
    t = save.trace
    holders = [
        r
        for r, plan in enumerate(t.global_plans)
        for i in plan.items
        if t.items[i].fqn == "loader.position"
    ]
    assert len(holders) == 1
    lost = save.checks[
        (save.checks.check == "rank-specific-value") & (save.checks.severity == "data-loss")
    ]
    assert list(lost.fqn) == ["loader.position"]
    assert tuple(lost.ranks.iloc[0]) == (1 - holders[0],)
    assert "2 different values" in lost.message.iloc[0]
