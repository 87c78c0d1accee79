"""Mutation testing (``make mutate``): do the tests catch bugs planted where a wrong answer is costly?

For each target below, mutmut (3.x) copies the repository into a scratch directory
(``bench/.mutate/<target>/``, ignored by git), plants one small change at a time (a ``>=`` made
``>``, a ``True`` made ``False``, a constant changed, ...) in the target's module, and runs the
target's narrow, fast test selection against it. A mutant the tests fail on is *killed*; one they
pass on *survived*: either a test is missing or the change is *equivalent* (it cannot change
any answer). ``EQUIVALENT`` below lists the survivors shown to be equivalent, each with why.

One worker (``--max-children 1``): the machine this was written on has 2 cores shared with other
work. Slow (minutes per target); not for every CI run. Usage:

    python bench/mutate.py                  # every target, then bench/MUTATION.md
    python bench/mutate.py trace_validate   # one target (the table keeps the others' last rows)
    python bench/mutate.py --survivors NAME # list NAME's survivors with their diffs
    python bench/mutate.py --again NAME     # re-test NAME's survivors against the tests as they are now
    python bench/mutate.py --table          # rewrite bench/MUTATION.md from the last results
    python bench/mutate.py --partial NAME   # tabulate an interrupted run's tested mutants
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".mutate"
TABLE = ROOT / "bench" / "MUTATION.md"
RAW = ROOT / "bench" / "mutation_results.json"

# name -> (modules to mutate, mutant-name globs to keep (None: all), test selection)
TARGETS: dict[str, tuple[list[str], list[str] | None, list[str]]] = {
    "trace_validate": (
        ["dcpviz/core/trace_validate.py"],
        None,
        [
            "tests/test_trace_errors.py",
            "tests/test_trace.py",
            "tests/test_planted_bugs.py",
            "tests/test_mutation_kills.py",
        ],
    ),
    "safe_readers": (
        [
            "dcpviz/engine/checkpoint/byteio.py",
            "dcpviz/engine/checkpoint/reader.py",
            "dcpviz/engine/checkpoint/metadata_check.py",
        ],
        # What stands between a checkpoint and plain pickle: the metadata unpickler and its
        # reader, the path guards, and the BYTE_IO loader (not the table building of
        # inspect_checkpoint nor metadata_check's structure rules, which the fuzz and checkpoint
        # tests cover otherwise; add "dcpviz.engine.checkpoint.metadata_check.*" for those)
        [
            "dcpviz.engine.checkpoint.byteio.x_load_byte_io*",
            "dcpviz.engine.checkpoint.byteio.x_sanitized_stream*",
            "dcpviz.engine.checkpoint.byteio.x__read_all*",
            "dcpviz.engine.checkpoint.reader.xǁ_MetadataUnpicklerǁ*",
            "dcpviz.engine.checkpoint.reader.x_read_metadata*",
            "dcpviz.engine.checkpoint.reader.x_check_inside*",
            "dcpviz.engine.checkpoint.reader.x__check_storage_paths*",
        ],
        [
            "tests/test_byte_io.py",
            "tests/test_checkpoint.py",
            "tests/test_checkpoint_links.py",
            "tests/test_metadata_errors.py",
            "tests/test_mutation_kills.py",
        ],
    ),
    "dedup_replay": (
        ["dcpviz/analysis/save/tables.py"],
        [
            "dcpviz.analysis.save.tables.x__dedup_frame__mutmut_*",
            "dcpviz.analysis.save.tables.x__chosen_ranks__mutmut_*",
            "dcpviz.analysis.save.tables.xǁ_FewestWhyǁ*",
        ],
        ["tests/test_dedup.py", "tests/test_planted_bugs.py", "tests/test_mutation_kills.py"],
    ),
    "verdict": (
        ["dcpviz/analysis/load/verdict.py"],
        None,
        # fast tests only: each mutant runs the tests that cover its function, fixtures included
        # (test_load_journey's and test_planted_bugs' simulations cost seconds per mutant)
        ["tests/test_mutation_kills_verdict.py", "tests/test_load_journey.py::test_rank_ranges"],
    ),
    "checks": (
        ["dcpviz/analysis/checks.py"],
        None,
        [
            "tests/test_mutation_kills_checks.py",
            "tests/test_checks.py::test_read_amplification_on_a_reshard",
            "tests/test_planted_bugs.py::test_two_ranks_with_two_values_lose_one",
        ],
    ),
    "hints_and_fix": (
        ["dcpviz/analysis/load/hints.py", "dcpviz/analysis/load/fix.py"],
        None,
        # (not yet: hints_training.py, hint_base.py, core/keymatch.py, the matcher itself)
        ["tests/test_mutation_kills_hints.py"],
    ),
    "keymatch": (
        ["dcpviz/core/keymatch.py"],
        None,
        [
            "tests/test_keymatch.py",
            "tests/test_diff_renames.py",
            "tests/test_mutation_kills_hints.py",
            "tests/test_mutation_kills_keymatch.py",
        ],
    ),
    "fix_planner": (
        ["dcpviz/engine/checkpoint/fix_planner.py"],
        None,
        [
            "tests/test_mutation_kills_fix_planner.py",
            "tests/test_load_journey.py::test_size_hint_fix_loads_saved_rows_into_a_nested_state",
        ],
    ),
    "hints_training": (
        ["dcpviz/analysis/load/hints_training.py", "dcpviz/analysis/load/hint_base.py"],
        None,
        # hand-built traces only (test_training_state_load.py's simulations cost ~30 s a mutant)
        ["tests/test_mutation_kills_training.py"],
    ),
    "file_checks": (
        ["dcpviz/analysis/save/file_checks.py"],
        None,
        # hand-built traces (tests/test_hf_checks.py reproduces each finding with DCP's own
        # writer, at seconds a test)
        ["tests/test_mutation_kills_file_checks.py"],
    ),
    "hf_checks": (
        ["dcpviz/analysis/checkpoint/hf_checks.py"],
        None,
        # hand-built folders (tests/test_hf_inspect.py finds each on folders DCP's writer wrote)
        ["tests/test_mutation_kills_hf_checks.py"],
    ),
}

# Survivors shown equivalent (no input can tell them apart): mutant name -> why.
EQUIVALENT: dict[str, str] = {
    "dcpviz.core.trace_validate.x__elements__mutmut_4": "`len(box) > 1` made `>= 1`: the decoder bounds every single count by MAX_COUNT "
    "(core/trace.py's Count), so a 1-d box never holds more than MAX_COUNT elements and "
    "an empty one holds 1; the rule answers the same for every box that decodes.",
    **{
        f"dcpviz.analysis.save.tables.xǁ_FewestWhyǁ{fn}__mutmut_{n}": "the memo of formatted text (`self.sizes` / `self.charges`) skipped or keyed by None: the "
        "text is formatted again, equal to the remembered one (a speed memo, not an answer)"
        for fn in ("fmt", "charge")
        for n in (1, 2)
    },
    **{
        f"dcpviz.analysis.save.tables.x__chosen_ranks__mutmut_{n}": "`np.full(n, -1, dtype=np.int64)` without the dtype: numpy infers int64 from -1 on the "
        "64-bit platforms torch supports, and _dedup_types casts the column to int64 anyway"
        for n in (4, 7)
    },
    **{
        f"dcpviz.analysis.save.tables.x__dedup_frame__mutmut_{n}": "the unrecorded-option default False made None or left out (PlannerInfo.option's default "
        "is None): `bool(None)` is False, the same rule"
        for n in (8, 10)
    },
    **{
        f"dcpviz.analysis.save.tables.x__dedup_frame__mutmut_{n}": "the default (0, -1) of `worst.get` given another item index: only its [0] is ever read "
        "(`worst[pick]` is set to real (bytes, item) pairs), so the index cannot matter"
        for n in (101, 102)
    },
    "dcpviz.analysis.save.tables.x__dedup_frame__mutmut_32": "`np.where(dcp_size > 0, dcp_size, 1)` made `> 1`: a dcp_size of 1 is charged 1 either way",
    **{
        f"dcpviz.analysis.load.verdict.x_error_lines__mutmut_{n}": "`df.itertuples(index=False)` made `index=True` / `index=None`: each row is read by field name "
        "(r.phase, r.ranks, ...), never by position, so an added Index field changes nothing"
        for n in (8, 9)
    },
    "dcpviz.analysis.load.verdict.x_verdict__mutmut_32": "`_silent_text(h, keys)` given None for a dtype hint: the dtype branch reads only the hint's "
    "title, never the keys",
    "dcpviz.analysis.load.verdict.x_problems__mutmut_93": "the severity weight 10 made 11: every kind's rank is at most 9 (fillna(9)), so severity "
    "still decides first and kind second, the same order",
    **{
        f"dcpviz.analysis.load.verdict.x_problems__mutmut_{n}": 'the `kind=` of a sort on two columns (["_o", "fqn"]) changed or left out: pandas applies '
        "`kind` only when sorting on one column; on several it always uses its stable lexsort"
        for n in (103, 105, 111, 112)
    },
    **{
        f"dcpviz.analysis.load.verdict.x__partial__mutmut_{n}": "the unrecorded allow_partial_load default False made None or left out (PlannerInfo.option's "
        "default is None): `bool(None)` is False, the same rule"
        for n in (3, 5)
    },
    "dcpviz.analysis.load.verdict.x_possible_sources__mutmut_9": "`m.fqn in skipped and m.kind == 'missing'` made `or`: the skipped keys are exactly the "
    "'missing' ones, and a key the checkpoint lacks has no record of another kind (size, type, "
    "dtype and unexpected all need the checkpoint to hold it)",
    "dcpviz.analysis.load.verdict.x_possible_sources__mutmut_19": "`m.fqn in unread and m.kind == 'unexpected'` made `or`: it adds only the shapes of keys "
    "declared unused, and shapes are looked up for skipped and unread keys alone",
    "dcpviz.analysis.checks.x__overlaps__mutmut_7": "`boxes[0].offsets` made `boxes[1].offsets`: every chunk of one tensor has as many offsets "
    "as the tensor has dims, so both are empty or neither",
    **{
        f"dcpviz.analysis.checks.x__overlaps__mutmut_{n}": "the sweep's dim picked without its key (the last dim): the sweep is exact along any dim "
        "(boxes sorted by start; one that starts at or after a box's end there shares nothing with "
        "it, nor do those after it); the key only picks the dim that makes it fastest"
        for n in (11, 13)
    },
    "dcpviz.analysis.checks.x__overlaps__mutmut_25": "the sweep's stop `>= end` made `> end`: a box that starts exactly where another ends "
    "shares no element with it (_overlap counts 0), so going on one box further adds nothing",
    "dcpviz.analysis.checks.x_counts__mutmut_3": "`value_counts() if len(checks) else {}` made to always count: an empty frame's counts are "
    "empty too, and the dict built from them is {} either way",
    **{
        f"dcpviz.analysis.checks.x_write_imbalance__mutmut_{n}": "the unrecorded dedup_save_to_lowest_rank default False made None or left out "
        "(PlannerInfo.option's default is None): `bool(None)` is False, the same rule"
        for n in (30, 32)
    },
    "dcpviz.analysis.checks.x_tied_weights__mutmut_1": "`not tied_keys or global_plans is None` made `and`: without global plans no item is kept "
    "(write_items' kept is NA, read as False), so no group has two written keys; without tied "
    "keys the loop has nothing to do. Either way no row",
    "dcpviz.analysis.checks.x_write_imbalance__mutmut_68": '`float("nan")` made `float("NAN")`: float() reads nan in any case, the same value',
    **{
        f"dcpviz.analysis.checks.x_tied_weights__mutmut_{n}": "`kept.fillna(False)` made `fillna(True)` / `fillna(None)`: with global plans (the check "
        "returns before without them) every item's kept is True or False (write_items leaves it NA "
        "only when there is no dedup to read), so there is nothing to fill"
        for n in (8, 11)
    },
    **{
        f"dcpviz.analysis.checks.x_read_amplification__mutmut_{n}": '`.astype("float64")` made `.astype(None)`: pandas reads a dtype of None as numpy\'s '
        "default, float64, the same cast"
        for n in (22, 27, 37, 58)
    },
    **{
        f"dcpviz.analysis.checks.x_partial_load__mutmut_{n}": "`sources.get(m.fqn, ())` with the default None or left out: possible_sources has an entry "
        "(maybe empty) for every skipped key, and every 'missing' key is skipped here, so the "
        "default is never used"
        for n in (29, 31)
    },
    "dcpviz.analysis.checks.x__frame__mutmut_23": '`kind="stable"` made `kind="STABLE"`: numpy reads a sort kind by its first letter in '
    "either case, so it is the same stable sort",
    **{
        f"dcpviz.analysis.checks.x_rank_specific_values__mutmut_{n}": "`itertuples(index=False)` made `index=True` / `index=None`: each row is read by field name "
        "(row.fqn, row.candidates, ...), never by position, so an added Index field changes nothing"
        for n in (6, 8)
    },
    "dcpviz.analysis.checks.x_rank_specific_values__mutmut_21": "`tuple(row.offsets) if row.offsets is not None else None` made to always take the tuple: "
    "save_tables' item columns turn a bytes entry's None offsets into () (_box), so a dedup row's "
    "offsets are never None",
    "dcpviz.analysis.load.hints.x__narrower__mutmut_6": "an unknown dtype's width 0 made 1 on the left: every known width is 8 or more, so "
    "`1 < width` and `0 < width` agree, and against an unknown right side both are False",
    **{
        f"dcpviz.analysis.load.hints.x_compute_hints__mutmut_{n}": "the unrecorded allow_partial_load default False made None or left out (PlannerInfo.option's "
        "default is None): `bool(None)` is False, the same rule"
        for n in (21, 23)
    },
    "dcpviz.analysis.load.fix.x__ambiguity_hint__mutmut_31": "the separator of a join over `candidates[:1]` changed: a join of at most one item never "
    "uses its separator",
    **{
        f"dcpviz.analysis.load.fix.x_match_hints__mutmut_{n}": "the unrecorded allow_partial_load default False made None or left out (PlannerInfo.option's "
        "default is None): `bool(None)` is False, the same rule"
        for n in (9, 11)
    },
    "dcpviz.analysis.load.fix.x_previous_fix__mutmut_4": '`option("fix_spec", None)` without its default: PlannerInfo.option\'s default is None',
    "dcpviz.analysis.load.fix.x_previous_fix__mutmut_7": "`not isinstance(spec, str) or not spec` made `and`: what the early return no longer catches "
    "(a non-text value, an empty text) json.loads refuses inside the try (TypeError, ValueError), "
    "which returns the same ({}, ())",
    "dcpviz.analysis.load.fix.x__size_hint__mutmut_53": "`b > a` made `b >= a`: a and b are the sizes of the one dim that differs, so they are never equal",
    **{
        f"dcpviz.engine.checkpoint.reader.x__check_storage_paths__mutmut_{n}": "the default of a storage record's missing relative_path ('') made None or 'XXXX': "
        "root / '', root / 'None' and root / 'XXXX' all lie inside the directory, so the guard "
        "passes either way (DCP's _StorageInfo always has a relative_path)"
        for n in (13, 19)
    },
    "dcpviz.core.trace_validate.x__load__mutmut_4": "`captured=False` made `captured=None`: _scenario only tests `not captured`, and None "
    "is falsy like False.",
    # -- core/keymatch.py
    "dcpviz.core.keymatch.x__cprefix__mutmut_3": "`canonical(prefix[:-1]) if prefix else ''` made to always canonicalise: for the "
    "prefix '' that is canonical('') == '', the same",
    "dcpviz.core.keymatch.x__apply_rewrite__mutmut_8": "the pair filter `m in st.cur and u in st.free` made `or`: both hold for every pair "
    "of a certain rewrite (its keys are claimed by no other pattern, so no earlier rewrite of the "
    "round took them), so `and` and `or` are both True",
    "dcpviz.core.keymatch.x__rewrites__mutmut_31": "`return False, ...` made True when no rewrite is certain: the loop then runs its "
    "remaining rounds on a state nothing changes (the choices, equal names and rewrites find the "
    "same nothing again) and ends with the same ambiguities: the same Match, later",
    # -- analysis/load/hints_training.py
    **{
        f"dcpviz.analysis.load.hints_training.x__param_group_hints__mutmut_{n}": "the default of `c.get(g, set())` in only_t made None or left out: only_c, "
        "computed just before, reads `c[g]` for every differing group, and c is a defaultdict(set), "
        "so every such g is in c by then and the default is never used"
        for n in (60, 62)
    },
    # -- engine/checkpoint/fix_planner.py
    "dcpviz.engine.checkpoint.fix_planner.x__collisions__mutmut_9": "the fallback text '?' changed: set_up_planner calls _collisions only when two keys "
    "rename onto one, and the loop then returns at the second of them; '?' is never reached",
    "dcpviz.engine.checkpoint.fix_planner.x__local_box__mutmut_5": "the offsets (0, ...) of a rank with no single chunk made (1, ...): its sizes are 0, "
    "so _overlap's first dim has stop = min(extent, 1) <= 1 and the box is empty either way "
    "(no read is planned for it; an empty box's offsets are never read)",
    "dcpviz.engine.checkpoint.fix_planner.x__overlap__mutmut_14": "`stop <= off` made `stop < off`: where stop == off the box gets a 0 size instead of "
    "None; create_local_plan reads only boxes with every size > 0, and lookup_tensor serves only "
    "planned reads, so an empty box is never used either way",
    **{
        f"dcpviz.engine.checkpoint.fix_planner.x__overlap__mutmut_{n}": "`slice(0, n)` made `slice(None, n)` / `slice(n)`: a slice with no start starts at 0, "
        "the same view"
        for n in (21, 23)
    },
    **{
        f"dcpviz.engine.checkpoint.fix_planner.x__resized_box__mutmut_{n}": "the view given for a box the saved tensor does not reach (`slice(0, 0)` per dim) "
        "changed: its sizes are 0, so create_local_plan plans no read of it and lookup_tensor (asked "
        "only for planned reads) never returns it"
        for n in (34, 35, 36, 37, 38, 39)
    },
    "dcpviz.engine.checkpoint.fix_planner.xǁRenamingLoadPlannerǁ__init____mutmut_28": "`self._boxes = {}` made None in __init__: set_up_planner, which DCP calls before "
    "create_local_plan and lookup_tensor, sets it to {} before anything reads it",
    **{
        f"dcpviz.engine.checkpoint.fix_planner.xǁRenamingLoadPlannerǁcreate_local_plan__mutmut_{n}": "the LoadPlan's storage_data / planner_data passed as None or left out: DCP's "
        "create_default_local_load_plan returns LoadPlan(requests), both None, so the plan is the same"
        for n in (31, 32, 34, 35)
    },
}


# Survivors neither killed nor equivalent yet: mutant name -> what it changes and why no test
# kills it (open work).
NOT_KILLED: dict[str, str] = {
    **{
        f"dcpviz.core.keymatch.{fn}__mutmut_{n}": "the round does not count as changed after the choices / equal "
        "names took pairs, so _rewrites runs in the same round instead of the next: the next round's "
        "choices and equal names find nothing new (the keys they left were refused for reasons "
        "taking pairs does not undo), so the answer differs only for a match that needs all "
        "MAX_ROUNDS rounds; no test builds one"
        for fn, n in (
            ("x__apply_choice", 48),
            ("x__equal_names", 45),
            ("x_match_keys", 22),
            ("x_match_keys", 23),
            ("x_match_keys", 30),
            ("x_match_keys", 31),
        )
    },
    "dcpviz.core.keymatch.x_match_keys__mutmut_16": "`ambiguities = []` made None before the loop: _rewrites sets it "
    "in the first round where choices and equal names change nothing (round 2 at the latest, for "
    "the reason above); None is reached only by a match where they change something in all "
    "MAX_ROUNDS rounds; no test builds one",
    "dcpviz.core.keymatch.x__apply_choice__mutmut_8": "a whole-key choice given the key None (only `canonical(a) == name` "
    "reaches it): differs only for a key a rewrite renamed before the choice could apply, which "
    "needs the choice refused in every earlier round; no test builds one",
    **{
        f"dcpviz.core.keymatch.x__equal_names__mutmut_{n}": "the label of a pair of equal names whose canonical names "
        "differ (renamed by a rewrite, not taken by it): the rewrite takes every pair it renames, "
        "so this branch was reached by none of 40,000 random key sets; no test reaches it"
        for n in (19, 27, 28)
    },
    "dcpviz.core.keymatch.x__bucket__mutmut_7": "the leaf of a name without segments ('' after its wrapper segments are "
    "dropped) made 'XXXX': differs only against a key whose leaf is literally 'XXXX'",
    "dcpviz.core.keymatch.x__ambiguities__mutmut_21": "`by_a[na][nb] += kept` made `=`: two rewrites reach one (na, nb) "
    "only through a key with an empty segment ('a..b': a rewrite '.' spelled '' like the "
    "insertion ''); no test has one",
    "dcpviz.core.keymatch.x__segs__mutmut_2": "'' split into [''] instead of []: differs only against a key that ends "
    "with '.' (an empty leaf), which rewrite_of would then pair with an empty name",
}


def _copy_tree(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file() and not name.startswith("bench/.mutate"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _config(modules: list[str], tests: list[str]) -> str:
    q = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["dcpviz"]\n'
        f"only_mutate = {q(modules)}\n"
        f"pytest_add_cli_args_test_selection = {q(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:randomly", "-p", "no:cacheprovider", "-q", "-x"]\n'
        'process_isolation = "forkserver"\n'  # torch is not fork-safe after the stats run
        "use_git_change_detection = false\n"
        # the CPU-time limit per mutant is (tests' time + this) x multiplier x 2: generous, so that
        # a machine shared with other work does not turn slow fixtures into false timeouts
        "timeout_constant = 30\n"
        # ... but not mutmut's default x15: a mutant that loops forever (a loop counter mutated)
        # would hold the one worker for a quarter of an hour of CPU
        "timeout_multiplier = 4\n"
    )


def run_target(name: str, again: list[str] | None = None) -> dict:
    """Mutate target ``name`` in a fresh copy; ``again``: only re-test these mutants (the last
    run's survivors) in the existing copy, with the tests as they are now."""
    modules, keep, tests = TARGETS[name]
    work = WORK / name
    if (
        again is None or not (work / "mutants").is_dir()
    ):  # a fresh copy (an --again without one too)
        _copy_tree(work)
        with open(work / "pyproject.toml", "a") as fh:
            fh.write(_config(modules, tests))
    else:
        for test in {t.split("::")[0] for t in tests} | {"tests/conftest.py"}:
            shutil.copy2(ROOT / test, work / test)
    t0 = time.time()
    names = again if again is not None else (keep or [])
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", *names]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    (work / "mutmut-run.log").write_text(proc.stdout + proc.stderr)
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        capture_output=True,
        text=True,
    ).stdout
    status = dict(re.findall(r"^\s*(\S+): (.+)$", out, flags=re.M))
    if again is not None:  # only the re-tested ones: main() adds the earlier run's killed
        status = {k: status.get(k, "not checked") for k in again}
    return {
        "target": name,
        "modules": modules,
        "tests": tests,
        **_tally(status, keep),
        "rc": proc.returncode,
        "seconds": round(time.time() - t0),
    }


