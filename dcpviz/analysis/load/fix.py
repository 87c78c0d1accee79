"""The one fix of a load: every cause ``core.keymatch`` finds, as hints and as code.

From a LoadTrace alone (no torch). ``trace_match`` matches the target's missing keys with the
checkpoint's unread keys (prefixes and wrapper segments anywhere, renamed modules, resized and
cast tensors, all at once; certain or refused). ``match_hints`` turns each applied rule and each
tie into a Hint. ``fix_code`` is the fix as Python that runs in the user's own job, on the state
dict they pass to ``dcp.load`` however it is nested: DCP flattens it to the same keys dcpviz
shows, and ``dcpviz.RenamingLoadPlanner`` renames and resizes at that level.

A fix planner that already renamed keys (a first round) records what it did as its ``fix_spec``
option; ``previous_fix`` reads it back, so a second round adds to the first and never drops it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from dcpviz.analysis.load.hint_base import Hint, _examples
from dcpviz.analysis.load.verdict import is_expected_unused
from dcpviz.core.keymatch import (
    WRAPPER_SEGMENTS,
    Ambiguity,
    KeyFacts,
    Match,
    Rule,
    compose,
    match_keys,
)
from dcpviz.core.kinds import MismatchKind
from dcpviz.core.trace import LoadTrace


def _unexpected(trace: LoadTrace) -> list[str]:
    return [
        m.fqn
        for m in trace.mismatches
        if m.kind == MismatchKind.UNEXPECTED
        and not is_expected_unused(m.fqn, trace.expected_unused)
    ]


def trace_facts(trace: LoadTrace) -> tuple[dict[str, KeyFacts], dict[str, KeyFacts]]:
    """(target key -> facts, checkpoint key -> facts): from the target's values and the
    checkpoint's metadata, and from the mismatch records (which may name keys of their own)."""
    target: dict[str, KeyFacts] = {}
    for tv in trace.wanted:  # one value per rank and key: the first of each key counts
        if tv.fqn not in target:
            target[tv.fqn] = KeyFacts(tuple(tv.size) if tv.size is not None else None, tv.dtype)
    saved = {t.fqn: KeyFacts(tuple(t.size), t.dtype) for t in trace.saved.tensors}
    saved.update({k: KeyFacts(None) for k in trace.saved.bytes_keys})
    for m in trace.mismatches:
        if m.kind == MismatchKind.MISSING and m.fqn not in target:
            target[m.fqn] = KeyFacts(
                tuple(m.current_size) if m.current_size is not None else None, m.current_dtype
            )
        elif m.kind == MismatchKind.UNEXPECTED and m.fqn not in saved:
            saved[m.fqn] = KeyFacts(
                tuple(m.saved_size) if m.saved_size is not None else None, m.saved_dtype
            )
    return target, saved


def trace_match(
    trace: LoadTrace,
    choices: Mapping[str, str] | None = None,
    missing: Iterable[str] | None = None,
    unexpected: Iterable[str] | None = None,
) -> Match:
    """``core.keymatch.match_keys`` on a load trace's missing and unread keys (keys declared
    unused on purpose are not offered as sources)."""
    target, saved = trace_facts(trace)
    if missing is None:
        missing = [m.fqn for m in trace.mismatches if m.kind == MismatchKind.MISSING]
    if unexpected is None:
        unexpected = _unexpected(trace)
    return match_keys(target, saved, sorted(set(missing)), sorted(set(unexpected)), choices)


# -- what an earlier fix planner did --------------------------------------------------------
def previous_fix(trace: LoadTrace) -> tuple[dict[str, str], tuple[str, ...]]:
    """(rename, resized) of the fix planner this load already ran with ({} and () if none)."""
    spec = trace.planner.option("fix_spec", None)
    if not isinstance(spec, str) or not spec:
        return {}, ()
    try:
        data = json.loads(spec)
        return {str(k): str(v) for k, v in data.get("rename", [])}, tuple(
            str(k) for k in data.get("resized", [])
        )
    except (ValueError, TypeError, AttributeError):
        return {}, ()


