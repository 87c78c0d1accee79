"""Checks: what DCP does silently that loses data, fails, or costs — derived from a trace alone.

Each finding is one row: ``severity`` ('data-loss' | 'error' | 'warning' | 'info'), ``check`` (a
short stable id), ``fqn``, ``ranks``, ``message`` (what DCP does, with the numbers) and ``fix``.
Everything comes from the trace (or a checkpoint's tables), so a saved trace gives the same
checks anywhere, without torch.

Save: rank-specific values under one key (DCP's dedup keeps one rank's copy of a plain tensor, a
Python value or a whole bytes entry), replicated DTensors whose replicas differ, key sets that
differ between ranks, write imbalance (with what the other ``dedup_save_to_lowest_rank`` option
gives), chunks that overlap or leave gaps, planner errors, plans a trace does not hold (plan
caching), tied weights written twice.
Load: checkpoint keys no rank reads, silent dtype casts, optimizer state not read, read
amplification, ``allow_partial_load`` hiding missing keys. Checkpoint: stale data files,
framing overhead.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pandas as pd

from dcpviz.analysis.groups import ranges
from dcpviz.analysis.load import read_columns
from dcpviz.analysis.load import tables as load_tables
from dcpviz.analysis.load.verdict import (
    bytes_over_tensor,
    is_optimizer_key,
    lossy_keys,
    possible_sources,
    rank_ranges,
    skipped_keys,
)
from dcpviz.analysis.load.verdict import unread_keys as unread_checkpoint_keys
from dcpviz.analysis.save import file_checks, tables
from dcpviz.analysis.save.stage_checks import COLLISION_FIX, stage_key_rows
from dcpviz.core.components import component_of
from dcpviz.core.kinds import FAILING, SEVERITIES, MismatchKind, Severity, count_text
from dcpviz.core.plans import IMBALANCE_THRESHOLD
from dcpviz.core.trace import STRUCTURE_PREFIX, LoadTrace, SaveTrace
from dcpviz.core.units import fmt_bytes

CHECK_COLUMNS = ["severity", "check", "fqn", "ranks", "message", "fix"]

AMPLIFICATION_THRESHOLD = 2.0  # bytes deserialised / bytes kept, per rank
FRAMING_THRESHOLD = 0.10  # framing bytes / data bytes of a checkpoint
MAX_ROWS_PER_CHECK = 8  # beyond this, one summary row per check (a 1024-rank job stays readable)

Row = tuple[str, str, str, tuple[int, ...], str, str]


def _frame(rows: Iterable[Row]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=CHECK_COLUMNS)
    if len(df):
        order = df["severity"].map({s: i for i, s in enumerate(SEVERITIES)})
        df = (
            df.assign(_o=order)
            .sort_values("_o", kind="stable")
            .drop(columns="_o")
            .reset_index(drop=True)
        )
    return df


def _ranks_text(ranks: Iterable[int]) -> str:
    ranks = sorted(set(ranks))
    return ("rank " if len(ranks) == 1 else "ranks ") + ranges(ranks)


def _capped(rows: list[Row], severity: str, check: str, what: str, fix: str) -> list[Row]:
    """At most MAX_ROWS_PER_CHECK rows; the rest summed up in one more row."""
    if len(rows) <= MAX_ROWS_PER_CHECK:
        return rows
    rest = rows[MAX_ROWS_PER_CHECK - 1 :]
    ranks = tuple(sorted({r for row in rest for r in row[3]}))
    keys = ", ".join(row[2] for row in rest[:3])
    summary = (
        severity,
        check,
        f"({len(rest)} more keys)",
        ranks,
        f"{len(rest)} more keys {what} ({keys}, ...).",
        fix,
    )
    return rows[: MAX_ROWS_PER_CHECK - 1] + [summary]


# -- save ---------------------------------------------------------------------------------------
_PER_RANK_FIX = (
    "save it under a key of its own per rank (f'{key}.rank{rank}', as torchtitan's dataloader "
    "saves dp_rank_{i}), or gather it into one value (dist.all_gather_object) before dcp.save"
)


def _replicated_plain_keys(trace: SaveTrace) -> pd.DataFrame:
    """Dedup rows of keys whose copies can differ: plain tensors, Python values and bytes
    entries, and DTensors whose replicas were fingerprinted (a ``Replicate()`` placement made
    with ``from_local(run_check=False)`` can differ per rank). For those, DCP's dedup decides
    whose values survive."""
    dtensors = {lay.fqn for lay in trace.layouts}
    digested = {d.fqn for d in trace.value_digests}
    plain = {it.fqn for it in trace.items} - (dtensors - digested)
    # Only these keys' rows: a save of DTensors alone has none and needs no dedup replay at all.
    return tables.dedup(trace, fqns=plain)


_UNFLATTENED_FIX = (
    "save with flatten_state_dict=True (DefaultSavePlanner's default): every tensor, and every "
    "rank's shard of a DTensor, is then saved as an item of its own"
)
_REPLICA_FIX = (
    "make the replicas equal before dcp.save (DTensor.from_local(..., run_check=True) broadcasts "
    "rank 0's value; or redistribute from one source), or save a Shard() placement instead"
)


def _digests_by_key(
    trace: SaveTrace,
) -> tuple[dict[str, dict[int, str]], dict[tuple, dict[int, str]]]:
    """Digests of whole values (by fqn) and of replicated DTensor chunks (by fqn and offsets)."""
    whole: dict[str, dict[int, str]] = defaultdict(dict)
    chunks: dict[tuple, dict[int, str]] = defaultdict(dict)
    for d in trace.value_digests:
        if d.offsets is None:
            whole[d.fqn][d.rank] = d.digest
        else:
            chunks[(d.fqn, tuple(d.offsets))][d.rank] = d.digest
    return whole, chunks


def rank_specific_values(trace: SaveTrace) -> list[Row]:
    """A value saved under one key by several ranks is a 'replica' to DCP: the coordinator keeps
    one rank's copy. 'data-loss' where the ranks' values differ (digests of every byte),
    'warning' where some rank's value is unknown (meta tensors in simulation)."""
    whole, chunks = _digests_by_key(trace)
    dtensors = {lay.fqn for lay in trace.layouts}
    lost_rows: list[Row] = []
    unknown_rows: list[Row] = []
    for row in _replicated_plain_keys(trace).itertuples(index=False):
        cands = tuple(int(r) for r in row.candidates)
        survivor = int(row.chosen_rank) if row.chosen_rank >= 0 else int(row.replay_rank)
        offsets = tuple(row.offsets) if row.offsets is not None else None
        by_rank = (
            chunks.get((row.fqn, offsets))
            if (row.fqn, offsets) in chunks
            else whole.get(row.fqn, {})
        )
        known = {r: by_rank[r] for r in cands if r in by_rank}
        replica = row.fqn in dtensors and (row.fqn, offsets) in chunks
        if any(d.startswith(STRUCTURE_PREFIX) for d in known.values()):
            # Structure only (tensors without values): different structures are different values
            # for certain; equal ones, or a mix with value digests, tell nothing.
            if not (
                all(d.startswith(STRUCTURE_PREFIX) for d in known.values())
                and len(set(known.values())) > 1
            ):
                known = {}
        if len(set(known.values())) > 1:
            keep = known.get(survivor)
            lost = tuple(r for r in cands if r in known and known[r] != keep)
            distinct = len(set(known.values()))
            if replica:
                lost_rows.append(
                    (
                        Severity.DATA_LOSS,
                        "replicas-differ",
                        row.fqn,
                        lost,
                        f"{row.fqn!r} is a replicated DTensor, but its replicas on {len(cands)} ranks hold "
                        f"{distinct} different values (chunk at {list(offsets)}); DCP writes one replica, "
                        f"rank {survivor}'s, and the values of {_ranks_text(lost)} are lost (not on disk).",
                        _REPLICA_FIX,
                    )
                )
                continue
            unflattened = not trace.planner.option("flatten_state_dict", True)
            lost_rows.append(
                (
                    Severity.DATA_LOSS,
                    "rank-specific-value",
                    row.fqn,
                    lost,
                    f"{len(cands)} ranks save {row.fqn!r} under one key, so DCP treats it as a replica and "
                    f"keeps only rank {survivor}'s copy; the ranks hold {distinct} different values, and "
                    f"those of {_ranks_text(lost)} are lost (not on disk)."
                    + (
                        " With flatten_state_dict=False each rank's whole nested value (its shards "
                        "included) is one bytes entry."
                        if unflattened
                        else ""
                    ),
                    _UNFLATTENED_FIX if unflattened else _PER_RANK_FIX,
                )
            )
        elif len(known) < len(cands) and not replica:
            unknown = tuple(r for r in cands if r not in known)
            why = (
                "no copy has values here (a simulation builds tensors on the meta device)"
                if not known
                else f"the values of {_ranks_text(unknown)} are not known here (this source did not "
                "build those ranks' state)"
            )
            unknown_rows.append(
                (
                    Severity.WARNING,
                    "rank-specific-value",
                    row.fqn,
                    unknown,
                    f"{len(cands)} ranks save {row.fqn!r} under one key and DCP keeps only rank {survivor}'s "
                    f"copy; {why}, so whether the copies differ cannot be told.",
                    "if the value can differ between ranks (an RNG state, a counter, a position): "
                    + _PER_RANK_FIX
                    + "; run_save or a RecordingSavePlanner checks the real values",
                )
            )
    return lost_rows + _capped(
        unknown_rows,
        Severity.WARNING,
        "rank-specific-value",
        "are kept from one rank with other ranks' values unknown",
        _PER_RANK_FIX,
    )


