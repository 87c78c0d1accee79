"""`dcpviz diff --values` on two ~2 GB checkpoints saved on different layouts, against the
physical limit: raw sequential reads of the same files (`cat` to /dev/null), in the same run.

The checkpoints are written by real ``dcp.save`` on gloo process groups: the same tensors,
row-sharded over 8 ranks (A) and over 6 ranks (B), so nearly every chunk of A overlaps two of B.
Values are a function of the global element index, so the two are equal and every byte of both
is read and compared. The diff runs in a fresh process that reports its own peak RSS, next to
its RSS after imports (the constant) and the largest chunk.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_diff.py [--gb 2] [--dir /tmp] [--keep]

Prints a markdown table (for bench/RESULTS.md). The checkpoints are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS, COLS = 8192, 4096  # one float32 tensor: 128 MiB


def _worker(rank: int, world: int, port: int, path: str, n_tensors: int) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    step = -(-ROWS // world)  # torch.chunk's split: ceil, the last one shorter
    r0, r1 = min(rank * step, ROWS), min((rank + 1) * step, ROWS)
    sd = {}
    for t in range(n_tensors):
        local = (
            (torch.arange(r0 * COLS, r1 * COLS, dtype=torch.int64) % 65521)
            .to(torch.float32)
            .mul_(1e-3)
            .add_(t)
        )
        sd[f"layers.{t}.weight"] = DTensor.from_local(
            local.reshape(r1 - r0, COLS),
            mesh,
            [Shard(0)],
            shape=torch.Size((ROWS, COLS)),
            stride=(COLS, 1),
        )
    dcp.save(sd, checkpoint_id=path)
    dist.barrier()
    dist.destroy_process_group()


def make(path: Path, world: int, n_tensors: int, port: int) -> float:
    import torch.multiprocessing as mp

    t0 = time.perf_counter()
    mp.start_processes(
        _worker, args=(world, port, str(path), n_tensors), nprocs=world, start_method="spawn"
    )
    return time.perf_counter() - t0


def cat_seconds(dirs: list[Path]) -> tuple[float, int]:
    files = sorted(str(p) for d in dirs for p in d.iterdir() if p.is_file())
    nbytes = sum(os.path.getsize(f) for f in files)
    t0 = time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0, nbytes


_DIFF = """
import json, resource, sys, time
import dcpviz, dcpviz.api, dcpviz.engine.diff.values
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
r = dcpviz.diff(sys.argv[1], sys.argv[2], values=True)
s = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
v = r.values
print(json.dumps({"seconds": s, "base_kb": base, "peak_kb": peak, "exit": r.exit_code,
                  "compared": int(v["compared"].sum()), "elements": int(v["elements"].sum()),
                  "regions": len(r.regions)}))
"""


def diff_run(a: Path, b: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", _DIFF, str(a), str(b)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0, help="size of each checkpoint (GiB)")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints (prints where)")
    ap.add_argument(
        "--existing", help="a folder a --keep run left (a_8ranks, b_6ranks): skip the saves"
    )
    args = ap.parse_args()
    n_tensors = max(1, round(args.gb * 1024 / (ROWS * COLS * 4 / 2**20)))
    root = Path(args.existing or tempfile.mkdtemp(prefix="dcpviz_bench_diff_", dir=args.dir))
    try:
        a, b = root / "a_8ranks", root / "b_6ranks"
        made_a = made_b = 0.0
        if not args.existing:
            made_a = make(a, 8, n_tensors, 29611)
            made_b = make(b, 6, n_tensors, 29612)
        largest = -(-ROWS // 6) * COLS * 4
        rows = []
        for attempt in (1, 2):
            cat_s, nbytes = cat_seconds([a, b])
            d = diff_run(a, b)
            assert d["exit"] == 0 and d["compared"] == d["elements"], d
            raw, ours = nbytes / cat_s, nbytes / d["seconds"]
            extra = (d["peak_kb"] - d["base_kb"]) * 1024
            rows.append(
                (
                    attempt,
                    nbytes,
                    cat_s,
                    raw,
                    d["seconds"],
                    ours,
                    ours / raw,
                    d["base_kb"] * 1024,
                    d["peak_kb"] * 1024,
                    extra,
                    largest,
                    d["regions"],
                )
            )
        print(
            f"\n{n_tensors} tensors of {ROWS}x{COLS} float32; A saved on 8 ranks ({made_a:.0f} s), "
            f"B on 6 ranks ({made_b:.0f} s); largest chunk {largest / 2**20:.1f} MiB"
        )
        print(
            "| run | bytes read (A+B) | cat -> /dev/null | diff --values | ratio | peak RSS | RSS after imports "
            "| peak - imports | 2 x largest chunk | regions |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for n, nbytes, cat_s, raw, ds, ours, ratio, base, peak, extra, big, regions in rows:
            print(
                f"| {n} | {nbytes / 2**30:.2f} GiB | {cat_s:.2f} s ({raw / 2**30:.2f} GiB/s) | {ds:.2f} s "
                f"({ours / 2**30:.2f} GiB/s) | **{ratio:.2f}** | {peak / 2**20:.0f} MiB | {base / 2**20:.0f} MiB "
                f"| {extra / 2**20:.0f} MiB | {2 * big / 2**20:.0f} MiB | {regions} |"
            )
    finally:
        if args.keep or args.existing:
            print(f"checkpoints kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
