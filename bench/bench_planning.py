"""Planning bench: dcpviz against DCP's own cost, side by side in one process, with an exactness check.

Cases (llama3-70b shapes, bf16, DCP's default planners), each in a fresh process:

  load256     save TP+FSDP 32x8 (W=256), simulate_load into FSDP 256.
              ratio = all of simulate_load / DCP's own DefaultLoadPlanner set_up_planner +
              create_local_plan summed over the 256 ranks: timed on ``--sample`` ranks whose
              DTensors are built without dcpviz (DTensor.from_local on per-rank meshes,
              tests/reference.py), mean x 256 (extrapolated; said so in the output).
              exact = on those ranks, DCP's own ReadItems (full chunk scan, no dcpviz code)
              equal the trace's local plan field by field, order and saved_chunk index included.
  load1024    save TP+FSDP 128x8 (W=1024), simulate_load into the same layout (resume) and into
              FSDP 256 (reshard); the same DCP comparison and exactness check for each.
  save1024tp  simulate_save TP+FSDP 128x8 (W=1024).
  save1024hsdp simulate_save HSDP 8x128 (W=1024).
              floor = DCP's own create_global_plan (dedup, metadata, validation; no dcpviz code
              active) on the very local plans the simulation produced; ratio = simulate / floor.
              simulate includes a gc.collect() after it (simulate_save pauses the cyclic GC;
              what it leaves is collected on its clock, not the floor's); the floor is also
              given with the GC paused as simulate_save pauses it.
              exact = that global plan and Metadata equal the simulation's.

    .venv/bin/python bench/bench_planning.py                 # all cases
    .venv/bin/python bench/bench_planning.py load256 save1024hsdp
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # reference.py: DTensors built without dcpviz

CASES = ["load256", "load1024", "save1024tp", "save1024hsdp"]


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _meta_model():
    import torch

    from dcpviz.engine.job.models import PRESETS

    with torch.device("meta"):
        return PRESETS["llama3-70b"]().to(torch.bfloat16)


def _sample(W: int, n: int) -> list[int]:
    """n ranks to check: the first and last two and the middle always, then a spread of the rest
    (a plain cut of the sorted set would drop the last ranks: the last stage of a pp job)."""
    fixed = sorted({0, 1, W // 3, W // 2, W - 2, W - 1} & set(range(W)))
    spread = [r for r in range(0, W, max(1, W // n)) if r not in fixed]
    return sorted(fixed + spread[: max(0, n - len(fixed))])


def dcp_load_per_rank(
    md, recipe: str, mesh: tuple[int, ...], names: tuple[str, ...], ranks: list[int]
):
    """DCP's own DefaultLoadPlanner on independently built DTensors:
    (set_up_planner + create_local_plan seconds per rank, create_local_plan alone, plans)."""
    from reference import hand_state_dict
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    # dcpviz's fake process group only: set_up_planner asks it for a device.
    from dcpviz.engine.job.world import fake_world

    W = 1
    for d in mesh:
        W *= d
    model = _meta_model()
    seconds, planning, plans = [], [], {}
    for r in ranks:
        sd = hand_state_dict(model, recipe, mesh, names, r, llama=True)
        with fake_world(r, W):
            t0 = time.perf_counter()
            p = DefaultLoadPlanner()
            p.set_up_planner(sd, md, r == 0)
            t1 = time.perf_counter()
            plan = p.create_local_plan()
            seconds.append(time.perf_counter() - t0)
            planning.append(time.perf_counter() - t1)
        plans[r] = plan
        del sd, p
    return seconds, planning, plans


def same_reads(result, plans) -> tuple[int, int]:
    """Ranks whose trace local plan equals DCP's ReadItems, every field, in order."""
    from dcpviz.engine.convert.load import read_record, saved_itemsizes

    sizes = saved_itemsizes(result.metadata)
    tr = result.trace
    ok = 0
    for r, plan in plans.items():
        mine = [tr.reads[i] for i in tr.local_plans[r].items]
        theirs = [read_record(ri, sizes) for ri in plan.items]
        ok += mine == theirs
    return ok, len(plans)


