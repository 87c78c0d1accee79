"""Stages and experts as facets of the layout, volume and resharding views, the explorers' Stages
tab and the reports' stage parts (issue 22 item 5).

Every facet is held to facts found without dcpviz: a rank's stage is where it sits on the ``pp``
dim of ``torch.arange(W).reshape(mesh)`` (DeviceMesh's layout); a stage's bytes are the chunks in
DCP's own Metadata of the keys torchtitan's split (worked by hand) puts on it; the experts a rank
holds are its hand-built DTensor's global offset and local size on dim 0. Where the stage or the
expert sharding is not known (no dim names, no ``pp``, no ``ep``, no recorded job), no facet, and
the figure says why.
"""

from __future__ import annotations

import dataclasses
import html
import math
import subprocess
import sys

import plotly.graph_objects as go
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from test_explorer_lazy import figure, shown
from test_titan_stage_views import MOE_TINY_PP2, _hand_stage, _metadata_chunks
from titan_reference import hand_titan_state_dict
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

import dcpviz
from dcpviz.analysis.facets import expert_grouping, placements_of, stage_facet
from dcpviz.analysis.load.stage_tables import stage_resharding
from dcpviz.core.errors import DcpvizError
from dcpviz.engine.job.models import PRESETS
from dcpviz.html_report import report_html
from dcpviz.results import LoadResult, SaveResult
from dcpviz.terminal import print_result

MOE_TINY_PP4 = {
    0: ["tok_embeddings", "layers.0"],
    1: ["layers.1", "layers.2"],
    2: ["layers.3"],
    3: ["norm", "output"],
}
EXPERT_KEYS = [f"layers.{i}.moe.experts.w{j}" for i in range(4) for j in (1, 2, 3)]


def _save(mesh, names):
    return dcpviz.simulate_save(
        dcpviz.Scenario(
            model="moe-tiny",
            world_size=math.prod(mesh),
            mesh=mesh,
            mesh_dim_names=names,
            recipe="torchtitan",
        )
    )


@pytest.fixture(scope="module")
def pp_tp():  # pp, no ep
    return _save((2, 2, 2), ("pp", "dp_shard", "tp"))


@pytest.fixture(scope="module")
def pp_ep():
    return _save((2, 2, 2), ("pp", "dp_shard", "ep"))


@pytest.fixture(scope="module")
def ep_only():  # ep, no pp
    return _save((2, 2), ("dp_shard", "ep"))


@pytest.fixture(scope="module")
def rep_ep():  # experts replicated over dp_replicate: a dropped replica holds its experts too
    return _save((2, 1, 2), ("dp_replicate", "dp_shard", "ep"))


@pytest.fixture(scope="module")
def pp4_load(pp_ep):  # PP 2 -> 4
    return dcpviz.simulate_load(
        pp_ep,
        dcpviz.Scenario(
            model="moe-tiny",
            world_size=8,
            mesh=(4, 2),
            mesh_dim_names=("pp", "dp_shard"),
            recipe="torchtitan",
        ),
    )


@pytest.fixture(scope="module")
def no_pp_load(pp_ep):  # PP 2 -> no PP
    return dcpviz.simulate_load(
        pp_ep,
        dcpviz.Scenario(
            model="moe-tiny",
            world_size=4,
            mesh=(4,),
            mesh_dim_names=("dp_shard",),
            recipe="torchtitan",
        ),
    )


@pytest.fixture(scope="module")
def tp_to_ep_load(pp_tp):  # TP -> EP, same stages
    return dcpviz.simulate_load(
        pp_tp,
        dcpviz.Scenario(
            model="moe-tiny",
            world_size=8,
            mesh=(2, 2, 2),
            mesh_dim_names=("pp", "dp_shard", "ep"),
            recipe="torchtitan",
        ),
    )


def _unnamed(save: SaveResult) -> SaveResult:
    """The same save, as a capture that did not record the mesh dim names would hold it."""
    sc = dataclasses.replace(save.trace.scenario, mesh_dim_names=())
    return SaveResult(dataclasses.replace(save.trace, scenario=sc))


def _pp_of(mesh, names, rank) -> int:
    """Where ``rank`` sits on the pp dim of DeviceMesh's layout, torch.arange(W).reshape(mesh)."""
    grid = torch.arange(math.prod(mesh)).reshape(mesh)
    return int((grid == rank).nonzero()[0][names.index("pp")])


