"""What each pipeline stage, and each expert shard, of a save writes (after dedup). No torch.

A save trace records its job (``trace.scenario``: the mesh and torchtitan's dim names), and a
rank's pipeline stage is its coordinate on the mesh dim named ``pp`` (``ScenarioInfo.coordinate``,
row-major as DeviceMesh lays ranks out). That is the only place a stage is read from: a trace
whose mesh has no ``pp`` dim is one stage (stage 0, no pipeline); a trace that names no mesh dims
at all (a capture that did not record them) has no known stage (``<NA>``), and these tables say
so rather than guess stages from which ranks hold which keys.

Experts are torchtitan's grouped 3-D parameters (``GroupedExperts``: ``moe.experts.w1/w2/w3``,
``[E, ...]``, and their optimizer state of the same shape): a chunk of one covers experts
``offsets[0]`` to ``offsets[0] + sizes[0]`` (exclusive), whichever dim EP, FSDP or TP split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dcpviz.analysis.facets import STAGE_DIM, dim_coordinates, expert_grouping, is_grouped_expert
from dcpviz.analysis.groups import ranges
from dcpviz.analysis.save.tables import write_items
from dcpviz.core.components import KNOWN_COMPONENTS
from dcpviz.core.errors import DcpvizError
from dcpviz.core.units import fmt_bytes

STAGE_VOLUME_COLUMNS = [
    "stage",
    "ranks",
    "n_ranks",
    "modules",
    "keys",
    "items",
    "nbytes",
    "planned_nbytes",
    "share",
]
STAGE_RANK_COLUMNS = ["rank", "stage", "coordinate", "items", "nbytes"]
EXPERT_VOLUME_COLUMNS = [
    "stage",
    "experts",
    "expert_start",
    "expert_stop",
    "ranks",
    "keys",
    "items",
    "nbytes",
    "share",
]


def _trace(source: Any) -> Any:
    """A save trace from a SaveResult or a SaveTrace."""
    trace = getattr(source, "trace", source)
    if getattr(trace, "kind", None) != "save":
        raise DcpvizError(
            f"Stage tables need a save (a SaveResult from simulate_save / run_save / load_trace, or its "
            f"trace), got {type(source).__name__}."
        )
    return trace


def stage_of_ranks(trace: Any) -> pd.Series:
    """Each rank's pipeline stage (Int64, index = rank): its coordinate on the ``pp`` mesh dim;
    0 for every rank when the recorded mesh has no ``pp`` dim; <NA> when the trace names no mesh
    dims (the stage is not known, and is not guessed)."""
    sc = _trace(trace).scenario
    W = int(sc.world_size)
    names, mesh = tuple(sc.mesh_dim_names or ()), tuple(sc.mesh or ())
    index = pd.RangeIndex(W, name="rank")
    if not names or len(names) != len(mesh):
        return pd.Series(pd.array([pd.NA] * W, dtype="Int64"), index=index, name="stage")
    stages = dim_coordinates(sc, STAGE_DIM)
    if stages is None:
        return pd.Series(pd.array([0] * W, dtype="Int64"), index=index, name="stage")
    return pd.Series(pd.array(stages, dtype="Int64"), index=index, name="stage")


def _written_items(trace: Any) -> pd.DataFrame:
    """Every local-plan item with ``kept``; refused when no global plan says what is written."""
    trace = _trace(trace)
    if trace.global_plans is None:
        raise DcpvizError(
            "This save's planning failed before the coordinator's dedup (no global plan), so what each "
            "stage writes is not known. See result.errors, fix the failure, and plan again."
        )
    return write_items(trace)


def _kept_with_stage(trace: Any) -> pd.DataFrame:
    """The write items every rank really writes (kept after dedup), with the writer's stage."""
    items = _written_items(trace)
    kept = items[items["kept"].astype(bool)]
    stage = stage_of_ranks(trace)
    return kept.assign(stage=stage.reindex(kept["rank"].to_numpy()).to_numpy())


def _module_name(fqn: str) -> str:
    """'layers 3' for a numbered layer's key, else the first module name (component prefixes
    such as 'model.' / 'optim.state.' skipped)."""
    parts = fqn.split(".")
    while len(parts) > 2 and parts[0] in KNOWN_COMPONENTS | {"state"}:
        parts = parts[1:]
    for i in range(len(parts) - 1):
        if parts[i + 1].isdigit():
            return f"{parts[i]} {parts[i + 1]}"
    return parts[0] if len(parts) > 1 else fqn


def modules_label(fqns: Any) -> str:
    """'layers 0-1, tok_embeddings' for a stage's keys: its top-level modules, layer numbers
    collapsed into ranges, in name order (the writers' item order depends on dedup)."""
    order: list[str] = []
    numbers: dict[str, list[int]] = {}
    for fqn in fqns:
        name = _module_name(str(fqn))
        head, _, num = name.partition(" ")
        if head not in numbers:
            order.append(head)
            numbers[head] = []
        if num:
            numbers[head].append(int(num))
    return ", ".join(f"{h} {ranges(numbers[h])}" if numbers[h] else h for h in sorted(order))