def _tally(status: dict[str, str], keep: list[str] | None) -> dict:
    """Mutants (those ``keep``'s patterns select), killed, counts per status, survivors."""
    if keep:
        pats = [re.compile(re.escape(k).replace(r"\*", ".*") + "$") for k in keep]
        status = {k: v for k, v in status.items() if any(p.match(k) for p in pats)}
    counts: dict[str, int] = {}
    for v in status.values():
        counts[v] = counts.get(v, 0) + 1
    # A mutant that makes the tests run past their CPU limit (a loop that never ends) is caught
    # too: counted as killed ("statuses" keeps the two apart).
    caught = ("killed", "timeout")
    return {
        "mutants": len(status),
        "killed": sum(counts.get(c, 0) for c in caught),
        "statuses": counts,
        "survivors": sorted(k for k, v in status.items() if v not in caught),
    }


def partial_result(name: str) -> dict:
    """The mutants of an interrupted run that were tested (mutmut's .meta files), untested left out."""
    modules, keep, tests = TARGETS[name]
    status: dict[str, str] = {}
    for meta in (WORK / name / "mutants").rglob("*.py.meta"):
        for k, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items():
            if code is not None:
                status[k] = {1: "killed", 0: "survived", -24: "timeout", 24: "timeout"}.get(
                    code, f"exit {code}"
                )
    return {
        "target": name,
        "modules": modules,
        "tests": tests,
        **_tally(status, keep),
        "partial": True,
        "rc": None,
        "seconds": 0,
    }