def key_sets(trace: SaveTrace) -> list[Row]:
    """Keys only some ranks save: which ranks lack them, and what that means on load."""
    holders = tables.key_holders(trace)
    everyone = {r for r, p in enumerate(trace.local_plans) if p is not None}
    fix = (
        "fine if every rank loads with the same keys it saved; a job that resumes on another "
        "number of ranks must map these keys itself (allow_partial_load hides the ones it misses)"
    )
    # Pipeline stages: keys per stage are by design; a key several stages save loses data.
    collisions, per_stage, by_stage = stage_key_rows(trace.scenario, holders, everyone)
    stage_rows = (
        _capped(
            collisions,
            "data-loss",
            "stages-share-a-key",
            "are saved by several pipeline stages under one key",
            COLLISION_FIX,
        )
        + per_stage
    )
    rows: list[Row] = []
    for fqn, ranks in holders.items():
        if ranks == everyone or fqn in by_stage:
            continue
        lacking = tuple(sorted(everyone - ranks))
        rows.append(
            (
                Severity.WARNING,
                "key-sets-differ",
                fqn,
                lacking,
                f"{fqn!r} is saved by {len(ranks)} of {len(everyone)} ranks ({_ranks_text(ranks)}); "
                f"{_ranks_text(lacking)} lack{'s' if len(lacking) == 1 else ''} it. On load a rank reads only the keys its own state dict "
                "has: a rank that lacks it restores nothing for it, and a target rank that asks for a "
                "key no rank saved fails (missing key).",
                fix,
            )
        )
    return stage_rows + _capped(
        rows, Severity.WARNING, "key-sets-differ", "are saved by some ranks only", fix
    )


