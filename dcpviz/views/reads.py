"""Load views: what each target rank reads, from whom, and how the bytes move.

read_layout(load, fqn, rank)   the rank's box drawn over the saved chunks it reads from
read_volume(load)              bytes read per target rank, and what DCP deserialises for them
resharding(load)               target rank x writer rank (or file) heatmap of bytes read;
                               facet="stage": one block per (target stage, saved stage)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dcpviz.analysis.facets import Facet, stage_words
from dcpviz.analysis.load import tables as load_tables
from dcpviz.analysis.load.stage_tables import expert_matrix, stage_facets
from dcpviz.core.errors import DcpvizError, did_you_mean
from dcpviz.core.units import fmt_bytes
from dcpviz.views.facets import facet_grid, mark_facet, need_facet, no_facet
from dcpviz.views.geometry import box_height, pick_dims, project, rects_path, set_box_axes
from dcpviz.views.inputs import need_component, need_name, need_rank, need_result
from dcpviz.views.style import base_layout, count_colorbar, fmt_span, rank_color, text_color

MAX_LABELS = 300  # beyond this many read boxes, labels go (hover keeps every fact)


def read_layout_figure(
    saved: pd.DataFrame,
    reads: pd.DataFrame,
    wanted: list[tuple],
    fqn: str,
    rank: int,
    saved_size: tuple[int, ...],
    saved_dtype: str,
    target_size: tuple[int, ...] | None,
    target_dtype: str | None,
    saved_world: int,
    dims: tuple[int, int] | None = None,
) -> go.Figure:
    """Saved chunks (faint, by writer) under the boxes ``rank`` reads (solid) and the box it
    holds (black outline). Frames from ``load_tables.saved_boxes`` / ``read_boxes``."""
    if len(saved_size) == 0:  # a scalar: one cell
        saved_size = (1,)
        saved = saved.assign(offsets=[(0,)] * len(saved), sizes=[(1,)] * len(saved))
        reads = reads.assign(offsets=[(0,)] * len(reads), sizes=[(1,)] * len(reads))
        wanted = [((0,), (1,)) for _ in wanted]
    dims = pick_dims(len(saved_size), dims, list(saved["offsets"]))
    W = max(saved_world, int(saved["writer_rank"].max()) + 1 if len(saved) else 1)
    fig = go.Figure()
    _add_boxes(fig, saved, dims, W, "saved")
    fig.add_trace(
        _hover_at_centres(
            dims,
            saved,
            [_saved_hover(row, rank) for row in saved.itertuples(index=False)],
            3,
            "saved-hover",
        )
    )
    _add_boxes(fig, reads, dims, W, "reads")
    if len(reads):
        _add_read_labels(fig, reads, dims, W, rank)
    if wanted:
        _add_wanted(fig, wanted, dims, rank)
    sub = _read_subtitle(saved, reads, rank, (saved_size, saved_dtype), (target_size, target_dtype))
    fig.update_layout(
        **base_layout(
            title=dict(
                text=f"<b>{fqn}</b> — what target rank {rank} reads<br><sup>{sub}</sup>", x=0.01
            ),
            height=box_height(saved_size, *dims),
            margin=dict(l=70, r=20, t=100, b=50),
            legend=dict(title="faint: saved chunks · solid: reads · dashed: held by the rank"),
        )
    )
    set_box_axes(fig, saved_size, *dims)
    return fig


def _rects(frame: pd.DataFrame, dims: tuple[int | None, int]) -> list[tuple]:
    return [project(o, s, *dims) for o, s in zip(frame["offsets"], frame["sizes"])]


def _add_boxes(
    fig: go.Figure, frame: pd.DataFrame, dims: tuple[int | None, int], W: int, role: str
) -> None:
    """One filled path per writer: faint for the saved chunks, solid for the reads."""
    for writer, grp in frame.groupby("writer_rank", sort=True):
        color = rank_color(int(writer), W)
        xs, ys = rects_path(_rects(grp, dims))
        saved = role == "saved"
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                fill="toself",
                fillcolor=color,
                opacity=0.22 if saved else 0.95,
                line=dict(color=color if saved else "white", width=1),
                hoverinfo="skip",
                name=f"saved by rank {writer}" if saved else f"read from rank {writer}'s chunk",
                legendgroup=f"w{writer}",
                meta={"role": role, "writer": int(writer)},
            )
        )


def _centres(frame: pd.DataFrame, dims: tuple[int | None, int]) -> tuple[list[float], list[float]]:
    rects = _rects(frame, dims)
    return [(r[0] + r[1]) / 2 for r in rects], [(r[2] + r[3]) / 2 for r in rects]


def _hover_at_centres(
    dims: tuple[int | None, int], frame: pd.DataFrame, text: list[str], size: int, role: str
) -> go.Scatter:
    """Invisible markers at the boxes' centres that carry their hover text."""
    cx, cy = _centres(frame, dims)
    return go.Scatter(
        x=cx,
        y=cy,
        mode="markers",
        marker=dict(size=size, opacity=0),
        hovertext=text,
        hoverinfo="text",
        showlegend=False,
        meta={"role": role},
    )