def _panel(trace) -> int:
    """0-based subplot index of a trace in a facet grid."""
    axis = trace.xaxis or "x"
    return int(axis[1:] or 1) - 1


def _params() -> set[str]:
    with torch.device("meta"):
        return {n for n, _ in PRESETS["moe-tiny"]().named_parameters()}


# -- the stage: the pp coordinate of the recorded mesh ------------------------------------------
@pytest.mark.parametrize(
    "mesh,names",
    [
        ((2, 2, 2), ("pp", "dp_shard", "tp")),
        ((2, 2, 2), ("dp_replicate", "pp", "tp")),
        ((2, 4), ("dp_shard", "pp")),
        ((3, 2), ("pp", "ep")),
    ],
)
def test_stage_is_where_the_rank_sits_on_the_pp_dim_of_device_mesh(mesh, names):
    info = dataclasses.replace(
        _save_info(), world_size=math.prod(mesh), mesh=mesh, mesh_dim_names=names
    )
    facet = stage_facet(info)
    assert facet.ok and facet.reason == ""
    assert list(facet.by_rank) == [_pp_of(mesh, names, r) for r in range(math.prod(mesh))]
    assert [s for s, _ in facet.groups()] == list(range(mesh[names.index("pp")]))


def _save_info():
    from dcpviz.core.trace import ScenarioInfo

    return ScenarioInfo(
        model="m", world_size=8, mesh=(8,), mesh_dim_names=(), recipe="x", dtype="", device="meta"
    )


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    data=st.data(),
)
def test_stage_of_any_mesh_is_its_pp_coordinate(sizes, data):
    """Any mesh, ``pp`` anywhere in it (or nowhere): the facet is DeviceMesh's pp coordinate."""
    pool = ["pp", "dp_replicate", "dp_shard", "cp", "tp", "ep"]
    names = tuple(data.draw(st.permutations(pool))[: len(sizes)])
    mesh = tuple(sizes)
    info = dataclasses.replace(
        _save_info(), world_size=math.prod(mesh), mesh=mesh, mesh_dim_names=names
    )
    facet = stage_facet(info)
    if "pp" not in names:
        assert not facet.ok and "no 'pp' dim" in facet.reason
        return
    assert list(facet.by_rank) == [_pp_of(mesh, names, r) for r in range(math.prod(mesh))]
    assert sum(len(r) for _, r in facet.groups()) == math.prod(mesh)


def test_no_facet_without_names_without_pp_or_without_a_recorded_job():
    base = dataclasses.replace(_save_info(), mesh=(2, 4), mesh_dim_names=())
    unnamed = stage_facet(base)
    assert (
        not unnamed.ok
        and "names no mesh dims" in unnamed.reason
        and "not guessed" in unnamed.reason
    )
    no_pp = stage_facet(dataclasses.replace(base, mesh_dim_names=("dp_shard", "tp")))
    assert not no_pp.ok and "has no 'pp' dim" in no_pp.reason
    missing = stage_facet(None, "the saved job")
    assert not missing.ok and "not recorded" in missing.reason
    assert unnamed.groups() == [] and unnamed.of(0) is None


# -- volume view ---------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["pp_tp", "pp_ep"])
@pytest.mark.parametrize("by", [None, "module", "component"])
def test_volume_panels_hold_each_stages_ranks_and_its_metadata_bytes(which, by, request):
    save = request.getfixturevalue(which)
    mesh, names = save.trace.scenario.mesh, save.trace.scenario.mesh_dim_names
    fig = dcpviz.views.rank_volume(save, by=by, facet="stage")
    assert fig.layout.meta["facet"] == "stage"
    hand = {0: 0, 1: 0}
    for fqn, _, _, nbytes in _metadata_chunks(save):
        hand[_hand_stage(fqn)] += nbytes
    drawn: dict[int, int] = {0: 0, 1: 0}
    ranks: dict[int, set[int]] = {0: set(), 1: set()}
    for t in fig.data:
        if isinstance(t, go.Bar):
            drawn[_panel(t)] += int(sum(t.y))
            ranks[_panel(t)] |= {int(x) for x in t.x}
    assert drawn == hand
    for stage, rs in ranks.items():
        assert rs == {r for r in range(8) if _pp_of(mesh, names, r) == stage}
    assert fig.layout.meta["stages"] == hand
    # One legend entry per module (or the one total), not one per panel.
    shown = [t.name for t in fig.data if t.showlegend is not False and t.name]
    assert len(shown) == len(set(shown))