def write_imbalance(trace: SaveTrace) -> list[Row]:
    """max / mean bytes per rank above IMBALANCE_THRESHOLD, with the other dedup option's figure."""
    vol = tables.rank_volume(trace)
    nbytes = vol["nbytes"]
    if not len(nbytes) or nbytes.isna().any():
        return []
    mean, mx = float(nbytes.mean()), float(nbytes.max())
    if mean <= 0 or mx / mean <= IMBALANCE_THRESHOLD:
        return []
    heavy = tuple(int(r) for r, b in zip(vol["rank"], nbytes) if b > IMBALANCE_THRESHOLD * mean)
    option = bool(trace.planner.option("dedup_save_to_lowest_rank", False))
    message = (
        f"rank volume is uneven: max {fmt_bytes(mx)} vs mean {fmt_bytes(mean)} per rank "
        f"(imbalance {mx / mean:.2f}, over {IMBALANCE_THRESHOLD}) with "
        f"dedup_save_to_lowest_rank={option}; the heaviest are {_ranks_text(heavy)}, and the "
        "save takes as long as its slowest rank."
    )
    alt = trace.dedup_alternative
    if alt is None:
        fix = (
            f"try DefaultSavePlanner(dedup_save_to_lowest_rank={not option}), or shard the plain "
            "tensors (FSDP) so every rank holds its own part"
        )
        return [(Severity.WARNING, "write-imbalance", "", heavy, message, fix)]
    alt_mean = sum(alt.rank_nbytes) / len(alt.rank_nbytes)
    alt_max = max(alt.rank_nbytes)
    alt_imb = alt_max / alt_mean if alt_mean > 0 else float("nan")
    message += (
        f" With dedup_save_to_lowest_rank={alt.lowest_rank} (DCP's dedup on the same local "
        f"plans): max {fmt_bytes(alt_max)}, imbalance {alt_imb:.2f}."
    )
    if alt_imb < mx / mean:
        fix = f"planner=DefaultSavePlanner(dedup_save_to_lowest_rank={alt.lowest_rank})"
    else:
        fix = (
            "the other dedup option is no better: the imbalance comes from the layout (what each "
            "rank holds); shard the plain tensors (FSDP) or write the replicated ones from more ranks"
        )
    return [(Severity.WARNING, "write-imbalance", "", heavy, message, fix)]


