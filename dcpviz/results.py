"""Results: a trace plus the tables derived from it (computed on first access)."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from dcpviz.analysis import checks as checks_
from dcpviz.analysis.facets import stage_facet
from dcpviz.analysis.groups import ranges
from dcpviz.analysis.load import fix as load_fix
from dcpviz.analysis.load import read_columns
from dcpviz.analysis.load import tables as load_tables
from dcpviz.analysis.load import verdict as verdicts
from dcpviz.analysis.load.hints import Hint, compute_hints, hints_table
from dcpviz.analysis.load.stage_tables import stage_facets, stage_resharding
from dcpviz.analysis.save import file_tables, stage_tables, tables
from dcpviz.core.trace import LoadTrace, SaveTrace, write_trace
from dcpviz.core.trace_codec import read_trace
from dcpviz.core.units import fmt_bytes
from dcpviz.parts import (  # noqa: F401 - the parts are re-exported: results supply them
    Brief,
    FigurePart,
    HintsPart,
    MessagesPart,
    Part,
    SummaryRow,
    TablePart,
)


def pick_layout_tensors(tensors: pd.DataFrame, limit: int = 6) -> list[str]:
    """Tensors worth drawing: the largest, a strided one, one with empty shards, a 1-D one, a
    scalar, a bytes entry — each kind once."""
    picks: list[str] = []

    def add(frame: pd.DataFrame) -> None:
        for f in frame["fqn"]:
            if f not in picks:
                picks.append(f)
                return

    t = tensors
    add(t[t.kind == "tensor"].sort_values("nbytes", ascending=False))
    add(t[t.placements.str.contains("_StridedShard", regex=False)])
    add(t[t.empty_chunks > 0])
    add(t[(t.kind == "tensor") & (t["size"].map(len) == 1)])
    add(t[(t.kind == "tensor") & (t["size"].map(len) == 0)])
    add(t[t.kind == "bytes"])
    return picks[:limit]


def pick_read_tensors(load: Any, limit: int = 3) -> list[str]:
    """Tensors worth drawing: a mismatched one, the one read from most chunks, the largest."""
    picks: list[str] = []
    saved = {t.fqn for t in load.trace.saved.tensors}
    mm = load.mismatches
    for f in mm[mm["kind"].isin(["size", "dtype"])]["fqn"]:
        if f in saved and f not in picks:
            picks.append(f)
            break
    # From the read columns, not read_items (one row per read of every rank): the same two
    # groupbys' results, sorted the same way (tests/test_load_read_columns.py).
    if read_columns.columns(load.trace).n_reads:
        spread, by_bytes = read_columns.tensor_spread(load.trace)
        for f in list(spread.sort_values(ascending=False).index[:1]) + list(
            by_bytes.sort_values(ascending=False).index[:1]
        ):
            if f in saved and f not in picks:
                picks.append(f)
    return picks[:limit]


READ_NOTE = (
    "saved-chunk bytes: whole saved chunks, which FileSystemReader deserialises before narrowing"
)


class _Result:
    """What both result kinds share: the trace, its scenario, errors, JSON."""

    kind = ""

    def __init__(self, trace: Any, metadata: Any = None) -> None:
        self.trace = trace
        self._metadata = metadata

    @property
    def scenario(self):
        """The job the trace describes (a ScenarioInfo)."""
        return self.trace.scenario

    @property
    def errors(self) -> list[str]:
        """What the planner raised, one message per error."""
        return [str(e) for e in self.trace.errors]

    @property
    def ok(self) -> bool:
        """True when nothing was raised."""
        return not self.trace.errors

    def checks_part(self) -> list[Part]:
        """The checks as the report's first part, when there is any finding."""
        return checks_part(self.checks)  # type: ignore[attr-defined]

    def checks_line(self) -> str:
        """The checks in a few words, for repr: '1 data-loss, 2 warning'."""
        return checks_.counts_line(self.checks)  # type: ignore[attr-defined]

    def messages(self) -> MessagesPart:
        """The errors and the trace's notes, as one part."""
        return MessagesPart(tuple(self.errors), tuple(self.trace.notes))

    def header_parts(self) -> list[Part]:
        """Under an explorer's summary: the errors and notes."""
        return [self.messages()]

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the trace as versioned JSON (``dcpviz.load_trace`` opens it again)."""
        return write_trace(self.trace, path)

    def _repr_html_(self) -> str:
        # The repr as preformatted text; the summary as a table is the views' job
        # (``dcpviz.explore(result)`` or ``dcpviz.report``).
        return f"<pre>{html.escape(repr(self))}</pre>"


class SaveResult(_Result):
    """What a save planner did, on every rank. Tables are pandas DataFrames:

    ``write_items`` every local-plan item (``kept`` after dedup) · ``dedup`` each index planned by
    more than one rank · ``rank_volume`` bytes per rank after dedup · ``chunks`` the checkpoint
    metadata with writer ranks · ``metadata`` DCP's Metadata · ``errors`` planner errors.
    """

    kind = "save"
    trace: SaveTrace

    # -- tables ----------------------------------------------------------------------------
    @cached_property
    def write_items(self) -> pd.DataFrame:
        """Every local-plan item of every rank; ``kept`` says whether dedup kept it."""
        return tables.write_items(self.trace)

    @cached_property
    def dedup(self) -> pd.DataFrame:
        """Each index planned by more than one rank: who planned it, who writes it, why."""
        return tables.dedup(self.trace)

    @property
    def dedup_choices(self) -> pd.DataFrame:
        """``dedup``'s first columns (fqn, offsets, candidates, chosen_rank, nbytes) without the
        replay's reasons: what the dedup overview draws, for a fraction of the time."""
        return tables.dedup_choices(self.trace)

    @cached_property
    def rank_volume(self) -> pd.DataFrame:
        """Items and bytes per rank after dedup (and as planned locally)."""
        return tables.rank_volume(self.trace)

    @cached_property
    def chunks(self) -> pd.DataFrame:
        """The checkpoint metadata's chunks, with the rank that writes each."""
        return tables.chunks(self.trace)

    def tensor_boxes(self, fqn: str) -> pd.DataFrame:
        """One row per distinct chunk of ``fqn``: who planned it, who writes it, who dropped it
        (``write_items`` and ``chunks`` of that key alone: no table of every item is built)."""
        return tables.tensor_boxes(
            tables.write_items(self.trace, fqn), tables.chunks(self.trace, fqn), fqn
        )

    @cached_property
    def summary(self) -> dict[str, Any]:
        """The save in numbers: job, planner, items, bytes, imbalance, status."""
        return tables.summary(self.trace)

    @cached_property
    def checks(self) -> pd.DataFrame:
        """What DCP does silently here that loses data, fails or costs: severity ('data-loss',
        'error', 'warning', 'info'), check, fqn, ranks, message, fix (``analysis.checks``)."""
        return checks_.save_checks(self.trace)

    @cached_property
    def tensors(self) -> pd.DataFrame:
        """One row per checkpoint entry: shape, dtype, chunks, bytes, placements."""
        return tables.tensors(self.trace)

    @cached_property
    def tensor_groups(self) -> pd.DataFrame:
        """Entries that differ only by layer number and are sharded alike, one row each."""
        return tables.tensor_groups(self.trace)

    def volume_by_module(self, depth: int = 1) -> pd.DataFrame:
        """Bytes per rank per module (module path cut at ``depth`` parts)."""
        return tables.volume_by_module(self.trace, depth)

    @cached_property
    def volume_by_component(self) -> pd.DataFrame:
        """Bytes each rank writes per training-state component (model, optim, lr_scheduler, ...)."""
        return tables.volume_by_component(self.trace)

    @cached_property
    def phase_changes(self) -> pd.DataFrame:
        """What the global plan (dedup) and finish_plan changed, item by item."""
        return tables.phase_changes(self.trace)

    @cached_property
    def phase_volume(self) -> pd.DataFrame:
        """Items and bytes per rank after each phase (local, global, final)."""
        return tables.phase_volume(self.trace)

    @cached_property
    def storage(self) -> pd.DataFrame:
        """fqn, offsets, file, offset, length, rank: where bytes were really written (empty for
        a simulation, which writes nothing)."""
        return tables.storage(self.trace)

    @cached_property
    def files(self) -> pd.DataFrame:
        """file, rank, items, nbytes: each data file DCP wrote; for a simulation with a storage
        writer, each file its write_data would write (nbytes: data bytes); else empty."""
        if not self.trace.metadata or not self.trace.metadata.storage:
            if self.trace.file_plan:
                return file_tables.planned_files(self.trace)
        return tables.files(self.trace)

    @cached_property
    def file_plan(self) -> pd.DataFrame:
        """rank, file, fqn, offsets, sizes, item_type, dtype, nbytes, stage: the storage writer's
        own split of every final plan into files (``simulate_save(storage_writer=...)``)."""
        return file_tables.file_plan(self.trace)

    @cached_property
    def consolidation(self) -> pd.DataFrame:
        """output_file, fqn, rank, shard_file, offsets, sizes, nbytes: which shard pieces
        HuggingFaceStorageWriter's consolidation puts into which output file (empty without it)."""
        return file_tables.consolidation(self.trace)

    def hf_index(self) -> dict | None:
        """The model.safetensors.index.json DCP's HuggingFaceStorageWriter would write, or None."""
        return file_tables.hf_index(self.trace)

    @cached_property
    def storage_volume(self) -> pd.DataFrame:
        """rank, files, items, nbytes: bytes each rank really stored (zeros for a simulation)."""
        return tables.storage_volume(self.trace)

    # -- facts -----------------------------------------------------------------------------
    # Set by run_save: backend, pids, port, wall time of the real processes (not in the trace:
    # they mean nothing once the processes are gone).
    run_info: Any = None

    @property
    def metadata(self):
        """DCP's Metadata: the object DCP built, or one rebuilt from the trace's facts."""
        if self._metadata is None and self.trace.metadata is not None:
            # torch, deferred: rebuilding DCP's Metadata is the one part of a result that needs it.
            from dcpviz.engine.convert.shared import torch_metadata

            self._metadata = torch_metadata(self.trace.metadata)
        return self._metadata

    def summary_rows(self) -> list[SummaryRow]:
        """The save in a few lines: model, job, planner, items, bytes, status."""
        return _save_summary_rows(self.summary)

    def report_title(self) -> str:
        """The report's default title."""
        s = self.summary
        return f"dcpviz · {s['model']} · {s['recipe']} · W={s['world_size']}"

    def report_intro(self) -> str:
        """One line under the title: what this is and what made it."""
        t = self.trace
        return (
            f"DCP save plan, every rank. Generated by dcpviz {t.dcpviz_version} with torch "
            f"{t.torch_version}, source: {t.source}."
        )

    def parts(self) -> list[Part]:
        """What the report shows, in order: messages, volume, dedup and layout figures, tables."""
        modules = self.volume_by_module(1)["module"].nunique()
        out: list[Part] = [
            *self.checks_part(),
            self.messages(),
            FigurePart(
                "Write volume per rank",
                "rank_volume",
                kwargs={"by": "module" if modules > 1 else None},
            ),
        ]
        if (
            self.volume_by_component["component"].nunique() > 1
        ):  # a training state: how much is optimizer
            out.append(
                FigurePart(
                    "Write volume per rank, by component", "rank_volume", kwargs={"by": "component"}
                )
            )
        out += self.stage_parts()
        if len(self.dedup):
            out.append(FigurePart("Dedup decisions", "dedup"))
        out += [
            FigurePart(f"Chunk layout: {fqn}", "chunk_layout", (fqn,))
            for fqn in pick_layout_tensors(self.tensors)
        ]
        out.append(
            TablePart(
                "Tensors (alike layers collapsed)",
                self.tensor_groups.drop(columns=["members", "pattern"]),
                ("nbytes",),
            )
        )
        out.append(
            TablePart(
                "Bytes per rank",
                self.rank_volume,
                ("nbytes", "planned_nbytes"),
                max_rows=1024,
                brief=Brief(
                    ("rank", "coordinate", "items", "nbytes", "planned_items", "planned_nbytes"),
                    rows=16,
                    sort_by="nbytes",
                ),
            )
        )
        if len(self.dedup):
            out.append(
                TablePart(
                    "Dedup (items planned by more than one rank)",
                    self.dedup,
                    ("nbytes",),
                    brief=Brief(
                        ("fqn", "offsets", "candidates", "chosen_rank", "why"),
                        headings={"chosen_rank": "writer"},
                    ),
                )
            )
        out.append(TablePart("Checkpoint chunks", self.chunks, ("nbytes",)))
        if self.trace.file_plan:  # simulated with a storage writer: its files
            out.append(FigurePart("Files: what each rank writes where", "file_layout"))
            out.append(TablePart("Files", self.files, ("nbytes",), max_rows=256))
        return out

    def stage_parts(self) -> list[Part]:
        """A job with pipeline stages (a ``pp`` mesh dim): what each stage writes, as a table
        and faceted per stage; with experts sharded over ep: bytes per expert shard and one
        expert tensor's layout by expert shard. [] otherwise, or when planning failed."""
        if self.trace.global_plans is None:
            return []
        out: list[Part] = []
        if stage_facet(self.trace.scenario).ok:
            frame = stage_tables.stage_volume(self.trace)
            out.append(
                TablePart(
                    "Pipeline stages: what each writes (after dedup)",
                    frame.assign(share=[f"{v:.0%}" for v in frame["share"]]),
                    ("nbytes", "planned_nbytes"),
                    brief=Brief(("stage", "ranks", "modules", "keys", "nbytes", "share"), rows=32),
                )
            )
            out.append(
                FigurePart(
                    "Write volume per rank, by pipeline stage",
                    "rank_volume",
                    kwargs={"facet": "stage"},
                )
            )
        experts = stage_tables.ep_expert_keys(self.trace)
        if experts:
            out.append(FigurePart("Expert bytes per expert shard", "expert_volume"))
            out.append(
                FigurePart(
                    f"Chunk layout by expert shard: {experts[0]}",
                    "chunk_layout",
                    (experts[0],),
                    kwargs={"facet": "expert"},
                )
            )
        return out

    def __repr__(self) -> str:
        s = self.summary
        status = "valid" if s["validated"] else f"{s['errors']} error(s)"
        return (
            f"<SaveResult {s['model']} {s['recipe']} W={s['world_size']} mesh={s['mesh']}: "
            f"{s['items_planned']} items planned, {s['items_written']} written, "
            f"imbalance {s['imbalance']:.2f}, {status}; checks: {self.checks_line()}>"
        )


