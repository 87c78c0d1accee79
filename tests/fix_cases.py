"""A generator of compound load mismatches (issue 19) with its own ground truth.

``draw_case(choice)`` draws a saved job and a target job over small models: wrapper segments and
prefixes on either side (torch.compile's ``_orig_mod.``, DDP's ``module.``, a ``{"model": ...}``
nesting), a renamed module (consistent over layers and over model and optimizer keys), renamed
look-alike projections (one of q/k/v, or all three: no evidence tells them apart), a grown
vocabulary, a dtype change, a dropped module, an added one, an EMA twin, an optimizer class
change (SGD -> AdamW). ``choice(name, options)`` picks one option (hypothesis's ``data.draw`` or a
seeded ``random.Random``), so the same code drives the fuzz test and the hash-seed probe.

``truth(case, target_keys, saved_keys)``: for each target key, every checkpoint key that really
holds the same thing (by construction: the generator knows what it renamed, wrapped, twinned).

Known limit (documented in the keymatch module): a dropped module and an added module with the
same structure and shapes are indistinguishable from a rename, so the generator never draws
that pair (its added module has a shape nothing saved has).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

DIM, UP = 8, 12


@dataclass(frozen=True)
class Spec:
    """One side's model: layer count, block module names, vocabulary, extra top-level modules, wrapper."""

    layers: int
    norm: str = "norm_a"  # the block's LayerNorm
    qkv: tuple[str, str, str] | None = ("q", "k", "v")  # three look-alike projections (or none)
    vocab: int = 20
    extras: tuple[tuple[str, int], ...] = ()  # (name, out features) Linear(DIM, n) at the top
    wrap: str = ""  # '' | 'compile' | 'ddp'


class Block(nn.Module):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        setattr(self, spec.norm, nn.LayerNorm(DIM))
        for n in spec.qkv or ():
            setattr(self, n, nn.Linear(DIM, DIM, bias=False))
        self.up = nn.Linear(DIM, UP)
        self.down = nn.Linear(UP, DIM)

    def forward(self, x):
        return self.down(self.up(x))


class Net(nn.Module):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.emb = nn.Embedding(spec.vocab, DIM)
        self.layers = nn.ModuleList([Block(spec) for _ in range(spec.layers)])
        for name, n in spec.extras:
            setattr(self, name, nn.Linear(DIM, n))
        self.head = nn.Linear(DIM, spec.vocab, bias=False)

    def forward(self, x):
        return self.head(self.emb(x))

    def fsdp_units(self):
        return list(self.layers)


class DDPLike(nn.Module):
    """What DDP does to keys: every one gains 'module.'."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner

    def forward(self, x):
        return self.module(x)

    def fsdp_units(self):
        return self.module.fsdp_units()


@dataclass(frozen=True)
class Build:
    """A picklable zero-argument model factory (run_save / run_load workers build it too)."""

    spec: Spec

    def __call__(self) -> nn.Module:
        net = Net(self.spec)
        if self.spec.wrap == "compile":
            return torch.compile(net)
        if self.spec.wrap == "ddp":
            return DDPLike(net)
        return net


@dataclass(frozen=True)
class NestState:
    """``{"model": model.state_dict()}`` (and the EMA twin ``"ema"``): a state callable."""

    ema: bool = False

    def __call__(self, model, optimizer, rank):
        sd = model.state_dict()
        out = {"model": sd}
        if self.ema:
            out["ema"] = {
                k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()
            }
        return out


@dataclass(frozen=True)
class Case:
    saved: Spec
    target: Spec
    saved_state: NestState | None
    target_state: NestState | None
    optimizers: tuple[str | None, str | None]
    dtype: str | None
    renames: tuple[tuple[str, str], ...]  # (saved name, target name) of renamed modules
    ambiguous_names: tuple[str, ...] = field(default=())  # target names no evidence can tell apart

    def describe(self) -> str:
        return repr(self)


def draw_case(choice) -> Case:
    layers = choice("layers", [1, 2, 3])
    qkv = choice("qkv", [None, ("q", "k", "v")])
    saved = Spec(
        layers,
        qkv=qkv,
        extras=choice("saved_extras", [(), (("side", 6),)]),
        wrap=choice("saved_wrap", ["", "compile", "ddp"]),
    )
    renames: list[tuple[str, str]] = []
    ambiguous: tuple[str, ...] = ()
    norm = "norm_a"
    if choice("rename_norm", [False, True]):
        norm = "ln_x"
        renames.append(("norm_a", "ln_x"))
    tq = qkv
    if qkv:
        how = choice("rename_qkv", ["none", "one", "all"])
        if how == "one":
            tq = ("wq", "k", "v")
            renames.append(("q", "wq"))
        elif how == "all":
            tq = ("wq", "wk", "wv")
            renames += [("q", "wq"), ("k", "wk"), ("v", "wv")]
            ambiguous = ("wq", "wk", "wv")
    target = Spec(
        layers,
        norm=norm,
        qkv=tq,
        vocab=saved.vocab + choice("grow", [0, 0, 4]),
        extras=choice("target_extras", [(), (("adapter", 5),)]),
        wrap=choice("target_wrap", ["", "compile", "ddp"]),
    )
    optimizers = choice("optimizers", [(None, None), ("adamw", "adamw"), ("sgd", "adamw")])
    if optimizers == (None, None):
        nest = choice("nest", ["", "saved", "target", "ema"])
    else:
        nest = ""  # get_state_dict's {"model": ..., "optim": ...} on both sides
    saved_state = NestState(ema=nest == "ema") if nest in ("saved", "ema") else None
    target_state = NestState() if nest == "target" else None
    if nest == "ema":
        ambiguous = ("*",)
    dtype = choice("dtype", [None, None, "bfloat16"])
    return Case(
        saved, target, saved_state, target_state, optimizers, dtype, tuple(renames), ambiguous
    )


WRAPPERS = {"_orig_mod", "module"}


def logical(key: str, renames: dict[str, str] | None = None) -> tuple[str, str]:
    """(container, the key without wrappers or containers, renamed back to the saved names):
    'model'/'ema'/'optim'/'' and the rest."""
    segs = [s for s in key.split(".") if s not in WRAPPERS]
    part = ""
    if segs and segs[0] in ("model", "ema", "optim"):
        part, segs = segs[0], segs[1:]
    if renames:
        segs = [renames.get(s, s) for s in segs]
    return ("optim" if part == "optim" else "model"), ".".join(segs)


def truth(case: Case, target_keys, saved_keys) -> dict[str, list[str]]:
    """Target key -> every checkpoint key holding the same thing."""
    back = {new: old for old, new in case.renames}
    by_logical: dict[tuple[str, str], list[str]] = {}
    for u in sorted(saved_keys):
        by_logical.setdefault(logical(u), []).append(u)
    return {t: by_logical.get(logical(t, back), []) for t in sorted(target_keys)}


def scenarios(case: Case, world_size: int = 2):
    import dcpviz

    saved = dcpviz.Scenario(
        model=Build(case.saved),
        world_size=world_size,
        recipe="fsdp",
        optimizer=case.optimizers[0],
        state=case.saved_state,
    )
    target = dcpviz.Scenario(
        model=Build(case.target),
        world_size=world_size,
        recipe="fsdp",
        optimizer=case.optimizers[1],
        state=case.target_state,
        dtype=case.dtype,
    )
    return saved, target
