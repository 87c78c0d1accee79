"""Pipeline stages as torchtitan splits a model: which modules each stage holds.

torchtitan (``torchtitan/distributed/pipeline_parallel.py``) splits a decoder into stages with
``generate_llm_fqn_per_model_part(num_stages, num_layers, input_weight, output_weight)`` and
keeps, on each pipeline rank, only its stage's modules with ``pipeline_module_split``: layers of
a ``ModuleDict``/``ModuleList`` not in the stage are deleted, any other child not in the stage is
set to ``None``. The state dict of a stage therefore holds only that stage's keys, under the
whole model's names (``layers.7.attention.wq.weight`` on whichever stage holds layer 7).

``stage_modules`` follows ``generate_llm_fqn_per_model_part`` (the input module
``tok_embeddings`` and the output modules ``norm`` + ``output`` weigh like one layer each, as
torchtitan's defaults ``pipeline_parallel_first_stage_less_layers=1`` and
``pipeline_parallel_last_stage_less_layers=1``); ``keep_stage`` follows
``pipeline_module_split``. One stage per pipeline rank: torchtitan's default schedule
(``1F1B``) is a single-stage schedule; looped/V schedules (several virtual stages per rank) are
not simulated.
"""

from __future__ import annotations

import torch.nn as nn

from dcpviz.core.errors import DcpvizError

INPUT_MODULES = ("tok_embeddings",)
OUTPUT_MODULES = ("norm", "output")


def _layers_per_stage(
    num_stages: int, num_layers: int, input_weight: int, output_weight: int
) -> tuple[int, int]:
    """torchtitan's budget per stage and how many stages get one more; its refusals as DcpvizError."""
    effective = num_layers + input_weight + output_weight
    per_stage, extra = divmod(effective, num_stages)
    if num_stages > effective or per_stage == 0:
        raise DcpvizError(
            f"pp={num_stages} stages but the model has {num_layers} layers ({effective} with the "
            "embeddings and the output counted as one layer each, as torchtitan counts them): "
            f"torchtitan refuses more stages than that. Use pp <= {effective // max(1, max(input_weight, output_weight))} "
            "or a deeper model."
        )
    if input_weight > per_stage or output_weight > per_stage:
        raise DcpvizError(
            f"pp={num_stages} leaves {per_stage} layer(s) per stage, fewer than the weight of the "
            "embeddings or the output (1): torchtitan refuses this split. Use a smaller pp."
        )
    return per_stage, extra


def stage_modules(
    num_stages: int, num_layers: int, input_weight: int = 1, output_weight: int = 1
) -> list[list[str]]:
    """The module names of each stage, as torchtitan's ``generate_llm_fqn_per_model_part``.

    Raises DcpvizError where torchtitan raises (more stages than effective layers, an empty
    stage, a weight above the layers per stage), naming the fix."""
    if num_stages < 1:
        raise DcpvizError(f"pp={num_stages}: the pipeline degree must be at least 1.")
    layer_names = [f"layers.{i}" for i in range(num_layers)]
    if num_stages == 1:
        return [[*INPUT_MODULES, *layer_names, *OUTPUT_MODULES]]
    per_stage, extra = _layers_per_stage(num_stages, num_layers, input_weight, output_weight)
    stages: list[list[str]] = []
    current = 0
    for idx in range(num_stages):
        budget = per_stage + (1 if idx < extra else 0)
        names: list[str] = []
        if idx == 0:
            names += INPUT_MODULES
            budget -= input_weight
        elif idx == num_stages - 1:
            budget -= output_weight
        for _ in range(budget):
            if current < num_layers:
                names.append(f"layers.{current}")
                current += 1
        if idx == num_stages - 1:
            names += OUTPUT_MODULES
        stages.append(names)
    return stages


def check_pipelinable(model: nn.Module) -> int:
    """The number of layers of a model torchtitan can split (``tok_embeddings``, ``layers``,
    ``norm``, ``output`` children); DcpvizError naming the fix otherwise."""
    children = dict(model.named_children())
    missing = [n for n in (*INPUT_MODULES, "layers", *OUTPUT_MODULES) if n not in children]
    layers = children.get("layers")
    if missing or not isinstance(layers, (nn.ModuleDict, nn.ModuleList)):
        raise DcpvizError(
            f"mesh dim 'pp' splits the model into stages the way torchtitan does, which needs a "
            f"decoder with children tok_embeddings, layers (a ModuleDict or ModuleList), norm and "
            f"output; {type(model).__name__} lacks {', '.join(missing) or 'a layers container'}. "
            "Use a llama or MoE preset, give the model those children, or drop 'pp' from mesh_dim_names."
        )
    return len(layers)


def keep_stage(model: nn.Module, modules: list[str]) -> nn.Module:
    """Keep only ``modules`` in ``model`` (in place), as torchtitan's ``pipeline_module_split``:
    a layers container keeps the listed layers, any other child not listed becomes None."""
    keep = set(modules)
    for name, child in list(model.named_children()):
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
            wanted = {m.split(".", 1)[1] for m in keep if m.startswith(f"{name}.")}
            if isinstance(child, nn.ModuleDict):
                for key in list(child.keys()):
                    if key not in wanted:
                        del child[key]
            else:
                setattr(
                    model, name, nn.ModuleList([m for i, m in enumerate(child) if str(i) in wanted])
                )
        elif name not in keep:
            setattr(model, name, None)
    return model
