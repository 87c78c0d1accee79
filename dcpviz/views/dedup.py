"""dedup: which ranks planned each replicated item and which one the coordinator chose.

Readable for hundreds of items: by default one row per group of alike tensors (layers
collapsed) × rank, counting the items each rank was chosen to write; pass ``fqn=`` to drill
down to that tensor's chunks × candidate ranks, with DCP's reason in hover.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dcpviz.analysis.save import tables
from dcpviz.core.errors import DcpvizError, did_you_mean
from dcpviz.core.units import fmt_bytes
from dcpviz.views.inputs import need_component, need_name, need_result
from dcpviz.views.style import base_layout, count_colorbar, fmt_ranks

STATE_NAMES = {0: "did not plan it", 1: "planned, dropped by dedup", 2: "chosen: writes it"}
STATE_SCALE = [
    [0.0, "#f4f4f4"],
    [0.33, "#f4f4f4"],
    [0.33, "#9ecae1"],
    [0.66, "#9ecae1"],
    [0.66, "#08519c"],
    [1.0, "#08519c"],
]


def dedup_overview_figure(
    dedup_df: pd.DataFrame, groups: pd.DataFrame, world_size: int, max_rows: int = 80
) -> go.Figure:
    """Rows: groups of tensors (from ``tensor_groups``); columns: ranks; cell: items chosen."""
    member_group = {m: g for g, members in zip(groups["group"], groups["members"]) for m in members}
    d = dedup_df.assign(group=dedup_df["fqn"].map(lambda f: member_group.get(f, f)))
    planned = d.explode("candidates").groupby(["group", "candidates"]).size()
    chosen = d.groupby(["group", "chosen_rank"]).agg(
        items=("fqn", "size"), nbytes=("nbytes", "sum")
    )
    order = list(d.groupby("group", sort=False).size().index)[:max_rows]
    z, hover = _overview_cells(order, planned.to_dict(), chosen, world_size)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(world_size)),
            y=order,
            hoverinfo="text",
            text=hover,
            zmin=0,
            colorscale=[[0.0, "#d9e7f5"], [1e-9, "#c6dbef"], [1.0, "#08306b"]],
            colorbar=count_colorbar(z.ravel(), "items<br>chosen"),
            xgap=1 if world_size <= 64 else 0,
            ygap=1,
        )
    )
    fig.update_layout(
        **base_layout(
            title=dict(text=_overview_title(len(dedup_df), d.group.nunique(), max_rows), x=0.01),
            height=max(340, 170 + 22 * len(order)),
            margin=dict(l=60, r=20, t=150, b=30),
        )
    )
    fig.update_xaxes(title="rank", type="linear" if world_size > 64 else "category", side="top")
    fig.update_yaxes(autorange="reversed", title=None)
    return fig


def _overview_cells(
    order: list[str], planned_n: dict, chosen: pd.DataFrame, world_size: int
) -> tuple:
    """(z, hover) of the overview: items chosen per group and rank; 0 where a rank planned
    items of the group and was chosen for none; blank where it planned none. Plain dicts and
    lists: ~10k cells at 1024 ranks."""
    z = np.full((len(order), world_size), np.nan)
    hover = np.empty((len(order), world_size), dtype=object)
    hover[:] = ""
    row_of = {g: i for i, g in enumerate(order)}
    for (g, r), n in planned_n.items():
        if g in row_of and 0 <= int(r) < world_size:
            z[row_of[g], int(r)] = 0
            hover[row_of[g], int(r)] = (
                f"{g}<br>rank {int(r)}: planned {n} replicated item(s), chosen for none"
            )
    for (g, r), items, nbytes in zip(
        chosen.index, chosen["items"].tolist(), chosen["nbytes"].tolist()
    ):
        if g in row_of and 0 <= int(r) < world_size:
            z[row_of[g], int(r)] = items
            hover[row_of[g], int(r)] = (
                f"{g}<br>rank {int(r)}: chosen for {int(items)} of the {planned_n.get((g, r), 0)} replicated "
                f"item(s) it planned<br>writes {fmt_bytes(nbytes)} of them"
            )
    return z, hover


def _overview_title(n_items: int, n_groups: int, max_rows: int) -> str:
    return (
        f"<b>Dedup: who writes each replicated item</b><br><sup>{n_items} items planned by more than "
        f"one rank, in {n_groups} groups; each is written once."
        + (f" Showing the first {max_rows} groups." if n_groups > max_rows else "")
        + "<br>Dark: chosen to write · light: planned, dropped · blank: not planned · "
        "dedup(result, fqn=…) for one tensor</sup>"
    )


def dedup_detail_figure(dedup_df: pd.DataFrame, fqn: str, world_size: int) -> go.Figure:
    """One tensor: its replicated chunks (rows) × ranks; cell = not planned / dropped / chosen."""
    d = dedup_df[dedup_df["fqn"] == fqn]
    ranks = sorted({r for c in d["candidates"] for r in c})
    col = {r: j for j, r in enumerate(ranks)}
    rows = [str(o) for o in d["offsets"]]
    z = np.zeros((len(d), len(ranks)))
    hover = np.empty((len(d), len(ranks)), dtype=object)
    for i, row in enumerate(d.itertuples(index=False)):
        _detail_row(z[i], hover[i], row, fqn, ranks, col)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(r) for r in ranks],
            y=rows,
            zmin=0,
            zmax=2,
            colorscale=STATE_SCALE,
            hoverinfo="text",
            text=hover,
            xgap=2,
            ygap=2,
            colorbar=dict(
                tickvals=[1 / 3, 1, 5 / 3],
                ticktext=[STATE_NAMES[0], STATE_NAMES[1], STATE_NAMES[2]],
                title=None,
            ),
        )
    )
    rule = d["rule"].iloc[0] if len(d) else ""
    fig.update_layout(
        **base_layout(
            title=dict(
                text=f"<b>Dedup of {fqn}</b><br><sup>{len(d)} replicated chunks · rule: {rule} · candidates "
                f"{fmt_ranks(ranks, 16)}</sup>",
                x=0.01,
            ),
            height=max(300, 170 + 26 * len(d)),
            margin=dict(l=60, r=20, t=120, b=30),
        )
    )
    fig.update_xaxes(title="rank", type="category", side="top")
    fig.update_yaxes(title="chunk offsets", autorange="reversed", type="category")
    return fig


def _detail_row(
    z: np.ndarray, hover: np.ndarray, row: Any, fqn: str, ranks: list[int], col: dict[int, int]
) -> None:
    """One replicated chunk's cells: not planned / planned and dropped / chosen, with why."""
    for r in ranks:
        hover[col[r]] = f"{fqn} chunk at {row.offsets}<br>rank {r}: did not plan it"
    for r, tally in zip(row.candidates, row.candidate_planned_bytes):
        state = 2 if r == row.chosen_rank else 1
        z[col[r]] = state
        hover[col[r]] = (
            f"{fqn} chunk at {row.offsets} ({fmt_bytes(row.nbytes)})<br>rank {r}: {STATE_NAMES[state]}<br>"
            f"rank {r}'s planned bytes when DCP decided: {fmt_bytes(tally)}<br>{row.why}"
        )


