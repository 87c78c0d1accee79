"""dcpviz.diff / `dcpviz diff` on real saves: identical, renamed, cast, one element changed,
resharded but equal (real gloo runs on 2 and 3 ranks), DCP against safetensors (written by the
safetensors library and by DCP's own Hugging Face writer), a trace against its checkpoint, and
bytes entries compared as bytes without unpickling. Expected values come from real dcp.load."""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from checkpoint_helpers import save_one_process

import dcpviz
from dcpviz.cli import main

warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")


save = save_one_process  # a real single-process dcp.save


def load_plain(path, like: dict) -> dict:
    """Real dcp.load into plain (unsharded) tensors: the independent oracle for values."""
    sd = {k: torch.empty_like(v) for k, v in like.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, checkpoint_id=str(path), no_dist=True)
    return sd


def state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.wq.weight": torch.randn(8, 8, generator=g),
        "layers.0.wk.weight": torch.randn(8, 8, generator=g),
        "layers.0.norm.weight": torch.randn(8, generator=g),
        "emb.weight": torch.randn(16, 4, generator=g),
        "step": torch.tensor(7),
        "ids": torch.arange(12, dtype=torch.int64).reshape(3, 4),
    }


def changed(result) -> dict[str, str]:
    """key -> change, for rows that are not 'same'."""
    c = result.changes
    return {(x or y): ch for x, y, ch in zip(c["fqn"], c["fqn_b"], c["change"]) if ch != "same"}


def cli(*args) -> int:
    return main(["diff", *map(str, args)])


def test_identical(tmp_path):
    sd = state()
    a, b = save(sd, tmp_path / "a"), save({k: v.clone() for k, v in sd.items()}, tmp_path / "b")
    r = dcpviz.diff(a, b, values=True)
    assert r.same and r.exit_code == 0 and changed(r) == {}
    assert set(r.values["status"]) == {"equal"} and len(r.values) == len(sd)
    assert cli(a, b, "--values") == 0 and cli(a, b) == 0