def load_row(label, saved, target, recipe, mesh, names, sample) -> dict:
    import dcpviz

    t0 = time.perf_counter()
    res = dcpviz.simulate_load(saved, target, progress=False)
    sim = time.perf_counter() - t0
    assert res.ok, res.errors
    ranks = _sample(target.world_size, sample)
    secs, planning, plans = dcp_load_per_rank(saved.metadata, recipe, mesh, names, ranks)
    dcp_sum = sum(secs) / len(secs) * target.world_size
    plan_sum = sum(planning) / len(planning) * target.world_size
    ok, n = same_reads(res, plans)
    return {
        "case": label,
        "simulate_s": sim,
        "dcp_sum_s": dcp_sum,
        "dcp_rank_s": sum(secs) / len(secs),
        "ratio": sim / dcp_sum,
        "dcp_plan_only_s": plan_sum,
        "exact": f"{ok}/{n} sampled ranks",
        "timings": dict(res.trace.timings),
        "peak_gb": _peak_gb(),
    }


def run_load256(sample: int) -> list[dict]:
    import dcpviz

    saved = dcpviz.simulate_save(
        dcpviz.Scenario(
            model="llama3-70b", world_size=256, mesh=(32, 8), recipe="tp+fsdp", dtype="bfloat16"
        ),
        progress=False,
    )
    target = dcpviz.Scenario(model="llama3-70b", world_size=256, recipe="fsdp", dtype="bfloat16")
    return [
        load_row(
            "load: TP+FSDP 32x8 -> FSDP 256", saved, target, "fsdp", (256,), ("shard",), sample
        )
    ]


def run_load1024(sample: int) -> list[dict]:
    import dcpviz

    sc = dcpviz.Scenario(
        model="llama3-70b", world_size=1024, mesh=(128, 8), recipe="tp+fsdp", dtype="bfloat16"
    )
    saved = dcpviz.simulate_save(sc, progress=False)
    target = dcpviz.Scenario(model="llama3-70b", world_size=256, recipe="fsdp", dtype="bfloat16")
    return [
        load_row(
            "load: TP+FSDP 128x8 -> same (resume)",
            saved,
            sc,
            "tp+fsdp",
            (128, 8),
            ("dp", "tp"),
            sample,
        ),
        load_row(
            "load: TP+FSDP 128x8 -> FSDP 256", saved, target, "fsdp", (256,), ("shard",), sample
        ),
    ]


def simulate_with_floor(sc, floors: dict | None = None):
    """simulate_save, then DCP's own coordinator (no dcpviz shortcut active) on the very local
    plans it produced: the floor. Returns (result, simulate_s, floor_s, exact).

    simulate_s includes a full ``gc.collect()`` right after simulate_save returns: simulate_save
    pauses Python's cyclic GC while it plans, and collecting what it left (millions of young
    objects) would otherwise fall on whatever runs next, here the floor. The floor then runs as
    DCP runs in any process, GC on. ``floors`` (if given) also gets ``gc_paused``: the same
    floor with the GC paused as simulate_save pauses it, to show how much of the ratio is GC."""
    import gc

    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    import dcpviz
    from dcpviz.engine.job.world import fake_world

    captured: dict = {}
    real = DefaultSavePlanner.create_global_plan

    def capture(self, all_plans):
        out = real(self, all_plans)
        captured["local"], captured["global"] = list(all_plans), out
        return out

    dcpviz.simulate_save  # noqa: B018 - import dcpviz's API (pandas, plotly) before the clock starts
    DefaultSavePlanner.create_global_plan = capture  # bench-only spy, removed below
    try:
        t0 = time.perf_counter()
        res = dcpviz.simulate_save(sc, progress=False)
        only = time.perf_counter() - t0
        gc.collect()
        sim = time.perf_counter() - t0
    finally:
        DefaultSavePlanner.create_global_plan = real
    with fake_world(0, sc.world_size):
        t0 = time.perf_counter()
        floor_plans, floor_md = DefaultSavePlanner().create_global_plan(captured["local"])
        floor = time.perf_counter() - t0
    sim_plans, sim_md = captured["global"]
    exact = floor_md == res.metadata and floor_md == sim_md and floor_plans == sim_plans
    if floors is not None:
        floors["simulate_only"] = only
        del floor_plans, floor_md
        gc.collect()
        gc.disable()
        try:
            with fake_world(0, sc.world_size):
                t0 = time.perf_counter()
                DefaultSavePlanner().create_global_plan(captured["local"])
                floors["gc_paused"] = time.perf_counter() - t0
        finally:
            gc.enable()
    return res, sim, floor, exact