def _overlap(a: Any, b: Any) -> int:
    """Elements two chunks share (0 when disjoint)."""
    n = 1
    for oa, sa, ob, sb in zip(a.offsets, a.sizes, b.offsets, b.sizes):
        n *= max(0, min(oa + sa, ob + sb) - max(oa, ob))
        if not n:
            return 0
    return n


def _overlaps(chunks: tuple[Any, ...]) -> int:
    """Elements shared by pairs of chunks: a sweep along the dim with the most distinct offsets,
    so a sharded tensor compares each chunk with its few neighbours only."""
    boxes = [c for c in chunks if all(c.sizes)]
    if len(boxes) < 2 or not boxes[0].offsets:
        return 0
    dim = max(range(len(boxes[0].offsets)), key=lambda d: len({c.offsets[d] for c in boxes}))
    boxes.sort(key=lambda c: c.offsets[dim])
    shared = 0
    for i, a in enumerate(boxes):
        end = a.offsets[dim] + a.sizes[dim]
        for b in boxes[i + 1 :]:
            if b.offsets[dim] >= end:
                break
            shared += _overlap(a, b)
    return shared


def chunk_coverage(trace: SaveTrace) -> list[Row]:
    """Saved chunks that overlap (DCP's validation rejects them) or leave part of their tensor
    out (data missing)."""
    if trace.metadata is None:
        return []
    rows: list[Row] = []
    for t in trace.metadata.tensors:
        total = math.prod(t.size)
        shared = _overlaps(t.chunks)
        covered = sum(math.prod(c.sizes) for c in t.chunks) - shared
        if shared:
            rows.append(
                (
                    Severity.ERROR,
                    "chunks-overlap",
                    t.fqn,
                    (),
                    f"the saved chunks of {t.fqn!r} overlap ({shared} elements saved twice), which DCP's "
                    "validation rejects (older DCP only logged it).",
                    "give every element one owner: check the placements / the planner's chunks",
                )
            )
        if covered < total:
            rows.append(
                (
                    Severity.DATA_LOSS,
                    "chunks-missing",
                    t.fqn,
                    (),
                    f"the saved chunks of {t.fqn!r} cover at most {covered} of its {total} elements: part "
                    "of the tensor is not saved.",
                    "make the chunks cover the tensor: check the placements / the planner's chunks",
                )
            )
    return rows


