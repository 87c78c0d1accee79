"""What both recording planners share: the ``Recorder`` base (the wrapped planner, the trace path
template, the rank, problems kept out of DCP's way), the state dict as DCP's default planner
flattens it, and the scenario a captured state dict tells about.

Imports nothing from the simulator or its shortcuts (an import-linter contract): this is the code
a user runs inside their training job.
"""

from __future__ import annotations

import os
import string
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.tensor import DTensor

from dcpviz.core.errors import DcpvizError, RecordingWarning
from dcpviz.core.trace import ScenarioInfo
from dcpviz.engine.convert.shared import planner_info
from dcpviz.engine.planning.stamps import scenario_info


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def flattened(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The state dict as DCP's default planner sees it (nested dicts flattened to dotted keys)."""
    try:
        return flatten_state_dict(state_dict)[0]
    except Exception:  # an exotic container: fall back to the top level
        return dict(state_dict)


def infer_scenario(state_dict: dict[str, Any], world_size: int) -> tuple[ScenarioInfo, list[str]]:
    """What a captured state dict tells about the job: the mesh (largest DTensor mesh, as the
    root mesh the DTensors were sharded from), its dim names, the dtype and device of most
    tensors. The model and recipe are not in a state dict: recorded as 'captured'."""
    meshes: dict[int, Any] = {}
    dtypes: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for value in state_dict.values():
        if isinstance(value, DTensor):
            mesh = value.device_mesh
            root = mesh._get_root_mesh() if hasattr(mesh, "_get_root_mesh") else mesh
            meshes.setdefault(id(root), root)
            kinds["(" + ", ".join(type(p).__name__ for p in value.placements) + ")"] += 1
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                dtypes[str(value.dtype).removeprefix("torch.")] += 1
            devices[value.device.type] += 1
    notes = []
    if meshes:
        root = max(meshes.values(), key=lambda m: (m.size(), m.ndim))
        shape = tuple(int(d) for d in root.shape)
        names = tuple(root.mesh_dim_names or (f"dim{i}" for i in range(root.ndim)))
        if len({tuple(m.shape) for m in meshes.values()}) > 1:
            notes.append(
                f"DTensors use {len(meshes)} different root meshes; the largest ({shape}) is shown."
            )
        if root.size() != world_size:
            notes.append(
                f"The DTensors' mesh holds {root.size()} ranks but dcp.save's group has {world_size}."
            )
    else:
        shape, names = (world_size,), ("dim0",)
        notes.append(
            "No DTensor in the coordinator's state dict: the mesh shown is 1-D over the save group."
        )
    if kinds:
        notes.append(
            "Placements seen on the coordinator: "
            + ", ".join(f"{k} x{n}" for k, n in kinds.most_common())
            + ". The recipe is not recorded in a state dict."
        )
    info = ScenarioInfo(
        model="captured",
        world_size=world_size,
        mesh=shape,
        mesh_dim_names=names,
        recipe="captured",
        dtype=dtypes.most_common(1)[0][0] if dtypes else "float32",
        device=devices.most_common(1)[0][0] if devices else "cpu",
    )
    return info, notes


def _scenario_info(scenario: Any) -> ScenarioInfo | None:
    if scenario is None or isinstance(scenario, ScenarioInfo):
        return scenario

    # Deferred: the Scenario's presets and recipes are loaded only where a Scenario is given
    # (so a user's job that records with scenario=None loads none of them).
    from dcpviz.engine.job.scenario import Scenario

    if isinstance(scenario, Scenario):
        return scenario_info(scenario)
    raise DcpvizError(f"scenario={scenario!r} must be a dcpviz.Scenario (or None to infer it).")


def check_path_template(path: str | os.PathLike[str]) -> str:
    """``path`` as a trace path template: ``{n}`` (the call's number, format spec allowed, e.g.
    ``{n:03d}``) is its only placeholder. Checked when the planner is built, so a bad template
    fails there and never inside the user's dcp.save."""
    try:
        template = os.fspath(path)
    except TypeError:
        raise DcpvizError(f"path={path!r} must be a file path (str or os.PathLike).") from None
    if not isinstance(template, str):
        template = os.fsdecode(template)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise DcpvizError(
            f"path={template!r} is not a valid path template ({exc}). The only placeholder is {{n}} "
            "(the save's number); write a literal brace as '{{' or '}}'."
        ) from None
    bad = [f for f in fields if f != "n"]
    if bad:
        raise DcpvizError(
            f"path={template!r} has the placeholder {{{bad[0]}}}, but the only one filled in is {{n}} "
            "(the number of the dcp call this planner serves). Put the rank into the path yourself, "
            'e.g. f"plan_{rank}_{{n}}.json" (only the coordinator writes a trace).'
        )
    try:
        template.format(n=0)
    except (ValueError, TypeError) as exc:  # a format spec that does not fit an int, e.g. {n:s}
        raise DcpvizError(
            f"path={template!r}: {{n}} is an integer, and its format fails ({exc})."
        ) from None
    return template


class Recorder:
    """What both recording planners share: the wrapped planner (default DCP's), where the trace
    goes, this process's rank, one numbered trace per dcp call, and problems of their own kept
    out of DCP's way. Subclasses also derive from DCP's SavePlanner / LoadPlanner and define
    ``_reset`` (forget the previous call)."""

    problems: list[str]

    def _init_recorder(
        self, path: str | os.PathLike[str], planner: Any, base: type, default: type, scenario: Any
    ) -> None:
        """Set up the wrapped planner, the path template and the rank. Options are read before
        set_up_planner adds state."""
        template = check_path_template(path)
        if planner is None:
            planner = default()
        elif isinstance(planner, type) and issubclass(planner, base):
            planner = planner()
        if not isinstance(planner, base):
            raise DcpvizError(
                f"planner={planner!r} is not a torch.distributed.checkpoint {base.__name__}."
            )
        if isinstance(planner, type(self)):
            raise DcpvizError(
                f"planner is already a {type(self).__name__}; wrap the inner planner once."
            )
        self._inner = planner
        self._path_template = template
        self._saves = -1  # calls to set_up_planner so far (one per dcp call)
        self.path = Path(template.format(n=0))
        self._scenario = _scenario_info(scenario)
        self._planner_info = planner_info(planner, default)
        self._rank, self._world = _rank_and_world()
        self.is_coordinator = False
        self._reset()

    def _reset(self) -> None:
        raise NotImplementedError

    def _start_call(self, is_coordinator: bool) -> None:
        """Begin one dcp.save / dcp.load: one planner object often serves every periodic save, so
        each call starts afresh (and numbers its trace when the path holds ``{n}``)."""
        self._rank, self._world = _rank_and_world()
        self.is_coordinator = is_coordinator
        self._saves += 1
        self.path = Path(self._path_template.format(n=self._saves))
        self._reset()

    def _record_safely(self, what: str, step: Callable[..., Any], *args: Any) -> Any:
        """Run one of the recorder's own steps. Recording must never change what DCP does, so a
        failure here (a trace that cannot be built or written) becomes a ``RecordingWarning`` and
        a note in ``problems``; the dcp call goes on. Returns None after a failure."""
        try:
            return step(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of ours must stay out of DCP's way
            self._note_problem(what, exc)
            return None

    def _note_problem(self, what: str, exc: BaseException) -> None:
        """Record that the recorder could not do ``what``: a RecordingWarning and a problem note."""
        message = (
            f"{type(self).__name__} could not {what} ({type(exc).__name__}: {exc}); "
            "the checkpoint call itself is not affected."
        )
        self.problems.append(message)
        warnings.warn(message, RecordingWarning, stacklevel=2)

    def _problem_notes(self) -> list[str]:
        """The recorder's problems so far, as trace notes."""
        return [f"Recording problem: {p}" for p in self.problems]
