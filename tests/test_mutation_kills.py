"""Tests written for mutants that survived `make mutate` (bench/mutate.py), each asserting a fact
that does not come from the code under test."""

from __future__ import annotations

import json

import pytest
import torch

import dcpviz
from dcpviz.core.trace import MAX_COUNT


# -- trace validation: each rule refuses its bad file and names the field (README: an error
# names the input); the facts are hand-edited trace files, one rule broken at a time ----------
@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"), fast=False
    )
    load = dcpviz.simulate_load(save, dcpviz.Scenario(model="mlp", world_size=3, recipe="fsdp"))
    bad = dcpviz.simulate_load(
        save, dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")
    )
    return {
        name: json.loads(r.to_json(root / f"{name}.json").read_text())
        for name, r in (("save", save), ("load", load), ("mismatch", bad))
    }


def _load(doc, tmp_path, text=None):
    path = tmp_path / "edited.json"
    path.write_text(text if text is not None else json.dumps(doc))
    return dcpviz.load_trace(path)


def _refused(doc, tmp_path, field, text=None):
    with pytest.raises(dcpviz.DcpvizError) as err:
        _load(doc, tmp_path, text)
    assert field in str(err.value), str(err.value)
    return str(err.value)


def _edit(docs, name):
    return json.loads(json.dumps(docs[name]))


def test_item_offsets_and_sizes_of_other_lengths(docs, tmp_path):
    doc = _edit(docs, "save")
    assert len(doc["trace"]["items"][0]["offsets"]) == 2
    doc["trace"]["items"][0]["sizes"] = doc["trace"]["items"][0]["sizes"][:1]
    assert "has 2 offsets but 1 sizes" in _refused(doc, tmp_path, "trace.items[0]")


@pytest.mark.parametrize("field", ["sizes", "global_size"])
def test_an_item_box_over_max_count_elements(docs, tmp_path, field):
    doc = _edit(docs, "save")
    doc["trace"]["items"][0][field] = [2**27, 2**26 + 1]  # one row over 2**53 elements
    _refused(doc, tmp_path, f"trace.items[0].{field}")


def test_a_box_of_exactly_max_count_elements_is_accepted(docs, tmp_path):
    doc = _edit(docs, "load")
    doc["trace"]["reads"][0]["lengths"] = [2**27, 2**26]
    assert 2**27 * 2**26 == MAX_COUNT
    assert _load(doc, tmp_path).trace.reads[0].lengths == (2**27, 2**26)


def test_a_timing_that_is_not_finite(docs, tmp_path):
    """JSON cannot carry one (the decoder refuses 1e400); a trace built in memory can."""
    import dataclasses

    from dcpviz.core.trace_validate import validate_trace

    trace = _load(docs["save"], tmp_path).trace
    validate_trace(trace, "save")
    with pytest.raises(dcpviz.DcpvizError, match=r"trace.timings\['value_digests'\] is inf"):
        validate_trace(
            dataclasses.replace(trace, timings=(("value_digests", float("inf")),)), "save"
        )


def test_a_value_digest_of_a_rank_outside_the_world(docs, tmp_path):
    doc = _edit(docs, "save")
    assert doc["trace"]["value_digests"]
    doc["trace"]["value_digests"][0]["rank"] = 2
    _refused(doc, tmp_path, "trace.value_digests[].rank: rank 2 is not below world_size 2")


def test_a_dedup_alternative_with_counts_for_another_world(docs, tmp_path):
    doc = _edit(docs, "save")
    doc["trace"]["dedup_alternative"] = {
        "lowest_rank": True,
        "rank_items": [1, 2],
        "rank_nbytes": [4, 8],
    }
    _load(doc, tmp_path)
    doc["trace"]["dedup_alternative"] = {
        "lowest_rank": True,
        "rank_items": [1, 2],
        "rank_nbytes": [4],
    }
    _refused(doc, tmp_path, "trace.dedup_alternative has 2 item counts and 1 byte counts")
    doc["trace"]["dedup_alternative"] = {"lowest_rank": True, "rank_items": [1], "rank_nbytes": [4]}
    _refused(doc, tmp_path, "trace.dedup_alternative")


