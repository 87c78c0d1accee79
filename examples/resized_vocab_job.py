"""A grown vocabulary, loaded for real: save a model with FSDP, then load it into the same model
with a larger vocabulary, with the fix dcpviz's size hint prints.

    torchrun --nproc_per_node 2 examples/resized_vocab_job.py CKPT_DIR llama-tiny 1000 1024

The saved values are a function of each element's key and global position, so every rank
checks what it holds after the load against them: the saved rows of the resized tensors, the
new rows left as they were (NaN here), every other tensor exactly as saved.
"""

import dataclasses
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh

import dcpviz
from dcpviz.engine.job.models import LLAMA_CONFIGS, Transformer
from dcpviz.engine.job.recipes import apply_recipe
from dcpviz.engine.values.materialize import fill_by_position, local_boxes, position_values

CKPT, MODEL, OLD, NEW = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dist.init_process_group("gloo")
rank, mesh = dist.get_rank(), init_device_mesh("cpu", (dist.get_world_size(),))


def sharded(vocab):
    with torch.device("meta"):
        model = Transformer(dataclasses.replace(LLAMA_CONFIGS[MODEL], vocab_size=vocab))
    model = apply_recipe("fsdp", model, mesh)
    model.to_empty(device="cpu")
    return model


old = sharded(OLD)
fill_by_position(old.state_dict())  # every value a function of its key and global position
dcp.save(old.state_dict(), checkpoint_id=CKPT)

model = sharded(NEW)
with torch.no_grad():
    for p in model.parameters():
        p.fill_(float("nan"))  # whatever the load does not fill stays NaN

# -- the size hint's fix, as dcpviz prints it: one dcp.load, the resized keys read at their saved shape --
sd = model.state_dict()
resized = {"output.weight", "tok_embeddings.weight"}
dcp.load(
    sd,
    storage_reader=dcpviz.SafeFileSystemReader(CKPT),
    planner=dcpviz.RenamingLoadPlanner(resized=resized),
)

# -- check: saved rows are the saved values, new rows untouched, everything else loaded ------
lines = []
for key, value in sd.items():
    for local, offsets, sizes in local_boxes(value):
        rows = max(0, min(OLD, offsets[0] + sizes[0]) - offsets[0]) if key in resized else sizes[0]
        if rows:
            want = position_values(
                key,
                (OLD, *value.shape[1:]) if key in resized else tuple(value.shape),
                offsets,
                (rows, *sizes[1:]),
                value.dtype,
            )
            assert torch.equal(local[:rows], want), (rank, key)
        assert bool(local[rows:].isnan().all()), (rank, key)
        if key in resized:
            lines.append(
                f"rank {rank}: {key} rows {offsets[0]}-{offsets[0] + sizes[0] - 1}: "
                f"{rows} saved rows loaded, {sizes[0] - rows} new rows left as they were"
            )
# Each rank says its checks passed before any teardown, so a caller can tell a failed check from
# an abort while the process group shuts down (gloo's worker threads, at exit).
print(f"rank {rank}: every check passed", flush=True)
everyone = [None] * dist.get_world_size()
dist.all_gather_object(everyone, lines)
if rank == 0:
    print("\n".join(line for got in everyone for line in got))
    print("every other tensor holds exactly the saved values", flush=True)
dist.barrier()  # ranks leave together: gloo can abort a rank that exits while another still talks
dist.destroy_process_group()
print(f"rank {rank}: left the process group", flush=True)