def cumulative_fix(trace: LoadTrace, match: Match) -> tuple[dict[str, str], tuple[str, ...]]:
    """The whole fix in the user's own keys: the earlier round's renames and resized keys, then
    this match's (resized keys are named by the user's key, before any rename)."""
    before, resized_before = previous_fix(trace)
    rename = compose(before, match.rename)
    back = {v: k for k, v in before.items()}
    resized = sorted({*resized_before, *(back.get(m, m) for m, *_ in match.resized)})
    return rename, tuple(resized)


# -- the fix as code --------------------------------------------------------------------------
HF_SOURCE = "safetensors folder"  # how engine.storage.hf_load names a Hugging Face folder (LoadTrace.saved_source)


def is_hf_source(trace: LoadTrace) -> bool:
    """The load read a Hugging Face safetensors folder: ``dcp.load`` needs DCP's HF reader for it."""
    return trace.saved_source.startswith(HF_SOURCE)


def _load_call(hf: bool, ckpt: str = "CKPT", planner: str = "planner") -> str:
    if hf:  # a safetensors folder has no .metadata: checkpoint_id alone would pick FileSystemReader
        return (
            f"dcp.load(sd, storage_reader=dcp.HuggingFaceStorageReader({ckpt}), planner={planner})"
        )
    return f"dcp.load(sd, checkpoint_id={ckpt}, planner={planner})"


def fix_code(
    rename: Mapping[str, str],
    resized: Iterable[str] = (),
    allow_partial_load: bool = False,
    hf: bool = False,
) -> str:
    """Python that loads with every certain fix at once, in the user's own job: ``sd`` is the state
    dict passed to ``dcp.load`` (flat or nested, e.g. ``{"model": ..., "optim": ...}``), ``CKPT`` the
    checkpoint. Keys are the flattened keys DCP plans with (``model.layers.0.w``). ``hf``: CKPT is
    a Hugging Face safetensors folder, read through DCP's ``HuggingFaceStorageReader``."""
    resized = sorted(resized)
    lines = ["import dcpviz", "import torch.distributed.checkpoint as dcp", ""]
    if rename:
        lines.append(
            "rename = {  # target key -> checkpoint key (the flattened keys DCP plans with)"
        )
        lines += [f"    {k!r}: {v!r}," for k, v in sorted(rename.items())]
        lines.append("}")
    else:
        lines.append("rename = {}")
    if resized:
        lines.append(
            "resized = [  # loaded at their saved shape: saved rows into the new tensors, the rest keep their values"
        )
        lines += [f"    {k!r}," for k in resized]
        lines.append("]")
    else:
        lines.append("resized = []")
    partial = ", allow_partial_load=True" if allow_partial_load else ""
    lines.append(f"planner = dcpviz.RenamingLoadPlanner(rename, resized=resized{partial})")
    lines.append(_load_call(hf) + "  # sd: the state you pass to dcp.load, as you nest it")
    return "\n".join(lines)


