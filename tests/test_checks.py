"""Checks (issue 12): each one triggered by a real DCP plan, and absent when the hazard is."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.distributed.checkpoint as dcp
from run_helpers import mlp_with_per_rank_keys, mlp_with_rank_state
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner

import dcpviz
from dcpviz.analysis.checks import CHECK_COLUMNS
from dcpviz.cli import main
from dcpviz.engine.job.models import MLP


def rows(result_or_checks, check, severity=None):
    df = getattr(result_or_checks, "checks", result_or_checks)
    assert list(df.columns) == CHECK_COLUMNS
    out = df[df["check"] == check]
    return out if severity is None else out[out["severity"] == severity]


# -- rank-specific values under one key -----------------------------------------------------------
@pytest.fixture(scope="module")
def per_rank_value():
    """Every rank built (fast=False): each rank's own extra state, 1000*rank and 17+rank."""
    return dcpviz.simulate_save(
        dcpviz.Scenario(model=mlp_with_rank_state, world_size=4, recipe="fsdp"), fast=False
    )


def test_rank_specific_values_are_data_loss_naming_survivor_and_lost_ranks(per_rank_value):
    lost = rows(per_rank_value, "rank-specific-value", "data-loss")
    assert set(lost["fqn"]) == {
        "rank_state._extra_state.sample_idx",
        "rank_state._extra_state.seed",
    }
    dd = per_rank_value.dedup.set_index("fqn")
    for row in lost.itertuples():
        survivor = int(dd.loc[row.fqn, "chosen_rank"])  # from DCP's real global plan
        assert set(row.ranks) == {0, 1, 2, 3} - {survivor}
        assert f"keeps only rank {survivor}'s copy" in row.message
    assert per_rank_value.checks["severity"].iloc[0] == "data-loss"  # worst first
    assert "1 data-loss" not in repr(per_rank_value) and "2 data-loss" in repr(per_rank_value)


def test_values_equal_on_every_rank_are_no_finding():
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"), fast=False
    )
    # progress._extra_state is the same dict on every rank: planned by all, nothing lost.
    assert "progress._extra_state.epoch" in set(res.dedup["fqn"])
    assert not len(rows(res, "rank-specific-value", "data-loss"))
    assert "progress._extra_state.epoch" not in set(rows(res, "rank-specific-value")["fqn"])


def test_meta_tensors_have_no_values_so_a_warning():
    res = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))
    warn = rows(res, "rank-specific-value", "warning")
    assert "progress.step" in set(warn["fqn"])  # a plain buffer, meta in simulation
    assert not len(rows(res, "rank-specific-value", "data-loss"))


def test_the_fast_path_knows_rank_0_only_so_a_warning_not_a_false_all_clear():
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model=mlp_with_rank_state, world_size=4, recipe="fsdp")
    )
    warn = rows(res, "rank-specific-value", "warning")
    assert "rank_state._extra_state.seed" in set(warn["fqn"])
    assert not len(rows(res, "rank-specific-value", "data-loss"))


def test_the_fix_per_rank_keys_makes_the_data_loss_go_away():
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model=mlp_with_per_rank_keys, world_size=4, recipe="fsdp"), fast=False
    )
    assert not len(rows(res, "rank-specific-value", "data-loss"))
    # ... and says what per-rank keys mean instead: key sets differ between ranks.
    differ = rows(res, "key-sets-differ")
    lacking = dict(zip(differ["fqn"], differ["ranks"]))
    assert lacking["rank_state.rank2._extra_state.seed"] == (0, 1, 3)


def test_key_sets_alike_are_no_finding(per_rank_value):
    assert not len(rows(per_rank_value, "key-sets-differ"))


