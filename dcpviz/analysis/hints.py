"""Plain-language hints computed from a load's mismatches: the likely cause and the fix.

Each hint names the concrete rename (a ``{target key: checkpoint key}`` mapping) or the option
that would make the load go through, with a code line. The rules look at the keys DCP could not
match — the target's 'missing' keys and the checkpoint's 'unexpected' ones — and at size and
dtype mismatches:

- a prefix on every key (``_orig_mod.`` from torch.compile, ``module.`` from DDP, ``model.``
  from saving ``{"model": sd}``), in either direction;
- keys that differ only by one renamed segment (``mlp`` vs ``feed_forward``);
- optimizer state keyed by parameter index on one side and by name on the other, or present on
  one side only;
- a changed dimension (a grown vocabulary) and dtype changes;
- what is left: keys only the target has (allow_partial_load) or only the checkpoint has.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter, defaultdict
from typing import Any

import pandas as pd

from dcpviz.analysis.hint_base import _GROUP_NAMES, OPTIM_STATE_NAMES, Hint, _examples
from dcpviz.analysis.hints_training import param_group_hints, training_state_hints
from dcpviz.core.trace import LoadTrace, MismatchRecord

WRAPPER_PREFIXES = {
    "_orig_mod.": "torch.compile",
    "module.": "DistributedDataParallel / DataParallel",
}
class _SameShape:
    """Does target key ``a`` hold what checkpoint key ``b`` holds (same size, where both are
    tensors)? Keeps a prefix or rename from pairing two different tensors."""

    def __init__(self, current: dict[str, Any], saved: dict[str, Any], flip: bool = False) -> None:
        self.current, self.saved, self.flip = current, saved, flip

    def __call__(self, a: str, b: str) -> bool:
        if self.flip:
            a, b = b, a
        return self.current.get(a) == self.saved.get(b)

    def flipped(self) -> _SameShape:
        return _SameShape(self.current, self.saved, not self.flip)


# -- prefixes ------------------------------------------------------------------------------
def _prefix_pairs(longer: set[str], shorter: set[str], same: _SameShape) -> dict[str, list[tuple[str, str]]]:
    """prefix -> [(longer key, shorter key)] for longer == prefix + shorter (whole segments)
    and the two hold tensors of the same shape."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in longer:
        segs = key.split(".")
        for k in range(1, len(segs)):
            tail = ".".join(segs[k:])
            if tail in shorter and same(key, tail):
                out[".".join(segs[:k]) + "."].append((key, tail))
    return out


def _prefix_hint(prefix: str, pairs: list[tuple[str, str]], target_has_it: bool) -> Hint:
    n = len(pairs)
    who = WRAPPER_PREFIXES.get(prefix)
    if target_has_it:
        mapping = tuple(sorted(pairs))
        title = f"Every mismatched target key carries the prefix {prefix!r} that the checkpoint's keys lack"
        cause = f" — the target model is wrapped by {who}" if who else ""
        if prefix == "model.":
            cause = " — the target state dict is nested as {'model': ...} but the checkpoint was saved flat"
        detail = f"{n} target keys are checkpoint keys with {prefix!r} in front{cause} (e.g. {mapping[0][0]!r} -> {mapping[0][1]!r})."
        fix = (f'sd = {{k.removeprefix("{prefix}"): v for k, v in sd.items()}}; dcp.load(sd, checkpoint_id=CKPT)  '
               "# tensors load in place, so the model still receives them")
        if who:
            fix += ("; or build the state dict with torch.distributed.checkpoint.state_dict."
                    "get_model_state_dict(model), which drops the wrapper's prefix")
    else:
        mapping = tuple(sorted((short, long) for long, short in pairs))
        title = f"Every mismatched checkpoint key carries the prefix {prefix!r} that the target's keys lack"
        cause = f" — the checkpoint was saved from a model wrapped by {who}" if who else ""
        if prefix == "model.":
            cause = " — the checkpoint was saved as {'model': state_dict}"
        detail = f"{n} checkpoint keys are target keys with {prefix!r} in front{cause} (e.g. {mapping[0][0]!r} -> {mapping[0][1]!r})."
        if prefix == "model.":
            fix = "sd = {'model': sd}; dcp.load(sd, checkpoint_id=CKPT)  # nest the target as it was saved"
        else:
            fix = f'sd = {{"{prefix}" + k: v for k, v in sd.items()}}; dcp.load(sd, checkpoint_id=CKPT)  # tensors load in place'
        if who:
            fix += ("; save with get_model_state_dict(model) (torch.distributed.checkpoint.state_dict) "
                    "next time, which drops the wrapper's prefix")
    cause = f"a {prefix!r} prefix" + (f" ({who})" if who else "")
    return Hint("prefix", title, detail, fix, mapping, tuple(k for k, _ in mapping), cause)


