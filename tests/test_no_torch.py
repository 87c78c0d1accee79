"""A trace opens where torch is not installed: load_trace, every table, the views, the report
and `dcpviz show` run in a subprocess in which `import torch` fails (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dcpviz

REPO = Path(dcpviz.__file__).parent.parent

# Installed as sitecustomize: any import of torch (or a torch submodule) raises ImportError,
# as on a laptop without torch.
NO_TORCH = textwrap.dedent("""
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is not installed here ({name})")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")

CHECK = textwrap.dedent("""
    import sys
    import dcpviz
    import dcpviz.views as V

    save = dcpviz.load_trace(sys.argv[1])
    load = dcpviz.load_trace(sys.argv[2])
    for name in ("write_items", "dedup", "rank_volume", "chunks", "summary", "tensors",
                 "tensor_groups", "phase_changes", "phase_volume", "storage", "files",
                 "storage_volume", "checks"):
        getattr(save, name)
    save.volume_by_module(1)
    for name in ("read_items", "rank_volume", "resharding", "mismatches", "hints",
                 "hints_table", "summary", "checks"):
        getattr(load, name)
    load.resharding_matrix()
    repr(save), repr(load), save._repr_html_()
    fqn = save.tensors["fqn"].iloc[0]
    figures = [V.rank_volume(save), V.dedup(save), V.chunk_layout(save, fqn),
               V.read_volume(load), V.resharding(load), V.read_layout(load, fqn, 0)]
    dcpviz.report(save, sys.argv[3] + "/save.html")
    dcpviz.report(load, sys.argv[3] + "/load.html")
    assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
    print("OK", len(figures))
""")


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    out = tmp_path_factory.mktemp("no_torch")
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=4, mesh=(2, 2), recipe="hsdp")
    )
    load = dcpviz.simulate_load(save, dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    return out, save.to_json(out / "save.json"), load.to_json(out / "load.json")


def _env(site: Path) -> dict[str, str]:
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_TORCH)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    return env


def test_torch_really_is_unimportable_there(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", "import torch"],
        env=_env(tmp_path / "site"),
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "torch is not installed here" in run.stderr


def test_traces_tables_views_and_report_need_no_torch(traces, tmp_path):
    out, save_json, load_json = traces
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(save_json), str(load_json), str(tmp_path)],
        env=_env(tmp_path / "site"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("OK 6")
    assert (tmp_path / "save.html").stat().st_size > 0 and (
        tmp_path / "load.html"
    ).stat().st_size > 0


@pytest.mark.parametrize("which", [1, 2])
def test_dcpviz_show_needs_no_torch(traces, tmp_path, which):
    path = traces[which]
    run = subprocess.run(
        [sys.executable, "-m", "dcpviz", "show", str(path), "--report", str(tmp_path / "r.html")],
        env=_env(tmp_path / "site"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "r.html").is_file()


@pytest.mark.parametrize("which", [1, 2])
def test_dcpviz_check_of_a_trace_needs_no_torch(traces, tmp_path, which):
    run = subprocess.run(
        [sys.executable, "-m", "dcpviz", "check", str(traces[which]), "--json"],
        env=_env(tmp_path / "site"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode in (0, 1), run.stderr[-3000:]
    assert '"checks"' in run.stdout