def test_a_saved_scenario_whose_mesh_is_not_its_world(docs, tmp_path):
    doc = _edit(docs, "load")
    doc["trace"]["saved_scenario"]["mesh"] = [3]
    _refused(doc, tmp_path, "trace.saved_scenario.mesh [3] holds 3 ranks but world_size is 2")


def test_more_wanted_lists_than_ranks(docs, tmp_path):
    doc = _edit(docs, "load")
    doc["trace"]["wanted_by_rank"].append([0])
    _refused(doc, tmp_path, "trace.wanted_by_rank has 4 entries but world_size is 3")


@pytest.mark.parametrize("where", ["size", "chunk"])
def test_a_wanted_box_over_max_count_elements(docs, tmp_path, where):
    doc = _edit(docs, "load")
    big = [2**27, 2**26 + 1]
    if where == "size":
        doc["trace"]["wanted"][0]["size"] = big
        _refused(doc, tmp_path, "trace.wanted[0].size")
    else:
        doc["trace"]["wanted"][0]["chunks"][0]["sizes"] = big
        _refused(doc, tmp_path, "trace.wanted[0].chunks[0].sizes")


def test_reads_whose_boxes_differ_in_length_or_are_too_big(docs, tmp_path):
    doc = _edit(docs, "load")
    assert len(doc["trace"]["reads"][0]["lengths"]) == 2
    doc["trace"]["reads"][0]["lengths"] = doc["trace"]["reads"][0]["lengths"][:1]
    _refused(
        doc, tmp_path, "trace.reads[0]: dest_offsets, storage_offsets and lengths differ in length"
    )
    doc = _edit(docs, "load")
    doc["trace"]["reads"][0]["lengths"] = [2**27, 2**26 + 1]
    _refused(doc, tmp_path, "trace.reads[0].lengths")


def test_a_mismatch_on_a_rank_outside_the_world(docs, tmp_path):
    doc = _edit(docs, "mismatch")
    doc["trace"]["mismatches"][0]["ranks"] = [2]
    _refused(doc, tmp_path, "trace.mismatches[].ranks: rank 2 is not below world_size 2")


def test_a_trace_of_the_other_kind(docs, tmp_path):
    from dcpviz.core.trace_validate import validate_trace

    trace = _load(docs["save"], tmp_path).trace
    with pytest.raises(
        dcpviz.DcpvizError, match="trace.kind is 'save' but the file says it is a 'load' trace"
    ):
        validate_trace(trace, "load")


def test_saved_chunks_outside_their_tensor_or_of_another_rank(docs, tmp_path):
    doc = _edit(docs, "save")
    tensors = doc["trace"]["metadata"]["tensors"]
    t = next(i for i, t in enumerate(tensors) if len(t["size"]) == 2 and t["size"][0] > 100)
    fqn, rows = tensors[t]["fqn"], tensors[t]["size"][0]
    chunk = tensors[t]["chunks"][0]
    chunk["offsets"], chunk["sizes"] = (
        [rows - 10, 0],
        [20, chunk["sizes"][1]],
    )  # 10 rows past the end
    _refused(doc, tmp_path, f"trace.metadata.tensors[{fqn!r}].chunks[0] lies outside the tensor")
    chunk["offsets"], chunk["sizes"] = (
        [rows - 20, 0],
        [20, chunk["sizes"][1]],
    )  # ends exactly at the end
    _load(doc, tmp_path)
    chunk["offsets"] = [0]
    _refused(
        doc, tmp_path, f"trace.metadata.tensors[{fqn!r}].chunks[0] is not a box of a 2-d tensor"
    )


def test_an_error_on_a_rank_outside_the_world_names_the_field(docs, tmp_path):
    doc = _edit(docs, "save")
    doc["trace"]["errors"] = [
        {"phase": "local", "rank": 2, "exc_type": "ValueError", "message": "x"}
    ]
    _refused(doc, tmp_path, "trace.errors[].rank: rank 2 is not below world_size 2")


# -- the dedup replay's explanation: the rule it states, with tallies the test chooses -----------
def test_why_names_the_tie_then_each_higher_tally_in_order():
    from dcpviz.analysis.save.tables import _FewestWhy

    why = _FewestWhy(None)
    assert why(1, (0, 1, 2, 3), (100, 50, 50, 200), {}) == (
        "rank 1: 50 B = rank 2: 50 B (a tie: the first candidate wins) < rank 0: 100 B < rank 3: 200 B"
    )
    assert why(0, (0, 1), (7, 9), {}) == "rank 0: 7 B < rank 1: 9 B"


