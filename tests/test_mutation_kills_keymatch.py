"""Tests written for core/keymatch.py's surviving mutants (bench/mutate.py target ``keymatch``).

Pure key facts, no torch: each expected answer is worked out by hand from the module's rules
(wrapper segments, certain rewrites, ties refused, resize / reshape / cast once matched)."""

from __future__ import annotations

from dcpviz.core.keymatch import KeyFacts, match_keys, rewrite_of


def facts(d):
    return {k: KeyFacts(v, "float32" if v is not None else None) for k, v in d.items()}


def test_keys_on_both_sides_are_neither_missing_nor_unexpected():
    m = match_keys(facts({"a.w": (2,), "b.w": (3,)}), facts({"a.w": (2,), "c.w": (3,)}))
    assert m.missing == () and m.unexpected == ()
    assert m.mapping == (("b.w", "c.w"),)


# -- wrapper rules name the wrapper segments of each side ---------------------------------------
def test_a_wrapper_rule_names_the_segments_only_one_side_has():
    m = match_keys(
        facts({"fc.w": (4,), "fc.b": (2,)}), facts({"module.fc.w": (4,), "module.fc.b": (2,)})
    )
    assert [(r.kind, r.a, r.b, r.pairs) for r in m.rules] == [
        ("wrapper", "", "module", (("fc.b", "module.fc.b"), ("fc.w", "module.fc.w")))
    ]
    # both sides have `module`; only the checkpoint has torch.compile's `_orig_mod`
    m = match_keys(facts({"module.fc.w": (4,)}), facts({"module._orig_mod.fc.w": (4,)}))
    assert [(r.kind, r.a, r.b) for r in m.rules] == [("wrapper", "", "_orig_mod")]
    # the other way round: the target has the wrapper
    m = match_keys(facts({"_orig_mod.fc.w": (4,)}), facts({"fc.w": (4,)}))
    assert [(r.kind, r.a, r.b) for r in m.rules] == [("wrapper", "_orig_mod", "")]


# -- the caller's choices ---------------------------------------------------------------------
TWINS = facts({f"{p}.{k}": (4, 4) for p in ("model", "ema") for k in ("w", "b")})


def test_a_prefix_choice_maps_only_the_keys_under_that_prefix():
    # (dec.w has another shape: no rewrite of it is certain, and it is not under `enc.`)
    target = facts({"enc.w": (4, 4), "enc.b": (4, 4), "dec.w": (4, 2)})
    refused = match_keys(target, TWINS)
    assert refused.mapping == ()
    m = match_keys(target, TWINS, choices={"enc.": "ema."})
    assert m.rename == {"enc.b": "ema.b", "enc.w": "ema.w"}
    assert [(r.kind, r.a, r.b) for r in m.rules] == [("choice", "enc.", "ema.")]
    assert "dec.w" in m.missing


def test_a_choice_that_names_no_checkpoint_key_changes_nothing():
    target = facts({"enc.w": (4, 4), "enc.b": (4, 4)})
    m = match_keys(target, TWINS, choices={"enc.": "nowhere.", "enc.w": "nowhere.w", "enc": "x"})
    assert m.mapping == () and m.missing == ("enc.b", "enc.w")


QKV_SAVED = facts({f"attn.{p}.weight": (4, 4) for p in ("q_proj", "k_proj", "v_proj")})


def test_a_whole_key_choice_maps_that_key_alone():
    target = facts({f"attn.{p}.weight": (4, 4) for p in ("wq", "wk", "wv")})
    m = match_keys(target, QKV_SAVED, choices={"attn.wq.weight": "attn.q_proj.weight"})
    assert m.rename == {"attn.wq.weight": "attn.q_proj.weight"}
    assert m.missing == ("attn.wk.weight", "attn.wv.weight")