# -- hints ----------------------------------------------------------------------------------
def _rule_hint(rule: Rule, code: str) -> Hint:
    pairs = rule.pairs
    n = len(pairs)
    eg = f"e.g. {pairs[0][0]!r} -> {pairs[0][1]!r}"
    keys = tuple(m for m, _ in pairs)
    if rule.kind == "wrapper":
        side, segs = ("checkpoint's", rule.b) if rule.b else ("target's", rule.a)
        names = [s.strip() for s in segs.split(",")]
        who = "; ".join(f"{s!r}: {WRAPPER_SEGMENTS[s]}" for s in names)
        shown = ", ".join(f"'{s}.'" for s in names)
        title = f"The {side} keys carry the wrapper segment {shown} that the other side's lack"
        detail = f"{n} keys are equal but for it ({who}), wherever it stands in the key; {eg}."
        if rule.b:
            cause = ", ".join(f"a '{s}.' prefix ({WRAPPER_SEGMENTS[s]})" for s in names)
        else:
            cause = ", ".join(
                f"a '{s}.' prefix ({WRAPPER_SEGMENTS[s]}) on the target" for s in names
            )
        if any(s in ("_orig_mod", "module") for s in names):
            detail += (
                " Next time, get_model_state_dict(model) / get_state_dict(model, optim) "
                "(torch.distributed.checkpoint.state_dict) build keys without it."
            )
        return Hint("prefix", title, detail, code, pairs, keys, cause)
    if rule.kind == "choice":
        title = f"Your choice {rule.spelled} maps {n} key(s)"
        return Hint("rename", title, f"{eg}.", code, pairs, keys, f"your choice {rule.spelled}")
    a, b = rule.a, rule.b
    if a and b and not a.endswith(".") and not b.endswith("."):
        title = f"The segment {a!r} in the target's keys is {b!r} in the checkpoint's"
        detail = f"{n} keys differ only by that one segment, in every layer and component ({eg}): a renamed module."
        return Hint("rename", title, detail, code, pairs, keys, f"a renamed module ({b!r} → {a!r})")
    if not a:
        title = f"The checkpoint's keys carry the prefix {b!r} that the target's keys lack"
        why = " — the checkpoint was saved as {'model': state_dict}" if b == "model." else ""
        detail = f"{n} checkpoint keys are target keys with {b!r} in front{why} ({eg})."
        cause = f"a {b!r} prefix in the checkpoint"
    elif not b:
        title = f"The target's keys carry the prefix {a!r} that the checkpoint's keys lack"
        why = (
            " — the target is nested as {'model': ...} but the checkpoint was saved flat"
            if a == "model."
            else ""
        )
        detail = f"{n} target keys are checkpoint keys with {a!r} in front{why} ({eg})."
        cause = f"a {a!r} prefix on the target"
    else:
        title = f"{a!r} in the target's keys is {b!r} in the checkpoint's"
        detail = f"{n} keys differ only there ({eg})."
        cause = f"{a!r} saved as {b!r}"
    return Hint("prefix", title, detail, code, pairs, keys, cause)


def _ambiguity_hint(amb: Ambiguity) -> Hint:
    cands = " or ".join(repr(c) for c in amb.candidates)
    one = len(amb.candidates) == 1
    what = repr(amb.a) if amb.a else "the target's root ''"
    if one:
        title = f"{what} may be {cands} in the checkpoint, but one pair is not a pattern"
        detail = (
            f"{_examples(amb.keys)} could load from {_examples(sorted({u for _, u in amb.pairs}))}: equal "
            "shapes, one key. dcpviz does not apply it by itself."
        )
    else:
        title = f"Ambiguous: {what} in the target's keys could be {cands} in the checkpoint"
        detail = (
            f"{len(amb.keys)} target key(s) ({_examples(amb.keys)}) have {len(amb.candidates)} candidate "
            "sources of equal shape; names and shapes do not say which, so nothing is loaded from "
            "either until you choose."
        )
    example = ", ".join(f"{amb.a!r}: {c!r}" for c in amb.candidates[:1])
    fix = (
        f"# choose for each ambiguous name, e.g. load.fix_planner(rename={{{example}}}); "
        f"candidates for {amb.a!r}: {', '.join(repr(c) for c in amb.candidates)}"
    )
    cause = (
        f"an ambiguous rename ({what} could be {cands})"
        if not one
        else f"a possible rename ({what} → {cands}, not certain)"
    )
    return Hint("ambiguous", title, detail, fix, (), amb.keys, cause)