def test_why_names_three_higher_tallies_and_counts_the_rest():
    from dcpviz.analysis.save.tables import MAX_WHY_GROUPS, _FewestWhy

    assert MAX_WHY_GROUPS == 3
    why = _FewestWhy(None)
    three = why(0, (0, 1, 2, 3), (1, 2, 3, 4), {})
    assert three == "rank 0: 1 B < rank 1: 2 B < rank 2: 3 B < rank 3: 4 B"
    five = why(0, (0, 1, 2, 3, 4, 5), (1, 2, 3, 4, 5, 6), {})
    assert five == "rank 0: 1 B < rank 1: 2 B < rank 2: 3 B < rank 3: 4 B < 2 more"


def test_why_blames_the_loser_charged_most_beyond_what_it_stores():
    from dcpviz.analysis.save.tables import _FewestWhy, item_columns

    save = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    cols = item_columns(save.trace)
    items = save.trace.items
    shard = next(i for i, it in enumerate(items) if it.fqn == "fc1.weight")
    other = next(i for i, it in enumerate(items) if it.fqn == "fc2.weight")
    # rank 1 was over-charged more than rank 3: rank 1 is named, though rank 3 is the higher rank
    text = _FewestWhy(cols)(0, (0, 1, 3), (0, 10, 20), {1: (900, shard), 3: (100, other)})
    assert text.startswith(
        "rank 0: 0 B < rank 1: 10 B < rank 3: 20 B — rank 1 was charged the whole 190×16 tensor"
    )
    assert "shard of fc1.weight" in text


@pytest.fixture(scope="module")
def hsdp_doc(tmp_path_factory):
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, mesh=(2, 2), recipe="hsdp")
    )
    return json.loads(save.to_json(tmp_path_factory.mktemp("hsdp") / "t.json").read_text())


def _holders(doc, item):
    """Ranks whose global plan holds an item with ``item``'s key (fqn and offsets)."""
    t = doc["trace"]
    key = (t["items"][item]["fqn"], t["items"][item]["offsets"])
    return [
        r
        for r, p in enumerate(t["global_plans"])
        for i in p["items"]
        if (t["items"][i]["fqn"], t["items"][i]["offsets"]) == key
    ]


def test_a_replicated_item_kept_by_no_rank_or_two_has_no_chosen_rank(hsdp_doc, tmp_path):
    """chosen_rank is the one rank whose global plan holds the item, -1 where the trace's global
    plans hold it on no rank or on several (hand-edited here: the test knows which)."""
    t = hsdp_doc["trace"]
    last = max(i for p in t["local_plans"] for i in p["items"])  # the last item any rank planned
    key = (t["items"][last]["fqn"], t["items"][last]["offsets"])
    same = [i for i, it in enumerate(t["items"]) if (it["fqn"], it["offsets"]) == key]
    assert len(_holders(hsdp_doc, last)) == 1
    none = json.loads(json.dumps(hsdp_doc))
    for p in none["trace"]["global_plans"]:
        p["items"] = [i for i in p["items"] if i not in same]
    row = _load(none, tmp_path).dedup.set_index(["fqn", "offsets"]).loc[[(key[0], tuple(key[1]))]]
    assert list(row.chosen_rank) == [-1]
    two = json.loads(json.dumps(hsdp_doc))
    (holder,) = _holders(hsdp_doc, last)
    planners = [r for r, p in enumerate(t["local_plans"]) for i in p["items"] if i in same]
    other = next(r for r in planners if r != holder)
    two["trace"]["global_plans"][other]["items"].append(
        next(i for i in t["local_plans"][other]["items"] if i in same)
    )
    row = _load(two, tmp_path).dedup.set_index(["fqn", "offsets"]).loc[[(key[0], tuple(key[1]))]]
    assert list(row.chosen_rank) == [-1]