def test_a_whole_key_choice_may_name_the_key_without_its_wrapper_segments():
    target = facts({f"_orig_mod.attn.{p}.weight": (4, 4) for p in ("wq", "wk", "wv")})
    m = match_keys(target, QKV_SAVED, choices={"attn.wq.weight": "attn.q_proj.weight"})
    assert m.rename == {"_orig_mod.attn.wq.weight": "attn.q_proj.weight"}
    # or with them
    m = match_keys(target, QKV_SAVED, choices={"_orig_mod.attn.wk.weight": "attn.k_proj.weight"})
    assert m.rename == {"_orig_mod.attn.wk.weight": "attn.k_proj.weight"}


def test_a_choice_that_reaches_two_keys_with_one_source_maps_neither():
    # `wq.weight` and `module.wq.weight` are one name without the wrapper: both would load from
    # q_proj, and nothing says which one the caller meant
    target = facts({"wq.weight": (4, 4), "module.wq.weight": (4, 4)})
    saved = facts({"q_proj.weight": (4, 4), "k_proj.weight": (4, 4)})
    for choice in ({"wq": "q_proj"}, {"wq.weight": "q_proj.weight"}):
        m = match_keys(target, saved, choices=choice)
        assert m.mapping == (), choice
        assert set(m.missing) == {"wq.weight", "module.wq.weight"}


# -- possible sources: an unread key that could hold a missing one -----------------------------
def _possible(target, saved):
    m = match_keys(facts(target), facts(saved))
    return [(a.a, a.candidates, a.keys, a.pairs) for a in m.ambiguities], m.missing


def test_a_resized_unread_key_of_the_same_leaf_is_a_possible_source():
    # one dim changed and no shape to agree on: no rewrite is certain, but dec.w may be enc.w
    assert _possible({"enc.w": (4, 4)}, {"dec.w": (4, 6)}) == (
        [("enc.w", ("dec.w",), ("enc.w",), (("enc.w", "dec.w"),))],
        ("enc.w",),
    )
    assert _possible({"enc.w": (4, 4, 4)}, {"dec.w": (4, 4, 6)})[0][0][1] == ("dec.w",)
    # Python values: by kind alone
    assert _possible({"enc.lr": None}, {"dec.lr": None})[0][0][1] == ("dec.lr",)


def test_keys_that_cannot_hold_each_other_are_not_possible_sources():
    # two dims changed; a tensor and a Python value; another number of dims
    for t, s in (
        ((4, 4), (6, 6)),
        ((4, 4, 4), (4, 6, 6)),
        ((4, 4), None),
        (None, (4,)),
        ((4,), (4, 1)),
    ):
        assert _possible({"enc.w": t}, {"dec.w": s}) == ([], ("enc.w",)), (t, s)


def test_wrapper_rules_list_every_segment_of_a_side():
    m = match_keys(facts({"fc.w": (4,)}), facts({"module._orig_mod.fc.w": (4,)}))
    assert [(r.kind, r.a, r.b) for r in m.rules] == [("wrapper", "", "_orig_mod, module")]
    m = match_keys(facts({"module._orig_mod.fc.w": (4,)}), facts({"fc.w": (4,)}))
    assert [(r.kind, r.a, r.b) for r in m.rules] == [("wrapper", "_orig_mod, module", "")]
    # a segment both sides have is no side's own
    m = match_keys(facts({"module._orig_mod.fc.w": (4,)}), facts({"module.fc.w": (4,)}))
    assert [(r.kind, r.a, r.b) for r in m.rules] == [("wrapper", "_orig_mod", "")]


# -- rewrites: what is evidence, what a rewrite is ---------------------------------------------
def test_a_certain_rewrite_is_a_rule_of_kind_rewrite():
    m = match_keys(
        facts({"enc.w": (4, 4), "enc.b": (4,)}), facts({"encoder.w": (4, 4), "encoder.b": (4,)})
    )
    assert [(r.kind, r.a, r.b, r.pairs) for r in m.rules] == [
        ("rewrite", "enc", "encoder", (("enc.b", "encoder.b"), ("enc.w", "encoder.w")))
    ]


