"""Capture DCP's save plan from a real distributed job.

    torchrun --nproc_per_node 2 examples/capture_job.py --trace out.json
    torchrun --nproc_per_node 1 examples/capture_job.py --trace out.json --device cuda   # NCCL, one GPU per rank

Each rank shards a small model with FSDP (gloo on CPU, NCCL on GPUs) and saves it with ``dcp.save`` through
``dcpviz.RecordingSavePlanner``. Rank 0 (DCP's coordinator) writes ``out.json``; open it with
``dcpviz.load_trace("out.json")`` (tables) or ``dcpviz.explore(...)`` in a notebook. In your own
job the only change is the ``planner=`` argument (and ``complete()`` after the save).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import dcpviz


def build_model(mesh) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 190), nn.ReLU(), nn.Linear(190, 3))
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trace", default="out.json", help="where rank 0 writes the dcpviz trace")
    parser.add_argument(
        "--checkpoint", default="capture_ckpt", help="checkpoint directory to save into"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: gloo; cuda: NCCL with one GPU per rank (LOCAL_RANK)",
    )
    args = parser.parse_args()

    # Keep gloo's and NCCL's sockets on loopback (this example runs on one machine).
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    mesh = init_device_mesh(args.device, (dist.get_world_size(),), mesh_dim_names=("shard",))
    model = build_model(mesh)

    planner = dcpviz.RecordingSavePlanner(args.trace)  # wraps DCP's DefaultSavePlanner
    dcp.save(model.state_dict(), checkpoint_id=args.checkpoint, planner=planner)
    planner.complete()  # adds where the bytes went (known only once dcp.save finished)

    if dist.get_rank() == 0:
        result = dcpviz.load_trace(args.trace)
        print(f"trace written to {args.trace}: {result}")
    # Leave together: a rank that tears gloo down while its peer is still busy can abort at exit
    # ("terminate called without an active exception") after a good save.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
