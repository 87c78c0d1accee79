"""chunk_layout: one tensor's global box split into its chunks, coloured by the writing rank.

1-D tensors draw as a strip, 2-D as boxes with the real aspect (axes in elements), N-D as a
projection on two chosen dims (the rest listed in hover), scalars as one tile; empty shards are
drawn as markers at their offset and listed, never skipped. Each tile carries its ranks: the
writer in bold, replicas that planned the same chunk (dropped by dedup) after it.

``facet="stage"`` groups the writers in the legend by pipeline stage (their ``pp`` coordinate);
``facet="expert"``, for a grouped expert tensor sharded over ``ep``, by the experts each rank
holds, with the expert boundaries drawn. Where that is not known, no grouping, and the subtitle
says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from dcpviz.analysis.facets import (
    expert_grouping,
    expert_span,
    experts_words,
    stage_facet,
    stage_words,
)
from dcpviz.core.errors import DcpvizError, did_you_mean
from dcpviz.core.units import fmt_bytes
from dcpviz.views.facets import add_subtitle, mark_facet, need_facet, no_facet
from dcpviz.views.geometry import box_height, pick_dims, project, rects_path, set_box_axes
from dcpviz.views.inputs import need_name, need_result
from dcpviz.views.style import EMPTY, base_layout, fmt_ranks, fmt_span, rank_color, text_color

MAX_LABELS = 300  # beyond this many tiles, labels go (hover keeps every fact)


@dataclass(frozen=True)
class TensorHeader:
    """What a layout figure says about its tensor: size, dtype, kind, chunks."""

    fqn: str
    size: tuple[int, ...]
    dtype: str
    placements: str
    mesh: str
    kind: str = "tensor"


def _coord_text(coords: dict[int, tuple[int, ...]], rank: int) -> str:
    c = coords.get(rank)
    return "" if c is None else f" {c}"


def chunk_layout_figure(
    boxes: pd.DataFrame,
    header: TensorHeader,
    world_size: int,
    coords: dict[int, tuple[int, ...]],
    *,
    dims: tuple[int, int] | None = None,
    highlight_rank: int | None = None,
    groups: dict[int, tuple[str, str, int]] | None = None,
    suffix: dict[int, str] | None = None,
    bounds: tuple[int, ...] = (),
) -> go.Figure:
    """Figure from a ``tables.tensor_boxes`` frame. Pure: no computation beyond layout.
    ``groups``: writer -> (legend group, its title, its place in the legend); ``suffix``: writer -> words after its
    legend name; ``bounds``: positions on dim 0 to draw a boundary at (expert shards)."""
    size = tuple(header.size)
    nd = len(size)
    if header.kind == "bytes" or nd == 0:
        return _single_tile(boxes, header, world_size, coords, highlight_rank)
    row_dim, col_dim = pick_dims(nd, dims, list(boxes["offsets"]))
    tiles, empties = _project_tiles(boxes, row_dim, col_dim)
    fig = go.Figure()
    labels = _TileLabels(coords, world_size, label=len(tiles) <= MAX_LABELS)
    for rect, members in tiles.items():
        labels.add(rect, members)
    _add_tiles(fig, labels.by_writer, tiles, world_size, coords, highlight_rank, groups, suffix)
    fig.add_trace(labels.trace())
    if any(m.dropped_by for members in tiles.values() for m in members):
        _replica_legend(fig)
    if empties:
        _add_empties(fig, empties, coords, row_dim, col_dim)
    _lay_out(fig, header, boxes, empties, (row_dim, col_dim))
    if groups:
        fig.update_layout(legend_traceorder="grouped")
    _add_bounds(fig, bounds, row_dim, col_dim)
    return fig


def _add_bounds(fig: go.Figure, bounds: tuple[int, ...], row_dim: int | None, col_dim: int) -> None:
    """Dotted lines where one expert shard ends and the next begins (dim 0 drawn on an axis)."""
    for b in bounds:
        line = dict(color="black", width=1.5, dash="dot")
        if row_dim == 0:
            fig.add_hline(y=b, line=line)
        elif col_dim == 0:
            fig.add_vline(x=b, line=line)


def _project_tiles(boxes: pd.DataFrame, row_dim: int | None, col_dim: int) -> tuple[dict, list]:
    """Chunks projected on (row_dim, col_dim): chunks that differ only in other dims share a
    tile. Empty shards apart (they have no area to draw)."""
    tiles: dict[tuple[int, int, int, int], list[Any]] = {}
    empties = []
    for b in boxes.itertuples(index=False):
        if b.is_empty:
            empties.append(b)
        else:
            tiles.setdefault(project(b.offsets, b.sizes, row_dim, col_dim), []).append(b)
    return tiles, empties


class _TileLabels:
    """Each tile's centre, label (the writer in bold, dropped replicas after it) and hover."""

    def __init__(self, coords: dict[int, tuple[int, ...]], world_size: int, label: bool) -> None:
        self.coords, self.world_size, self.label = coords, world_size, label
        self.by_writer: dict[int, list] = {}
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.texts: list[str] = []
        self.hovers: list[str] = []
        self.colors: list[str] = []

    def add(self, rect: tuple, members: list[Any]) -> None:
        writers = sorted({m.writer for m in members})
        self.by_writer.setdefault(writers[0], []).append(rect)
        self.xs.append((rect[0] + rect[1]) / 2)
        self.ys.append((rect[2] + rect[3]) / 2)
        dropped = sorted({r for m in members for r in m.dropped_by})
        text = (
            "<b>" + fmt_ranks(writers) + "</b>" + (f"<br>({fmt_ranks(dropped)})" if dropped else "")
        )
        self.texts.append(text if self.label else "")
        self.colors.append(text_color(rank_color(writers[0], self.world_size)))
        lines = [self._hover_line(m) for m in members]
        self.hovers.append(
            "<br>—<br>".join(lines[:6])
            + (f"<br>… {len(lines) - 6} more chunks" if len(lines) > 6 else "")
        )

    def _hover_line(self, m: Any) -> str:
        spans = " × ".join(fmt_span(o, s) for o, s in zip(m.offsets, m.sizes))
        return (
            f"writer: rank {m.writer}{_coord_text(self.coords, m.writer)}<br>"
            f"box [{spans}]<br>offsets {m.offsets} sizes {m.sizes}<br>{fmt_bytes(m.nbytes)}"
            + (
                f"<br>also planned, dropped by dedup: {fmt_ranks(m.dropped_by)}"
                if m.dropped_by
                else ""
            )
        )

    def trace(self) -> go.Scatter:
        return go.Scatter(
            x=self.xs,
            y=self.ys,
            mode="text" if self.label else "markers",
            text=self.texts,
            textfont=dict(color=self.colors, size=11),
            marker=dict(size=2, opacity=0),
            hovertext=self.hovers,
            hoverinfo="text",
            showlegend=False,
            name="chunks",
            meta={"role": "labels"},
        )


