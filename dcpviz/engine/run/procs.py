"""Start W real worker processes with a process group, collect what each reports, clean up.

The parent owns a TCPStore on 127.0.0.1 (port chosen by the OS and held for the whole run, so no
other job can take it between choosing and binding) and one pipe per worker. Workers report
phases as they go, then ``ok`` with a plain-data payload or ``error`` with their exception as
plain data. The parent never waits on a collective: on the first error it gives the other
ranks a moment to report theirs (DCP turns one rank's failure into an exception on every rank),
then terminates whatever is left; on timeout or Ctrl-C it does the same. Every process is
joined (no zombies) and the store is closed before ``launch`` returns or raises.
"""

from __future__ import annotations

import ast
import datetime as _dt
import multiprocessing as mp
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from dcpviz.core.errors import DcpvizError
from dcpviz.core.trace import ErrorRecord

HOST = "127.0.0.1"
ERROR_GRACE_S = 3.0  # after a first error, how long the other ranks get to report theirs


@dataclass
class RunInfo:
    """Facts about the processes of one run (kept out of the trace: they die with the run)."""

    backend: str
    device: str
    world_size: int
    start_method: str
    port: int = 0
    pids: list[int] = field(default_factory=list)
    exitcodes: list[int | None] = field(default_factory=list)
    phases: dict[int, str] = field(default_factory=dict)
    # rank -> [(phase, seconds since the launch)]: where the time of a run went.
    phase_times: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    wall_s: float = 0.0
    timed_out: bool = False
    # rank -> [(fqn, chunk offsets, sha256 prefix)] of the tensors it held after the save/load.
    chunk_digests: dict[int, list[tuple[str, tuple[int, ...], str]]] = field(default_factory=dict)


@dataclass
class Outcome:
    """What the workers of one run sent back: payloads per rank, errors, run facts."""

    payloads: dict[int, dict[str, Any]]
    errors: list[ErrorRecord]
    info: RunInfo

    @property
    def ok(self) -> bool:
        """True when no rank failed."""
        return not self.errors and len(self.payloads) == self.info.world_size


# -- worker side ---------------------------------------------------------------------------------
def _where(tb: Any) -> str:
    """'file:line in func' of the innermost frame, so an error says where without a traceback."""
    frames = traceback.extract_tb(tb) if tb is not None and not isinstance(tb, list) else (tb or [])
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {os.path.basename(f.filename)}:{f.lineno} in {f.name})"


def error_dicts(exc: BaseException, rank: int, phase: str) -> list[dict[str, Any]]:
    """An exception as plain records. DCP's CheckpointException carries the failures of every
    rank (rank -> (exception, traceback)): each becomes its own record with that rank."""
    if isinstance(exc, CheckpointException) and exc.failures:
        # DCP's step name ('plan' for the local/global planning round, 'write' for writing).
        step = exc.args[0] if exc.args and isinstance(exc.args[0], str) else phase
        out = []
        for r, pair in sorted(exc.failures.items()):
            inner, tb = pair if isinstance(pair, tuple) else (pair, None)
            out.append(
                {
                    "phase": step,
                    "rank": int(r),
                    "exc_type": type(inner).__name__,
                    "message": f"{inner}{_where(tb)}",
                }
            )
        return out
    return [
        {
            "phase": phase,
            "rank": rank,
            "exc_type": type(exc).__name__,
            "message": f"{exc}{_where(exc.__traceback__)}",
        }
    ]


