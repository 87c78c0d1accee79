"""The 1024-rank load on its own: time and peak memory of simulate_load from a checkpoint directory.

``bench_planning.py load1024`` simulates the TP+FSDP 128x8 save and the loads in one process, so
its peak memory is the save's. Here the save runs in its own process and writes the checkpoint's
``.metadata`` as DCP's FileSystemWriter does (no tensor data); a fresh process then plans the load
of that directory, as ``dcpviz load CKPT`` would for a real job's checkpoint:

  resume   TP+FSDP 128x8 -> the same layout (1024 distinct ranks)
  reshard  TP+FSDP 128x8 -> FSDP 256

Each load reports its time, its phase timings, the process's peak RSS (ru_maxrss: everything the
process ever held, metadata included) and the exactness check of bench_planning (DCP's own
DefaultLoadPlanner on independently built DTensors, full chunk scan, on sampled ranks, equal to
the trace field by field), run after the peak is read.

    .venv/bin/python bench/bench_load1024.py [resume] [reshard] [--dir DIR] [--sample N] [--no-check]
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SAVED = dict(model="llama3-70b", world_size=1024, mesh=(128, 8), recipe="tp+fsdp", dtype="bfloat16")
TARGETS = {
    "resume": (dict(SAVED), "tp+fsdp", (128, 8), ("dp", "tp")),
    "reshard": (
        dict(model="llama3-70b", world_size=256, recipe="fsdp", dtype="bfloat16"),
        "fsdp",
        (256,),
        ("shard",),
    ),
}


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def save_metadata(ckpt: str) -> dict:
    """simulate_save of the 1024-rank job; its Metadata written as DCP's FileSystemWriter.finish does."""
    import dcpviz

    t0 = time.perf_counter()
    res = dcpviz.simulate_save(dcpviz.Scenario(**SAVED), progress=False)
    seconds = time.perf_counter() - t0
    assert res.ok, res.errors
    os.makedirs(ckpt, exist_ok=True)
    with open(os.path.join(ckpt, ".metadata"), "wb") as fh:
        pickle.dump(
            res.metadata, fh
        )  # what DCP writes; dcpviz reads it back with its safe unpickler
    return {"save_s": seconds, "peak_gb": _peak_gb()}


def load(ckpt: str, case: str, sample: int, check: bool) -> dict:
    import torch

    import dcpviz

    torch.set_num_threads(1)
    spec, recipe, mesh, names = TARGETS[case]
    target = dcpviz.Scenario(**spec)
    t0 = time.perf_counter()
    res = dcpviz.simulate_load(ckpt, target, progress=False)
    seconds = time.perf_counter() - t0
    peak = _peak_gb()
    assert res.ok, res.errors
    row = {
        "case": case,
        "simulate_s": seconds,
        "peak_gb": peak,
        "timings": dict(res.trace.timings),
        "reads": len(res.trace.reads),
    }
    if check:
        from bench_planning import _sample, dcp_load_per_rank, same_reads

        ranks = _sample(target.world_size, sample)
        secs, planning, plans = dcp_load_per_rank(res.metadata, recipe, mesh, names, ranks)
        ok, n = same_reads(res, plans)
        row.update(
            exact=f"{ok}/{n} sampled ranks", dcp_sum_s=sum(secs) / len(secs) * target.world_size
        )
    return row


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opt = {
        a.split("=")[0]: (a.split("=", 1)[1] if "=" in a else True)
        for a in sys.argv[1:]
        if a.startswith("--")
    }
    if "--save" in opt:
        print(json.dumps(save_metadata(opt["--save"])))
        return
    if "--load" in opt:
        print(
            json.dumps(
                load(opt["--load"], args[0], int(opt.get("--sample", 8)), "--no-check" not in opt)
            )
        )
        return
    ckpt = opt.get("--dir") or os.path.join(tempfile.gettempdir(), "dcpviz-bench-tpfsdp128x8")
    if not os.path.exists(os.path.join(ckpt, ".metadata")):
        out = subprocess.run(
            [sys.executable, __file__, f"--save={ckpt}"], capture_output=True, text=True, check=True
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"save TP+FSDP 128x8: {row['save_s']:.1f}s, peak {row['peak_gb']:.2f} GB -> {ckpt}/.metadata",
            flush=True,
        )
    extra = [a for a in sys.argv[1:] if a.startswith(("--sample", "--no-check"))]
    for case in args or list(TARGETS):
        proc = subprocess.run(
            [sys.executable, __file__, f"--load={ckpt}", case, *extra],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"{case}: FAILED {proc.stderr.strip().splitlines()[-3:]}", flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        vs = (
            f" vs DCP {row['dcp_sum_s']:.1f}s (extrapolated)  exact: {row['exact']}"
            if "exact" in row
            else ""
        )
        print(
            f"load {case:<8} {row['simulate_s']:6.1f}s{vs}  peak {row['peak_gb']:.2f} GB  reads {row['reads']}",
            flush=True,
        )
        print("    " + ", ".join(f"{k} {v:.1f}s" for k, v in row["timings"].items()), flush=True)


if __name__ == "__main__":
    main()
