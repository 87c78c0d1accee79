"""torchtitan resume bench: a llama3-405b checkpoint saved on pp16 x dp_shard128 x tp8 (W=16,384),
resumed on the same layout with DCP's DefaultLoadPlanner, with the exactness check in the same run.

Each step runs in a fresh process:

    save      simulate_save of the scenario (timed and reported on its own; its time and peak RSS
              are not the resume's); its Metadata written as DCP's FileSystemWriter.finish does
              (pickle), so the resume reads it back with dcpviz's safe unpickler. Skipped with
              ``--metadata FILE`` (a saved .metadata, e.g. from an earlier run or another branch).
    resume    dcpviz.simulate_load(metadata, the same scenario): wall time, the trace's phase
              timings and the process's peak RSS (ru_maxrss, read right after the simulation).
    exact     then, in the same process: on ``--sample`` target ranks, DCP's own DefaultLoadPlanner
              (set_up_planner + create_local_plan, full chunk scan, no dcpviz code active) on
              DTensors built without dcpviz (tests/titan_reference.py: DTensor.from_local on
              per-rank meshes, the stage's modules written out from torchtitan's split rule here),
              compared with the trace's local plan field by field, in order
              (bench_planning.same_reads). Its per-rank time, mean x W, is DCP's summed cost
              (extrapolated, said so).

    .venv/bin/python bench/bench_titan_resume.py                     # W=16,384, resume once
    .venv/bin/python bench/bench_titan_resume.py --mesh 16,16,8      # W=2,048
    .venv/bin/python bench/bench_titan_resume.py --metadata FILE --repeat 2
    .venv/bin/python bench/bench_titan_resume.py --write-metadata FILE   # keep the save's metadata

Runs that may pass ~3 GB go through /work/wt/bigrun on the shared VM.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # titan_reference.py: DTensors without dcpviz

MODEL = "llama3-405b"
NAMES = ("pp", "dp_shard", "tp")
LAYERS = 126  # llama3-405b


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def scenario(mesh: tuple[int, ...]):
    import dcpviz

    return dcpviz.Scenario(
        model=MODEL,
        world_size=math.prod(mesh),
        mesh=mesh,
        mesh_dim_names=NAMES,
        recipe="torchtitan",
        dtype="bfloat16",
    )


def hand_stages(pp: int, layers: int = LAYERS) -> dict[int, list[str]]:
    """Each stage's modules by torchtitan's rule (generate_llm_fqn_per_model_part), written out
    here rather than taken from dcpviz: the embeddings and the output count as one layer each,
    the budget (layers + 2) / pp per stage, the first ``(layers + 2) % pp`` stages one more."""
    per, extra = divmod(layers + 2, pp)
    out, nxt = {}, 0
    for s in range(pp):
        budget = per + (s < extra) - (s == 0) - (s == pp - 1)
        names = ["tok_embeddings"] if s == 0 else []
        names += [f"layers.{i}" for i in range(nxt, min(layers, nxt + budget))]
        nxt += budget
        if s == pp - 1:
            names += ["norm", "output"]
        out[s] = names
    return out


def save(mesh: tuple[int, ...], path: str) -> dict:
    """simulate_save of the scenario; its Metadata pickled to ``path`` as DCP writes it."""
    import torch

    import dcpviz

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = dcpviz.simulate_save(scenario(mesh), progress=False)
    seconds = time.perf_counter() - t0
    peak = _peak_gb()
    assert res.ok, res.errors
    with open(path, "wb") as fh:
        pickle.dump(res.metadata, fh)  # what FileSystemWriter.finish writes
    return {
        "save_s": seconds,
        "peak_gb": peak,
        "timings": dict(res.trace.timings),
        "chunks": sum(
            len(getattr(v, "chunks", ())) for v in res.metadata.state_dict_metadata.values()
        ),
    }


def _bf16(value):
    """A hand-built DTensor (or tensor) in bf16, as the saved job held it."""
    import torch
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor) and value.dtype.is_floating_point:
        local = torch.empty(value._local_tensor.shape, dtype=torch.bfloat16, device="meta")
        return DTensor.from_local(
            local,
            value.device_mesh,
            value.placements,
            run_check=False,
            shape=value.shape,
            stride=value.stride(),
        )
    if isinstance(value, torch.Tensor) and value.dtype.is_floating_point:
        return torch.empty(value.shape, dtype=torch.bfloat16, device="meta")
    return value


def dcp_save(mesh: tuple[int, ...], path: str, compare: bool) -> dict:
    """The saved side without simulate_save's trace: DCP's own DefaultSavePlanner
    (set_up_planner + create_local_plan on each rank, then the coordinator's create_global_plan:
    dedup, Metadata, validation) on each rank's state dict, a view of its stage's template
    (``fastpath.TemplateView`` in the rank's fake world; DTensor's local shapes memoised across
    ranks). Its Metadata pickled to ``path``. For a W where simulate_save does not fit in memory;
    ``compare``: also run simulate_save and check the two Metadata are equal."""
    import torch
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    from dcpviz.engine.job.world import fake_world
    from dcpviz.engine.shortcuts import fastpath
    from dcpviz.engine.shortcuts.stage_templates import stage_size, stage_templates

    torch.set_num_threads(1)
    sc = scenario(mesh)
    W, per = sc.world_size, stage_size(sc)
    t0 = time.perf_counter()
    views = [fastpath.TemplateView(t) for t in stage_templates(sc, [])]
    shapes = fastpath.SharedLocalShapes()
    plans, coordinator = [], None
    for r in range(W):
        with fake_world(r, W), shapes.active(), fastpath.memoized_shard_steps(shapes.shard_steps):
            p = DefaultSavePlanner()
            p.set_up_planner(views[r // per].view(r, {}), storage_meta=None, is_coordinator=r == 0)
            plans.append(p.create_local_plan())
        if r == 0:
            coordinator = p
    local_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    with fake_world(0, W):
        _, md = coordinator.create_global_plan(plans)
    global_s = time.perf_counter() - t1
    with open(path, "wb") as fh:
        pickle.dump(md, fh)
    row = {"local_s": local_s, "global_s": global_s, "peak_gb": _peak_gb()}
    if compare:
        import dcpviz

        res = dcpviz.simulate_save(sc, progress=False)
        row["same_as_simulate_save"] = (
            res.metadata.state_dict_metadata == md.state_dict_metadata
            and list(res.metadata.state_dict_metadata) == list(md.state_dict_metadata)
            and res.metadata.planner_data == md.planner_data
            and res.metadata.storage_data == md.storage_data
        )
    return row


def dcp_reads(md, mesh: tuple[int, ...], ranks: list[int]) -> tuple[list[float], dict]:
    """DCP's own DefaultLoadPlanner on hand-built DTensors: (seconds per rank, plans)."""
    from titan_reference import hand_titan_state_dict
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    # dcpviz's fake process group only: set_up_planner asks it for a device.
    from dcpviz.engine.job.world import fake_world

    W, stages = math.prod(mesh), hand_stages(mesh[0])
    seconds, plans = [], {}
    for r in ranks:
        sd = {k: _bf16(v) for k, v in hand_titan_state_dict(MODEL, mesh, NAMES, r, stages).items()}
        with fake_world(r, W):
            t0 = time.perf_counter()
            p = DefaultLoadPlanner()
            p.set_up_planner(sd, md, r == 0)
            plans[r] = p.create_local_plan()
            seconds.append(time.perf_counter() - t0)
        del sd, p
    return seconds, plans