def test_an_unrecorded_dedup_option_is_dcps_default(hsdp_doc, tmp_path):
    """A planner whose options lack dedup_save_to_lowest_rank: DCP's default (False), so the
    replay states the fewest-planned-bytes rule and agrees with the plans."""
    import inspect

    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    assert (
        inspect.signature(DefaultSavePlanner).parameters["dedup_save_to_lowest_rank"].default
        is False
    )
    doc = json.loads(json.dumps(hsdp_doc))
    doc["trace"]["planner"]["options"] = [
        o for o in doc["trace"]["planner"]["options"] if o[0] != "dedup_save_to_lowest_rank"
    ]
    d = _load(doc, tmp_path).dedup
    assert len(d) and (d.rule == "fewest planned bytes").all() and d.replay_agrees.all()


def test_without_global_plans_no_item_has_a_chosen_rank(hsdp_doc, tmp_path):
    """A save whose coordinator step never produced plans (global_plans null in the file)."""
    doc = json.loads(json.dumps(hsdp_doc))
    doc["trace"]["global_plans"] = doc["trace"]["final_plans"] = None
    d = _load(doc, tmp_path).dedup
    assert len(d) and (d.chosen_rank == -1).all() and not d.replay_agrees.any()


# -- the safe readers: hand-made pickles and directories, each refused with its reason -------------
def test_metadata_with_a_persistent_reference_is_refused():
    import io
    import pickle

    from dcpviz.engine.checkpoint.reader import read_metadata_bytes

    class Ref(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-0" if obj == "x" else None

    buf = io.BytesIO()
    Ref(buf).dump(["x"])
    with pytest.raises(
        dcpviz.DcpvizError, match="refusing persistent references in 'planted.metadata'"
    ):
        read_metadata_bytes(buf.getvalue(), "'planted.metadata'")


def test_metadata_that_is_not_a_metadata_object_or_not_a_pickle():
    import collections
    import pickle

    from dcpviz.engine.checkpoint.reader import read_metadata_bytes

    with pytest.raises(dcpviz.DcpvizError, match="src holds a OrderedDict, not DCP Metadata"):
        read_metadata_bytes(pickle.dumps(collections.OrderedDict(a=1)), "src")
    with pytest.raises(
        dcpviz.DcpvizError, match=r"src is not a readable DCP metadata file \(UnpicklingError"
    ):
        read_metadata_bytes(b"\x80\x05garbage", "src")


def test_a_torch_dtype_is_admitted_and_other_torch_names_are_not():
    import pickle

    from dcpviz.engine.checkpoint.reader import read_metadata_bytes

    # A dtype (what TensorProperties holds) passes the unpickler: the refusal is then only that
    # the object is not Metadata.
    with pytest.raises(dcpviz.DcpvizError, match="holds a dtype, not DCP Metadata"):
        read_metadata_bytes(pickle.dumps(torch.bfloat16), "src")
    with pytest.raises(dcpviz.DcpvizError, match="refusing to unpickle torch.zeros from src"):
        read_metadata_bytes(b"ctorch\nzeros\n.", "src")  # GLOBAL torch.zeros, STOP


def test_read_metadata_names_each_wrong_path(tmp_path):
    from dcpviz.engine.checkpoint.reader import read_metadata

    (tmp_path / "file").write_text("x")
    with pytest.raises(dcpviz.DcpvizError, match=r"is a file, not a checkpoint directory"):
        read_metadata(tmp_path / "file")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / ".metadata").write_bytes(b"x")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".metadata").symlink_to(tmp_path / "outside" / ".metadata")
    with pytest.raises(
        dcpviz.DcpvizError, match=r"\.metadata of .*ckpt.* points outside the checkpoint directory"
    ):
        read_metadata(tmp_path / "ckpt")


def test_a_storage_record_outside_the_checkpoint_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    path = tmp_path / "ckpt"
    dcp.save({"w": torch.ones(4)}, checkpoint_id=path)
    from dcpviz.engine.checkpoint.reader import _check_storage_paths, read_metadata

    md = read_metadata(path)
    _check_storage_paths(path, md)
    ((index, info),) = list(md.storage_data.items())
    md.storage_data[index] = type(info)(
        relative_path="/etc/passwd", offset=info.offset, length=info.length
    )
    with pytest.raises(
        dcpviz.DcpvizError,
        match=r"entry 'w' points outside the checkpoint directory \('/etc/passwd'\)",
    ):
        _check_storage_paths(path, md)
    md.storage_data[index] = type(info)(
        relative_path="../x.distcp", offset=info.offset, length=info.length
    )
    with pytest.raises(dcpviz.DcpvizError, match=r"entry 'w' \('../x.distcp'\) points outside"):
        _check_storage_paths(path, md)