def test_volume_facet_of_a_failed_save_shows_what_was_planned(pp_ep):
    failed = SaveResult(dataclasses.replace(pp_ep.trace, global_plans=None, final_plans=None))
    fig = dcpviz.views.rank_volume(failed, facet="stage")
    assert "no global plan (planning failed)" in fig.layout.title.text
    planned = pp_ep.rank_volume.set_index("rank")["planned_nbytes"]
    for t in fig.data:
        if isinstance(t, go.Bar):
            assert [int(y) for y in t.y] == [int(planned[int(x)]) for x in t.x]
    assert all("planned" in a.text for a in fig.layout.annotations)


def test_volume_without_pp_or_names_draws_no_facet_and_says_why(pp_ep, ep_only):
    for save, words in ((ep_only, "has no 'pp' dim"), (_unnamed(pp_ep), "names no mesh dims")):
        fig = dcpviz.views.rank_volume(save, facet="stage")
        plain = dcpviz.views.rank_volume(save)
        assert fig.layout.meta["facet"] is None and words in fig.layout.meta["facet_reason"]
        assert f"no stage facet: {fig.layout.meta['facet_reason']}" in fig.layout.title.text
        assert [list(t.y) for t in fig.data if isinstance(t, go.Bar)] == [
            list(t.y) for t in plain.data if isinstance(t, go.Bar)
        ]
    with pytest.raises(DcpvizError, match="facet='rank'"):
        dcpviz.views.rank_volume(pp_ep, facet="rank")
    with pytest.raises(DcpvizError, match="Drop one of them"):
        dcpviz.views.rank_volume(pp_ep, compare=pp_ep, facet="stage")


# -- layout view ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fqn", ["tok_embeddings.weight", "layers.2.attention.wq.weight", "output.weight"]
)
def test_layout_groups_writers_by_their_stage(pp_tp, fqn):
    mesh, names = pp_tp.trace.scenario.mesh, pp_tp.trace.scenario.mesh_dim_names
    fig = dcpviz.views.chunk_layout(pp_tp, fqn, facet="stage")
    stage = _hand_stage(fqn)
    writers = {
        int(w)
        for f, offsets, _, _ in _metadata_chunks(pp_tp)
        if f == fqn
        for w in [pp_tp.tensor_boxes(fqn).set_index("offsets").loc[[offsets], "writer"].iloc[0]]
    }
    assert fig.layout.meta["writer_stage"] == {w: stage for w in sorted(writers)}
    assert all(_pp_of(mesh, names, w) == stage for w in writers)
    swatches = [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("role") == "swatch"]
    assert {t.legendgroup for t in swatches} == {f"stage {stage}"}
    assert f"written by stage {stage}" in fig.layout.title.text


def _held_experts(mesh, names, stages, fqn) -> dict[int, list[list[int]]]:
    """rank -> [[first expert, stop]] of its hand-built DTensor of ``fqn`` (ranks without it: none)."""
    out = {}
    for rank in range(math.prod(mesh)):
        sd = hand_titan_state_dict("moe-tiny", mesh, names, rank, stages)
        if fqn not in sd:
            continue
        dt = sd[fqn]
        shape, offset = compute_local_shape_and_global_offset(
            dt.shape, dt.device_mesh, dt.placements
        )
        if shape[0]:
            out[rank] = [[int(offset[0]), int(offset[0]) + int(shape[0])]]
    return out


