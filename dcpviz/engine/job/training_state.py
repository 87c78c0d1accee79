"""The whole training state a rank hands to ``dcp.save`` / ``dcp.load``: model, optimizer, app state.

``Scenario.optimizer`` adds an optimizer whose state comes from DCP's own
``torch.distributed.checkpoint.state_dict.get_state_dict`` (FQN-keyed, moments initialised, so
they are DTensors sharded like their parameters; ``step`` a plain tensor on every rank): the saved
object is ``{"model": model_sd, "optim": optim_sd}``. ``Scenario.state`` is a callable
``(model, optimizer, rank) -> dict`` giving the object itself (nested dicts, lists, ``Stateful``
objects, plain tensors, Python values), or a preset name (``STATE_PRESETS``).

The planners see what ``dcp.save`` / ``dcp.load`` hand them: every top-level ``Stateful``
replaced by its ``state_dict()``, by DCP's own ``_stateful_to_state_dict``.

Everything here runs inside a rank's world (``fake_world`` in simulation, the process group in
real runs), so ``dist.get_rank()`` works in a user's state callable. On meta, DCP's optimizer
initialisation (a zero-gradient step) allocates nothing but the 0-d ``step`` counters.
"""

from __future__ import annotations

import inspect
import io
import pickle
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.stateful import Stateful

from dcpviz.core.errors import DcpvizError, ScenarioError, UserCodeError, did_you_mean

# "sgd" has momentum so that it has state to save (plain SGD saves none).
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "sgd": lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9),
}


# -- presets for the app state people copy most ---------------------------------------------------
class AppState(Stateful):
    """PyTorch's DCP tutorial ("Getting Started with Distributed Checkpoint"): model and
    optimizer behind one ``Stateful``, with DCP's ``get_state_dict`` / ``set_state_dict``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if self.optimizer is None:
            return {"model": get_model_state_dict(self.model)}
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        if self.optimizer is None:
            set_model_state_dict(self.model, state_dict["model"])
            return
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state_dict["model"],
            optim_state_dict=state_dict["optim"],
        )


def dcp_tutorial_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, rank: int
) -> dict[str, Any]:
    """``{"app": AppState(model, optimizer)}``, as in PyTorch's DCP tutorial."""
    return {"app": AppState(model, optimizer)}


class TorchtitanOptimizers(Stateful):
    """torchtitan's ``OptimizersContainer``: DCP's optimizer state dict, flattened
    (``flatten_optimizer_state_dict=True``: keys like ``state.layers.0.w.exp_avg``)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def _options(self) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(flatten_optimizer_state_dict=True)

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=self._options())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state_dict, options=self._options())


class TorchtitanScheduler(Stateful):
    """torchtitan's ``LRSchedulersContainer``: the first scheduler's ``state_dict()`` (a linear
    warmup ``LambdaLR``)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)


def _warmup(step: int) -> float:
    return min(1.0, (step + 1) / 200)


