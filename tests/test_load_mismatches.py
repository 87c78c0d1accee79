"""Every mismatch on every rank, with DCP's own message where DCP raises, and the hints.

DCP stops at the first bad key of each rank; each test checks that the engine's list is the full
one, against key sets computed independently from the models' plain state dicts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
from load_cases import compiled_mlp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint._nested_dict import flatten_state_dict

import dcpviz
from dcpviz.core.trace import MismatchRecord
from dcpviz.engine.job.models import LLAMA_CONFIGS, MLP, Transformer


def flat_keys(factory) -> list[str]:
    """The keys DCP plans for a model: its plain state dict, flattened by DCP."""
    with torch.device("meta"):
        m = factory()
    return list(flatten_state_dict(m.state_dict())[0])


class DDPLike(nn.Module):
    """What DistributedDataParallel does to state-dict keys: the model lives under ``module``."""

    def __init__(self) -> None:
        super().__init__()
        self.module = MLP()

    def fsdp_units(self):
        return [self.module.fc1, self.module.fc2]


class RenamedNorm(MLP):
    """The mlp with its LayerNorm renamed from ``norm`` to ``ln``."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = self.norm
        del self.norm


def big_vocab() -> nn.Module:
    return Transformer(dataclasses.replace(LLAMA_CONFIGS["llama-tiny"], vocab_size=1024))


def three_layers() -> nn.Module:
    return Transformer(dataclasses.replace(LLAMA_CONFIGS["llama-tiny"], n_layers=3))


@pytest.fixture(scope="module")
def mlp_fsdp4():
    return dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))


@pytest.fixture(scope="module")
def tiny_fsdp4():
    return dcpviz.simulate_save(dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="fsdp"))


def by_kind(result, kind):
    df = result.mismatches
    return df[df["kind"] == kind]


def test_torch_compile_prefix_lists_every_key_on_every_rank(mlp_fsdp4):
    load = dcpviz.simulate_load(
        mlp_fsdp4, dcpviz.Scenario(model=compiled_mlp, world_size=4, recipe="fsdp")
    )
    plain = flat_keys(MLP)
    missing = by_kind(load, "missing")
    # Every target key, on every rank — DCP itself only names the first one per rank.
    assert set(zip(missing["rank"], missing["fqn"])) == {
        (r, "_orig_mod." + k) for r in range(4) for k in plain
    }
    assert all(
        m == f"Missing key in checkpoint state_dict: {f}."
        for f, m in zip(missing["fqn"], missing["message"])
    )
    assert set(by_kind(load, "unexpected")["fqn"]) == set(plain)
    assert len(load.errors) == 4 and all(
        "Missing key in checkpoint state_dict: _orig_mod." in e for e in load.errors
    )
    assert (
        load.trace.global_plans is None and len(load.read_items) == 0
    )  # as dcp.load: no global step
    h = load.hints[0]
    assert h.kind == "prefix" and "'_orig_mod.'" in h.title and "torch.compile" in h.detail
    assert h.rename == {"_orig_mod." + k: k for k in plain}
    assert "dcpviz.RenamingLoadPlanner(rename" in h.fix and "get_model_state_dict" in h.detail
    assert all(f"{t!r}: {c!r}," in h.fix for t, c in h.rename.items())  # the whole mapping, as code
    assert len(load.hints) == 1  # the prefix explains everything
    table = load.hints_table
    assert table.loc[0, "kind"] == "prefix" and table.loc[0, "keys"] == len(plain)
    assert table.loc[0, "mapping"] == h.rename


def test_ddp_prefix_in_the_checkpoint(mlp_fsdp4):
    saved = dcpviz.simulate_save(dcpviz.Scenario(model=DDPLike, world_size=2, recipe="replicate"))
    load = dcpviz.simulate_load(saved, dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))
    plain = flat_keys(MLP)
    assert set(by_kind(load, "missing")["fqn"]) == set(plain)
    assert len(by_kind(load, "missing")) == 4 * len(plain)
    assert set(by_kind(load, "unexpected")["fqn"]) == {"module." + k for k in plain}
    h = load.hints[0]
    assert h.kind == "prefix" and "'module.'" in h.title and "DistributedDataParallel" in h.detail
    assert h.rename == {k: "module." + k for k in plain}
    assert all(f"{t!r}: {c!r}," in h.fix for t, c in h.rename.items())


