"""Names for groups of tensors: module prefixes and collapsed layer indices.

``layers.0.attention.wq.weight`` ... ``layers.79.attention.wq.weight`` read as one row,
``layers.[0-79].attention.wq.weight``, when they are sharded alike.
"""

from __future__ import annotations

from collections.abc import Iterable


def pattern_of(fqn: str) -> str:
    """The fqn with every all-digit component replaced by '*'."""
    return ".".join("*" if part.isdigit() else part for part in fqn.split("."))


def numbers_of(fqn: str) -> tuple[int, ...]:
    """The layer numbers in a key ('layers.3.w' -> (3,)), in order."""
    return tuple(int(p) for p in fqn.split(".") if p.isdigit())


def module_of(fqn: str, depth: int = 1) -> str:
    """The module an entry belongs to, ``depth`` names deep (layer numbers as '*', which do not
    count): 'layers' (1), 'layers.*.attention' (2). The last component (the parameter name) is
    never part of it, except for a top-level entry."""
    parts = fqn.split(".")
    owner = parts[:-1] or parts
    out, named = [], 0
    for p in owner:
        if named == depth:
            break
        out.append("*" if p.isdigit() else p)
        named += not p.isdigit()
    return ".".join(out)


def ranges(numbers: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    nums = sorted(set(numbers))
    out, start, prev = [], None, None
    for n in nums:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(out)


def collapsed_label(fqns: list[str]) -> str:
    """One label for fqns that share a pattern: digits that vary become '[a-b]'."""
    if len(fqns) == 1:
        return fqns[0]
    split = [f.split(".") for f in fqns]
    first = split[0]
    out = []
    for i, part in enumerate(first):
        column = {s[i] for s in split}
        if len(column) == 1:
            out.append(part)
        else:
            out.append(f"[{ranges(int(c) for c in column)}]")
    return ".".join(out)
