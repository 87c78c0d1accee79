"""Pipeline stages and expert shards of a save: what each writes after dedup.

    stage_volume(save)    bytes per rank, one colour (and legend entry) per pipeline stage
    expert_volume(save)   bytes of the grouped 3-D expert tensors per expert shard, by stage

Both draw ``dcpviz.analysis.save.stage_tables`` and nothing else: each trace's ``meta`` holds its
stage and the bytes it stands for, so a test (or a reader) can hold the figure to the table.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from dcpviz.analysis.groups import ranges
from dcpviz.analysis.save.stage_tables import expert_volume as expert_table
from dcpviz.analysis.save.stage_tables import stage_label, stage_rank_volume
from dcpviz.analysis.save.stage_tables import stage_volume as stage_table
from dcpviz.core.errors import DcpvizError
from dcpviz.core.units import fmt_bytes
from dcpviz.views.inputs import need_result
from dcpviz.views.style import base_layout
from dcpviz.views.volume import MODULE_COLORS


def _color(i: int) -> str:
    return MODULE_COLORS[i % len(MODULE_COLORS)]


def stage_volume(result: Any) -> go.Figure:
    """Bytes each rank writes after dedup, grouped by pipeline stage: one bar trace per stage
    (legend: its ranks, modules, bytes and share of the save)."""
    need_result(result, "save", "stage_volume")
    per_rank = stage_rank_volume(result)
    stages = stage_table(result)
    fig = go.Figure()
    many = len(per_rank) > 64
    for i, row in enumerate(stages.itertuples()):
        mine = per_rank[per_rank["rank"].isin(row.ranks)]
        name = (
            f"{stage_label(row.stage)}: {row.modules} · {fmt_bytes(row.nbytes)} ({row.share:.0%})"
        )
        fig.add_trace(
            go.Bar(
                x=mine["rank"],
                y=mine["nbytes"],
                name=name,
                marker_color=_color(i),
                marker_line_width=0,
                customdata=[
                    [fmt_bytes(v), str(c), int(n)]
                    for v, c, n in zip(mine["nbytes"], mine["coordinate"], mine["items"])
                ],
                hovertemplate=(
                    f"<b>{stage_label(row.stage)}</b><br>rank %{{x}} %{{customdata[1]}}<br>writes "
                    "%{customdata[0]} in %{customdata[2]} items<extra></extra>"
                ),
                meta={
                    "stage": None if pd.isna(row.stage) else int(row.stage),
                    "nbytes": int(row.nbytes),
                },
            )
        )
    total = int(stages["nbytes"].sum())
    sub = f"{len(stages)} stage(s), {fmt_bytes(total)} written in all"
    fig.update_layout(
        **base_layout(
            title=dict(
                text=f"<b>Bytes written per rank, by pipeline stage (after dedup)</b><br><sup>{sub}</sup>",
                x=0.01,
            ),
            height=420,
            legend=dict(orientation="h", y=-0.2),
            barmode="group" if not many else "overlay",
            bargap=0.05 if many else 0.2,
        )
    )
    fig.update_xaxes(title="rank", type="linear" if many else "category")
    fig.update_yaxes(title="bytes written", tickformat="~s", ticksuffix="B")
    return fig


def expert_volume(result: Any) -> go.Figure:
    """Bytes of the grouped expert tensors (torchtitan's 3-D ``moe.experts.w1/w2/w3`` and their
    optimizer state) per expert shard, one bar trace per pipeline stage; DcpvizError when the
    save has none."""
    need_result(result, "save", "expert_volume")
    table = expert_table(result)
    if table.empty:
        raise DcpvizError(
            "views.expert_volume: this save has no grouped expert tensors (3-D tensors under a module named "
            "'experts', as torchtitan's GroupedExperts holds them). Use a MoE model (e.g. model='moe-tiny')."
        )
    fig = go.Figure()
    order = table.sort_values(["expert_start", "expert_stop"])["experts"].drop_duplicates().tolist()
    for i, (stage, grp) in enumerate(table.groupby("stage", dropna=False, sort=True)):
        fig.add_trace(
            go.Bar(
                x=grp["experts"],
                y=grp["nbytes"],
                name=stage_label(stage),
                marker_color=_color(i),
                marker_line_width=0,
                customdata=[
                    [fmt_bytes(v), ranges(r), int(k), f"{s:.0%}"]
                    for v, r, k, s in zip(grp["nbytes"], grp["ranks"], grp["keys"], grp["share"])
                ],
                hovertemplate=(
                    f"<b>{stage_label(stage)}</b> · %{{x}}<br>%{{customdata[0]}} (%{{customdata[3]}} of "
                    "expert bytes)<br>ranks %{customdata[1]}, %{customdata[2]} keys<extra></extra>"
                ),
                meta={
                    "stage": None if pd.isna(stage) else int(stage),
                    "nbytes": int(grp["nbytes"].sum()),
                },
            )
        )
    total = int(table["nbytes"].sum())
    fig.update_layout(
        **base_layout(
            title=dict(
                text=(
                    "<b>Expert bytes written per expert shard, by pipeline stage</b><br>"
                    f"<sup>{fmt_bytes(total)} of grouped expert tensors in {len(order)} shard(s)</sup>"
                ),
                x=0.01,
            ),
            height=400,
            legend=dict(orientation="h", y=-0.2),
            barmode="group",
        )
    )
    fig.update_xaxes(
        title="expert shard", type="category", categoryorder="array", categoryarray=order
    )
    fig.update_yaxes(title="bytes written", tickformat="~s", ticksuffix="B")
    return fig
