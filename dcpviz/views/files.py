"""file_layout: which tensors and chunks sit in which file, written by which rank.

One horizontal bar per file; each segment is one item (a tensor chunk or a bytes entry), as long
as its bytes and coloured by the rank that writes it. Takes a SaveResult planned with a storage
writer (its ``file_plan``; consolidation's output files are shown after the shard files), a
checkpoint's CheckpointInfo (DCP or safetensors: its ``storage`` table), or a DataFrame with
``file``, ``fqn``, ``nbytes`` (or ``length``) and ``rank`` columns.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from dcpviz.core.errors import DcpvizError
from dcpviz.core.units import fmt_bytes
from dcpviz.views.style import base_layout, rank_color

MAX_FILES = 64  # beyond this, the largest files only (the table has them all)


def _frame(source: Any) -> tuple[pd.DataFrame, int, str]:
    """(file, fqn, offsets, nbytes, rank, stage) rows, the world size for colours, a title."""
    if isinstance(source, pd.DataFrame):
        df = source
        title = "Items per file"
    elif getattr(source, "kind", None) == "save" and hasattr(source, "file_plan"):
        df = source.file_plan
        if df.empty:
            raise DcpvizError(
                "views.file_layout: this save has no file plan; simulate it with "
                "dcpviz.simulate_save(scenario, storage_writer=...) (FileSystemWriter, "
                "HuggingFaceStorageWriter, ...)."
            )
        return _norm(df), source.trace.scenario.world_size, "What each rank writes into which file"
    elif (
        hasattr(source, "storage")
        and isinstance(getattr(source, "storage", None), pd.DataFrame)
        and not hasattr(source, "trace")
    ):
        df = source.storage
        title = "What each file of the checkpoint holds"
    else:
        raise DcpvizError(
            f"views.file_layout needs a SaveResult with a storage writer, a CheckpointInfo "
            f"(dcpviz.inspect_checkpoint) or a DataFrame, got {type(source).__name__}."
        )
    df = _norm(df)
    return df, int(df["rank"].max()) + 1 if len(df) else 1, title


def _norm(df: pd.DataFrame) -> pd.DataFrame:
    if "nbytes" not in df.columns and "length" in df.columns:
        df = df.rename(columns={"length": "nbytes"})
    need = {"file", "fqn", "nbytes", "rank"}
    if not need <= set(df.columns):
        raise DcpvizError(
            f"views.file_layout: the table needs columns {sorted(need)}, got {list(df.columns)}."
        )
    if "stage" not in df.columns:
        df = df.assign(stage="write")
    if "offsets" not in df.columns:
        df = df.assign(offsets=[()] * len(df))
    return df


def file_layout(source: Any, *, max_files: int = MAX_FILES) -> go.Figure:
    """Stacked bars: one per file, one segment per item, coloured by writer rank (grey: unknown)."""
    df, world, title = _frame(source)
    order = (
        df.assign(_w=(df["stage"] != "write").astype(int))
        .groupby("file", sort=False)
        .agg(_w=("_w", "max"), total=("nbytes", "sum"))
        .reset_index()
        .sort_values(["_w", "file"], kind="stable")
    )
    note = ""
    if len(order) > max_files:
        keep = set(order.nlargest(max_files, "total")["file"])
        order = order[order["file"].isin(keep)]
        note = f" (the {max_files} largest of {df['file'].nunique()} files)"
    files = list(order["file"])
    fig = go.Figure()
    for rank in sorted(df["rank"].unique()):
        part = df[(df["rank"] == rank) & df["file"].isin(files)]
        if part.empty:
            continue
        fig.add_trace(
            go.Bar(
                y=part["file"],
                x=part["nbytes"],
                orientation="h",
                name=f"rank {rank}" if rank >= 0 else "rank unknown",
                marker_color=rank_color(int(rank), world),
                marker_line_width=1,
                marker_line_color="white",
                customdata=[
                    (f, str(tuple(o)), fmt_bytes(int(n)), s)
                    for f, o, n, s in zip(
                        part["fqn"], part["offsets"], part["nbytes"], part["stage"], strict=True
                    )
                ],
                hovertemplate="%{y}<br>%{customdata[0]} at %{customdata[1]}<br>%{customdata[2]} (%{customdata[3]})"
                "<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_layout(
        **base_layout(
            title={"text": title + note},
            barmode="stack",
            height=max(260, 28 * len(files) + 120),
            margin=dict(l=260, r=20, t=80, b=50),
        )
    )
    fig.update_yaxes(categoryorder="array", categoryarray=files[::-1], title=None)
    fig.update_xaxes(title="bytes")
    return fig
