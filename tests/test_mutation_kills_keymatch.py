"""Tests written for core/keymatch.py's surviving mutants (bench/mutate.py target ``keymatch``).

Pure key facts, no torch: each expected answer is worked out by hand from the module's rules
(wrapper segments, certain rewrites, ties refused, resize / reshape / cast once matched)."""

from __future__ import annotations

from dcpviz.core.keymatch import KeyFacts, match_keys


def facts(d):
    return {k: KeyFacts(v, "float32" if v is not None else None) for k, v in d.items()}


def test_keys_on_both_sides_are_neither_missing_nor_unexpected():
    m = match_keys(facts({"a.w": (2,), "b.w": (3,)}), facts({"a.w": (2,), "c.w": (3,)}))
    assert m.missing == () and m.unexpected == ()
    assert m.mapping == (("b.w", "c.w"),)
