"""A checkpoint in the report, the explorer and `dcpviz check --report`: a DCP directory and a
Hugging Face safetensors folder, each written by DCP's own writer. The figure's bars are checked
against the files on disk (sizes from os.stat; safetensors headers read by the `safetensors`
library), not against dcpviz's own tables alone."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from torch.distributed.checkpoint import HuggingFaceStorageWriter

import dcpviz
from dcpviz.cli import main

STATE = {
    "fc1.weight": torch.arange(12.0).reshape(4, 3),
    "fc1.bias": torch.ones(4),
    "emb": torch.zeros(5, 2),
}


def _save(sd, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, **kw)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    _save(STATE, checkpoint_id=str(root / "dcp"))
    _save(STATE, storage_writer=HuggingFaceStorageWriter(str(root / "hf")))
    _save({**STATE, "hp": 3}, storage_writer=HuggingFaceStorageWriter(str(root / "broken")))
    return root


def _bars(fig) -> dict[str, float]:
    """Bytes per file as the file-layout figure draws them."""
    out: dict[str, float] = {}
    for tr in fig.data:
        for f, x in zip(tr.y, tr.x):
            out[f] = out.get(f, 0) + x
    return out


def test_report_of_a_dcp_directory(folders, tmp_path):
    info = dcpviz.inspect_checkpoint(folders / "dcp")
    page = dcpviz.report(info, tmp_path / "r.html").read_text()
    assert "DCP checkpoint directory" in page and "fc1.weight" in page and "plotly" in page
    bars = _bars(dcpviz.views.file_layout(info))
    # a DCP data file is its records end to end (each a torch.save of one chunk): the bars of a
    # file add up to its size on disk
    on_disk = {p.name: p.stat().st_size for p in (folders / "dcp").glob("*.distcp")}
    assert bars == on_disk


def test_report_and_explorer_of_a_safetensors_folder(folders, tmp_path):
    info = dcpviz.inspect_checkpoint(folders / "hf")
    page = dcpviz.report(info, tmp_path / "r.html").read_text()
    assert "safetensors folder" in page and "headers only" in page
    files = sorted(p.name for p in (folders / "hf").glob("*.safetensors"))
    expected = {}
    for name in files:
        with safe_open(str(folders / "hf" / name), framework="pt") as f:
            expected[name] = sum(
                f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()
            )
    assert _bars(dcpviz.views.file_layout(info)) == expected
    app = dcpviz.explore(info)
    assert [app.tabs.get_title(i) for i in range(3)] == ["Checks", "Files", "Tables"]
    assert _bars(app.layout_fig) == expected
    with pytest.raises(dcpviz.DcpvizError, match="dcpviz.diff"):
        dcpviz.explore(info, compare=info)


def test_check_report_flag(folders, tmp_path, capsys):
    assert main(["check", str(folders / "hf"), "--report", str(tmp_path / "ok.html")]) == 0
    assert "fc1.bias" in (tmp_path / "ok.html").read_text()
    # an unreadable file (a non-tensor value written in front of its header) is data-loss: exit 1,
    # and no report can be drawn from it, which is said
    assert main(["check", str(folders / "broken"), "--report", str(tmp_path / "b.html")]) == 1
    out = capsys.readouterr().out
    assert (
        "safetensors-unreadable" in out
        and "no report" in out
        and not (tmp_path / "b.html").exists()
    )
    assert (
        main(["check", str(folders / "dcp"), "--json", "--report", str(tmp_path / "d.html")]) == 0
    )
    doc = json.loads(capsys.readouterr().out)  # --json stays pure JSON
    assert doc["failing"] is False and Path(tmp_path / "d.html").exists()