def test_python_values_scalars_and_other_shapes_establish_no_rewrite():
    for t, s in (
        ({"enc.lr": None, "enc.eps": None}, {"dec.lr": None, "dec.eps": None}),
        ({"enc.step": (), "enc.n": ()}, {"dec.step": (), "dec.n": ()}),
        ({"enc.w": (4, 4), "enc.b": (4,)}, {"dec.w": (4, 6), "dec.b": (5,)}),
    ):
        m = match_keys(facts(t), facts(s))
        assert m.mapping == () and m.rules == (), (t, s)
        # each key is shown with its possible source instead (the caller decides)
        assert {p for a in m.ambiguities for p in a.pairs} == {(k, "dec" + k[3:]) for k in t}, (
            t,
            s,
        )


def test_a_module_nested_in_one_of_its_own_name():
    # `fc` wrapped in a module that holds it as `fc` (mlp.fc -> mlp.fc.fc): the shared front is
    # `mlp.`, the shared tail `fc.weight`, and the checkpoint has one more `fc.` between
    target = facts({"mlp.fc.weight": (4, 4), "mlp.fc.bias": (4,)})
    saved = facts({"mlp.fc.fc.weight": (4, 4), "mlp.fc.fc.bias": (4,)})
    m = match_keys(target, saved)
    assert m.rename == {"mlp.fc.bias": "mlp.fc.fc.bias", "mlp.fc.weight": "mlp.fc.fc.weight"}
    assert rewrite_of("mlp.fc.weight", "mlp.fc.fc.weight") == ("mlp.", "", "fc.")
    assert rewrite_of("a.w", "a.w.w") == ("a.", "", "w.")


def test_a_rewrite_never_renames_a_leaf():
    assert rewrite_of("a.w", "b.v") is None
    assert rewrite_of("a.exp_avg", "a.momentum_buffer") is None
    assert rewrite_of("enc.w", "dec.w") == ("", "enc.", "dec.")
    assert rewrite_of("x.enc.w", "x.dec.w") == ("x.", "enc.", "dec.")


def test_a_rewrite_changes_at_most_three_segments_on_both_sides_together():
    assert rewrite_of("enc.w", "model.encoder.w") == ("", "enc.", "model.encoder.")
    assert rewrite_of("x.enc.w", "x.a.b.c.w") is None  # 1 + 3 segments
    m = match_keys(
        facts({"enc.w": (4, 4), "enc.b": (4,)}),
        facts({"model.encoder.w": (4, 4), "model.encoder.b": (4,)}),
    )
    assert m.rename == {"enc.b": "model.encoder.b", "enc.w": "model.encoder.w"}


def test_a_tensor_and_a_python_value_never_pair_nor_other_numbers_of_dims():
    m = match_keys(facts({"fc.w": (4,)}), facts({"module.fc.w": None}))
    assert m.mapping == () and m.missing == ("fc.w",) and m.ambiguities == ()
    m = match_keys(facts({"fc.w": None}), facts({"module.fc.w": (4,)}))
    assert m.mapping == () and m.missing == ("fc.w",) and m.ambiguities == ()
    m = match_keys(facts({"fc.w": (4,)}), facts({"module.fc.w": (4, 4)}))
    assert m.mapping == () and m.missing == ("fc.w",) and m.ambiguities == ()
    # Python values pair with Python values by name
    m = match_keys(facts({"fc.lr": None}), facts({"module.fc.lr": None}))
    assert m.rename == {"fc.lr": "module.fc.lr"}


def test_a_key_that_is_only_a_wrapper_name_has_no_name_to_match():
    # `module` alone is '' without its wrapper segment: no leaf, no source for anything
    m = match_keys(facts({"x.w": (4,)}), facts({"module": (4,)}))
    assert m.mapping == () and m.missing == ("x.w",) and m.unexpected == ("module",)
    assert m.ambiguities == ()


def test_equal_names_pair_only_one_to_one():
    # two wrapped spellings of one name in the checkpoint: which one is the source is not known
    m = match_keys(facts({"fc.w": (4,)}), facts({"module.fc.w": (4,), "_orig_mod.fc.w": (4,)}))
    assert m.mapping == ()
    assert [(a.a, a.candidates) for a in m.ambiguities] == [
        ("fc.w", ("_orig_mod.fc.w", "module.fc.w"))
    ]
    # two target keys of one name, one checkpoint key: neither is mapped onto it
    m = match_keys(
        facts({"_orig_mod.fc.w": (4,), "module.fc.w": (4,)}),
        facts({"_fsdp_wrapped_module.fc.w": (4,)}),
    )
    assert m.mapping == () and m.missing == ("_orig_mod.fc.w", "module.fc.w")


