"""Checks of a storage writer's file plan, before the save (``SaveTrace.file_plan``). No torch.

What DCP's Hugging Face writer does silently (torch 2.13, each reproduced in
tests/test_hf_checks.py with DCP's own writer):

- a non-tensor value is written as raw bytes in front of the safetensors header of its file:
  the file cannot be opened ("header too large") and every tensor in it is lost;
- consolidation sizes each dtype with ``torch.finfo``: an integer or bool tensor makes
  ``finish()`` raise TypeError after every shard is written;
- a key missing from ``fqn_to_index_mapping`` raises a raw KeyError in ``write_data``;
- *.safetensors files already in the output folder stay, and DCP's HF reader reads every one:
  deleted keys come back and kept keys get a second, old chunk;
- a distributed save without consolidation writes no ``model.safetensors.index.json``;
- several ranks writing one file name (``save_distributed=False`` on more than one rank)
  overwrite each other's file.
"""

from __future__ import annotations

from collections import defaultdict

from dcpviz.core.kinds import Severity
from dcpviz.core.trace import PlannedItem, SaveTrace

Row = tuple[str, str, str, tuple[int, ...], str, str]

_FLOATING = ("float", "bfloat", "complex")


def _is_floating(dtype: str) -> bool:
    return dtype.startswith(_FLOATING)


def _opts(trace: SaveTrace) -> dict[str, str]:
    return dict(trace.storage_writer.options) if trace.storage_writer is not None else {}


def is_safetensors_writer(trace: SaveTrace) -> bool:
    """The writer writes safetensors files (HuggingFaceStorageWriter, or FileSystemWriter with
    serialization_format=SAFETENSORS)."""
    return _opts(trace).get("serialization_format") == "SAFETENSORS"


def _is_hf(trace: SaveTrace) -> bool:
    return (
        trace.storage_writer is not None and trace.storage_writer.cls == "HuggingFaceStorageWriter"
    )


def _final_items(trace: SaveTrace) -> list[tuple[int, PlannedItem]]:
    """(rank, item) of every final plan: what each rank's write_data is given."""
    return [(r, trace.items[i]) for r, rec in enumerate(trace.final_plans or ()) for i in rec.items]


def non_tensor_values(trace: SaveTrace) -> list[Row]:
    """Bytes entries planned into safetensors files: each such file will be unreadable. From the
    final plans, so a rank whose write_data fails for another reason is still named."""
    if not is_safetensors_writer(trace):
        return []
    file_of = {(f.rank, f.fqn): f.file for f in trace.file_plan if f.stage == "write"}
    by_file: dict[tuple[int, str], list[str]] = defaultdict(list)
    tensors: dict[tuple[int, str], int] = defaultdict(int)
    for rank, item in _final_items(trace):
        file = file_of.get((rank, item.fqn), "its file")
        if item.item_type == "BYTE_IO":
            by_file[(rank, file)].append(item.fqn)
        else:
            tensors[(rank, file)] += 1
    rows: list[Row] = []
    for (rank, file), keys in sorted(by_file.items()):
        rows.append(
            (
                Severity.DATA_LOSS,
                "safetensors-non-tensor",
                keys[0],
                (rank,),
                f"{len(keys)} non-tensor value(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}) go into "
                f"{file} (rank {rank}) as raw bytes in front of its safetensors header: the save succeeds, but the "
                f"file cannot be opened ('header too large') and its {tensors[(rank, file)]} tensor(s) are lost.",
                "save only tensors through the safetensors writer (wrap numbers as torch.tensor, or keep "
                "non-tensor state in a separate DCP checkpoint)",
            )
        )
    return rows


def consolidation_dtypes(trace: SaveTrace) -> list[Row]:
    """Integer or bool tensors under consolidation: torch.finfo raises after the shards are written."""
    opts = _opts(trace)
    if not (
        _is_hf(trace)
        and opts.get("save_distributed") == "True"
        and opts.get("enable_consolidation") == "True"
    ):
        return []
    seen: dict[str, set[int]] = {}
    dtypes: dict[str, str] = {}
    for rank, item in _final_items(trace):
        if item.item_type != "BYTE_IO" and item.dtype is not None and not _is_floating(item.dtype):
            seen.setdefault(item.fqn, set()).add(rank)
            dtypes[item.fqn] = item.dtype
    return [
        (
            Severity.ERROR,
            "consolidation-dtype",
            fqn,
            tuple(sorted(ranks)),
            f"{fqn} is {dtypes[fqn]}: consolidation sizes every dtype with torch.finfo, so finish() raises "
            "TypeError after every shard is written, and no consolidated file or index.json is written.",
            "drop integer/bool buffers from the export (or cast them to a floating dtype), or save without "
            "enable_consolidation",
        )
        for fqn, ranks in sorted(seen.items())
    ]


