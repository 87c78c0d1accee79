"""run_save(storage_writer=HuggingFaceStorageWriter(...)): a real 2-rank gloo save through DCP's
HF writer. The HF writer writes no .metadata, so the storage facts come from the folder's
safetensors headers; here they are checked against the headers as the ``safetensors`` library
itself reads them (an independent oracle) and against the simulated plan of the same save."""

from __future__ import annotations

import json
import os

import pytest
from safetensors import safe_open
from torch.distributed.checkpoint import HuggingFaceStorageWriter

import dcpviz

W = 2


def _oracle(folder) -> set[tuple]:
    """(file, fqn, offsets, sizes, dtype, nbytes) of every tensor in the folder, read by safetensors."""
    out = set()
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(folder, name), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("DCP_SHARDING_INFO", "{}"))
            for key in f.keys():
                sl = f.get_slice(key)
                shape = tuple(sl.get_shape())
                t = f.get_tensor(key)
                off = tuple(info.get(key, {}).get("saved_offsets", (0,) * len(shape)))
                out.add(
                    (
                        name,
                        key,
                        off,
                        shape,
                        str(t.dtype).removeprefix("torch."),
                        t.numel() * t.element_size(),
                    )
                )
    return out


def _rows(df) -> set[tuple]:
    return {
        (r.file, r.fqn, tuple(r.offsets), tuple(r.sizes), r.dtype, int(r.nbytes))
        for r in df.itertuples()
    }


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    from hf_workers import floats

    sc = dcpviz.Scenario(model="mlp", world_size=W, recipe="fsdp", state=floats)
    root = tmp_path_factory.mktemp("hf") / "out"
    writer = HuggingFaceStorageWriter(str(root), save_distributed=True, enable_consolidation=True)
    run = dcpviz.run_save(sc, root, storage_writer=writer)
    sim_writer = HuggingFaceStorageWriter(
        str(tmp_path_factory.mktemp("sim") / "o"), save_distributed=True, enable_consolidation=True
    )
    return sc, run, dcpviz.simulate_save(sc, storage_writer=sim_writer), root


def test_run_succeeds_and_says_where_facts_come_from(hf_run):
    _, run, _, _ = hf_run
    assert not run.trace.errors, run.trace.errors
    assert run.trace.storage_writer.cls == "HuggingFaceStorageWriter"
    assert any("safetensors headers" in n for n in run.trace.notes)


def test_file_plan_equals_the_disk(hf_run):
    _, run, _, root = hf_run
    fp = run.file_plan
    assert _rows(fp[fp.stage == "write"]) == _oracle(root / "sharded")
    cons = fp[fp.stage == "consolidate"]
    assert _rows(cons) == _oracle(root)
    # Each shard file is the rank its DCP name says, and that rank's final plan wrote those chunks.
    writers = {(r.fqn, tuple(r.offsets)): r.rank for r in run.chunks.itertuples()}
    for r in fp[fp.stage == "write"].itertuples():
        assert writers[(r.fqn, tuple(r.offsets))] == r.rank
        assert r.file.startswith(f"shard-{r.rank + 1:05}-")


def test_files_table_equals_the_disk(hf_run):
    _, run, _, root = hf_run
    files = run.files
    on_disk = sorted(p for p in os.listdir(root / "sharded") if p.endswith(".safetensors"))
    assert sorted(files["file"]) == on_disk
    oracle = _oracle(root / "sharded")
    for row in files.itertuples():
        assert row.nbytes == sum(n for f, *_, n in oracle if f == row.file)


def test_real_file_plan_equals_the_simulated_one(hf_run):
    _, run, sim, _ = hf_run
    assert _rows(run.file_plan) == _rows(sim.file_plan)
    assert run.hf_index() == sim.hf_index()
    assert json.loads((hf_run[3] / "model.safetensors.index.json").read_text()) == run.hf_index()


def test_writer_into_another_folder_is_refused(tmp_path):
    from hf_workers import floats

    sc = dcpviz.Scenario(model="mlp", world_size=W, recipe="fsdp", state=floats)
    with pytest.raises(dcpviz.DcpvizError, match="checkpoint_dir"):
        dcpviz.run_save(
            sc, tmp_path / "a", storage_writer=HuggingFaceStorageWriter(str(tmp_path / "b"))
        )
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("pass_writer", [True, False])
def test_capture_with_the_hf_writer(tmp_path, pass_writer):
    """RecordingSavePlanner in a real 2-rank save through the HF writer: complete(md,
    storage_writer=writer) reads the storage facts from the folder's headers (equal to what the
    safetensors library reads); without the writer the trace says it has none, and why."""
    from hf_workers import hf_capture_job

    from dcpviz.engine.run.procs import launch

    out, trace_path = tmp_path / "out", tmp_path / "trace.json"
    outcome = launch(
        hf_capture_job,
        W,
        (str(out), str(trace_path), pass_writer),
        backend="gloo",
        device="cpu",
        timeout=240,
    )
    assert outcome.ok, outcome.errors
    assert all(not p["problems"] for p in outcome.payloads.values())
    cap = dcpviz.load_trace(trace_path)
    if pass_writer:
        assert _rows(cap.file_plan) == _oracle(out)
        assert any("safetensors headers" in n for n in cap.trace.notes)
        assert sorted(cap.files["file"]) == sorted(
            p for p in os.listdir(out) if p.endswith(".safetensors")
        )
        writers = {(r.fqn, tuple(r.offsets)): r.rank for r in cap.chunks.itertuples()}
        assert all(writers[(r.fqn, tuple(r.offsets))] == r.rank for r in cap.file_plan.itertuples())
    else:
        assert cap.file_plan.empty
        assert any(
            n.startswith("Storage facts: none") and "storage_writer=writer" in n
            for n in cap.trace.notes
        )