def test_a_wrapper_segment_that_moved_pairs_by_name_under_no_wrapper_rule():
    # both keys hold `module`, at other places: equal names without it, but no side has a
    # wrapper segment the other lacks, so the rule names none (kind 'rewritten', no text)
    m = match_keys(facts({"module.fc.w": (4,)}), facts({"fc.module.w": (4,)}))
    assert m.rename == {"module.fc.w": "fc.module.w"}
    assert [(r.kind, r.a, r.b) for r in m.rules] == [("rewritten", "", "")]


def test_one_coincidental_pair_is_no_pattern_while_other_keys_are_open():
    # enc.w / dec.w agree in shape, but one pair is a coincidence while another key is open
    target = facts({"enc.w": (4, 4), "other.z": (3,)})
    saved = facts({"dec.w": (4, 4), "x.y": (5,)})
    m = match_keys(target, saved)
    assert m.mapping == ()
    assert [(a.a, a.candidates, a.keys) for a in m.ambiguities] == [("enc", ("dec",), ("enc.w",))]
    # the one key left on each side: then it is the pattern
    m = match_keys(facts({"enc.w": (4, 4)}), facts({"dec.w": (4, 4), "x.y": (5,)}))
    assert m.rename == {"enc.w": "dec.w"}


def test_a_rewrite_seen_once_is_not_shown_next_to_those_seen_on_every_layer():
    saved = {f"l.{i}.{p}.weight": (4, 4) for i in range(2) for p in ("q_proj", "k_proj", "v_proj")}
    saved["l.0.x_proj.weight"] = (4, 4)  # only on layer 0
    target = {f"l.{i}.{p}.weight": (4, 4) for i in range(2) for p in ("wq", "wk", "wv")}
    m = match_keys(facts(target), facts(saved))
    assert m.mapping == ()
    assert [(a.a, a.candidates) for a in m.ambiguities] == [
        (w, ("k_proj", "q_proj", "v_proj")) for w in ("wk", "wq", "wv")
    ]


def test_keys_after_a_tie_still_get_their_possible_sources():
    saved = {f"l.{i}.{p}.weight": (4, 4) for i in range(2) for p in ("q_proj", "k_proj")}
    target = {f"l.{i}.{p}.weight": (4, 4) for i in range(2) for p in ("wq", "wk")}
    saved["z.y.w"], target["z.x.w"] = (4, 6), (4, 4)  # sorted after the tied keys
    m = match_keys(facts(target), facts(saved))
    assert [(a.a, a.candidates) for a in m.ambiguities] == [
        ("wk", ("k_proj", "q_proj")),
        ("wq", ("k_proj", "q_proj")),
        ("z.x.w", ("z.y.w",)),
    ]


def test_same_name_keys_are_resized_reshaped_or_cast_by_kind():
    target = {
        "grown": KeyFacts((12, 4), "float32"),
        "flat": KeyFacts((4, 4), "float32"),
        "half": KeyFacts((4,), "float32"),
        "step": KeyFacts((), "float32"),  # a tensor here, a Python value in the checkpoint
        "lr": KeyFacts(None),
    }
    saved = {
        "grown": KeyFacts((10, 4), "float32"),
        "flat": KeyFacts((16,), "float32"),
        "half": KeyFacts((4,), "bfloat16"),
        "step": KeyFacts(None),
        "lr": KeyFacts(None),
    }
    m = match_keys(target, saved)
    assert m.resized == (("grown", "grown", (10, 4), (12, 4)),)
    assert m.reshaped == (("flat", "flat", (16,), (4, 4)),)
    assert m.cast == (("half", "half", "bfloat16", "float32"),)
    assert m.mapping == () and m.missing == () and m.unexpected == ()
