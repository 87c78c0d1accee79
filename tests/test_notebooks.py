"""Every notebook runs top to bottom in a fresh kernel, and shows what it promises."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"

# What each notebook must display (beyond running without error).
EXPECT = {
    "01_tour.ipynb": {WIDGET, PLOTLY},
    "02_planner_behaviour.ipynb": {PLOTLY},
    "03_debug_a_load.ipynb": {PLOTLY},
    "04_capture_your_job.ipynb": {WIDGET},
    "05_a_training_checkpoint.ipynb": {PLOTLY},
    "06_checks.ipynb": {WIDGET},
    "07_diff.ipynb": {PLOTLY},
    "08_export_to_hugging_face.ipynb": {PLOTLY},
    "09_a_4d_job.ipynb": {PLOTLY},
}

# Notebooks whose figures and explorer survive `nbconvert --to html` (they set plotly's renderer to
# add an HTML copy of each figure; the explorer adds a static summary to its display bundle).
EXPORTED = {
    "01_tour.ipynb",
    "02_planner_behaviour.ipynb",
    "03_debug_a_load.ipynb",
    "04_capture_your_job.ipynb",
    "08_export_to_hugging_face.ipynb",
    "09_a_4d_job.ipynb",
}


def _notebooks():
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("name", _notebooks())
def test_notebook_runs_in_a_fresh_kernel(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # Notebooks write only into temporary directories, so they run from their own folder.
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    shown = {
        mime
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        for mime in out.get("data", {})
    }
    missing = EXPECT.get(name, set()) - shown
    assert not missing, f"{name} never displayed {missing}"
    errors = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    if name in EXPORTED:
        assert_export_shows_everything(nb, name)


def _outputs(nb, mime):
    return [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if mime in out.get("data", {})
    ]


def assert_export_shows_everything(nb, name):
    """Exported to HTML (as nbconvert does, without widget state), every figure is drawn and every
    explorer shows its static summary."""
    figures, widgets = _outputs(nb, PLOTLY), _outputs(nb, WIDGET)
    assert all("text/html" in out["data"] for out in figures + widgets), (
        f"{name}: an output has no HTML fallback"
    )
    # JupyterLab saves no widget state unless asked to, and a preview runs no kernel: export without it.
    stateless = nbformat.from_dict(
        {**nb, "metadata": {k: v for k, v in nb.metadata.items() if k != "widgets"}}
    )
    html, _ = HTMLExporter().from_notebook_node(stateless)
    assert html.count('class="plotly-graph-div"') == len(figures), name
    assert html.count('class="dcpviz-static"') == len(widgets), name
    assert html.count("Plotly.newPlot(") >= len(figures), name
    assert "* plotly.js v" in html, (
        f"{name}: plotly.js is not embedded (the export would need a network)"
    )


@pytest.mark.slow
def test_capture_notebook_runs_from_a_copy_of_notebooks_elsewhere(tmp_path):
    """04 finds examples/capture_job.py through the dcpviz it imports, not through its own folder."""
    elsewhere = tmp_path / "somewhere" / "notebooks"
    shutil.copytree(NOTEBOOKS, elsewhere)
    nb = nbformat.read(elsewhere / "04_capture_your_job.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(elsewhere)}}
    ).execute()
    assert not [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert _outputs(nb, WIDGET)


def test_every_notebook_has_parameters_at_the_top():
    for name in _notebooks():
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), (
            f"{name}: first code cell should hold the parameters"
        )
