"""run_save: real processes, real files. Plans equal simulate_save's; storage facts equal the disk."""

from __future__ import annotations

import os
import socket

import pytest

import dcpviz


@pytest.fixture(scope="module", params=["hsdp", "tp+fsdp"])
def pair(request, real_save):
    """(scenario, real run, simulation, checkpoint dir) — the 4 workers start once per scenario."""
    sc, run, ckpt = real_save(request.param)
    return sc, run, dcpviz.simulate_save(sc), ckpt


def _plans(result, phase):
    return [[result.trace.items[i] for i in p.items] for p in getattr(result.trace, phase)]


@pytest.mark.parametrize("phase", ["local_plans", "global_plans", "final_plans"])
def test_plans_identical_to_simulation(pair, phase):
    _, run, sim, _ = pair
    assert _plans(run, phase) == _plans(sim, phase)


def test_metadata_identical_to_simulation(pair):
    _, run, sim, _ = pair
    assert run.trace.metadata.tensors == sim.trace.metadata.tensors
    assert run.trace.metadata.bytes_keys == sim.trace.metadata.bytes_keys
    assert sim.trace.metadata.storage == () and len(run.trace.metadata.storage) > 0
    for name in ("write_items", "dedup", "rank_volume", "chunks"):
        a, b = getattr(run, name), getattr(sim, name)
        assert a.equals(b), name


def test_per_file_bytes_equal_the_disk(pair):
    _, run, _, ckpt = pair
    files = run.files
    on_disk = sorted(p for p in os.listdir(ckpt) if p.endswith(".distcp"))
    assert sorted(files["file"]) == on_disk
    for row in files.itertuples():
        assert row.nbytes == os.path.getsize(ckpt / row.file)
    # Every rank wrote exactly the file named after it, holding what its final plan wrote.
    final_counts = run.rank_volume.set_index("rank")["items"]
    vol = run.storage_volume.set_index("rank")
    assert (vol["items"] == final_counts).all()
    assert vol["nbytes"].sum() == sum(os.path.getsize(ckpt / f) for f in on_disk)


def test_storage_writer_rank_is_the_final_plan_writer(pair):
    _, run, _, _ = pair
    writers = {(r.fqn, r.offsets): r.rank for r in run.chunks.itertuples()}
    for row in run.storage.itertuples():
        assert writers[(row.fqn, row.offsets)] == row.rank, row


def test_storage_matches_an_independent_read_of_the_checkpoint(pair):
    """run.storage equals the checkpoint as DCP's own reader sees it (our own files: plain pickle
    is fine here), each rank's file is exactly its entries end to end (file sizes on disk), and
    dcpviz's inspect_checkpoint agrees."""
    from torch.distributed.checkpoint import FileSystemReader

    _, run, _, ckpt = pair
    md = FileSystemReader(str(ckpt)).read_metadata()
    dcp_view = sorted(
        (k.fqn, tuple(k.offset or ()), s.relative_path, s.offset, s.length)
        for k, s in md.storage_data.items()
    )
    ours = sorted(
        zip(
            run.storage["fqn"],
            run.storage["offsets"],
            run.storage["file"],
            run.storage["offset"],
            run.storage["length"],
        )
    )
    assert ours == dcp_view
    for row in run.storage.itertuples():  # DCP names each rank's file __<rank>_<n>.distcp
        assert row.file.startswith(f"__{row.rank}_"), row
    for name in sorted(p for p in os.listdir(ckpt) if p.endswith(".distcp")):
        spans = sorted((off, length) for _, _, f, off, length in dcp_view if f == name)
        ends = [0] + [off + length for off, length in spans]
        assert [off for off, _ in spans] == ends[:-1], name  # back to back, no gap, no overlap
        assert ends[-1] == os.path.getsize(ckpt / name), name
    ck = dcpviz.inspect_checkpoint(ckpt, verify="full")
    cols = ["fqn", "offsets", "file", "offset", "length", "rank"]
    assert run.storage[cols].equals(ck.storage[cols])
    assert ck.notes == []


def test_trace_round_trips_with_storage(pair, tmp_path):
    _, run, _, _ = pair
    again = dcpviz.load_trace(run.to_json(tmp_path / "run.json"))
    assert again.trace == run.trace
    assert again.storage.equals(run.storage)
    assert again.trace.source == "run"


def test_processes_and_port_are_gone(pair):
    _, run, _, _ = pair
    info = run.run_info
    assert info.backend == "gloo" and info.exitcodes == [0, 0, 0, 0]
    for pid in info.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", info.port), timeout=2).close()


def test_uneven_and_strided_shards_were_really_written(pair):
    sc, run, _, _ = pair
    st = run.storage
    if sc.recipe == "tp+fsdp":
        # FSDP over TP gives strided shards: rank 1 (dp 0, tp 1) holds rows 32-47, rank 2 rows
        # 16-31 — not rank * 16 — and those are the bytes in each rank's file.
        wq = st[st.fqn == "layers.0.attention.wq.weight"]
        assert dict(zip(wq["rank"], wq["offsets"])) == {
            0: (0, 0),
            1: (32, 0),
            2: (16, 0),
            3: (48, 0),
        }
    else:
        # fc2.bias has 3 rows over 2 shards: a 2-row and a 1-row chunk, both on disk.
        rows = st[st.fqn == "fc2.bias"]
        assert sorted(rows.offsets) == [(0,), (2,)]
    assert (st.length > 0).all()


def test_saved_shards_differ_and_replicas_agree(real_save):
    """Every element's value depends on its global position: HSDP (2, 2) ranks 0 and 1 hold
    different rows of fc1.weight (different bytes), ranks 0 and 2 the same rows (same bytes)."""
    _, run, _ = real_save("hsdp")
    digest = {r: {f: h for f, _, h in chunks} for r, chunks in run.run_info.chunk_digests.items()}
    for fqn in ("fc1.weight", "fc1.bias", "fc2.weight"):
        assert digest[0][fqn] != digest[1][fqn], fqn
        assert digest[0][fqn] == digest[2][fqn] and digest[1][fqn] == digest[3][fqn], fqn
