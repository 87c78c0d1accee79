"""Rename candidates between the keys only in A and the keys only in B: certain, or refused.

A key of A and a key of B are candidates when they are the same kind with the same shape and
dtype and end in the same name segment ('...wq.weight' / '...wq.weight'). Shape alone decides
nothing (q/k/v projections have equal shapes). Among a key's candidates, the ones sharing the
longest dotted suffix are its best; a pair is certain only when each is the other's one best
(``model.layers.0.wq.weight`` -> ``layers.0.wq.weight``). Everything else is shown as candidates,
never chosen (no hash, set or dict order decides).

One function, ``rename_candidates``, so a shared matcher (the load fix's) can replace it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcpviz.core.diff_model import SideEntry


@dataclass(frozen=True)
class RenameCandidate:
    """``fqn_a`` (only in A) may be ``fqn_b`` (only in B); ``certain`` when the evidence allows
    no other pairing."""

    fqn_a: str
    fqn_b: str
    shared_suffix: int  # dotted segments the two names end in
    certain: bool


def _suffix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(reversed(a.split(".")), reversed(b.split("."))):
        if x != y:
            break
        n += 1
    return n


def _signature(e: SideEntry) -> tuple:
    return (e.kind, e.dtype, e.shape)


def rename_candidates(only_a: list[SideEntry], only_b: list[SideEntry]) -> tuple[RenameCandidate, ...]:
    """Every candidate pair, sorted by (fqn_a, fqn_b); ``certain`` marks mutual unique best pairs."""
    by_sig: dict[tuple, list[SideEntry]] = {}
    for e in only_b:
        by_sig.setdefault(_signature(e), []).append(e)
    pairs: list[tuple[str, str, int]] = []
    for ea in only_a:
        for eb in by_sig.get(_signature(ea), ()):
            n = _suffix(ea.fqn, eb.fqn)
            if n >= 1:
                pairs.append((ea.fqn, eb.fqn, n))
    best_a: dict[str, int] = {}
    best_b: dict[str, int] = {}
    for a, b, n in pairs:
        best_a[a] = max(best_a.get(a, 0), n)
        best_b[b] = max(best_b.get(b, 0), n)
    top_a: dict[str, list[str]] = {}
    top_b: dict[str, list[str]] = {}
    for a, b, n in pairs:
        if n == best_a[a]:
            top_a.setdefault(a, []).append(b)
        if n == best_b[b]:
            top_b.setdefault(b, []).append(a)
    out = [RenameCandidate(a, b, n, top_a.get(a) == [b] and top_b.get(b) == [a]) for a, b, n in pairs]
    return tuple(sorted(out, key=lambda c: (c.fqn_a, c.fqn_b)))
