"""Colours, text contrast and number formats shared by every view."""

from __future__ import annotations

import colorsys

from dcpviz.analysis.groups import ranges

# A qualitative palette (D3's ten, then the rest of Light24) for up to 24 ranks; beyond that,
# hues spaced by the golden angle so neighbouring ranks never look alike.
_QUALITATIVE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#FD3216",
    "#00FE35",
    "#6A76FC",
    "#FED4C4",
    "#FE00CE",
    "#0DF9FF",
    "#F6F926",
    "#FF9616",
    "#479B55",
    "#EEA6FB",
    "#DC587D",
    "#D626FF",
    "#6E899C",
    "#00B5F7",
]
UNKNOWN = "#bbbbbb"
EMPTY = "#444444"
FONT = "Inter, Helvetica, Arial, sans-serif"


def rank_color(rank: int, world_size: int) -> str:
    """Rank ``rank``'s colour (grey for unknown, -1)."""
    if rank < 0:
        return UNKNOWN
    if world_size <= len(_QUALITATIVE):
        return _QUALITATIVE[rank % len(_QUALITATIVE)]
    hue = (rank * 0.6180339887) % 1.0
    light = 0.45 + 0.15 * ((rank // 7) % 2)
    r, g, b = colorsys.hls_to_rgb(hue, light, 0.65)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def luminance(hex_color: str) -> float:
    """WCAG relative luminance of '#rrggbb'."""
    h = hex_color.lstrip("#")
    chans = [int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in chans]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def text_color(fill: str) -> str:
    """Black on light tiles, white on dark ones (the contrast-maximising choice)."""
    return "#000000" if luminance(fill) > 0.179 else "#ffffff"


def fmt_span(offset: int, size: int) -> str:
    """'offset:offset+size'."""
    return f"{offset}:{offset + size}"


def fmt_ranks(ranks: tuple[int, ...] | list[int], limit: int = 8) -> str:
    """Ranks as a list, or as ranges when there are more than ``limit``."""
    ranks = list(ranks)
    if len(ranks) <= limit:
        return ",".join(map(str, ranks))

    return ranges(ranks)


def count_colorbar(values, title: str) -> dict:
    """A colour bar for counts: whole-number ticks only (never 0.5 items)."""
    finite = [float(v) for v in values if v == v]
    top = max(finite) if finite else 1.0
    bar = dict(title=title, tickformat=",d")
    if top <= 10:
        bar.update(tick0=0, dtick=1)
    return bar


def base_layout(**kw) -> dict:
    """The plotly layout every view starts from (``kw`` overrides)."""
    layout = dict(
        template="plotly_white",
        # Also spelled out: the explorer's FigureWidget drew the default template's blue-grey
        # plot area although the figure names plotly_white.
        plot_bgcolor="#ffffff",
        paper_bgcolor="#ffffff",
        font=dict(family=FONT, size=12),
        margin=dict(l=60, r=20, t=80, b=50),
        hoverlabel=dict(font=dict(family="Menlo, Consolas, monospace", size=12)),
    )
    layout.update(kw)
    title = layout.get("title")
    if isinstance(title, dict):
        # Titles hang from the top edge, so a long subtitle grows down into the margin and never
        # meets an axis title drawn above the plot (dedup, resharding put the rank axis on top).
        layout["title"] = {
            "x": 0.01,
            "xanchor": "left",
            "yref": "container",
            "y": 1.0,
            "yanchor": "top",
            "pad": {"t": 28},
            **title,
        }
    return layout