@pytest.mark.parametrize(
    "which,stages,fqns",
    [
        ("ep_only", None, ["layers.0.moe.experts.w1", "layers.3.moe.experts.w2"]),
        ("pp_ep", MOE_TINY_PP2, ["layers.1.moe.experts.w3", "layers.2.moe.experts.w1"]),
        ("rep_ep", None, ["layers.0.moe.experts.w1"]),
    ],
)
def test_layout_expert_groups_equal_dtensor_offsets(which, stages, fqns, request):
    save = request.getfixturevalue(which)
    sc = save.trace.scenario
    for fqn in fqns:
        fig = dcpviz.views.chunk_layout(save, fqn, facet="expert")
        assert fig.layout.meta["facet"] == "expert", fig.layout.meta
        held = _held_experts(sc.mesh, sc.mesh_dim_names, stages, fqn)
        assert {int(k): v for k, v in fig.layout.meta["experts"].items()} == held
        # The dotted boundaries sit where DCP's Metadata chunks start on the expert dim.
        starts = {o[0] for f, o, _, _ in _metadata_chunks(save) if f == fqn} - {0}
        lines = {s.y0 for s in fig.layout.shapes if s.type == "line" and s.y0 == s.y1}
        lines |= {s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1}
        assert lines == starts


def test_expert_grouping_is_refused_where_experts_are_not_sharded_over_ep(pp_tp, pp_ep):
    # pp, no ep: FSDP and TP split the experts, ep does not.
    fig = dcpviz.views.chunk_layout(pp_tp, "layers.0.moe.experts.w1", facet="expert")
    assert fig.layout.meta["facet"] is None
    assert "not sharded over ep" in fig.layout.meta["facet_reason"]
    # Not an expert tensor.
    fig = dcpviz.views.chunk_layout(pp_ep, "layers.0.attention.wq.weight", facet="expert")
    assert "not a grouped expert tensor" in fig.layout.meta["facet_reason"]
    # A later stage's key has no recorded layout: a job not built by recipe='torchtitan' is refused.
    unknown = dataclasses.replace(pp_ep.trace.scenario, recipe="captured")
    why, _ = expert_grouping("layers.2.moe.experts.w1", (4, 90, 64), None, unknown)
    assert "not known" in why
    # The recorded layout decides where there is one: Replicate on ep is not an expert split.
    lay = dataclasses.replace(pp_ep.trace.layouts[0], placements="(Shard(dim=0), Replicate())")
    lay = dataclasses.replace(lay, mesh_dim_names=("dp_shard", "ep"))
    assert "not split on its expert dim" in expert_grouping("a.experts.w1", (4, 2, 2), lay, None)[0]
    assert placements_of("(_StridedShard(dim=0, sf=2), Shard(dim=0))") == [
        ("_StridedShard", {"dim": "0", "sf": "2"}),
        ("Shard", {"dim": "0"}),
    ]


def test_layout_without_names_has_no_stage_group(pp_ep):
    fig = dcpviz.views.chunk_layout(_unnamed(pp_ep), "layers.2.attention.wq.weight", facet="stage")
    assert fig.layout.meta["facet"] is None and "names no mesh dims" in fig.layout.title.text
    # The recorded layouts (every stage's, each from its stage's first rank) still say ep, so
    # stage 1's experts are grouped as stage 0's are.
    fig = dcpviz.views.chunk_layout(_unnamed(pp_ep), "layers.2.moe.experts.w1", facet="expert")
    assert fig.layout.meta["facet"] == "expert"


# -- resharding view -----------------------------------------------------------------------------
def _stage_of_key(split: dict[int, list[str]], fqn: str) -> int:
    found = {s for s, mods in split.items() for m in mods if fqn.startswith(m + ".")}
    assert len(found) == 1, fqn
    return found.pop()


def _expected_blocks(save, target_split, ranks_per_target_stage):
    """(target stage, saved stage) -> bytes read: every key once per target stage holding it
    (FSDP shards split it among the stage's ranks), a plain tensor once per rank of it."""
    params = _params()
    key_bytes: dict[str, int] = {}
    for fqn, _, _, nbytes in _metadata_chunks(save):
        key_bytes[fqn] = key_bytes.get(fqn, 0) + nbytes
    out: dict[tuple, int] = {}
    for fqn, nbytes in key_bytes.items():
        t = _stage_of_key(target_split, fqn) if target_split else None
        s = _stage_of_key(MOE_TINY_PP2, fqn)
        factor = 1 if fqn in params else ranks_per_target_stage
        out[(t, s)] = out.get((t, s), 0) + nbytes * factor
    return out


