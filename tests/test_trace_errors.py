"""A malformed trace file is one DcpvizError naming the field and the file, in bounded time and
memory; nothing it says is trusted afterwards."""

import json
import time

import pytest

import dcpviz
from dcpviz.core.trace import VERSION


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """Plain JSON of a real save trace and a real load trace (W=4, 2x2 HSDP)."""
    root = tmp_path_factory.mktemp("traces")
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, mesh=(2, 2), recipe="hsdp")
    )
    load = dcpviz.simulate_load(
        save, target=dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
    )
    return {
        "save": json.loads(save.to_json(root / "save.json").read_text()),
        "load": json.loads(load.to_json(root / "load.json").read_text()),
    }


def _fails(tmp_path, text: str, *needles: str, seconds: float = 10.0) -> str:
    path = tmp_path / "bad.json"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(dcpviz.DcpvizError) as info:
        dcpviz.load_trace(path)
    assert time.perf_counter() - t0 < seconds
    message = str(info.value)
    assert "bad.json" in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _mutated(doc: dict, change) -> str:
    doc = json.loads(json.dumps(doc))
    change(doc["trace"])
    return json.dumps(doc)


def test_deep_nesting_is_an_error(tmp_path):
    depth = 100_000
    _fails(
        tmp_path,
        '{"schema": "dcpviz.trace", "version": 1, "kind": "save", "trace": '
        + "[" * depth
        + "]" * depth
        + "}",
    )
    _fails(tmp_path, "[" * depth + "]" * depth)


def test_huge_integers_are_errors(tmp_path, docs):
    huge = "9" * 5000
    text = json.dumps(docs["save"]).replace('"nbytes":', f'"nbytes": {huge}, "x":', 1)
    _fails(tmp_path, text, "nbytes")
    _fails(
        tmp_path,
        f'{{"schema": "dcpviz.trace", "version": {huge}, "kind": "save", "trace": {{}}}}',
        "version",
    )


@pytest.mark.parametrize("index", [10**6, -1])
def test_item_positions_out_of_range(tmp_path, docs, index):
    def change(t):
        t["local_plans"][1]["items"][0] = index

    _fails(tmp_path, _mutated(docs["save"], change), "local_plans")
    _fails(tmp_path, _mutated(docs["load"], change), "local_plans")


@pytest.mark.parametrize("kind", ["save", "load"])
@pytest.mark.parametrize(
    "field,value",
    [
        ("mesh", [0, 2]),
        ("world_size", 0),
        ("world_size", -4),
        ("world_size", 10**12),
        ("world_size", 10**9),
        ("mesh", [3, 3]),
    ],
)
def test_impossible_worlds(tmp_path, docs, kind, field, value):
    def change(t):
        t["scenario"][field] = value

    _fails(tmp_path, _mutated(docs[kind], change), "scenario", seconds=5.0)


def test_mesh_must_hold_the_world(tmp_path, docs):
    def change(t):
        t["scenario"]["mesh"] = [4, 2]

    _fails(tmp_path, _mutated(docs["save"], change), "trace.scenario.mesh", "world_size")


@pytest.mark.parametrize("nbytes", [1e40, 10**40, 2**63, -1])
def test_absurd_byte_counts(tmp_path, docs, nbytes):
    def change(t):
        t["items"][0]["nbytes"] = nbytes

    _fails(tmp_path, _mutated(docs["save"], change), "trace.items[0].nbytes")


@pytest.mark.parametrize("kind", ["save", "load"])
def test_one_local_plan_per_rank(tmp_path, docs, kind):
    def change(t):
        t["local_plans"] = t["local_plans"][:1]

    _fails(tmp_path, _mutated(docs[kind], change), "trace.local_plans", "world_size")


@pytest.mark.parametrize("version", [0, -1, VERSION + 1])
def test_only_the_current_version(tmp_path, docs, version):
    doc = dict(docs["save"], version=version)
    _fails(tmp_path, json.dumps(doc), "version")


def test_kind_inside_must_match(tmp_path, docs):
    def change(t):
        t["kind"] = "load"

    _fails(tmp_path, _mutated(docs["save"], change), "kind")


def test_load_trace_positions(tmp_path, docs):
    def wanted(t):
        t["wanted_by_rank"][0] = [len(t["wanted"])]

    _fails(tmp_path, _mutated(docs["load"], wanted), "trace.wanted_by_rank[0]")

    def rank(t):
        t["errors"] = [{"phase": "local", "rank": 7, "exc_type": "X", "message": "m"}]

    _fails(tmp_path, _mutated(docs["load"], rank), "trace.errors")

    def chunk(t):
        t["saved"]["tensors"][0]["chunks"][0]["offsets"] = [10**6] * len(
            t["saved"]["tensors"][0]["size"]
        )

    _fails(tmp_path, _mutated(docs["load"], chunk), "trace.saved.tensors")


def test_real_traces_still_read(tmp_path, docs):
    for kind in ("save", "load"):
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps(docs[kind]))
        assert dcpviz.load_trace(path).kind == kind


def test_trace_reading_needs_no_torch():
    """The model, its decoder and its rules import neither torch nor plotly (issue 14's core)."""
    import ast
    from pathlib import Path

    root = Path(dcpviz.__file__).parent / "core"
    for name in ("trace.py", "trace_codec.py", "trace_validate.py", "errors.py"):
        tree = ast.parse((root / name).read_text())
        imported = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        imported |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
        }
        relative = {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
        }
        assert not imported & {"torch", "plotly", "pandas"}, (name, imported)
        assert relative <= {"errors", "trace", "trace_validate", "trace_codec"}, (name, relative)


def test_unknown_dtype_is_a_trace_error(tmp_path, docs):
    """A dtype name this torch lacks is refused when the trace is read, naming the field: the
    tables that size chunks by it would otherwise fail later, on a trace already accepted (the
    fuzzer found a load trace whose summary raised)."""

    def change(t):
        t["metadata"]["tensors"][0]["dtype"] = "bogus"

    _fails(tmp_path, _mutated(docs["save"], change), "trace.metadata.tensors[", "dtype", "'bogus'")


@pytest.mark.parametrize("field", ["saved", "wanted"])
def test_unknown_dtype_in_a_load_trace_is_a_trace_error(tmp_path, docs, field):
    def change(t):
        if field == "saved":
            t["saved"]["tensors"][0]["dtype"] = "{loat32"
        else:
            next(v for v in t["wanted"] if v["dtype"] is not None)["dtype"] = "{loat32"

    _fails(tmp_path, _mutated(docs["load"], change), f"trace.{field}", "'{loat32'")


def test_boxes_too_large_for_a_table(tmp_path, docs):
    def change(t):
        tensor = t["metadata"]["tensors"][0]
        tensor["size"] = [2**53, 2**53]
        tensor["chunks"] = [{"offsets": [0, 0], "sizes": [2**53, 2**53]}]

    _fails(tmp_path, _mutated(docs["save"], change), "trace.metadata.tensors", "2**53 elements")


def test_captured_mesh_may_differ_from_the_group(tmp_path, docs):
    """RecordingSavePlanner records the DTensors' mesh and dcp.save's group, which can differ
    (a save over a sub-group): such a trace still opens."""

    def change(t):
        t["source"] = "capture"
        t["scenario"]["mesh"] = [4, 2]

    path = tmp_path / "captured.json"
    path.write_text(_mutated(docs["save"], change))
    assert dcpviz.load_trace(path).trace.scenario.mesh == (4, 2)
