"""One way to render, and the figure and table defects seen in Chromium screenshots (issue 21).

Each test pins one defect: it fails on the code that showed it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

import dcpviz
import dcpviz.views as V
from dcpviz.analysis.checks import counts_line
from dcpviz.core.kinds import FAILING, SEVERITIES, MismatchKind, Severity
from dcpviz.html_report import report_html
from dcpviz.terminal import _na, middle, print_result
from dcpviz.views.html import table_html

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hsdp():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    )


@pytest.fixture(scope="module")
def llama():
    return dcpviz.simulate_save(
        dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="hsdp")
    )


def _plain(text: str) -> str:
    return re.sub("<[^>]+>", "", text)


# -- one protocol -------------------------------------------------------------------------------
def test_no_name_is_defined_twice_in_a_renderer():
    """terminal.py defined ``_na`` twice: the second, without its guard, replaced the first."""
    for path in [
        ROOT / "dcpviz" / "terminal.py",
        ROOT / "dcpviz" / "html_report.py",
        ROOT / "dcpviz" / "results.py",
        *sorted((ROOT / "dcpviz" / "views").glob("*.py")),
        *sorted((ROOT / "dcpviz" / "widgets").glob("*.py")),
    ]:
        names = [
            n.name
            for n in ast.parse(path.read_text()).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        ]
        assert len(names) == len(set(names)), (
            path.name,
            sorted({n for n in names if names.count(n) > 1}),
        )


def test_na_keeps_its_guard_for_tuples():
    # pd.isna of a list answers per element; the unguarded _na raised ValueError on it.
    assert _na([1, 2]) == "[1, 2]" and _na([]) == "[]" and _na((1, 2)) == "(1, 2)"
    assert _na(None) == "-" and _na(float("nan")) == "-" and _na(3, lambda v: f"{v} B") == "3 B"


def test_every_result_kind_renders_through_the_one_protocol(hsdp, tmp_path):
    """A save, a load, a diff and a checkpoint: the same three renderers, no branch on the kind."""
    from dcpviz.views.html import header_html

    load = dcpviz.simulate_load(hsdp, dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp"))
    hsdp.to_json(tmp_path / "a.json")
    diff = dcpviz.diff(tmp_path / "a.json", tmp_path / "a.json")
    for result in (hsdp, load, diff):
        console = Console(record=True, width=100)
        print_result(result, console)
        text = console.export_text()
        for row in result.summary_rows():
            assert row.label in text
        html = report_html(result)
        assert all(row.label in html for row in result.summary_rows())
        assert result.summary_rows()[0].label in header_html(result)
        assert "<span" not in "".join(
            r.text for r in result.summary_rows()
        )  # plain text: no markup below views


def test_summary_text_is_escaped_once_by_the_renderer(hsdp):
    """Summary rows are plain text: a name with markup is escaped by the HTML renderer."""
    from dcpviz.parts import SummaryRow
    from dcpviz.views.html import summary_html

    out = summary_html([SummaryRow("model", "<b>x</b> & y", "bad")])
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in out and 'class="bad"' in out


def test_severities_and_mismatch_kinds_are_enums_equal_to_their_text(hsdp):
    assert SEVERITIES == ("data-loss", "error", "warning", "info") and FAILING == (
        "data-loss",
        "error",
    )
    assert Severity.DATA_LOSS == "data-loss" and f"{Severity.WARNING}" == "warning"
    assert [str(k) for k in MismatchKind] == [
        "missing",
        "size",
        "type",
        "other",
        "dtype",
        "unexpected",
    ]
    # The tables hold the members, which compare and serialise as their text.
    assert set(hsdp.checks["severity"]) <= set(SEVERITIES)
    load = dcpviz.simulate_load(
        hsdp, dcpviz.Scenario(model="llama-tiny", world_size=2, recipe="fsdp")
    )
    assert (load.mismatches["kind"] == "missing").any() and (
        load.mismatches["kind"] == MismatchKind.MISSING
    ).any()
    assert {m.kind for m in load.trace.mismatches} <= set(MismatchKind)


# -- tables -------------------------------------------------------------------------------------
def test_counts_read_as_english():
    rows = pd.DataFrame({"severity": ["error"] + ["warning"] * 6 + ["data-loss"] * 2 + ["info"]})
    assert counts_line(rows) == "2 data-loss, 1 error, 6 warnings, 1 info"
    assert counts_line(rows.iloc[:2]) == "1 error, 1 warning"


def test_ranks_show_as_ranges_and_none_as_a_dash():
    df = pd.DataFrame({"check": ["a", "b"], "ranks": [(0, 1, 2, 3, 5), ()]})
    html = table_html(df)
    assert "<td>0-3,5</td>" in html and "<td>()</td>" not in html and "<td>–</td>" in html


def test_tables_carry_their_own_spacing():
    """The explorer shows tables inside JupyterLab, without the report's style sheet: the headers
    ran together."""
    html = table_html(pd.DataFrame({"planned_items": [1], "planned_nbytes": [2]}))
    assert 'class="sortable dcpviz-table"' in html
    rule = re.search(r"table\.dcpviz-table th,table\.dcpviz-table td\{([^}]*)\}", html).group(1)
    assert "padding:3px 8px" in rule and "border:1px solid" in rule


def test_terminal_at_80_columns_keeps_names_readable(llama, tmp_path, monkeypatch, capsys):
    """At 80 columns the tables wrapped names into six-character pieces: a name is now on one
    line, whole or shortened in the middle (both ends kept)."""
    console = Console(record=True, width=80)
    print_result(llama, console)
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= 80
    for fqn in set(llama.dedup["fqn"].head(12)):
        assert any(middle(fqn, n) in text for n in range(12, len(fqn) + 1)), fqn
    # The command itself, at COLUMNS=80.
    from dcpviz.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["show", str(llama.to_json(tmp_path / "plan.json"))]) in (0, 1)
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 80 and "…" in out


def test_middle_keeps_both_ends():
    cut = middle("layers.0.attention.wq.weight", 22)
    assert (
        len(cut) == 22 and cut.startswith("layers.0.a") and cut.endswith("wq.weight") and "…" in cut
    )
    assert middle("fc1.weight", 22) == "fc1.weight"


# -- figures ------------------------------------------------------------------------------------
def _plot_height(fig) -> float:
    m = fig.layout.margin
    return fig.layout.height - m.t - m.b


def test_row_axis_title_stays_beside_the_plot(hsdp, llama):
    """fc2.weight (3×190): one long axis title ran up past the plot into the subtitle."""
    for fig in (
        V.chunk_layout(hsdp, "fc2.weight"),
        V.chunk_layout(llama, "tok_embeddings.weight"),
        V.chunk_layout(hsdp, "fc1.weight"),
    ):
        lines = _plain(fig.layout.yaxis.title.text.replace("<br>", "\n")).split("\n")
        assert 7 * max(map(len, lines)) <= _plot_height(fig), lines


def test_legend_fits_without_a_scrollbar(hsdp):
    """fc1.bias (a 1-D strip): four writers and the replica key in a 260 px figure scrolled,
    hiding rank 4."""
    fig = V.chunk_layout(hsdp, "fc1.bias")
    entries = [t for t in fig.data if t.showlegend is not False and t.name]
    assert "rank 4 (1, 0)" in [t.name for t in entries]
    assert fig.layout.height - fig.layout.margin.t >= 30 * (len(entries) + 1)


@pytest.mark.parametrize("fqn", ["progress.step", "progress._extra_state.epoch"])
def test_single_tile_is_wide_enough_for_its_replicas(hsdp, fqn):
    """A square tile clipped '(0,2,3,4,5,6,7)'."""
    fig = V.chunk_layout(hsdp, fqn)
    label = next(t for t in fig.data if t.meta and t.meta.get("role") == "labels").text[0]
    longest = max(len(_plain(x)) for x in label.split("<br>"))
    width = fig.layout.width - fig.layout.margin.l - fig.layout.margin.r
    assert fig.layout.yaxis.scaleanchor is None  # the tile spans the plot, not a square
    assert 0.62 * 16 * longest <= 0.8 * width


def test_thin_modules_are_named_not_left_invisible(hsdp):
    """The norm segments (24 B beside 3 KB bars) were invisible slivers: the legend gives each
    module's bytes and the subtitle names the ones too thin to see."""
    fig = V.rank_volume(hsdp, by="module")
    names = [t.name for t in fig.data if t.type == "bar"]
    assert "norm · 24 B" in names
    assert "too thin to see" in fig.layout.title.text and "norm (24 B)" in fig.layout.title.text
    assert "too thin" not in V.rank_volume(hsdp).layout.title.text


