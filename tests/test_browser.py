"""A real browser on a real JupyterLab: open 01_tour, run all cells, use the explorer.

Debian's Chromium (/usr/bin/chromium) driven by Playwright (its own browser download does not
work here). Skipped when Chromium is missing, except in CI (CI=true), where .ci/run installs it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROME_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}; .ci/run should have installed it")
        pytest.skip("Chromium is not installed (apt install chromium)")
    pytest.importorskip("playwright")
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root / 'notebooks'}",
        "--ServerApp.port_retries=0",
        "--LabApp.news_url=",
        "--ServerApp.open_browser=False",
    ]
    if os.geteuid() == 0:  # CI machines run as root
        cmd.append("--allow-root")
    log = open(root / "jupyterlab.log", "wb")
    # User settings for this lab only: render every cell (JupyterLab 4 otherwise detaches cells
    # scrolled out of view, so the explorer could be absent from the DOM) and no news pop-up.
    settings = root / "settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none", "autoStartDefaultKernel": true}'
    )
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (
        settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    ).write_text('{"fetchNews": "false"}')
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(root / "config"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"),
    )
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(
                        "JupyterLab exited:\n" + (root / "jupyterlab.log").read_text()[-3000:]
                    )
                time.sleep(0.5)
        else:
            pytest.fail(
                "JupyterLab did not start in 90 s:\n"
                + (root / "jupyterlab.log").read_text()[-3000:]
            )
        yield base, token
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """End JupyterLab and every kernel it started (they share its process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_tour_explorer_renders_and_updates(lab):
    from playwright.sync_api import expect, sync_playwright

    base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/lab/tree/01_tour.ipynb?token={token}", timeout=120_000)
            page.locator(".jp-NotebookPanel").first.wait_for(timeout=120_000)
            # If JupyterLab still asks which kernel to start, take the default (Python 3).
            select = page.locator(".jp-Dialog .jp-mod-accept", has_text="Select")
            try:
                select.wait_for(timeout=10_000)
                select.click()
            except Exception:
                pass
            # Wait for the kernel, then Run > Run All Cells.
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                timeout=120_000
            )
            expect(page.locator(".jp-Toolbar-kernelName").first).to_contain_text(
                "Python", timeout=60_000
            )
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()

            explorer = page.locator(".dcpviz-explorer").first
            explorer.wait_for(state="attached", timeout=180_000)
            explorer.scroll_into_view_if_needed()
            # The first figure is plotly's MIME bundle in an Output, drawn by the
            # jupyterlab-plotly extension (no FigureWidget yet): its plot is really there.
            layout = page.locator(".dcpviz-explorer .dcpviz-layout-figure").first
            static = layout.locator(".dcpviz-figure-static .js-plotly-plot")
            expect(static.locator(".main-svg").first).to_be_visible(timeout=120_000)
            expect(layout.locator(".dcpviz-figure-static .jp-RenderedPlotly")).to_have_count(1)
            expect(static.locator(".gtitle").first).to_contain_text(
                "tok_embeddings.weight", timeout=60_000
            )
            assert layout.locator(".dcpviz-figure-live").count() == 0
            figure = static.first
            # The summary header and all six tabs are there.
            expect(explorer).to_contain_text("imbalance")
            for tab in ("Layout", "Dedup", "Volume", "Phases", "Tables", "Checks"):
                expect(
                    page.locator(".dcpviz-explorer .lm-TabBar-tab", has_text=tab).first
                ).to_be_visible()
            before = figure.locator("path").count()

            # Pick another tensor: the static figure gives way to a FigureWidget showing it,
            # which later picks update in place.
            picker = page.locator(".dcpviz-explorer .widget-select select").first
            picker.select_option(label="output.weight")
            live = page.locator(
                ".dcpviz-explorer .dcpviz-layout-figure.dcpviz-figure-live .js-plotly-plot"
            ).first
            expect(live.locator(".gtitle").first).to_contain_text("output.weight", timeout=60_000)
            expect(layout.locator(".dcpviz-figure-static")).to_have_count(0)
            expect(layout.locator(".jp-RenderedPlotly")).to_have_count(0)  # not the MIME renderer
            assert live.locator("path").count() > 0 and before > 0
            picker.select_option(label="tok_embeddings.weight")
            expect(live.locator(".gtitle").first).to_contain_text(
                "tok_embeddings.weight", timeout=60_000
            )
            expect(layout.locator(".js-plotly-plot")).to_have_count(1)
            # Screenshots: a tall viewport so the whole explorer fits in one picture.
            page.set_viewport_size({"width": 1400, "height": 2200})
            explorer.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            explorer.screenshot(path=str(ARTIFACTS / "explorer_widget.png"))
            page.screenshot(path=str(ARTIFACTS / "explorer_jupyterlab.png"), full_page=False)
            shots = {
                "explorer_widget.png": "explorer_jupyterlab.png",
                **_screenshot_tabs(page, explorer),
            }
            if os.environ.get("DCPVIZ_UPDATE_DOCS") == "1":
                for artifact, doc in shots.items():
                    shutil.copy(ARTIFACTS / artifact, ROOT / "docs" / "img" / doc)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "explorer_failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def _screenshot_tabs(page, explorer) -> dict[str, str]:
    """Open every tab of the explorer in turn: its label is not cut, its content draws; one
    screenshot each (artifact name -> docs/img name)."""
    from playwright.sync_api import expect

    shots = {}
    tabs = page.locator(".dcpviz-explorer .lm-TabBar-tab")
    for i in range(tabs.count()):
        tab = tabs.nth(i)
        title = tab.inner_text().strip()
        label = tab.locator(".lm-TabBar-tabLabel")
        cut = label.evaluate("e => e.scrollWidth > e.clientWidth + 1")
        assert not cut, f"tab title {title!r} is cut"
        tab.click()
        panel = page.locator(
            ".dcpviz-explorer .widget-tab-contents > .lm-Widget:not(.lm-mod-hidden)"
        ).first
        if title in ("Dedup", "Volume", "Phases"):
            expect(panel.locator(".js-plotly-plot .main-svg").first).to_be_visible(timeout=60_000)
        elif title == "Tables":
            expect(panel.locator("table").first).to_be_visible(timeout=60_000)
            # JupyterLab's own styles ran the headers together: the table carries its spacing.
            pad = panel.locator("table th").first.evaluate(
                "e => parseFloat(getComputedStyle(e).paddingLeft)"
            )
            assert pad >= 4, f"Tables headers have {pad}px padding"
        page.wait_for_timeout(800)
        buttons = panel.locator(".widget-toggle-button")
        for j in range(buttons.count()):
            assert not buttons.nth(j).evaluate("e => e.scrollWidth > e.clientWidth + 1"), (
                f"{title}: button label cut"
            )
        name = f"explorer_tab_{title.lower()}.png"
        explorer.screenshot(path=str(ARTIFACTS / name))
        shots[name] = name
    return shots
