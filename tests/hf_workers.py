"""Module-level worker for a real multi-process save with DCP's HF writer (spawned workers
import it by name; tests/ is on their sys.path)."""

from __future__ import annotations

import warnings
from typing import Any


def floats(model, optimizer, rank):
    import torch

    return {
        k: v
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    }


def hf_save_job(
    rank: int, world: int, report: Any, path: str, mapping: dict | None
) -> dict[str, Any]:
    """fully_shard an MLP over the ranks (dcpviz's 'fsdp' recipe), save its floating tensors with
    HuggingFaceStorageWriter(save_distributed=True, enable_consolidation=True)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.device_mesh import init_device_mesh

    from dcpviz.engine.job.models import build_model
    from dcpviz.engine.job.recipes import apply_recipe

    torch.manual_seed(0)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("shard",))
    model = apply_recipe("fsdp", build_model("mlp", "cpu"), mesh)
    writer = HuggingFaceStorageWriter(
        path, fqn_to_index_mapping=mapping, save_distributed=True, enable_consolidation=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(floats(model, None, rank), storage_writer=writer)
    return {}


def hf_capture_job(
    rank: int, world: int, report: Any, path: str, trace_path: str, pass_writer: bool
) -> dict[str, Any]:
    """fully_shard an MLP, save it through HuggingFaceStorageWriter(save_distributed=True) with a
    RecordingSavePlanner; complete() with or without the writer."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.device_mesh import init_device_mesh

    from dcpviz import RecordingSavePlanner
    from dcpviz.engine.job.models import build_model
    from dcpviz.engine.job.recipes import apply_recipe

    torch.manual_seed(0)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("shard",))
    model = apply_recipe("fsdp", build_model("mlp", "cpu"), mesh)
    writer = HuggingFaceStorageWriter(path, save_distributed=True)
    rec = RecordingSavePlanner(trace_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md = dcp.save(floats(model, None, rank), storage_writer=writer, planner=rec)
    rec.complete(md, storage_writer=writer if pass_writer else None)
    return {"problems": list(rec.problems)}
