"""Views carry the tables' numbers exactly: each test reads the figure's data back."""

from __future__ import annotations

import math
import re

import pytest
from torch.distributed.checkpoint import DefaultSavePlanner

import dcpviz
import dcpviz.views as V
from dcpviz.analysis.save import tables
from dcpviz.core.errors import DcpvizError


@pytest.fixture(scope="module")
def hsdp():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )


@pytest.fixture(scope="module")
def strided():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="llama-tiny", world_size=4, mesh=(2, 2), recipe="tp+fsdp")
    )


def tiles_of(fig):
    """{writer: [(col0, col1, row0, row1), ...]} from the filled tile traces."""
    out = {}
    for tr in fig.data:
        if tr.meta and tr.meta.get("role") == "tiles":
            xs, ys = list(tr.x), list(tr.y)
            rects = []
            for i in range(0, len(xs), 6):
                rects.append((xs[i], xs[i + 1], ys[i], ys[i + 2]))
            out[tr.meta["writer"]] = rects
    return out


def test_2d_layout_tiles_equal_metadata_chunks(hsdp):
    fig = V.chunk_layout(hsdp, "fc1.weight")
    drawn = {(w, r) for w, rects in tiles_of(fig).items() for r in rects}
    ch = hsdp.chunks[hsdp.chunks.fqn == "fc1.weight"]
    expected = {
        (int(r), (o[1], o[1] + s[1], o[0], o[0] + s[0]))
        for o, s, r in zip(ch.offsets, ch.sizes, ch["rank"])
    }
    assert drawn == expected
    # Replicas are listed: each tile's label names the writer and the dropped replica.
    labels = next(t for t in fig.data if t.meta and t.meta.get("role") == "labels").text
    for r in ch["rank"]:
        replica = int(r) + 4 if int(r) < 4 else int(r) - 4
        assert f"<b>{int(r)}</b><br>({replica})" in labels


def test_strided_layout_reads_correctly(strided):
    """Rank boxes sit where the offsets say: 0 at rows 0-16, 2 at 16-32, 1 at 32-48, 3 at 48-64."""
    fig = V.chunk_layout(strided, "layers.0.attention.wq.weight")
    rows = {w: [(r[2], r[3]) for r in rects] for w, rects in tiles_of(fig).items()}
    assert rows == {0: [(0, 16)], 2: [(16, 32)], 1: [(32, 48)], 3: [(48, 64)]}
    assert "_StridedShard" in fig.layout.title.text


def test_empty_shards_are_drawn_not_skipped(hsdp):
    fig = V.chunk_layout(hsdp, "fc2.bias")
    empty = next(t for t in fig.data if t.meta and t.meta.get("role") == "empty")
    boxes = tables.tensor_boxes(hsdp.write_items, hsdp.chunks, "fc2.bias")
    e = boxes[boxes["is_empty"]]
    assert list(empty.x) == [o[0] for o in e.offsets] and list(empty.meta["writers"]) == list(
        e.writer
    )
    assert "empty shards" in fig.layout.title.text


@pytest.mark.parametrize("fqn", ["progress.step", "progress._extra_state.note"])
def test_scalar_and_bytes_show_their_writer(hsdp, fqn):
    fig = V.chunk_layout(hsdp, fqn)
    writer = int(hsdp.chunks.set_index("fqn").loc[fqn, "rank"])
    tile = next(t for t in fig.data if t.meta and t.meta.get("role") == "tiles")
    assert tile.meta["writer"] == writer
    label = next(t for t in fig.data if t.mode == "text").text[0]
    assert label.startswith(f"<b>{writer}</b>")
    assert set(map(int, re.findall(r"\d+", label.split("<br>")[1]))) == set(range(8)) - {writer}


def test_nd_layout_projects_and_validates_dims():
    def conv():
        import torch

        return torch.nn.Conv2d(8, 6, kernel_size=3)

    res = dcpviz.simulate_save(dcpviz.Scenario(model=conv, world_size=4, recipe="fsdp"))
    fig = V.chunk_layout(res, "weight", dims=(0, 2))
    drawn = {r for rects in tiles_of(fig).values() for r in rects}
    ch = res.chunks[(res.chunks.fqn == "weight") & res.chunks.sizes.map(lambda s: 0 not in s)]
    assert drawn == {(o[2], o[2] + s[2], o[0], o[0] + s[0]) for o, s in zip(ch.offsets, ch.sizes)}
    with pytest.raises(DcpvizError, match="two different dims"):
        V.chunk_layout(res, "weight", dims=(1, 1))