def test_a_byte_io_record_is_read_from_the_start_of_its_stream():
    import io

    from dcpviz.engine.checkpoint.byteio import load_byte_io, sanitized_stream

    buf = io.BytesIO()
    torch.save({"step": 7}, buf)  # the stream is left at its end, as a reader may hand it over
    assert load_byte_io(buf, "entry") == {"step": 7}
    out = sanitized_stream(buf, "entry")
    assert out.tell() == 0 and torch.load(out, weights_only=True) == {"step": 7}
    assert load_byte_io(buf.getvalue(), "entry") == {"step": 7}


def test_a_refused_builtin_is_named_with_its_module():
    import io
    import pickle

    from dcpviz.engine.checkpoint.byteio import load_byte_io

    class Evil:
        def __reduce__(self):
            return (eval, ("1",))

    # A plain pickle (torch names the global in its message, without "builtins.") and a
    # torch.save archive (torch's static scan names it): both name builtins.eval.
    saved = io.BytesIO()
    torch.save(Evil(), saved)
    for data in (pickle.dumps(Evil(), protocol=2), saved.getvalue()):
        with pytest.raises(
            dcpviz.DcpvizError,
            match=r"refusing to load entry: unpickling it would build builtins\.eval,",
        ):
            load_byte_io(data, "entry")
    with pytest.raises(
        dcpviz.DcpvizError, match=r"refusing to load entry: it is not a value torch's weights-only"
    ):
        load_byte_io(b"not a pickle", "entry")


def test_candidate_planned_bytes_are_dcps_running_tallies(hsdp_doc, tmp_path):
    """Each row's tallies, recomputed by the test the way DCP's dedup_save_plans counts (keys in
    the order first planned, rank then plan order; the rank DCP's global plans kept is charged
    tensor_storage_size(), or 1 for a non-tensor)."""
    save = _load(hsdp_doc, tmp_path)
    t = save.trace
    key = lambda i: (t.items[i].fqn, tuple(t.items[i].offsets or ()))  # noqa: E731
    kept = {key(i): r for r, p in enumerate(t.global_plans) for i in p.items}
    order: dict = {}
    for plan in t.local_plans:
        for i in plan.items:
            order.setdefault(key(i), i)
    tally = [0] * t.scenario.world_size
    expected = {}
    for k, i in order.items():
        cands = sorted({r for r, p in enumerate(t.local_plans) for j in p.items if key(j) == k})
        if len(cands) > 1:
            expected[k] = tuple(tally[c] for c in cands)
        tally[kept[k]] += t.items[i].dcp_size or 1
    d = save.dedup
    assert {(f, o): b for f, o, b in zip(d.fqn, d.offsets, d.candidate_planned_bytes)} == expected


def test_an_item_planned_twice_by_one_rank_alone_is_no_dedup(docs, tmp_path):
    """The dedup table has one row per item planned by more than one rank; one rank listing
    an item twice (hand-edited) is not two ranks."""
    doc = _edit(docs, "save")  # FSDP: each rank plans its own shards alone
    t = doc["trace"]
    before = _load(doc, tmp_path).dedup
    planned = {}
    for r, p in enumerate(t["local_plans"]):
        for i in p["items"]:
            planned.setdefault(
                (t["items"][i]["fqn"], tuple(t["items"][i]["offsets"] or ())), set()
            ).add(r)
    alone = next(
        i
        for i in t["local_plans"][0]["items"]
        if planned[(t["items"][i]["fqn"], tuple(t["items"][i]["offsets"] or ()))] == {0}
    )
    t["local_plans"][0]["items"].append(alone)
    after = _load(doc, tmp_path).dedup
    assert list(after.fqn) == list(before.fqn) and t["items"][alone]["fqn"] not in set(
        after.fqn
    ) - set(before.fqn)


