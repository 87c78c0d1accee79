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

from dcpviz.analysis.load.hint_base import OPTIM_STATE_NAMES, Hint
from dcpviz.analysis.load.tables import KIND_ORDER, explanation
from dcpviz.analysis.parallel_dims import parallelism_change
from dcpviz.core.hf.folder import quantized_kind
from dcpviz.core.kinds import MismatchKind
from dcpviz.core.trace import ErrorRecord, LoadTrace, MismatchRecord

# What a mismatch means for dcp.load: it raises ('breaks'), it goes through but checkpoint data
# that the target could hold does not reach it ('loses'), it goes through but does something the
# user may not want ('silent'), or the user declared it ('expected').
SEVERITY_ORDER = {"breaks": 0, "loses": 1, "silent": 2, "expected": 3}
PROBLEM_COLUMNS = [
    "severity",
    "kind",
    "fqn",
    "saved",
    "current",
    "ranks",
    "n_ranks",
    "message",
    "explanation",
]
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


def bytes_over_tensor(m: MismatchRecord) -> bool:
    """Saved as bytes (a Python value) where the target holds a tensor: dcp.load plans a bytes
    read and ``load_bytes`` replaces the state dict's entry with the saved value; the target's
    tensor (a model's parameter) is never written, and nothing is raised."""
    return m.kind == MismatchKind.TYPE and m.saved_size is None and m.current_size is not None


def unread_keys(trace: LoadTrace) -> list[str]:
    """Checkpoint keys no target rank reads, those declared unused (expected_unused) left out."""
    return sorted(
        {
            m.fqn
            for m in trace.mismatches
            if m.kind == MismatchKind.UNEXPECTED
            and not is_expected_unused(m.fqn, trace.expected_unused)
        }
    )


def skipped_keys(trace: LoadTrace) -> list[str]:
    """Target keys allow_partial_load=True skips (not in the checkpoint): they keep their
    initial values."""
    if not _partial(trace):
        return []
    return sorted({m.fqn for m in trace.mismatches if m.kind == MismatchKind.MISSING})


def is_optimizer_key(key: str) -> bool:
    """Optimizer state or param groups, keyed by name or by index (state.<x>.exp_avg, ...)."""
    segs = key.split(".")
    return (
        ("state" in segs and segs[-1] in OPTIM_STATE_NAMES)
        or "param_groups" in segs
        or segs[0] in ("optim", "optimizer")
    )


def possible_sources(trace: LoadTrace) -> dict[str, tuple[str, ...]]:
    """For each key a partial load skips, the unread checkpoint keys (not declared unused) that
    could hold its data: a tensor of the same global shape (a prefix or a rename keeps shapes;
    dtypes are cast), or a Python value for a Python value, on the same side (model or optimizer
    state). Not a pairing (nothing is chosen here): whether loadable data is left behind."""
    skipped = set(skipped_keys(trace))
    if not skipped:
        return {}
    unread = set(unread_keys(trace))
    shape: dict[str, tuple | None] = {}
    for m in trace.mismatches:
        if m.fqn in skipped and m.kind == MismatchKind.MISSING:
            shape[m.fqn] = tuple(m.current_size) if m.current_size is not None else None
        elif m.fqn in unread and m.kind == MismatchKind.UNEXPECTED:
            shape[m.fqn] = tuple(m.saved_size) if m.saved_size is not None else None
    by_side_shape: dict[tuple, list[str]] = defaultdict(list)
    for u in sorted(unread):
        by_side_shape[(is_optimizer_key(u), shape.get(u))].append(u)
    return {
        k: tuple(by_side_shape.get((is_optimizer_key(k), shape.get(k)), ()))
        for k in sorted(skipped)
    }


def lossy_keys(trace: LoadTrace) -> set[str]:
    """The keys of a partial load that loses data: skipped target keys with a possible source in
    the checkpoint, and those unread sources."""
    out: set[str] = set()
    for k, sources in possible_sources(trace).items():
        if sources:
            out.add(k)
            out.update(sources)
    return out


def leaves_data_unread(trace: LoadTrace) -> bool:
    """allow_partial_load=True skips target keys while the checkpoint holds unread entries (none
    declared unused) that could hold their data: loadable checkpoint data is left behind. A
    partial load is harmless only when the skipped keys have no possible source."""
    return bool(lossy_keys(trace))


def severity(
    m: MismatchRecord, partial: bool, expected: Iterable[str] = (), lossy: Iterable[str] = ()
) -> str:
    """'breaks' when dcp.load raises on it, 'expected' for a key declared unused, 'loses' when
    dcp.load goes through but checkpoint data does not reach the target (a bytes entry over a
    tensor; a key in ``lossy`` (``lossy_keys``): a skipped key with a source, or that unread
    source), else 'silent'."""
    if m.kind == MismatchKind.UNEXPECTED:
        if is_expected_unused(m.fqn, expected):
            return "expected"
        return "loses" if m.fqn in lossy else "silent"
    if bytes_over_tensor(m) and not m.message:
        return "loses"
    if m.kind == MismatchKind.MISSING and partial:
        return "loses" if m.fqn in lossy else "silent"
    if m.kind == MismatchKind.DTYPE:
        return "silent"
    return "breaks"