def _add_tiles(
    fig: go.Figure,
    by_writer: dict[int, list],
    tiles: dict,
    world_size: int,
    coords: dict[int, tuple[int, ...]],
    highlight_rank: int | None,
    groups: dict[int, tuple[str, str, int]] | None = None,
    suffix: dict[int, str] | None = None,
) -> None:
    """One filled path per writer (its tiles), and a square swatch per writer in the legend
    (grouped by ``groups`` when given)."""
    groups, suffix = groups or {}, suffix or {}
    # Grouped: the legend lists the groups in their order (plotly keeps the first-seen order).
    for writer in sorted(by_writer, key=lambda w: (groups[w][2] if w in groups else 0, w)):
        group, group_title, _ = groups.get(writer, (f"r{writer}", "", 0))
        px, py = rects_path(by_writer[writer])
        color = rank_color(writer, world_size)
        dim = (
            highlight_rank is not None
            and writer != highlight_rank
            and not _touches(tiles, highlight_rank, writer)
        )
        plain = highlight_rank is None or dim
        fig.add_trace(
            go.Scatter(
                x=px,
                y=py,
                mode="lines",
                fill="toself",
                fillcolor=color,
                line=dict(color="white" if plain else "black", width=1 if plain else 3),
                opacity=0.25 if dim else 1.0,
                hoverinfo="skip",
                legendgroup=group,
                showlegend=False,
                name=f"chunks written by rank {writer}",
                meta={"writer": writer, "role": "tiles"},
            )
        )
        if len(by_writer) <= 32:  # a square swatch per writer in the legend
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    marker=dict(symbol="square", size=12, color=color),
                    name=(
                        f"rank {writer}{_coord_text(coords, writer)}{suffix.get(writer, '')}"
                        if writer >= 0
                        else "writer unknown"
                    ),
                    legendgroup=group,
                    legendgrouptitle_text=group_title or None,
                    meta={"writer": writer, "role": "swatch", "group": group},
                )
            )