# -- write imbalance, with the other dedup option simulated --------------------------------------
def test_write_imbalance_names_ranks_and_the_other_option():
    sc = dcpviz.Scenario(model="mlp", world_size=4, recipe="replicate")
    lowest = dcpviz.simulate_save(sc, DefaultSavePlanner(dedup_save_to_lowest_rank=True))
    row = rows(lowest, "write-imbalance").iloc[0]
    assert row.severity == "warning" and row.ranks == (0,)
    assert "imbalance 4.00" in row.message
    assert row.fix == "planner=DefaultSavePlanner(dedup_save_to_lowest_rank=False)"
    # The alternative's numbers are what DCP plans with the other option.
    other = dcpviz.simulate_save(sc, DefaultSavePlanner(dedup_save_to_lowest_rank=False))
    alt = lowest.trace.dedup_alternative
    assert (
        alt.lowest_rank is False and list(alt.rank_nbytes) == other.rank_volume["nbytes"].tolist()
    )
    assert list(other.trace.dedup_alternative.rank_nbytes) == lowest.rank_volume["nbytes"].tolist()


def test_balanced_writes_are_no_finding():
    res = dcpviz.simulate_save(dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="fsdp"))
    assert res.summary["imbalance"] < 1.5 and not len(rows(res, "write-imbalance"))


# -- plans DCP rejects ---------------------------------------------------------------------------
class ShiftingPlanner(DefaultSavePlanner):
    """Rank 1 plans its fc1.weight shard 45 rows early (rows 50-145 of 190: overlapping rank 0's
    0-95 and leaving 145-190 out), as a buggy planner might."""

    def create_local_plan(self):
        import dataclasses

        import torch.distributed as dist

        plan = super().create_local_plan()
        if dist.get_rank() != 1:
            return plan
        items = []
        for wi in plan.items:
            if wi.index.fqn == "fc1.weight":
                chunk = dataclasses.replace(wi.tensor_data.chunk, offsets=torch.Size([50, 0]))
                wi = dataclasses.replace(
                    wi,
                    index=dataclasses.replace(wi.index, offset=torch.Size([50, 0])),
                    tensor_data=dataclasses.replace(wi.tensor_data, chunk=chunk),
                )
            items.append(wi)
        return dataclasses.replace(plan, items=items)


class DroppingPlanner(DefaultSavePlanner):
    """Rank 1 leaves its fc1.weight shard out (a gap in the saved tensor)."""

    def create_local_plan(self):
        import dataclasses

        import torch.distributed as dist

        plan = super().create_local_plan()
        if dist.get_rank() != 1:
            return plan
        return dataclasses.replace(
            plan, items=[wi for wi in plan.items if wi.index.fqn != "fc1.weight"]
        )


def test_overlapping_chunks_are_an_error_dcp_raised():
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"), ShiftingPlanner()
    )
    assert not res.ok
    assert len(rows(res, "global-failed", "error")) == 1
    assert list(rows(res, "chunks-overlap", "error")["fqn"]) == ["fc1.weight"]
    overlap = rows(res, "chunks-overlap").iloc[0]
    assert f"({45 * 16} elements saved twice)" in overlap.message  # rows 50-95, 16 columns
    assert list(rows(res, "chunks-missing", "data-loss")["fqn"]) == ["fc1.weight"]


def test_missing_chunks_are_data_loss():
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"), DroppingPlanner()
    )
    assert list(rows(res, "chunks-missing", "data-loss")["fqn"]) == ["fc1.weight"]
    assert len(rows(res, "global-failed", "error")) == 1


def test_a_valid_plan_has_no_errors(per_rank_value):
    assert not per_rank_value.checks["check"].str.contains("failed|chunks-").any()


