"""Rename candidates between the keys only in A and the keys only in B: the load fix's matcher
(``core.keymatch.match_keys``), so a diff and a load answer "which key is which" the same way.

B is the *target* side (the keys a job now asks for), A the *checkpoint* side (the keys it
saved): a diff of Tuesday's checkpoint (A) with Wednesday's (B) asks which old key each new key
comes from. Certain: a prefix (``model.`` or none), a wrapper segment (``_orig_mod.``,
``module.``), a module renamed the same way on every layer (``attention_norm -> ln_1``), the one
key left on each side. Refused (shown as candidates, never chosen): look-alike keys of one shape
(``wq/wk/wv`` against ``q_proj/k_proj/v_proj``), twins of one tree (``model.`` and ``ema.``). A
renamed key whose dtype or size changed too is still paired (the matcher reports it as cast or
resized); the diff then shows the dtype or shape change under the rename. Deterministic: the
matcher sorts everything, so no hash, set or dict order decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcpviz.core.diff_model import SideEntry
from dcpviz.core.keymatch import KeyFacts, match_keys


@dataclass(frozen=True)
class RenameCandidate:
    """``fqn_a`` (only in A) may be ``fqn_b`` (only in B); ``certain`` when the evidence allows
    no other pairing. ``rule``: the matcher's cause (``rewrite {'': 'model.'}``, ``wrapper
    _orig_mod``) or, for a candidate, ``one of N`` (how many keys of A the key of B may be)."""

    fqn_a: str
    fqn_b: str
    shared_suffix: int  # dotted segments the two names end in
    certain: bool
    rule: str = ""


def _suffix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(reversed(a.split(".")), reversed(b.split("."))):
        if x != y:
            break
        n += 1
    return n


def _facts(e: SideEntry) -> KeyFacts:
    # A bytes entry is a Python value to the matcher: it pairs by name only, never by shape.
    return KeyFacts(tuple(e.shape) if e.kind == "tensor" and e.shape is not None else None, e.dtype)


def _rule_text(kind: str, a: str, b: str) -> str:
    if kind == "wrapper":
        return (
            "wrapper "
            + (f"{b} in A" if b else "")
            + (" / " if a and b else "")
            + (f"{a} in B" if a else "")
        )
    if kind == "rewrite":
        return f"rewrite {{{a!r}: {b!r}}} (B: A)"
    return kind  # 'rewritten': equal once an earlier rewrite renamed it


def rename_candidates(
    only_a: list[SideEntry], only_b: list[SideEntry]
) -> tuple[RenameCandidate, ...]:
    """Every candidate pair, sorted by (fqn_a, fqn_b): ``certain`` pairs are the matcher's
    mapping, the others its ambiguities' candidate pairs."""
    saved = {e.fqn: _facts(e) for e in only_a}
    target = {e.fqn: _facts(e) for e in only_b}
    m = match_keys(target, saved, missing=sorted(target), unexpected=sorted(saved))
    why = {pair: _rule_text(r.kind, r.a, r.b) for r in m.rules for pair in r.pairs}
    out = {
        (u, t): RenameCandidate(u, t, _suffix(u, t), True, why.get((t, u), ""))
        for t, u in m.mapping
    }
    cands: dict[str, set[str]] = {}
    for amb in m.ambiguities:
        for t, u in amb.pairs:
            cands.setdefault(t, set()).add(u)
    for t in sorted(cands):
        for u in sorted(cands[t]):
            if (u, t) not in out:
                out[(u, t)] = RenameCandidate(u, t, _suffix(u, t), False, f"one of {len(cands[t])}")
    return tuple(out[k] for k in sorted(out))