def _possible_hint(ambs: list[Ambiguity]) -> list[Hint]:
    """Keys no rule explains but some unread checkpoint key could fill: one hint for all."""
    if not ambs:
        return []
    keys = tuple(a.a for a in ambs)
    eg = ambs[0]
    fix = (
        f"# choose a source per key, e.g. load.fix_planner(rename={{{eg.a!r}: {eg.candidates[0]!r}}}); "
        + "; ".join(f"{a.a!r}: {' or '.join(repr(c) for c in a.candidates)}" for a in ambs[:5])
        + ("; ..." if len(ambs) > 5 else "")
    )
    return [
        Hint(
            "ambiguous",
            f"{len(keys)} target key(s) have a possible source in the checkpoint but no certain one",
            f"{_examples(keys)}: unread checkpoint keys with the same leaf, layer and kind could fill them "
            f"(e.g. {eg.a!r} from {' or '.join(repr(c) for c in eg.candidates)}), but no rule that holds for "
            "other keys says which. They are not skipped silently: choose, or build the target as it was saved.",
            fix,
            (),
            keys,
            f"{len(keys)} key(s) with a possible but uncertain source",
        )
    ]


def _size_hint(match: Match, code: str) -> list[Hint]:
    if not match.resized:
        return []
    groups: dict[tuple, list[tuple[str, str, tuple[int, ...], tuple[int, ...]]]] = {}
    for m, u, s, c in match.resized:
        diff = tuple(i for i in range(len(s)) if s[i] != c[i])
        key = ("dim", s[diff[0]], c[diff[0]]) if len(diff) == 1 else ("shape", s, c)
        groups.setdefault(key, []).append((m, u, s, c))
    hints = []
    for (what, a, b), rows in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        keys = tuple(sorted(m for m, *_ in rows))
        vocab = any(w in k for k in keys for w in ("embed", "output", "lm_head", "wte"))
        if what == "dim":
            grew = "grew" if b > a else "shrank"
            title = f"A dimension {grew} from {a} to {b} in {len(rows)} tensor(s)" + (
                " — a resized vocabulary?" if vocab else ""
            )
        else:
            title = f"{len(rows)} tensor(s) changed shape from {a} to {b}"
        detail = (
            f"{_examples(keys)}. DCP cannot reshape; the fix reads each saved tensor at its saved shape "
            "and copies the rows both shapes share into the new (sharded) tensor; the rest keep their values."
        )
        hints.append(
            Hint(
                "size",
                title,
                detail,
                code,
                tuple((m, u) for m, u, *_ in sorted(rows) if m != u),
                keys,
                "a resized vocabulary" if vocab else f"{len(rows)} resized tensor(s)",
            )
        )
    return hints


def _reshaped_hint(match: Match) -> list[Hint]:
    if not match.reshaped:
        return []
    keys = tuple(m for m, *_ in match.reshaped)
    eg = match.reshaped[0]
    return [
        Hint(
            "size",
            f"{len(keys)} tensor(s) changed their number of dims",
            f"{_examples(keys)} (e.g. saved {eg[2]}, target {eg[3]}): no load fills them as they are.",
            "# reshape the saved tensor yourself (load it at its saved shape with dcp.load into a plain "
            "tensor), or build the target as it was saved",
            (),
            keys,
            f"{len(keys)} reshaped tensor(s)",
        )
    ]


def _dtype_hints(match: Match, narrower) -> list[Hint]:
    groups: dict[tuple[str, str], list[str]] = {}
    for m, _, saved, current in match.cast:
        groups.setdefault((saved, current), []).append(m)
    hints = []
    for (saved, current), keys in sorted(groups.items()):
        keys = sorted(keys)
        hints.append(
            Hint(
                "dtype",
                f"{len(keys)} tensor(s) were saved as {saved} but the target holds {current}",
                f"{_examples(keys)}. DCP does not check dtypes: the load succeeds and Tensor.copy_ casts "
                f"{saved} -> {current} silently"
                + (" (precision is lost)" if narrower(current, saved) else "")
                + ".",
                f"model.to(torch.{saved})  # if the cast is unintended: build the target in the saved dtype "
                f"before loading (in dcpviz: Scenario(dtype={saved!r}))",
                keys=tuple(keys),
                cause=f"{len(keys)} tensor(s) cast {saved} → {current}",
            )
        )
    return hints


