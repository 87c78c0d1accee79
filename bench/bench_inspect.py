"""Reading a 1024-rank checkpoint directory: its ``.metadata`` (596,096 chunks) read safely.

The checkpoint is llama3-70b bf16 saved by TP+FSDP 128x8 (W=1024), as DCP's FileSystemWriter
would leave it: a ``.metadata`` with every chunk and its storage record (``__{rank}_0.distcp``,
offset, length: the chunk's bytes plus torch.save's framing), and one data file per rank, made
sparse (``truncate`` to its size: the right size on disk, no blocks, no tensor data). It is
built once from ``simulate_save`` and kept in ``--dir``.

Each case runs in a fresh Python process, with this checkout's code and, with ``--old DIR``,
another checkout's (``git archive main | tar -x -C /tmp/old``), side by side in one run; each
cell is the minimum over ``--repeat`` processes, with the load average printed::

    python bench/bench_inspect.py --old /tmp/old --repeat 3

Cases (what each entry point does with a checkpoint directory before anything else):

- pickle.load (DCP's own read): what DCP's ``FileSystemReader.read_metadata`` does (plain
  pickle: unsafe on an untrusted checkpoint); the floor any reader of ``.metadata`` pays to
  build DCP's Metadata objects. Identical in both columns (no dcpviz code).

- floor: what no reader of this format written in Python gets under: the C unpickler runs
  every opcode into stand-ins (no DCP objects: ``torch.Size`` read as a tuple, the rest bare
  objects hashed by identity, the collector paused), then one pass lists every chunk's box and
  every storage record (a table's columns). Unsafe as written (it builds any class it is told
  to), no checks, no tables: a lower bound, not a reader.
- read_metadata: ``.metadata`` through the restricted unpickler (never plain pickle), then the
  check of every field (``engine/checkpoint/metadata_check.py``).
- resolve_saved: what ``simulate_load(DIR, ...)`` and ``dcpviz load DIR`` do first: the metadata,
  its trace form, one writer per chunk (rank and file), and every record's file size.
- inspect_checkpoint: ``dcpviz.inspect_checkpoint(DIR, verify="none")``: the chunks, storage and
  files tables and the checks (``verify="headers"``, the default, also opens each of the 596,096
  records' zip directory: not measurable on sparse files, and I/O-bound on a real one).

After the case, each child times 2 M new objects (a list of small lists): what the next
allocating step pays for the collections the case left to Python's collector (a reader that
pauses it leaves millions of young objects; each later pass walks them all).

Each child also reports ``import dcpviz`` (torch-free), the readers' import (torch and DCP:
2.5-4 s in a fresh process, *before* the clock: no case above includes it; the readers need
torch, since what they return is DCP's own Metadata), the case's CPU time (user + system: less
sensitive than the wall time to other processes on a shared machine) and the peak RSS.
``dcpviz.api`` (what ``dcpviz.inspect_checkpoint`` imports on first use) is imported before the
clock too (until this section's runs of 2026-12-07 13:00 it was inside the inspect case's clock).
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
DEFAULT_DIR = Path(tempfile.gettempdir()) / "dcpviz-bench-inspect-1024"
SAVED = dict(model="llama3-70b", world_size=1024, mesh=(128, 8), recipe="tp+fsdp", dtype="bfloat16")
FLOOR = "floor: the pickle parsed into stand-ins, then its columns"
CASES = (
    "pickle.load (DCP's own read)",
    FLOOR,
    "read_metadata",
    "resolve_saved",
    "inspect_checkpoint",
)

MAKE = r"""
import os, pickle, sys
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import MetadataIndex
import dcpviz
root, spec = sys.argv[1], eval(sys.argv[2])
res = dcpviz.simulate_save(dcpviz.Scenario(**spec), progress=False)
assert res.ok, res.errors
md = res.metadata
# torch.save's framing around a record (zip headers, data.pkl, alignment): measured once.
import io
buf = io.BytesIO(); torch.save(torch.empty(1024, dtype=torch.bfloat16), buf)
framing = len(buf.getvalue()) - 2048
ends = {}
storage = {}
for row in res.chunks.itertuples(index=False):
    rank = int(row.rank)
    rel = f"__{rank}_0.distcp"
    offset = ends.get(rel, 0)
    length = int(row.nbytes) + framing
    key = MetadataIndex(row.fqn, torch.Size(row.offsets) if row.kind == "tensor" else None, int(row.chunk_index))
    storage[key] = _StorageInfo(rel, offset, length)
    ends[rel] = offset + length
md.storage_data = storage
os.makedirs(root, exist_ok=True)
for rel, size in ends.items():
    with open(os.path.join(root, rel), "wb") as fh:
        fh.truncate(size)  # sparse: the size DCP's file would have, no blocks on disk
with open(os.path.join(root, ".metadata"), "wb") as fh:
    pickle.dump(md, fh)  # what DCP's FileSystemWriter.finish writes
print(len(storage), len(ends))
"""

CHILD = r"""
import json, resource, sys, time
T = time.perf_counter
path, case = sys.argv[1], sys.argv[2]
out = {}
t = T(); import dcpviz; out["import dcpviz"] = T() - t
t = T()
from dcpviz.engine.checkpoint.reader import read_metadata
from dcpviz.engine.checkpoint.saved import resolve_saved
out["import the readers (torch)"] = T() - t
t = T()
import dcpviz.api  # what dcpviz.inspect_checkpoint imports on first use (1-3 s; not reading)
out["import dcpviz.api"] = T() - t
t, c = T(), time.process_time()
if case.startswith("pickle.load"):  # DCP's FileSystemReader.read_metadata: plain, unsafe
    import pickle
    with open(path + "/.metadata", "rb") as fh:
        md = pickle.load(fh)
    n = sum(len(getattr(e, "chunks", ())) for e in md.state_dict_metadata.values())