def _add_empties(
    fig: go.Figure, empties: list, coords: dict, row_dim: int | None, col_dim: int
) -> None:
    """Empty shards as markers at their offsets (never skipped)."""
    fig.add_trace(
        go.Scatter(
            x=[e.offsets[col_dim] for e in empties],
            y=[(e.offsets[row_dim] if row_dim is not None else 0.5) for e in empties],
            mode="markers",
            marker=dict(symbol="x-thin", size=12, line=dict(width=2, color=EMPTY)),
            name="empty shard",
            hoverinfo="text",
            meta={"role": "empty", "writers": [e.writer for e in empties]},
            hovertext=[
                f"empty shard: rank {e.writer}{_coord_text(coords, e.writer)} holds 0 elements<br>"
                f"offsets {e.offsets} sizes {e.sizes}"
                + (f"<br>also planned by {fmt_ranks(e.dropped_by)}" if e.dropped_by else "")
                for e in empties
            ],
        )
    )


LEGEND_ROW = 30  # pixels per legend entry (plotly draws a swatch row about 29 px apart)


def legend_height(fig: go.Figure) -> int:
    """Pixels the legend needs: its title and one row per entry shown."""
    entries = sum(1 for t in fig.data if t.showlegend is not False and t.name)
    return LEGEND_ROW * (entries + 1)


def _lay_out(
    fig: go.Figure,
    header: TensorHeader,
    boxes: pd.DataFrame,
    empties: list,
    dims: tuple[int | None, int],
) -> None:
    """Title (with the empty shards), legend, axes in elements; tall enough for the legend."""
    row_dim, col_dim = dims
    size = tuple(header.size)
    title = _title(header, boxes)
    if empties:
        title += f"<br><sup>empty shards (0 elements): ranks {fmt_ranks(sorted({e.writer for e in empties}), 12)}</sup>"
    margin = dict(l=70, r=20, t=100 + (20 if empties else 0), b=50)
    height = max(box_height(size, row_dim, col_dim), legend_height(fig) + margin["t"] + margin["b"])
    fig.update_layout(
        **base_layout(
            title=dict(text=title, x=0.01, xanchor="left"),
            legend=dict(title="writer (mesh coord)"),
            margin=margin,
            height=height,
        )
    )
    other = [d for d in range(len(size)) if d not in (row_dim, col_dim)]
    set_box_axes(fig, size, row_dim, col_dim, f"dims {other} in hover" if other else "")


REPLICA_LEGEND = "<b>n</b> writes it · (n) = replica dropped by dedup"


def _replica_legend(fig: go.Figure) -> None:
    """A legend line that reads the tile labels: the writer in bold, dropped replicas in parentheses."""
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            marker=dict(size=0, opacity=0),
            name=REPLICA_LEGEND,
            meta={"role": "key"},
        )
    )


def _touches(tiles: dict, rank: int, writer: int) -> bool:
    return any(
        rank in m.planned_by for members in tiles.values() for m in members if m.writer == writer
    )