def _prefix_hints(missing: set[str], unexpected: set[str], same: _SameShape) -> list[Hint]:
    hints = []
    for _ in range(3):
        cands = []
        for prefix, pairs in _prefix_pairs(missing, unexpected, same).items():
            cands.append((len(pairs), True, prefix, pairs))
        for prefix, pairs in _prefix_pairs(unexpected, missing, same.flipped()).items():
            cands.append((len(pairs), False, prefix, pairs))
        if not cands:
            break
        n, target_has_it, prefix, pairs = max(cands, key=lambda c: (c[0], c[1], -len(c[2])))
        side = missing if target_has_it else unexpected
        # One coincidental pair is not a pattern, unless it explains everything there is.
        if n < 2 and n < len(side):
            break
        hints.append(_prefix_hint(prefix, pairs, target_has_it))
        for long, short in pairs:
            (missing if target_has_it else unexpected).discard(long)
            (unexpected if target_has_it else missing).discard(short)
    return hints


# -- one renamed segment -------------------------------------------------------------------
def _rename_hints(missing: set[str], unexpected: set[str], same: _SameShape) -> list[Hint]:
    index: dict[tuple, list[str]] = defaultdict(list)
    for u in unexpected:
        segs = u.split(".")
        for i in range(len(segs)):
            index[(len(segs), i, tuple(segs[:i]), tuple(segs[i + 1:]))].append(u)
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for m in missing:
        segs = m.split(".")
        for i in range(len(segs)):
            for u in index.get((len(segs), i, tuple(segs[:i]), tuple(segs[i + 1:])), ()):
                old, new = u.split(".")[i], segs[i]
                if old.isdigit() and new.isdigit():
                    continue  # layers.1 vs layers.2: a different layer, not a rename
                if not same(m, u):
                    continue  # a different tensor, not the same one renamed
                pairs[(new, old)].append((m, u))
    hints = []
    for (new, old), found in sorted(pairs.items(), key=lambda kv: -len(kv[1])):
        found = [(m, u) for m, u in found if m in missing and u in unexpected]
        if len(found) < 2 and not (len(found) == 1 and len(missing) == 1):
            continue
        mapping = tuple(sorted(found))
        hints.append(Hint(
            "rename",
            f"The segment {new!r} in the target's keys is {old!r} in the checkpoint's",
            f"{len(found)} keys differ only by that one segment (e.g. {mapping[0][0]!r} -> {mapping[0][1]!r}): "
            "a renamed module.",
            f'rename = {{"{new}": "{old}"}}; sd = {{".".join(rename.get(s, s) for s in k.split(".")): v '
            "for k, v in sd.items()}; dcp.load(sd, checkpoint_id=CKPT)  # tensors load in place",
            mapping, tuple(m for m, _ in mapping), f"a renamed module ({old!r} → {new!r})",
        ))
        for m, u in found:
            missing.discard(m)
            unexpected.discard(u)
    return hints


# -- optimizer state -----------------------------------------------------------------------
# param_groups.<i> is a list index in both forms (optim.state_dict() and get_state_dict); only
# the state's keys say whether parameters are named by index or by FQN.
_BY_INDEX = re.compile(r"(^|\.)state\.\d+\.[A-Za-z_]+$")


def _optim_key(key: str) -> str | None:
    """'index' for optim.state_dict() keys (state.<int>.exp_avg), 'name' for
    get_optimizer_state_dict keys (state.<param fqn>.exp_avg), None otherwise."""
    if _BY_INDEX.search(key):
        return "index"
    segs = key.split(".")
    if ("state" in segs and segs[-1] in OPTIM_STATE_NAMES) or ("param_groups" in segs and segs[-1] in _GROUP_NAMES):
        return "name"
    return None


