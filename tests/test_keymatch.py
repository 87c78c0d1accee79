"""core.keymatch on key facts alone (no torch, no simulation): every cause at once, at any
depth; certain or refused; the same answer for any order of the inputs."""

from __future__ import annotations

import random

from dcpviz.core.keymatch import KeyFacts, compose, match_keys


def facts(d):
    return {k: KeyFacts(v, "float32" if v is not None else None) for k, v in d.items()}


def test_wrapper_segments_anywhere_and_inside_optimizer_state():
    saved = facts(
        {
            "model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.attn.w": (4, 4),
            "model.layers.1._fsdp_wrapped_module._checkpoint_wrapped_module.attn.w": (4, 4),
            "optim.state._orig_mod.layers.0.attn.w.exp_avg": (4, 4),
            "app.model.module.head.w": (2, 4),
        }
    )
    target = facts(
        {
            "model.layers.0.attn.w": (4, 4),
            "model.layers.1.attn.w": (4, 4),
            "optim.state.layers.0.attn.w.exp_avg": (4, 4),
            "app.model.head.w": (2, 4),
        }
    )
    m = match_keys(target, saved)
    assert m.missing == () and m.unexpected == () and m.ambiguities == ()
    assert (
        m.rename["model.layers.1.attn.w"]
        == "model.layers.1._fsdp_wrapped_module._checkpoint_wrapped_module.attn.w"
    )
    assert (
        m.rename["optim.state.layers.0.attn.w.exp_avg"]
        == "optim.state._orig_mod.layers.0.attn.w.exp_avg"
    )
    assert m.rename["app.model.head.w"] == "app.model.module.head.w"


def test_prefix_then_rename_then_resize_in_one_match():
    saved, target = {}, {}
    for i in range(3):
        for n, sh in (("ln_2.weight", (8,)), ("ln_2.bias", (8,)), ("fc.weight", (16, 8))):
            saved[f"model._orig_mod.h.{i}.{n}"] = sh
            saved[f"optim.state.h.{i}.{n}.exp_avg"] = sh
            target[f"h.{i}.{n.replace('ln_2', 'norm2')}"] = sh
            target[f"optim.state.h.{i}.{n.replace('ln_2', 'norm2')}.exp_avg"] = sh
    saved["model._orig_mod.wte.weight"], target["wte.weight"] = (10, 8), (12, 8)
    m = match_keys(facts(target), facts(saved))
    assert m.missing == () and m.ambiguities == ()
    assert m.rename["h.2.norm2.bias"] == "model._orig_mod.h.2.ln_2.bias"
    assert m.rename["optim.state.h.0.norm2.weight.exp_avg"] == "optim.state.h.0.ln_2.weight.exp_avg"
    assert m.resized == (("wte.weight", "model._orig_mod.wte.weight", (10, 8), (12, 8)),)


def test_look_alikes_are_refused_and_a_choice_decides():
    saved = facts(
        {f"l.{i}.{p}.weight": (4, 4) for i in range(2) for p in ("q_proj", "k_proj", "v_proj")}
    )
    target = facts({f"l.{i}.{p}.weight": (4, 4) for i in range(2) for p in ("wq", "wk", "wv")})
    m = match_keys(target, saved)
    assert m.mapping == ()
    assert {(a.a, a.candidates) for a in m.ambiguities} == {
        (w, ("k_proj", "q_proj", "v_proj")) for w in ("wq", "wk", "wv")
    }
    chosen = match_keys(target, saved, choices={"wq": "q_proj", "wk": "k_proj", "wv": "v_proj"})
    assert chosen.rename["l.1.wv.weight"] == "l.1.v_proj.weight" and chosen.missing == ()


def test_twins_are_refused_whatever_the_prefix_length():
    saved = facts(
        {f"{p}{k}": (4,) for p in ("model.", "ema.", "ema_model_shadow.") for k in ("a.w", "b.w")}
    )
    target = facts({"a.w": (4,), "b.w": (4,)})
    m = match_keys(target, saved)
    assert m.mapping == () and set(m.ambiguities[0].candidates) == {
        "model.",
        "ema.",
        "ema_model_shadow.",
    }
    assert match_keys(target, saved, choices={"": "ema."}).rename == {
        "a.w": "ema.a.w",
        "b.w": "ema.b.w",
    }


def test_leaves_python_values_and_scalars_never_pair():
    saved = facts(
        {
            "optim.param_groups.0.momentum": None,
            "optim.state.w.momentum_buffer": (4,),
            "optim.state.w.step": (),
            "x.step": (),
        }
    )
    target = facts({"optim.param_groups.0.eps": None, "optim.state.w.exp_avg": (4,), "y.step": ()})
    m = match_keys(target, saved)
    assert m.mapping == ()  # no leaf is renamed; one scalar is no evidence


def test_same_answer_for_any_input_order():
    saved = {
        f"model.{p}.{i}.{n}": (4, 4)
        for p in ("enc", "dec")
        for i in range(2)
        for n in ("q.w", "k.w")
    }
    saved.update(
        {f"ema.{p}.{i}.{n}": (4, 4) for p in ("enc",) for i in range(2) for n in ("q.w", "k.w")}
    )
    target = {
        f"{p}.{i}.{n}": (4, 4) for p in ("enc", "dec") for i in range(2) for n in ("wq.w", "k.w")
    }
    first = match_keys(facts(target), facts(saved))
    for seed in range(5):
        rnd = random.Random(seed)
        t, s = list(target.items()), list(saved.items())
        rnd.shuffle(t)
        rnd.shuffle(s)
        again = match_keys(
            facts(dict(t)),
            facts(dict(s)),
            missing=[k for k, _ in t if k not in saved],
            unexpected=[k for k, _ in s if k not in target],
        )
        assert again == first


def test_compose_keeps_the_first_round():
    assert compose({"a": "x.a"}, {"b": "y.b", "x.a": "z.a"}) == {"a": "z.a", "b": "y.b"}