elif case.startswith("floor"):
    # Not dcpviz code, and not safe to ship as is: the least any Python reader of this format
    # pays. The C unpickler runs every opcode, but each class is a stand-in (torch.Size ->
    # tuple; the rest bare objects: BUILD fills their __dict__, keys hash by identity), the
    # collector is paused; then one pass puts every chunk's box and every storage record in
    # flat lists (what a table's columns need). No checks, no tables.
    import gc, io, pickle

    class _Bare:
        pass

    class _Props:  # TensorProperties pickles its state as a tuple
        def __setstate__(self, state):
            self.state = state

    class _StandIns(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch", "Size"):
                return tuple
            if name in ("_MEM_FORMAT_ENCODING",) or module == "torch":
                return super().find_class(module, name)
            if module == "torch.serialization":
                return str
            return _Props if name == "TensorProperties" else type(name, (_Bare,), {})

    gc.disable()
    try:
        with open(path + "/.metadata", "rb") as fh:
            md = _StandIns(io.BytesIO(fh.read())).load()
        fqns, offsets, sizes = [], [], []
        for fqn, entry in md.state_dict_metadata.items():
            for ch in getattr(entry, "chunks", ()):
                fqns.append(fqn)
                offsets.append(ch.offsets)
                sizes.append(ch.sizes)
        keys, files, starts, lengths = [], [], [], []
        for k, v in md.storage_data.items():
            keys.append((k.fqn, k.offset))
            files.append(v.relative_path)
            starts.append(v.offset)
            lengths.append(v.length)
    finally:
        gc.enable()
    n = len(offsets)
elif case == "read_metadata":
    md = read_metadata(path)
    n = sum(len(getattr(e, "chunks", ())) for e in md.state_dict_metadata.values())
elif case == "resolve_saved":
    ck = resolve_saved(path)
    n = len(ck.writers)
else:
    info = dcpviz.inspect_checkpoint(path, verify="none")
    n = len(info.chunks)
    info.checks
out[case] = T() - t
out["cpu"] = time.process_time() - c  # user + system CPU: less sensitive to other processes
# What the next allocating step pays for the collections the case left to the collector (a
# reader that pauses it leaves millions of young objects behind): 2 M new objects, timed.
t = T(); after = [[i] for i in range(2_000_000)]; out["then 2 M new objects"] = T() - t
del after
out["rows"] = n
out["peak RSS MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("BENCH" + json.dumps(out))
"""


def make_checkpoint(root: Path) -> Path:
    """The W=1024 checkpoint directory (built once, then reused)."""
    if not (root / ".metadata").exists():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", MAKE, str(root), repr(SAVED)], env=env, check=True)
    return root


def measure(code: Path, root: Path, case: str) -> dict:
    """One fresh process with ``code`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), case],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH")]
    if proc.returncode or not line:
        raise SystemExit(f"child failed with {code} ({case}):\n{proc.stderr[-3000:]}")
    return json.loads(line[0][5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the checkpoint is kept")
    ap.add_argument("--old", type=Path, help="another checkout to compare with (e.g. main's)")
    ap.add_argument("--repeat", type=int, default=1, help="fresh processes per cell (minimum)")
    args = ap.parse_args()
    root = make_checkpoint(args.dir)
    codes = {"new": ROOT}
    if args.old:
        codes = {"old": args.old.resolve(), **codes}
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")
    started = time.perf_counter()
    cells: dict[tuple[str, str], dict] = {}
    for _ in range(args.repeat):  # interleaved: old and new see the same machine
        for case in CASES:
            for name, code in codes.items():
                got = measure(code, root, case)
                best = cells.setdefault((case, name), got)
                for k, v in got.items():
                    if isinstance(v, float):
                        best[k] = max(best[k], v) if k == "peak RSS MB" else min(best[k], v)
    cols = list(codes)
    print("\n| case | " + " | ".join(cols) + " | rows |")
    print("|---|" + "---|" * (len(cols) + 1))
    for case in CASES:
        times = " | ".join(f"**{cells[(case, c)][case]:.2f} s**" for c in cols)
        print(f"| {case} | {times} | {cells[(case, cols[-1])]['rows']} |")
        cpu = " | ".join(f"{cells[(case, c)]['cpu']:.2f} s" for c in cols)
        print(f"| {case}: CPU time (user + system) | {cpu} | |")
    for case in CASES:
        vals = " | ".join(f"{cells[(case, c)]['then 2 M new objects']:.2f} s" for c in cols)
        print(f"| after {case}: 2 M new objects (the collections it left behind) | {vals} | |")
    for label, key in (
        ("import dcpviz", "import dcpviz"),
        ("import the readers (torch)", "import the readers (torch)"),
        ("then import dcpviz.api", "import dcpviz.api"),
    ):
        vals = " | ".join(f"{min(cells[(k, c)][key] for k in CASES):.2f} s" for c in cols)
        print(f"| {label} (fresh process, before the clock) | {vals} | |")
    rss = " | ".join(f"{max(cells[(k, c)]['peak RSS MB'] for k in CASES):.0f} MB" for c in cols)
    print(f"| peak RSS (largest case) | {rss} | |")
    load = os.getloadavg()
    print(
        f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
