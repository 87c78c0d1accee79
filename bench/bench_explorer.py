"""Explorer on a freshly loaded trace: how long until the first view is ready, and each other tab.

Every measurement runs in a fresh Python process (nothing cached, nothing imported), once with
this checkout's code and, with ``--old DIR``, once with another checkout's (e.g. main's:
``git archive main | tar -x -C /tmp/old-explorer``), side by side in one run::

    python bench/bench_explorer.py --old /tmp/old-explorer
    python bench/bench_explorer.py --trace save.json --load-trace load.json --old /tmp/old-explorer --repeat 3

What each row is, in the child process:

- trace decode: ``dcpviz.load_trace(path)`` (JSON -> a validated trace; reported in RESULTS.md too).
- explorer, first view ready: ``dcpviz.explore(result)`` until it returns. The object Jupyter
  displays then exists with its header and its first visible tab built (figure included), the
  same moment the old explorer had built every tab. "cold" is a fresh process: it includes
  every import the explorer needs (up to main at 6952c84 that was plotly's FigureWidget, once
  per kernel: plotly.io pulls nbformat -> jsonschema -> rfc3987_syntax, which compiles its
  grammars; the first figures are now drawn without one). "plotly warm" imports FigureWidget
  before the clock starts, as in a kernel that has shown any plotly widget before.
- "kernel": the same "cold" code run as a cell of a fresh IPython kernel (ipykernel, through
  jupyter_client), as a notebook's first ``explore()`` runs: the kernel has imported IPython,
  traitlets and the comm machinery already (a plain ``python`` process pays ~0.4 s for those
  inside "explorer, first view ready"), nothing else.
- each other tab, first open: ``app.tabs.select(i)`` (what a click does) until its content is
  built. The old explorer built them all in the constructor: shown as "(in construction)".
- of which full GC passes: time the garbage collector spent in full collections during
  ``explore()`` (``gc.callbacks``). After decoding, the trace's objects are young; the first full
  pass over them lands on whatever allocates next: a deferred cost of decoding, paid once.
- peak RSS of the child (``ru_maxrss``).

With ``--repeat N`` each cell is the minimum over N fresh processes (the run least disturbed by
whatever else the machine runs).

Without ``--trace``, the W=1024 HSDP 8x128 llama3-70b bf16 save (740,352 planned items) is
simulated once and kept in ``--cache`` (about 20 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "dcpviz-bench-explorer-save1024.json"

CHILD = r"""
import json, resource, sys, time
T = time.perf_counter
path, warm, tabs_too = sys.argv[1], sys.argv[2] == "warm", sys.argv[3:] != ["no-tabs"]
out = {}
t = T(); import dcpviz; out["import dcpviz"] = T() - t
if warm:
    t = T(); import plotly.graph_objs._figurewidget; out["plotly FigureWidget import"] = T() - t
t = T(); result = dcpviz.load_trace(path); out["trace decode"] = T() - t
import gc
full_gc = []  # the collector's full passes during explore(): they scan the freshly decoded trace
def on_gc(phase, info, started=[0.0]):
    if info["generation"] == 2:
        if phase == "start":
            started[0] = T()
        else:
            full_gc.append(T() - started[0])
gc.callbacks.append(on_gc)
t = T(); app = dcpviz.explore(result); out["explorer, first view ready"] = T() - t
gc.callbacks.remove(on_gc)
out["full GC"] = sum(full_gc)
tabs = app.tabs
out["first tab"] = tabs.titles[tabs.selected_index]
opened = {}
for i, title in enumerate(tabs.titles):
    if i == tabs.selected_index or not tabs_too:
        continue
    if hasattr(tabs, "select"):  # lazy tabs: built on first selection
        t = T(); tabs.select(i); opened[title] = T() - t
    else:
        opened[title] = None  # built in the constructor
