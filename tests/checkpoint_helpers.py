"""Write a real DCP checkpoint with real processes (gloo, CPU): the saved side of on-disk tests."""

from __future__ import annotations

import warnings

import torch.distributed.checkpoint as dcp


def write_fsdp_mlp_checkpoint(path: str, world_size: int = 2) -> str:
    """dcp.save of the 'mlp' preset under fully_shard on ``world_size`` real gloo processes.

    Through ``run_save``, whose workers leave with ``os._exit`` once they have reported: gloo can
    abort a process at normal interpreter exit after a successful save (seen here in about 4 of
    20 two-rank runs), which made a hand-rolled spawn flaky.
    """
    import dcpviz

    res = dcpviz.run_save(
        dcpviz.Scenario(model="mlp", world_size=world_size, recipe="fsdp", device="cpu"), path
    )
    assert res.ok, res.errors
    return str(path)


def save_one_process(sd: dict, path) -> str:
    """A real single-process dcp.save into ``path`` (its 'no process group' warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=str(path), no_dist=True)
    return str(path)
