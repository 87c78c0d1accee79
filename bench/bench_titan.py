"""torchtitan bench: a llama3-405b save on pp16 x dp_shard128 x tp8 (W=16,384), against DCP's own
coordinator on the very same local plans, with the exactness check, time and peak RSS.

    simulate   wall time of dcpviz.simulate_save (and a gc.collect() of what it leaves), in a
               fresh process; its phases from the trace's timings
    floor      DCP's own DefaultSavePlanner.create_global_plan (dedup, Metadata, validation; no
               dcpviz code active) on the local plans the simulation produced
               (bench_planning.simulate_with_floor)
    ratio      simulate / floor
    cpu        the same two, and their ratio, in this process's CPU seconds (time.process_time):
               on a shared machine a wall-clock ratio depends on how much of a core each part
               got; the CPU ratio does not (one thread: torch.set_num_threads(1))
    exact      that global plan and Metadata equal the simulation's
    peak       peak RSS of the case's process (GB)
    load       the machine's load average (1, 5, 15 min) when the case ended

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
    cpu = _cpu_clock()
    res, sim, floor, exact = simulate_with_floor(sc, floors)
    cpu.restore()
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
        "cpu_simulate_s": cpu.simulate,
        "cpu_floor_s": cpu.floor,
        "cpu_ratio": cpu.simulate / cpu.floor,
        "load": os.getloadavg(),
        "notes": list(res.trace.notes),
    }


class _cpu_clock:
    """CPU seconds of simulate (simulate_save and the gc.collect after it) and of the floor
    (DCP's first create_global_plan after it, GC on), read from inside simulate_with_floor:
    a spy on ``dcpviz.simulate_save`` starts the clock, and on DefaultSavePlanner's
    create_global_plan the first call after simulate_save returned is the floor."""

    def __init__(self) -> None:
        import time

        from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

        import dcpviz

        self.simulate = self.floor = float("nan")
        self._dcpviz, self._cls = dcpviz, DefaultSavePlanner
        self._sim, self._glob = dcpviz.simulate_save, DefaultSavePlanner.create_global_plan
        state = {"t0": None, "returned": False, "done": False}

        def simulate_save(*a, **k):
            state["t0"] = time.process_time()
            out = self._sim(*a, **k)
            state["returned"] = True
            return out

        def create_global_plan(planner, all_plans):
            if not state["returned"] or state["done"]:  # the simulation's own, or a later one
                return self._glob(planner, all_plans)
            # simulate_with_floor: simulate_save, gc.collect, then the floor
            t_floor = time.process_time()
            self.simulate = t_floor - state["t0"]
            out = self._glob(planner, all_plans)
            self.floor = time.process_time() - t_floor
            state["done"] = True
            return out

        self._state = state
        dcpviz.simulate_save = simulate_save
        DefaultSavePlanner.create_global_plan = create_global_plan

    def restore(self) -> None:
        self._dcpviz.simulate_save = self._sim
        self._cls.create_global_plan = self._glob


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
    print(
        f"    CPU seconds: simulate {row['cpu_simulate_s']:.1f}s vs floor {row['cpu_floor_s']:.1f}s: "
        f"ratio {row['cpu_ratio']:.2f}; load average {', '.join(f'{v:.1f}' for v in row['load'])}"
    )
    print("    " + ", ".join(f"{k} {v:.1f}s" for k, v in row["timings"].items()))
    for note in row["notes"]:
        print("    note: " + note)


if __name__ == "__main__":
    main()
