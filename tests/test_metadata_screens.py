"""The bulk screens of ``engine/checkpoint/metadata_check.py`` say "fine" only where the
field-by-field walk finds nothing, so ``check_metadata`` names the same first problem with or
without them: on a real DCP metadata (with storage records), and on each field of it broken in
each way a pickle can break it (wrong type, bool for int, negative, past 2**53, wrong number of
dims, out of the tensor, subclasses, missing fields, unsafe paths)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
)

import dcpviz
from dcpviz.core.errors import CheckpointError
from dcpviz.core.trace import MAX_COUNT
from dcpviz.engine.checkpoint import metadata_check as mc


@pytest.fixture(scope="module")
def metadata():
    """A real save's Metadata (TP+FSDP, strided chunks) with FileSystemWriter-like records."""
    sc = dcpviz.Scenario(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp")
    res = dcpviz.simulate_save(sc)
    md = res.metadata
    ends: dict[str, int] = {}
    storage = {}
    for row in res.chunks.itertuples(index=False):
        rel = f"__{int(row.rank)}_0.distcp"
        offsets = torch.Size(row.offsets) if row.kind == "tensor" else None
        storage[MetadataIndex(row.fqn, offsets, int(row.chunk_index))] = _StorageInfo(
            rel, ends.get(rel, 0), int(row.nbytes) + 100
        )
        ends[rel] = ends.get(rel, 0) + int(row.nbytes) + 100
    md.storage_data = storage
    return md


def walked(md) -> str | None:
    """The first problem of the field-by-field walk alone (no screens)."""
    screens = mc._chunks_fine, mc._storage_fine
    mc._chunks_fine = mc._storage_fine = lambda _: False
    try:
        return next(mc._problems(md), None)
    finally:
        mc._chunks_fine, mc._storage_fine = screens


def screened(md) -> str | None:
    return next(mc._problems(md), None)


class Tuple2(tuple):
    pass


class Chunk2(ChunkStorageMetadata):
    pass


def _tensor(md):
    """The first tensor entry with a 2-D size and several chunks."""
    return next(
        (k, e)
        for k, e in md.state_dict_metadata.items()
        if hasattr(e, "chunks") and len(e.size) == 2 and len(e.chunks) > 1
    )


def chunk_breaks():
    """(name, function(entry)) breaking one chunk field of a tensor entry."""
    last = -1

    def set_chunk(field, value):
        def f(e):
            c = e.chunks[last]
            e.chunks[last] = ChunkStorageMetadata(
                **{"offsets": c.offsets, "sizes": c.sizes, field: value}
            )

        return f

    def offsets_plus(delta):
        def f(e):
            c = e.chunks[last]
            e.chunks[last] = ChunkStorageMetadata(
                torch.Size([c.offsets[0] + delta, c.offsets[1]]), c.sizes
            )

        return f

    return {
        "offset bool": set_chunk("offsets", (True, 0)),
        "offset negative": set_chunk("offsets", torch.Size([-1, 0])),
        "offset float": set_chunk("offsets", (0.0, 0)),
        "offset numpy int": set_chunk("offsets", (__import__("numpy").int64(0), 0)),
        "offset past 2**53": set_chunk("offsets", (MAX_COUNT + 1, 0)),
        "offsets 1-D": set_chunk("offsets", torch.Size([0])),
        "offsets a list": set_chunk("offsets", [0, 0]),
        "offsets a tuple subclass": set_chunk("offsets", Tuple2([0, 0])),
        "sizes None": set_chunk("sizes", None),
        "sizes 3-D": set_chunk("sizes", torch.Size([1, 1, 1])),
        "out of the tensor": offsets_plus(10**6),
        "too many elements": set_chunk("sizes", torch.Size([2**30, 2**30])),
        "chunk subclass": lambda e: e.chunks.__setitem__(
            last, Chunk2(e.chunks[last].offsets, e.chunks[last].sizes)
        ),
        "chunk None": lambda e: e.chunks.__setitem__(last, None),
        "chunks a tuple": lambda e: setattr(e, "chunks", tuple(e.chunks)),
        "chunks a dict": lambda e: setattr(e, "chunks", {0: e.chunks[0]}),
        "no chunks": lambda e: setattr(e, "chunks", []),
        "size with a bool": lambda e: setattr(e, "size", (True, e.size[1])),
        "size a list": lambda e: setattr(e, "size", list(e.size)),
        "dtype a string": lambda e: setattr(e.properties, "dtype", "float32"),
        "requires_grad an int": lambda e: setattr(e.properties, "requires_grad", 1),
        "properties None": lambda e: setattr(e, "properties", None),
        "chunks missing": lambda e: delattr(e, "chunks"),
    }


@pytest.mark.parametrize("name", list(chunk_breaks()))
def test_a_broken_chunk_field_gets_the_walks_message(metadata, name):
    md = copy.deepcopy(metadata)
    _, entry = _tensor(md)
    chunk_breaks()[name](entry)
    assert screened(md) == walked(md)
    # Each break is a real problem, but for the ones DCP's types allow (subclasses, a tuple).
    sound = ("chunks a tuple", "no chunks", "chunk subclass", "offsets a tuple subclass")
    assert (walked(md) is None) == (name in sound), name
    if walked(md) is not None:
        with pytest.raises(CheckpointError, match="not valid DCP metadata"):
            mc.check_metadata(md, "x")


def storage_breaks():
    def record(field, value):
        def f(storage):
            key = list(storage)[-1]
            storage[key] = dataclasses.replace(storage[key], **{field: value})

        return f

    def key(**changes):
        def f(storage):
            old = list(storage)[-1]
            info = storage.pop(old)
            fields = {"fqn": old.fqn, "offset": old.offset, "index": old.index, **changes}
            storage[MetadataIndex(**fields)] = info

        return f

    return {
        "path absolute": record("relative_path", "/etc/passwd"),
        "path backslash absolute": record("relative_path", "\\share\\x"),
        "path dot-dot": record("relative_path", "../x.distcp"),
        "path inner dot-dot": record("relative_path", "a/../../x"),
        "path NUL": record("relative_path", "__0_0.distcp\x00"),
        "path drive": record("relative_path", "C:x.distcp"),
        "path empty": record("relative_path", ""),
        "path bytes": record("relative_path", b"__0_0.distcp"),
        "offset negative": record("offset", -1),
        "offset bool": record("offset", False),
        "length past 2**53": record("length", MAX_COUNT + 1),
        "length a float": record("length", 1.0),
        "transforms a string": record("transform_descriptors", "zstd"),
        "transforms with an int": record("transform_descriptors", ["zstd", 1]),
        "transforms fine": record("transform_descriptors", ["zstd"]),
        "index fqn an int": key(fqn=1),
        "index offset with a bool": key(offset=(True, 0)),
        "index offset negative": key(offset=torch.Size([-1, 0])),
        "index position a bool": key(index=True),
        "index position negative": key(index=-1),
        "key a string": lambda s: s.__setitem__("x", s.pop(list(s)[-1])),
        "record None": lambda s: s.__setitem__(list(s)[-1], None),
    }


@pytest.mark.parametrize("name", list(storage_breaks()))
def test_a_broken_storage_record_gets_the_walks_message(metadata, name):
    md = copy.deepcopy(metadata)
    storage_breaks()[name](md.storage_data)
    assert screened(md) == walked(md)
    # MetadataIndex makes its offset a torch.Size: (True, 0) becomes (1, 0).
    assert (walked(md) is None) == (name in ("transforms fine", "index offset with a bool")), name


def test_a_sound_metadata_passes_the_screens_and_the_walk(metadata):
    assert all(mc._chunks_fine(e) for e in metadata.state_dict_metadata.values())
    assert mc._storage_fine(metadata.storage_data)
    assert walked(metadata) is None and screened(metadata) is None
    mc.check_metadata(metadata, "x")


def test_storage_left_out_or_not_a_dict(metadata):
    for value in (None, {}, [], "x"):
        md = copy.deepcopy(metadata)
        md.storage_data = value
        assert screened(md) == walked(md)