def _expected_why(fqn: str) -> str:
    what = quantized_kind(fqn)
    if what is not None:
        return (
            f"a quantized pair's {what}: expected to stay unread by a model holding dequantized "
            "weights (DCP's QuantizedHuggingFaceStorageReader uses it to dequantize)"
        )
    return "declared unused on purpose (expected_unused)"


def _desc(size, dtype) -> str | None:
    if size is None and dtype is None:
        return None
    return f"{dtype or ''} {tuple(size) if size is not None else ''}".strip()


def problems(trace: LoadTrace) -> pd.DataFrame:
    """One row per problem (kind, key, DCP message), every rank it happens on as a range.

    ``severity``: 'breaks' (dcp.load raises), 'loses' (it loads, but checkpoint data the
    target could hold does not reach it), 'silent' (it loads, but casts, skips or ignores),
    'expected' (a checkpoint key declared unused). The per-rank rows stay in ``mismatches``."""
    partial = _partial(trace)
    lossy = lossy_keys(trace)
    W = trace.scenario.world_size
    rows = []
    for m in trace.mismatches:
        sev = severity(m, partial, trace.expected_unused, lossy)
        ranks = "no rank reads it" if m.kind == MismatchKind.UNEXPECTED else rank_ranges(m.ranks, W)
        why = _expected_why(m.fqn) if sev == "expected" else explanation(m, partial)
        if sev == "loses" and m.kind in (MismatchKind.MISSING, MismatchKind.UNEXPECTED):
            why += (
                " — while allow_partial_load skips target keys, the checkpoint holds data no rank "
                "reads: the load loses it (see the hints for where it belongs)"
            )
        rows.append(
            (
                sev,
                m.kind,
                m.fqn,
                _desc(m.saved_size, m.saved_dtype),
                _desc(m.current_size, m.current_dtype),
                ranks,
                len(m.ranks),
                m.message,
                why,
            )
        )
    cols = list(zip(*rows)) if rows else [()] * len(PROBLEM_COLUMNS)
    # Column by column as object arrays, so absent values stay None (not NaN).
    df = pd.DataFrame(
        {name: pd.Series(list(c), dtype=object) for name, c in zip(PROBLEM_COLUMNS, cols)}
    )
    df["n_ranks"] = df["n_ranks"].astype("int64")
    if len(df):
        order = df["severity"].map(SEVERITY_ORDER) * 10 + df["kind"].map(KIND_ORDER).fillna(9)
        df = (
            df.assign(_o=order)
            .sort_values(["_o", "fqn"], kind="stable")
            .drop(columns="_o")
            .reset_index(drop=True)
        )
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
    return [
        f"[{r.phase}, {r.ranks}] {r.exc_type}: {r.message}"
        for r in df.itertuples(index=False)
        if r.message not in skip
    ]


# -- the verdict ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """The load in one line. ``loads``: dcp.load goes through. ``harmless``: layout changes that
    are not a problem (world size, mesh, recipe). ``breaking``: what makes dcp.load raise, one
    phrase per cause. ``losing``: what goes through but leaves checkpoint data the target could
    hold behind (data loss). ``silent``: what goes through but may not be wanted. ``expected``:
    checkpoint keys declared unused."""

    loads: bool
    harmless: str
    breaking: tuple[str, ...]
    silent: tuple[str, ...]
    expected: int = 0
    losing: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """dcp.load goes through and loses nothing (what ``dcpviz load`` exits 0 on)."""
        return self.loads and not self.losing

    @property
    def line(self) -> str:
        """The verdict as one sentence."""
        head = f"{self.harmless} is fine; " if self.harmless else ""
        if self.breaking:
            n = len(self.breaking)
            what = (
                f"{n} thing{'s' if n > 1 else ''} break{'' if n > 1 else 's'} the load: "
                + ", ".join(self.breaking)
            )
            out = head + what
            if self.losing or self.silent:
                out += "; besides, " + "; ".join(self.losing + self.silent)
        elif self.losing:
            out = head + "no error, but the load loses data: " + "; ".join(self.losing)
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
    if "torchtitan" in (saved.recipe, target.recipe):
        return parallelism_change(saved, target)
    if saved.world_size != target.world_size:
        changes.append(f"resharding {saved.world_size} → {target.world_size} ranks")
    elif tuple(saved.mesh) != tuple(target.mesh):
        changes.append(
            f"the mesh {'x'.join(map(str, saved.mesh))} → {'x'.join(map(str, target.mesh))}"
        )
    if saved.recipe != target.recipe:
        recipes = f"{saved.recipe} → {target.recipe}"
        changes.append(f"({recipes})" if changes else f"the recipe {recipes}")
    return " ".join(changes)


def _once(texts: list[str], text: str) -> None:
    if text not in texts:
        texts.append(text)


def _silent_text(h: Hint, keys: set[str]) -> str:
    """What a hint on keys DCP does not stop on says in the verdict's 'silent' part."""
    if h.kind == "dtype":
        return h.title.replace(" were saved as ", " are saved as ").replace(
            " but the target holds ", ", cast silently to "
        )
    if h.kind == "unexpected":
        return f"{len(keys)} checkpoint key(s) are read by no rank"
    if h.kind == "partial":
        return f"{len(keys)} key(s) keep their initial values (allow_partial_load)"
    if h.kind == "optimizer":
        return "the checkpoint's optimizer state is not loaded"
    return h.cause or h.title[:1].lower() + h.title[1:]  # training-state hints, ...


