"""One short GPU check of the CUDA path: a 1-GPU nccl save (and load) through run_save/run_load.

    PYTHONPATH=. .venv/bin/python bench/gpu_check.py          # ~1 minute on one GPU

Prints what ran (torch, GPU, backend, where the parameters lived), whether the real plans equal
simulate_save's, and whether the bytes DCP recorded equal the files on disk. Exit code 0 when
every check passed, 1 otherwise, 2 when there is no GPU.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def _plans(result, phase: str) -> list:
    return [[result.trace.items[i] for i in p.items] for p in getattr(result.trace, phase)]


def main() -> int:
    import torch

    import dcpviz

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, "
          f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    failures = []
    with tempfile.TemporaryDirectory() as root:
        for recipe in ("fsdp", "replicate"):
            sc = dcpviz.Scenario(model="mlp", world_size=1, recipe=recipe, device="cuda")
            ckpt = Path(root) / recipe
            t0 = time.perf_counter()
            res = dcpviz.run_save(sc, ckpt, timeout=300)
            wall = time.perf_counter() - t0
            info = res.run_info
            print(f"\n[save {recipe}] backend={info and info.backend} device={res.trace.scenario.device} "
                  f"ok={res.ok} wall={wall:.1f}s phases={info and info.phase_times}")
            if not res.ok:
                failures.append(f"save {recipe}: {res.errors}")
                continue
            sim = dcpviz.simulate_save(sc.replace(device="meta"))
            same = all(_plans(res, ph) == _plans(sim, ph) for ph in ("local_plans", "global_plans", "final_plans"))
            disk = {row.file: os.path.getsize(ckpt / row.file) for row in res.files.itertuples()}
            bytes_ok = all(disk[row.file] == row.nbytes for row in res.files.itertuples())
            print(f"  plans == simulate_save: {same}; per-file bytes == os.path.getsize: {bytes_ok}")
            print(f"  files: {dict(zip(res.files.file, res.files.nbytes))}; notes: {res.trace.notes[-1]}")
            if info.backend != "nccl":
                failures.append(f"save {recipe}: backend {info.backend}")
            if not (same and bytes_ok):
                failures.append(f"save {recipe}: plans equal {same}, bytes equal {bytes_ok}")
            run_load = getattr(dcpviz, "run_load", None)
            if run_load is None:
                print("  (this dcpviz has no run_load: load not checked)")
                continue
            t0 = time.perf_counter()
            load = run_load(ckpt, sc, timeout=300)
            print(f"[load {recipe}] ok={load.ok} wall={time.perf_counter() - t0:.1f}s "
                  f"backend={getattr(load, 'run_info', None) and load.run_info.backend} errors={load.errors}")
            if not load.ok:
                failures.append(f"load {recipe}: {load.errors}")
    print("\nGPU CHECK", "PASSED" if not failures else "FAILED: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