def _entry(
    job: Callable[..., dict[str, Any]],
    rank: int,
    world: int,
    port: int,
    conn: Any,
    backend: str,
    device: str,
    pg_timeout_s: float,
    args: tuple,
) -> None:
    """Worker main: process group on the loopback store, run ``job``, report, exit hard."""
    # Gloo and NCCL open their own sockets; keep them on loopback too.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    warnings.filterwarnings("ignore", message=".*random operators may not have complete support.*")
    phase = "start"
    code = 0

    def report(name: str) -> None:
        nonlocal phase
        phase = name
        conn.send(("phase", rank, name))

    try:
        report("init")
        if device == "cuda":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        store = dist.TCPStore(
            HOST, port, is_master=False, timeout=_dt.timedelta(seconds=pg_timeout_s)
        )
        dist.init_process_group(
            backend,
            store=store,
            rank=rank,
            world_size=world,
            timeout=_dt.timedelta(seconds=pg_timeout_s),
        )
        payload = job(rank, world, report, *args)
        conn.send(("ok", rank, payload))
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent as data
        code = 1
        try:
            extra = getattr(exc, "dcpviz_payload", None)
            conn.send(("error", rank, {"errors": error_dicts(exc, rank, phase), "payload": extra}))
        except Exception:
            pass
    finally:
        try:
            conn.close()
        finally:
            # Skip interpreter teardown (seconds with torch loaded); nothing is left to flush.
            os._exit(code)


# -- parent side ---------------------------------------------------------------------------------
def _is_main_check(node: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either order, possibly inside a larger condition)."""
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    consts = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
    return "__name__" in names and "__main__" in consts


def _guarded_lines(source: str) -> list[tuple[int, int]]:
    """Line ranges of the bodies of ``if __name__ == "__main__":`` blocks."""
    ranges = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and _is_main_check(node.test) and node.body:
            ranges.append(
                (node.body[0].lineno, max(getattr(n, "end_lineno", n.lineno) for n in node.body))
            )
    return ranges


def _unguarded_main_line(main: Any) -> int | None:
    """The line of the main script, run at import, that leads to this call — None if the
    call comes from under a ``__main__`` guard, from a function called later, or from no
    script at all (a notebook, ``python -c``: spawn does not import those again)."""
    path = getattr(main, "__file__", None)
    if not path:
        return None
    real = os.path.realpath(path)
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if (
            code.co_name == "<module>"
            and frame.f_globals is vars(main)
            and os.path.realpath(code.co_filename) == real
        ):
            try:
                with open(real, encoding="utf-8") as fh:
                    ranges = _guarded_lines(fh.read())
            except (OSError, SyntaxError, ValueError):
                return None  # cannot read the script: do not guess
            line = frame.f_lineno
            return None if any(a <= line <= b for a, b in ranges) else line
        frame = frame.f_back
    return None


def check_main_guard(start_method: str, caller: str) -> None:
    """Refuse to start workers when they would run the caller's script again.

    With 'spawn' and 'forkserver' each worker imports the main script; top-level code that
    calls ``run_save`` without an ``if __name__ == "__main__":`` guard would start the run
    again in every worker, which multiprocessing stops with an error on the worker side (seen
    here only as 'rank 0 exited with code 1')."""
    if start_method == "fork":
        return
    main = sys.modules.get("__main__")
    line = _unguarded_main_line(main)
    if line is None:
        return
    script = main.__file__
    raise DcpvizError(
        f"{caller} was called from the top level of the script {script!r} (line {line}) without a "
        f"main guard. Workers are started with start_method={start_method!r}, which imports "
        f"{os.path.basename(script)} again in every worker, so each one would run this code again. "
        "Move the script's top-level code into a function main() and add these two lines at the "
        'end of the script:\n\n    if __name__ == "__main__":\n        main()\n'
    )


def _stop(procs: list[Any]) -> None:
    """SIGTERM, a short wait, SIGKILL, and join every process (reaped: no zombies)."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join()