class LoadResult(_Result):
    """What a load planner did against a checkpoint, on every rank of the target layout.

    Tables are pandas DataFrames: ``read_items`` every read of every rank (which box of which
    saved chunk, written by which rank, in which file) · ``rank_volume`` reads and bytes per
    rank · ``resharding`` target rank x writer rank (x file) · ``mismatches`` every key or
    tensor the target and checkpoint disagree on, every rank, with DCP's own message · ``hints``
    likely causes and their fixes · ``errors`` what the planner raised.
    """

    kind = "load"
    trace: LoadTrace

    # -- tables ----------------------------------------------------------------------------
    @cached_property
    def read_items(self) -> pd.DataFrame:
        """Every read of every rank: which box of which saved chunk, its writer and file."""
        return load_tables.read_items(self.trace)

    @cached_property
    def rank_volume(self) -> pd.DataFrame:
        """Reads and bytes per target rank."""
        # From the read columns: equal to load_tables.rank_volume(trace, read_items), without
        # building read_items (tests/test_load_read_columns.py).
        return read_columns.rank_volume(self.trace)

    def reads_of(self, fqn: str, rank: int) -> pd.DataFrame:
        """The rows of ``read_items`` where target ``rank`` reads ``fqn`` (index from 0)."""
        if "read_items" in self.__dict__:  # built already: a filter of it
            ri = self.read_items
            return ri[(ri["rank"] == rank) & (ri["fqn"] == fqn)].reset_index(drop=True)
        return read_columns.reads_of(self.trace, fqn, rank)

    @cached_property
    def resharding(self) -> pd.DataFrame:
        """Bytes each target rank reads from each writer rank (and file)."""
        return load_tables.resharding(self.trace, self.read_items)

    def resharding_matrix(self, by: str = "writer_rank", values: str = "nbytes") -> pd.DataFrame:
        """Target rank x ``by`` ('writer_rank', or 'file' when the checkpoint is on disk) ->
        ``values`` ('nbytes', 'reads' or 'chunk_nbytes')."""
        return load_tables.resharding_matrix(self.trace, by, values, self.read_items)

    @cached_property
    def mismatches(self) -> pd.DataFrame:
        """Every key or tensor the target and the checkpoint disagree on, every rank."""
        return load_tables.mismatches(self.trace)

    @cached_property
    def checks(self) -> pd.DataFrame:
        """What DCP does silently here that loses data, fails or costs: severity, check, fqn,
        ranks, message, fix (``analysis.checks``)."""
        return checks_.load_checks(self.trace)

    @cached_property
    def hints(self) -> list[Hint]:
        """Likely causes of the mismatches, most likely first, each with its fix."""
        return compute_hints(self.trace)

    @cached_property
    def hints_table(self) -> pd.DataFrame:
        """``hints`` as a DataFrame: kind, title, detail, fix, keys (count), mapping."""
        return hints_table(self.hints)

    @cached_property
    def summary(self) -> dict[str, Any]:
        """The load in numbers: target, checkpoint, planner, reads, mismatches, status."""
        return read_columns.summary(self.trace)

    @cached_property
    def verdict(self) -> verdicts.Verdict:
        """Does it load, and what is and is not the problem, in one line (``str(load.verdict)``)."""
        return verdicts.verdict(self.trace, self.hints)

    @cached_property
    def problems(self) -> pd.DataFrame:
        """One row per problem (kind, key, DCP message) with its ranks as a range; severity
        'breaks', 'silent' or 'expected'. The per-rank rows are in ``mismatches``."""
        return verdicts.problems(self.trace)

    def error_lines(self) -> list[str]:
        """The planner's errors, each message once with its ranks, leaving out the messages the
        problems table already shows next to their key."""
        return verdicts.error_lines(self.trace, set(self.problems["message"]))

    def messages(self) -> MessagesPart:
        """The errors (each message once, with its ranks) and the trace's notes, as one part."""
        return MessagesPart(tuple(self.error_lines()), tuple(self.trace.notes))

    def header_parts(self) -> list[Part]:
        """Under an explorer's summary: the errors (the verdict's first row says what they mean),
        then the hints, most likely first."""
        return [MessagesPart(tuple(self.error_lines()), ()), HintsPart(tuple(self.hints))]

    def fix_planner(
        self, rename: dict[str, str] | None = None, allow_partial_load: bool | None = None
    ) -> Any:
        """A load planner that applies every certain fix at once — prefixes and wrapper segments
        anywhere in a key, renamed modules, resized tensors (saved rows into the new shards) — on
        the state as the user nests it: ``dcp.load(sd, checkpoint_id=..., planner=load.fix_planner())``,
        or ``simulate_load(saved, target, planner=load.fix_planner())`` to see what remains.

        ``rename``: your answers to the ambiguities the hints show, ``{target-side: checkpoint-side}``
        — a segment (``{"wq": "q_proj"}``), a prefix (``{"": "ema."}``) or a whole key. Cumulative:
        when this load already ran with a fix planner, its renames are kept. ``allow_partial_load``:
        default as this load's planner had it."""
        # torch, deferred: the planner is a DefaultLoadPlanner subclass; results stay torch-free.
        from dcpviz.engine.checkpoint.fix_planner import RenamingLoadPlanner

        names, resized, allow_partial_load = self._fix(rename, allow_partial_load)
        return RenamingLoadPlanner(names, resized=resized, allow_partial_load=allow_partial_load)

    def fix_code(
        self, rename: dict[str, str] | None = None, allow_partial_load: bool | None = None
    ) -> str:
        """``fix_planner``'s fix as Python for the user's own job (``dcpviz load --emit-fix``):
        ``sd`` is the state passed to ``dcp.load``, ``CKPT`` the checkpoint."""
        return load_fix.fix_code(
            *self._fix(rename, allow_partial_load), hf=load_fix.is_hf_source(self.trace)
        )

    def _fix(
        self, rename: dict[str, str] | None, allow_partial_load: bool | None
    ) -> tuple[dict[str, str], tuple[str, ...], bool]:
        choices = {str(k): str(v) for k, v in (rename or {}).items()}
        names, resized = load_fix.cumulative_fix(
            self.trace, load_fix.trace_match(self.trace, choices or None)
        )
        if allow_partial_load is None:
            allow_partial_load = bool(self.trace.planner.option("allow_partial_load", False))
        return names, resized, bool(allow_partial_load)

    def summary_rows(self) -> list[SummaryRow]:
        """The load in a few lines: the verdict first, then target, checkpoint, planner, reads,
        status."""
        v = self.verdict
        return [
            SummaryRow("verdict", v.line, "good" if v.clean else "bad"),
            *_load_summary_rows(self.summary, v),
            SummaryRow("checks", self.checks_line()),
        ]

    def checks_part(self) -> list[Part]:
        """The checks as the report's first part; the terminal leaves the rows to the verdict,
        hints and problems, which say the same per key (the summary counts them)."""
        return checks_part(self.checks, brief=False)

    def report_title(self) -> str:
        """The report's default title."""
        s = self.summary
        return f"dcpviz load · {s['model']} · {s['recipe']} · W={s['world_size']}"

    def report_intro(self) -> str:
        """One line under the title: what this is and what made it."""
        t = self.trace
        return f"DCP load plan, every target rank. Generated by dcpviz {t.dcpviz_version} with torch {t.torch_version}."

    def parts(self) -> list[Part]:
        """What the report shows, in order: hints first, messages, mismatches, reads, resharding."""
        out: list[Part] = [*self.checks_part(), HintsPart(tuple(self.hints))]
        if len(self.problems):
            out.append(
                TablePart(
                    "Problems (one row per key and message; every rank below)",
                    self.problems.drop(columns=["n_ranks"]),
                    brief=Brief(
                        ("severity", "kind", "fqn", "saved", "current", "ranks", "message"),
                        rows=20,
                        title=f"problems: {len(self.problems)} (one row per key and "
                        "message; every rank in result.mismatches)",
                    ),
                )
            )
        out.append(self.messages())
        if len(self.mismatches):
            out.append(
                TablePart(
                    "Mismatches (every key, every rank)",
                    self.mismatches.drop(
                        columns=["saved_size", "saved_dtype", "current_size", "current_dtype"],
                        errors="ignore",
                    ),
                )
            )
        if self.nothing_planned:
            out.append(MessagesPart((), (self.nothing_planned_reason(),)))
            return out
        if len(self.read_items):
            out.append(FigurePart("Bytes read per target rank", "read_volume"))
            out.append(FigurePart("Resharding: target rank × writer rank", "resharding"))
            if self.read_items["file"].notna().any():
                out.append(
                    FigurePart(
                        "Resharding: target rank × storage file",
                        "resharding",
                        kwargs={"by": "file"},
                    )
                )
            out += self.stage_parts()
            out += [
                FigurePart(f"What target rank 0 reads of {fqn}", "read_layout", (fqn, 0))
                for fqn in pick_read_tensors(self)
            ]
        on_disk = bool(self.read_items["file"].notna().any())
        cols = ("rank", "coordinate", "reads", "nbytes", "chunk_nbytes", "writers") + (
            ("files",) if on_disk else ()
        )
        out.append(
            TablePart(
                "Reads per target rank",
                self.rank_volume,
                ("nbytes", "chunk_nbytes", "wanted_nbytes"),
                max_rows=1024,
                brief=Brief(
                    cols, rows=16, sort_by="nbytes", headings={"chunk_nbytes": "saved-chunk bytes"}
                ),
                note=READ_NOTE,
            )
        )
        out.append(
            TablePart("Read items", self.read_items, ("nbytes", "chunk_nbytes", "storage_nbytes"))
        )
        return out

    def stage_parts(self) -> list[Part]:
        """Where the target or the saved job has pipeline stages: what each target stage reads
        from each saved stage, as a table and as the resharding view faceted by both."""
        target, saved = stage_facets(self.trace)
        if not (target.ok or saved.ok) or not len(self.read_items):
            return []
        volume: list[Part] = (
            [
                FigurePart(
                    "Bytes read per target rank, by target stage",
                    "read_volume",
                    kwargs={"facet": "stage"},
                )
            ]
            if target.ok
            else []
        )
        return volume + [
            TablePart(
                "Reads by pipeline stage (target stage × saved stage)",
                _ranges_as_text(
                    stage_resharding(self.trace, self.read_items), ("target_ranks", "writers")
                ),
                ("nbytes", "chunk_nbytes"),
                brief=Brief(
                    ("target_stage", "saved_stage", "target_ranks", "writers", "reads", "nbytes"),
                    rows=32,
                    headings={"writers": "saved ranks"},
                ),
            ),
            FigurePart("Resharding by pipeline stage", "resharding", kwargs={"facet": "stage"}),
        ]

    @property
    def nothing_planned(self) -> bool:
        """True when no rank's local plan went through, so there are no reads to show."""
        return not read_columns.columns(self.trace).n_reads and all(
            p is None for p in self.trace.local_plans
        )

    def nothing_planned_reason(self) -> str:
        """Why the read tables are not shown."""
        W = self.trace.scenario.world_size
        return (
            f"No reads to show: the local plan failed on all {W} ranks, so DCP planned nothing to read "
            "(dcp.load raises before reading). Fix the problems above; the read tables appear once it plans."
        )

    # -- facts -----------------------------------------------------------------------------
    @property
    def metadata(self):
        """The checkpoint's DCP Metadata the load was planned against."""
        if self._metadata is None:
            # torch, deferred: rebuilding DCP's Metadata is the one part of a result that needs it.
            from dcpviz.engine.convert.shared import torch_metadata

            self._metadata = torch_metadata(self.trace.saved)
        return self._metadata

    def __repr__(self) -> str:
        s = self.summary
        kinds = ", ".join(f"{n} {k}" for k, n in s["mismatch_keys"].items()) or "no mismatches"
        status = "ok" if s["ok"] else f"{s['errors']} error(s)"
        return (
            f"<LoadResult {s['model']} {s['recipe']} W={s['world_size']} mesh={s['mesh']}: "
            f"{s['reads']} reads ({s['plans']} plans), {kinds}, {status}; checks: {self.checks_line()}>"
        )


