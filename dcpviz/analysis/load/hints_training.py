"""Hints for what goes wrong when a training state (not just a model) is loaded.

Computed from a load trace alone, like ``hints.py``, which calls ``training_state_hints`` before
its general optimizer rule. Each hint explains the keys it names; explained keys are taken out of
``missing`` / ``unexpected`` so later rules do not explain them again.

- the target's optimizer has no state yet (``optim.state_dict()`` taken before the first step):
  DCP loads only the keys the target holds, so the saved moments are skipped without a word;
- param groups that differ: another count of groups, or other hyper-parameter names (another
  optimizer class) — DCP matches them key by key;
- data-loader positions saved for other data-parallel ranks than the target has;
- a component (``lr_scheduler``, ``dataloader``, ``train_state``, ...) on one side only.

Hyper-parameter *values* are not compared: a checkpoint's metadata holds their sizes, not their
values, and ``set_state_dict`` puts the saved values into the target's param groups.
"""

from __future__ import annotations

import re
from collections import defaultdict

from dcpviz.analysis.load.hint_base import OPTIM_STATE_NAMES, Hint, _examples
from dcpviz.core.components import component_of
from dcpviz.core.trace import LoadTrace

_STATE_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)state\.(?P<param>.+)\.(?P<name>[A-Za-z_]+)$")
_GROUP_KEY = re.compile(
    r"^(?P<prefix>(?:.*\.)?)param_groups\.(?P<group>\d+)\.(?P<name>[A-Za-z_]+)$"
)
_DP_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)dp_rank_(?P<rank>\d+)$")

_STATE_API = (
    "torch.distributed.checkpoint.state_dict.get_state_dict(model, optim) to build the state "
    "(it initialises the optimizer's state) and set_state_dict(model, optim, "
    "model_state_dict=sd['model'], optim_state_dict=sd['optim']) after dcp.load"
)


# The fix as code (the hint's fix text is code that runs in the user's job).
_STATE_FIX = (
    "model_sd, optim_sd = get_state_dict(model, optim); sd = {'model': model_sd, 'optim': optim_sd}; "
    "dcp.load(sd, checkpoint_id=CKPT); set_state_dict(model, optim, model_state_dict=sd['model'], "
    "optim_state_dict=sd['optim'])  # from torch.distributed.checkpoint.state_dict import get_state_dict, "
    "set_state_dict: get_state_dict initialises the optimizer's state"
)


def _moment_prefixes(keys: set[str]) -> dict[str, set[str]]:
    """Optimizer prefix ('optim.', 'app.optim.', '') -> its state keys among ``keys``."""
    out: dict[str, set[str]] = defaultdict(set)
    for k in keys:
        m = _STATE_KEY.match(k)
        if m and m["name"] in OPTIM_STATE_NAMES:
            out[m["prefix"]].add(k)
    return out


def _groups(keys: set[str]) -> dict[str, dict[int, set[str]]]:
    """Optimizer prefix -> group index -> hyper-parameter names, among ``keys``."""
    out: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for k in keys:
        m = _GROUP_KEY.match(k)
        if m:
            out[m["prefix"]][int(m["group"])].add(m["name"])
    return out


def _not_stepped(wanted: set[str], unexpected: set[str]) -> list[Hint]:
    hints = []
    target_groups = _groups(wanted)
    target_state = _moment_prefixes(wanted)
    for prefix, keys in sorted(_moment_prefixes(unexpected).items()):
        if prefix not in target_groups or target_state.get(prefix):
            continue  # no optimizer in the target, or one with state: other rules
        names = sorted({k.rsplit(".", 1)[1] for k in keys})
        hints.append(
            Hint(
                "optimizer",
                f"The target's optimizer has no state yet: DCP skips the {len(keys)} saved optimizer "
                "values without a word",
                f"the target holds {prefix}param_groups but no {prefix}state ({', '.join(names)} are saved, "
                f"e.g. {_examples(sorted(keys), 1)}): optim.state_dict() before the first optimizer step "
                "has no moments, and dcp.load fills only the keys the target holds. The load succeeds and "
                "training resumes with fresh optimizer state (Adam restarts its moments and step counts).",
                _STATE_FIX,
                keys=tuple(sorted(keys)),
            )
        )
        unexpected -= keys
    return hints


