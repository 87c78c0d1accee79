"""Write a real DCP checkpoint with real processes (gloo, CPU): the saved side of on-disk tests."""

from __future__ import annotations

import os
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_worker(rank: int, world_size: int, port: int, path: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from dcpviz.models import MLP

    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}")
    try:
        torch.manual_seed(0)
        model = MLP()
        mesh = init_device_mesh("cpu", (world_size,))
        for unit in model.fsdp_units():
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        dcp.save(model.state_dict(), checkpoint_id=path)
    finally:
        dist.destroy_process_group()


def write_fsdp_mlp_checkpoint(path: str, world_size: int = 2) -> str:
    """dcp.save of the 'mlp' preset under fully_shard on ``world_size`` real gloo processes."""
    import torch.multiprocessing as mp

    mp.start_processes(_save_worker, args=(world_size, _free_port(), str(path)), nprocs=world_size,
                       join=True, start_method="spawn")
    return str(path)