def run_save(label: str, mesh: tuple[int, int], recipe: str) -> list[dict]:
    """simulate_save against DCP's coordinator floor on the same local plans."""
    import dcpviz

    sc = dcpviz.Scenario(
        model="llama3-70b", world_size=mesh[0] * mesh[1], mesh=mesh, recipe=recipe, dtype="bfloat16"
    )
    floors: dict = {}
    res, sim, floor, exact = simulate_with_floor(sc, floors)
    assert res.ok, res.errors
    peak = _peak_gb()
    return [
        {
            "case": label,
            "simulate_s": sim,
            "floor_s": floor,
            "ratio": sim / floor,
            "floor_gc_paused_s": floors["gc_paused"],
            "simulate_only_s": floors["simulate_only"],
            "exact": "global plan + Metadata identical" if exact else "DIFFERENT",
            "timings": dict(res.trace.timings),
            "peak_gb": peak,
        }
    ]


def run_case(name: str, sample: int) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    if name == "load256":
        return run_load256(sample)
    if name == "load1024":
        return run_load1024(sample)
    if name == "save1024tp":
        return run_save("save: TP+FSDP 128x8 (W=1024)", (128, 8), "tp+fsdp")
    if name == "save1024hsdp":
        return run_save("save: HSDP 8x128 (W=1024)", (8, 128), "hsdp")
    raise SystemExit(f"unknown case {name}; one of {CASES}")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    sample = 8
    if "--one" in sys.argv:
        print(json.dumps(run_case(args[0], sample)))
        return
    for name in args or CASES:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", name], capture_output=True, text=True
        )
        if proc.returncode != 0:
            print(f"{name}: FAILED {proc.stderr.strip().splitlines()[-3:]}", flush=True)
            continue
        for row in json.loads(proc.stdout.strip().splitlines()[-1]):
            if "floor_s" in row:
                fig = (
                    f"{row['simulate_s']:7.1f}s (simulate_save alone {row['simulate_only_s']:.1f}s, the rest is "
                    f"gc.collect() of what it and this bench's captured plans leave) vs floor {row['floor_s']:6.1f}s "
                    f"(GC paused: {row['floor_gc_paused_s']:.1f}s, ratio {row['simulate_s'] / row['floor_gc_paused_s']:.2f})"
                )
            else:
                fig = (
                    f"{row['simulate_s']:7.1f}s vs DCP {row['dcp_sum_s']:6.1f}s "
                    f"({row['dcp_rank_s'] * 1000:.0f} ms/rank x W, extrapolated from sampled ranks; "
                    f"create_local_plan alone {row['dcp_plan_only_s']:.1f}s)"
                )
            print(
                f"{row['case']:<40} {fig}  ratio {row['ratio']:.2f}  exact: {row['exact']}  "
                f"peak {row['peak_gb']:.2f} GB",
                flush=True,
            )
            print(
                "    " + ", ".join(f"{k} {v:.1f}s" for k, v in row["timings"].items()), flush=True
            )


if __name__ == "__main__":
    main()
