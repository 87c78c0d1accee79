"""The CUDA / NCCL paths: real saves, loads and a torchrun capture on GPUs.

Skipped without a CUDA device (CI has none); run on a lent GPU machine. Each check compares
with an independent fact: the same job on CPU with gloo, or the simulation of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dcpviz

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

ROOT = Path(__file__).resolve().parents[1]
ONE_GPU = dict(model="mlp", world_size=1, mesh=(1,), recipe="fsdp")


def _loaded_digests(res) -> dict:
    return {r: sorted(chunks) for r, chunks in res.run_info.chunk_digests.items()}


def test_training_state_saves_and_loads_back_on_the_gpu(tmp_path):
    """Model and AdamW moments saved with NCCL come back byte for byte on the GPU."""
    sc = dcpviz.Scenario(**ONE_GPU, device="cuda", optimizer="adamw")
    saved = dcpviz.run_save(sc, tmp_path / "ck", timeout=300)
    assert saved.ok, saved.errors
    assert saved.run_info.backend == "nccl" and saved.trace.scenario.device == "cuda"
    assert saved.run_info.device == "cuda"
    assert any(n.startswith("Parameters lived on cuda") for n in saved.trace.notes)
    assert any(k.startswith("optim.") for k in saved.write_items.fqn)
    loaded = dcpviz.run_load(tmp_path / "ck", sc, timeout=300)
    assert loaded.ok, loaded.errors
    assert _loaded_digests(loaded) == _loaded_digests(saved)
    sim = dcpviz.simulate_load(tmp_path / "ck", sc.replace(device="meta"))
    assert sorted(map(repr, loaded.trace.reads)) == sorted(map(repr, sim.trace.reads))


def test_a_gloo_cpu_checkpoint_reshards_onto_the_gpu(tmp_path):
    """A 2-rank CPU (gloo) save loads into one GPU rank (NCCL) with the bytes a 1-rank CPU
    load of the same checkpoint gets."""
    cpu = dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", device="cpu")
    saved = dcpviz.run_save(cpu, tmp_path / "ck", timeout=300)
    assert saved.ok, saved.errors
    on_cpu = dcpviz.run_load(tmp_path / "ck", dcpviz.Scenario(**ONE_GPU, device="cpu"), timeout=300)
    on_gpu = dcpviz.run_load(
        tmp_path / "ck", dcpviz.Scenario(**ONE_GPU, device="cuda"), timeout=300
    )
    assert on_cpu.ok and on_gpu.ok, (on_cpu.errors, on_gpu.errors)
    assert on_gpu.run_info.backend == "nccl" and on_cpu.run_info.backend == "gloo"
    assert _loaded_digests(on_gpu) == _loaded_digests(on_cpu)


def test_torchrun_capture_with_nccl(tmp_path):
    """`torchrun --nproc_per_node 1 examples/capture_job.py --device cuda` records a trace whose
    plans equal the simulation of the same layout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        str(ROOT / "examples" / "capture_job.py"),
        "--trace",
        "out.json",
        "--checkpoint",
        "ck",
        "--device",
        "cuda",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = dcpviz.load_trace(tmp_path / "out.json")
    assert res.ok and res.trace.source == "capture" and res.trace.scenario.device.startswith("cuda")
    w = res.write_items
    assert set(w.fqn) >= {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(w[w.fqn == "0.weight"].sizes) == {(190, 16)}
    info = dcpviz.inspect_checkpoint(tmp_path / "ck", verify="full")
    assert set(info.chunks.fqn) == set(w.fqn)


def test_cuda_nccl_save(tmp_path):
    sc = dcpviz.Scenario(model="mlp", world_size=1, recipe="fsdp", device="cuda")
    res = dcpviz.run_save(sc, tmp_path / "ck", timeout=300)
    assert res.ok, res.errors
    assert res.run_info.backend == "nccl" and res.trace.scenario.device == "cuda"
    for row in res.files.itertuples():
        assert row.nbytes == os.path.getsize(tmp_path / "ck" / row.file)
    sim = dcpviz.simulate_save(sc.replace(device="meta"))
    assert [[res.trace.items[i] for i in p.items] for p in res.trace.final_plans] == [
        [sim.trace.items[i] for i in p.items] for p in sim.trace.final_plans
    ]