def resume(mesh: tuple[int, ...], path: str, sample: int, check: bool) -> dict:
    import torch

    import dcpviz
    from dcpviz.engine.checkpoint.reader import read_metadata_bytes

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        md = read_metadata_bytes(fh.read(), path)
    read_s = time.perf_counter() - t0
    target = scenario(mesh)
    simulate_load = dcpviz.simulate_load  # dcpviz's lazy import of its API, before the clock
    t0 = time.perf_counter()
    res = simulate_load(md, target, progress=False)
    seconds = time.perf_counter() - t0
    peak = _peak_gb()
    assert res.ok, res.errors
    row = {
        "resume_s": seconds,
        "read_metadata_s": read_s,
        "peak_gb": peak,
        "timings": dict(res.trace.timings),
        "reads": len(res.trace.reads),
        "notes": list(res.trace.notes),
    }
    if check:
        from bench_planning import same_reads

        ranks = sample_ranks(mesh, sample)
        secs, plans = dcp_reads(md, mesh, ranks)
        ok, n = same_reads(res, plans)
        row.update(
            exact=f"{ok}/{n} sampled ranks identical",
            exact_ranks=ranks,
            dcp_rank_s=sum(secs) / len(secs),
            dcp_sum_s=sum(secs) / len(secs) * target.world_size,
        )
    return row


