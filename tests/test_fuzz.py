"""Fuzz: mutated real traces and checkpoints give a correct result or one DcpvizError.

Hypothesis (derandomized: the same examples every run, bounded counts) mutates real save and
load traces — a value anywhere in the JSON replaced, a key dropped, a list cut or doubled, the
text cut or a byte flipped — and real checkpoints: a field of the unpickled ``.metadata``
replaced, its bytes flipped, a data file cut or spoiled. ``load_trace`` (and its tables),
``dcpviz show`` and ``inspect_checkpoint`` must answer with a result or a DcpvizError: no other
exception, no hang (an alarm stops any example after 20 s), no file written anywhere but the
example's own temporary directory.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import signal
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

import dcpviz
from dcpviz.cli import main
from dcpviz.engine.checkpoint.reader import METADATA_FILE, read_metadata

FUZZ = dict(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Tokens that json.dumps cannot write (or writes slowly); spliced into the text afterwards.
_SPLICE = {
    '"@huge"': "9" * 5000,
    '"@deep"': "[" * 100_000 + "]" * 100_000,
    '"@bigfloat"': "1e400",
}
_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**20, 2**31, 2**53 + 1, 2**63, 2**64, 10**9, 10**12, *_SPLICE]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e40, -0.0, 0.5]),
    st.text(max_size=12),
    st.sampled_from(
        ["[bold red]fc1[/]x", "sched[/warmup].x", "../../etc/passwd", "save", "load", ""]
    ),
    st.lists(st.integers(-3, 10**6), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(-3, 3), max_size=3),
)


def _alike(value: Any) -> st.SearchStrategy:
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(
            st.integers(-2, 2 * abs(value) + 2), st.sampled_from([0, 2**20, 2**53, 2**53 + 1])
        )
    if isinstance(value, float):
        return st.floats(allow_nan=False)
    if isinstance(value, str):
        return st.one_of(
            st.text(max_size=8),
            st.sampled_from(["bogus", "Size", "_C", "[/x]", "SHARD", "BYTE_IO"]),
        )
    if isinstance(value, list):
        return st.lists(st.integers(-1, 300), max_size=max(len(value), 3))
    return _JUNK


@contextmanager
def _alarm(seconds: int):
    """Fail an example that runs longer than ``seconds`` (a hang) instead of stalling the suite."""

    def fire(signum, frame):
        raise TimeoutError(f"example ran over {seconds}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def _sandbox():
    """A fresh temp dir, also the working directory; yields it and checks that the code under
    test wrote nothing else into it (the only place a relative path could land)."""
    old_cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(old_cwd)


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- traces ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trace_docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_traces")
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, mesh=(2, 2), recipe="hsdp")
    )
    load = dcpviz.simulate_load(
        save, target=dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")
    )
    resume = dcpviz.simulate_load(
        save, target=dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
    )
    return [
        json.loads(r.to_json(root / f"{i}.json").read_text())
        for i, r in enumerate((save, load, resume))
    ]


def _descend(draw, doc: Any) -> tuple[Any, Any]:
    """A random (container, key) inside ``doc``, biased towards going deep."""
    parent, key = None, None
    node = doc
    while (
        isinstance(node, (dict, list)) and node and (parent is None or draw(st.integers(0, 5)) > 0)
    ):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        parent, node = node, node[key]
    return parent, key


@st.composite
def mutated_trace(draw, docs: list[dict]) -> str:
    doc = copy.deepcopy(draw(st.sampled_from(docs)))
    for _ in range(draw(st.integers(1, 3))):
        parent, key = _descend(draw, doc)
        if parent is None:
            continue
        action = draw(
            st.sampled_from(["replace", "replace", "alike", "alike", "drop", "cut", "double"])
        )
        if action == "replace":
            parent[key] = draw(_JUNK)
        elif action == "alike":  # a value of the same type: gets past the decoder, tests the rules
            parent[key] = draw(_alike(parent[key]))
        elif action == "drop":
            del parent[key]
        elif isinstance(parent[key], list):
            value = parent[key]
            parent[key] = value[: len(value) // 2] if action == "cut" else value + value
    text = json.dumps(doc)
    for token, raw in _SPLICE.items():
        text = text.replace(token, raw)
    if draw(st.integers(0, 9)) == 0:  # damage the text itself
        at = draw(st.integers(0, len(text) - 1))
        text = (
            text[:at]
            if draw(st.booleans())
            else text[:at] + draw(st.sampled_from('{}[],:"\\x0')) + text[at + 1 :]
        )
    return text


def _use(result) -> None:
    """Everything a user reads off a result: summary, repr, every table."""
    _ = result.summary, repr(result), result.errors
    names = (
        (
            "write_items",
            "dedup",
            "rank_volume",
            "chunks",
            "tensors",
            "tensor_groups",
            "phase_changes",
            "phase_volume",
            "storage",
            "files",
            "storage_volume",
        )
        if result.kind == "save"
        else ("read_items", "rank_volume", "resharding", "mismatches", "hints", "hints_table")
    )
    for name in names:
        getattr(result, name)


@settings(max_examples=250, **FUZZ)
@given(data=st.data())
def test_fuzz_traces(trace_docs, data):
    text = data.draw(mutated_trace(trace_docs), label="trace text")
    with _sandbox() as root, _alarm(20):
        path = root / "t.json"
        path.write_text(text)
        before = _listing(root)
        try:
            result = dcpviz.load_trace(path)
            event("trace read")
        except dcpviz.DcpvizError:
            result = None
            event("trace refused")
        if result is not None:
            _use(result)
        with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
            assert main(["show", str(path)]) in (
                0,
                1,
                2,
            )  # 1: the trace shows a problem; 2: one "dcpviz: error:" line
        assert _listing(root) == before


# -- checkpoints ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch.distributed.checkpoint as dcp

    path = tmp_path_factory.mktemp("fuzz_ckpt") / "ckpt"
    state = {
        "w": torch.arange(24, dtype=torch.float32).reshape(4, 6),
        "b": torch.ones(3, dtype=torch.bfloat16),
        "scalar": torch.tensor(2.0),
        "step": 7,
        "nested": {"lr": 0.1},
    }
    dcp.save(state, checkpoint_id=str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint_metadata(checkpoint):
    return read_metadata(checkpoint)


_PICKLE_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["float32", "../x.distcp", "sub/../__0_0.distcp", "/etc/passwd"]),
    st.lists(st.integers(-3, 100), max_size=4).map(tuple),
    st.lists(st.integers(0, 100), max_size=4).map(torch.Size),
    st.lists(st.integers(-3, 100), max_size=4),
    st.sampled_from([torch.float32, torch.int8, torch.strided]),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _children(obj: Any) -> list[tuple[str, Any]]:
    """(how to reach it, value) for each part of an unpickled metadata object worth mutating."""
    if isinstance(obj, dict):
        return [("value", k) for k in obj] + [("key", k) for k in obj]
    if isinstance(obj, list):
        return [("item", i) for i in range(len(obj))]
    if hasattr(obj, "__dict__") and not isinstance(obj, (torch.dtype, type)):
        return [("attr", name) for name in vars(obj)]
    return []


def _get(obj: Any, how: str, where: Any) -> Any:
    return {
        "value": lambda: obj[where],
        "key": lambda: where,
        "item": lambda: obj[where],
        "attr": lambda: getattr(obj, where),
    }[how]()


def _set(obj: Any, how: str, where: Any, value: Any) -> None:
    if how in ("value", "item"):
        obj[where] = value
    elif how == "key":
        obj[value if _hashable(value) else repr(value)] = obj.pop(where)
    else:
        object.__setattr__(obj, where, value)  # MetadataIndex is a frozen dataclass


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@st.composite
def metadata_mutation(draw, md: Any) -> Any:
    md = copy.deepcopy(md)
    for _ in range(draw(st.integers(1, 2))):
        obj, step = md, None
        while True:
            kids = _children(obj)
            if not kids:
                break
            how, where = draw(st.sampled_from(kids))
            if step is not None and draw(st.integers(0, 3)) == 0:
                break
            step = (obj, how, where)
            obj = _get(obj, how, where)
        if step is not None:
            _set(*step, draw(_PICKLE_JUNK))
    return md


@st.composite
def checkpoint_damage(draw, files: list[str]) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["metadata", "metadata", "metadata", "metadata bytes", "data"]))
    if kind == "data":
        name = draw(st.sampled_from(files))
        return kind, (
            name,
            draw(st.sampled_from(["cut", "flip", "delete", "append"])),
            draw(st.integers(0, 10**6)),
            draw(st.binary(min_size=1, max_size=8)),
        )
    if kind == "metadata bytes":
        return kind, (
            draw(st.integers(0, 10**6)),
            draw(st.binary(min_size=0, max_size=4)),
            draw(st.booleans()),
        )
    return kind, None


def _damage_file(path: Path, op: str, at: int, junk: bytes) -> None:
    data = path.read_bytes()
    at = at % max(len(data), 1)
    if op == "delete":
        path.unlink()
    elif op == "cut":
        path.write_bytes(data[:at])
    elif op == "flip":
        path.write_bytes(data[:at] + junk + data[at + len(junk) :])
    else:
        path.write_bytes(data + junk)


@settings(max_examples=200, **FUZZ)
@given(data=st.data(), verify=st.sampled_from(["headers", "full", "none"]))
def test_fuzz_checkpoints(checkpoint, checkpoint_metadata, data, verify):
    files = sorted(p.name for p in checkpoint.iterdir() if p.suffix == ".distcp")
    kind, args = data.draw(checkpoint_damage(files), label="damage")
    with _sandbox() as root, _alarm(20):
        ckpt = root / "ckpt"
        shutil.copytree(checkpoint, ckpt)
        if kind == "metadata":
            new_md = data.draw(metadata_mutation(checkpoint_metadata), label="metadata")
            try:
                blob = pickle.dumps(new_md)
            except Exception:  # e.g. memory_format=None: TensorProperties.__getstate__ refuses it
                reject()  # no writer can produce it; "metadata bytes" covers arbitrary bytes
            (ckpt / METADATA_FILE).write_bytes(blob)
        elif kind == "metadata bytes":
            at, junk, cut = args
            _damage_file(
                ckpt / METADATA_FILE, "cut" if cut and not junk else "flip", at, junk or b"\x00"
            )
        else:
            name, op, at, junk = args
            _damage_file(ckpt / name, op, at, junk)
        before = _listing(root)
        try:
            info = dcpviz.inspect_checkpoint(ckpt, verify=verify)
            event(f"{kind}: checkpoint read")
        except dcpviz.DcpvizError:
            info = None
            event(f"{kind}: checkpoint refused")
        if info is not None:
            _ = info.chunks, info.storage, info.files, info.totals
        assert _listing(root) == before


@st.composite
def plausible_trace(draw, docs: list[dict]) -> str:
    """A mutation that keeps each value's type (so most get past the decoder): what validation
    lets through must render everywhere."""
    doc = copy.deepcopy(draw(st.sampled_from(docs)))
    for _ in range(draw(st.integers(1, 3))):
        parent, key = _descend(draw, doc)
        if parent is None:
            continue
        action = draw(st.sampled_from(["alike", "alike", "alike", "cut", "double"]))
        if action == "alike":
            parent[key] = draw(_alike(parent[key]))
        elif isinstance(parent[key], list):
            value = parent[key]
            parent[key] = value[: len(value) // 2] if action == "cut" else value + value
    return json.dumps(doc)


@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_fuzz_traces_that_pass_validation_render_everywhere(trace_docs, data):
    """Issue 20: tables, checks, views, report, explorer (every tab), show and check — every
    one of them works on any trace that load_trace accepts."""
    from render_helpers import render_everywhere

    text = data.draw(plausible_trace(trace_docs), label="trace text")
    with _sandbox() as root, _alarm(60):
        path = root / "t.json"
        path.write_text(text)
        try:
            result = dcpviz.load_trace(path)
        except dcpviz.DcpvizError:
            event("trace refused")
            return
        event("trace read")
        render_everywhere(result, path, root)