def stage_rank_volume(trace: Any) -> pd.DataFrame:
    """Per rank: its stage, mesh coordinate, and the items and bytes it writes after dedup."""
    trace = _trace(trace)
    kept = _kept_with_stage(trace)
    W = int(trace.scenario.world_size)
    ranks = kept["rank"].to_numpy(dtype=np.int64)
    nbytes = np.bincount(ranks, weights=kept["nbytes"].to_numpy(dtype=np.float64), minlength=W)[:W]
    return pd.DataFrame(
        {
            "rank": np.arange(W, dtype=np.int64),
            "stage": stage_of_ranks(trace).to_numpy(),
            "coordinate": [trace.scenario.coordinate(r) for r in range(W)],
            "items": np.bincount(ranks, minlength=W)[:W].astype(np.int64),
            "nbytes": nbytes.astype(np.int64),
        }
    )[STAGE_RANK_COLUMNS]


def stage_volume(trace: Any) -> pd.DataFrame:
    """One row per pipeline stage: its ranks, the modules and keys it writes, items and bytes
    written after dedup, bytes planned before dedup, and its share of the save's written bytes.
    The stage ``<NA>`` (one row) when the trace records no mesh dims."""
    items = _written_items(trace)
    stage = stage_of_ranks(trace)
    # One group key per stage, NA included (-1 never is a stage: coordinates are >= 0).
    code = stage.fillna(-1).to_numpy(dtype=np.int64)
    items = items.assign(stage_code=code[items["rank"].to_numpy(dtype=np.int64)])
    kept = items[items["kept"].astype(bool)]
    total = int(kept["nbytes"].sum())
    written = kept.groupby("stage_code", sort=True)
    planned = items.groupby("stage_code", sort=True)["nbytes"].sum()
    nbytes, count, keys = written["nbytes"].sum(), written.size(), written["fqn"].nunique()
    fqns = {c: pd.unique(g) for c, g in written["fqn"]}
    rows = []
    for c, members in pd.Series(stage.index, index=stage.index).groupby(code, sort=True):
        c = int(c)
        n = int(nbytes.get(c, 0))
        rows.append(
            {
                "stage": pd.NA if c < 0 else c,
                "ranks": tuple(int(r) for r in members),
                "n_ranks": len(members),
                "modules": modules_label(fqns.get(c, ())),
                "keys": int(keys.get(c, 0)),
                "items": int(count.get(c, 0)),
                "nbytes": n,
                "planned_nbytes": int(planned.get(c, 0)),
                "share": n / total if total else 0.0,
            }
        )
    frame = pd.DataFrame(rows, columns=STAGE_VOLUME_COLUMNS)
    frame["stage"] = frame["stage"].astype("Int64")
    return frame


def expert_volume(trace: Any) -> pd.DataFrame:
    """One row per (stage, expert shard): the experts a chunk of the grouped 3-D expert tensors
    covers ('experts 0-1', start, stop exclusive), the ranks that write it, its keys, items and
    bytes after dedup, and its share of all expert bytes written. Empty when the save has no
    grouped experts."""
    kept = _kept_with_stage(trace)
    # Decided once per key (a key has one global size), not once per item.
    per_key = kept.drop_duplicates("fqn")
    experts = {
        f for f, g in zip(per_key["fqn"], per_key["global_size"]) if is_grouped_expert(f, tuple(g))
    }
    ex = kept[kept["fqn"].isin(experts)]
    if ex.empty:
        return pd.DataFrame(columns=EXPERT_VOLUME_COLUMNS)
    ex = ex.assign(
        expert_start=[int(o[0]) for o in ex["offsets"]],
        expert_stop=[int(o[0]) + int(s[0]) for o, s in zip(ex["offsets"], ex["sizes"])],
    )
    total = int(ex["nbytes"].sum())
    rows = []
    for (st, start, stop), grp in ex.groupby(
        ["stage", "expert_start", "expert_stop"], dropna=False, sort=True
    ):
        nbytes = int(grp["nbytes"].sum())
        rows.append(
            {
                "stage": st,
                "experts": f"experts {start}"
                if stop - start == 1
                else f"experts {start}-{stop - 1}",
                "expert_start": int(start),
                "expert_stop": int(stop),
                "ranks": tuple(sorted(int(r) for r in pd.unique(grp["rank"]))),
                "keys": int(grp["fqn"].nunique()),
                "items": len(grp),
                "nbytes": nbytes,
                "share": nbytes / total if total else 0.0,
            }
        )
    frame = pd.DataFrame(rows, columns=EXPERT_VOLUME_COLUMNS)
    frame["stage"] = frame["stage"].astype("Int64")
    return frame


def stage_label(stage: Any) -> str:
    """'stage 1', or 'stage unknown' for <NA>."""
    return "stage unknown" if pd.isna(stage) else f"stage {int(stage)}"


def stage_summary(frame: pd.DataFrame) -> str:
    """One line per stage: 'stage 0 (ranks 0-3): layers 0-1, tok_embeddings · 1.9 MB (50%)'."""
    return "\n".join(
        f"{stage_label(r.stage)} (ranks {ranges(r.ranks)}): {r.modules} · {fmt_bytes(r.nbytes)} ({r.share:.0%})"
        for r in frame.itertuples()
    )


def ep_expert_keys(trace: Any) -> list[str]:
    """The grouped expert tensors of a save that are sharded over ep on their expert dim (by
    ``analysis.facets.expert_grouping``: the recorded layout, else recipe='torchtitan''s rule),
    in checkpoint order."""
    trace = _trace(trace)
    if trace.metadata is None:
        return []
    layouts = {lay.fqn: lay for lay in trace.layouts}
    return [
        t.fqn
        for t in trace.metadata.tensors
        if is_grouped_expert(t.fqn, tuple(t.size))
        and not expert_grouping(t.fqn, tuple(t.size), layouts.get(t.fqn), trace.scenario)[0]
    ]