out["tabs"] = opened
out["peak RSS MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("BENCH" + json.dumps(out))
"""


def make_trace(cache: Path) -> Path:
    """The 740k-item save trace (simulated once, then read from ``cache``)."""
    if not cache.exists():
        import dcpviz

        sc = dcpviz.Scenario(
            model="llama3-70b", world_size=1024, mesh=(8, 128), recipe="hsdp", dtype="bfloat16"
        )
        dcpviz.simulate_save(sc).to_json(cache)
    return cache


def best(runs: list[dict]) -> dict:
    """Each time's minimum over repeated runs (the least disturbed by other load), peak RSS's max."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            out[key] = (max if key == "peak RSS MB" else min)(r[key] for r in runs)
    out["tabs"] = {
        t: None if v is None else min(r["tabs"][t] for r in runs)
        for t, v in runs[0]["tabs"].items()
    }
    return out


MODES = ("cold", "kernel", "plotly warm")


def measure(code: Path, trace: Path, mode: str, tabs: bool = True) -> dict:
    """One fresh process (a plain one, or a fresh IPython kernel) with ``code`` first on the path;
    ``tabs=False``: the first view only."""
    extra = [] if tabs else ["no-tabs"]
    if mode == "kernel":
        return measure_in_kernel(code, trace, extra)
    warm = mode == "plotly warm"
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(trace), "warm" if warm else "cold", *extra],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH")]
    if proc.returncode or not line:
        raise SystemExit(f"child failed with {code}:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][5:])


def measure_in_kernel(code: Path, trace: Path, extra: list[str]) -> dict:
    """The child's code as the first cell of a fresh IPython kernel with ``code`` on the path."""
    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "PYTHONPATH": str(code)}
    km, kc = start_new_kernel(
        kernel_name="python3", env=env, cwd=tempfile.gettempdir(), stderr=subprocess.DEVNULL
    )
    out: list[str] = []

    def on_message(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    try:
        argv = ["bench", str(trace), "cold", *extra]
        cell = f"import sys\nsys.argv = {argv!r}\n" + CHILD
        kc.execute_interactive(cell, output_hook=on_message, timeout=900)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    line = [ln for ln in "".join(out).splitlines() if ln.startswith("BENCH")]
    if not line:
        raise SystemExit(f"kernel run failed with {code}:\n{''.join(out)[-3000:]}")
    return json.loads(line[0][5:])


def fmt(v: float | None) -> str:
    return "(in construction)" if v is None else f"{v:.2f} s"


def table(name: str, runs: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown rows: one column per (code, cold/warm) run."""
    cols = list(runs)
    lines = [f"### {name}", "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    def row(label: str, get) -> None:
        lines.append(f"| {label} | " + " | ".join(get(runs[c]) for c in cols) + " |")

    row("trace decode", lambda r: fmt(r["trace decode"]))
    row(
        "plotly FigureWidget import (warm runs, before the clock)",
        lambda r: (
            fmt(r["plotly FigureWidget import"])
            if "plotly FigureWidget import" in r
            else "in the next row"
        ),
    )
    row(
        "explorer, first view ready",
        lambda r: f"**{r['explorer, first view ready']:.2f} s** ({r['first tab']})",
    )
    row("  of which full GC passes over the decoded trace", lambda r: fmt(r["full GC"]))
    titles = list(dict.fromkeys(t for r in runs.values() for t in r["tabs"]))
    for title in titles:
        row(f"open {title} (first time)", lambda r, t=title: fmt(r["tabs"].get(t)))
    row("peak RSS", lambda r: f"{r['peak RSS MB']:.0f} MB")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--trace",
        type=Path,
        help="a save trace (default: the W=1024 HSDP 70B save, simulated once)",
    )
    ap.add_argument(
        "--load-trace",
        type=Path,
        action="append",
        default=[],
        help="a load trace for the load explorer (repeat for several)",
    )
    ap.add_argument("--skip-save", action="store_true", help="only the load explorer(s)")
    ap.add_argument("--old", type=Path, help="another checkout to compare with (e.g. main's)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument(
        "--repeat", type=int, default=1, help="fresh processes per cell; the minimum is shown"
    )
    ap.add_argument(
        "--first-view-only",
        action="store_true",
        help="time the first view only (no other tab opened: a quicker run)",
    )
    ap.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated, of {', '.join(MODES)} (default: all)",
    )
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",")]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: each of {', '.join(MODES)}")
    save = None if args.skip_save else args.trace or make_trace(args.cache)
    codes = {"new": ROOT}
    if args.old:
        codes = {"old": args.old.resolve(), **codes}
    uptime = os.getloadavg()
    print(
        f"load average before: {uptime[0]:.2f} {uptime[1]:.2f} {uptime[2]:.2f}; {os.cpu_count()} CPUs"
    )
    started = time.perf_counter()
    for name, trace in [("save explorer", save)] + [("load explorer", t) for t in args.load_trace]:
        if trace is None:
            continue
        runs = {
            f"{code} {mode}": best(
                [measure(path, trace, mode, not args.first_view_only) for _ in range(args.repeat)]
            )
            for mode in modes
            for code, path in codes.items()
        }
        print("\n".join(table(f"{name}: {trace.name}", runs)) + "\n")
    uptime = os.getloadavg()
    print(
        f"load average after: {uptime[0]:.2f} {uptime[1]:.2f} {uptime[2]:.2f}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