def _param_group_hints(
    missing: set[str], unexpected: set[str], wanted: set[str], saved: set[str]
) -> list[Hint]:
    hints = []
    target, checkpoint = _groups(wanted), _groups(saved)
    for prefix in sorted(set(target) & set(checkpoint)):
        t, c = target[prefix], checkpoint[prefix]
        group_keys = {
            k for k in missing | unexpected if (m := _GROUP_KEY.match(k)) and m["prefix"] == prefix
        }
        if len(t) != len(c):
            hints.append(
                Hint(
                    "optimizer",
                    f"The optimizer has {len(c)} param group(s) in the checkpoint and {len(t)} in the target",
                    f"{prefix}param_groups.<i>.* keys differ ({_examples(sorted(group_keys), 2)}): DCP matches "
                    "param groups by position, so a group the other side lacks is missing or never read, and "
                    "set_state_dict maps parameters to the saved groups.",
                    "# build the target's optimizer with the saving job's param groups, in the same order (e.g. "
                    "the same no-weight-decay group for norms and biases)",
                    keys=tuple(sorted(group_keys)),
                )
            )
        else:
            differ = sorted({g for g in t if t[g] != c.get(g)})
            if not differ:
                continue
            only_c = sorted(set().union(*(c[g] - t[g] for g in differ)))
            only_t = sorted(set().union(*(t[g] - c.get(g, set()) for g in differ)))
            state_keys = {
                k
                for k in missing | unexpected
                if (m := _STATE_KEY.match(k))
                and m["prefix"] == prefix
                and m["name"] in OPTIM_STATE_NAMES
            }
            hints.append(
                Hint(
                    "optimizer",
                    "The target's optimizer is another kind than the saved one (other hyper-parameters)",
                    f"param group(s) {', '.join(map(str, differ))}: the checkpoint has {', '.join(only_c) or 'nothing'} "
                    f"that the target lacks, the target {', '.join(only_t) or 'nothing'} that the checkpoint lacks"
                    + _state_names_differ(state_keys & unexpected, state_keys & missing)
                    + ".",
                    "# build the target with the saving job's optimizer class (in dcpviz: the same Scenario.optimizer), "
                    "or load the model alone and start the new optimizer fresh",
                    keys=tuple(sorted(group_keys | state_keys)),
                )
            )
            group_keys |= state_keys
        missing -= group_keys
        unexpected -= group_keys
    return hints


def _state_names_differ(saved_only: set[str], target_only: set[str]) -> str:
    """'; per parameter the checkpoint saves exp_avg, exp_avg_sq and the target holds momentum_buffer'."""
    if not saved_only and not target_only:
        return ""
    names = lambda keys: ", ".join(sorted({k.rsplit(".", 1)[1] for k in keys})) or "nothing"  # noqa: E731
    return f"; per parameter the checkpoint saves {names(saved_only)} and the target holds {names(target_only)}"


def _dataloader_hints(
    missing: set[str], unexpected: set[str], wanted: set[str], saved: set[str]
) -> list[Hint]:
    """dp_rank_{i} keys (torchtitan's data loader) on one side only, when both sides save them."""
    if not any(_DP_KEY.match(k) for k in saved) or not any(_DP_KEY.match(k) for k in wanted):
        return []  # a data loader on one side only: the component rule says so
    saved_ranks = {k: int(m["rank"]) for k in unexpected if (m := _DP_KEY.match(k))}
    target_ranks = {int(m["rank"]) for k in wanted if (m := _DP_KEY.match(k))}
    new_ranks = {k: int(m["rank"]) for k in missing if (m := _DP_KEY.match(k))}
    hints = []
    if new_ranks:
        hints.append(
            Hint(
                "dataloader",
                f"{len(set(new_ranks.values()))} target data-parallel rank(s) have no saved data-loader position",
                f"{_examples(sorted(new_ranks), 2)} are not in the checkpoint: the target has more DP ranks than "
                "the saving job, and dcp.load raises on the first of them.",
                "# resume with the saving job's data-parallel degree, or leave the data loader out of the state "
                "passed to dcp.load (the data order restarts)",
                keys=tuple(sorted(new_ranks)),
            )
        )
        missing -= set(new_ranks)
    if not saved_ranks:
        return hints
    unread = sorted(set(saved_ranks.values()))
    hints.append(
        Hint(
            "dataloader",
            f"Data-loader positions of {len(unread)} data-parallel rank(s) are read by no target rank",
            f"the checkpoint holds dp_rank_{{i}} keys for DP rank(s) {', '.join(map(str, unread))}; the target has "
            f"{len(target_ranks) or 'no'} DP rank(s) ({_examples([f'dp_rank_{r}' for r in sorted(target_ranks)], 4)}). "
            "DCP ignores the others silently: those ranks' positions in the data are lost, so samples repeat or "
            "are skipped after resuming.",
            "# resume with the saving job's data-parallel degree (torchtitan's data loader refuses another one: "
            "'dataloader resharding is not supported yet'), or leave the data loader out of the state passed "
            "to dcp.load and accept a data order that restarts",
            keys=tuple(sorted(saved_ranks)),
        )
    )
    unexpected -= set(saved_ranks)
    return hints