def test_one_element_changed(tmp_path, capsys):
    sd = state()
    sd2 = {k: v.clone() for k, v in sd.items()}
    sd2["emb.weight"][11, 2] += 0.5
    a, b = save(sd, tmp_path / "a"), save(sd2, tmp_path / "b")
    r = dcpviz.diff(a, b, values=True)
    assert r.exit_code == 1 and r.differing == ["emb.weight"]
    row = r.values.set_index("fqn").loc["emb.weight"]
    assert row["differing"] == 1 and row["first_diff"] == (11, 2)
    assert row["max_abs_diff"] == pytest.approx(
        abs(float(sd2["emb.weight"][11, 2] - sd["emb.weight"][11, 2]))
    )
    # without values only the structure is compared: same content as far as it can tell
    assert dcpviz.diff(a, b).exit_code == 0
    # a tolerance above the change makes it equal
    assert dcpviz.diff(a, b, values=True, atol=0.6).exit_code == 0
    assert cli(a, b, "--values", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == 1 and [
        c["fqn"] for c in doc["changes"] if c["change"] == "values differ"
    ] == ["emb.weight"]


def test_cast(tmp_path):
    sd = state()
    sd2 = dict(sd, **{"layers.0.wq.weight": sd["layers.0.wq.weight"].to(torch.bfloat16)})
    a, b = save(sd, tmp_path / "a"), save(sd2, tmp_path / "b")
    r = dcpviz.diff(a, b, values=True)
    assert r.exit_code == 1 and changed(r) == {"layers.0.wq.weight": "dtype"}
    t = r.tensors.set_index("fqn").loc["layers.0.wq.weight"]
    assert (t["dtype_a"], t["dtype_b"]) == ("float32", "bfloat16")
    # the values are compared across dtypes: the rounding is the difference
    expect = (
        (sd["layers.0.wq.weight"].double() - sd2["layers.0.wq.weight"].double()).abs().max().item()
    )
    assert r.values.set_index("fqn").loc["layers.0.wq.weight", "max_abs_diff"] == pytest.approx(
        expect
    )
    assert cli(a, b) == 1


def test_renamed_certain_and_ambiguous(tmp_path):
    sd = state()
    # a certain rename: every key gains a prefix
    a = save(sd, tmp_path / "a")
    b = save({f"model.{k}": v for k, v in sd.items()}, tmp_path / "b")
    r = dcpviz.diff(a, b, values=True)
    assert r.exit_code == 1
    assert set(changed(r).values()) == {"renamed"} and len(changed(r)) == len(sd)
    certain = r.renames[r.renames["certain"]]
    assert sorted(zip(certain["fqn_a"], certain["fqn_b"])) == sorted((k, f"model.{k}") for k in sd)
    assert set(r.values["status"]) == {"equal"}  # renamed keys' values are compared and equal
    # q/k have equal shapes: renamed to q_proj/k_proj, nothing is certain, both are candidates
    sd3 = {
        (
            "layers.0.q_proj.weight"
            if k == "layers.0.wq.weight"
            else "layers.0.k_proj.weight"
            if k == "layers.0.wk.weight"
            else k
        ): v
        for k, v in sd.items()
    }
    c = save(sd3, tmp_path / "c")
    r = dcpviz.diff(a, c)
    assert r.exit_code == 1
    assert changed(r) == {
        "layers.0.wq.weight": "rename?",
        "layers.0.wk.weight": "rename?",
        "layers.0.q_proj.weight": "rename?",
        "layers.0.k_proj.weight": "rename?",
    }
    assert not r.renames["certain"].any() and len(r.renames) == 4
    assert cli(a, c) == 1


def test_keys_only_on_one_side_and_shape(tmp_path):
    sd = state()
    sd2 = {k: v for k, v in sd.items() if k != "step"}
    sd2["emb.weight"] = torch.zeros(17, 4)
    sd2["new.bias"] = torch.zeros(3, dtype=torch.float16)
    r = dcpviz.diff(save(sd, tmp_path / "a"), save(sd2, tmp_path / "b"), values=True)
    assert changed(r) == {"step": "only in A", "new.bias": "only in B", "emb.weight": "shape"}
    assert r.values.set_index("fqn").loc["emb.weight", "status"] == "skipped"


def test_bytes_entries_compared_as_bytes_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = io.BytesIO(pickle.dumps(Evil()))
    sd = {"w": torch.ones(2), "hp": {"lr": 0.1}, "blob": evil}
    a = save(sd, tmp_path / "a")
    b = save(
        {"w": torch.ones(2), "hp": {"lr": 0.2}, "blob": io.BytesIO(evil.getvalue())}, tmp_path / "b"
    )
    r = dcpviz.diff(a, b, values=True)
    assert not marker.exists()
    assert changed(r) == {"hp.lr": "values differ"}
    v = r.values.set_index("fqn")
    assert v.loc["blob", "status"] == "equal" and v.loc["hp.lr", "kind"] == "bytes"


@pytest.fixture(scope="module")
def resharded(tmp_path_factory):
    """The same model saved by real gloo runs on 2 and on 3 ranks (fully_shard: other chunks)."""
    root = tmp_path_factory.mktemp("resharded")
    out = {}
    for w in (2, 3):
        res = dcpviz.run_save(
            dcpviz.Scenario(model="mlp", world_size=w, recipe="fsdp", device="cpu"), root / f"w{w}"
        )
        assert res.ok, res.errors
        out[w] = (res, str(root / f"w{w}"))
    return out


def test_resharded_but_equal(resharded):
    (_, a), (_, b) = resharded[2], resharded[3]
    r = dcpviz.diff(a, b, values=True)
    assert r.exit_code == 0, r.changes
    lay = r.layout.set_index("fqn")
    assert lay.loc["fc1.weight", "chunks_a"] == 2 and lay.loc["fc1.weight", "chunks_b"] == 3
    assert set(changed(r).values()) == {"layout only"}
    # every element of every tensor compared, across chunk boundaries
    tensors = r.values[r.values["kind"] == "tensor"]
    assert (tensors["compared"] == tensors["elements"]).all() and (
        tensors["status"] == "equal"
    ).all()
    assert cli(a, b, "--values") == 0


def test_resharded_one_element_changed(resharded, tmp_path):
    _, a = resharded[2]
    _, b = resharded[3]
    like = {
        k: torch.empty(e.size, dtype=e.properties.dtype)
        for k, e in dcpviz.inspect_checkpoint(a).metadata.state_dict_metadata.items()
        if hasattr(e, "size")
    }
    plain = load_plain(a, like)
    plain["fc1.weight"][100, 3] += 1.0  # row 100: in rank 1's chunk of A, rank 2's... of B
    c = save(plain, tmp_path / "c")
    r = dcpviz.diff(b, c, values=True)
    bytes_keys = {k for k in changed(r) if k.startswith("progress.")}  # not saved in c
    assert {k: ch for k, ch in changed(r).items() if ch != "layout only"} == {
        "fc1.weight": "values differ",
        **dict.fromkeys(bytes_keys, "only in A"),
    }
    assert bytes_keys and r.exit_code == 1
    row = r.values.set_index("fqn").loc["fc1.weight"]
    assert (row["differing"], row["first_diff"]) == (1, (100, 3))
    assert row["max_abs_diff"] == pytest.approx(1.0, abs=1e-6)
    bad = r.regions[(r.regions["fqn"] == "fc1.weight") & (r.regions["differing"] > 0)]
    assert (
        len(bad) == 1
        and bad.iloc[0]["offsets"][0] <= 100 < bad.iloc[0]["offsets"][0] + bad.iloc[0]["sizes"][0]
    )


def test_trace_against_its_checkpoint(resharded, tmp_path):
    res, ck = resharded[2]
    trace = res.to_json(tmp_path / "save.json")
    r = dcpviz.diff(trace, ck, values=True)
    # values asked for, none comparable (a trace holds none): not called the same
    assert r.exit_code == 1 and not r.differing and r.layout["same_boxes"].all()
    assert r.unverified and r.verdict.startswith("not known to be the same")
    assert (r.values["status"] == "skipped").all()
    assert set(r.changes["change"]) == {
        "not compared"
    }  # same chunks, values asked for: none to compare
    assert all("save trace" in d for d in r.changes["detail"])
    # the plan of another layout: same content, other chunks
    assert dcpviz.diff(res, resharded[3][1]).exit_code == 0
    assert cli(trace, ck) == 0
    # ... with --values: the layout is what is known; the detail says why values were not compared
    other = resharded[3][1]
    for values in (False, True):
        r = dcpviz.diff(trace, other, values=values)
        c = r.changes.set_index("fqn")
        moved = ~r.layout.set_index("fqn")["same_boxes"]
        assert moved.any() and r.exit_code == (1 if values else 0) and not r.differing
        assert (c.loc[moved[moved].index, "change"] == "layout only").all()
        assert (
            c.loc[moved[~moved].index, "change"] == ("not compared" if values else "same")
        ).all()
        expect = "values not compared: A is a save trace" if values else "values not compared"
        assert all(
            d.startswith("saved in other chunks; " + expect)
            for d in c.loc[moved[moved].index, "detail"]
        )
    # two checkpoints of other layouts, compared equal: the detail says so
    r = dcpviz.diff(ck, other, values=True)
    details = set(r.changes[r.changes["change"] == "layout only"]["detail"])
    assert details == {"saved in other chunks; same values"}


def test_dcp_against_safetensors(resharded, tmp_path):
    from safetensors.torch import save_file

    _, a = resharded[3]
    like = {
        k: torch.empty(e.size, dtype=e.properties.dtype)
        for k, e in dcpviz.inspect_checkpoint(a).metadata.state_dict_metadata.items()
        if hasattr(e, "size")
    }
    plain = load_plain(a, like)
    folder = tmp_path / "hf"
    folder.mkdir()
    tensors = {k: v for k, v in plain.items() if k.startswith(("fc", "norm"))}
    save_file(dict(list(tensors.items())[:3]), folder / "model-1.safetensors")
    save_file(dict(list(tensors.items())[3:]), folder / "model-2.safetensors")
    r = dcpviz.diff(a, folder, values=True)
    # the safetensors folder holds no progress.* values: those are only in A, tensors equal
    content = {k: ch for k, ch in changed(r).items() if ch != "layout only"}
    assert content and all(
        k.startswith("progress.") and ch == "only in A" for k, ch in content.items()
    )
    v = r.values.set_index("fqn")
    assert (v.loc[list(tensors), "status"] == "equal").all()
    # one element changed in the safetensors copy
    tensors["norm.weight"][1] = 42.0
    save_file(dict(list(tensors.items())[3:]), folder / "model-2.safetensors")
    r = dcpviz.diff(folder, a, values=True)
    assert r.values.set_index("fqn").loc["norm.weight", "first_diff"] == (1,)
    assert "norm.weight" in r.differing and cli(folder, a, "--values") == 1
    # a single file works as well
    assert (
        dcpviz.diff(folder / "model-1.safetensors", a, values=True)
        .values["status"]
        .eq("equal")
        .all()
    )


def test_dcp_against_dcp_hugging_face_writer(tmp_path):
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    sd = {k: v for k, v in state().items() if v.dtype.is_floating_point}
    a = save(sd, tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=HuggingFaceStorageWriter(str(tmp_path / "hf")), no_dist=True)
    r = dcpviz.diff(a, tmp_path / "hf", values=True)
    assert r.exit_code == 0, r.changes
    assert set(r.values["status"]) == {"equal"}


def test_refused_and_bad_inputs(tmp_path, resharded):
    _, a = resharded[2]
    assert cli(a, tmp_path / "missing") == 2
    assert cli(a, a, "--atol", "-1") == 2
    with pytest.raises(dcpviz.DcpvizError):
        dcpviz.diff(a, a, atol=-1)
    # a data file swapped for a link out of the directory is refused, never followed
    import shutil

    ck = tmp_path / "linked"
    shutil.copytree(a, ck)
    outside = tmp_path / "outside.distcp"
    shutil.move(str(ck / "__0_0.distcp"), outside)
    os.symlink(outside, ck / "__0_0.distcp")
    with pytest.raises(dcpviz.DcpvizError, match="outside"):
        dcpviz.diff(a, ck, values=True)
    assert cli(a, ck, "--values") == 2


def test_report_view_and_widget(resharded, tmp_path):
    (_, a), (_, b) = resharded[2], resharded[3]
    r = dcpviz.diff(a, b, values=True)
    path = dcpviz.report(r, tmp_path / "diff.html")
    text = path.read_text()
    assert "same content" in text and "fc1.weight" in text
    fig = dcpviz.views.diff_regions(r, "fc1.weight")
    assert len(fig.data) >= 1
    assert len(dcpviz.views.diff_overview(r).data) >= 1
    app = dcpviz.explore(r)
    assert app.picker.options