def test_load_across_pp_degrees_is_faceted_by_target_and_saved_stage(pp4_load, pp_ep):
    fig = dcpviz.views.resharding(pp4_load, facet="stage")
    meta = fig.layout.meta
    assert meta["facet"] == "stage" and meta["target_facet"] and meta["saved_facet"]
    got = {
        (b["target_stage"], b["saved_stage"]): b["nbytes"] for b in meta["blocks"] if b["nbytes"]
    }
    assert got == _expected_blocks(pp_ep, MOE_TINY_PP4, 2)
    # Each block draws its rows' and columns' ranks, and its cells add up to the block.
    for t in fig.data:
        ts, ss = t.meta["target_stage"], t.meta["saved_stage"]
        assert {int(y) for y in t.y} == {
            r for r in range(8) if _pp_of((4, 2), ("pp", "dp_shard"), r) == ts
        }
        assert {int(x) for x in t.x} == {
            r for r in range(8) if _pp_of((2, 2, 2), ("pp", "dp_shard", "ep"), r) == ss
        }
        z = [v for row in t.z for v in row if v == v]
        assert int(sum(z)) == t.meta["nbytes"]
    # The stage table says the same.
    table = stage_resharding(pp4_load.trace, pp4_load.read_items)
    assert dict(zip(zip(table["target_stage"], table["saved_stage"]), table["nbytes"])) == got
    # Every value: reads and deserialised chunk bytes split the same way as bytes.
    reads = dcpviz.views.resharding(pp4_load, values="reads", facet="stage")
    assert sum(b["reads"] for b in reads.layout.meta["blocks"]) == len(pp4_load.read_items)


def test_a_side_without_stages_is_not_split_and_the_figure_says_why(no_pp_load, pp_ep):
    fig = dcpviz.views.resharding(no_pp_load, facet="stage")
    meta = fig.layout.meta
    assert not meta["target_facet"] and meta["saved_facet"]
    assert "target job's mesh (dp_shard=4) has no 'pp' dim" in meta["facet_reason"]
    assert "not split" in fig.layout.title.text
    got = {(b["target_stage"], b["saved_stage"]): b["nbytes"] for b in meta["blocks"]}
    assert got == _expected_blocks(pp_ep, None, 4)
    # The saved job not recorded (a checkpoint directory): columns are not split either.
    trace = dataclasses.replace(no_pp_load.trace, saved_scenario=None)
    fig = dcpviz.views.resharding(LoadResult(trace), facet="stage")
    assert fig.layout.meta["facet"] is None
    assert "not recorded" in fig.layout.meta["facet_reason"]
    assert "no stage facet" in fig.layout.title.text


def test_read_volume_panels_are_the_target_stages(pp4_load, pp_ep):
    fig = dcpviz.views.read_volume(pp4_load, facet="stage")
    expected: dict[int, int] = {}
    for (t, _), nbytes in _expected_blocks(pp_ep, MOE_TINY_PP4, 2).items():
        expected[t] = expected.get(t, 0) + nbytes
    assert fig.layout.meta["stages"] == expected
    read = [t for t in fig.data if t.name == "bytes read"]
    assert {_panel(t): int(sum(t.y)) for t in read} == expected
    for t in read:
        assert {int(x) for x in t.x} == {
            r for r in range(8) if _pp_of((4, 2), ("pp", "dp_shard"), r) == _panel(t)
        }
    # No target stages: the whole figure, and why.
    fig = dcpviz.views.read_volume(
        LoadResult(
            dataclasses.replace(
                pp4_load.trace,
                scenario=dataclasses.replace(pp4_load.trace.scenario, mesh_dim_names=()),
            )
        ),
        facet="stage",
    )
    assert fig.layout.meta["facet"] is None and "names no mesh dims" in fig.layout.title.text