def test_grown_vocabulary_is_two_size_mismatches_not_one(tiny_fsdp4):
    load = dcpviz.simulate_load(
        tiny_fsdp4, dcpviz.Scenario(model=big_vocab, world_size=2, recipe="fsdp")
    )
    size = by_kind(load, "size")
    assert set(zip(size["rank"], size["fqn"])) == {
        (r, f) for r in range(2) for f in ("tok_embeddings.weight", "output.weight")
    }
    for row in size.itertuples():
        assert row.message == (
            f"Size mismatch between saved torch.Size([1000, 64]) and current: "
            f"torch.Size([1024, 64]) for {row.fqn}"
        )
        assert (row.saved, row.current) == ("(1000, 64)", "(1024, 64)")
    assert set(load.mismatches["kind"]) == {"size"}
    # DCP's own errors name only the first bad key of each rank.
    assert all("tok_embeddings.weight" in e and "output.weight" not in e for e in load.errors)
    h = load.hints[0]
    assert h.kind == "size" and "1000 to 1024" in h.title and "vocabulary" in h.title
    assert set(h.keys) == {"tok_embeddings.weight", "output.weight"}


def test_dtype_change_plans_but_is_listed(tiny_fsdp4):
    load = dcpviz.simulate_load(
        tiny_fsdp4,
        dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp", dtype="bfloat16"),
    )
    assert load.ok and load.trace.final_plans is not None  # DCP does not check dtypes
    dt = by_kind(load, "dtype")
    assert set(dt["fqn"]) == set(flat_keys(lambda: Transformer(LLAMA_CONFIGS["llama-tiny"])))
    assert set(dt["rank"]) == {0, 1}
    assert (dt["saved"] == "float32").all() and (dt["current"] == "bfloat16").all()
    assert (dt["message"] == "").all() and not dt["dcp_raised"].any()
    h = load.hints[0]
    assert h.kind == "dtype" and "float32" in h.title and "bfloat16" in h.title
    assert "precision is lost" in h.detail and "model.to(torch.float32)" in h.fix


def test_partial_model_with_allow_partial_load(tiny_fsdp4):
    new = set(flat_keys(three_layers)) - set(
        flat_keys(lambda: Transformer(LLAMA_CONFIGS["llama-tiny"]))
    )
    assert new and all(k.startswith("layers.2.") for k in new)
    target = dcpviz.Scenario(model=three_layers, world_size=2, recipe="fsdp")
    # An instance (deep-copied per rank), a class-like factory and a lambda all work.
    for planner in (
        DefaultLoadPlanner(allow_partial_load=True),
        lambda: DefaultLoadPlanner(allow_partial_load=True),
    ):
        load = dcpviz.simulate_load(tiny_fsdp4, target, planner)
        assert load.ok, load.errors
        missing = by_kind(load, "missing")
        assert set(zip(missing["rank"], missing["fqn"])) == {(r, k) for r in range(2) for k in new}
        assert (missing["message"] == "").all()
        assert set(load.mismatches["kind"]) == {"missing"}
        # Everything else is read: the reads cover every saved key.
        assert set(load.read_items["fqn"]) == set(load.metadata.state_dict_metadata)
        assert [h.kind for h in load.hints] == [
            "partial"
        ] and "keep their initial values" in load.hints[0].title
    # Strict: DCP raises on each rank at the first new key; all nine are listed, with DCP's text.
    strict = dcpviz.simulate_load(tiny_fsdp4, target)
    assert len(strict.errors) == 2
    missing = by_kind(strict, "missing")
    assert set(missing["fqn"]) == new and len(missing) == 2 * len(new)
    assert (
        missing["message"]
        == missing["fqn"].map(lambda f: f"Missing key in checkpoint state_dict: {f}.")
    ).all()
    assert strict.hints[0].kind == "partial" and "allow_partial_load=True" in strict.hints[0].fix


