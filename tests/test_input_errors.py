"""Wrong arguments are one DcpvizError saying what is wanted; user strings print literally."""

import json

import pytest

import dcpviz
import dcpviz.views as V
from dcpviz.cli import main
from dcpviz.core.errors import UserCodeError


@pytest.fixture(scope="module")
def save():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, mesh=(2, 2), recipe="hsdp")
    )


@pytest.fixture(scope="module")
def load(save):
    return dcpviz.simulate_load(
        save, target=dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
    )


# -- real runs: checked before any directory or process exists ------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": 0}, {"timeout": -1}, {"timeout": float("nan")}, {"start_method": "bogus"}],
)
def test_run_options(tmp_path, kwargs):
    sc = dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
    name = next(iter(kwargs))
    with pytest.raises(dcpviz.DcpvizError, match=name):
        dcpviz.run_save(sc, tmp_path / "ckpt", **kwargs)
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(dcpviz.DcpvizError, match=name):
        dcpviz.run_load(tmp_path / "ckpt", sc, **kwargs)


def recipe_returning_a_number(model, mesh):
    return 3


def test_recipe_must_return_a_module():
    sc = dcpviz.Scenario(model="mlp", world_size=2, recipe=recipe_returning_a_number)
    with pytest.raises(
        UserCodeError, match="recipe_returning_a_number returned a value of type int"
    ):
        dcpviz.simulate_save(sc)


# -- outputs: a directory is not a file -----------------------------------------------------
def test_outputs_into_a_directory(save, tmp_path):
    with pytest.raises(dcpviz.DcpvizError, match="is a directory"):
        save.to_json(tmp_path)
    with pytest.raises(dcpviz.DcpvizError, match="is a directory"):
        dcpviz.report(save, tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a-file").write_text("")
    with pytest.raises(dcpviz.DcpvizError, match="cannot create the folder"):
        save.to_json(tmp_path / "a-file" / "t.json")
    (tmp_path / "a-file").unlink()
    out = tmp_path / "out"
    out.mkdir()
    assert main(["simulate", "-W", "2", "--recipe", "fsdp", "--quiet", "--trace", str(out)]) == 2
    assert list(tmp_path.iterdir()) == [out] and list(out.iterdir()) == []


# -- views ----------------------------------------------------------------------------------
def test_views_name_what_they_need(save, load):
    with pytest.raises(dcpviz.DcpvizError, match="fqn=None"):
        V.chunk_layout(save, None)
    with pytest.raises(dcpviz.DcpvizError, match="compare= needs a save result"):
        V.rank_volume(save, compare=load)
    with pytest.raises(dcpviz.DcpvizError, match="needs a save result"):
        V.chunk_layout(load, "fc1.weight")
    with pytest.raises(dcpviz.DcpvizError, match="needs a load result"):
        V.read_volume(save)
    with pytest.raises(dcpviz.DcpvizError, match="rank=True"):
        V.read_layout(load, load.trace.saved.tensors[0].fqn, True)


def test_resharding_by_file_needs_a_checkpoint_on_disk(load):
    with pytest.raises(dcpviz.DcpvizError, match="needs a checkpoint on disk"):
        load.resharding_matrix(by="file")
    with pytest.raises(dcpviz.DcpvizError, match="needs a checkpoint on disk"):
        V.resharding(load, by="file")


# -- the terminal: names are printed, never read as rich markup -----------------------------
def _renamed(result, tmp_path, old: str, new: str, model: str) -> str:
    text = result.to_json(tmp_path / "orig.json").read_text()
    assert f'"{old}"' in text
    text = text.replace(f'"{old}"', json.dumps(new)).replace(
        '"model":"mlp"', f'"model":{json.dumps(model)}'
    )
    path = tmp_path / "marked.json"
    path.write_text(text)
    return str(path)


def test_show_prints_markup_literally(save, tmp_path, capsys):
    dedup_key = save.dedup["fqn"].iloc[0]
    path = _renamed(save, tmp_path, dedup_key, "sched[/warmup].x", "[bold red]fc1[/]x")
    assert main(["show", path]) == 0
    out = capsys.readouterr().out
    assert "sched[/warmup].x" in out and "[bold red]fc1[/]x" in out


def test_show_load_prints_markup_literally(save, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # a wide terminal: no cell folds the key
    mismatched = dcpviz.simulate_load(
        save, target=dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")
    )
    key = mismatched.trace.mismatches[0].fqn
    path = _renamed(mismatched, tmp_path, key, "sched[/warmup].x", "[bold red]fc1[/]x")
    assert main(["show", path]) == 1  # a load that breaks: show is a gate too
    out = capsys.readouterr().out
    assert "sched[/warmup].x" in out and "[bold red]fc1[/]x" in out
