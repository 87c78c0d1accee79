"""torchtitan bench: a llama3-405b save on pp16 x dp_shard128 x tp8 (W=16,384), against DCP's own
coordinator on the very same local plans, with the exactness check, time and peak RSS.

    simulate   wall time of dcpviz.simulate_save (and a gc.collect() of what it leaves), in a
               fresh process; its phases from the trace's timings
    floor      DCP's own DefaultSavePlanner.create_global_plan (dedup, Metadata, validation; no
               dcpviz code active) on the local plans the simulation produced
               (bench_planning.simulate_with_floor)
    ratio      simulate / floor
    exact      that global plan and Metadata equal the simulation's
    peak       peak RSS of the case's process (GB)

    .venv/bin/python bench/bench_titan.py                    # W=16,384 (pp16 x dp_shard128 x tp8)
    .venv/bin/python bench/bench_titan.py --mesh 16,8,8      # a smaller dp_shard (W=1,024)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def run_case(mesh: tuple[int, ...]) -> dict:
    import torch
    from bench_planning import _peak_gb, simulate_with_floor

    import dcpviz

    torch.set_num_threads(1)
    sc = dcpviz.Scenario(
        model="llama3-405b",
        world_size=math.prod(mesh),
        mesh=mesh,
        mesh_dim_names=("pp", "dp_shard", "tp"),
        recipe="torchtitan",
        dtype="bfloat16",
    )
    floors: dict = {}
    res, sim, floor, exact = simulate_with_floor(sc, floors)
    assert res.ok, res.errors
    return {
        "case": f"save: llama3-405b pp{mesh[0]} x dp_shard{mesh[1]} x tp{mesh[2]} (W={sc.world_size:,})",
        "simulate_s": sim,
        "simulate_only_s": floors["simulate_only"],
        "floor_s": floor,
        "floor_gc_paused_s": floors["gc_paused"],
        "ratio": sim / floor,
        "items": sum(len(p.items) for p in res.trace.local_plans),
        "exact": "global plan + Metadata identical" if exact else "DIFFERENT",
        "timings": dict(res.trace.timings),
        "peak_gb": _peak_gb(),
        "notes": list(res.trace.notes),
    }


def main() -> None:
    mesh = (16, 128, 8)
    if "--mesh" in sys.argv:
        mesh = tuple(int(v) for v in sys.argv[sys.argv.index("--mesh") + 1].split(","))
    if "--one" in sys.argv:
        print(json.dumps(run_case(mesh)))
        return
    cmd = [sys.executable, __file__, "--one", "--mesh", ",".join(map(str, mesh))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"FAILED: {proc.stderr.strip().splitlines()[-5:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"{row['case']}: simulate {row['simulate_s']:.1f}s (simulate_save alone {row['simulate_only_s']:.1f}s) "
        f"vs DCP's coordinator {row['floor_s']:.1f}s (GC paused {row['floor_gc_paused_s']:.1f}s): "
        f"ratio {row['ratio']:.2f}; {row['items']:,} write items; exact: {row['exact']}; "
        f"peak RSS {row['peak_gb']:.2f} GB"
    )
    print("    " + ", ".join(f"{k} {v:.1f}s" for k, v in row["timings"].items()))
    for note in row["notes"]:
        print("    note: " + note)


if __name__ == "__main__":
    main()