# -- the trace alone: to_json / load_trace / dcpviz check -----------------------------------------
def test_checks_survive_a_trace_round_trip_and_dcpviz_check_exits_on_data_loss(
    per_rank_value, tmp_path, capsys
):
    path = per_rank_value.to_json(tmp_path / "save.json")
    again = dcpviz.load_trace(path)
    pd.testing.assert_frame_equal(again.checks, per_rank_value.checks)
    assert main(["check", str(path)]) == 1
    assert "data-loss" in capsys.readouterr().out
    assert main(["check", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["failing"] and doc["counts"]["data-loss"] == 2
    assert {r["fqn"] for r in doc["checks"] if r["severity"] == "data-loss"} == {
        "rank_state._extra_state.sample_idx",
        "rank_state._extra_state.seed",
    }


def test_dcpviz_check_exits_0_without_data_loss_or_error(tmp_path, capsys):
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"), fast=False
    )
    assert main(["check", str(res.to_json(tmp_path / "ok.json"))]) == 0
    assert main(["check", str(tmp_path / "nope.json")]) == 2  # a user mistake, one line


def test_report_shows_checks_first_and_explorer_opens_them(per_rank_value, tmp_path):
    parts = per_rank_value.parts()
    assert parts[0].title.startswith("Checks: 2 data-loss")
    text = dcpviz.report(per_rank_value, tmp_path / "r.html").read_text()
    assert text.index("Checks: 2 data-loss") < text.index("Write volume per rank")
    app = dcpviz.explore(per_rank_value)
    assert app.tabs.titles[app.tabs.selected_index] == "Checks"
    quiet = dcpviz.explore(
        dcpviz.simulate_save(dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp"))
    )
    assert quiet.tabs.selected_index == 0 and "Checks" in quiet.tabs.titles


# -- load ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp_save():
    return dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))


def mlp_without_progress():
    m = MLP()
    del m.progress
    return m


def mlp_with_extra_buffer():
    m = MLP()
    m.register_buffer("ema_decay", torch.ones(()))
    return m


def test_keys_no_rank_reads(fsdp_save):
    load = dcpviz.simulate_load(
        fsdp_save, dcpviz.Scenario(model=mlp_without_progress, world_size=4, recipe="fsdp")
    )
    assert set(rows(load, "unread-keys", "warning")["fqn"]) >= {
        "progress.step",
        "progress._extra_state.epoch",
    }
    same = dcpviz.simulate_load(
        fsdp_save, dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp")
    )
    assert not len(rows(same, "unread-keys")) and not len(same.checks)
    app = dcpviz.explore(load)  # the load debugger gets the tab too; warnings do not open it
    assert app.tabs.titles[-1] == "Checks" and app.tabs.selected_index == 0
    assert "checks: " in repr(load) and load.parts()[0].title.startswith("Checks:")


def test_silent_dtype_casts(fsdp_save):
    load = dcpviz.simulate_load(
        fsdp_save, dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp", dtype="bfloat16")
    )
    casts = rows(load, "dtype-cast", "warning")
    assert "fc1.weight" in set(casts["fqn"]) and "float32" in casts["message"].iloc[0]


def test_partial_load_hiding_missing_keys(fsdp_save):
    target = dcpviz.Scenario(model=mlp_with_extra_buffer, world_size=4, recipe="fsdp")
    partial = dcpviz.simulate_load(fsdp_save, target, DefaultLoadPlanner(allow_partial_load=True))
    assert list(rows(partial, "partial-load-hides-missing")["fqn"]) == ["ema_decay"]
    strict = dcpviz.simulate_load(fsdp_save, target)
    assert not len(rows(strict, "partial-load-hides-missing"))
    assert len(strict.checks[strict.checks["severity"] == "error"])  # DCP raises: the load fails


def test_read_amplification_on_a_reshard(fsdp_save):
    # TP on 2 ranks shards fc2.weight by columns; FSDP on 4 wants row blocks: every rank
    # deserialises whole column chunks to keep a quarter of their rows.
    tp_save = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, recipe="tp"))
    tp = dcpviz.simulate_load(tp_save, dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))
    amp = rows(tp, "read-amplification", "warning")
    assert len(amp) == 1 and "rank 1 reads" in amp["message"].iloc[0]
    vol = tp.rank_volume
    ratio = vol["chunk_nbytes"].astype(float) / vol["nbytes"].astype(float)
    assert set(amp["ranks"].iloc[0]) == set(vol["rank"][ratio > 2.0])
    same = dcpviz.simulate_load(
        fsdp_save, dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp")
    )
    assert not len(rows(same, "read-amplification"))


