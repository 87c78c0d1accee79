"""What RecordingSavePlanner costs the coordinator.

Part 1, real jobs: W gloo processes on CPU save the same sharded model repeatedly, alternating
DCP's DefaultSavePlanner and RecordingSavePlanner(DefaultSavePlanner()); the coordinator's
dcp.save wall time (median) for each, and the overhead the recording planner measures itself
(building the trace + writing the JSON, plus the coordinator-only set-up work).

Part 2, the coordinator at scale: local plans for W ranks of llama3-8b/70b (the real plans,
from simulate_save, rebuilt as DCP SavePlans with one object per rank as a gather delivers
them), then create_global_plan timed with DefaultSavePlanner alone and wrapped; the trace size.

    .venv/bin/python bench/bench_recording.py            # both parts
    .venv/bin/python bench/bench_recording.py --quick    # smaller part 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REAL_CASES = [
    # model, recipe, world, mesh
    ("mlp", "fsdp", 2, (2,)),
    ("mlp", "hsdp", 4, (2, 2)),
    ("llama-tiny", "tp+fsdp", 4, (2, 2)),
]
SCALE_CASES = [
    ("llama3-8b", "fsdp", 64, (64,)),
    ("llama3-8b", "fsdp", 256, (256,)),
    ("llama3-70b", "hsdp", 1024, (8, 128)),
]


# -- part 1: real processes ------------------------------------------------------------------
def bench_job(rank: int, world: int, report, scenario, root: str, repeats: int) -> dict:
    """Runs in each worker: build the model once, then save it 2 x repeats times."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    from dcpviz import RecordingSavePlanner
    from dcpviz.engine.job.recipes import apply_recipe
    from dcpviz.engine.job.statedict import build_mesh, build_model_on_meta
    from dcpviz.engine.values.materialize import materialize

    model = apply_recipe(scenario.recipe, build_model_on_meta(scenario), build_mesh(scenario))
    materialize(model, torch.device("cpu"))
    sd = model.state_dict()
    plain, rec, overhead = [], [], []
    for i in range(repeats + 1):  # the first round warms up and is dropped
        for kind in ("plain", "rec"):
            planner = (
                DefaultSavePlanner()
                if kind == "plain"
                else RecordingSavePlanner(f"{root}/t{i}.json")
            )
            dist.barrier()
            t0 = time.perf_counter()
            dcp.save(sd, checkpoint_id=f"{root}/{kind}{i}", planner=planner)
            if kind == "rec":
                planner.complete()
            dt = time.perf_counter() - t0
            if i:
                (plain if kind == "plain" else rec).append(dt)
                if kind == "rec" and rank == 0:
                    overhead.append(planner._overhead)
    return {"plain": plain, "rec": rec, "overhead": overhead}


def part1(repeats: int) -> None:
    import dcpviz
    from dcpviz.engine.run.procs import launch

    print(
        f"Part 1: real gloo jobs on CPU, coordinator's dcp.save wall time, median of {repeats} "
        f"(machine: {os.cpu_count()} CPUs)"
    )
    print(
        f"{'model':<11}{'recipe':<9}{'W':>3}{'plain ms':>10}{'recorded ms':>13}{'diff ms':>9}"
        f"{'self-measured ms':>18}"
    )
    for model, recipe, world, mesh in REAL_CASES:
        sc = dcpviz.Scenario(model=model, world_size=world, mesh=mesh, recipe=recipe, device="cpu")
        with tempfile.TemporaryDirectory() as root:
            out = launch(
                bench_job, world, (sc, root, repeats), backend="gloo", device="cpu", timeout=600
            )
        if not out.ok:
            print(model, recipe, "failed:", [str(e) for e in out.errors])
            continue
        c = out.payloads[0]
        plain, rec = statistics.median(c["plain"]) * 1e3, statistics.median(c["rec"]) * 1e3
        own = statistics.median(c["overhead"]) * 1e3
        print(
            f"{model:<11}{recipe:<9}{world:>3}{plain:>10.1f}{rec:>13.1f}{rec - plain:>9.1f}{own:>18.2f}"
        )


