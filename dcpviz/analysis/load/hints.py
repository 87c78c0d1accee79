"""Plain-language hints computed from a load's mismatches: the likely cause and the fix.

Each hint names what is wrong, the keys it explains and a fix that is code. The rules look at the
keys DCP could not match — the target's 'missing' keys and the checkpoint's 'unexpected' ones —
and at size and dtype mismatches:

- every cause of a name or shape change at once, from one match (``analysis.load.fix`` on
  ``core.keymatch``): wrapper segments anywhere in a key (``_orig_mod.``, DDP's ``module.``, FSDP1's
  and activation checkpointing's wrappers), prefixes and nestings (``model.``), renamed modules,
  resized and cast tensors, in model and optimizer keys alike. Certain or refused: ties are shown
  as 'ambiguous' hints with their candidates. The fixable hints carry one code: the whole fix,
  as a ``dcpviz.RenamingLoadPlanner`` on the state the user passes;
- optimizer state keyed by parameter index on one side and by name on the other, or present on
  one side only, another optimizer class (``hints_training``);
- what is left: keys nothing in the checkpoint could fill (allow_partial_load, naming every key
  that keeps its initial value) or checkpoint keys nothing reads.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter

import pandas as pd

from dcpviz.analysis.load.fix import (
    cumulative_fix,
    fix_code,
    is_hf_source,
    match_hints,
    trace_match,
)
from dcpviz.analysis.load.hint_base import _GROUP_NAMES, OPTIM_STATE_NAMES, Hint, _examples
from dcpviz.analysis.load.hints_training import param_group_hints, training_state_hints
from dcpviz.core.keymatch import Match
from dcpviz.core.kinds import MismatchKind
from dcpviz.core.trace import LoadTrace

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
    if ("state" in segs and segs[-1] in OPTIM_STATE_NAMES) or (
        "param_groups" in segs and segs[-1] in _GROUP_NAMES
    ):
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
    api = (
        "torch.distributed.checkpoint.state_dict.get_optimizer_state_dict(model, optim) to save "
        "and set_optimizer_state_dict(model, optim, sd) to load, on both sides"
    )
    if m_opt and u_opt and set(m_kinds) != set(u_kinds):
        t_form = "parameter names" if "name" in m_kinds else "parameter indices"
        c_form = "parameter names" if "name" in u_kinds else "parameter indices"
        hints.append(
            Hint(
                "optimizer",
                f"Optimizer state is keyed by {c_form} in the checkpoint but by {t_form} in the target",
                f"checkpoint keys like {_examples(sorted(u_opt), 1)}, target keys like {_examples(sorted(m_opt), 1)}: "
                "optimizer.state_dict() keys state by parameter index, get_optimizer_state_dict by FQN.",
                f"# use {api}",
                keys=tuple(sorted(m_opt | u_opt)),
                cause="optimizer state keyed by index on one side, by name on the other",
            )
        )
    elif m_opt and not u_opt:
        hints.append(
            Hint(
                "optimizer",
                "The target loads optimizer state the checkpoint does not have",
                f"{len(m_opt)} optimizer keys ({_examples(sorted(m_opt), 2)}) are missing: a model-only checkpoint?",
                "load the model alone: dcp.load({'model': model_sd}, ...); or "
                "planner=DefaultLoadPlanner(allow_partial_load=True) to leave the optimizer state as initialised",
                keys=tuple(sorted(m_opt)),
                cause="optimizer state the checkpoint does not have",
            )
        )
    elif u_opt and not m_opt:
        hints.append(
            Hint(
                "optimizer",
                "The checkpoint carries optimizer state the target does not load",
                f"{len(u_opt)} optimizer keys ({_examples(sorted(u_opt), 2)}) are read by no rank; DCP ignores them.",
                f"# nothing to do for inference or a fresh optimizer; to resume training, add the optimizer with {api}",
                keys=tuple(sorted(u_opt)),
            )
        )
    # Only the keys a hint names are explained; the rest (optimizer state of an added or dropped
    # module, keyed the same way on both sides) is left for the rules after this one.
    for h in hints:
        missing.difference_update(h.keys)
        unexpected.difference_update(h.keys)
    return hints


_BITS = {
    "float64": 64,
    "float32": 32,
    "bfloat16": 16,
    "float16": 16,
    "float8_e4m3fn": 8,
    "float8_e5m2": 8,
}


def _narrower(a: str, b: str) -> bool:
    return _BITS.get(a, 0) < _BITS.get(b, 0) or (a != b and {a, b} == {"bfloat16", "float16"})


# -- the rest ------------------------------------------------------------------------------
def _leftover_hints(
    missing: set[str], unexpected: set[str], partial: bool, match: Match, trace: LoadTrace
) -> list[Hint]:
    """Keys with no possible source (``missing``: nothing in the checkpoint could fill them) and
    checkpoint keys nothing reads. Only for the former is allow_partial_load offered, naming every
    key that keeps its initial value."""
    hints = []
    if missing:
        keys = tuple(sorted(missing))
        named = ", ".join(repr(k) for k in keys)
        if partial:
            hints.append(
                Hint(
                    "partial",
                    f"{len(keys)} target key(s) are not in the checkpoint and keep their initial values",
                    f"{named}: allow_partial_load=True makes DCP skip them.",
                    "# nothing to do if these are new (e.g. a new head); otherwise check the checkpoint",
                    keys=keys,
                )
            )
        else:
            rename, resized = cumulative_fix(trace, match)
            if rename or resized:
                fix = fix_code(rename, resized, allow_partial_load=True, hf=is_hf_source(trace))
            else:
                fix = (
                    "from torch.distributed.checkpoint import DefaultLoadPlanner\n"
                    "planner = DefaultLoadPlanner(allow_partial_load=True)\n"
                    "dcp.load(sd, checkpoint_id=CKPT, planner=planner)"
                )
            fix += f"\n# these {len(keys)} key(s) keep their initial values: {named}"
            hints.append(
                Hint(
                    "partial",
                    f"{len(keys)} target key(s) are not in the checkpoint",
                    f"{named}: no checkpoint key could fill them. If that is intended (new layers, a new "
                    "head), they can keep their initial values.",
                    fix,
                    keys=keys,
                    cause=f"{len(keys)} key(s) missing from the checkpoint",
                )
            )
    if unexpected:
        keys = tuple(sorted(unexpected))
        hints.append(
            Hint(
                "unexpected",
                f"{len(keys)} checkpoint key(s) are read by no target rank",
                f"{_examples(keys)}. DCP ignores them silently: if the target should have them, its "
                "model is missing modules.",
                "# nothing to do if they are dropped on purpose (declare them: simulate_load(..., "
                "expected_unused=[...])); otherwise add the modules to the target",
                keys=keys,
            )
        )
    return hints


def compute_hints(trace: LoadTrace, choices: dict[str, str] | None = None) -> list[Hint]:
    """Hints, most likely cause first. Keys explained by one hint are not offered to the next.

    Prefixes, wrapper segments, renamed modules, resized and cast tensors come from one match of
    the missing keys with the unread ones (``analysis.load.fix``: every cause at once, certain
    or shown as a tie); ``choices`` are the caller's answers to the ties."""
    missing = {m.fqn for m in trace.mismatches if m.kind == MismatchKind.MISSING}
    # Keys declared unused on purpose are no longer a problem to explain.
    unexpected = {
        m.fqn
        for m in trace.mismatches
        if m.kind == MismatchKind.UNEXPECTED
        and not any(m.fqn == p or fnmatch.fnmatchcase(m.fqn, p) for p in trace.expected_unused)
    }
    partial = bool(trace.planner.option("allow_partial_load", False))
    hints = param_group_hints(trace, missing, unexpected)
    match = trace_match(trace, choices, missing, unexpected)
    hints += match_hints(trace, match, _narrower)
    for m, u in match.mapping:
        missing.discard(m)
        unexpected.discard(u)
    for amb in match.ambiguities:  # a key with a possible source is never "not in the checkpoint"
        for m, u in amb.pairs:
            missing.discard(m)
            unexpected.discard(u)
    hints += training_state_hints(trace, missing, unexpected)
    hints += _optimizer_hints(missing, unexpected)
    hints += _leftover_hints(missing, unexpected, partial, match, trace)
    return hints


HINT_COLUMNS = ["kind", "title", "detail", "fix", "keys", "mapping"]


def hints_table(hints: list[Hint]) -> pd.DataFrame:
    """The hints as a DataFrame (one row per hint, most likely first): ``keys`` is how many keys
    the hint explains, ``mapping`` the rename as a dict (empty when the fix is not a rename)."""
    return pd.DataFrame(
        [(h.kind, h.title, h.detail, h.fix, len(h.keys), h.rename) for h in hints],
        columns=HINT_COLUMNS,
    )