def _saved_hover(row: Any, rank: int) -> str:
    spans = " × ".join(fmt_span(o, s) for o, s in zip(row.offsets, row.sizes))
    return (
        f"saved chunk [{spans}]<br>written by rank {row.writer_rank}"
        + (f" in {row.file}" if row.file else "")
        + f"<br>{fmt_bytes(row.nbytes)}"
        + (f"<br>rank {rank} reads {fmt_bytes(row.read_nbytes)} of it" if row.read_by_rank else "")
    )


def _read_hover(r: Any, rank: int) -> str:
    return (
        f"rank {rank} reads [{' × '.join(fmt_span(o, s) for o, s in zip(r.offsets, r.sizes))}]<br>"
        f"from rank {r.writer_rank}'s chunk at {r.saved_offsets}"
        + (f" ({r.file})" if r.file else "")
        + f"<br>{fmt_bytes(r.nbytes)} read; the whole {fmt_bytes(r.chunk_nbytes)} chunk is deserialised"
    )


def _add_read_labels(
    fig: go.Figure, reads: pd.DataFrame, dims: tuple[int | None, int], W: int, rank: int
) -> None:
    """Hover on each read box, and the writer written on it (while there are few enough)."""
    fig.add_trace(
        _hover_at_centres(
            dims,
            reads,
            [_read_hover(r, rank) for r in reads.itertuples(index=False)],
            4,
            "reads-hover",
        )
    )
    if len(reads) > MAX_LABELS:
        return
    cx, cy = _centres(reads, dims)
    fig.add_trace(
        go.Scatter(  # the writer on each read box: no colour lookup past 24 ranks
            x=cx,
            y=cy,
            mode="text",
            text=[f"from {int(r)}" for r in reads["writer_rank"]],
            hoverinfo="skip",
            textfont=dict(
                size=11, color=[text_color(rank_color(int(r), W)) for r in reads["writer_rank"]]
            ),
            showlegend=False,
            meta={"role": "read-labels"},
        )
    )


def _add_wanted(
    fig: go.Figure, wanted: list[tuple], dims: tuple[int | None, int], rank: int
) -> None:
    """The boxes the target rank holds, dashed."""
    xs, ys = rects_path([project(o, s, *dims) for o, s in wanted])
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            line=dict(color="black", width=3, dash="dash"),
            name=f"rank {rank} holds",
            hoverinfo="skip",
            meta={"role": "wanted", "boxes": [list(map(list, b)) for b in wanted]},
        )
    )