def test_the_safe_readers_messages_in_full(tmp_path):
    """Each refusal says what it refused and what to do (README: an error names the input and the
    fix), word for word."""
    import pickle
    import re

    from dcpviz.engine.checkpoint.reader import read_metadata, read_metadata_bytes

    def refused(fn, *args):
        with pytest.raises(dcpviz.DcpvizError) as err:
            fn(*args)
        return str(err.value)

    assert refused(read_metadata_bytes, b"ctorch\nzeros\n.", "src") == (
        "refusing to unpickle torch.zeros from src: a DCP .metadata file only holds checkpoint metadata "
        "classes. The file may be malicious or not a DCP checkpoint; do not open it with "
        "torch.distributed.checkpoint either."
    )
    assert re.fullmatch(
        r"<bytes> is not a readable DCP metadata file \(UnpicklingError: .*\)\. It may be "
        r"truncated or corrupt; re-save the checkpoint\.",
        refused(read_metadata_bytes, b"\x80\x05junk"),
    )
    assert refused(read_metadata_bytes, pickle.dumps(3)) == "<bytes> holds a int, not DCP Metadata."
    missing = tmp_path / "nope"
    assert (
        refused(read_metadata, missing) == f"checkpoint directory {str(missing)!r} does not exist."
    )
    (tmp_path / "file").write_text("x")
    assert refused(read_metadata, tmp_path / "file") == (
        f"{str(tmp_path / 'file')!r} is a file, not a checkpoint directory. Pass the directory that dcp.save "
        "wrote (it contains .metadata and __*_*.distcp files)."
    )
    (tmp_path / "empty").mkdir()
    assert refused(read_metadata, tmp_path / "empty") == (
        f"{str(tmp_path / 'empty')!r} is not a DCP checkpoint: it has no .metadata file. Pass the directory "
        "that dcp.save(..., checkpoint_id=DIR) wrote; a save that crashed before finishing leaves none."
    )
    (tmp_path / "empty" / ".metadata").mkdir()  # a folder named .metadata is no file either
    assert "it has no .metadata file" in refused(read_metadata, tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ".metadata").write_bytes(b"\x80\x05junk")
    assert refused(read_metadata, tmp_path / "bad").startswith(
        f"{str(tmp_path / 'bad' / '.metadata')!r} is not a readable DCP metadata file"
    )


def test_storage_records_by_hand(tmp_path):
    """Storage records that name a file outside the directory, keyed by a MetadataIndex or by
    anything else, with or without a path; a checkpoint of no storage record passes."""
    from collections import namedtuple
    from types import SimpleNamespace as NS

    from dcpviz.engine.checkpoint.reader import _check_storage_paths

    Index = namedtuple("Index", "fqn")

    def refused(md):
        with pytest.raises(dcpviz.DcpvizError) as err:
            _check_storage_paths(tmp_path, md)
        return str(err.value)

    assert refused(NS(storage_data={Index("w"): NS(relative_path="/abs/x")})) == (
        "entry 'w' points outside the checkpoint directory ('/abs/x'); refusing to read it."
    )
    assert refused(NS(storage_data={"plain-key": NS(relative_path="../up")})).startswith(
        "entry 'plain-key' ('../up') points outside the checkpoint directory"
    )
    _check_storage_paths(tmp_path, NS(storage_data={Index("w"): NS(relative_path="__0_0.distcp")}))
    _check_storage_paths(
        tmp_path, NS(storage_data={Index("w"): NS()})
    )  # no path: the directory itself
    _check_storage_paths(tmp_path, NS(storage_data=None))
    _check_storage_paths(tmp_path, NS())


# -- the dedup replay on real saves (DCP's own planner, one process): tallies and charge notes
# worked out by hand from DCP's rule (dedup_save_plans: fewest planned bytes, a tie to the
# first candidate, the kept rank charged ``tensor_storage_size() or 1``) ----------------------
class _EmptyFirst(torch.nn.Module):
    """A zero-size parameter planned before a 16-byte one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.empty(0))
        self.b = torch.nn.Parameter(torch.empty(4))


def test_a_zero_size_tensor_is_charged_one_byte_as_dcp_does():
    """DDP on 2 ranks: 'a' (0 elements) ties and goes to rank 0, which DCP charges
    ``0 or 1`` = 1 byte; so 'b' goes to rank 1 (tallies 1 B against 0 B). DCP's global plan
    (chosen_rank) says so; the replay must charge the same to agree."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model=_EmptyFirst, world_size=2, recipe="replicate"), fast=False
    )
    assert [(it.fqn, it.dcp_size) for it in save.trace.items] == [("a", 0), ("b", 16)]
    d = save.dedup
    assert list(d.fqn) == ["a", "b"] and list(d.chosen_rank) == [0, 1]
    assert list(d.candidate_planned_bytes) == [(0, 0), (1, 0)]
    assert list(d.replay_rank) == [0, 1] and d.replay_agrees.all()
    assert list(d.why) == [
        "rank 0: 0 B = rank 1: 0 B (a tie: the first candidate wins)",
        "rank 1: 0 B < rank 0: 1 B",
    ]


