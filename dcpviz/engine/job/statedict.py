"""Build one rank's real sharded state dict: the model on meta, the recipe, state_dict()."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh

from dcpviz.core.errors import DcpvizError
from dcpviz.engine.job.collectives import no_collectives
from dcpviz.engine.job.models import build_model
from dcpviz.engine.job.recipes import apply_recipe
from dcpviz.engine.job.scenario import Scenario
from dcpviz.engine.job.training_state import (
    make_optimizer,
    planner_state_dict,
    saved_object,
    spec_name,
)
from dcpviz.engine.job.world import fake_world, mesh_device_type, process_as_found, rebind_to_rank


def build_mesh(scenario: Scenario, device_type: str | None = None) -> Any:
    """The scenario's DeviceMesh in the current (fake) world."""
    return init_device_mesh(
        device_type or mesh_device_type(scenario.device),
        tuple(scenario.mesh or (scenario.world_size,)),
        mesh_dim_names=tuple(scenario.mesh_dim_names or ()) or None,
    )


def build_model_on_meta(scenario: Scenario) -> torch.nn.Module:
    """The scenario's model built on the meta device (no memory for weights)."""
    model = build_model(scenario.model, "meta")
    # A factory may ignore the device context (explicit device=...); simulation must allocate
    # nothing, so anything left with storage moves to meta.
    if any(t.device.type != "meta" for t in [*model.parameters(), *model.buffers()]):
        model = model.to("meta")
    return cast_floating(model, scenario.torch_dtype)


def cast_floating(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """``model.to(dtype)`` for floating-point parameters and buffers only: ``Module.to`` would
    also cast complex tensors (a complex64 ``freqs_cis`` to float32 drops its imaginary half).
    ``_apply`` is the walk ``Module.to`` itself uses, so parameters stay Parameters."""
    if dtype is None:
        return model
    return model._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)


def rank_state_dict(scenario: Scenario, rank: int) -> tuple[dict[str, Any], int]:
    """The state dict rank ``rank``'s planner sees in dcp.save: the model's, or with an optimizer
    or app state the whole training state (``training_state.py``). Call inside
    ``fake_world(rank, W)``.

    Returns the state dict and how many DTensors were rebound to this rank's mesh.
    """
    mesh = build_mesh(scenario)
    model = apply_recipe(scenario.recipe, build_model_on_meta(scenario), mesh)
    if scenario.optimizer is None and scenario.state is None:
        with no_collectives("the model's state_dict (a state_dict hook or get_extra_state)"):
            state = model.state_dict()
        return rebind_to_rank(state, rank)
    optimizer = make_optimizer(scenario.optimizer, model)
    # The fake group does not communicate: a collective in the user's state code is refused.
    with no_collectives(
        f"the state callable {spec_name(scenario.state)} (or a Stateful it returned)"
        if scenario.state is not None
        else "building the training state"
    ):
        state = planner_state_dict(saved_object(scenario, model, optimizer, rank))
    return rebind_to_rank(state, rank)


@contextmanager
def as_rank(scenario: Scenario, rank: int) -> Iterator[dict[str, Any]]:
    """Be rank ``rank`` of the scenario's job for a block, holding that rank's real state dict.

        with dcpviz.as_rank(scenario, 3) as state_dict:
            planner = DefaultSavePlanner()
            planner.set_up_planner(state_dict, is_coordinator=False)
            plan = planner.create_local_plan()

    For teaching and for trying a planner by hand; simulate_save does this for every rank.
    """

    if not 0 <= rank < scenario.world_size:
        raise DcpvizError(
            f"rank={rank} is outside the job: ranks are 0..{scenario.world_size - 1}."
        )
    with process_as_found(), fake_world(rank, scenario.world_size):
        state_dict, _ = rank_state_dict(scenario, rank)
        yield state_dict
