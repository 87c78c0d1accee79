"""Build torchtitan's own models on meta and compare their state dicts with dcpviz's presets.

Run by ``tests/test_titan_deepseek.py::test_presets_equal_torchtitans_own_models`` when
``DCPVIZ_TORCHTITAN`` names an unpacked torchtitan 0.2.2 wheel (the last release with the module
names the presets follow; 0.3.0 renamed ``output`` to ``lm_head`` and the experts' parameters)::

    pip download --no-deps torchtitan==0.2.2 -d /tmp/w && unzip -q /tmp/w/*.whl -d /tmp/tt
    DCPVIZ_TORCHTITAN=/tmp/tt pytest tests/test_titan_deepseek.py -k torchtitans_own

torchtitan's package imports its training stack (tyro, torchdata, tensorboard, triton kernels)
at import time; none of it builds a model, and installing it could pull another torch. Those
modules are stood in for by empty mocks, in this separate process only. Prints one JSON object:
preset -> [equal names/shapes/dtypes/order, keys, torchtitan's parameters, ours].
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
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