_READ_FIX = (
    "copy the checkpoint's data files again (or re-save it): .metadata names each file and "
    "the bytes it must hold"
)


def planner_errors(trace: SaveTrace | LoadTrace) -> list[Row]:
    """Every failure the trace recorded: DCP raised, so the save or load would not complete. One
    row per phase and message (DCP raises the same text on every rank that hits it), with its ranks."""
    by_message: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for e in trace.errors:
        ranks = by_message[(e.phase, e.exc_type, e.message[:500])]
        if e.rank is not None:
            ranks.append(e.rank)
    fix = (
        "see the message; the load hints and mismatches name the keys"
        if trace.kind == "load"
        else "see the message (planner, layout or storage)"
    )
    rows: list[Row] = []
    for (phase, exc_type, message), ranks in by_message.items():
        where = rank_ranges(ranks, trace.scenario.world_size) if ranks else "the coordinator"
        rows.append(
            (
                Severity.ERROR,
                f"{phase}-failed",
                "",
                tuple(sorted(set(ranks))),
                f"[{phase}, {where}] {exc_type}: {message}",
                _READ_FIX if phase == "read" and trace.kind == "load" else fix,
            )
        )
    return rows


def tied_weights(trace: SaveTrace) -> list[Row]:
    """Keys that hold one tensor (tied weights: wte.weight and lm_head.weight) are each saved in
    full: an 'info' row with the bytes the extra copies take on disk."""
    if not trace.tied_keys or trace.global_plans is None:
        return []
    items = tables.write_items(trace)
    kept = items[items["kept"].fillna(False).astype(bool)]
    per_key = kept.groupby("fqn")["nbytes"].sum()
    rows: list[Row] = []
    for group in trace.tied_keys:
        written = [k for k in group if k in per_key.index]
        if len(written) < 2:
            continue
        extra = int(sum(int(per_key[k]) for k in written[1:]))
        rows.append(
            (
                Severity.INFO,
                "tied-weights-saved-twice",
                written[0],
                (),
                f"{', '.join(repr(k) for k in written)} are one tensor (tied weights), and DCP writes each "
                f"key in full: {fmt_bytes(extra)} on disk for {len(written) - 1} extra "
                f"cop{'y' if len(written) == 2 else 'ies'}. On load both keys are read into the one tensor.",
                "nothing to fix for correctness; to save the bytes, drop the tied key from the state dict "
                f"before dcp.save (e.g. del sd[{written[-1]!r}]) and tie the weights again after loading",
            )
        )
    return rows


def unrecorded_plans(trace: SaveTrace) -> list[Row]:
    """Plans the trace does not hold: DCP's empty "unchanged" markers (plan caching) recorded as
    they were sent, by an older capture or a wrapped planner whose cache could not be read. What
    those ranks write cannot be shown or checked, so an empty result is not an all-clear."""
    ranks = tuple(r for r, p in enumerate(trace.local_plans) if p is not None and not p.usable)
    if not ranks:
        return []
    return [
        (
            Severity.WARNING,
            "plans-not-recorded",
            "",
            ranks,
            f"the local plans of {_ranks_text(ranks)} are DCP's empty 'unchanged' markers "
            "(enable_plan_caching), not the cached plans DCP used: what those ranks write is not in "
            "this trace, and no check can see it.",
            "capture with this dcpviz's RecordingSavePlanner (it records the cached plans DCP "
            "really uses), or save without enable_plan_caching",
        )
    ]


def save_checks(trace: SaveTrace) -> pd.DataFrame:
    """Every check of a save trace, most severe first."""
    rows = (
        rank_specific_values(trace)
        + chunk_coverage(trace)
        + planner_errors(trace)
        + unrecorded_plans(trace)
        + key_sets(trace)
        + write_imbalance(trace)
        + tied_weights(trace)
        + file_checks.file_plan_checks(trace)
    )
    return _frame(rows)


