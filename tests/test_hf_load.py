"""simulate_load(HF_DIR, scenario): planned against DCP's HF reader's own metadata, checked
against a real dcp.load with DCP's HuggingFaceStorageReader (one process)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

import dcpviz
from dcpviz.engine.job.models import build_model


def floats(model, optimizer, rank):
    return {
        k: v
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    }


def model_state() -> dict:
    torch.manual_seed(0)
    return floats(build_model("mlp", "cpu"), None, 0)


def to_hf(key: str) -> str:
    """A torchtitan-like adapter: the model's names under HF's 'model.' prefix."""
    return "model." + key


class Capturing(DefaultLoadPlanner):
    """DCP's load planner; keeps the local plan a real dcp.load made."""

    plans: list = []

    def create_local_plan(self):
        plan = super().create_local_plan()
        Capturing.plans.append(plan)
        return plan


def real_load(state: dict, path) -> set:
    Capturing.plans = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, storage_reader=HuggingFaceStorageReader(str(path)), planner=Capturing())
    (plan,) = Capturing.plans
    return {
        (r.dest_index.fqn, tuple(r.dest_offsets), tuple(r.storage_offsets), tuple(r.lengths))
        for r in plan.items
    }


def simulated(load, rename=lambda k: k) -> set:
    return {
        (rename(r.fqn), r.dest_offsets, r.storage_offsets, r.lengths)
        for r in load.read_items.itertuples()
    }


def one_rank(**kw) -> dcpviz.Scenario:
    return dcpviz.Scenario(model="mlp", world_size=1, recipe="replicate", state=floats, **kw)


