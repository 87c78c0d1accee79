"""A load planned against a real checkpoint directory (dcp.save on real gloo processes): only
.metadata is read (safely), writer ranks come from FileSystemWriter's file names, and every read
is tied to its file."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from checkpoint_helpers import write_fsdp_mlp_checkpoint
from reference import chunk_rows

import dcpviz

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_fsdp_mlp_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "step0"), world_size=2)


def test_reads_name_their_writer_and_file(ckpt):
    load = dcpviz.simulate_load(ckpt, dcpviz.Scenario(model="mlp", world_size=3, recipe="fsdp"))
    assert load.ok, load.errors
    assert load.trace.saved_source.startswith("checkpoint")
    ri = load.read_items
    assert ri["file"].notna().all()
    # FileSystemWriter names a rank's data __{rank}_0.distcp; FSDP rank k wrote rows chunk k.
    w = ri[ri["fqn"] == "fc1.weight"]
    for r in w.itertuples():
        k = [chunk_rows(190, 2, j)[0] for j in range(2)].index(r.saved_offsets[0])
        assert (r.writer_rank, r.file) == (k, f"__{k}_0.distcp")
    # Stored lengths are the real bytes on disk: they add up to each file's size.
    per_file = Counter()
    for wr in load.trace.saved_writers:
        per_file[wr.file] += wr.storage_nbytes
    assert per_file == {f: os.path.getsize(os.path.join(ckpt, f)) for f in per_file}
    # The matrices agree with each other and with the per-rank volumes.
    by_file = load.resharding_matrix(by="file")
    by_writer = load.resharding_matrix()
    assert by_file.to_numpy().tolist() == by_writer.to_numpy().tolist()
    assert list(by_file.columns) == ["__0_0.distcp", "__1_0.distcp"]
    assert by_file.sum(axis=1).tolist() == load.rank_volume["nbytes"].astype("int64").tolist()
    # Reading a box of a saved chunk deserialises the whole stored chunk.
    assert (ri["storage_nbytes"].astype("int64") >= ri["chunk_nbytes"]).all()


def test_checkpoint_with_a_mismatched_target(ckpt):
    load = dcpviz.simulate_load(
        ckpt, dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")
    )
    assert len(load.errors) == 2
    hints = {h.kind: h for h in load.hints}
    assert set(hints) == {"size", "partial", "unexpected"}
    # Both models have a 'norm.weight': mlp's has 3 entries, llama-tiny's 64.
    assert hints["size"].keys == ("norm.weight",) and "from 3 to 64" in hints["size"].title
    assert "fc1.weight" in hints["unexpected"].keys and "output.weight" in hints["partial"].keys