# -- load ---------------------------------------------------------------------------------------
def unread_keys(trace: LoadTrace) -> list[Row]:
    """Checkpoint keys no target rank reads (DCP ignores them silently), optimizer state apart
    (by the saved side's components where the trace has them, else by the key's shape). Keys
    declared unused (``expected_unused``) are no finding. 'data-loss' for a key that could hold
    the data of a key a partial load skips (``verdict.lossy_keys``), else 'warning'."""
    unexpected = unread_checkpoint_keys(trace)
    lossy = lossy_keys(trace)
    saved = trace.saved_scenario
    prefixes = dict(saved.components) if saved is not None else {}
    optim = [
        k
        for k in unexpected
        if is_optimizer_key(k) or component_of(k, prefixes) in ("optim", "optimizer")
    ]
    rest = [k for k in unexpected if k not in set(optim)]
    fix = "load them (add the keys to the state dict you pass to dcp.load), or drop them on purpose"
    lost_fix = (
        "map the target's keys to these (load.hints names the prefix or rename), or declare "
        "them unused on purpose (expected_unused)"
    )
    lost = [k for k in rest if k in lossy]
    rows: list[Row] = [
        (
            Severity.DATA_LOSS,
            "unread-keys",
            k,
            (),
            f"the checkpoint holds {k!r} but no target rank asks for it, while allow_partial_load "
            "skips a target key of its shape: the load leaves its data behind.",
            lost_fix,
        )
        for k in lost
    ]
    rows = _capped(
        rows,
        Severity.DATA_LOSS,
        "unread-keys",
        "are in the checkpoint and read by no rank",
        lost_fix,
    )
    plain: list[Row] = [
        (
            Severity.WARNING,
            "unread-keys",
            k,
            (),
            f"the checkpoint holds {k!r} but no target rank asks for it: DCP ignores it silently.",
            fix,
        )
        for k in rest
        if k not in lossy
    ]
    rows += _capped(
        plain, Severity.WARNING, "unread-keys", "are in the checkpoint and read by no rank", fix
    )
    if optim:
        sev = Severity.DATA_LOSS if any(k in lossy for k in optim) else Severity.WARNING
        rows.append(
            (
                sev,
                "optimizer-state-not-read",
                optim[0] if len(optim) == 1 else f"({len(optim)} keys)",
                (),
                f"the checkpoint holds optimizer state ({len(optim)} keys, e.g. {', '.join(optim[:3])}) that no "
                "target rank reads: a resumed run starts its optimizer afresh (Adam's moments reset) "
                "without an error.",
                "load the optimizer too: get_state_dict(model, optim) -> {'model': ..., 'optim': ...} "
                "in dcp.load, then set_state_dict(model, optim, ...)",
            )
        )
    return rows


def dtype_casts(trace: LoadTrace) -> list[Row]:
    """Tensors saved in one dtype and loaded into another: Tensor.copy_ casts silently."""
    rows: list[Row] = []
    for m in trace.mismatches:
        if m.kind == MismatchKind.DTYPE:
            rows.append(
                (
                    Severity.WARNING,
                    "dtype-cast",
                    m.fqn,
                    tuple(m.ranks),
                    f"{m.fqn!r} was saved as {m.saved_dtype} and is loaded into {m.current_dtype}: DCP "
                    "does not check dtypes, it casts with Tensor.copy_ (precision may be lost).",
                    f"load into a {m.saved_dtype} tensor and cast yourself, or accept the cast",
                )
            )
    return _capped(
        rows,
        Severity.WARNING,
        "dtype-cast",
        "are cast silently",
        "load into tensors of the saved dtype and cast yourself",
    )