def _read_subtitle(
    saved: pd.DataFrame, reads: pd.DataFrame, rank: int, saved_kind: tuple, target_kind: tuple
) -> str:
    """Saved shape and dtype, chunks, what the rank reads; a target shape or dtype that differs."""
    (saved_size, saved_dtype), (target_size, target_dtype) = saved_kind, target_kind
    mismatch = ""
    if target_size is not None and tuple(target_size) != tuple(saved_size):
        mismatch += f" · <b>target shape {'×'.join(map(str, target_size))} ≠ saved</b>"
    if target_dtype is not None and target_dtype != saved_dtype:
        mismatch += f" · <b>target dtype {target_dtype} ≠ saved {saved_dtype}</b>"
    n_writers = reads["writer_rank"].nunique() if len(reads) else 0
    return (
        f"saved shape {'×'.join(map(str, saved_size))} · {saved_dtype} · {len(saved)} saved chunks · target rank "
        f"{rank} reads {fmt_bytes(reads['nbytes'].sum() if len(reads) else 0)} in {len(reads)} reads from "
        f"{n_writers} writer(s){mismatch}"
    )


def read_layout(
    load: Any, fqn: str, rank: int, *, dims: tuple[int, int] | None = None
) -> go.Figure:
    """For one tensor, target rank ``rank``'s box over the saved chunks it reads from."""

    need_result(load, "load", "read_layout", "load")
    need_name(fqn, "read_layout")
    tr = load.trace
    need_rank(rank, tr.scenario.world_size, "read_layout")
    entry = next((t for t in tr.saved.tensors if t.fqn == fqn), None)
    if entry is None:
        raise DcpvizError(
            f"{fqn!r} is not a tensor in the checkpoint.{did_you_mean(fqn, [t.fqn for t in tr.saved.tensors])}"
        )
    mine = load.reads_of(fqn, rank)  # not the whole read_items table
    saved = load_tables.saved_boxes(tr, mine, fqn, rank)
    reads = load_tables.read_boxes(mine, fqn, rank)
    t_size, t_dtype, wanted = load_tables.wanted_boxes(tr, fqn, rank)
    saved_world = tr.saved_scenario.world_size if tr.saved_scenario else 1
    return read_layout_figure(
        saved, reads, wanted, fqn, rank, entry.size, entry.dtype, t_size, t_dtype, saved_world, dims
    )


def read_volume_figure(vol: pd.DataFrame) -> go.Figure:
    """Bytes each target rank reads, the bytes its shards hold, and the saved-chunk bytes DCP's
    FileSystemReader deserialises to serve those reads (it loads whole chunks, then narrows).
    A rank without a plan (the load planning failed: the usual "won't load" case) reads 0, and
    the title says so."""
    unplanned = vol["nbytes"].isna()
    note = ""
    if unplanned.any():
        ranks = [int(r) for r in vol.loc[unplanned, "rank"]]
        note = (
            "no rank has a load plan (planning failed; see load.errors and load.mismatches)"
            if unplanned.all()
            else f"no load plan for rank(s) {', '.join(map(str, ranks[:8]))}{', ...' if len(ranks) > 8 else ''}"
        )
        note = f" · {note}: shown as 0"
        vol = vol.assign(
            **{c: vol[c].fillna(0) for c in ("nbytes", "chunk_nbytes", "wanted_nbytes") if c in vol}
        )
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=vol["rank"],
            y=vol["chunk_nbytes"],
            name="saved chunks deserialised",
            marker_color="#c6dbef",
            hovertemplate="rank %{x}: deserialises %{y:,} bytes of saved chunks<extra></extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            x=vol["rank"],
            y=vol["nbytes"],
            name="bytes read",
            marker_color="#2171b5",
            hovertemplate="rank %{x}: reads %{y:,} bytes<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=vol["rank"],
            y=vol["wanted_nbytes"],
            mode="markers",
            name="bytes its shards hold",
            marker=dict(symbol="line-ew-open", size=18, color="black", line=dict(width=2)),
            hovertemplate="rank %{x}: its shards hold %{y:,} bytes<extra></extra>",
        )
    )
    read = float(vol["nbytes"].astype("float64").sum())
    chunk = float(vol["chunk_nbytes"].astype("float64").sum())
    amp = chunk / read if read else float("nan")
    fig.update_layout(
        **base_layout(
            title=dict(
                text=(
                    f"<b>Bytes read per target rank</b><br><sup>{fmt_bytes(read)} read in all · {fmt_bytes(chunk)} of saved "
                    f"chunks deserialised to serve them ({amp:.2f}× read amplification) · max rank {fmt_bytes(vol['nbytes'].max() if len(vol) else 0)}{note}</sup>"
                ),
                x=0.01,
            ),
            barmode="overlay",
            height=420,
            legend=dict(orientation="h", y=-0.2),
        )
    )
    many = len(vol) > 64
    fig.update_xaxes(title="target rank", type="linear" if many else "category")
    fig.update_yaxes(title="bytes", tickformat="~s", ticksuffix="B")
    return fig