def test_component_chart_says_components():
    """Notebook 05's legend said 'all modules: mean' over a chart of components."""
    res = dcpviz.simulate_save(
        dcpviz.Scenario(model="mlp", world_size=2, recipe="fsdp", optimizer="adamw")
    )
    fig = V.rank_volume(res, by="component")
    means = [t.name for t in fig.data if t.meta and t.meta.get("role") == "mean"]
    assert means and means[0].startswith("all components: mean")


# -- words --------------------------------------------------------------------------------------
def test_notes_speak_the_users_terms(hsdp):
    """A note pointed users at internal source ('see engine/fastpath.py')."""
    for note in hsdp.trace.notes:
        assert "engine/" not in note and ".py" not in note, note
    assert any("representative ranks" in n and "fast=False" in n for n in hsdp.trace.notes)
    assert "engine/" not in report_html(hsdp)


def test_demo_opens_with_what_is_true(hsdp):
    """The demo (mlp, hsdp, 2x4) opened with three warnings that called the values of ranks 1-7
    unknown — rank 0's state stands for every rank there by construction — and said 'rank 2's
    copy' is kept while listing rank 2's value as unknown. dcpviz's own model, recipe and no
    per-rank state give every rank rank 0's Python values: only the meta tensor stays unknown."""
    checks = hsdp.checks
    assert list(checks["fqn"]) == ["progress.step"] and list(checks["severity"]) == ["warning"]
    row = checks.iloc[0]
    assert tuple(row["ranks"]) == tuple(range(8)) and "8 ranks save" in row["message"]
    assert "meta device" in row["message"] and "did not build" not in row["message"]
    ranks0 = {d.rank for d in hsdp.trace.value_digests if d.fqn == "progress._extra_state.epoch"}
    assert ranks0 == set(range(8))