def partial_load(trace: LoadTrace) -> list[Row]:
    """allow_partial_load=True: keys the checkpoint lacks are skipped and keep their initial value.
    'data-loss' for a skipped key that the checkpoint could fill from an entry no rank reads (same
    shape, same side; ``verdict.possible_sources``): the load leaves loadable data behind (a
    prefix, a rename) and says nothing. 'warning' for a key with no possible source."""
    skipped = skipped_keys(trace)
    if not skipped:
        return []
    sources = possible_sources(trace)
    n_target = len({v.fqn for v in trace.wanted}) or len(skipped)
    restored = f"The load restores {n_target - len(skipped)} of {n_target} target keys."
    lost_fix = (
        "map the target's keys to the checkpoint's (load.hints, load.fix_planner()); use "
        "allow_partial_load only for keys with no source in the checkpoint"
    )
    fix = "check the key names (load.hints); use allow_partial_load only for keys you mean to skip"
    lost: list[Row] = []
    hidden: list[Row] = []
    for m in trace.mismatches:
        if m.kind != MismatchKind.MISSING:
            continue
        said = (
            f"{m.fqn!r} is not in the checkpoint; allow_partial_load=True makes DCP skip it without a word, "
            "so it keeps its initial value."
        )
        src = sources.get(m.fqn, ())
        if src:
            lost.append(
                (
                    Severity.DATA_LOSS,
                    "partial-load-leaves-data-unread",
                    m.fqn,
                    tuple(m.ranks),
                    f"{said} The checkpoint holds {len(src)} unread key(s) that could hold its data "
                    f"({', '.join(src[:3])}{', ...' if len(src) > 3 else ''}). {restored}",
                    lost_fix,
                )
            )
        else:
            hidden.append(
                (Severity.WARNING, "partial-load-hides-missing", m.fqn, tuple(m.ranks), said, fix)
            )
    return _capped(
        lost,
        Severity.DATA_LOSS,
        "partial-load-leaves-data-unread",
        "are skipped while their data is unread",
        lost_fix,
    ) + _capped(hidden, Severity.WARNING, "partial-load-hides-missing", "are skipped silently", fix)


def bytes_replace_tensors(trace: LoadTrace) -> list[Row]:
    """A bytes entry (a Python value) saved where the target holds a tensor: dcp.load raises
    nothing, plans a bytes read, and its ``load_bytes`` replaces the state dict's entry with the
    saved value; the target's tensor is never written (checked against real dcp.load)."""
    rows: list[Row] = []
    for m in trace.mismatches:
        if bytes_over_tensor(m) and not m.message:
            rows.append(
                (
                    Severity.DATA_LOSS,
                    "bytes-replace-tensor",
                    m.fqn,
                    tuple(m.ranks),
                    f"the checkpoint holds a Python value (bytes) under {m.fqn!r} where the target holds "
                    f"a {m.current_dtype} tensor {tuple(m.current_size or ())}: dcp.load replaces the state "
                    "dict's entry with the saved value and never writes the tensor (a model's parameter "
                    "keeps its initial value; load_state_dict then gets a non-tensor).",
                    "save a tensor under this key, or load it into a Python value and convert it yourself",
                )
            )
    return _capped(
        rows,
        Severity.DATA_LOSS,
        "bytes-replace-tensor",
        "are replaced by saved Python values",
        "save tensors under these keys, or load them into Python values",
    )


def read_amplification(trace: LoadTrace, reads: pd.DataFrame | None = None) -> list[Row]:
    """Ranks that deserialise far more than they keep: DCP's FileSystemReader loads each saved
    chunk whole, then narrows it to the box the rank needs."""
    if reads is None:  # from the read columns: the same numbers, without read_items
        vol, on_disk = read_columns.rank_volume(trace), read_columns.on_disk(trace)
    else:
        vol, on_disk = load_tables.rank_volume(trace, reads), bool(reads["file"].notna().any())
    vol = vol[vol["planned"] & (vol["nbytes"] > 0)]
    if not len(vol):
        return []
    amp = vol["chunk_nbytes"].astype("float64") / vol["nbytes"].astype("float64")
    heavy = vol[amp > AMPLIFICATION_THRESHOLD]
    if not len(heavy):
        return []
    worst = heavy.loc[amp[heavy.index].idxmax()]
    files = vol["files"].astype("float64").max()
    source = "files" if on_disk else "writer ranks"
    spread = int(files if source == "files" else vol["writers"].astype("float64").max())
    return [
        (
            Severity.WARNING,
            "read-amplification",
            "",
            tuple(int(r) for r in heavy["rank"]),
            f"{len(heavy)} target ranks deserialise more than {AMPLIFICATION_THRESHOLD:g}x the bytes they keep: "
            f"rank {int(worst['rank'])} reads {fmt_bytes(int(worst['chunk_nbytes']))} of saved chunks to keep "
            f"{fmt_bytes(int(worst['nbytes']))} ({amp[heavy.index].max():.1f}x); a rank reads from up to "
            f"{spread} {source}. DCP loads each saved chunk whole before taking the part a rank needs.",
            "load with the layout it was saved with (same sharded dim), or reshard offline once "
            "(dcp_to_torch_save / a one-off conversion) instead of at every restart",
        )
    ]


