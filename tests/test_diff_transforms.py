"""A DCP checkpoint written through storage transforms (``FileSystemWriter(_extensions=...)``:
compression, encryption) on a real dcp.save: the diff compares what it can (keys, shapes, dtypes,
layout) and marks the transformed keys 'not compared' with the reason; it never feeds transformed
bytes to torch.load (they are not a torch.save archive) and never stops with exit 2 for them."""

from __future__ import annotations

import io
import warnings

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint._extension import StreamTransformExtension

import dcpviz
from dcpviz.cli import main

warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")


class Invert(StreamTransformExtension):
    """A storage transform defined in this process (torch's own ZStandard needs a zstd package):
    every byte inverted, so a transformed record is not a torch.save archive."""

    @staticmethod
    def registry_name() -> str:
        return "stream.invert"

    @staticmethod
    def from_descriptor(version: str) -> Invert:
        return Invert()

    def get_descriptor(self) -> str:
        return "stream.invert/1"

    def transform_to(self, output):
        class Writer(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, b) -> int:
                output.write(bytes(x ^ 0xFF for x in bytes(b)))
                return len(memoryview(b))

            def flush(self) -> None:
                output.flush()

        return Writer()

    def transform_from(self, input):
        return io.BytesIO(bytes(x ^ 0xFF for x in input.read()))


def save(sd: dict, path, transformed: bool = False) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if transformed:
            dcp.save(
                sd, storage_writer=FileSystemWriter(str(path), _extensions=[Invert()]), no_dist=True
            )
        else:
            dcp.save(sd, checkpoint_id=str(path), no_dist=True)
    return str(path)


def state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=g),
        "b": torch.randn(3, generator=g),
        "hp": {"lr": 0.1},
    }


def test_transformed_records_are_not_compared_the_rest_is(tmp_path, capsys):
    sd = state()
    a = save(sd, tmp_path / "a")
    b = save(
        {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()},
        tmp_path / "b",
        True,
    )
    md = dcp.FileSystemReader(b).read_metadata()  # the save really wrote transform descriptors
    assert all(s.transform_descriptors == ["stream.invert/1"] for s in md.storage_data.values())
    r = dcpviz.diff(a, b, values=True)
    c = r.changes.set_index("fqn")
    assert set(c["change"]) == {"not compared"} and set(c.index) == {"w", "b", "hp.lr"}
    assert all("storage transforms (stream.invert/1)" in d for d in c["detail"])
    assert set(r.values["status"]) == {"skipped"}
    assert any("stream.invert/1" in n for n in r.notes)
    # nothing found that differs, but no value could be compared: not called the same
    assert not r.differing and r.unverified == ["b", "hp.lr", "w"]
    assert r.exit_code == 1 and main(["diff", a, b, "--values"]) == 1
    # what can be compared still is: a cast, a key only on one side
    sd2 = {"w": sd["w"].to(torch.float64), "b": sd["b"].clone(), "new": torch.zeros(2)}
    c2 = save(sd2, tmp_path / "c", True)
    r = dcpviz.diff(a, c2, values=True)
    got = dict(
        zip(r.changes["fqn"].where(r.changes["fqn"] != "", r.changes["fqn_b"]), r.changes["change"])
    )
    assert got == {"w": "dtype", "b": "not compared", "hp.lr": "only in A", "new": "only in B"}
    assert r.exit_code == 1 and main(["diff", a, c2, "--values", "--json"]) == 1
    capsys.readouterr()
    # without --values the structure alone is compared, as for any checkpoint
    assert dcpviz.diff(a, b).exit_code == 0