def _optimizer_hints(missing: set[str], unexpected: set[str]) -> list[Hint]:
    m = {k: _optim_key(k) for k in missing}
    u = {k: _optim_key(k) for k in unexpected}
    m_opt = {k for k, v in m.items() if v}
    u_opt = {k for k, v in u.items() if v}
    if not m_opt and not u_opt:
        return []
    m_kinds, u_kinds = Counter(m[k] for k in m_opt), Counter(u[k] for k in u_opt)
    hints = []
    api = ("torch.distributed.checkpoint.state_dict.get_optimizer_state_dict(model, optim) to save "
           "and set_optimizer_state_dict(model, optim, sd) to load, on both sides")
    if m_opt and u_opt and set(m_kinds) != set(u_kinds):
        t_form = "parameter names" if "name" in m_kinds else "parameter indices"
        c_form = "parameter names" if "name" in u_kinds else "parameter indices"
        hints.append(Hint(
            "optimizer",
            f"Optimizer state is keyed by {c_form} in the checkpoint but by {t_form} in the target",
            f"checkpoint keys like {_examples(sorted(u_opt), 1)}, target keys like {_examples(sorted(m_opt), 1)}: "
            "optimizer.state_dict() keys state by parameter index, get_optimizer_state_dict by FQN.",
            f"# use {api}",
            keys=tuple(sorted(m_opt | u_opt)), cause="optimizer state keyed by index on one side, by name on the other",
        ))
    elif m_opt and not u_opt:
        hints.append(Hint(
            "optimizer",
            "The target loads optimizer state the checkpoint does not have",
            f"{len(m_opt)} optimizer keys ({_examples(sorted(m_opt), 2)}) are missing: a model-only checkpoint?",
            "load the model alone: dcp.load({'model': model_sd}, ...); or "
            "planner=DefaultLoadPlanner(allow_partial_load=True) to leave the optimizer state as initialised",
            keys=tuple(sorted(m_opt)), cause="optimizer state the checkpoint does not have",
        ))
    elif u_opt and not m_opt:
        hints.append(Hint(
            "optimizer",
            "The checkpoint carries optimizer state the target does not load",
            f"{len(u_opt)} optimizer keys ({_examples(sorted(u_opt), 2)}) are read by no rank; DCP ignores them.",
            f"# nothing to do for inference or a fresh optimizer; to resume training, add the optimizer with {api}",
            keys=tuple(sorted(u_opt)),
        ))
    for k in m_opt:
        missing.discard(k)
    for k in u_opt:
        unexpected.discard(k)
    return hints


# -- sizes and dtypes ----------------------------------------------------------------------
def _size_hints(records: list[MismatchRecord]) -> list[Hint]:
    groups: dict[tuple, list[MismatchRecord]] = defaultdict(list)
    for m in records:
        s, c = tuple(m.saved_size or ()), tuple(m.current_size or ())
        diff = tuple(i for i in range(max(len(s), len(c))) if i >= len(s) or i >= len(c) or s[i] != c[i])
        if len(s) == len(c) and len(diff) == 1:
            d = diff[0]
            groups[("dim", s[d], c[d])].append(m)
        else:
            groups[("shape", s, c)].append(m)
    hints = []
    for (what, a, b), ms in groups.items():
        keys = tuple(sorted(m.fqn for m in ms))
        vocab = any(k in f for f in keys for k in ("embed", "output", "lm_head", "wte"))
        if what == "dim":
            dims = sorted({next(i for i, (x, y) in enumerate(zip(m.saved_size, m.current_size)) if x != y) for m in ms})
            grew = "grew" if b > a else "shrank"
            title = f"A dimension {grew} from {a} to {b} in {len(ms)} tensor(s)" + (" — a resized vocabulary?" if vocab else "")
            detail = f"{_examples(keys)}: dim {', '.join(map(str, dims))} is {a} in the checkpoint and {b} in the target."
        else:
            title = f"{len(ms)} tensor(s) changed shape from {a} to {b}"
            detail = f"{_examples(keys)}: saved {a}, target {b}."
        resized = "{" + ", ".join(repr(k) for k in keys) + "}"
        fix = (f"resized = {resized}; "
               "dcp.load({k: v for k, v in sd.items() if k not in resized}, checkpoint_id=CKPT); "
               "dcpviz.load_resized(sd, CKPT, resized)  # DCP cannot reshape: the saved rows are read "
               "at their saved shape and copied into the new (sharded) tensors; the rest keep their values")
        hints.append(Hint("size", title, detail, fix, keys=keys,
                          cause="a resized vocabulary" if vocab else f"{len(ms)} resized tensor(s)"))
    return hints