def load_checks(trace: LoadTrace, reads: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every check of a load trace, most severe first."""
    rows = (
        planner_errors(trace)
        + bytes_replace_tensors(trace)
        + unread_keys(trace)
        + dtype_casts(trace)
        + partial_load(trace)
        + read_amplification(trace, reads)
    )
    return _frame(rows)


# -- checkpoint directory -----------------------------------------------------------------------
def checkpoint_checks(info: Any) -> pd.DataFrame:
    """Checks of a checkpoint directory (a CheckpointInfo): stale data files, framing overhead."""
    rows: list[Row] = []
    files = info.files
    stale = files[files["items"] == 0]
    if len(stale):
        names = list(stale["file"])
        rows.append(
            (
                Severity.WARNING,
                "stale-files",
                "",
                tuple(sorted({int(r) for r in stale["rank"] if r >= 0})),
                f"{len(names)} data files ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}; "
                f"{fmt_bytes(int(stale['nbytes'].sum()))}) are referenced by no record: left by an earlier "
                "save into this directory (DCP replaces .metadata, deletes nothing).",
                "save each checkpoint into a new directory (step_{n}/), or delete the stale files",
            )
        )
    t = info.totals
    data, framing = int(t["tensor_nbytes"]), int(t["framing_nbytes"])
    if data > 0 and framing / data > FRAMING_THRESHOLD:
        rows.append(
            (
                Severity.INFO,
                "framing-overhead",
                "",
                (),
                f"torch.save's framing around each of the {t['chunks']} chunks takes {fmt_bytes(framing)} "
                f"for {fmt_bytes(data)} of data ({framing / data:.0%}): many small chunks.",
                "fewer, larger chunks (shard fewer small tensors, or keep small ones unsharded)",
            )
        )
    return _frame(rows)


def refused_checkpoint(path: str, message: str) -> pd.DataFrame:
    """The checks of a checkpoint directory that could not be read safely: one 'error' row (a
    BYTE_IO entry that would build a class outside the safe list, a broken record, ...)."""
    unsafe = "refusing to" in message
    return _frame(
        [
            (
                Severity.ERROR,
                "unsafe-entry" if unsafe else "unreadable-checkpoint",
                "",
                (),
                message,
                "do not load it with plain DCP; re-save it from a trusted job"
                if unsafe
                else "re-save the checkpoint; see the message for the entry and file",
            )
        ]
    )


def counts(checks: pd.DataFrame) -> dict[str, int]:
    """Rows per severity, in severity order, only those present."""
    c = checks["severity"].value_counts() if len(checks) else {}
    return {s: int(c[s]) for s in SEVERITIES if s in c}


def counts_line(checks: pd.DataFrame) -> str:
    """'1 data-loss, 1 error, 6 warnings' (or 'no findings')."""
    c = counts(checks)
    return ", ".join(count_text(s, n) for s, n in c.items()) or "no findings"


def failing(checks: pd.DataFrame) -> bool:
    """Whether any row is 'data-loss' or 'error' (what fails a CI job)."""
    return bool(len(checks)) and bool(checks["severity"].isin(FAILING).any())
