"""Simulate a llama3-70b load at W=256 and show that it needs a tiny fraction of the model's memory.

    python bench/bench_load_memory.py                        # HSDP 2x128 save -> FSDP 256 load
    python bench/bench_load_memory.py --model llama3-8b -W 16 --saved-mesh 2x8

The saved side is simulate_save (all ranks of the saving job), the target side simulate_load with
DCP's DefaultLoadPlanner on every target rank. DCP's set_up_planner would materialise every
rank's shard (``_init_state_dict``); dcpviz hands it storage-less tensors instead, so peak memory
stays far below the model's size.
"""

from __future__ import annotations

import argparse
import math
import resource
import time


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def model_bytes(model: str, dtype: str) -> tuple[int, int]:
    import torch

    from dcpviz.engine.job.models import build_model
    from dcpviz.engine.job.scenario import DTYPES

    m = build_model(model, "meta")
    n = sum(p.numel() for p in m.parameters())
    return n, n * torch.empty((), dtype=DTYPES[dtype]).element_size()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="llama3-70b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument(
        "--saved-mesh", default="2x128", help="HSDP mesh of the saving job (replicate x shard)"
    )
    ap.add_argument(
        "-W", "--world-size", type=int, default=256, help="FSDP world size of the loading job"
    )
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import dcpviz
    from dcpviz.core.units import fmt_bytes as _fmt_bytes

    saved_mesh = tuple(int(d) for d in args.saved_mesh.split("x"))
    n_params, size = model_bytes(args.model, args.dtype)
    rows: list[tuple[str, str, str, str, str, str]] = []
    base = rss_bytes()

    t0 = time.perf_counter()
    save = dcpviz.simulate_save(
        dcpviz.Scenario(
            model=args.model,
            world_size=math.prod(saved_mesh),
            mesh=saved_mesh,
            recipe="hsdp",
            dtype=args.dtype,
        ),
        progress=False,
    )
    t_save = time.perf_counter() - t0
    assert save.ok, save.errors
    n_write = int(save.rank_volume["items"].sum())
    rows.append(
        (
            f"simulate_save hsdp {args.saved_mesh}",
            f"{t_save:.1f} s",
            f"{n_write} writes",
            gib(rss_bytes()),
            gib(peak_rss_bytes()),
            f"{peak_rss_bytes() / size:.4f}",
        )
    )

    t0 = time.perf_counter()
    load = dcpviz.simulate_load(
        save,
        dcpviz.Scenario(
            model=args.model, world_size=args.world_size, recipe="fsdp", dtype=args.dtype
        ),
        progress=False,
    )
    t_load = time.perf_counter() - t0
    assert load.ok, load.errors
    rows.append(
        (
            f"simulate_load fsdp {args.world_size}",
            f"{t_load:.1f} s",
            f"{len(load.trace.reads)} reads",
            gib(rss_bytes()),
            gib(peak_rss_bytes()),
            f"{peak_rss_bytes() / size:.4f}",
        )
    )
    t0 = time.perf_counter()
    ri = load.read_items
    vol = load.rank_volume
    t_tables = time.perf_counter() - t0
    rows.append(
        (
            "tables (read_items, rank_volume)",
            f"{t_tables:.1f} s",
            f"{len(ri)} rows",
            gib(rss_bytes()),
            gib(peak_rss_bytes()),
            f"{peak_rss_bytes() / size:.4f}",
        )
    )

    print(
        f"\n{args.model}: {n_params / 1e9:.2f} B parameters, {gib(size)} in {args.dtype}; "
        f"process RSS before simulating {gib(base)}"
    )
    head = ("phase", "wall", "items", "RSS after", "peak RSS", "peak / model")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    t = dict(load.trace.timings)
    print("\nsimulate_load breakdown: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    nb = vol["nbytes"].astype("int64")
    print(
        f"bytes read: {_fmt_bytes(int(nb.sum()))} in all (model {_fmt_bytes(size)}); per rank "
        f"min {_fmt_bytes(int(nb.min()))}, max {_fmt_bytes(int(nb.max()))}; saved-chunk bytes "
        f"deserialised {_fmt_bytes(int(vol['chunk_nbytes'].astype('int64').sum()))}"
    )
    print(
        f"writers per target rank: min {int(vol['writers'].min())}, max {int(vol['writers'].max())}"
    )


if __name__ == "__main__":
    main()