def test_user_code_values_stay_unknown():
    """A model given as a callable is user code: its Python values on other ranks are not
    assumed equal to rank 0's."""
    from dcpviz.engine.job.models import MLP

    res = dcpviz.simulate_save(dcpviz.Scenario(model=MLP, world_size=8, mesh=(2, 4), recipe="hsdp"))
    by_fqn = res.checks.set_index("fqn")
    assert "progress._extra_state.epoch" in by_fqn.index
    row = by_fqn.loc["progress._extra_state.epoch"]
    assert "did not build" in row["message"] and 0 not in tuple(row["ranks"])


def test_short_dims_tick_whole_elements(hsdp):
    """fc2.bias (3 elements) had ticks at 0.5, 1.5, 2.5: half an element means nothing."""
    assert V.chunk_layout(hsdp, "fc2.bias").layout.xaxis.dtick == 1
    assert V.chunk_layout(hsdp, "fc2.weight").layout.yaxis.dtick == 1
    assert (
        V.chunk_layout(hsdp, "fc1.weight").layout.yaxis.dtick is None
    )  # 190 rows: plotly's own ticks


def test_heatmaps_draw_no_grid_through_their_cells(hsdp):
    """Notebook 04's resharding-by-file heatmap had grid lines through the empty cells and the
    file names above them."""
    load = dcpviz.simulate_load(hsdp, dcpviz.Scenario(model="mlp", world_size=6, recipe="fsdp"))
    fig = V.resharding(load)
    assert fig.layout.xaxis.showgrid is False and fig.layout.yaxis.showgrid is False
    assert fig.layout.xaxis.zeroline is False


def test_a_fix_written_as_code_keeps_its_lines(hsdp):
    """The load report showed the fix's code in an inline <code>, which runs its lines together."""
    from dcpviz.engine.job.models import MLP
    from dcpviz.views.html import hints_html

    class Renamed(MLP):
        def __init__(self):
            super().__init__()
            self.ln = self.norm
            del self.norm

    load = dcpviz.simulate_load(hsdp, dcpviz.Scenario(model=Renamed, world_size=4, recipe="fsdp"))
    fix = next(h.fix for h in load.hints if "\n" in h.fix)
    out = hints_html(load.hints)
    assert "<pre" in out and fix.splitlines()[1] in out.split("<pre", 1)[1]


def test_every_rank_digests_equal_the_plain_path():
    """The independent fact behind the demo's fix: planning every rank from its own state
    (fast=False) gives every rank's digests, and they are rank 0's — the shortcut now records the
    same digests, so the checks agree."""
    sc = dcpviz.Scenario(model="mlp", world_size=4, recipe="fsdp", optimizer="adamw")
    fast, plain = dcpviz.simulate_save(sc), dcpviz.simulate_save(sc, fast=False)
    assert fast.trace.value_digests == plain.trace.value_digests
    assert {d.rank for d in fast.trace.value_digests} == set(range(4))
    pd.testing.assert_frame_equal(fast.checks, plain.checks)
