"""The answer first: does a load go through, what is and is not the problem, one row per problem.

Derived from a LoadTrace and its hints alone (no torch). A *verdict* is one line for the top of
every load view ("Resharding 8 → 6 ranks (hsdp → fsdp) is fine; 2 things break the load: ...").
The *problems* table groups the per-rank mismatches by key and DCP message, with the ranks as a
range ("ranks 0–5", "all 6 ranks"); *error groups* do the same for what the planner raised.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from dcpviz.analysis.load_tables import KIND_ORDER, explanation
from dcpviz.core.trace import ErrorRecord, LoadTrace, MismatchRecord

# What a mismatch means for dcp.load: it raises ('breaks'), it goes through but does something
# the user may not want ('silent'), or the user declared it ('expected').
SEVERITY_ORDER = {"breaks": 0, "silent": 1, "expected": 2}
PROBLEM_COLUMNS = ["severity", "kind", "fqn", "saved", "current", "ranks", "n_ranks", "message", "explanation"]
ERROR_GROUP_COLUMNS = ["phase", "exc_type", "message", "ranks", "n_ranks"]


def rank_ranges(ranks: Iterable[int], world_size: int) -> str:
    """``ranks`` in words: 'all 6 ranks', 'rank 3', 'ranks 0–5', 'ranks 0–2, 5'."""
    rs = sorted(set(int(r) for r in ranks))
    if not rs:
        return "no rank"
    if len(rs) == world_size and world_size > 1:
        return f"all {world_size} ranks"
    if len(rs) == 1:
        return f"rank {rs[0]}"
    runs: list[list[int]] = []
    for r in rs:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    parts = [f"{run[0]}–{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs]
    return "ranks " + ", ".join(parts)


def is_expected_unused(fqn: str, patterns: Iterable[str]) -> bool:
    """Whether checkpoint key ``fqn`` was declared unused on purpose (exact key or glob pattern)."""
    return any(fqn == p or fnmatch.fnmatchcase(fqn, p) for p in patterns)


def _partial(trace: LoadTrace) -> bool:
    return bool(trace.planner.option("allow_partial_load", False))


def severity(m: MismatchRecord, partial: bool, expected: Iterable[str] = ()) -> str:
    """'breaks' when dcp.load raises on it, 'expected' for a key declared unused, else 'silent'."""
    if m.kind == "unexpected":
        return "expected" if is_expected_unused(m.fqn, expected) else "silent"
    if m.kind == "dtype" or (m.kind == "missing" and partial):
        return "silent"
    return "breaks"


def _desc(size, dtype) -> str | None:
    if size is None and dtype is None:
        return None
    return f"{dtype or ''} {tuple(size) if size is not None else ''}".strip()


def problems(trace: LoadTrace) -> pd.DataFrame:
    """One row per problem (kind, key, DCP message), every rank it happens on as a range.

    ``severity``: 'breaks' (dcp.load raises), 'silent' (it loads, but casts, skips or ignores),
    'expected' (a checkpoint key declared unused). The per-rank rows stay in ``mismatches``."""
    partial = _partial(trace)
    W = trace.scenario.world_size
    rows = []
    for m in trace.mismatches:
        sev = severity(m, partial, trace.expected_unused)
        ranks = "no rank reads it" if m.kind == "unexpected" else rank_ranges(m.ranks, W)
        why = "declared unused on purpose (expected_unused)" if sev == "expected" else explanation(m, partial)
        rows.append((sev, m.kind, m.fqn, _desc(m.saved_size, m.saved_dtype), _desc(m.current_size, m.current_dtype),
                     ranks, len(m.ranks), m.message, why))
    cols = list(zip(*rows)) if rows else [()] * len(PROBLEM_COLUMNS)
    # Column by column as object arrays, so absent values stay None (not NaN).
    df = pd.DataFrame({name: pd.Series(list(c), dtype=object) for name, c in zip(PROBLEM_COLUMNS, cols)})
    df["n_ranks"] = df["n_ranks"].astype("int64")
    if len(df):
        order = df["severity"].map(SEVERITY_ORDER) * 10 + df["kind"].map(KIND_ORDER).fillna(9)
        df = df.assign(_o=order).sort_values(["_o", "fqn"], kind="stable").drop(columns="_o").reset_index(drop=True)
    return df


def error_groups(errors: Iterable[ErrorRecord], world_size: int) -> pd.DataFrame:
    """What the planner raised, one row per (phase, exception type, message), with its ranks."""
    groups: dict[tuple[str, str, str], list[int | None]] = defaultdict(list)
    for e in errors:
        groups[(e.phase, e.exc_type, e.message)].append(e.rank)
    rows = []
    for (phase, exc_type, message), ranks in groups.items():
        real = [r for r in ranks if r is not None]
        where = rank_ranges(real, world_size) if real else "coordinator"
        rows.append((phase, exc_type, message, where, len(real)))
    return pd.DataFrame(rows, columns=ERROR_GROUP_COLUMNS)


def error_lines(trace: LoadTrace, skip_messages: Iterable[str] = ()) -> list[str]:
    """The planner's errors, each message once with its ranks ('[local, all 6 ranks] RuntimeError: ...');
    messages in ``skip_messages`` (already shown next to their key) are left out."""
    skip = set(skip_messages)
    df = error_groups(trace.errors, trace.scenario.world_size)
    return [f"[{r.phase}, {r.ranks}] {r.exc_type}: {r.message}" for r in df.itertuples(index=False) if r.message not in skip]


# -- the verdict ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """The load in one line. ``loads``: dcp.load goes through. ``harmless``: layout changes that
    are not a problem (world size, mesh, recipe). ``breaking``: what makes dcp.load raise, one
    phrase per cause. ``silent``: what goes through but may not be wanted. ``expected``: checkpoint
    keys declared unused."""

    loads: bool
    harmless: str
    breaking: tuple[str, ...]
    silent: tuple[str, ...]
    expected: int = 0

    @property
    def line(self) -> str:
        """The verdict as one sentence."""
        head = f"{self.harmless} is fine; " if self.harmless else ""
        if self.breaking:
            n = len(self.breaking)
            what = f"{n} thing{'s' if n > 1 else ''} break{'' if n > 1 else 's'} the load: " + ", ".join(self.breaking)
            out = head + what
            if self.silent:
                out += "; besides, " + "; ".join(self.silent)
        elif self.silent:
            out = head + "it loads, but " + "; ".join(self.silent)
        else:
            out = head + "it loads cleanly"
        if self.expected:
            out += f" ({self.expected} checkpoint key{'s' if self.expected > 1 else ''} left unread on purpose)"
        out = out[0].upper() + out[1:]
        return out + "."

    def __str__(self) -> str:
        return self.line


def layout_change(trace: LoadTrace) -> str:
    """'Resharding 8 → 6 ranks (hsdp → fsdp)' when the layout changed and the saved one is known."""
    saved, target = trace.saved_scenario, trace.scenario
    if saved is None:
        return ""
    changes = []
    if saved.world_size != target.world_size:
        changes.append(f"resharding {saved.world_size} → {target.world_size} ranks")
    elif tuple(saved.mesh) != tuple(target.mesh):
        changes.append(f"the mesh {'x'.join(map(str, saved.mesh))} → {'x'.join(map(str, target.mesh))}")
    if saved.recipe != target.recipe:
        recipes = f"{saved.recipe} → {target.recipe}"
        changes.append(f"({recipes})" if changes else f"the recipe {recipes}")
    return " ".join(changes)


def verdict(trace: LoadTrace, hints: list) -> Verdict:
    """The verdict of a load: which hints name what breaks it, what is silent, what is harmless."""
    partial = _partial(trace)
    sev = {m.fqn: severity(m, partial, trace.expected_unused) for m in trace.mismatches}
    breaking_keys = {k for k, s in sev.items() if s == "breaks"}
    breaking, silent, explained = [], [], set()
    for h in hints:
        keys = set(h.keys)
        explained |= keys
        if keys & breaking_keys:
            if (h.cause or h.title) not in breaking:  # every cause named once (load_fix: one hint per rule)
                breaking.append(h.cause or h.title)
        elif h.kind == "dtype":
            silent.append(h.title.replace(" were saved as ", " are saved as ").replace(" but the target holds ", ", cast silently to "))
        elif h.kind == "unexpected":
            silent.append(f"{len(keys)} checkpoint key(s) are read by no rank")
        elif h.kind == "partial":
            silent.append(f"{len(keys)} key(s) keep their initial values (allow_partial_load)")
        elif h.kind == "optimizer":
            silent.append("the checkpoint's optimizer state is not loaded")
        else:  # any other hint on keys DCP does not stop on (training-state hints, ...)
            silent.append(h.cause or h.title[:1].lower() + h.title[1:])
    left = sorted(breaking_keys - explained)
    if left:
        breaking.append(f"{len(left)} key(s) DCP rejects ({left[0]!r}{', ...' if len(left) > 1 else ''})")
    if not breaking and trace.errors:
        breaking.append(f"the planner raised in the {trace.errors[0].phase} phase")
    expected = sum(1 for s in sev.values() if s == "expected")
    loads = not breaking and not trace.errors
    return Verdict(loads, layout_change(trace), tuple(breaking), tuple(silent), expected)