def test_resharding_by_expert_is_what_each_target_rank_holds(tp_to_ep_load):
    """TP -> EP: each target rank reads exactly the experts its hand-built DTensors hold, all of
    each expert's rows of every expert key of its stage."""
    matrix = dcpviz.views.resharding(tp_to_ep_load, by="expert")
    got = {
        (int(r), int(e)): int(v)
        for r, row in zip(matrix.data[0].y, matrix.data[0].z)
        for e, v in zip(matrix.data[0].x, row)
        if v == v
    }
    expected: dict[tuple[int, int], int] = {}
    for rank in range(8):
        sd = hand_titan_state_dict(
            "moe-tiny", (2, 2, 2), ("pp", "dp_shard", "ep"), rank, MOE_TINY_PP2
        )
        for fqn, dt in sd.items():
            if ".moe.experts." not in fqn:
                continue
            shape, offset = compute_local_shape_and_global_offset(
                dt.shape, dt.device_mesh, dt.placements
            )
            per_expert = math.prod(shape[1:]) * dt.dtype.itemsize
            for e in range(offset[0], offset[0] + shape[0]):
                expected[(rank, e)] = expected.get((rank, e), 0) + per_expert
    assert got == expected
    # Faceted by target stage: rows split, columns (experts) not, and the figure says why.
    fig = dcpviz.views.resharding(tp_to_ep_load, by="expert", facet="stage")
    assert fig.layout.meta["target_facet"] and not fig.layout.meta["saved_facet"]
    assert "the columns are experts" in fig.layout.meta["facet_reason"]
    blocks = {b["target_stage"]: b["nbytes"] for b in fig.layout.meta["blocks"]}
    assert blocks == {s: sum(v for (r, _), v in expected.items() if r // 4 == s) for s in (0, 1)}
    reads = dcpviz.views.resharding(tp_to_ep_load, by="expert", values="reads")
    assert {
        (int(r), int(e))
        for r, row in zip(reads.data[0].y, reads.data[0].z)
        for e, v in zip(reads.data[0].x, row)
        if v == v
    } == set(expected)


def test_resharding_by_expert_refusals(tp_to_ep_load):
    with pytest.raises(DcpvizError, match="not split by expert"):
        dcpviz.views.resharding(tp_to_ep_load, by="expert", values="chunk_nbytes")
    saved = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, mesh=(2,), recipe="fsdp")
    )
    load = dcpviz.simulate_load(saved, dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp"))
    with pytest.raises(DcpvizError, match="no grouped expert tensors"):
        dcpviz.views.resharding(load, by="expert")


# -- explorers -----------------------------------------------------------------------------------
def test_save_explorer_stages_tab_is_lazy_and_draws_the_views(pp_ep):
    app = dcpviz.explore(pp_ep)
    assert "Stages" in app.tabs.titles and not app.tabs.is_built("Stages")
    page = app.tabs.select("Stages")
    assert [v for _, v in page.view.options] == [
        "total",
        "module",
        "stage_layout",
        "experts",
        "layout",
    ]
    assert figure(page.fig) == shown(dcpviz.views.rank_volume(pp_ep, facet="stage"))
    page.view.value = "stage_layout"
    page.tensor_picker.value = "output.weight"
    assert figure(page.fig) == shown(
        dcpviz.views.chunk_layout(pp_ep, "output.weight", facet="stage")
    )
    assert set(page.tensor_picker.options) == set(pp_ep.metadata.state_dict_metadata)
    page.view.value = "layout"
    assert figure(page.fig) == shown(
        dcpviz.views.chunk_layout(pp_ep, page.expert_picker.value, facet="expert")
    )
    assert page.expert_picker.options[0] == "layers.0.moe.experts.w1"
    assert set(page.expert_picker.options) == set(EXPERT_KEYS)


def test_load_explorer_stages_tab(pp4_load):
    app = dcpviz.explore(pp4_load)
    assert "Stages" in app.tabs.titles and not app.tabs.is_built("Stages")
    page = app.tabs.select("Stages")
    assert figure(page.fig) == shown(dcpviz.views.resharding(pp4_load, facet="stage"))
    page.values.value = "reads"
    assert figure(page.fig) == shown(
        dcpviz.views.resharding(pp4_load, values="reads", facet="stage")
    )
    assert [v for _, v in page.view.options] == ["writer_rank", "volume", "expert"]
    page.view.value = "volume"
    assert figure(page.fig) == shown(dcpviz.views.read_volume(pp4_load, facet="stage"))
    page.view.value = "expert"
    assert figure(page.fig) == shown(dcpviz.views.resharding(pp4_load, by="expert", facet="stage"))


def test_load_with_ep_and_no_pp_has_an_experts_only_stages_tab(ep_only):
    load = dcpviz.simulate_load(
        ep_only,
        dcpviz.Scenario(
            model="moe-tiny",
            world_size=4,
            mesh=(4,),
            mesh_dim_names=("dp_shard",),
            recipe="torchtitan",
        ),
    )
    page = dcpviz.explore(load).tabs.select("Stages")
    assert [v for _, v in page.view.options] == ["expert"]
    assert "has no 'pp' dim" in html.unescape(page.why.value) and page.table.value == ""
    assert figure(page.fig) == shown(dcpviz.views.resharding(load, by="expert", facet="stage"))
    # No stages on either side: the faceted view is the plain one, and says why.
    assert dcpviz.views.resharding(load, by="expert", facet="stage").layout.meta["facet"] is None


def test_explorers_without_stages_or_experts_have_no_stages_tab(pp_tp, pp_ep):
    plain = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, mesh=(2,), recipe="fsdp")
    )
    assert "Stages" not in dcpviz.explore(plain).tabs.titles
    plain_load = dcpviz.simulate_load(
        plain, dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp")
    )
    assert "Stages" not in dcpviz.explore(plain_load).tabs.titles
    # pp but no ep: the stage views, no expert views.
    page = dcpviz.explore(pp_tp).tabs.select("Stages")
    assert [v for _, v in page.view.options] == ["total", "module", "stage_layout", "experts"]
    # No names: no stage views; the recorded ep layouts (every stage's) still group the experts.
    page = dcpviz.explore(_unnamed(pp_ep)).tabs.select("Stages")
    assert [v for _, v in page.view.options] == ["experts", "layout"]
    assert "names no mesh dims" in page.why.value
    assert set(page.expert_picker.options) == set(EXPERT_KEYS)