def test_volume_bars_equal_rank_volume_and_compare(hsdp):
    low = dcpviz.simulate_save(
        hsdp_scenario(), planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True)
    )
    fig = V.rank_volume(hsdp, compare=low)
    bars = [t for t in fig.data if t.type == "bar"]
    assert list(bars[0].y) == list(hsdp.rank_volume.nbytes) and list(bars[1].y) == list(
        low.rank_volume.nbytes
    )
    for res in (hsdp, low):
        assert f"imbalance {res.summary['imbalance']:.2f}×" in fig.layout.title.text


def hsdp_scenario():
    return dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")


def test_volume_by_module_stacks_to_totals(strided):
    fig = V.rank_volume(strided, by="module")
    totals = [0] * 4
    for tr in fig.data:
        if tr.type == "bar":
            for r, v in zip(tr.x, tr.y):
                totals[int(r)] += v
    assert totals == list(strided.rank_volume.nbytes)


def test_dedup_overview_counts_match_table(hsdp):
    fig = V.dedup(hsdp)
    hm = fig.data[0]
    z = [
        [0 if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in row]
        for row in hm.z
    ]
    assert sum(map(sum, z)) == len(hsdp.dedup)
    groups = dict(zip(hsdp.tensor_groups.group, hsdp.tensor_groups.members))
    for i, g in enumerate(hm.y):
        d = hsdp.dedup[hsdp.dedup.fqn.isin(groups.get(g, (g,)))]
        for r in range(8):
            assert z[i][r] == (d.chosen_rank == r).sum()


def test_dedup_detail_marks_dcps_choice(hsdp):
    fig = V.dedup(hsdp, fqn="fc1.weight")
    hm = fig.data[0]
    d = hsdp.dedup[hsdp.dedup.fqn == "fc1.weight"]
    ranks = [int(x) for x in hm.x]
    for row_z, (_, row) in zip(hm.z, d.iterrows()):
        assert [ranks[j] for j, v in enumerate(row_z) if v == 2] == [row.chosen_rank]
        assert sorted(ranks[j] for j, v in enumerate(row_z) if v >= 1) == list(row.candidates)
    with pytest.raises(DcpvizError, match="not in this checkpoint"):
        V.dedup(hsdp, fqn="fc9.weight")


def test_explorer_updates_figures_in_place(strided):
    app = dcpviz.explore(strided)
    fig_widget = app.layout_fig
    app.search.value = "wq"
    assert app.member_picker.value == "layers.0.attention.wq.weight"
    assert (
        app.layout_fig is fig_widget
        and "layers.0.attention.wq.weight" in fig_widget.layout.title.text
    )
    app.member_picker.value = "layers.1.attention.wq.weight"
    assert "layers.1.attention.wq.weight" in fig_widget.layout.title.text
    assert not app.tabs.is_built("Phases")  # built when first opened
    app.tabs.select("Phases")
    app.phase.value = "global"
    changed = strided.phase_changes
    assert f"<b>{(changed.phase == 'global').sum()}</b> items" in app.phase_text.value


def test_alike_layers_collapse_and_unalike_do_not():
    res = dcpviz.simulate_save(dcpviz.Scenario(model="llama-tiny", world_size=4, recipe="fsdp"))
    g = res.tensor_groups.set_index("group")
    assert g.loc["layers.[0-1].attention.wq.weight", "members"] == (
        "layers.0.attention.wq.weight",
        "layers.1.attention.wq.weight",
    )

    def only_layer0(model, mesh):
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.layers["0"], mesh=mesh)
        return model

    split = dcpviz.simulate_save(
        dcpviz.Scenario(model="llama-tiny", world_size=4, recipe=only_layer0)
    )
    groups = set(split.tensor_groups.group)
    assert {"layers.0.attention.wq.weight", "layers.1.attention.wq.weight"} <= groups


# -- figures that read at a glance (issue 15) ----------------------------------------------


@pytest.fixture(scope="module")
def llama_hsdp():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="hsdp")
    )


def test_thin_tensor_is_drawn_at_a_minimum_width(llama_hsdp):
    from dcpviz.views.geometry import MIN_ASPECT

    fig = V.chunk_layout(
        llama_hsdp, "tok_embeddings.weight"
    )  # 1000×64: a sliver at the true aspect
    drawn = fig.layout.yaxis.scaleratio * 1000 / 64  # drawn height ÷ drawn width
    assert drawn == pytest.approx(1 / MIN_ASPECT)
    assert "not to scale" in fig.layout.yaxis.title.text
    # The boxes themselves keep their real element coordinates.
    assert sorted(r for rs in tiles_of(fig).values() for r in rs) == [
        (0, 64, 250 * i, 250 * (i + 1)) for i in range(4)
    ]
    square = V.chunk_layout(llama_hsdp, "layers.0.attention.wq.weight")  # 64×64: true aspect
    assert (
        square.layout.yaxis.scaleratio == 1 and "not to scale" not in square.layout.yaxis.title.text
    )


