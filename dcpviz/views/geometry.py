"""Boxes of an N-D tensor drawn on two of its dims: shared by the save and load views."""

from __future__ import annotations

from collections.abc import Iterable

import plotly.graph_objects as go

from dcpviz.core.errors import DcpvizError

Rect = tuple[float, float, float, float]  # col0, col1, row0, row1


def project(
    offsets: tuple[int, ...], sizes: tuple[int, ...], row_dim: int | None, col_dim: int
) -> Rect:
    """A chunk's rectangle on (row_dim, col_dim); 1-D tensors (row_dim None) span rows 0..1."""
    r0 = offsets[row_dim] if row_dim is not None else 0
    rs = sizes[row_dim] if row_dim is not None else 1
    return (offsets[col_dim], offsets[col_dim] + sizes[col_dim], r0, r0 + rs)


def rects_path(rects: Iterable[Rect]) -> tuple[list, list]:
    """One closed path per rectangle, separated by None, for a single filled Scatter trace."""
    xs: list = []
    ys: list = []
    for x0, x1, y0, y1 in rects:
        xs += [x0, x1, x1, x0, x0, None]
        ys += [y0, y0, y1, y1, y0, None]
    return xs, ys


def pick_dims(
    nd: int, dims: tuple[int, int] | None, chunk_offsets: Iterable[tuple[int, ...]]
) -> tuple[int | None, int]:
    """(row_dim, col_dim) to draw; for N-D without ``dims``, the two dims split the most."""

    if nd == 1:
        return None, 0
    if dims is None:
        offsets = list(chunk_offsets)
        split = [len({o[d] for o in offsets}) if offsets else 1 for d in range(nd)]
        a, b = sorted(sorted(range(nd), key=lambda d: (-split[d], d))[:2])
        return a, b
    row, col = dims
    if row == col or not (0 <= row < nd and 0 <= col < nd):
        raise DcpvizError(f"dims={dims} must name two different dims of a {nd}-D tensor.")
    return row, col


MIN_ASPECT = 0.3  # the short side of a drawn box is at least this fraction of the long side


def row_scale(size: tuple[int, ...], row_dim: int | None, col_dim: int) -> float:
    """How many column-units one row is drawn as: 1.0 (true aspect) unless the tensor is so
    thin that the real aspect would draw it as a sliver (a 1000×64 embedding), then stretched
    so its short side is ``MIN_ASPECT`` of its long side."""
    if row_dim is None:
        return 1.0
    n_rows, n_cols = max(size[row_dim], 1), max(size[col_dim], 1)
    low, high = MIN_ASPECT * n_cols / n_rows, n_cols / (MIN_ASPECT * n_rows)
    return min(max(1.0, low), high)


def set_box_axes(
    fig: go.Figure, size: tuple[int, ...], row_dim: int | None, col_dim: int, note: str = ""
) -> None:
    """Axes in elements: a strip for 1-D, the real aspect (rows down) for 2-D and up, stretched
    to a minimum width for thin tensors (the axis title says so)."""
    n_cols = max(size[col_dim], 1)
    pad = n_cols * 0.015
    fig.update_xaxes(
        title=f"dim {col_dim} (elements, 0:{size[col_dim]})",
        range=[-pad, n_cols + pad],
        showgrid=False,
        zeroline=False,
        **_whole(n_cols),
    )
    if row_dim is None:
        fig.update_yaxes(visible=False, range=[-0.1, 1.1])
        return
    n_rows = max(size[row_dim], 1)
    rpad = n_rows * 0.015
    # Row 0 at the top, as in a matrix; the column axis stays below so its title never meets
    # the figure's title. The row axis title is a few short lines, and the figure is tall enough
    # for them: one long line ran up past the plot into the figure's subtitle.
    scale = row_scale(size, row_dim, col_dim)
    lines = [f"dim {row_dim} (elements, 0:{size[row_dim]})"]
    if scale != 1.0:
        lines.append(f"not to scale: 1 row drawn as {scale:.2g} columns")
    if note:
        lines.append(note)
    fig.update_yaxes(
        title="<br>".join(lines),
        range=[n_rows + rpad, -rpad],
        **_whole(n_rows),
        scaleanchor="x",
        scaleratio=scale,
        constrain="domain",
        showgrid=False,
        zeroline=False,
    )
    fig.update_xaxes(constrain="domain")
    fit_axis_title(fig, lines)


def _whole(n: int) -> dict:
    """Ticks on whole elements for a short dim (plotly would put one at 0.5)."""
    return {"dtick": 1, "tick0": 0} if n <= 12 else {}


TITLE_CHAR = 7  # pixels per character of a 12 px axis title (generous: a line never overflows)


def fit_axis_title(fig: go.Figure, lines: list[str]) -> None:
    """Make the plot area at least as tall as the row axis title's longest line, so the title
    (drawn along the axis, centred) stays beside the plot."""
    m = fig.layout.margin
    need = int((m.t or 0) + (m.b or 0) + TITLE_CHAR * max(len(x) for x in lines) + 20)
    if (fig.layout.height or 0) < need:
        fig.update_layout(height=need)


def box_height(size: tuple[int, ...], row_dim: int | None, col_dim: int) -> int:
    """Figure height in pixels for a box drawing: taller for tall tensors, within 260..900."""
    if row_dim is None:
        return 260
    ratio = row_scale(size, row_dim, col_dim) * size[row_dim] / max(size[col_dim], 1)
    return int(min(900, max(340, 160 + 520 * min(ratio, 1.6))))
