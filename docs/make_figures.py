"""Render the README's figures and screenshots into docs/img/.

    .venv/bin/python docs/make_figures.py            # figures (kaleido) and screenshots (Chromium)
    .venv/bin/python docs/make_figures.py --figures  # figures only
    .venv/bin/python docs/make_figures.py --hf       # notebook 08's sections (hf_export_*.png) only

Figures are static PNGs of the views (kaleido drives the system Chromium). Screenshots are taken
in Chromium (Debian's /usr/bin/chromium, driven by Playwright) of what a person opens: the HTML
report of a failing load, and each notebook executed in a fresh kernel and exported to HTML the
way `jupyter nbconvert --to html` does (so they also show that exported notebooks keep their
figures and the explorer's static summary). The explorer's tabs need a live kernel: the browser
test (tests/test_browser.py, DCPVIZ_UPDATE_DOCS=1) screenshots them in JupyterLab.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from torch.distributed.checkpoint import DefaultSavePlanner

import dcpviz
import dcpviz.views as V
from dcpviz.engine.job.models import MLP

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROME_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]

# Per notebook: the output cell to show (the n-th cell with a figure), so the picture is the lesson.
NOTEBOOK_SHOTS = {
    "01_tour.ipynb": (
        "notebook_01_tour.png",
        1,
    ),  # bytes per rank by module, before the dedup lesson
    "02_planner_behaviour.ipynb": (
        "notebook_02_planner.png",
        -1,
    ),  # the load planner: one rank's reads
    "03_debug_a_load.ipynb": ("notebook_03_debug_a_load.png", 0),
    "04_capture_your_job.ipynb": ("notebook_04_capture.png", 0),
}


def figures() -> None:
    """Static PNGs of the views, for the README's figure table."""
    hsdp_sc = dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    hsdp = dcpviz.simulate_save(hsdp_sc)
    lowest = dcpviz.simulate_save(
        hsdp_sc, planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True)
    )
    strided = dcpviz.simulate_save(
        dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp")
    )
    llama_hsdp = dcpviz.simulate_save(
        dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    figs = {
        "layout_hsdp_2d.png": V.chunk_layout(llama_hsdp, "layers.0.attention.wq.weight"),
        "layout_thin_embedding.png": V.chunk_layout(llama_hsdp, "tok_embeddings.weight"),
        "layout_tp_fsdp_strided.png": V.chunk_layout(strided, "layers.0.attention.wq.weight"),
        "layout_empty_shard_bias.png": V.chunk_layout(hsdp, "fc2.bias"),
        "layout_scalar.png": V.chunk_layout(hsdp, "progress.step"),
        "volume_compare.png": V.rank_volume(
            hsdp, compare=lowest, names=("default dedup", "dedup_save_to_lowest_rank")
        ),
        "volume_by_module.png": V.rank_volume(llama_hsdp, by="module"),
        "dedup_overview.png": V.dedup(llama_hsdp),
        "dedup_detail.png": V.dedup(hsdp, fqn="fc1.weight"),
    }
    for name, fig in figs.items():
        fig.write_image(OUT / name, width=820, scale=1)
        print("wrote", OUT / name)


def executed_notebook_html(name: str, work: Path) -> Path:
    """Run a notebook in a fresh kernel from its own folder and export it as nbconvert does."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    ).execute()
    nb.metadata.pop("widgets", None)  # as JupyterLab saves by default: no widget state
    html, _ = HTMLExporter().from_notebook_node(nb)
    out = work / (Path(name).stem + ".html")
    out.write_text(html)
    return out


def screenshots() -> None:
    """The load report and the four exported notebooks, in Chromium."""
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="dcpviz-shots-"))
    report = dcpviz.report(load_report_result(), work / "load_report.html")
    pages = {"load_report.png": (Path(report), None)}
    for name, (png, index) in NOTEBOOK_SHOTS.items():
        if (ROOT / "notebooks" / name).exists():
            pages[png] = (executed_notebook_html(name, work), index)
            print("executed", name)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        for png, (html, index) in pages.items():
            page.goto(html.as_uri())
            page.wait_for_timeout(1500)  # plotly draws after load
            if index is None:
                page.screenshot(path=str(OUT / png))
            else:
                cells = page.locator(".jp-Cell:has(.plotly-graph-div)")
                if (
                    not cells.count()
                ):  # a notebook whose figures do not survive export: its first output
                    cells = page.locator(".jp-Cell:has(.jp-OutputArea-output)")
                    index = 0
                cell = cells.nth(index if index >= 0 else cells.count() - 1)
                cell.scroll_into_view_if_needed()
                cell.screenshot(path=str(OUT / png))
            print("wrote", OUT / png)
        browser.close()


class RenamedNorm(MLP):
    """The mlp with its LayerNorm renamed from ``norm`` to ``ln``: a load that fails."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = self.norm
        del self.norm


def load_report_result() -> dcpviz.LoadResult:
    """The failing load the README's screenshot shows: a reshard 8 -> 6 (harmless) into a model
    whose LayerNorm was renamed."""
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    return dcpviz.simulate_load(
        save, dcpviz.Scenario(model=RenamedNorm, world_size=6, recipe="fsdp")
    )


# Notebook 08 (export to Hugging Face): each picture is one section, from its heading to the next.
HF_SHOTS = {
    "hf_export_plan_checks.png": "1. Plan the export",
    "hf_export_file_layout.png": "The file plan",
    "hf_export_load_fix.png": "6. No key mapping",
}


def hf_export_shots() -> None:
    """Sections of notebook 08 executed in a fresh kernel and exported, in Chromium."""
    from playwright.sync_api import sync_playwright

    html = executed_notebook_html(
        "08_export_to_hugging_face.ipynb", Path(tempfile.mkdtemp(prefix="dcpviz-hf-"))
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(html.as_uri())
        page.wait_for_timeout(1500)  # plotly draws after load
        cells = page.locator(".jp-Cell")
        texts = [cells.nth(i).inner_text() for i in range(cells.count())]
        heads = [
            i
            for i, t in enumerate(texts)
            if "jp-MarkdownCell" in (cells.nth(i).get_attribute("class") or "")
        ]
        for png, start in HF_SHOTS.items():
            _section_shot(page, cells, _section(texts, heads, start), OUT / png)
            print("wrote", OUT / png)
        browser.close()


def _section(texts: list[str], heads: list[int], start: str) -> tuple[int, int]:
    """The cells from the one that starts with ``start`` to the one before the next numbered heading."""
    first = next(i for i, t in enumerate(texts) if t.strip().startswith(start))
    last = next(
        (h - 1 for h in heads if h > first and re.match(r"\d+\. ", texts[h].lstrip())),
        len(texts) - 1,
    )
    return first, last


def _section_shot(page, cells, span: tuple[int, int], path: Path) -> None:
    """One picture of cells ``span`` (the viewport grown to hold them)."""
    first, last = span
    a, b = cells.nth(first).bounding_box(), cells.nth(last).bounding_box()
    page.set_viewport_size({"width": 1280, "height": int(b["y"] + b["height"] - a["y"]) + 40})
    a, b = cells.nth(first).bounding_box(), cells.nth(last).bounding_box()
    page.screenshot(
        path=str(path),
        full_page=True,
        clip={"x": 0, "y": a["y"], "width": 1280, "height": b["y"] + b["height"] - a["y"]},
    )


def main(argv: list[str]) -> None:
    OUT.mkdir(exist_ok=True)
    if "--hf" in argv:
        hf_export_shots()
        return
    figures()
    if "--figures" not in argv:
        screenshots()
        hf_export_shots()


if __name__ == "__main__":
    main(sys.argv[1:])
