"""Build torchtitan's own models on meta and compare their state dicts with dcpviz's presets.

Also saves torchtitan's own deepseek_v3 model at deepseek-tiny's sizes, parallelised by
torchtitan's own ``apply_non_moe_tp`` / ``apply_moe_ep_tp`` / ``apply_fsdp`` (a callable recipe),
and compares every rank's local plan with recipe='torchtitan' on the ``deepseek-tiny`` preset.

Run by ``tests/test_titan_deepseek.py::test_presets_equal_torchtitans_own_models`` when
``DCPVIZ_TORCHTITAN`` names an unpacked torchtitan 0.2.2 wheel (the last release with the module
names the presets follow; 0.3.0 renamed ``output`` to ``lm_head`` and the experts' parameters)::

    pip download --no-deps torchtitan==0.2.2 -d /tmp/w && unzip -q /tmp/w/*.whl -d /tmp/tt
    DCPVIZ_TORCHTITAN=/tmp/tt pytest tests/test_titan_deepseek.py -k torchtitans_own

torchtitan's package imports its training stack (tyro, torchdata, tensorboard, triton kernels)
at import time; none of it builds a model, and installing it could pull another torch. Those
modules are stood in for by empty mocks, in this separate process only. Prints one JSON object:
preset -> [equal names/shapes/dtypes/order, keys, torchtitan's parameters, ours], and
"recipe" -> {layout: ranks whose local plans differ}.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
from unittest import mock

STUBBED = {"tyro", "torchdata", "datasets", "tokenizers", "tiktoken", "wandb", "psutil"}
STUBBED_MODULES = {
    "torchtitan.models.moe.kernels",  # triton kernels
    "torchtitan.components.dataloader",  # subclasses torchdata's loader
    "torchtitan.components.metrics",  # tensorboard
    "torch.utils.tensorboard",
}


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in STUBBED or name in STUBBED_MODULES:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = mock.MagicMock(name=spec.name)
        module.__path__, module.__spec__ = [], spec
        return module

    def exec_module(self, module):
        pass


def main(root: str) -> None:
    sys.path.insert(0, root)
    sys.meta_path.insert(0, _Stubs())
    import torch
    from torchtitan.models.deepseek_v3 import deepseekv3_args
    from torchtitan.models.deepseek_v3.model.model import DeepSeekV3Model
    from torchtitan.models.llama3 import llama3_args
    from torchtitan.models.llama3.model.model import Transformer

    from dcpviz.engine.job.models import PRESETS

    def deepseek(name):
        args = deepseekv3_args[name]
        args.moe_impl = "standard"  # set by update_from_config in a job: its default backend
        return DeepSeekV3Model(args)

    def llama(name):
        args = llama3_args[name]
        args.vocab_size = 128256  # set from the tokenizer by update_from_config in a job
        return Transformer(args)

    pairs = {
        "deepseek-v3": lambda: deepseek("671B"),
        "llama3-8b": lambda: llama("8B"),
        "llama3-70b": lambda: llama("70B"),
        "llama3-405b": lambda: llama("405B"),
    }
    out = {}
    for preset, build in pairs.items():
        with torch.device("meta"):
            theirs, ours = build(), PRESETS[preset]()
        a = [(k, tuple(v.shape), str(v.dtype)) for k, v in theirs.state_dict().items()]
        b = [(k, tuple(v.shape), str(v.dtype)) for k, v in ours.state_dict().items()]
        count = [sum(p.numel() for p in m.parameters()) for m in (theirs, ours)]
        out[preset] = [a == b, len(a), *count]
    out["recipe"] = recipe_check()
    print(json.dumps(out))


# torchtitan's mesh names where its code indexes meshes by name ("efsdp" in apply_fsdp); the
# grid is the same as the dcpviz side's, so rank r is the same rank on both.
TITAN_NAMES = {"dp_shard": "efsdp"}
LAYOUTS = [
    ((2, 2), ("dp_shard", "tp")),
    ((2, 2, 2), ("dp_shard", "ep", "tp")),
    ((2, 1, 4), ("dp_replicate", "dp_shard", "ep")),
    ((2, 8), ("dp_shard", "ep")),
    ((4,), ("tp",)),
]


def titan_tiny():
    """torchtitan's DeepSeekV3Model at deepseek-tiny's sizes."""
    from torchtitan.models.deepseek_v3.model.args import DeepSeekV3ModelArgs
    from torchtitan.models.deepseek_v3.model.model import DeepSeekV3Model
    from torchtitan.models.moe import MoEArgs

    from dcpviz.engine.job.deepseek import DEEPSEEK_CONFIGS

    c = DEEPSEEK_CONFIGS["deepseek-tiny"]
    args = DeepSeekV3ModelArgs(
        max_seq_len=64,
        vocab_size=c.vocab_size,
        dim=c.dim,
        inter_dim=c.inter_dim,
        moe_inter_dim=c.moe_inter_dim,
        n_layers=c.n_layers,
        n_dense_layers=c.n_dense_layers,
        n_heads=c.n_heads,
        moe_args=MoEArgs(
            num_experts=c.num_experts, num_shared_experts=c.num_shared_experts, top_k=c.top_k
        ),
        q_lora_rank=c.q_lora_rank,
        kv_lora_rank=c.kv_lora_rank,
        qk_nope_head_dim=c.qk_nope_head_dim,
        qk_rope_head_dim=c.qk_rope_head_dim,
        v_head_dim=c.v_head_dim,
    )
    args.moe_impl = "standard"
    return DeepSeekV3Model(args)


def titan_parallelize(model, mesh):
    """torchtitan's deepseek_v3 parallelize steps (no pp, no cp), on this rank's mesh."""
    import torch
    from torchtitan.models.deepseek_v3.infra.parallelize import apply_non_moe_tp
    from torchtitan.models.llama4.infra.parallelize import apply_fsdp, apply_moe_ep_tp

    names = mesh.mesh_dim_names
    tp = mesh["tp"] if "tp" in names else None
    ep = mesh["ep"] if "ep" in names else None
    if tp is not None:
        apply_non_moe_tp(
            model, tp, loss_parallel=False, enable_float8_tensorwise_tp=False, cp_enabled=False
        )
    if tp is not None or ep is not None:
        both = ep is not None and tp is not None
        apply_moe_ep_tp(
            model,
            tp_mesh=tp,
            ep_mesh=ep,
            etp_mesh=tp if both else None,
            ep_etp_mesh=mesh[("ep", "tp")] if both else None,
        )
    shard = [d for d in ("efsdp", "ep") if d in names]
    if not shard:
        return model
    mesh[tuple(shard)]._flatten("fsdp")
    rep = ["dp_replicate"] if "dp_replicate" in names else []
    apply_fsdp(
        model,
        mesh[(*rep, "fsdp")],
        param_dtype=torch.float32,
        reduce_dtype=torch.float32,
        pp_enabled=False,
        ep_degree=mesh["ep"].size() if ep is not None else 1,
        edp_mesh=mesh[(*rep, "efsdp")] if ep is not None else None,
    )
    return model


def recipe_check() -> dict[str, list[int]]:
    import math

    import dcpviz

    differ = {}
    for mesh, names in LAYOUTS:
        W = math.prod(mesh)
        ours = dcpviz.simulate_save(
            dcpviz.Scenario(
                model="deepseek-tiny",
                world_size=W,
                mesh=mesh,
                mesh_dim_names=names,
                recipe="torchtitan",
            ),
            fast=False,
        )
        theirs = dcpviz.simulate_save(
            dcpviz.Scenario(
                model=titan_tiny,
                world_size=W,
                mesh=mesh,
                mesh_dim_names=tuple(TITAN_NAMES.get(n, n) for n in names),
                recipe=titan_parallelize,
            ),
            fast=False,
        )
        assert ours.ok and theirs.ok, (ours.errors, theirs.errors)
        key = "x".join(f"{n}{s}" for n, s in zip(names, mesh))
        differ[key] = [r for r in range(W) if _plan(ours, r) != _plan(theirs, r)]
    return differ


def _plan(result, rank):
    items = result.trace.items
    return sorted(
        (it.fqn, it.item_type, it.offsets, it.sizes, it.dtype)
        for it in (items[i] for i in result.trace.local_plans[rank].items)
    )


if __name__ == "__main__":
    main(sys.argv[1])