def _title(header: TensorHeader, boxes: pd.DataFrame) -> str:
    shape = "×".join(map(str, header.size)) or "scalar"
    writers = sorted({int(w) for w in boxes["writer"]}) if len(boxes) else []
    total = int(boxes["nbytes"].sum()) if len(boxes) else 0
    sub = f"shape {shape} · {header.dtype or 'bytes'} · {header.placements}"
    if header.mesh:
        sub += f" on mesh {header.mesh}"
    return (
        f"<b>{header.fqn}</b><br><sup>{sub} · {len(boxes)} chunks written by "
        f"{len(writers)} rank(s) · {fmt_bytes(total)}</sup>"
    )


TILE_WIDTH = 520  # a scalar's or bytes entry's figure: the tile spans the plot, its label fits


def _single_tile(boxes, header, world_size, coords, highlight_rank) -> go.Figure:
    """Scalars and bytes entries: one tile, as wide as the plot, naming the writer and the
    replicas (a square tile clipped a list of seven ranks)."""
    fig = go.Figure()
    b = boxes.iloc[0] if len(boxes) else None
    writer = int(b["writer"]) if b is not None else -1
    color = rank_color(writer, world_size)
    mark = highlight_rank == writer
    fig.add_trace(
        go.Scatter(
            x=[0, 1, 1, 0, 0],
            y=[0, 0, 1, 1, 0],
            mode="lines",
            fill="toself",
            fillcolor=color,
            line=dict(color="black" if mark else "white", width=3 if mark else 1),
            hoverinfo="skip",
            name=f"rank {writer}",
            meta={"writer": writer, "role": "tiles"},
        )
    )
    dropped = tuple(b["dropped_by"]) if b is not None else ()
    label = f"<b>{writer}</b>" + (f"<br>({fmt_ranks(dropped)})" if dropped else "")
    if dropped:
        _replica_legend(fig)
    what = "bytes entry" if header.kind == "bytes" else "scalar (0-d tensor)"
    fig.add_trace(
        go.Scatter(
            x=[0.5],
            y=[0.5],
            mode="text",
            text=[label],
            textfont=dict(color=text_color(color), size=16),
            hovertext=[_tile_hover(what, b, coords, dropped)],
            hoverinfo="text",
            showlegend=False,
            meta={"role": "labels"},
        )
    )
    fig.update_layout(
        **base_layout(
            title=dict(text=_title(header, boxes) + f"<br><sup>{what}</sup>", x=0.01),
            height=320,
            width=TILE_WIDTH,
            margin=dict(l=20, r=20, t=100, b=50),
            legend=dict(orientation="h", yanchor="top", y=-0.02, x=0),
        )
    )
    fig.update_xaxes(visible=False, range=[-0.02, 1.02])
    fig.update_yaxes(visible=False, range=[-0.05, 1.05])
    return fig


def _tile_hover(
    what: str, b: Any, coords: dict[int, tuple[int, ...]], dropped: tuple[int, ...]
) -> str:
    if b is None:
        return what
    writer = int(b["writer"])
    return (
        f"{what}<br>writer: rank {writer}{_coord_text(coords, writer)}<br>{fmt_bytes(b['nbytes'])}"
        + (f"<br>also planned, dropped by dedup: {fmt_ranks(dropped, 16)}" if dropped else "")
    )


def chunk_layout(
    result: Any,
    fqn: str,
    *,
    dims: tuple[int, int] | None = None,
    highlight_rank: int | None = None,
    facet: str | None = None,
) -> go.Figure:
    """The chunk layout of ``fqn`` in a save result (see module docstring); ``facet="stage"``
    groups the writers by pipeline stage, ``facet="expert"`` by the experts they hold."""

    need_result(result, "save", "chunk_layout")
    need_name(fqn, "chunk_layout")
    need_facet(facet, "chunk_layout", ("stage", "expert"))
    tens = result.tensors
    match = tens[tens["fqn"] == fqn]
    if match.empty:
        raise DcpvizError(f"{fqn!r} is not in this checkpoint.{did_you_mean(fqn, tens['fqn'])}")
    row = match.iloc[0]
    header = TensorHeader(
        fqn=fqn,
        size=tuple(row["size"]),
        dtype=row["dtype"],
        placements=row["placements"],
        mesh=row["mesh"],
        kind=row["kind"],
    )
    boxes = result.tensor_boxes(fqn)
    W = result.trace.scenario.world_size
    ranks = {r for planned in boxes["planned_by"] for r in planned}
    coords = {r: result.trace.scenario.coordinate(r) for r in ranks}
    if facet is None:
        return chunk_layout_figure(
            boxes, header, W, coords, dims=dims, highlight_rank=highlight_rank
        )
    if facet == "stage":
        return _by_stage(result, boxes, header, coords, dims, highlight_rank)
    return _by_expert(result, boxes, header, coords, dims, highlight_rank)