@dataclass
class _Gather:
    """What the parent has heard from its workers so far."""

    info: RunInfo
    world: int
    t0: float
    payloads: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)
    seen: set[tuple] = field(default_factory=set)
    error_deadline: float | None = None

    def receive(self, kind: str, rank: int, body: Any) -> None:
        """One message from a worker: a phase it entered, its result, or its errors."""
        if kind == "phase":
            self.info.phases[rank] = body
            self.info.phase_times.setdefault(rank, []).append(
                (body, round(time.monotonic() - self.t0, 3))
            )
        elif kind == "ok":
            self.payloads[rank] = body
            self.info.phase_times.setdefault(rank, []).append(
                ("done", round(time.monotonic() - self.t0, 3))
            )
        elif kind == "error":
            for e in body["errors"]:
                rec = ErrorRecord(**e)
                key = (rec.phase, rec.rank, rec.exc_type, rec.message)
                if key not in self.seen:
                    self.seen.add(key)
                    self.errors.append(rec)
            if body.get("payload"):
                self.payloads.setdefault(rank, body["payload"])
            if self.error_deadline is None:
                self.error_deadline = time.monotonic() + ERROR_GRACE_S

    def all_reported(self) -> bool:
        return len(self.payloads) == self.world and not self.errors


def _start_workers(
    ctx: Any,
    job: Callable[..., dict[str, Any]],
    world: int,
    info: RunInfo,
    backend: str,
    device: str,
    timeout: float,
    args: tuple,
    procs: list[Any],
    readers: dict[Any, int],
) -> None:
    for r in range(world):
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_entry,
            name=f"dcpviz-rank{r}",
            daemon=True,
            args=(job, r, world, info.port, writer, backend, device, timeout, args),
        )
        p.start()
        writer.close()  # the child holds the only write end: EOF when it exits
        procs.append(p)
        readers[reader] = r
    info.pids = [p.pid for p in procs]


def _should_stop(
    g: _Gather, procs: list[Any], readers: dict[Any, int], exited: set[int], deadline: float
) -> bool:
    if g.all_reported():
        # Everyone reported: let them leave on their own (destroy_process_group).
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        return True
    if len(exited) == g.world and not readers:
        return True
    now = time.monotonic()
    if g.error_deadline is not None and now >= g.error_deadline:
        return True
    if now >= deadline:
        g.info.timed_out = not g.errors
        return True
    return False


PROGRESS_AFTER_S = 5.0
"""A real run shows progress (ranks done, the phases the others are in) once it has lasted this long."""