# -- reports (terminal and HTML) -----------------------------------------------------------------
def test_reports_show_the_stage_parts(pp_ep, pp4_load):
    console = Console(record=True, width=120)
    print_result(pp_ep, console)
    text = console.export_text()
    assert "Pipeline stages" in text
    assert "layers 0-1, tok_embeddings" in text and "layers 2-3, norm, output" in text
    page = report_html(pp_ep)
    assert "Write volume per rank, by pipeline stage" in page
    assert "Chunk layout by expert shard: layers.0.moe.experts.w1" in page
    console = Console(record=True, width=120)
    print_result(pp4_load, console)
    text = console.export_text()
    assert "Reads by pipeline stage" in text
    page = report_html(pp4_load)
    assert "Resharding by pipeline stage" in page
    assert "Bytes read per target rank, by target stage" in page


def test_reports_have_no_stage_parts_without_pp(ep_only, pp_ep):
    for save in (ep_only, _unnamed(pp_ep)):
        titles = [getattr(p, "title", "") for p in save.parts()]
        assert not any("pipeline stage" in t.lower() for t in titles)


# -- no torch ------------------------------------------------------------------------------------
def test_faceted_figures_render_without_torch(pp_ep, pp4_load, tmp_path):
    from test_no_torch import _env

    save_path = pp_ep.to_json(tmp_path / "save.json")
    load_path = pp4_load.to_json(tmp_path / "load.json")
    script = (
        "import sys, dcpviz\n"
        "from dcpviz.html_report import report_html\n"
        "s, l = dcpviz.load_trace(sys.argv[1]), dcpviz.load_trace(sys.argv[2])\n"
        "a = dcpviz.views.rank_volume(s, facet='stage', by='module').layout.meta['stages']\n"
        "b = dcpviz.views.chunk_layout(s, 'layers.2.moe.experts.w1', facet='expert').layout.meta['experts']\n"
        "c = dcpviz.views.resharding(l, facet='stage').layout.meta['blocks']\n"
        "dcpviz.views.read_volume(l, facet='stage'); dcpviz.views.resharding(l, by='expert', facet='stage')\n"
        "report_html(s); report_html(l)\n"
        "assert 'torch' not in sys.modules\n"
        "print(sorted(a.items()), sorted(b.items()), sum(x['nbytes'] for x in c))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(save_path), str(load_path)],
        env=_env(tmp_path / "site"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    a = dcpviz.views.rank_volume(pp_ep, facet="stage", by="module").layout.meta["stages"]
    b = dcpviz.views.chunk_layout(pp_ep, "layers.2.moe.experts.w1", facet="expert").layout.meta[
        "experts"
    ]
    c = sum(
        x["nbytes"] for x in dcpviz.views.resharding(pp4_load, facet="stage").layout.meta["blocks"]
    )
    assert run.stdout.strip() == f"{sorted(a.items())} {sorted(b.items())} {c}"