def test_optimizer_state_in_the_checkpoint_not_read(tmp_path):
    model = MLP()
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # Adam's moments exist now
    dcp.save({**model.state_dict(), "optim": opt.state_dict()}, checkpoint_id=tmp_path / "ck")
    load = dcpviz.simulate_load(
        tmp_path / "ck", dcpviz.Scenario(model="mlp", world_size=1, recipe="fsdp")
    )
    row = rows(load, "optimizer-state-not-read", "warning")
    assert len(row) == 1 and "Adam" in row["message"].iloc[0]
    assert not len(rows(load, "unread-keys"))  # not counted twice


# -- checkpoint directory ------------------------------------------------------------------------
def test_checkpoint_stale_files_and_framing(tmp_path, capsys):
    dcp.save(MLP().state_dict(), checkpoint_id=tmp_path / "ck")
    ck = dcpviz.inspect_checkpoint(tmp_path / "ck")
    assert list(ck.checks["check"]) == ["framing-overhead"]  # tiny chunks: framing dominates
    (tmp_path / "ck" / "__1_0.distcp").write_bytes(b"left by an earlier save")
    stale = rows(dcpviz.inspect_checkpoint(tmp_path / "ck"), "stale-files", "warning")
    assert stale["ranks"].iloc[0] == (1,) and "__1_0.distcp" in stale["message"].iloc[0]
    assert main(["check", str(tmp_path / "ck")]) == 0  # warnings and info do not fail CI
    big = tmp_path / "big"
    dcp.save({"w": torch.zeros(512, 512)}, checkpoint_id=big)
    assert not len(dcpviz.inspect_checkpoint(big).checks)