def verdict(trace: LoadTrace, hints: list) -> Verdict:
    """The verdict of a load: which hints name what breaks it, what is silent, what is harmless."""
    partial = _partial(trace)
    lossy = lossy_keys(trace)
    sev = {m.fqn: severity(m, partial, trace.expected_unused, lossy) for m in trace.mismatches}
    breaking_keys = {k for k, s in sev.items() if s == "breaks"}
    losing_keys = {k for k, s in sev.items() if s == "loses"}
    breaking, silent, explained, causes = [], [], set(), []
    for h in hints:
        keys = set(h.keys)
        explained |= keys
        if h.kind == "dtype":  # DCP's copy_ casts: never what breaks or loses a load
            silent.append(_silent_text(h, keys))
        elif keys & breaking_keys:
            _once(
                breaking, h.cause or h.title
            )  # every cause named once (load_fix: one hint per rule)
        elif keys & losing_keys and h.kind not in ("partial", "unexpected"):
            _once(causes, h.cause or h.title[:1].lower() + h.title[1:])
        elif not keys & losing_keys:  # a hint on lost keys is said by the loss itself, below
            silent.append(_silent_text(h, keys))
    left = sorted(breaking_keys - explained)
    if left:
        breaking.append(
            f"{len(left)} key(s) DCP rejects ({left[0]!r}{', ...' if len(left) > 1 else ''})"
        )
    read_failed = sorted({e.rank for e in trace.errors if e.phase == "read" and e.rank is not None})
    if read_failed:
        breaking.append(
            f"{rank_ranges(read_failed, trace.scenario.world_size)} read data files that are "
            "missing or shorter than .metadata says"
        )
    planner_failed = [e for e in trace.errors if e.phase != "read"]
    if not breaking and planner_failed:
        breaking.append(f"the planner raised in the {planner_failed[0].phase} phase")
    expected = sum(1 for s in sev.values() if s == "expected")
    loads = not breaking and not trace.errors
    return Verdict(
        loads,
        layout_change(trace),
        tuple(breaking),
        tuple(silent),
        expected,
        _losses(trace, losing_keys, causes),
    )


def _losses(trace: LoadTrace, losing_keys: set[str], causes: list[str]) -> tuple[str, ...]:
    """One phrase per way the load loses checkpoint data, with the numbers."""
    out = []
    skipped = skipped_keys(trace)
    lost = sorted(losing_keys & set(skipped))
    if lost:
        n_target = len({v.fqn for v in trace.wanted}) or len(skipped)
        sources = sorted({u for k in lost for u in possible_sources(trace)[k]})
        why = f" ({', '.join(causes)})" if causes else ""
        out.append(
            f"allow_partial_load restores {n_target - len(skipped)} of {n_target} target keys; "
            f"{len(lost)} keep their initial values while {len(sources)} checkpoint key(s) that could "
            f"hold them are read by no rank{why}"
        )
    replaced = sorted(
        {m.fqn for m in trace.mismatches if m.fqn in losing_keys and bytes_over_tensor(m)}
    )
    if replaced:
        out.append(
            f"{len(replaced)} target tensor(s) are never written: the checkpoint holds a Python value "
            f"(bytes) there, which replaces the state dict's entry ({replaced[0]!r}"
            f"{', ...' if len(replaced) > 1 else ''})"
        )
    return tuple(out)


def load_status(summary: dict, v: Verdict) -> tuple[str, str]:
    """The status line of a load view and its tone ('bad', 'warn', 'good'), from the summary's
    numbers and the verdict: what fails, what loses data, what DCP does not stop on; keys
    declared unused (expected_unused) alone leave it clean."""
    W = summary["world_size"]
    if summary["failed_ranks"]:
        return (
            f"dcp.load would fail: the local plan raised on {len(summary['failed_ranks'])} of {W} ranks",
            "bad",
        )
    if not summary["ok"]:
        return f"dcp.load would fail: {summary['errors']} error(s)", "bad"
    if v.losing:
        return "dcp.load goes through but loses checkpoint data (see the verdict)", "bad"
    if v.silent:
        return "plans, with mismatches DCP does not stop on", "warn"
    return "plans cleanly", "good"
