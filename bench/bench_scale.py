"""Scale bench: simulate a llama3-70b save (and, where available, load) at W in {64, 256, 1024}.

For each case, in a fresh process (so peak RSS is the case's own):
  simulate   wall time of dcpviz.simulate_save
  floor      DCP's own create_global_plan on the very same local plans (timed inside the run)
  ratio      simulate / floor
  items      write items planned (all ranks)
  rss        peak resident memory after the save simulation (GB)
  tables     time to build write_items, dedup, chunks, tensors, tensor_groups
  figures    time to build the explorer's figures (volume, dedup, largest tensor's layout)
  report     time and size of the self-contained HTML report
  resume     simulate_load of the checkpoint into the same layout (peak RSS after it, GB)
  reshard    simulate_load into FSDP over the same W (every rank distinct; W <= 256 unless --full)

    .venv/bin/python bench/bench_scale.py            # the table
    .venv/bin/python bench/bench_scale.py --quick    # W=64 and 256 only
    .venv/bin/python bench/bench_scale.py --full     # also the W=1024 reshard loads (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

CASES = [
    (64, (2, 32), "hsdp"),
    (256, (2, 128), "hsdp"),
    (1024, (8, 128), "hsdp"),
    (64, (8, 8), "tp+fsdp"),
    (256, (32, 8), "tp+fsdp"),
    (1024, (128, 8), "tp+fsdp"),
]


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_case(world: int, mesh: tuple[int, ...], recipe: str, reshard: bool) -> dict:
    import dcpviz
    import dcpviz.views as V

    sc = dcpviz.Scenario(
        model="llama3-70b", world_size=world, mesh=mesh, recipe=recipe, dtype="bfloat16"
    )
    t0 = time.perf_counter()
    res = dcpviz.simulate_save(sc, progress=False)
    simulate = time.perf_counter() - t0
    timings = dict(res.trace.timings)
    out = {
        "W": world,
        "mesh": "x".join(map(str, mesh)),
        "recipe": recipe,
        "simulate_s": simulate,
        "floor_s": timings["global_plan"],
        "items": sum(len(p.items) for p in res.trace.local_plans),
        "errors": len(res.errors),
        "rss_gb": _rss_gb(),
    }
    t0 = time.perf_counter()
    _ = res.write_items, res.dedup, res.chunks, res.tensors, res.tensor_groups
    out["tables_s"] = time.perf_counter() - t0
    largest = res.tensors.sort_values("nbytes").fqn.iloc[-1]
    t0 = time.perf_counter()
    V.rank_volume(res, by="module"), V.dedup(res), V.chunk_layout(res, largest)
    out["figures_s"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = dcpviz.report(res, os.path.join(tmp, "r.html"))
        out["report_s"] = time.perf_counter() - t0
        out["report_mb"] = path.stat().st_size / 2**20
    t0 = time.perf_counter()
    resume = dcpviz.simulate_load(res, sc, progress=False)
    out["resume_s"] = time.perf_counter() - t0
    out["resume_ok"] = resume.ok and not len(resume.mismatches)
    out["resume_rss_gb"] = _rss_gb()
    if reshard:
        target = dcpviz.Scenario(
            model="llama3-70b", world_size=world, recipe="fsdp", dtype="bfloat16"
        )
        t0 = time.perf_counter()
        dcpviz.simulate_load(res, target, progress=False)
        out["reshard_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--case", nargs=4, metavar=("W", "MESH", "RECIPE", "RESHARD"))
    args = ap.parse_args()
    if args.case:
        w, mesh, recipe, reshard = args.case
        print(
            json.dumps(
                run_case(int(w), tuple(int(d) for d in mesh.split("x")), recipe, reshard == "1")
            )
        )
        return
    cases = [c for c in CASES if not args.quick or c[0] <= 256]
    print(
        f"# dcpviz scale bench · {platform.node()} · {os.cpu_count()} cores · python {platform.python_version()}"
    )
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} · llama3-70b (bf16), DefaultSavePlanner; load target: FSDP over the same W"
    )
    head = (
        f"{'W':>5} {'mesh':>7} {'recipe':>8} {'items':>8} {'simulate':>9} {'floor':>7} {'ratio':>6} {'rss GB':>7} "
        f"{'tables':>7} {'figures':>8} {'report':>7} {'MB':>5} {'resume':>7} {'rss GB':>7} {'reshard':>8}"
    )
    print(head)
    print("-" * len(head))
    for w, mesh, recipe in cases:
        reshard = "1" if (w <= 256 or args.full) else "0"
        proc = subprocess.run(
            [sys.executable, __file__, "--case", str(w), "x".join(map(str, mesh)), recipe, reshard],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(
                f"{w:>5} {'x'.join(map(str, mesh)):>7} {recipe:>8}  FAILED: {proc.stderr.strip().splitlines()[-1:]}"
            )
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        reshard_s = f"{r['reshard_s']:7.1f}s" if "reshard_s" in r else "       -"
        print(
            f"{r['W']:>5} {r['mesh']:>7} {r['recipe']:>8} {r['items']:>8} {r['simulate_s']:8.1f}s {r['floor_s']:6.2f}s "
            f"{r['simulate_s'] / r['floor_s']:5.1f}x {r['rss_gb']:7.2f} {r['tables_s']:6.2f}s {r['figures_s']:7.2f}s "
            f"{r['report_s']:6.2f}s {r['report_mb']:5.1f} {r['resume_s']:6.1f}s {r['resume_rss_gb']:7.2f} {reshard_s}"
        )


if __name__ == "__main__":
    main()
