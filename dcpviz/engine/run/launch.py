"""What run_save and run_load share: the device and backend a scenario runs on, the launch
options checked before anything starts, workers launched with a recording planner, and the
chunk digests they report."""

from __future__ import annotations

import math
import multiprocessing as mp
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from dcpviz.core.errors import DcpvizError
from dcpviz.core.trace_codec import read_trace
from dcpviz.engine.job.scenario import Scenario
from dcpviz.engine.run.procs import launch

DEFAULT_TIMEOUT_S = 300.0


def resolve_device(scenario: Scenario) -> tuple[Scenario, str, str]:
    """(scenario with a real device, backend, device kind). 'meta' runs on cpu."""
    dev = scenario.device.split(":")[0]
    W = scenario.world_size
    if dev == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < W:
            raise DcpvizError(
                f"device='cuda' with world_size={W} needs {W} CUDA devices (one per rank) but "
                f"{n} {'is' if n == 1 else 'are'} available. Use device='cpu' (gloo), or a "
                f"smaller world_size."
            )
        return scenario.replace(device="cuda"), "nccl", "cuda"
    return scenario.replace(device="cpu"), "gloo", "cpu"


def check_launch_options(timeout: Any, start_method: Any) -> None:
    """A positive, finite timeout and a start method this platform has: checked before any
    directory is created or process started (else a worker fails obscurely, or never times out)."""

    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise DcpvizError(
            f"timeout={timeout!r} must be a positive number of seconds (default {DEFAULT_TIMEOUT_S:g})."
        )
    methods = mp.get_all_start_methods()
    if start_method not in methods:
        raise DcpvizError(
            f"start_method={start_method!r} must be one of {methods} (default 'spawn')."
        )


def check_picklable(**objs: Any) -> None:
    """Workers are started with 'spawn': what they get must pickle (module-level callables)."""

    for name, obj in objs.items():
        try:
            pickle.dumps(obj)
        except Exception as exc:
            raise DcpvizError(
                f"{name}={obj!r} cannot be sent to worker processes ({type(exc).__name__}: {exc}). "
                "Real runs start fresh processes: use a module-level function or class, not a "
                "lambda or a local function."
            ) from None


def launch_recorded(
    job: Any,
    scenario: Scenario,
    planner: Any,
    root: Path,
    backend: str,
    device: str,
    timeout: float,
    start_method: str | None,
    progress: bool | None = None,
    extra: tuple = (),
) -> tuple[Any, Any]:
    """Run ``job`` on every rank with a recording planner writing into a scratch directory;
    return the launch outcome and the coordinator's trace (None if none was written).
    ``extra``: more arguments for ``job`` (after the device)."""
    check_picklable(
        model=scenario.model,
        recipe=scenario.recipe,
        planner=planner,
        optimizer=scenario.optimizer,
        state=scenario.state,
    )
    work = Path(tempfile.mkdtemp(prefix="dcpviz-run-"))
    try:
        trace_path = work / "trace.json"
        outcome = launch(
            job,
            scenario.world_size,
            (scenario, planner, str(root), str(trace_path), device, *extra),
            backend=backend,
            device=device,
            timeout=timeout,
            start_method=start_method,
            progress=progress,
        )
        return outcome, (read_trace(trace_path) if trace_path.is_file() else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def digests_of(
    payloads: dict[int, dict[str, Any]],
) -> dict[int, list[tuple[str, tuple[int, ...], str]]]:
    """Every rank's chunk digests, from the workers' payloads."""
    return {
        r: [(f, tuple(o), h) for f, o, h in p.get("digests", [])]
        for r, p in sorted(payloads.items())
    }