def _split(r: dict) -> tuple[list[str], list[str]]:
    """(survivors not shown equivalent, equivalent ones) of a target's result."""
    names = r["survivors"] + r.get("equivalent_names", [])
    return [k for k in names if k not in EQUIVALENT], [k for k in names if k in EQUIVALENT]


def write_table(results: dict[str, dict]) -> None:
    lines = [
        "# Mutation testing (`make mutate`, bench/mutate.py, mutmut 3, one worker)",
        "",
        "Kill rate = (killed + equivalent) / mutants. Survivors listed in bench/mutation_results.json;",
        "equivalent ones are explained in bench/mutate.py's EQUIVALENT.",
        "",
        "| module | mutants | killed | survived | equivalent | kill rate | tests | time |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name in TARGETS:
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | not run | | | | | | |")
            continue
        survived, equivalent = _split(r)
        rate = (r["killed"] + len(equivalent)) / r["mutants"] if r["mutants"] else float("nan")
        mods = ", ".join(m.removeprefix("dcpviz/") for m in r["modules"])
        tests = ", ".join(
            dict.fromkeys(t.removeprefix("tests/").split("::")[0] for t in r["tests"])
        )
        if r.get("partial"):
            mods += "; stopped early: tested mutants only"
        lines.append(
            f"| {name} ({mods}) | {r['mutants']} | {r['killed']} | {len(survived)} | {len(equivalent)} "
            f"| {rate:.0%} | {tests} | {r['seconds']} s |"
        )
    lines += [
        "",
        "Each target's tests are the narrowest selection that exercises it; the keymatch, fix_planner, "
        "hints_training, file_checks and hf_checks rows use hand-built inputs (key facts, traces, "
        "folders) and one-process dcp.save/dcp.load, not simulations.",
        "A row 'stopped early' counts the mutants that were tested before the run was stopped "
        "(mutmut runs the fastest first); the rest were not tested.",
    ]
    lines += ["", "## Survivors shown equivalent", ""]
    lines += [f"- `{k}`: {why}" for k, why in EQUIVALENT.items()]
    lines += ["", "## Survivors not yet killed nor shown equivalent", ""]
    for name in TARGETS:
        if name in results:
            lines += [
                f"- `{k}`" + (f": {NOT_KILLED[k]}" if k in NOT_KILLED else "")
                for k in _split(results[name])[0]
            ]
    TABLE.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--survivors"]:
        work = WORK / argv[1]
        for k in json.loads(RAW.read_text())[argv[1]]["survivors"]:
            print(
                subprocess.run(
                    [sys.executable, "-m", "mutmut", "show", k],
                    cwd=work,
                    capture_output=True,
                    text=True,
                ).stdout
            )
        return 0
    results = json.loads(RAW.read_text()) if RAW.exists() else {}
    if argv[:1] == ["--partial"]:  # a target stopped before the end: tabulate what was tested
        results[argv[1]] = partial_result(argv[1])
        RAW.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        write_table(results)
        return 0
    if argv[:1] == ["--table"]:
        write_table(results)
        return 0
    again = argv[:1] == ["--again"]
    for name in (argv[1:] if again else argv) or list(TARGETS):
        print(f"mutating {name} ...", flush=True)
        if again:  # the earlier run's killed stand; its survivors get the re-test's verdicts
            prev = results[name]
            new = run_target(name, sum(_split(prev), []))
            statuses = {**new["statuses"], "killed": prev["killed"] + new["killed"]}
            results[name] = {
                **prev,
                "killed": statuses["killed"],
                "statuses": statuses,
                "survivors": new["survivors"],
                "equivalent_names": [],
                "rc": new["rc"],
                "tests": new["tests"],
                "seconds": prev["seconds"] + new["seconds"],
            }
        else:
            results[name] = run_target(name)
        r = results[name]
        survived, equivalent = _split(r)
        print(
            f"  {r['mutants']} mutants, {r['killed']} killed, {len(survived)} survived, "
            f"{len(equivalent)} equivalent ({r['seconds']} s; {r['statuses']})",
            flush=True,
        )
        # another target may have finished meanwhile: keep its entry, write this one
        results = {**(json.loads(RAW.read_text()) if RAW.exists() else {}), name: r}
        RAW.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        write_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