def test_a_replicated_save_blames_no_whole_tensor_charge():
    """DDP stores whole tensors: DCP counts exactly the bytes each rank stores (tensor items'
    dcp_size == nbytes), so no rank was charged beyond what it stores and no why says so."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="replicate"), fast=False
    )
    tensors = [it for it in save.trace.items if it.dcp_size is not None]
    assert tensors and all(it.dcp_size == it.nbytes for it in tensors)
    d = save.dedup
    assert len(d) > 2 and list(d.chosen_rank)[:3] == [0, 1, 1]
    assert list(d.why)[:2] == [
        "rank 0: 0 B = rank 1: 0 B (a tie: the first candidate wins)",
        "rank 1: 0 B < rank 0: 11.9 KB",
    ]
    assert not any("charged" in w for w in d.why)


class _Charges(torch.nn.Module):
    """Under HSDP on a 2×2 mesh each parameter is split in two row shards, each planned by the
    two ranks of its replicate group; DCP charges the kept rank the whole tensor."""

    def __init__(self) -> None:
        super().__init__()
        # 2 B counted for a 1 B shard: 1 byte beyond what is stored
        self.u = torch.nn.Parameter(torch.zeros(2, dtype=torch.uint8), requires_grad=False)
        self.big = torch.nn.Parameter(torch.empty(8, 4))  # 128 B counted, 64 B stored
        self.x = torch.nn.Parameter(torch.empty(12, 4))  # 192 B counted, 96 B stored
        self.w = torch.nn.Parameter(torch.empty(6, 4))  # 96 B counted, 48 B stored
        self.z = torch.nn.Parameter(torch.empty(2, 4))


def test_the_charge_note_names_each_losers_largest_overcharge():
    """Shard 0 of each parameter, candidates ranks 0 and 2, by hand (tallies rank 0, rank 2):
    u: tie, rank 0 (2 B, 1 B beyond its 1 B shard); big: rank 2 (0 < 2; rank 0's note: u);
    x: rank 0 (2 < 128); w: rank 2 (128 < 194; rank 0's note: x, 96 B beyond, not u);
    z: rank 0 (194 < 224; rank 2's note: big, 64 B beyond, not w's 48 B that came later)."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model=_Charges, world_size=4, mesh=(2, 2), recipe="hsdp"), fast=False
    )
    d = save.dedup
    d = d[d.candidates == (0, 2)]
    assert list(d.fqn) == ["u", "big", "x", "w", "z"]
    assert list(d.chosen_rank) == [0, 2, 0, 2, 0] and d.replay_agrees.all()
    assert list(d.candidate_planned_bytes) == [(0, 0), (2, 0), (2, 128), (194, 128), (194, 224)]
    assert list(d.why) == [
        "rank 0: 0 B = rank 2: 0 B (a tie: the first candidate wins)",
        "rank 2: 0 B < rank 0: 2 B — rank 0 was charged the whole 2 tensor for a 1 shard of u "
        "(2 B counted, 1 B stored)",
        "rank 0: 2 B < rank 2: 128 B — rank 2 was charged the whole 8×4 tensor for a 4×4 shard "
        "of big (128 B counted, 64 B stored)",
        "rank 2: 128 B < rank 0: 194 B — rank 0 was charged the whole 12×4 tensor for a 6×4 "
        "shard of x (192 B counted, 96 B stored)",
        "rank 0: 194 B < rank 2: 224 B — rank 2 was charged the whole 8×4 tensor for a 4×4 shard "
        "of big (128 B counted, 64 B stored)",
    ]