def _dtype_hints(records: list[MismatchRecord]) -> list[Hint]:
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for m in records:
        groups[(m.saved_dtype or "?", m.current_dtype or "?")].append(m.fqn)
    hints = []
    for (saved, current), keys in groups.items():
        keys = sorted(keys)
        hints.append(Hint(
            "dtype",
            f"{len(keys)} tensor(s) were saved as {saved} but the target holds {current}",
            f"{_examples(keys)}. DCP does not check dtypes: the load succeeds and Tensor.copy_ casts "
            f"{saved} -> {current} silently" + (" (precision is lost)" if _narrower(current, saved) else "") + ".",
            f"model.to(torch.{saved})  # if the cast is unintended: build the target in the saved dtype "
            f"before loading (in dcpviz: Scenario(dtype={saved!r}))",
            keys=tuple(keys),
        ))
    return hints


_BITS = {"float64": 64, "float32": 32, "bfloat16": 16, "float16": 16, "float8_e4m3fn": 8, "float8_e5m2": 8}


def _narrower(a: str, b: str) -> bool:
    return _BITS.get(a, 0) < _BITS.get(b, 0) or (a != b and {a, b} == {"bfloat16", "float16"})


# -- the rest ------------------------------------------------------------------------------
def _leftover_hints(missing: set[str], unexpected: set[str], partial: bool) -> list[Hint]:
    hints = []
    if missing:
        keys = tuple(sorted(missing))
        if partial:
            hints.append(Hint(
                "partial",
                f"{len(keys)} target key(s) are not in the checkpoint and keep their initial values",
                f"{_examples(keys)}: allow_partial_load=True makes DCP skip them.",
                "# nothing to do if these are new (e.g. a new head); otherwise check the checkpoint",
                keys=keys,
            ))
        else:
            hints.append(Hint(
                "partial",
                f"{len(keys)} target key(s) are not in the checkpoint",
                f"{_examples(keys)}. If that is intended (new layers, a new head), they can keep "
                "their initial values.",
                "planner = DefaultLoadPlanner(allow_partial_load=True)  # from torch.distributed.checkpoint",
                keys=keys, cause=f"{len(keys)} key(s) missing from the checkpoint",
            ))
    if unexpected:
        keys = tuple(sorted(unexpected))
        hints.append(Hint(
            "unexpected",
            f"{len(keys)} checkpoint key(s) are read by no target rank",
            f"{_examples(keys)}. DCP ignores them silently: if the target should have them, its "
            "model is missing modules.",
            "# nothing to do if they are dropped on purpose (declare them: simulate_load(..., "
            "expected_unused=[...])); otherwise add the modules to the target",
            keys=keys,
        ))
    return hints


def compute_hints(trace: LoadTrace) -> list[Hint]:
    """Hints, most likely cause first. Keys explained by one hint are not offered to the next."""
    missing = {m.fqn for m in trace.mismatches if m.kind == "missing"}
    # Keys declared unused on purpose are no longer a problem to explain.
    unexpected = {m.fqn for m in trace.mismatches if m.kind == "unexpected"
                  and not any(m.fqn == p or fnmatch.fnmatchcase(m.fqn, p) for p in trace.expected_unused)}
    same = _SameShape(
        {m.fqn: m.current_size for m in trace.mismatches if m.kind == "missing"},
        {m.fqn: m.saved_size for m in trace.mismatches if m.kind == "unexpected"},
    )
    partial = bool(trace.planner.option("allow_partial_load", False))
    hints = param_group_hints(trace, missing, unexpected)
    hints += _prefix_hints(missing, unexpected, same)
    hints += _rename_hints(missing, unexpected, same)
    hints += training_state_hints(trace, missing, unexpected)
    hints += _optimizer_hints(missing, unexpected)
    sizes = {m.fqn: m for m in trace.mismatches if m.kind == "size"}
    dtypes = {m.fqn: m for m in trace.mismatches if m.kind == "dtype"}
    hints += _size_hints(list(sizes.values()))
    hints += _dtype_hints(list(dtypes.values()))
    hints += _leftover_hints(missing, unexpected, partial)
    return hints


HINT_COLUMNS = ["kind", "title", "detail", "fix", "keys", "mapping"]


def hints_table(hints: list[Hint]) -> pd.DataFrame:
    """The hints as a DataFrame (one row per hint, most likely first): ``keys`` is how many keys
    the hint explains, ``mapping`` the rename as a dict (empty when the fix is not a rename)."""
    return pd.DataFrame(
        [(h.kind, h.title, h.detail, h.fix, len(h.keys), h.rename) for h in hints], columns=HINT_COLUMNS
    )