def unmapped_keys(trace: SaveTrace) -> list[Row]:
    """Keys the writer's fqn_to_index_mapping lacks: write_data raises KeyError mid-save."""
    info = trace.storage_writer
    if info is None or not info.unmapped_keys:
        return []
    keys = info.unmapped_keys
    return [
        (
            Severity.ERROR,
            "unmapped-key",
            keys[0],
            (),
            f"{len(keys)} key(s) are not in fqn_to_index_mapping ({', '.join(keys[:4])}"
            f"{', ...' if len(keys) > 4 else ''}): DCP's write_data raises a bare KeyError in the middle of "
            "the save, after other files may have been written.",
            "add every saved key to fqn_to_index_mapping (or drop the keys from the state dict)",
        )
    ]


def _stale_row(severity: str, name: str, keys: list[str], which: str, effect: str) -> Row:
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return (
        severity,
        "stale-safetensors",
        keys[0],
        (),
        f"{name}, left by an earlier save, holds {len(keys)} key(s) {which} ({shown}): DCP's HF reader "
        f"{effect}.",
        "save into a new, empty folder (or delete the old files first)",
    )


def stale_files(trace: SaveTrace) -> list[Row]:
    """Existing *.safetensors files the save leaves in its output folder: DCP's HF reader reads them."""
    info = trace.storage_writer
    if info is None or not info.stale_files:
        return []
    saved = {f.fqn for f in trace.file_plan}
    rows: list[Row] = []
    for name, keys in info.stale_files:
        if keys is None:
            rows.append(
                (
                    Severity.ERROR,
                    "stale-safetensors",
                    "",
                    (),
                    f"{name} is already in the output folder and cannot be read: DCP's HF reader reads "
                    "every *.safetensors file in the folder, so a load will fail on it.",
                    "save into a new, empty folder (or delete the old files first)",
                )
            )
            continue
        again = sorted(k for k in keys if k in saved)
        gone = sorted(k for k in keys if k not in saved)
        if again:
            rows.append(
                _stale_row(
                    Severity.DATA_LOSS,
                    name,
                    again,
                    "this save writes again",
                    "reads both files, and "
                    "which copy a load gets depends on the folder listing order",
                )
            )
        if gone:
            rows.append(
                _stale_row(
                    Severity.WARNING,
                    name,
                    gone,
                    "this save does not write",
                    "brings them back in every load of this folder",
                )
            )
    return rows


def no_index(trace: SaveTrace) -> list[Row]:
    """A distributed HF save without consolidation writes no model.safetensors.index.json."""
    opts = _opts(trace)
    if (
        _is_hf(trace)
        and opts.get("save_distributed") == "True"
        and opts.get("enable_consolidation") != "True"
    ):
        return [
            (
                Severity.WARNING,
                "no-index-json",
                "",
                (),
                "save_distributed=True without enable_consolidation writes per-rank shard files and no "
                "model.safetensors.index.json: Hugging Face loaders cannot open the folder.",
                "enable_consolidation=True (or consolidate afterwards with DCP's "
                "consolidate_safetensors_files)",
            )
        ]
    return []


def shared_file_names(trace: SaveTrace) -> list[Row]:
    """One file name written by several ranks: the last writer's file is what stays."""
    ranks: dict[str, set[int]] = defaultdict(set)
    for f in trace.file_plan:
        if f.stage == "write":
            ranks[f.file].add(f.rank)
    return [
        (
            Severity.DATA_LOSS,
            "ranks-share-a-file",
            "",
            tuple(sorted(rs)),
            f"{len(rs)} ranks write the same file {name}: each overwrites the others', so only one rank's "
            "items survive.",
            "save_distributed=True (one shard file per rank), or save a full state dict from one rank",
        )
        for name, rs in sorted(ranks.items())
        if len(rs) > 1
    ]


def file_plan_checks(trace: SaveTrace) -> list[Row]:
    """Every check of a storage writer's file plan (none without a storage writer)."""
    if trace.storage_writer is None:
        return []
    return (
        non_tensor_values(trace)
        + shared_file_names(trace)
        + consolidation_dtypes(trace)
        + unmapped_keys(trace)
        + stale_files(trace)
        + no_index(trace)
    )