def test_layout_legend_reads_the_tile_labels(llama_hsdp, hsdp):
    from dcpviz.views.layout import REPLICA_LEGEND

    for fig in (
        V.chunk_layout(llama_hsdp, "tok_embeddings.weight"),
        V.chunk_layout(hsdp, "progress.step"),
    ):
        assert REPLICA_LEGEND in [t.name for t in fig.data]
    fsdp = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))
    assert REPLICA_LEGEND not in [
        t.name for t in V.chunk_layout(fsdp, "fc1.weight").data
    ]  # no replicas, no key


def test_counts_have_whole_number_ticks(llama_hsdp):
    bar = V.dedup(llama_hsdp).data[0].colorbar
    assert bar.tickformat == ",d" and bar.dtick == 1 and bar.tick0 == 0
    load = dcpviz.simulate_load(
        llama_hsdp, dcpviz.Scenario(model="llama-tiny", world_size=6, recipe="fsdp")
    )
    reads = V.resharding(load, values="reads").data[0].colorbar
    assert reads.tickformat == ",d"


def test_mean_is_named_in_the_legend_not_written_on_the_bars(llama_hsdp, hsdp):
    low = dcpviz.simulate_save(
        hsdp_scenario(), planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True)
    )
    for fig, results in (
        (V.rank_volume(llama_hsdp), [llama_hsdp]),
        (V.rank_volume(llama_hsdp, by="module"), [llama_hsdp]),
        (V.rank_volume(hsdp, compare=low), [hsdp, low]),
    ):
        assert not fig.layout.annotations  # nothing drawn over the bars
        means = [t.meta["mean"] for t in fig.data if t.meta and t.meta.get("role") == "mean"]
        assert means == [pytest.approx(float(r.rank_volume.nbytes.mean())) for r in results]
        assert [s.y0 for s in fig.layout.shapes] == pytest.approx(means)
        assert not any("mean: mean" in t.name for t in fig.data if t.name)


def _title_lines(fig):
    return [re.sub("<[^>]+>", "", line) for line in fig.layout.title.text.split("<br>")]


def test_titles_fit_and_hang_from_the_top(llama_hsdp):
    """Long subtitles were cut ("Pass fqn=") or ran into the rank axis drawn above the plot."""
    load = dcpviz.simulate_load(
        llama_hsdp, dcpviz.Scenario(model="llama-tiny", world_size=6, recipe="fsdp")
    )
    figs = [
        V.dedup(llama_hsdp),
        V.dedup(llama_hsdp, fqn="tok_embeddings.weight"),
        V.rank_volume(llama_hsdp),
        V.chunk_layout(llama_hsdp, "tok_embeddings.weight"),
        V.read_volume(load),
        V.resharding(load),
        V.read_layout(load, "tok_embeddings.weight", 0),
    ]
    for fig in figs:
        assert all(len(line) <= 130 for line in _title_lines(fig)), _title_lines(fig)
        assert fig.layout.title.yanchor == "top" and fig.layout.title.yref == "container"
        # Room above the plot for the title's lines (about 20 px each) and an axis title on top.
        lines = len(_title_lines(fig))
        assert (
            fig.layout.margin.t
            >= 28 + 20 * lines + (40 if fig.layout.xaxis.side == "top" else 0) - 20
        )


def test_read_boxes_are_labelled_with_their_writer(llama_hsdp):
    load = dcpviz.simulate_load(
        llama_hsdp, dcpviz.Scenario(model="llama-tiny", world_size=6, recipe="fsdp")
    )
    fig = V.read_layout(load, "tok_embeddings.weight", 1)
    labels = next(t for t in fig.data if t.meta and t.meta.get("role") == "read-labels")
    reads = load.read_items[
        (load.read_items.fqn == "tok_embeddings.weight") & (load.read_items["rank"] == 1)
    ]
    assert sorted(labels.text) == sorted(f"from {r}" for r in reads.writer_rank)


def test_past_24_ranks_tiles_are_labelled_and_neighbours_differ():
    """Past the 24-colour palette, a rank is read from its label, and nearby ranks never share a look."""
    from dcpviz.views.style import rank_color

    def rgb(h):
        return [int(h.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)]

    for W in (32, 64, 256):
        colors = [rank_color(r, W) for r in range(W)]
        assert len(set(colors)) == W
        near = min(
            math.dist(rgb(colors[r]), rgb(colors[s]))
            for r in range(W)
            for s in range(r + 1, min(W, r + 5))
        )
        assert near > 60, W
    save = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=32, recipe="fsdp"))
    fig = V.chunk_layout(save, "fc1.weight")
    labels = next(t for t in fig.data if t.meta and t.meta.get("role") == "labels").text
    assert sorted(labels) == sorted(f"<b>{r}</b>" for r in range(32))