def sample_ranks(mesh: tuple[int, ...], n: int) -> list[int]:
    """``n`` target ranks for the exactness check: the first and last stage (embeddings; norm and
    output), both ends of a stage boundary, then spread evenly over the rest."""
    W, per = math.prod(mesh), math.prod(mesh[1:])
    fixed = [0, W - 1, per - 1, per, W - per, W // 2 + mesh[-1] + 1]
    spread = [round(i * (W - 1) / max(1, n - 1)) for i in range(n)]
    out: list[int] = []
    for r in fixed + spread:
        if r not in out and 0 <= r < W and len(out) < n:
            out.append(r)
    return sorted(out)


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"FAILED {args}: {proc.stderr.strip().splitlines()[-5:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    argv = sys.argv[1:]

    def opt(name: str, default: str | None = None) -> str | None:
        return argv[argv.index(name) + 1] if name in argv else default

    mesh = tuple(int(v) for v in opt("--mesh", "16,128,8").split(","))
    sample = int(opt("--sample", "8"))
    if "--one-save" in argv:
        print(json.dumps(save(mesh, opt("--one-save"))))
        return
    if "--dcp-save" in argv:
        print(json.dumps(dcp_save(mesh, opt("--dcp-save"), "--compare" in argv)))
        return
    if "--one-resume" in argv:
        print(json.dumps(resume(mesh, opt("--one-resume"), sample, "--no-check" not in argv)))
        return
    W = math.prod(mesh)
    label = f"{MODEL} pp{mesh[0]} x dp_shard{mesh[1]} x tp{mesh[2]} (W={W:,})"
    path = opt("--metadata")
    common = ["--mesh", ",".join(map(str, mesh)), "--sample", str(sample)]
    if path is None:
        path = opt("--write-metadata") or os.path.join(
            tempfile.mkdtemp(prefix="dcpviz-titan-"), ".metadata"
        )
        row = _child(["--one-save", path, *common])
        print(
            f"save   {label}: simulate_save {row['save_s']:.1f}s, peak RSS {row['peak_gb']:.2f} GB, "
            f"{row['chunks']:,} saved chunks -> {path}",
            flush=True,
        )
        print("    " + ", ".join(f"{k} {v:.1f}s" for k, v in row["timings"].items()), flush=True)
    else:
        print(f"save   {label}: metadata from {path}", flush=True)
    rows = []
    extra = ["--no-check"] if "--no-check" in argv else []
    for i in range(int(opt("--repeat", "1"))):
        row = _child(["--one-resume", path, *common, *extra])
        rows.append(row)
        load = os.getloadavg()
        dcp = (
            f"; DCP's own planner {row['dcp_rank_s'] * 1000:.0f} ms/rank x W = {row['dcp_sum_s']:.0f}s "
            "(extrapolated)"
            if "dcp_sum_s" in row
            else ""
        )
        print(
            f"resume {label} run {i + 1}: {row['resume_s']:.1f}s (reading the metadata "
            f"{row['read_metadata_s']:.1f}s before), peak RSS {row['peak_gb']:.2f} GB, "
            f"{row['reads']:,} reads, exact: {row.get('exact', 'not checked')}{dcp}; "
            f"load average {load[0]:.1f}",
            flush=True,
        )
        print("    " + ", ".join(f"{k} {v:.1f}s" for k, v in row["timings"].items()), flush=True)
    for note in rows[-1]["notes"] if rows else ():
        print("    note: " + note)
    print()
    print(
        "| run | resume | build_state_dicts | local_plans | mismatch_scan | global + finish | "
        "outside the phases | peak RSS | exact (ranks) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows):
        t = row["timings"]
        print(
            f"| {i + 1} | {row['resume_s']:.1f} s | {t.get('build_state_dicts', 0):.1f} s | "
            f"{t.get('local_plans', 0):.1f} s | {t.get('mismatch_scan', 0):.1f} s | "
            f"{t.get('global_plan', 0) + t.get('finish_plans', 0):.1f} s | "
            f"{row['resume_s'] - t.get('total', 0):.1f} s | {row['peak_gb']:.2f} GB | "
            f"{row.get('exact', '-')} {row.get('exact_ranks', '')} |"
        )


if __name__ == "__main__":
    main()