def _component_reads(load: Any, component: str | None, view: str) -> pd.DataFrame | None:
    """The load's reads of one training-state component (None: all of them)."""

    if component is None:
        return None
    reads = load.read_items
    need_component(component, reads["component"], view)
    return reads[reads["component"] == component]


def read_volume(load: Any, *, component: str | None = None, facet: str | None = None) -> go.Figure:
    """Bytes read per target rank (and the saved-chunk bytes deserialised to serve them);
    ``component=`` ("model", "optim", ...) counts one part of a training state;
    ``facet="stage"``: one panel per target pipeline stage."""

    need_result(load, "load", "read_volume", "load")
    need_facet(facet, "read_volume")
    reads = _component_reads(load, component, "read_volume")
    if reads is None:
        vol = load.rank_volume
    else:
        vol = load_tables.rank_volume(load.trace, reads)
        if load.trace.wanted_by_rank:  # what the rank's own shards hold, of this component only
            vol["wanted_nbytes"] = load_tables.wanted_nbytes(load.trace, component)
    if facet == "stage":
        return _read_volume_by_stage(load, vol)
    return read_volume_figure(vol)


def _read_volume_by_stage(load: Any, vol: pd.DataFrame) -> go.Figure:
    """One panel per target stage, each the figure ``read_volume_figure`` draws for its ranks."""
    target, _ = stage_facets(load.trace)
    whole = read_volume_figure(vol)
    if not target.ok:
        return no_facet(whole, "stage", target.reason)
    panels, totals = [], {}
    for stage, ranks in target.groups():
        mine = vol[vol["rank"].isin(ranks)].reset_index(drop=True)
        read = int(pd.to_numeric(mine["nbytes"], errors="coerce").fillna(0).sum())
        totals[stage] = read
        panels.append(
            (f"{stage_words(stage, ranks)} · {fmt_bytes(read)} read", read_volume_figure(mine))
        )
    wrap = min(len(panels), 4)
    fig = facet_grid(
        [panels[i : i + wrap] for i in range(0, len(panels), wrap)], shared_yaxes="all"
    )
    sub = whole.layout.title.text.split("<sup>", 1)[-1].replace("</sup>", "")
    fig.update_layout(
        **base_layout(
            title=dict(
                text=f"<b>Bytes read per target rank, by target pipeline stage</b><br><sup>{sub}</sup>",
                x=0.01,
            ),
            legend=dict(orientation="h", y=-0.15),
            margin=dict(l=70, r=20, t=110, b=60),
        )
    )
    return mark_facet(fig, "stage", stages=totals)


LABELS = {"writer_rank": "saved by rank", "file": "storage file", "expert": "expert"}