class TorchtitanDataloader(Stateful):
    """torchtitan's ``ParallelAwareDataloader``: the base loader's state pickled under this DP
    rank's own key (``dp_rank_{i}``), so each DP rank's position survives DCP's dedup."""

    def __init__(self, dp_rank: int, dp_world_size: int) -> None:
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        self.position = {"sample_idx": 1000 * dp_rank, "epoch": 0}

    def state_dict(self) -> dict[str, Any]:
        return {
            f"dp_rank_{self.dp_rank}": pickle.dumps(self.position),
            "world_size": self.dp_world_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torchtitan unpickles here; a simulated load never reaches this.
        self.loaded = state_dict


class TorchtitanTrainState(Stateful):
    """torchtitan's ``TrainState``: step counters as tensors, the loss log as bytes."""

    def __init__(self) -> None:
        self.step, self.ntokens_seen = 1, 0

    def state_dict(self) -> dict[str, Any]:
        log = io.BytesIO()
        torch.save([], log)
        log.seek(0)
        return {
            "step": torch.tensor(self.step, dtype=torch.int32),
            "ntokens_seen": torch.tensor(self.ntokens_seen, dtype=torch.int64),
            "global_avg_losses": log,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = int(state_dict["step"])
        self.ntokens_seen = int(state_dict["ntokens_seen"])


class TorchtitanModel(Stateful):
    """torchtitan's ``ModelWrapper``: DCP's model state dict; its keys go to the top level."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, state_dict, options=None)


def data_parallel_rank(model: nn.Module, rank: int) -> tuple[int, int]:
    """(this rank's data-parallel rank, DP world size): the coordinate along every mesh dim of
    the model's DTensor parameters not named "tp" (torchtitan's layout); a model without
    DTensors is plain data parallel (every rank its own DP rank)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        if isinstance(p, DTensor):
            mesh = p.device_mesh
            names = mesh.mesh_dim_names or tuple(f"dim{i}" for i in range(mesh.ndim))
            # From the mesh's rank layout, not mesh.get_coordinate(): in a one-process
            # simulation a parameter can carry an earlier rank's mesh (DESIGN.md's hazard).
            coord = DeviceMesh._compute_coordinates_from_mesh(mesh.mesh, rank) or [0] * mesh.ndim
            dp_rank, dp_size = 0, 1
            for i, name in enumerate(names):
                if name != "tp":
                    dp_rank, dp_size = dp_rank * mesh.size(i) + coord[i], dp_size * mesh.size(i)
            return dp_rank, dp_size
    return rank, dist.get_world_size() if dist.is_initialized() else 1


def torchtitan_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, rank: int
) -> dict[str, Any]:
    """torchtitan's ``CheckpointManager`` layout: the model's keys at the top level, then
    ``optimizer`` (flattened), ``lr_scheduler``, ``dataloader`` (``dp_rank_{i}`` keys) and
    ``train_state``."""
    dp_rank, dp_size = data_parallel_rank(model, rank)
    state: dict[str, Any] = dict(TorchtitanModel(model).state_dict())
    if optimizer is not None:
        state["optimizer"] = TorchtitanOptimizers(model, optimizer)
        state["lr_scheduler"] = TorchtitanScheduler(optimizer)
    state["dataloader"] = TorchtitanDataloader(dp_rank, dp_size)
    state["train_state"] = TorchtitanTrainState()
    return state


STATE_PRESETS: dict[str, Callable[..., dict[str, Any]]] = {
    "dcp-tutorial": dcp_tutorial_state,
    "torchtitan": torchtitan_state,
}
# Presets whose state is the same on every rank but for its DTensors' shards (proven by
# construction: model and optimizer from get_state_dict, nothing rank-dependent), so the fast
# path's one-template shortcut stays exact. torchtitan's is not: its data-loader keys differ.
SPMD_STATE_PRESETS = frozenset({"dcp-tutorial"})


# -- Scenario field checks ---------------------------------------------------------------------
def check_optimizer_spec(spec: Any) -> None:
    if spec is None or callable(spec):
        return
    if isinstance(spec, str) and spec in OPTIMIZERS:
        return
    name = spec if isinstance(spec, str) else type(spec).__name__
    raise ScenarioError(
        f"optimizer={spec!r} is not supported.{did_you_mean(str(name), OPTIMIZERS)} Use None, one of "
        f"{sorted(OPTIMIZERS)}, or a callable (params) -> torch.optim.Optimizer."
    )


def check_state_spec(spec: Any) -> None:
    if spec is None or callable(spec) or (isinstance(spec, str) and spec in STATE_PRESETS):
        return
    raise ScenarioError(
        f"state={spec!r} is not supported.{did_you_mean(str(spec), STATE_PRESETS)} Use None (the model's "
        f"state dict, with the optimizer's if any), one of {sorted(STATE_PRESETS)}, or a callable "
        "(model, optimizer, rank) -> dict."
    )


def spec_name(spec: Any) -> str:
    """What a trace records: '' for None, the preset name, or 'callable:module.qualname'."""
    if spec is None:
        return ""
    if isinstance(spec, str):
        return spec
    mod = getattr(spec, "__module__", None) or "?"
    qual = getattr(spec, "__qualname__", None) or type(spec).__name__
    return f"callable:{mod}.{qual}"


# -- building a rank's state -------------------------------------------------------------------
def make_optimizer(spec: Any, model: nn.Module) -> torch.optim.Optimizer | None:
    if spec is None:
        return None
    factory = OPTIMIZERS[spec] if isinstance(spec, str) else spec
    try:
        optimizer = factory(model.parameters())
    except Exception as exc:
        if isinstance(spec, str):
            raise
        raise UserCodeError(
            f"the optimizer factory {spec_name(spec)} raised {type(exc).__name__}: {exc}. It takes the "
            "model's parameters and returns a torch.optim.Optimizer."
        ) from exc
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ScenarioError(
            f"the optimizer factory {spec_name(spec)} returned {type(optimizer).__name__}, not a "
            "torch.optim.Optimizer."
        )
    _check_optimizer(spec, optimizer, model)
    return optimizer


def _check_optimizer(spec: Any, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """What DCP's get_state_dict needs of an optimizer, checked before it fails inside torch:
    it holds only the model's parameters (the state dict names each by its model key), and its
    ``step`` runs without a closure (DCP, and run_save, call ``step()`` to create the state)."""
    own = {id(p) for p in model.parameters()}
    for g, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            if id(p) not in own:
                raise ScenarioError(
                    f"the optimizer from {spec_name(spec)} holds a parameter that is not the model's "
                    f"(param_groups[{g}]['params'][{i}], shape {tuple(p.shape)}): DCP's get_state_dict "
                    "names optimizer state by the model's parameter names and cannot save it. Build "
                    "the optimizer from the parameters it is given (the model's)."
                )
    try:
        closure = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):  # a step without a readable signature: nothing to say
        return
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ScenarioError(
            f"the optimizer from {spec_name(spec)} ({type(optimizer).__name__}) needs a closure in "
            "step(closure): dcpviz builds a fresh optimizer, and DCP's get_state_dict creates its "
            "state by calling step() with no closure, which this optimizer refuses. Use an optimizer whose step(closure=None) "
            "works without one (AdamW, SGD, ...)."
        )


def saved_object(
    scenario: Any, model: nn.Module, optimizer: torch.optim.Optimizer | None, rank: int
) -> dict[str, Any]:
    """What rank ``rank`` passes to ``dcp.save`` / ``dcp.load`` (Stateful objects intact)."""
    spec = scenario.state
    if spec is None:
        if optimizer is None:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {"model": model_sd, "optim": optim_sd}
    fn = STATE_PRESETS[spec] if isinstance(spec, str) else spec
    try:
        state = fn(model, optimizer, rank)
    except DcpvizError:
        raise  # already says what is wrong (a collective under simulation, ...)
    except Exception as exc:
        if isinstance(spec, str):
            raise
        raise UserCodeError(
            f"the state callable {spec_name(spec)} raised {type(exc).__name__}: {exc}. It takes "
            "(model, optimizer, rank) and returns the dict that rank passes to dcp.save."
        ) from exc
    if not isinstance(state, dict):
        raise ScenarioError(
            f"the state callable {spec_name(spec)} returned {type(state).__name__}; dcp.save needs a "
            "dict (e.g. {'model': model.state_dict(), 'optim': ...})."
        )
    return state


def step_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One real optimizer step on real tensors (run_save): each parameter's gradient is half its
    own values, which run_save fills by global position, so every moment is a function of the
    element's position too and comes out the same bytes on any layout."""
    with torch.no_grad():
        for p in model.parameters():
            p.grad = p.detach().clone() * 0.5
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def poison_optimizer(optimizer: torch.optim.Optimizer | None) -> None:
    """NaN in every floating optimizer state tensor (run_load): what a load leaves unfilled stands out."""
    if optimizer is None:
        return
    with torch.no_grad():
        for entry in optimizer.state.values():
            for value in entry.values():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    value.fill_(float("nan"))


def restore_after_load(
    scenario: Any, model: nn.Module, optimizer: torch.optim.Optimizer | None, saved: dict[str, Any]
) -> None:
    """What a training script does after ``dcp.load`` with the default training state: DCP's
    ``set_state_dict`` puts the loaded state into the model and optimizer (Stateful app states
    do this in their own ``load_state_dict``, which dcp.load calls)."""
    if scenario.state is None and optimizer is not None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(
            model, optimizer, model_state_dict=saved["model"], optim_state_dict=saved["optim"]
        )


def planner_state_dict(saved: dict[str, Any]) -> dict[str, Any]:
    """The state dict DCP's planners see: each top-level Stateful replaced by its
    ``state_dict()``, by DCP's own ``_stateful_to_state_dict`` (what dcp.save and dcp.load do)."""
    from torch.distributed.checkpoint.state_dict_saver import _stateful_to_state_dict

    return _stateful_to_state_dict(saved)
