"""Training-state bench: the llama3-70b HSDP 2x128 save at W=256, model only and with AdamW.

Each row runs in a fresh process. *floor* is DCP's own ``DefaultSavePlanner().create_global_plan``
(dedup, metadata, validation; no dcpviz shortcut active) on the very local plans the simulation
produced, timed after it (as in ``bench_planning.py``); *ratio* = simulate / floor; *exact*: that
global plan and Metadata equal the simulation's.
With AdamW every rank saves ``{"model": ..., "optim": ...}`` from DCP's ``get_state_dict``:
about 3x the items (two moments and a step per parameter); *optim share* is the optimizer's
part of the bytes written. The goal (issue 11): the AdamW ratio stays within the model-only
ratio + 1.

    .venv/bin/python bench/bench_training_state.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

from bench_planning import simulate_with_floor  # run as python bench/bench_training_state.py


def run_case(optimizer: str | None, state: str | None) -> dict:
    """simulate_save against DCP's own coordinator on the very local plans it produced (the
    floor, as in bench_planning.py)."""
    import dcpviz

    sc = dcpviz.Scenario(
        model="llama3-70b",
        world_size=256,
        mesh=(2, 128),
        recipe="hsdp",
        dtype="bfloat16",
        optimizer=optimizer,
        state=state,
    )
    res, simulate, floor, exact = simulate_with_floor(sc)
    timings = dict(res.trace.timings)
    by = res.volume_by_component.groupby("component").nbytes.sum()
    return {
        "optimizer": optimizer or "-",
        "state": state or "-",
        "simulate_s": simulate,
        "floor_s": floor,
        "items": sum(len(p.items) for p in res.trace.local_plans),
        "errors": len(res.errors),
        "exact": exact,
        "optim_share": float(by.drop("model", errors="ignore").sum() / by.sum()),
        "build_s": timings.get("build_state_dicts", 0.0),
        "local_s": timings.get("local_plans", 0.0),
    }


CASES = [(None, None), ("adamw", None)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", nargs=2)
    args = ap.parse_args()
    if args.case:
        opt, state = (None if v == "-" else v for v in args.case)
        print(json.dumps(run_case(opt, state)))
        return
    print(f"# dcpviz training-state bench · {platform.node()} · python {platform.python_version()}")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} · llama3-70b (bf16) HSDP 2x128, W=256, DefaultSavePlanner"
    )
    head = (
        f"{'optimizer':>9} {'items':>8} {'simulate':>9} {'floor':>7} {'ratio':>6} {'build':>7} {'local':>7} "
        f"{'optim share':>11} {'exact':>6}"
    )
    print(head)
    print("-" * len(head))
    for opt, state in CASES:
        proc = subprocess.run(
            [sys.executable, __file__, "--case", opt or "-", state or "-"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"{opt or '-':>9}  FAILED: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{r['optimizer']:>9} {r['items']:>8} {r['simulate_s']:8.1f}s {r['floor_s']:6.2f}s "
            f"{r['simulate_s'] / r['floor_s']:5.1f}x {r['build_s']:6.1f}s {r['local_s']:6.1f}s {r['optim_share']:10.1%} {'yes' if r['exact'] else 'NO':>6}"
        )


if __name__ == "__main__":
    main()
