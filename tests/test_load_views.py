"""Load views carry the load tables' numbers exactly; explorer and report for a load."""

import pytest

import dcpviz
import dcpviz.views as V


@pytest.fixture(scope="module")
def load():
    save = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )
    return dcpviz.simulate_load(save, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"))


def _rects(trace):
    xs, ys = list(trace.x), list(trace.y)
    return {(xs[i], xs[i + 1], ys[i], ys[i + 2]) for i in range(0, len(xs), 6)}


def test_read_layout_draws_exactly_the_reads(load):
    fig = V.read_layout(load, "fc1.weight", 2)
    reads = load.read_items[
        (load.read_items["rank"] == 2) & (load.read_items["fqn"] == "fc1.weight")
    ]
    drawn = set()
    for tr in fig.data:
        if tr.meta and tr.meta.get("role") == "reads":
            drawn |= {(tr.meta["writer"], r) for r in _rects(tr)}
    expected = set()
    for r in reads.itertuples():
        row0 = r.saved_offsets[0] + r.storage_offsets[0]
        col0 = r.saved_offsets[1] + r.storage_offsets[1]
        expected.add((r.writer_rank, (col0, col0 + r.lengths[1], row0, row0 + r.lengths[0])))
    assert drawn == expected and expected
    wanted = next(t for t in fig.data if t.meta and t.meta.get("role") == "wanted")
    assert [tuple(map(tuple, b)) for b in wanted.meta["boxes"]] == [
        ((64, 0), (32, 16))
    ]  # torch.chunk(190, 6)[2]
    saved = {r for t in fig.data if t.meta and t.meta.get("role") == "saved" for r in _rects(t)}
    assert len(saved) == 4


def test_read_volume_and_resharding_carry_the_tables(load):
    fig = V.read_volume(load)
    bars = {t.name: list(t.y) for t in fig.data if t.type == "bar"}
    assert bars["bytes read"] == list(load.rank_volume["nbytes"])
    assert bars["saved chunks deserialised"] == list(load.rank_volume["chunk_nbytes"])
    heat = V.resharding(load).data[0]
    m = load.resharding_matrix()
    for i, row in enumerate(heat.z):
        for j, v in enumerate(row):
            expected = m.iloc[i, j]
            assert (v != v and expected == 0) or v == expected


def test_load_explorer_and_report(load, tmp_path):
    app = dcpviz.explore(load)
    assert "dcpviz-load-explorer" in app._dom_classes
    app.fqn_picker.value = "fc2.weight"
    app.rank_picker.value = 5
    assert (
        "fc2.weight" in app.read_fig.layout.title.text
        and "rank 5" in app.read_fig.layout.title.text
    )
    path = dcpviz.report(load, tmp_path / "load.html")
    text = path.read_text()
    assert "Resharding" in text and text.count("Plotly.newPlot") >= 3


def test_report_puts_hints_first_for_a_broken_load(tmp_path):
    save = dcpviz.simulate_save(dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))
    target = dcpviz.Scenario(
        model=lambda: __import__("dcpviz.engine.job.models").engine.job.models.MLP(hidden=200),
        world_size=4,
        recipe="fsdp",
    )
    load = dcpviz.simulate_load(save, target)
    assert not load.ok and len(load.hints)
    text = dcpviz.report(load, tmp_path / "bad.html").read_text()
    assert text.index("What is likely wrong") < text.index("Mismatches")
    assert "fc1.weight" in text and "size" in text
