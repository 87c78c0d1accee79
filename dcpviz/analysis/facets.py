"""Facets of a job by its named mesh dims: each rank's pipeline stage, and which experts a chunk of
a grouped expert tensor covers. No torch.

A rank's stage is its coordinate on the mesh dim named ``pp`` of the mesh the trace records
(``ScenarioInfo``: row-major, as DeviceMesh lays ranks out), wherever ``pp`` sits in the mesh.
When that is not known, there is no facet, and ``Facet.reason`` says why:

- the trace names no mesh dims (a capture that did not record them): stages are not guessed
  from which ranks hold which keys;
- the mesh has no ``pp`` dim: the job is one stage, and a facet of one says nothing;
- the job is not recorded at all (a load's checkpoint directory, a real run's saved side).

Experts are torchtitan's grouped 3-D parameters (``[E, ...]`` under a module named
``experts``). A tensor is *sharded over ep* when its recorded DTensor mesh names ``ep`` and its
placement on that dim shards dim 0 (``Shard(dim=0)`` or ``_StridedShard(dim=0, ...)``); a chunk
of it then holds experts ``offsets[0]`` to ``offsets[0] + sizes[0]`` (exclusive).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from dcpviz.analysis.groups import ranges

STAGE_DIM = "pp"
EXPERT_DIM = "ep"


@dataclass(frozen=True)
class Facet:
    """Each rank's group on one named mesh dim (``by_rank[r]``), or no facet and why."""

    dim: str
    by_rank: tuple[int, ...] | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether there is a facet (the dim is named in the recorded mesh)."""
        return self.by_rank is not None

    def groups(self) -> list[tuple[int, tuple[int, ...]]]:
        """(group, its ranks ascending), groups ascending; [] when there is no facet."""
        if self.by_rank is None:
            return []
        out: dict[int, list[int]] = {}
        for rank, g in enumerate(self.by_rank):
            out.setdefault(int(g), []).append(rank)
        return [(g, tuple(out[g])) for g in sorted(out)]

    def of(self, rank: int) -> int | None:
        """The group of ``rank`` (None: no facet, or a rank outside the job, e.g. -1 unknown)."""
        if self.by_rank is None or not 0 <= rank < len(self.by_rank):
            return None
        return self.by_rank[rank]


def _mesh_words(scenario: Any) -> str:
    names, mesh = tuple(scenario.mesh_dim_names or ()), tuple(scenario.mesh or ())
    if names and len(names) == len(mesh):
        return " × ".join(f"{n}={d}" for n, d in zip(names, mesh))
    return "×".join(map(str, mesh)) or "no mesh"


def dim_coordinates(scenario: Any, dim: str) -> np.ndarray | None:
    """Every rank's coordinate on the mesh dim named ``dim`` (int64, index = rank); None when
    the scenario names no such dim."""
    names, mesh = tuple(scenario.mesh_dim_names or ()), tuple(scenario.mesh or ())
    if not names or len(names) != len(mesh) or dim not in names:
        return None
    d = names.index(dim)
    # Row-major: the coordinate on dim d is (rank // product of the later dims) % mesh[d].
    inner = int(np.prod(mesh[d + 1 :], dtype=np.int64)) if d + 1 < len(mesh) else 1
    return (np.arange(int(scenario.world_size), dtype=np.int64) // inner) % int(mesh[d])


def stage_facet(scenario: Any, side: str = "the job") -> Facet:
    """Each rank's pipeline stage in ``scenario`` (``side`` names it in the reason), or no facet
    and why."""
    if scenario is None:
        return Facet(
            STAGE_DIM,
            None,
            f"{side}'s mesh is not recorded (a checkpoint directory or a real run's files name no "
            "mesh), so its ranks' pipeline stages are not known",
        )
    names, mesh = tuple(scenario.mesh_dim_names or ()), tuple(scenario.mesh or ())
    if not names or len(names) != len(mesh):
        return Facet(
            STAGE_DIM,
            None,
            f"{side}'s trace names no mesh dims (mesh {_mesh_words(scenario)}): a rank's pipeline "
            "stage is its coordinate on the 'pp' dim, and without names it is not known (not guessed)",
        )
    coords = dim_coordinates(scenario, STAGE_DIM)
    if coords is None:
        return Facet(
            STAGE_DIM,
            None,
            f"{side}'s mesh ({_mesh_words(scenario)}) has no 'pp' dim: one pipeline stage",
        )
    return Facet(STAGE_DIM, tuple(int(c) for c in coords))


def stage_words(stage: int | None, ranks: tuple[int, ...] = ()) -> str:
    """'stage 1 (ranks 4-7)', 'stage unknown'."""
    head = "stage unknown" if stage is None else f"stage {stage}"
    return f"{head} (ranks {ranges(ranks)})" if ranks else head


# -- experts ------------------------------------------------------------------------------------
_PLACEMENT = re.compile(r"(\w+)\(([^()]*)\)")


def placements_of(text: str) -> list[tuple[str, dict[str, str]]]:
    """'(_StridedShard(dim=0, sf=2), Shard(dim=0))' -> [('_StridedShard', {'dim': '0', 'sf': '2'}),
    ('Shard', {'dim': '0'})]; a placement without arguments ('Replicate()') has {}."""
    out = []
    for name, args in _PLACEMENT.findall(text or ""):
        kv = {}
        for part in args.split(","):
            key, eq, value = part.strip().partition("=")
            if eq:
                kv[key.strip()] = value.strip()
        out.append((name, kv))
    return out


def is_grouped_expert(fqn: str, size: tuple[int, ...]) -> bool:
    """A torchtitan grouped-experts tensor: 3-D, under a module named ``experts`` (the routed
    experts; ``shared_experts`` are ordinary 2-D linears)."""
    return len(size) == 3 and "experts" in fqn.split(".")[:-1]


def expert_sharding(
    fqn: str, size: tuple[int, ...], placements: str, mesh_dim_names: tuple[str, ...]
) -> str:
    """'' when ``fqn`` is a grouped expert tensor sharded over ep on its expert dim; else why
    there is no expert grouping for it."""
    if not is_grouped_expert(fqn, tuple(size)):
        return (
            f"{fqn} is not a grouped expert tensor (3-D [experts, ...] under a module named "
            "'experts', as torchtitan's GroupedExperts holds them)"
        )
    names = tuple(mesh_dim_names or ())
    if EXPERT_DIM not in names:
        where = " × ".join(names) if names else "no named mesh"
        return f"{fqn} is not sharded over ep (its mesh: {where})"
    places = placements_of(placements)
    if len(places) != len(names):
        return f"{fqn}'s placements {placements!r} do not name one placement per mesh dim"
    name, args = places[names.index(EXPERT_DIM)]
    if name not in ("Shard", "_StridedShard") or args.get("dim") != "0":
        return f"{fqn} is not split on its expert dim over ep ({name}({', '.join(f'{k}={v}' for k, v in args.items())}) on ep)"
    return ""


def expert_grouping(fqn: str, size: tuple[int, ...], layout: Any, scenario: Any) -> tuple[str, str]:
    """(why there is no expert grouping for ``fqn``, or ''; a note on where the answer comes
    from, or ''). ``layout``: the tensor's recorded ``TensorLayout`` (None when not recorded: a
    trace written before every stage's layouts were kept, or a captured rank that sent none). Without a layout, a job that ``recipe="torchtitan"`` built with an ``ep`` dim
    is known to shard every grouped expert tensor on dim 0 over ep (the recipe's own rule);
    anything else is refused."""
    if layout is not None:
        return expert_sharding(fqn, size, layout.placements, layout.mesh_dim_names), ""
    if not is_grouped_expert(fqn, tuple(size)):
        return expert_sharding(fqn, size, "", ()), ""
    names = tuple(getattr(scenario, "mesh_dim_names", ()) or ())
    if getattr(scenario, "recipe", "") == "torchtitan" and EXPERT_DIM in names:
        return "", (
            f"no DTensor layout recorded for {fqn} (no rank holding it sent one); recipe='torchtitan' "
            "with an ep dim shards grouped experts on dim 0 over ep"
        )
    return (
        f"no DTensor layout is recorded for {fqn} (no rank holding it sent one), so whether it is "
        "sharded over ep is not known",
        "",
    )


def expert_span(offsets: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[int, int]:
    """The experts a chunk of a grouped expert tensor covers: (start, stop exclusive)."""
    return int(offsets[0]), int(offsets[0]) + int(sizes[0])


def experts_words(start: int, stop: int) -> str:
    """'experts 2', 'experts 0-1', 'no experts' (an empty shard)."""
    if stop <= start:
        return "no experts"
    return f"experts {start}" if stop - start == 1 else f"experts {start}-{stop - 1}"