class RunProgress:
    """A text bar on stderr (in notebooks too: a widget output has no HTML copy, so an exported
    notebook would lose it) for a real run: ranks done out of the world, and
    how many ranks are in each phase (build, save, load, ...). ``show``: True from the start,
    None once the run has lasted PROGRESS_AFTER_S (short runs stay quiet), False never."""

    def __init__(self, world: int, show: bool | None, t0: float) -> None:
        self.world, self.show, self.t0 = world, show, t0
        self.bar: Any = None

    def tick(self, g: _Gather) -> None:
        """Bring the bar up to date with what the workers reported (called at least every second)."""
        if self.show is False:
            return
        if self.bar is None:
            if self.show is None and time.monotonic() - self.t0 < PROGRESS_AFTER_S:
                return
            from tqdm.std import tqdm  # deferred: only a run long enough to need a bar

            # Asked for (True): shown even where TQDM_DISABLE quiets bars by default.
            extra = {"disable": False} if self.show else {}
            self.bar = tqdm(total=self.world, desc="real run", unit="rank", leave=False, **extra)
        done = len(g.payloads)
        busy: dict[str, int] = {}
        for r, phase in sorted(g.info.phases.items()):
            if r not in g.payloads:
                busy[phase] = busy.get(phase, 0) + 1
        self.bar.n = done
        self.bar.set_postfix_str(
            ", ".join(f"{n} in {phase}" for phase, n in busy.items()), refresh=True
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _listen(
    g: _Gather,
    procs: list[Any],
    readers: dict[Any, int],
    deadline: float,
    progress: RunProgress | None = None,
) -> None:
    """Take messages until everyone reported, all exited, an error's grace ran out, or time is up."""
    sentinels = {p.sentinel: r for r, p in enumerate(procs)}
    exited: set[int] = set()
    while not _should_stop(g, procs, readers, exited, deadline):
        limit = deadline if g.error_deadline is None else min(deadline, g.error_deadline)
        if progress is not None:
            progress.tick(g)
            limit = min(limit, time.monotonic() + 1.0)  # wake up to keep the bar moving
        waiting = [*readers, *(s for s, r in sentinels.items() if r not in exited)]
        for obj in wait(waiting, max(0.0, limit - time.monotonic())):
            if obj not in readers:
                exited.add(sentinels[obj])
                continue
            try:
                kind, rank, body = obj.recv()
            except (EOFError, OSError):
                del readers[obj]
                obj.close()
                continue
            g.receive(kind, rank, body)


def _silent_deaths(g: _Gather, procs: list[Any]) -> None:
    """Processes that ended without reporting (killed, segfault, os._exit in user code)."""
    for r, p in enumerate(procs):
        p.join(0.05)
        reported = r in g.payloads or any(e.rank == r for e in g.errors)
        if p.exitcode not in (None, 0) and not reported and not g.info.timed_out:
            g.errors.append(
                ErrorRecord(
                    phase=g.info.phases.get(r, "start"),
                    rank=r,
                    exc_type="WorkerDied",
                    message=f"rank {r} exited with code {p.exitcode} without reporting an error"
                    + (" (killed by a signal)" if p.exitcode < 0 else ""),
                )
            )


def _timeout_error(g: _Gather, timeout: float) -> None:
    pending = [r for r in range(g.world) if r not in g.payloads]
    where = ", ".join(f"rank {r} in {g.info.phases.get(r, 'start')!r}" for r in pending)
    g.errors.append(
        ErrorRecord(
            phase="timeout",
            rank=None,
            exc_type="TimeoutError",
            message=f"the run did not finish within timeout={timeout:g}s; still running: {where}. "
            "All worker processes were stopped.",
        )
    )


def launch(
    job: Callable[..., dict[str, Any]],
    world: int,
    args: tuple = (),
    *,
    backend: str,
    device: str,
    timeout: float,
    start_method: str = "spawn",
    progress: bool | None = None,
) -> Outcome:
    """Run ``job(rank, world, report, *args)`` in ``world`` processes inside a process group.

    ``job`` must be importable by name (a module-level function) and its result plain data.
    ``progress``: a bar of ranks done and phases (RunProgress); None shows it once the run has
    lasted PROGRESS_AFTER_S.
    """
    check_main_guard(start_method, "dcpviz (starting worker processes)")
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        # The server imports torch and dcpviz once; every worker then starts as a fork of it
        # (a fraction of a second instead of a full interpreter start). No effect if this
        # program's forkserver is already running.
        ctx.set_forkserver_preload([job.__module__])
    info = RunInfo(backend=backend, device=device, world_size=world, start_method=start_method)
    t0 = time.monotonic()
    g = _Gather(info=info, world=world, t0=t0)
    store = dist.TCPStore(
        HOST, 0, is_master=True, wait_for_workers=False, timeout=_dt.timedelta(seconds=timeout)
    )
    info.port = store.port
    procs: list[Any] = []
    readers: dict[Any, int] = {}
    try:
        _start_workers(ctx, job, world, info, backend, device, timeout, args, procs, readers)
        bar = RunProgress(world, progress, t0)
        try:
            _listen(g, procs, readers, t0 + timeout, bar)
            if bar.bar is not None:
                bar.tick(g)  # the final count
        finally:
            bar.close()
        _silent_deaths(g, procs)
        if info.timed_out:
            _timeout_error(g, timeout)
    finally:
        _stop(procs)
        for reader in list(readers):
            reader.close()
        info.exitcodes = [p.exitcode for p in procs]
        info.wall_s = time.monotonic() - t0
        del store  # closes the listening socket: the port is free again
    return Outcome(payloads=g.payloads, errors=g.errors, info=info)
