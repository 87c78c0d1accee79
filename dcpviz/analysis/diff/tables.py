"""The tables of a diff, from two sides (and, with values, the compared chunks): no torch.

- ``changes``: one row per key of A or B: what differs (the diff table);
- ``tensors``: keys on both sides (or renamed): shape and dtype of each;
- ``layout``: chunking, writer ranks, files and bytes of each side (information only);
- ``values``: per key, the values compared (max abs difference, first differing index);
- ``regions``: per compared overlap of a chunk of A with one of B;
- ``renames``: rename candidates, certain or not.

Content is the same when the keys, shapes, dtypes and (where compared) values are; a layout
difference alone never makes content differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from dcpviz.analysis.diff.renames import RenameCandidate, rename_candidates
from dcpviz.core.diff_model import DiffSide, RegionResult, SideEntry, ValueResult

CHANGE_COLUMNS = ["fqn", "fqn_b", "change", "detail"]
# change, in the order rows are shown (content changes first)
CHANGES = (
    "values differ",
    "dtype",
    "shape",
    "kind",
    "renamed",
    "rename?",
    "only in A",
    "only in B",
    "layout only",
    "same",
    "not compared",
)


@dataclass(frozen=True)
class Pairing:
    """Which key of A goes with which key of B: common keys plus certain renames."""

    pairs: tuple[tuple[str, str], ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    renames: tuple[RenameCandidate, ...]


def pairing(a: DiffSide, b: DiffSide) -> Pairing:
    """Common keys, then certain renames among the rest; the rest is only in A or only in B."""
    ea, eb = a.by_fqn(), b.by_fqn()
    common = sorted(set(ea) & set(eb))
    rest_a = [ea[k] for k in sorted(set(ea) - set(eb))]
    rest_b = [eb[k] for k in sorted(set(eb) - set(ea))]
    renames = rename_candidates(rest_a, rest_b)
    certain = [(c.fqn_a, c.fqn_b) for c in renames if c.certain]
    taken_a, taken_b = {x for x, _ in certain}, {y for _, y in certain}
    return Pairing(
        pairs=tuple((k, k) for k in common) + tuple(certain),
        only_a=tuple(e.fqn for e in rest_a if e.fqn not in taken_a),
        only_b=tuple(e.fqn for e in rest_b if e.fqn not in taken_b),
        renames=renames,
    )


def comparable(x: SideEntry, y: SideEntry) -> bool:
    """Values can be compared box by box: two tensors of one shape, or two bytes entries."""
    return x.kind == y.kind and (x.kind == "bytes" or x.shape == y.shape)


def _fmt(box: tuple[int, ...] | None) -> str:
    return "" if box is None else "(" + ", ".join(str(v) for v in box) + ")"


def tensors_table(a: DiffSide, b: DiffSide, p: Pairing) -> pd.DataFrame:
    """One row per paired key: kind, dtype and shape on each side, and what changed."""
    ea, eb = a.by_fqn(), b.by_fqn()
    rows = []
    for x, y in p.pairs:
        u, v = ea[x], eb[y]
        change = (
            "kind"
            if u.kind != v.kind
            else ", ".join(
                c for c, d in (("shape", u.shape != v.shape), ("dtype", u.dtype != v.dtype)) if d
            )
        )
        rows.append((x, y, u.kind, v.kind, u.dtype or "", v.dtype or "", u.shape, v.shape, change))
    return pd.DataFrame(
        rows,
        columns=[
            "fqn",
            "fqn_b",
            "kind_a",
            "kind_b",
            "dtype_a",
            "dtype_b",
            "shape_a",
            "shape_b",
            "change",
        ],
    )


def _layout_of(e: SideEntry) -> tuple:
    ranks = tuple(sorted({c.rank for c in e.chunks if c.rank is not None}))
    files = tuple(sorted({c.file for c in e.chunks if c.file is not None}))
    nbytes = sum(int(c.length or 0) for c in e.chunks)
    boxes = tuple(sorted((c.offsets, c.sizes) for c in e.chunks))
    return len(e.chunks), ranks, files, nbytes, boxes


def layout_table(a: DiffSide, b: DiffSide, p: Pairing) -> pd.DataFrame:
    """Chunks, writer ranks, files and stored bytes of each paired key on each side."""
    ea, eb = a.by_fqn(), b.by_fqn()
    rows = []
    for x, y in p.pairs:
        na, ra, fa, ba, xa = _layout_of(ea[x])
        nb, rb, fb, bb, xb = _layout_of(eb[y])
        rows.append((x, na, nb, ra, rb, len(fa), len(fb), ba, bb, xa == xb))
    return pd.DataFrame(
        rows,
        columns=[
            "fqn",
            "chunks_a",
            "chunks_b",
            "ranks_a",
            "ranks_b",
            "files_a",
            "files_b",
            "nbytes_a",
            "nbytes_b",
            "same_boxes",
        ],
    )


def values_table(values: list[ValueResult]) -> pd.DataFrame:
    """One row per key whose values were compared (or skipped, with the reason)."""
    rows = [
        (
            v.fqn,
            v.fqn_b,
            v.kind,
            v.status,
            v.elements,
            v.compared,
            v.differing,
            v.max_abs_diff,
            v.first_diff,
            v.reason,
        )
        for v in values
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "fqn",
            "fqn_b",
            "kind",
            "status",
            "elements",
            "compared",
            "differing",
            "max_abs_diff",
            "first_diff",
            "reason",
        ],
    )


def regions_table(regions: list[RegionResult]) -> pd.DataFrame:
    """One row per compared overlap of a chunk of A with a chunk of B."""
    rows = [
        (r.fqn, r.offsets, r.sizes, r.chunk_a, r.chunk_b, r.differing, r.max_abs_diff, r.first_diff)
        for r in regions
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "fqn",
            "offsets",
            "sizes",
            "chunk_a",
            "chunk_b",
            "differing",
            "max_abs_diff",
            "first_diff",
        ],
    )


def renames_table(p: Pairing) -> pd.DataFrame:
    """Rename candidates: certain ones are paired; the others are shown for the caller to choose."""
    return pd.DataFrame(
        [(c.fqn_a, c.fqn_b, c.shared_suffix, c.certain, c.rule) for c in p.renames],
        columns=["fqn_a", "fqn_b", "shared_suffix", "certain", "rule"],
    )


def changes_table(
    a: DiffSide,
    b: DiffSide,
    p: Pairing,
    tensors: pd.DataFrame,
    layout: pd.DataFrame,
    values: pd.DataFrame,
    compared: bool,
) -> pd.DataFrame:
    """The diff table: one row per key of A or B, content changes first."""
    same_boxes = dict(zip(layout["fqn"], layout["same_boxes"]))
    by_value = {f: r for f, r in zip(values["fqn"], values.to_dict("records"))}
    candidates: dict[str, list[str]] = {}
    for c in p.renames:
        if not c.certain:
            candidates.setdefault(c.fqn_a, []).append(c.fqn_b)
            candidates.setdefault(c.fqn_b, []).append(c.fqn_a)
    rows = [
        _paired_row(t, by_value.get(t["fqn"]), compared, same_boxes.get(t["fqn"], True))
        for t in tensors.to_dict("records")
    ]
    for k in p.only_a:
        rows.append(
            (
                k,
                "",
                "rename?" if k in candidates else "only in A",
                ("maybe " + " | ".join(sorted(candidates[k]))) if k in candidates else "",
            )
        )
    for k in p.only_b:
        rows.append(
            (
                "",
                k,
                "rename?" if k in candidates else "only in B",
                ("maybe from " + " | ".join(sorted(candidates[k]))) if k in candidates else "",
            )
        )
    frame = pd.DataFrame(rows, columns=CHANGE_COLUMNS)
    order = {c: i for i, c in enumerate(CHANGES)}
    frame["_o"] = frame["change"].map(order)
    frame["_k"] = frame["fqn"].where(frame["fqn"] != "", frame["fqn_b"])
    return (
        frame.sort_values(["_o", "_k"], kind="stable")
        .drop(columns=["_o", "_k"])
        .reset_index(drop=True)
    )


def _paired_row(
    t: dict, v: dict | None, compared: bool, same_boxes: bool
) -> tuple[str, str, str, str]:
    """The row of a key both sides hold (``t``: its tensors row; ``v``: its values row, if any)."""
    x, y = t["fqn"], t["fqn_b"]
    if t["change"]:
        detail = (
            f"{t['dtype_a']} {_fmt(t['shape_a'])} -> {t['dtype_b']} {_fmt(t['shape_b'])}"
            if t["change"] != "kind"
            else f"{t['kind_a']} -> {t['kind_b']}"
        )
        kind = "kind" if t["change"] == "kind" else ("dtype" if "dtype" in t["change"] else "shape")
        if x != y:  # renamed and changed: the row says both
            detail = f"renamed {x} -> {y}; {detail}"
        return x, y, kind, detail
    if v is not None and v["status"] == "differs":
        detail = (
            (
                f"{v['differing']} of {v['compared']} differ; max |a-b| {v['max_abs_diff']:.6g}; "
                f"first at {_fmt(v['first_diff'])}"
            )
            if v["kind"] == "tensor"
            else f"stored bytes differ from byte {v['first_diff'][0] if v['first_diff'] else 0}"
        )
        if v["reason"]:
            detail += f" ({v['reason']})"
        return x, y, "values differ", detail
    if x != y:
        return x, y, "renamed", f"{x} -> {y}"
    return (x, y, *_unchanged(compared, v, same_boxes))


def _unchanged(compared: bool, v: dict | None, same_boxes: bool) -> tuple[str, str]:
    """(change, detail) of a paired key with no content change found. Values asked for but not
    compared (a trace side, a storage transform) are 'not compared' unless the layout differs:
    then the layout is what is known ('layout only'), and the detail says the values were not
    compared and why. 'same' only where values were compared equal or never asked for."""
    skipped = compared and (v is None or v["status"] == "skipped")
    why = (v["reason"] if v is not None else "") if skipped else ""
    if not same_boxes:
        values = (
            "values not compared" + (f": {why}" if why else "")
            if skipped or not compared
            else "same values"
        )
        return "layout only", f"saved in other chunks; {values}"
    if skipped:
        return "not compared", why
    return "same", ""


CONTENT_CHANGES = (
    "values differ",
    "dtype",
    "shape",
    "kind",
    "renamed",
    "rename?",
    "only in A",
    "only in B",
)


def differs(changes: pd.DataFrame) -> bool:
    """Content differs: any change other than layout (a rename is a change of the key)."""
    return bool(changes["change"].isin(CONTENT_CHANGES).any())