def _all_optimizer_keys(keys: set[str]) -> bool:
    """An optimizer on one side only: hints.py's optimizer rule says so in its own words."""
    return all(_STATE_KEY.match(k) or _GROUP_KEY.match(k) for k in keys)


def _one_side_components(
    missing: set[str], unexpected: set[str], wanted: set[str], saved: set[str], trace: LoadTrace
) -> list[Hint]:
    t_prefixes = dict(trace.scenario.components)
    s_prefixes = (
        dict(trace.saved_scenario.components) if trace.saved_scenario is not None else t_prefixes
    )
    target_parts = {component_of(k, t_prefixes) for k in wanted}
    saved_parts = {component_of(k, s_prefixes) for k in saved}
    hints = []
    by_part: dict[str, set[str]] = defaultdict(set)
    for k in unexpected:
        by_part[component_of(k, s_prefixes)].add(k)
    for part, keys in sorted(by_part.items()):
        if part in target_parts or part == "model" or _all_optimizer_keys(keys):
            continue
        hints.append(
            Hint(
                "component",
                f"The checkpoint has {part} state that the target does not load",
                f"{len(keys)} key(s) ({_examples(sorted(keys), 2)}): the target's state has no {part!r}, and DCP "
                f"ignores what no target rank asks for. Resuming starts a fresh {part}"
                + (
                    " (the learning-rate schedule restarts, warmup included)"
                    if "sched" in part
                    else ""
                )
                + ".",
                f"# add the {part} to the state the target passes to dcp.load (a Stateful with state_dict / "
                "load_state_dict), as the saving job did",
                keys=tuple(sorted(keys)),
            )
        )
        unexpected -= keys
    by_part = defaultdict(set)
    for k in missing:
        by_part[component_of(k, t_prefixes)].add(k)
    for part, keys in sorted(by_part.items()):
        if part in saved_parts or part == "model" or _all_optimizer_keys(keys):
            continue
        hints.append(
            Hint(
                "component",
                f"The target loads {part} state that the checkpoint does not have",
                f"{len(keys)} key(s) ({_examples(sorted(keys), 2)}): the saving job did not save a {part!r}; "
                "dcp.load raises on the first of them.",
                f"# leave {part!r} out of the state passed to dcp.load when resuming from this checkpoint, or "
                "planner=DefaultLoadPlanner(allow_partial_load=True) to keep its initial values",
                keys=tuple(sorted(keys)),
            )
        )
        missing -= keys
    return hints


def saved_keys(trace: LoadTrace) -> set[str]:
    return {t.fqn for t in trace.saved.tensors} | set(trace.saved.bytes_keys)


def param_group_hints(trace: LoadTrace, missing: set[str], unexpected: set[str]) -> list[Hint]:
    """Param groups that differ (count, hyper-parameter names). Run before the rename rules,
    which would pair ``momentum_buffer`` with ``exp_avg`` as a renamed segment."""
    return _param_group_hints(
        missing, unexpected, {tv.fqn for tv in trace.wanted}, saved_keys(trace)
    )


def training_state_hints(trace: LoadTrace, missing: set[str], unexpected: set[str]) -> list[Hint]:
    """The other training-state hints; removes the keys they explain from ``missing``/``unexpected``."""
    wanted = {tv.fqn for tv in trace.wanted}
    saved = saved_keys(trace)
    hints = _not_stepped(wanted, unexpected)
    hints += _dataloader_hints(missing, unexpected, wanted, saved)
    hints += _one_side_components(missing, unexpected, wanted, saved, trace)
    return hints