def test_plan_equals_a_real_hf_load(tmp_path):
    sd = model_state()
    mapping = {k: 1 + i % 2 for i, k in enumerate(sorted(sd))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(
            sd, storage_writer=HuggingFaceStorageWriter(str(tmp_path), fqn_to_index_mapping=mapping)
        )
    load = dcpviz.simulate_load(tmp_path, one_rank())
    assert load.ok, load.errors
    assert simulated(load) == real_load({k: torch.empty_like(v) for k, v in sd.items()}, tmp_path)
    # Each read names the file it comes from, as the folder's index says.
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert {(r.fqn, r.file) for r in load.read_items.itertuples()} == set(index.items())


def test_key_map_plans_what_an_adapter_loads(tmp_path):
    """A folder in HF names (written by safetensors itself); the model loads it through an adapter."""
    sd = model_state()
    save_file(
        {to_hf(k): v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors")
    )
    plain = dcpviz.simulate_load(tmp_path, one_rank())
    assert not plain.ok  # names differ: DCP's planner raises on the missing keys
    inverse = {to_hf(k): k for k in sd}
    for key_map in (inverse, lambda k: k.removeprefix("model.")):
        load = dcpviz.simulate_load(tmp_path, one_rank(), key_map=key_map)
        assert load.ok, load.errors
        real = real_load({to_hf(k): torch.empty_like(v) for k, v in sd.items()}, tmp_path)
        assert simulated(load, to_hf) == real


def test_fp32_folder_into_a_bf16_model_is_a_cast(tmp_path):
    sd = model_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=HuggingFaceStorageWriter(str(tmp_path)))
        target = {k: torch.empty_like(v, dtype=torch.bfloat16) for k, v in sd.items()}
        dcp.load(
            target, storage_reader=HuggingFaceStorageReader(str(tmp_path))
        )  # no error, no warning
    assert target["fc1.weight"].dtype == torch.bfloat16
    load = dcpviz.simulate_load(tmp_path, one_rank(dtype="bfloat16"))
    casts = load.checks[load.checks.check == "dtype-cast"]
    assert set(casts.fqn) == set(sd)
    same = dcpviz.simulate_load(tmp_path, one_rank())
    assert (same.checks.check != "dtype-cast").all()


def test_a_malformed_file_is_refused_before_dcps_reader(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(dcpviz.DcpvizError, match="model.safetensors"):
        dcpviz.simulate_load(tmp_path, one_rank())


def test_key_map_errors(tmp_path):
    save_file({"a": torch.ones(2), "b": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(dcpviz.DcpvizError, match="one-to-one"):
        dcpviz.simulate_load(tmp_path, one_rank(), key_map={"a": "x", "b": "x"})
    with pytest.raises(dcpviz.DcpvizError, match="key_map"):
        dcpviz.simulate_load(tmp_path, one_rank(), key_map=3)
    sim = dcpviz.simulate_save(one_rank())
    with pytest.raises(dcpviz.DcpvizError, match="safetensors"):
        dcpviz.simulate_load(sim, one_rank(), key_map={"a": "b"})


# -- the load fix suggests the HF <-> model key mapping (no key_map given) ---------------------
def _real_fixed_load(path, planner, like: dict) -> dict:
    """A real dcp.load through DCP's HF reader with ``planner``, into zeros shaped like ``like``."""
    target = {k: torch.zeros_like(v) for k, v in like.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(target, storage_reader=HuggingFaceStorageReader(str(path)), planner=planner)
    return target


def test_model_prefix_fix_is_certain_and_loads_the_right_values(tmp_path):
    """A folder written by DCP's HF writer in HF names ('model.' + the model's): simulate_load with
    no key_map names the prefix as the one certain fix; its planner loads every value for real."""
    sd = model_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(
            {to_hf(k): v for k, v in sd.items()},
            storage_writer=HuggingFaceStorageWriter(str(tmp_path)),
        )
    load = dcpviz.simulate_load(tmp_path, one_rank())
    assert not load.ok
    assert list(load.hints_table["kind"]) == ["prefix"]
    assert load.hints_table["mapping"][0] == {k: to_hf(k) for k in sd}
    assert "storage_reader=dcp.HuggingFaceStorageReader(CKPT)" in load.fix_code()
    got = _real_fixed_load(tmp_path, load.fix_planner(), sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    again = dcpviz.simulate_load(tmp_path, one_rank(), planner=load.fix_planner())
    assert again.ok and again.verdict.clean, again.verdict


def llama_floats(model, optimizer, rank):
    return {
        k: v
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    }


HF_NAMES = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj"}


def test_same_shaped_renames_are_refused_with_candidates_then_load_once_answered(tmp_path):
    """llama-tiny saved by safetensors itself in HF-style names ('model.' + wq->q_proj, ...):
    the prefix is certain; wq/wo (both d x d) and wk/wv (both kv x d) are refused with their
    candidates. Answering two of them makes the rest certain, and the fix loads the right values."""
    torch.manual_seed(0)
    sd = llama_floats(build_model("llama-tiny", "cpu"), None, 0)

    def hf(k):
        return "model." + ".".join(HF_NAMES.get(s, s) for s in k.split("."))

    save_file({hf(k): v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    sc = dcpviz.Scenario(model="llama-tiny", world_size=1, recipe="replicate", state=llama_floats)
    load = dcpviz.simulate_load(tmp_path, sc)
    hints = load.hints_table
    assert sorted(hints["kind"]) == ["ambiguous"] * 4 + ["prefix"]
    amb = hints[hints.kind == "ambiguous"]
    assert all(m == {} for m in amb["mapping"])  # refused: nothing is guessed
    assert any("'wq'" in t and "'o_proj' or 'q_proj'" in t for t in amb["title"])
    fixed = load.fix_planner(rename={"wq": "q_proj", "wk": "k_proj"})
    again = dcpviz.simulate_load(tmp_path, sc, planner=fixed)
    assert again.ok and again.verdict.clean, again.verdict
    got = _real_fixed_load(tmp_path, load.fix_planner(rename={"wq": "q_proj", "wk": "k_proj"}), sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)


# -- quantized pairs: expected to stay unread -----------------------------------------------------
def _quantized_folder(path) -> dict:
    """The MLP's weights plus an fp8-style ``weight_scale_inv`` next to fc1.weight and an MXFP4
    ``_blocks``/``_scales`` pair (written by safetensors itself), and a lone ``*_scales`` key."""
    sd = model_state()
    extra = {
        "fc1.weight_scale_inv": torch.ones(2, 2),
        "experts.gate_up_proj_blocks": torch.zeros(4, 8, dtype=torch.uint8),
        "experts.gate_up_proj_scales": torch.zeros(4, dtype=torch.uint8),
        "orphan_scales": torch.ones(3),
    }
    save_file(
        {**{k: v.contiguous() for k, v in sd.items()}, **extra}, str(path / "model.safetensors")
    )
    return sd


def test_quantized_pairs_are_expected_unread_not_problems(tmp_path):
    _quantized_folder(tmp_path)
    load = dcpviz.simulate_load(tmp_path, one_rank())
    assert load.ok, load.errors
    p = load.problems.set_index("fqn")
    pairs = ["experts.gate_up_proj_blocks", "experts.gate_up_proj_scales", "fc1.weight_scale_inv"]
    assert list(p.loc[pairs, "severity"]) == ["expected"] * 3
    assert all("quantized pair" in w for w in p.loc[pairs, "explanation"])
    # A lone *_scales key is no pair: still an unread key, as before.
    assert p.loc["orphan_scales", "severity"] == "silent"
    assert any("quantized companion" in n for n in load.trace.notes)
    assert load.verdict.expected == 3
    assert not any("gate_up_proj" in str(k) for k in load.hints_table["title"])


def test_quantized_pairs_follow_the_key_map(tmp_path):
    _quantized_folder(tmp_path)
    load = dcpviz.simulate_load(tmp_path, one_rank(), key_map=lambda k: "m." + k)
    unread = set(load.problems.query("severity == 'expected'")["fqn"])
    assert unread == {
        "m.experts.gate_up_proj_blocks",
        "m.experts.gate_up_proj_scales",
        "m.fc1.weight_scale_inv",
    }