def test_renamed_module_gets_a_rename_hint(mlp_fsdp4):
    load = dcpviz.simulate_load(
        mlp_fsdp4, dcpviz.Scenario(model=RenamedNorm, world_size=2, recipe="fsdp")
    )
    assert set(by_kind(load, "missing")["fqn"]) == {"ln.weight", "ln.bias"}
    assert set(by_kind(load, "unexpected")["fqn"]) == {"norm.weight", "norm.bias"}
    h = load.hints[0]
    assert h.kind == "rename" and h.rename == {"ln.weight": "norm.weight", "ln.bias": "norm.bias"}
    assert "'ln.weight': 'norm.weight'," in h.fix and "planner=planner" in h.fix


def test_different_shapes_are_not_called_a_rename(tiny_fsdp4):
    """A target missing one layer and holding another: same names but for the layer index. The
    rename rule must not pair tensors of different shapes or different layer numbers."""

    def shifted() -> nn.Module:
        m = Transformer(dataclasses.replace(LLAMA_CONFIGS["llama-tiny"], n_layers=3))
        del m.layers["0"]
        return m

    load = dcpviz.simulate_load(
        tiny_fsdp4, dcpviz.Scenario(model=shifted, world_size=2, recipe="fsdp")
    )
    assert {h.kind for h in load.hints} <= {"partial", "unexpected"}


def _with_mismatches(trace, records):
    return dataclasses.replace(trace, mismatches=tuple(records))


def test_optimizer_key_shapes(mlp_fsdp4):
    from dcpviz.analysis.load.hints import compute_hints

    base = dcpviz.simulate_load(
        mlp_fsdp4, dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
    ).trace
    by_name = [
        MismatchRecord(
            f"optim.state.fc1.weight.{s}",
            "missing",
            (0, 1),
            current_size=(190, 16),
            current_dtype="float32",
        )
        for s in ("exp_avg", "exp_avg_sq")
    ]
    by_index = [
        MismatchRecord(
            f"optim.state.0.{s}", "unexpected", (), saved_size=(190, 16), saved_dtype="float32"
        )
        for s in ("exp_avg", "exp_avg_sq")
    ]
    hints = compute_hints(_with_mismatches(base, by_name + by_index))
    assert [h.kind for h in hints] == ["optimizer"]
    assert (
        "parameter indices in the checkpoint but by parameter names in the target" in hints[0].title
    )
    assert "set_optimizer_state_dict" in hints[0].fix
    only_target = compute_hints(_with_mismatches(base, by_name))
    assert [h.kind for h in only_target] == ["optimizer"] and "does not have" in only_target[
        0
    ].title


class TypeSwapped(MLP):
    """Where the checkpoint holds bytes (the extra state's 'epoch') this target holds a tensor,
    and where it holds a tensor ('progress.step') a plain int (a state-dict hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.progress.get_extra_state = lambda: {"epoch": torch.zeros(2), "note": "n"}
        self._register_state_dict_hook(TypeSwapped._int_step)

    @staticmethod
    def _int_step(module, state_dict, prefix, local_metadata):
        state_dict[prefix + "progress.step"] = 7
        return state_dict


def test_bytes_vs_tensor_is_a_type_mismatch(mlp_fsdp4):
    load = dcpviz.simulate_load(
        mlp_fsdp4, dcpviz.Scenario(model=TypeSwapped, world_size=2, recipe="fsdp")
    )
    t = by_kind(load, "type").set_index(["fqn", "rank"])
    assert set(t.index) == {
        (f, r) for f in ("progress.step", "progress._extra_state.epoch") for r in range(2)
    }
    # DCP raises on the tensor-saved key, with its own text, and plans the other silently.
    assert t.loc[("progress.step", 0), "message"] == (
        "Invalid checkpoint metadata for progress.step, expected BytesStorageMetadata but found "
        "<class 'torch.distributed.checkpoint.metadata.TensorStorageMetadata'>"
    )
    assert t.loc[("progress._extra_state.epoch", 0), "message"] == ""
    assert "not updated" in t.loc[("progress._extra_state.epoch", 0), "explanation"]
    assert set(load.mismatches["kind"]) == {"type"}
