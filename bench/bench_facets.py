"""Stage facets of the views beside the plain views, on one job, in one process (issue 22 item 5).

A ``llama3-8b`` save on ``pp8 × dp_shard16 × tp8`` (W=1,024, recipe="torchtitan") and its resume on
``pp4 × dp_shard4 × tp4`` (W=64). Each row times the plain view and the same view with
``facet="stage"`` side by side, the minimum of ``--repeat`` runs each (after one warm-up call,
so plotly's imports are not counted), and checks that the facet's panels add up to what the
plain view draws (the facet is exact, not a sample)::

    python bench/bench_facets.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import time

import dcpviz


def _min_time(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up: imports, cached tables
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    V = dcpviz.views
    save = dcpviz.simulate_save(
        dcpviz.Scenario(
            model="llama3-8b",
            world_size=1024,
            mesh=(8, 16, 8),
            mesh_dim_names=("pp", "dp_shard", "tp"),
            recipe="torchtitan",
        )
    )
    load = dcpviz.simulate_load(
        save,
        dcpviz.Scenario(
            model="llama3-8b",
            world_size=64,
            mesh=(4, 4, 4),
            mesh_dim_names=("pp", "dp_shard", "tp"),
            recipe="torchtitan",
        ),
    )
    print(f"load average {os.getloadavg()[0]:.2f}; min of {args.repeat}")
    print("| view | plain | facet='stage' | ratio | exact |")
    print("|---|---|---|---|---|")
    rows = [
        (
            "rank_volume (W=1,024)",
            lambda: V.rank_volume(save),
            lambda: V.rank_volume(save, facet="stage"),
        ),
        (
            "rank_volume by module",
            lambda: V.rank_volume(save, by="module"),
            lambda: V.rank_volume(save, by="module", facet="stage"),
        ),
        (
            "chunk_layout layers.10.attention.wq.weight",
            lambda: V.chunk_layout(save, "layers.10.attention.wq.weight"),
            lambda: V.chunk_layout(save, "layers.10.attention.wq.weight", facet="stage"),
        ),
        (
            "read_volume (W=64)",
            lambda: V.read_volume(load),
            lambda: V.read_volume(load, facet="stage"),
        ),
        (
            "resharding (64 × 1,024)",
            lambda: V.resharding(load),
            lambda: V.resharding(load, facet="stage"),
        ),
    ]
    for name, plain, faceted in rows:
        tp, p = _min_time(plain, args.repeat)
        tf, f = _min_time(faceted, args.repeat)
        exact = _exact(name, p, f, save, load)
        print(f"| {name} | {tp:.2f} s | {tf:.2f} s | {tf / tp:.2f} | {exact} |")


def _exact(name: str, plain, faceted, save, load) -> str:
    """The facet draws what the plain view draws: the same bytes in all."""
    meta = faceted.layout.meta
    if name.startswith("rank_volume"):
        ok = sum(meta["stages"].values()) == int(save.rank_volume["nbytes"].sum())
    elif name.startswith("read_volume"):
        ok = sum(meta["stages"].values()) == int(load.rank_volume["nbytes"].sum())
    elif name.startswith("resharding"):
        ok = sum(b["nbytes"] for b in meta["blocks"]) == int(load.read_items["nbytes"].sum())
    else:
        ok = set(meta["writer_stage"]) == {
            int(t.meta["writer"]) for t in plain.data if t.meta and "writer" in t.meta
        }
    what = "same writers" if name.startswith("chunk_layout") else "same bytes"
    return what if ok else "**DIFFERS**"


if __name__ == "__main__":
    main()