def _by_stage(result, boxes, header, coords, dims, highlight_rank) -> go.Figure:
    """Writers grouped by pipeline stage in the legend; the subtitle names the stages."""
    W = result.trace.scenario.world_size
    facet = stage_facet(result.trace.scenario, "this save")
    if not facet.ok:
        fig = chunk_layout_figure(
            boxes, header, W, coords, dims=dims, highlight_rank=highlight_rank
        )
        return no_facet(fig, "stage", facet.reason)
    writers = sorted({int(w) for w in boxes["writer"]})
    by_stage: dict[int | None, list[int]] = {}
    for w in writers:
        by_stage.setdefault(facet.of(w), []).append(w)
    groups = {
        w: (
            f"stage {s}",
            stage_words(s, tuple(ws)).replace("ranks", "writers"),
            -1 if s is None else s,
        )
        for s, ws in by_stage.items()
        for w in ws
    }
    fig = chunk_layout_figure(
        boxes, header, W, coords, dims=dims, highlight_rank=highlight_rank, groups=groups
    )
    words = ", ".join(stage_words(s, tuple(ws)) for s, ws in sorted(by_stage.items(), key=_key))
    add_subtitle(fig, f"written by {words}")
    return mark_facet(fig, "stage", writer_stage={w: facet.of(w) for w in writers})


def _key(item: tuple) -> tuple[int, int]:
    return (1, 0) if item[0] is None else (0, item[0])


def _by_expert(result, boxes, header, coords, dims, highlight_rank) -> go.Figure:
    """Writers grouped by the experts they hold (a grouped expert tensor sharded over ep)."""
    W = result.trace.scenario.world_size
    lay = next((x for x in result.trace.layouts if x.fqn == header.fqn), None)
    why, source = expert_grouping(header.fqn, tuple(header.size), lay, result.trace.scenario)
    if why:
        fig = chunk_layout_figure(
            boxes, header, W, coords, dims=dims, highlight_rank=highlight_rank
        )
        return no_facet(fig, "expert", why)
    held: dict[int, set[tuple[int, int]]] = {}
    for b in boxes.itertuples(index=False):
        if b.is_empty:
            continue
        for r in b.planned_by:  # replicas hold the experts too (dedup only picks the writer)
            held.setdefault(int(r), set()).add(expert_span(b.offsets, b.sizes))
    spans = {r: sorted(v) for r, v in held.items()}
    words = {r: ", ".join(experts_words(a, z) for a, z in v) for r, v in spans.items()}
    groups = {w: (words[w], words[w], spans[w][0][0]) for w in held}
    starts = sorted(
        {a for v in spans.values() for a, _ in v} | {z for v in spans.values() for _, z in v}
    )
    bounds = tuple(p for p in starts if 0 < p < header.size[0])
    fig = chunk_layout_figure(
        boxes,
        header,
        W,
        coords,
        dims=dims,
        highlight_rank=highlight_rank,
        groups=groups,
        suffix={w: f" · {words[w]}" for w in words},
        bounds=bounds,
    )
    n_experts = header.size[0]
    line = f"{n_experts} experts in {len(set(words.values()))} shard(s) over ep"
    add_subtitle(fig, line + (f" ({source})" if source else ""))
    return mark_facet(
        fig, "expert", experts={r: [list(s) for s in v] for r, v in sorted(spans.items())}
    )