def resharding_figure(matrix: pd.DataFrame, by: str, values: str) -> go.Figure:
    """A resharding matrix (target rank x writer rank or file) as a heatmap."""
    z = matrix.to_numpy(dtype="float64")
    z = np.where(z > 0, z, np.nan)
    label = LABELS.get(by, by)
    hover = [
        [
            f"target rank {r}<br>{label} {c}<br>{values}: {fmt_bytes(v) if values != 'reads' else int(v)}"
            if v == v
            else ""
            for c, v in zip(matrix.columns, row)
        ]
        for r, row in zip(matrix.index, z)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(c) for c in matrix.columns],
            y=[str(i) for i in matrix.index],
            text=hover,
            hoverinfo="text",
            colorscale="Blues",
            colorbar=dict(title="bytes")
            if values != "reads"
            else count_colorbar(z.ravel(), "reads"),
            xgap=1 if z.shape[1] <= 64 else 0,
            ygap=1 if z.shape[0] <= 64 else 0,
        )
    )
    fig.update_layout(
        **base_layout(
            title=dict(
                text=(
                    f"<b>Resharding: who reads from whom</b><br><sup>rows: target ranks · columns: {label} · cell: {values} "
                    "read; a diagonal means no resharding</sup>"
                ),
                x=0.01,
            ),
            height=max(360, min(900, 190 + 18 * z.shape[0])),
            margin=dict(l=70, r=20, t=130, b=30),
        )
    )
    # No grid: on a heatmap its lines cross the empty cells and the column labels above them.
    fig.update_xaxes(title=label, type="category", side="top", showgrid=False, zeroline=False)
    fig.update_yaxes(
        title="target rank", type="category", autorange="reversed", showgrid=False, zeroline=False
    )
    return fig


def resharding(
    load: Any,
    *,
    by: str = "writer_rank",
    values: str = "nbytes",
    component: str | None = None,
    facet: str | None = None,
) -> go.Figure:
    """Target rank x writer rank (``by="file"``: x storage file; ``by="expert"``: x expert of the
    grouped expert tensors, which experts each rank reads) heatmap of what is read;
    ``component=`` ("model", "optim", ...) keeps one part of a training state;
    ``facet="stage"``: one block per (target stage, saved stage), rows by the target job's
    ``pp`` coordinate, columns by the saved job's (a side whose stages are not known is not
    split, and the subtitle says why)."""

    need_result(load, "load", "resharding", "load")
    need_facet(facet, "resharding")
    reads = _component_reads(load, component, "resharding")
    if by == "expert":
        matrix = expert_matrix(load.trace, values, load.read_items if reads is None else reads)
    elif reads is None:
        matrix = load.resharding_matrix(by=by, values=values)
    else:
        matrix = load_tables.resharding_matrix(load.trace, by, values, reads)
    if facet == "stage":
        return _resharding_by_stage(load, matrix, by, values)
    return resharding_figure(matrix, by, values)


def _stage_blocks(facet: Facet, present: list[int]) -> list[tuple[int | None, list[int]]]:
    """(stage, its ranks) for a facet; one block of ``present`` when there is none; ranks
    outside the job (-1: writer unknown) in a block of their own, stage None."""
    if not facet.ok:
        return [(None, present)]
    blocks: list[tuple[int | None, list[int]]] = [(s, list(r)) for s, r in facet.groups()]
    stray = [r for r in present if facet.of(r) is None]
    return blocks + ([(None, stray)] if stray else [])