def match_hints(trace: LoadTrace, match: Match, narrower) -> list[Hint]:
    """One hint per applied rule (wrappers, prefixes, renames, the caller's choices), per tie,
    per size change and per dtype change. The fixable ones carry the same code: the whole fix."""
    rename, resized = cumulative_fix(trace, match)
    partial = bool(trace.planner.option("allow_partial_load", False))
    code = fix_code(rename, resized, partial, hf=is_hf_source(trace))
    hints = [_rule_hint(r, code) for r in match.rules if r.kind != "rewritten"]
    later = tuple(p for r in match.rules if r.kind == "rewritten" for p in r.pairs)
    if later:
        hints.append(
            Hint(
                "rename",
                f"{len(later)} more key(s) match once the rules above are applied",
                f"e.g. {later[0][0]!r} -> {later[0][1]!r}.",
                code,
                later,
                tuple(m for m, _ in later),
                f"{len(later)} key(s) with several causes",
            )
        )
    ties = [a for a in match.ambiguities if a.keys != (a.a,)]
    hints += [_ambiguity_hint(a) for a in ties]
    hints += _possible_hint([a for a in match.ambiguities if a.keys == (a.a,)])
    hints += _size_hint(match, code)
    hints += _reshaped_hint(match)
    hints += _dtype_hints(match, narrower)
    return hints


# -- the fix as a file (dcpviz load --emit-fix) -----------------------------------------------
def fix_file(code: str, checkpoint: str, trace: LoadTrace, command: str = "") -> str:
    """A Python file that applies the fix: ``load_fixed(sd)`` in the user's job, and, run as a
    script, a real load of the checkpoint into the target job with the fix (dcpviz.run_load:
    real processes, every rank), which exits 0 when it loads cleanly."""
    sc = trace.scenario
    body = code.split("\n")
    body = [line for line in body if not line.startswith(("planner = ", "dcp.load("))]
    partial = "allow_partial_load=True" in code
    dtype = None if sc.dtype == "as built" else sc.dtype
    return "\n".join(
        [
            f'"""The load fix dcpviz found for {checkpoint}'
            + (f" (written by `{command}`)" if command else "")
            + ".",
            "",
            "In your job, on every rank:  from fix import load_fixed; load_fixed(sd)",
            "    (sd: the state you pass to dcp.load, nested as you build it, e.g. {'model': ..., 'optim': ...})",
            "Check it for real first:     python fix.py",
            f"    (loads the checkpoint into the target job below with {sc.world_size} real processes, with this fix)",
            '"""',
            *body,
            "",
            f"CKPT = {checkpoint!r}",
            "",
            "",
            "def planner():",
            '    """A fresh fix planner (one per dcp.load call)."""',
            f"    return dcpviz.RenamingLoadPlanner(rename, resized=resized, allow_partial_load={partial})",
            "",
            "",
            "def load_fixed(sd, checkpoint_id=CKPT):",
            '    """dcp.load with the fix: call it on every rank, as dcp.load."""',
            "    " + _load_call(is_hf_source(trace), "checkpoint_id", "planner()"),
            "",
            "",
            'if __name__ == "__main__":',
            "    from dcpviz.engine.job.userspec import resolve_spec, saved_spec",
            "",
            "    def spec(name, flag):",
            "        return resolve_spec(saved_spec(name, flag), flag) if name else None",
            "",
            "    target = dcpviz.Scenario(",
            f"        model=spec({sc.model!r}, '--model'), world_size={sc.world_size}, mesh={tuple(sc.mesh)!r},",
            f"        mesh_dim_names={tuple(sc.mesh_dim_names)!r}, recipe=spec({sc.recipe!r}, '--recipe'), dtype={dtype!r},",
            f"        optimizer=spec({sc.optimizer!r}, '--optimizer'), state=spec({sc.state!r}, '--state'))",
            "    result = dcpviz.run_load(CKPT, target, planner=planner())",
            "    print(result.verdict.line)",
            "    raise SystemExit(0 if result.ok and result.verdict.loads else 1)",
            "",
        ]
    )
