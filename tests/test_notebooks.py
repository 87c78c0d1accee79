"""Every notebook runs top to bottom in a fresh kernel, and shows what it promises."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

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
}


def _notebooks():
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("name", _notebooks())
def test_notebook_runs_in_a_fresh_kernel(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # Notebooks write only into temporary directories, so they run from their own folder.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    shown = {mime for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []) for mime in out.get("data", {})}
    missing = EXPECT.get(name, set()) - shown
    assert not missing, f"{name} never displayed {missing}"
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors


def test_every_notebook_has_parameters_at_the_top():
    for name in _notebooks():
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell should hold the parameters"