def test_checkpoint_with_an_unsafe_byte_io_entry_fails_the_check(tmp_path, capsys):
    from test_byte_io import _plant, _RunsCode

    marker = tmp_path / "pwned"
    dcp.save({"w": torch.ones(2), "note": "a value"}, checkpoint_id=tmp_path / "ck")
    _plant(tmp_path / "ck", "note", _RunsCode(marker))
    assert main(["check", str(tmp_path / "ck"), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    row = doc["checks"][0]
    assert row["severity"] == "error" and row["check"] == "unsafe-entry"
    assert "posix.system" in row["message"] and not marker.exists()


def test_carried_digests_leave_even_an_unwrapped_coordinators_metadata_alone():
    """If the coordinator's planner is not a recorder (so nothing strips the digests), DCP's
    default planner still merges the same planner_data (the carrier is the mappings dict)."""
    import copy

    from dcpviz.core.trace import ValueDigest
    from dcpviz.engine.capture.save import CarriedPlannerData, strip_carried

    p = DefaultSavePlanner()
    p.set_up_planner({"a": {"w": torch.ones(2)}, "n": 3}, is_coordinator=True)
    plan = p.create_local_plan()
    carried = type(plan)(
        plan.items, planner_data=CarriedPlannerData(plan.planner_data, (ValueDigest("n", 0, "ab"),))
    )
    _, md_plain = copy.deepcopy(p).create_global_plan([plan])
    _, md_carried = copy.deepcopy(p).create_global_plan([carried])
    assert md_carried.planner_data == md_plain.planner_data == {"a.w": ("a", "w"), "n": ("n",)}
    clean, digests, every = strip_carried([carried])
    assert (
        clean[0].planner_data is plan.planner_data
        and digests == [ValueDigest("n", 0, "ab")]
        and every
    )


def test_new_trace_fields_are_validated_and_optional(per_rank_value, tmp_path):
    doc = json.loads(per_rank_value.to_json(tmp_path / "t.json").read_text())
    old = json.loads(json.dumps(doc))
    del old["trace"]["value_digests"], old["trace"]["dedup_alternative"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert (
        dcpviz.load_trace(tmp_path / "old.json").trace.value_digests == ()
    )  # an older trace still reads
    bad = json.loads(json.dumps(doc))
    bad["trace"]["value_digests"][0]["rank"] = 4  # world_size is 4
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(dcpviz.DcpvizError, match="value_digests"):
        dcpviz.load_trace(tmp_path / "bad.json")
    long = json.loads(json.dumps(doc))
    long["trace"]["value_digests"][0]["digest"] = "f" * 65
    (tmp_path / "long.json").write_text(json.dumps(long))
    with pytest.raises(dcpviz.DcpvizError, match="value_digests"):
        dcpviz.load_trace(tmp_path / "long.json")
    alt = json.loads(json.dumps(doc))
    alt["trace"]["dedup_alternative"] = {"lowest_rank": True, "rank_items": [1], "rank_nbytes": [1]}
    (tmp_path / "alt.json").write_text(json.dumps(alt))
    with pytest.raises(dcpviz.DcpvizError, match="dedup_alternative"):
        dcpviz.load_trace(tmp_path / "alt.json")


# -- training states (issue 11): a state callable's per-rank values -------------------------------
def state_with_rank_rng(model, optimizer, rank):
    """An app state whose RNG tensor differs per rank, saved under one key."""
    return {"model": model.state_dict(), "rng": torch.tensor([1234 + rank]), "epoch": 3}


def state_with_rng_per_rank(model, optimizer, rank):
    """The fix: each rank's RNG state under its own key."""
    return {"model": model.state_dict(), f"rng_rank{rank}": torch.tensor([1234 + rank]), "epoch": 3}


def test_a_state_callables_per_rank_value_is_data_loss_in_simulate_save():
    res = dcpviz.simulate_save(
        dcpviz.Scenario(world_size=4, recipe="fsdp", state=state_with_rank_rng)
    )
    lost = rows(res, "rank-specific-value", "data-loss")
    assert list(lost["fqn"]) == ["rng"]
    survivor = int(res.dedup.set_index("fqn").loc["rng", "chosen_rank"])
    assert set(lost["ranks"].iloc[0]) == {0, 1, 2, 3} - {survivor}
    assert "epoch" not in set(res.checks["fqn"])  # the same on every rank
    fixed = dcpviz.simulate_save(
        dcpviz.Scenario(world_size=4, recipe="fsdp", state=state_with_rng_per_rank)
    )
    assert not len(rows(fixed, "rank-specific-value", "data-loss"))


def test_torchtitan_dataloader_keys_are_per_rank_keys_not_data_loss():
    res = dcpviz.simulate_save(
        dcpviz.Scenario(world_size=4, recipe="fsdp", optimizer="adamw", state="torchtitan")
    )
    assert not len(rows(res, "rank-specific-value", "data-loss"))
    assert {f"dataloader.dp_rank_{r}" for r in range(4)} <= set(rows(res, "key-sets-differ")["fqn"])


def test_optimizer_state_of_a_training_checkpoint_not_read_by_a_model_only_load():
    save = dcpviz.simulate_save(dcpviz.Scenario(world_size=2, recipe="fsdp", optimizer="adamw"))
    load = dcpviz.simulate_load(
        save, dcpviz.Scenario(world_size=2, recipe="fsdp", state=state_model_only)
    )
    assert len(rows(load, "optimizer-state-not-read", "warning")) == 1
    again = dcpviz.simulate_load(
        save, dcpviz.Scenario(world_size=2, recipe="fsdp", optimizer="adamw")
    )
    assert not len(rows(again, "optimizer-state-not-read"))


def state_model_only(model, optimizer, rank):
    return {"model": model.state_dict()}