def _block_panel(block: pd.DataFrame, by: str, values: str) -> go.Figure:
    """One block of a faceted resharding matrix: its heatmap alone. The hover is a template over
    the cells (exact counts), not a string per cell: plotly validates and copies every string,
    seconds on a thousand-rank matrix."""
    z = block.to_numpy(dtype="float64")
    unit = "reads" if values == "reads" else "bytes"
    what = {"nbytes": "read", "reads": "", "chunk_nbytes": "of saved chunks deserialised"}[values]
    label = LABELS.get(by, by)
    panel = go.Figure(
        go.Heatmap(
            z=np.where(z > 0, z, np.nan),
            x=[str(c) for c in block.columns],
            y=[str(i) for i in block.index],
            hovertemplate=(
                f"target rank %{{y}}<br>{label} %{{x}}<br>%{{z:,}} {unit} {what}<extra></extra>"
            ),
            hoverongaps=False,
            xgap=1 if z.shape[1] <= 64 else 0,
            ygap=1 if z.shape[0] <= 64 else 0,
        )
    )
    panel.update_xaxes(type="category", showgrid=False, zeroline=False)
    panel.update_yaxes(type="category", autorange="reversed", showgrid=False, zeroline=False)
    return panel


def _resharding_by_stage(load: Any, matrix: pd.DataFrame, by: str, values: str) -> go.Figure:
    """The resharding matrix cut into (target stage, saved stage) blocks on one colour scale."""
    target, saved = stage_facets(load.trace)
    if by != "writer_rank":
        saved = Facet(saved.dim, None, f"the columns are {LABELS.get(by, by)}s, not saved ranks")
    if not target.ok and not saved.ok:
        return no_facet(
            resharding_figure(matrix, by, values), "stage", f"{target.reason}; {saved.reason}"
        )
    rows = _stage_blocks(target, [int(r) for r in matrix.index])
    cols = _stage_blocks(saved, list(matrix.columns))
    top = float(matrix.to_numpy(dtype="float64").max()) if matrix.size else 0.0
    panels, blocks = [], []
    for t, t_ranks in rows:
        line = []
        for s, s_ranks in cols:
            block = matrix.reindex(index=t_ranks, columns=s_ranks, fill_value=0)
            block.columns.name = matrix.columns.name
            total = int(block.to_numpy(dtype="int64").sum())
            amount = fmt_bytes(total) if values != "reads" else f"{total} reads"
            source = stage_words(s) if saved.ok else f"{LABELS.get(by, by).split()[-1]}s"
            title = f"target {stage_words(t) if target.ok else 'ranks'} ← saved {source} · {amount}"
            panel = _block_panel(block, by, values)
            panel.data[0].meta = {"target_stage": t, "saved_stage": s, values: total}
            blocks.append({"target_stage": t, "saved_stage": s, values: total})
            line.append((title, panel))
        panels.append(line)
    fig = facet_grid(
        panels,
        row_heights=[len(r) for _, r in rows],
        column_widths=[max(1, len(c)) for _, c in cols],
        shared_yaxes=False,
        panel_height=max(160, min(420, 18 * max(len(r) for _, r in rows) + 60)),
    )
    colorbar = (
        count_colorbar(matrix.to_numpy(dtype="float64").ravel(), "reads")
        if values == "reads"
        else dict(title="bytes")
    )
    fig.update_traces(coloraxis="coloraxis", showscale=False)
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0, cmax=top or 1, colorbar=colorbar))
    fig.update_xaxes(side="bottom", showgrid=False, zeroline=False)
    fig.update_yaxes(showgrid=False, zeroline=False)
    label = LABELS.get(by, by)
    why = [f.reason for f in (target, saved) if not f.ok]
    sub = (
        f"rows: target ranks{' by target stage' if target.ok else ''} · columns: {label}"
        f"{' by saved stage' if saved.ok else ''} · cell: {values} read"
        + (f"<br>not split: {'; '.join(why)}" if why else "")
    )
    fig.update_layout(
        **base_layout(
            title=dict(
                text=f"<b>Resharding by pipeline stage: who reads from whom</b><br><sup>{sub}</sup>",
                x=0.01,
            ),
            margin=dict(l=70, r=20, t=130 + 16 * len(why), b=40),
        )
    )
    return mark_facet(
        fig,
        "stage",
        "; ".join(why),
        target_facet=target.ok,
        saved_facet=saved.ok,
        blocks=blocks,
    )