# -- part 2: the coordinator alone at scale ------------------------------------------------------
def _plans_from(result):
    """The simulated local plans as DCP SavePlans, one distinct object per rank and item."""
    import torch
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        MetadataIndex,
        TensorProperties,
    )
    from torch.distributed.checkpoint.planner import (
        SavePlan,
        TensorWriteData,
        WriteItem,
        WriteItemType,
    )

    t = result.trace
    plans = []
    for rec in t.local_plans:
        items = []
        for i in rec.items:
            it = t.items[i]
            if it.item_type == "BYTE_IO":
                items.append(WriteItem(index=MetadataIndex(it.fqn), type=WriteItemType.BYTE_IO))
                continue
            items.append(
                WriteItem(
                    index=MetadataIndex(it.fqn, torch.Size(it.offsets)),
                    type=WriteItemType[it.item_type],
                    tensor_data=TensorWriteData(
                        chunk=ChunkStorageMetadata(torch.Size(it.offsets), torch.Size(it.sizes)),
                        properties=TensorProperties(dtype=getattr(torch, it.dtype)),
                        size=torch.Size(it.global_size),
                    ),
                )
            )
        plans.append(SavePlan(items, planner_data={}))
    return plans


def _carrying(plans, result):
    """The plans as recording planners send them: each rank's value digests and DTensor layouts
    riding in its planner_data (the simulation's digests of rank 0 and its layouts, as every
    rank of these SPMD jobs holds; the layouts unpickled once per rank, as a gather delivers)."""
    import dataclasses
    import pickle

    from dcpviz.engine.capture.save import CarriedPlannerData

    own = tuple(d for d in result.trace.value_digests if d.rank == 0)
    rows = pickle.dumps(
        tuple((x.fqn, x.placements, x.mesh_dim_names, x.mesh_shape) for x in result.trace.layouts)
    )
    return [
        dataclasses.replace(
            p,
            planner_data=CarriedPlannerData(
                p.planner_data,
                tuple(dataclasses.replace(d, rank=r) for d in own),
                pickle.loads(rows),
            ),
        )
        for r, p in enumerate(plans)
    ]


def part2(cases, repeats: int = 3) -> None:
    import copy

    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    import dcpviz
    from dcpviz.engine.capture.save import RecordingSavePlanner
    from dcpviz.engine.job.world import fake_world

    print(
        f"\nPart 2: the coordinator's create_global_plan on real-size local plans (one process, best of {repeats})"
    )
    print(
        f"{'model':<11}{'recipe':<7}{'W':>6}{'items':>9}{'DCP s':>8}{'recorded s':>12}{'overhead s':>12}"
        f"{'trace MB':>10}"
    )
    for model, recipe, world, mesh in cases:
        sc = dcpviz.Scenario(
            model=model, world_size=world, mesh=mesh, recipe=recipe, dtype="bfloat16"
        )
        result = dcpviz.simulate_save(sc, progress=False)
        plans = _plans_from(result)
        n = sum(len(p.items) for p in plans)
        dcp_s = rec_s = float("inf")
        with fake_world(0, world), tempfile.TemporaryDirectory() as root:
            for _ in range(repeats):  # best of: the machine may be shared
                a = copy.deepcopy(plans)
                t0 = time.perf_counter()
                DefaultSavePlanner(flatten_state_dict=False).create_global_plan(a)
                dcp_s = min(dcp_s, time.perf_counter() - t0)
                rec = RecordingSavePlanner(
                    Path(root) / "t.json", DefaultSavePlanner(flatten_state_dict=False), scenario=sc
                )
                rec.is_coordinator = True
                b = _carrying(copy.deepcopy(plans), result)
                t0 = time.perf_counter()
                rec.create_global_plan(b)
                rec_s = min(rec_s, time.perf_counter() - t0)
            size = os.path.getsize(Path(root) / "t.json") / 1e6
        print(
            f"{model:<11}{recipe:<7}{world:>6}{n:>9}{dcp_s:>8.2f}{rec_s:>12.2f}{rec_s - dcp_s:>12.2f}{size:>10.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="part 2 only up to W=256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    args = ap.parse_args()
    if args.part in ("1", "both"):
        part1(args.repeats)
    if args.part in ("2", "both"):
        part2(SCALE_CASES[:2] if args.quick else SCALE_CASES, 2 if args.quick else 3)


if __name__ == "__main__":
    sys.exit(main())
