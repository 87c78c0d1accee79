"""rank_volume: bytes each rank writes after dedup, with mean, max and imbalance (max ÷ mean);
``facet="stage"``: one panel per pipeline stage (the ranks whose ``pp`` coordinate it is)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dcpviz.analysis.facets import stage_facet, stage_words
from dcpviz.core.errors import DcpvizError
from dcpviz.core.units import fmt_bytes
from dcpviz.views.facets import facet_grid, mark_facet, need_facet, no_facet
from dcpviz.views.inputs import need_result
from dcpviz.views.style import base_layout, rank_color

MODULE_COLORS = [
    "#4c78a8",
    "#f58518",
    "#54a24b",
    "#e45756",
    "#72b7b2",
    "#eeca3b",
    "#b279a2",
    "#ff9da6",
    "#9d755d",
    "#bab0ac",
]
MAX_MODULES = 9  # the rest stack as "other"


def balance(nbytes: pd.Series) -> dict[str, float]:
    """Mean, max, argmax and imbalance (max / mean; 1.0 is perfectly balanced) of per-rank bytes."""
    v = nbytes.astype("float64")
    mean = float(v.mean()) if len(v) else 0.0
    mx = float(v.max()) if len(v) else 0.0
    return {
        "mean": mean,
        "max": mx,
        "argmax": int(v.idxmax()) if len(v) else -1,
        "imbalance": mx / mean if mean > 0 else float("nan"),
    }


THIN = 0.02  # a stacked segment under this share of the tallest bar is too thin to see


def rank_volume_figure(
    volumes: list[tuple[str, pd.DataFrame]],
    *,
    by_module: pd.DataFrame | None = None,
    title: str = "Bytes written per rank (final plans, after dedup)",
    parts: str = "modules",
    module_order: list[str] | None = None,
) -> go.Figure:
    """Bars of ``nbytes`` per rank from one or more ``rank_volume`` frames (side by side), or
    one frame stacked by module (``by_module``: rank, module, nbytes; ``parts`` names what the
    stacks are: 'modules' or 'components'; ``module_order``: the stacks and their order, the
    rest as 'other', instead of the frame's own largest)."""
    fig = go.Figure()
    many = max(len(v) for _, v in volumes) > 64
    if by_module is not None:
        notes = _stacked(fig, volumes[0], by_module, parts, module_order)
    else:
        notes = _side_by_side(fig, volumes, many)
    fig.update_layout(
        **base_layout(
            title=dict(text=f"<b>{title}</b><br><sup>{'<br>'.join(notes)}</sup>", x=0.01),
            height=420 + 16 * max(0, len(notes) - 1),
            legend=dict(orientation="h", y=-0.2),
        )
    )
    fig.update_xaxes(title="rank", type="linear" if many else "category")
    fig.update_yaxes(title="bytes written", tickformat="~s", ticksuffix="B")
    return fig


def _module_pivot(
    vol: pd.DataFrame, by_module: pd.DataFrame, order: list[str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """rank x module bytes (the largest MAX_MODULES modules, or ``order``'s, the rest as
    'other'), and the stacking order."""
    if order is not None:
        keep = [m for m in order if m != "other"]
    else:
        totals = by_module.groupby("module")["nbytes"].sum().sort_values(ascending=False)
        keep = list(totals.index[:MAX_MODULES])
    mod = by_module.assign(
        module=by_module["module"].where(by_module["module"].isin(keep), "other")
    )
    pivot = mod.pivot_table(
        index="rank", columns="module", values="nbytes", aggfunc="sum", fill_value=0
    )
    pivot = pivot.reindex(index=vol["rank"], fill_value=0)
    if order is not None:  # every panel of a facet stacks the same modules, in one order
        pivot = pivot.reindex(columns=list(order), fill_value=0)
        return pivot, list(order)
    return pivot, [*keep, "other"] if "other" in pivot.columns else keep


def _stacked(
    fig: go.Figure,
    volume: tuple[str, pd.DataFrame],
    by_module: pd.DataFrame,
    parts: str,
    order: list[str] | None = None,
) -> list[str]:
    """One stacked bar per rank, a segment per module; the legend gives each module's bytes,
    and the subtitle names the modules too thin to see at this scale."""
    name, vol = volume
    vol, missing = _drawable(vol)
    notes = [f"{name}: {missing}"] if missing else []
    pivot, order = _module_pivot(vol, by_module, order)
    top = float(pivot.sum(axis=1).max()) if len(pivot) else 0.0
    thin = []
    for i, m in enumerate(order):
        total = int(pivot[m].sum())
        if top > 0 and 0 < pivot[m].max() < THIN * top:
            thin.append(f"{m} ({fmt_bytes(total)})")
        fig.add_trace(
            go.Bar(
                x=pivot.index,
                y=pivot[m],
                name=f"{m} · {fmt_bytes(total)}",
                marker_color=MODULE_COLORS[i % len(MODULE_COLORS)],
                marker_line_width=0,
                hovertemplate=f"rank %{{x}}<br>{m}: %{{customdata}}<extra></extra>",
                customdata=[fmt_bytes(v) for v in pivot[m]],
                meta={"module": m},
            )
        )
    fig.update_layout(barmode="stack")
    b = balance(vol["nbytes"])
    notes.append(_note(name, b))
    if thin:
        notes.append(
            f"too thin to see at this scale (hover a bar's top, or see the table): {', '.join(thin)}"
        )
    _mean_line(fig, b["mean"], f"all {parts}")
    return notes


def _side_by_side(fig: go.Figure, volumes: list[tuple[str, pd.DataFrame]], many: bool) -> list[str]:
    """One bar per rank per frame, grouped; a dashed mean line for each."""
    notes = []
    for i, (name, vol) in enumerate(volumes):
        vol, missing = _drawable(vol)
        if missing:
            notes.append(f"{name}: {missing}")
        b = balance(vol["nbytes"])
        colors = (
            [rank_color(int(r), len(vol)) for r in vol["rank"]]
            if len(volumes) == 1 and not many
            else None
        )
        fig.add_trace(
            go.Bar(
                x=vol["rank"],
                y=vol["nbytes"],
                name=name,
                offsetgroup=str(i),
                marker_color=colors if colors else MODULE_COLORS[i % len(MODULE_COLORS)],
                marker_line_width=0,
                customdata=_hover_data(vol),
                hovertemplate=(
                    f"<b>{name}</b><br>rank %{{x}} %{{customdata[2]}}<br>writes %{{customdata[0]}} in "
                    "%{customdata[1]} items<br>planned %{customdata[3]} before dedup<extra></extra>"
                ),
            )
        )
        _mean_line(
            fig, b["mean"], name if len(volumes) > 1 else "", MEAN_DASHES[i % len(MEAN_DASHES)]
        )
        notes.append(_note(name, b))
    fig.update_layout(barmode="group", bargap=0.05 if many else 0.2)
    return notes


def _hover_data(vol: pd.DataFrame) -> np.ndarray:
    """Per bar: bytes, items, mesh coordinate, bytes planned before dedup."""
    return np.stack(
        [
            [fmt_bytes(v) for v in vol["nbytes"]],
            vol["items"].astype(str),
            [str(c) for c in vol.get("coordinate", [""] * len(vol))],
            [fmt_bytes(v) for v in vol.get("planned_nbytes", vol["nbytes"])],
        ],
        axis=-1,
    )


def _drawable(vol: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """``vol`` with numbers in every cell, and a note on what stands in for the missing ones: a
    save whose planning failed has no global plan (its written bytes are unknown, NA), so the
    bars show what each rank planned before dedup; a rank without a plan (its local plan failed)
    shows 0."""
    nbytes = vol["nbytes"]
    if not nbytes.isna().any():
        return vol, ""
    planned = vol["planned_nbytes"] if "planned_nbytes" in vol else pd.Series(0, index=vol.index)
    items = vol["planned_items"] if "planned_items" in vol else pd.Series(0, index=vol.index)
    if nbytes.isna().all():
        note = "no global plan (planning failed): bars are the bytes each rank planned before dedup"
        filled = vol.assign(
            nbytes=planned.fillna(0).astype("int64"), items=items.fillna(0).astype("int64")
        )
    else:
        ranks = [int(r) for r in vol.loc[nbytes.isna(), "rank"]]
        note = f"no final plan for rank(s) {', '.join(map(str, ranks[:8]))}{', ...' if len(ranks) > 8 else ''} (shown as 0)"
        filled = vol.assign(
            nbytes=nbytes.fillna(0).astype("int64"), items=vol["items"].fillna(0).astype("int64")
        )
    return filled, note


def _note(name: str, b: dict[str, float]) -> str:
    return (
        f"{name}: mean {fmt_bytes(b['mean'])}, max {fmt_bytes(b['max'])} (rank {b['argmax']}), "
        f"imbalance {b['imbalance']:.2f}×"
    )


MEAN_DASHES = ["dash", "dot"]


def _mean_line(fig: go.Figure, mean: float, label: str, dash: str = "dash") -> None:
    """A dashed line at the mean, named in the legend (a label on the plot would sit on the bars)."""
    fig.add_hline(y=mean, line_dash=dash, line_color="#333", line_width=1)
    text = f"{label}: mean {fmt_bytes(mean)}" if label else f"mean {fmt_bytes(mean)}"
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="lines",
            line=dict(dash=dash, color="#333", width=1),
            name=text,
            meta={"role": "mean", "mean": mean},
        )
    )


def rank_volume(
    result: Any,
    *,
    by: str | None = None,
    depth: int = 1,
    compare: Any = None,
    names: tuple[str, str] | None = None,
    facet: str | None = None,
) -> go.Figure:
    """Bytes per rank of a save result; ``by="module"`` stacks by module prefix; ``compare=``
    another result draws both side by side (e.g. default dedup vs ``dedup_save_to_lowest_rank``);
    ``facet="stage"`` draws one panel per pipeline stage (none, and the subtitle says why, when
    the trace's mesh has no named ``pp`` dim)."""

    need_result(result, "save", "rank_volume")
    need_facet(facet, "rank_volume")
    if compare is not None:
        need_result(compare, "save", "rank_volume", "compare")
    if by not in (None, "module", "component"):
        raise DcpvizError(f"by={by!r}: use by=None, by='module' or by='component'.")
    if facet == "stage":
        if compare is not None:
            raise DcpvizError(
                "views.rank_volume: compare= draws two saves side by side; facet='stage' one save's "
                "stages. Drop one of them."
            )
        return _by_stage(result, by, depth, names[0] if names else _label(result))
    if compare is None:
        return _one(result, by, depth, names[0] if names else _label(result))
    if by is not None:
        raise DcpvizError(
            f"compare= draws totals side by side; drop by={by!r} to compare two results."
        )
    a, b = names or (_label(result), _label(compare))
    if a == b:
        a, b = f"{a} (1)", f"{b} (2)"
    return rank_volume_figure([(a, result.rank_volume), (b, compare.rank_volume)])


def _one(result: Any, by: str | None, depth: int, label: str) -> go.Figure:
    """One save's bars: totals, or stacked by module or by component."""
    stacked = result.volume_by_module(depth) if by == "module" else None
    if by == "component":  # stacked like modules: model / optim / lr_scheduler / ...
        stacked = result.volume_by_component.rename(columns={"component": "module"})
    return rank_volume_figure(
        [(label, result.rank_volume)],
        by_module=stacked,
        parts="components" if by == "component" else "modules",
    )


def _stacks(result: Any, by: str | None, depth: int) -> pd.DataFrame | None:
    if by == "module":
        return result.volume_by_module(depth)
    if by == "component":
        return result.volume_by_component.rename(columns={"component": "module"})
    return None


def _by_stage(result: Any, by: str | None, depth: int, label: str) -> go.Figure:
    """One panel per pipeline stage, each the figure ``_one`` draws for that stage's ranks;
    a module keeps one colour (and one legend entry) across the panels."""
    facet = stage_facet(result.trace.scenario, "this save")
    if not facet.ok:
        return no_facet(_one(result, by, depth, label), "stage", facet.reason)
    vol, stacked = result.rank_volume, _stacks(result, by, depth)
    parts = "components" if by == "component" else "modules"
    order = []
    if stacked is not None:  # the whole save's module order decides colours and names
        _, order = _module_pivot(vol, stacked)
    panels, totals = [], {}
    for stage, ranks in facet.groups():
        mine = vol[vol["rank"].isin(ranks)].reset_index(drop=True)
        sub = stacked[stacked["rank"].isin(ranks)] if stacked is not None else None
        panel = rank_volume_figure(
            [(label, mine)], by_module=sub, parts=parts, module_order=order or None
        )
        for t in panel.data:  # each panel's mean line: one legend entry for all of them
            if isinstance(t.meta, dict) and t.meta.get("role") == "mean":
                t.name, t.legendgroup = "mean of the stage's ranks", "mean"
        # What the bars show: bytes written, or planned where the save has no global plan.
        drawn, _ = _drawable(mine)
        written = int(drawn["nbytes"].sum())
        totals[stage] = written
        verb = "planned" if mine["nbytes"].isna().all() else "written"
        panels.append((f"{stage_words(stage, ranks)} · {fmt_bytes(written)} {verb}", panel))
    if stacked is not None:
        _recolour(panels, order, stacked)
    n = len(panels)
    wrap = min(n, 4)
    grid = [panels[i : i + wrap] for i in range(0, n, wrap)]
    fig = facet_grid(
        grid,
        column_widths=None,
        shared_yaxes="all",
        panel_height=300,
    )
    filled, missing = _drawable(vol)
    sub = "<br>".join(
        ([f"{label}: {missing}"] if missing else []) + [_note(label, balance(filled["nbytes"]))]
    )
    fig.update_layout(
        **base_layout(
            title=dict(
                text=f"<b>Bytes written per rank, by pipeline stage (after dedup)</b><br><sup>{sub}</sup>",
                x=0.01,
            ),
            legend=dict(orientation="h", y=-0.12),
            margin=dict(l=70, r=20, t=110, b=60),
        )
    )
    return mark_facet(fig, "stage", stages={int(k): v for k, v in totals.items()})


def _recolour(panels: list, order: list[str], stacked: pd.DataFrame) -> None:
    """Each module's segments in one colour and under one name in every panel (a panel alone
    would pick its own largest modules)."""
    totals = (
        stacked.assign(module=stacked["module"].where(stacked["module"].isin(order), "other"))
        .groupby("module")["nbytes"]
        .sum()
    )
    for _, panel in panels:
        for t in panel.data:
            m = (t.meta or {}).get("module") if isinstance(t.meta, dict) else None
            if m is None or m not in order:
                continue
            t.marker.color = MODULE_COLORS[order.index(m) % len(MODULE_COLORS)]
            t.name = f"{m} · {fmt_bytes(int(totals.get(m, 0)))}"
            t.legendgroup = f"module {m}"


def _label(result: Any) -> str:
    opts = dict(result.trace.planner.options)
    if opts.get("dedup_save_to_lowest_rank"):
        return "dedup to lowest rank"
    return result.trace.planner.cls