def dedup(
    result: Any, *, fqn: str | None = None, max_rows: int = 80, component: str | None = None
) -> go.Figure:
    """Dedup decisions of a save result: grouped overview, or one tensor with ``fqn=``;
    ``component=`` ("model", "optim", ...) keeps one part of a training state in the overview."""
    need_result(result, "save", "dedup")
    if fqn is not None:
        need_name(fqn, "dedup")
    W = result.trace.scenario.world_size
    # The overview needs who planned and who writes each item, not the replay's reasons: the
    # choices table is the dedup table's first columns, for a fraction of its time.
    choices = result.dedup_choices
    if fqn is None:
        groups, decisions = result.tensor_groups, choices
        if component is not None:
            need_component(component, groups["component"], "dedup")
            groups = groups[groups["component"] == component]
            decisions = decisions[decisions["fqn"].isin({f for m in groups["members"] for f in m})]
        return dedup_overview_figure(decisions, groups, W, max_rows=max_rows)
    if fqn not in set(choices["fqn"]):
        known = set(result.tensors["fqn"])
        if fqn in known:
            raise DcpvizError(f"{fqn!r} is planned by one rank per chunk: nothing to dedup.")
        raise DcpvizError(f"{fqn!r} is not in this checkpoint.{did_you_mean(fqn, known)}")
    return dedup_detail_figure(tables.dedup(result.trace, fqns={fqn}), fqn, W)
