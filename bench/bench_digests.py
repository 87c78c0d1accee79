"""What value digests cost: every byte of every value DCP deduplicates is hashed (xxh3-128).

RecordingSavePlanner (and so run_save) fingerprints, on every rank and at every save, each plain
tensor, each Python value and the local shard of each replicated DTensor, so the checks can tell
whether the copies DCP drops differ. This measures the cost per GB of tensor bytes (one big
tensor, and the same bytes as many small tensors), and of canonicalised Python values.

    .venv/bin/python bench/bench_digests.py              # 1 GiB of tensors
    .venv/bin/python bench/bench_digests.py --gib 0.25   # less memory
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dcpviz.engine.values.digests import value_digest, value_digests_of


def _best(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    nbytes = int(args.gib * (1 << 30))
    gb = nbytes / 1e9
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {nbytes / (1 << 30):.2f} GiB per case"
    )

    big = torch.randn(nbytes // 4)
    best, med = _best(lambda: value_digest(big), args.repeats)
    print(
        f"one float32 tensor     : {best / gb:.3f} s/GB best, {med / gb:.3f} s/GB median ({gb / best:.1f} GB/s)"
    )

    bf16 = torch.randn(nbytes // 2, dtype=torch.bfloat16)
    best, med = _best(lambda: value_digest(bf16), args.repeats)
    print(
        f"one bfloat16 tensor    : {best / gb:.3f} s/GB best, {med / gb:.3f} s/GB median ({gb / best:.1f} GB/s)"
    )

    n = 4096
    small = {f"layers.{i}.w": t for i, t in enumerate(big.chunk(n))}
    best, med = _best(lambda: value_digests_of(small, 0), args.repeats)
    print(
        f"{n} tensors (same bytes): {best / gb:.3f} s/GB best, {med / gb:.3f} s/GB median "
        f"({best / n * 1e6:.1f} us per key)"
    )

    objs = {
        "loader": {
            f"shard{i}": {"pos": i, "seen": {f"f{j}" for j in range(8)}} for i in range(10_000)
        }
    }
    best, med = _best(lambda: value_digest(objs), args.repeats)
    print(
        f"Python values          : 10k nested dicts with sets, {best * 1e3:.1f} ms best, {med * 1e3:.1f} ms median"
    )


if __name__ == "__main__":
    main()
