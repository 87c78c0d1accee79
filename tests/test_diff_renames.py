"""Rename candidates in a diff follow the load fix's matcher (core.keymatch), on real saves:
a prefix, a compile wrapper and a module renamed on every layer are certain; look-alike keys of
one shape and EMA twins are candidates, never chosen; a renamed and cast key is paired and shows
its dtype change (values compared across dtypes); the answer is the same under any PYTHONHASHSEED."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from checkpoint_helpers import save_one_process

import dcpviz

warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")


save = save_one_process  # a real single-process dcp.save


def block(seed: int = 0, layers: int = 2) -> dict:
    """A small transformer-like state dict: per layer wq/wk/wv of one shape, a norm, an MLP."""
    g = torch.Generator().manual_seed(seed)
    sd = {"emb.weight": torch.randn(10, 4, generator=g)}
    for i in range(layers):
        for p in ("wq", "wk", "wv"):
            sd[f"layers.{i}.attn.{p}.weight"] = torch.randn(4, 4, generator=g)
        sd[f"layers.{i}.attention_norm.weight"] = torch.randn(4, generator=g)
        sd[f"layers.{i}.mlp.weight"] = torch.randn(6, 4, generator=g)
    return sd


def renamed(sd: dict, fn) -> dict:
    return {fn(k): v.clone() for k, v in sd.items()}


def certain(r) -> list[tuple[str, str]]:
    c = r.renames[r.renames["certain"]]
    return sorted(zip(c["fqn_a"], c["fqn_b"]))


def changed(r) -> dict[str, str]:
    c = r.changes
    return {(x or y): ch for x, y, ch in zip(c["fqn"], c["fqn_b"], c["change"]) if ch != "same"}


@pytest.mark.parametrize("name", ["prefix", "compile wrapper", "layer-consistent rename"])
def test_certain_renames(tmp_path, name):
    sd = block()
    fn = {
        "prefix": lambda k: f"model.{k}",
        "compile wrapper": lambda k: f"_orig_mod.{k}",
        "layer-consistent rename": lambda k: k.replace("attention_norm", "ln_1"),
    }[name]
    a, b = save(sd, tmp_path / "a"), save(renamed(sd, fn), tmp_path / "b")
    r = dcpviz.diff(a, b, values=True)
    moved = sorted((k, fn(k)) for k in sd if fn(k) != k)
    assert certain(r) == moved and r.renames["certain"].all()
    assert {changed(r)[x] for x, _ in moved} == {"renamed"} and len(changed(r)) == len(moved)
    assert set(r.values["status"]) == {"equal"} and len(r.values) == len(
        sd
    )  # renamed keys compared
    # a rename is a change of the keys: a job asking for B's names cannot load A as it is
    assert r.exit_code == 1
    rules = set(r.renames["rule"])
    assert rules == {"wrapper _orig_mod in B"} if name == "compile wrapper" else all(rules)


def test_look_alike_and_ema_twins_refused(tmp_path):
    sd = block()
    proj = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj"}
    # one layer only: each of q/k/v is one key of one shape, so no pattern tells them apart
    one = {k: v for k, v in sd.items() if not k.startswith("layers.1.")}
    other = renamed(one, lambda k: ".".join(proj.get(s, s) for s in k.split(".")))
    r = dcpviz.diff(save(one, tmp_path / "a"), save(other, tmp_path / "b"))
    assert not r.renames["certain"].any()
    qkv_a = sorted(k for k in one if ".attn." in k)
    qkv_b = sorted(k for k in other if ".attn." in k)
    assert sorted(zip(r.renames["fqn_a"], r.renames["fqn_b"])) == sorted(
        (x, y) for x in qkv_a for y in qkv_b
    )
    assert {changed(r)[k] for k in qkv_a + qkv_b} == {"rename?"} and r.exit_code == 1
    # EMA twins: A holds the model twice (model. and ema.), B once: which one B is, is a choice
    twins = {**renamed(sd, lambda k: f"model.{k}"), **renamed(sd, lambda k: f"ema.{k}")}
    r = dcpviz.diff(save(twins, tmp_path / "t"), save(sd, tmp_path / "s"), values=True)
    assert not r.renames["certain"].any() and len(r.values) == 0
    for k in sd:
        rows = r.renames[r.renames["fqn_b"] == k]
        assert sorted(rows["fqn_a"]) == [f"ema.{k}", f"model.{k}"]


def test_renamed_and_cast(tmp_path):
    sd = block()
    sd2 = renamed(sd, lambda k: f"model.{k}")
    sd2["model.layers.0.mlp.weight"] = sd["layers.0.mlp.weight"].to(torch.bfloat16)
    a, b = save(sd, tmp_path / "a"), save(sd2, tmp_path / "b")
    r = dcpviz.diff(a, b, values=True)
    assert ("layers.0.mlp.weight", "model.layers.0.mlp.weight") in certain(r)
    row = r.changes.set_index("fqn").loc["layers.0.mlp.weight"]
    assert row["change"] == "dtype" and row["fqn_b"] == "model.layers.0.mlp.weight"
    assert "renamed" in row["detail"] and "bfloat16" in row["detail"]
    expect = (
        (sd["layers.0.mlp.weight"].double() - sd2["model.layers.0.mlp.weight"].double())
        .abs()
        .max()
        .item()
    )
    v = r.values.set_index("fqn").loc["layers.0.mlp.weight"]
    assert v["fqn_b"] == "model.layers.0.mlp.weight" and v["max_abs_diff"] == pytest.approx(expect)
    assert r.exit_code == 1


_SCRIPT = """
import json
from dcpviz.analysis.diff.renames import rename_candidates
from dcpviz.core.diff_model import SideEntry
e = lambda n, s=(4, 4), d="float32": SideEntry(n, "tensor", d, s, ())
a = [e(f"{p}.layers.{i}.{w}.weight") for p in ("model", "ema") for i in range(3) for w in ("wq", "wk", "wv")]
a += [e(f"model.layers.{i}.attention_norm.weight", (4,)) for i in range(3)] + [e("_orig_mod.head", (2, 4), "bfloat16")]
b = [e(f"layers.{i}.{w}.weight") for i in range(3) for w in ("q_proj", "k_proj", "v_proj")]
b += [e(f"layers.{i}.ln_1.weight", (4,)) for i in range(3)] + [e("head", (2, 4))]
print(json.dumps([list(map(str, (c.fqn_a, c.fqn_b, c.certain, c.rule))) for c in rename_candidates(a, b)]))
"""


def test_same_renames_under_any_hash_seed():
    outs = []
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=os.pathsep.join(sys.path))
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        outs.append(done.stdout)
    assert outs[0] == outs[1] == outs[2]
    got = json.loads(outs[0])
    assert ["_orig_mod.head", "head", "True"] == got[0][:3]  # wrapper + cast: certain
    assert any(c[2] == "False" for c in got)  # the look-alikes and twins stay candidates


def test_a_layer_index_is_never_renamed():
    """A layer gone from A and another new in B are not one key renamed (the old rule, a shared
    name tail, paired them); the matcher never rewrites a numeric segment."""
    from dcpviz.analysis.diff.renames import rename_candidates
    from dcpviz.core.diff_model import SideEntry

    e = lambda n: SideEntry(n, "tensor", "float32", (4, 4), ())  # noqa: E731
    assert rename_candidates([e("layers.3.w.weight")], [e("layers.4.w.weight")]) == ()
    got = rename_candidates(
        [e("layers.3.w.weight")], [e("layers.3.v.weight")]
    )  # leaf kept, one key each
    assert [(c.fqn_a, c.fqn_b, c.certain) for c in got] == [
        ("layers.3.w.weight", "layers.3.v.weight", True)
    ]