def _ranges_as_text(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Columns of rank tuples as ranges ('0-3,6'), as every renderer shows ranks."""
    return frame.assign(**{c: [ranges(v) for v in frame[c]] for c in columns})


def _mesh(names: Any, dims: Any) -> str:
    return " × ".join(f"{n}={d}" for n, d in zip(names, dims))


def _save_summary_rows(s: dict[str, Any]) -> list[SummaryRow]:
    opts = ", ".join(f"{k}={v}" for k, v in s["planner_options"].items())
    rows = [
        SummaryRow("model", f"{s['model']} ({s['dtype']})"),
        SummaryRow(
            "job",
            f"{s['recipe']} on {s['world_size']} ranks, mesh {_mesh(s['mesh_dim_names'], s['mesh'])}",
        ),
        SummaryRow("planner", f"{s['planner']}({opts})"),
        SummaryRow("checkpoint", f"{s['tensors']} tensors, {s['bytes_entries']} bytes entries"),
        SummaryRow(
            "items", f"{s['items_planned']} planned → {s['items_written']} written after dedup"
        ),
    ]
    if s.get("optimizer") or s.get("state"):  # a training state, not only the model's
        parts = [
            f"optimizer {s['optimizer']}" if s.get("optimizer") else "no optimizer",
            f"app state {s['state']}"
            if s.get("state")
            else "{'model', 'optim'} from get_state_dict",
        ]
        rows.insert(2, SummaryRow("state", " · ".join(parts)))
    if s["total_bytes"] is not None:
        rows.append(
            SummaryRow(
                "bytes",
                f"{fmt_bytes(s['total_bytes'])} total · per rank mean {fmt_bytes(s['mean_rank_bytes'])}, "
                f"max {fmt_bytes(s['max_rank_bytes'])} · imbalance (max ÷ mean) {s['imbalance']:.2f}",
            )
        )
    rows.append(
        SummaryRow("status", "valid", "good")
        if s["validated"]
        else SummaryRow("status", f"{s['errors']} error(s)", "bad")
    )
    return rows


def _load_summary_rows(s: dict[str, Any], v: verdicts.Verdict) -> list[SummaryRow]:
    mesh = _mesh(s["mesh_dim_names"], s["mesh"])
    rows = [
        SummaryRow(
            "target",
            f"{s['model']} ({s['dtype']}), {s['recipe']} on {s['world_size']} ranks, mesh {mesh}",
        )
    ]
    saved = s["saved_scenario"]
    what = f"{s['saved_source']}: {s['saved_tensors']} tensors, {s['saved_bytes_entries']} bytes entries"
    if saved is not None:
        what += (
            f"; saved by {saved.model} ({saved.dtype}), {saved.recipe} on {saved.world_size} ranks, "
            f"mesh {_mesh(saved.mesh_dim_names, saved.mesh)}"
        )
    rows.append(SummaryRow("checkpoint", what))
    opts = ", ".join(f"{k}={v}" for k, v in s["planner_options"].items())
    rows.append(SummaryRow("planner", f"{s['planner']}({opts})"))
    if s["reads"]:
        amp = s["chunk_bytes"] / s["total_bytes"] if s["total_bytes"] else float("nan")
        rows.append(
            SummaryRow(
                "reads",
                f"{s['reads']} read items ({s['plans']} plans), {fmt_bytes(s['total_bytes'])} "
                f"in all · per rank max {fmt_bytes(s['max_rank_bytes'])}, mean "
                f"{fmt_bytes(s['mean_rank_bytes'])} · {fmt_bytes(s['chunk_bytes'])} of saved chunks "
                f"deserialised ({amp:.2f}×)",
            )
        )
    if s["mismatch_keys"]:
        rows.append(
            SummaryRow("mismatches", ", ".join(f"{n} {k}" for k, n in s["mismatch_keys"].items()))
        )
    said, tone = verdicts.load_status(s, v)
    rows.append(SummaryRow("status", said, tone if tone in ("good", "warn") else "bad"))
    return rows


def checks_part(found: pd.DataFrame, brief: bool = True) -> list[Part]:
    """The checks as a result's first part, when there is any finding (``brief``: in the
    terminal too)."""
    if not len(found):
        return []
    return [
        TablePart(
            f"Checks: {checks_.counts_line(found)}",
            found,
            max_rows=64,
            brief=Brief(("severity", "check", "fqn", "ranks", "message"), rows=8)
            if brief
            else None,
        )
    ]


def load_trace(path: str | os.PathLike[str]) -> SaveResult | LoadResult:
    """Open a trace written by ``result.to_json``, the CLI, or a recording planner."""
    trace = read_trace(path)
    return SaveResult(trace) if isinstance(trace, SaveTrace) else LoadResult(trace)


@dataclass(frozen=True)
class CheckpointReport:
    """A checkpoint as the report and the explorer render it: a DCP directory or a safetensors
    folder read by ``dcpviz.inspect_checkpoint`` (its CheckpointInfo), with the parts the
    renderers draw (checks, notes, the file layout, the tables)."""

    info: Any
    kind: str = field(default="checkpoint", init=False)

    @property
    def storage(self) -> pd.DataFrame:
        """Where each chunk sits (``views.file_layout`` draws it)."""
        return self.info.storage

    @property
    def checks(self) -> pd.DataFrame:
        return self.info.checks

    @property
    def safetensors(self) -> bool:
        return getattr(self.info, "folder", None) is not None

    def report_title(self) -> str:
        return f"dcpviz checkpoint · {Path(self.info.path).name}"

    def report_intro(self) -> str:
        how = (
            "safetensors headers only (bounded, no pickle, no tensor data)"
            if self.safetensors
            else ".metadata through a restricted unpickler (no tensor data)"
        )
        return f"{self.info.path}: read from {how}."

    def summary_rows(self) -> list[SummaryRow]:
        t = self.info.totals
        rows = [
            SummaryRow(
                "format", "safetensors folder" if self.safetensors else "DCP checkpoint directory"
            ),
            SummaryRow("checks", checks_.counts_line(self.checks)),
        ]
        rows += [
            SummaryRow(str(k), fmt_bytes(int(v)) if "nbytes" in str(k) else str(v))
            for k, v in t.items()
        ]
        return rows

    def header_parts(self) -> list[Part]:
        """Under an explorer's summary: what reading the checkpoint noted."""
        return [MessagesPart((), tuple(self.info.notes))]

    def parts(self) -> list[Part]:
        out: list[Part] = [*checks_part(self.checks), MessagesPart((), tuple(self.info.notes))]
        if len(self.storage):
            out.append(
                FigurePart("Files: which chunks sit in which file, by writer rank", "file_layout")
            )
        out.append(TablePart("Files", self.info.files, ("nbytes",), max_rows=256))
        out.append(TablePart("Chunks", self.info.chunks, ("nbytes",)))
        return out
