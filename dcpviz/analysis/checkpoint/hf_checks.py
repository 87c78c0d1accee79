"""Checks of a Hugging Face safetensors folder on disk (``core.hf.folder.HFFolder``). No torch.

What DCP's HF reader (torch 2.13) would do with the folder, and what HF loaders need:

- a file whose header cannot be read: DCP's writer put non-tensor values in front of it, or it is
  corrupt; every tensor in it is lost (data-loss);
- ``*.safetensors`` files the index does not name: DCP's HF reader reads them anyway, so deleted
  keys come back (warning) and kept keys get a second chunk from an older save (data-loss);
- no ``model.safetensors.index.json`` (HF loaders cannot open a multi-file folder), an index that
  names files or keys the folder does not hold, a ``total_size`` that is not the data size;
- one key stored at the same offsets in two files with no index to tell them apart;
- shards of a consolidating save with no consolidated output (consolidation failed: integer or
  bool tensors make ``torch.finfo`` raise);
- quantized pairs (``weight_scale_inv``, MXFP4 ``_blocks``/``_scales``): DCP's plain reader loads
  them as stored; they are expected to stay unread by a model that holds dequantized weights.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from dcpviz.analysis.checks import _capped, _frame
from dcpviz.core.hf.folder import HFFolder, quantized_companions
from dcpviz.core.kinds import Severity

Row = tuple[str, str, str, tuple[int, ...], str, str]
_FRESH = "save into a new, empty folder (or delete the files left by the earlier save)"


def _keys(folder: HFFolder) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """key -> [(file, offsets)] over every readable file, as DCP's HF reader collects them."""
    out: dict[str, list[tuple[str, tuple[int, ...]]]] = defaultdict(list)
    for f in folder.files:
        if f.header is None:
            continue
        offs = dict(f.offsets)
        for e in f.header.entries:
            out[e.name].append((f.name, offs.get(e.name, (0,) * len(e.shape))))
    return out


def unreadable(folder: HFFolder) -> list[Row]:
    rows: list[Row] = []
    for f in folder.files:
        if f.header is None:
            rows.append(
                (
                    Severity.DATA_LOSS,
                    "safetensors-unreadable",
                    "",
                    (f.rank,) if f.rank >= 0 else (),
                    f"{f.name} cannot be read: {f.error}",
                    "re-export; save only tensors through DCP's HF writer (a non-tensor value is "
                    "written as raw bytes in front of the header)",
                )
            )
    if folder.index_error:
        rows.append(
            (
                Severity.ERROR,
                "index-unreadable",
                "",
                (),
                folder.index_error,
                "re-export, or delete the broken model.safetensors.index.json",
            )
        )
    return rows


def no_index(folder: HFFolder) -> list[Row]:
    """No index.json next to the files."""
    if folder.index is not None or folder.index_error or not folder.files:
        return []
    if [f.name for f in folder.files] == ["model.safetensors"]:
        return []  # the one-file layout Hugging Face loaders open without an index
    many = len(folder.files) > 1
    return [
        (
            Severity.WARNING,
            "no-index-json",
            "",
            (),
            f"no model.safetensors.index.json next to {len(folder.files)} safetensors file(s)"
            + (
                ": Hugging Face loaders cannot open a folder of several files without it."
                if many
                else ": Hugging Face loaders look for model.safetensors or an index."
            ),
            "save with DCP's HF writer without save_distributed, or with enable_consolidation=True "
            "(it writes the index)",
        )
    ]


def index_checks(folder: HFFolder) -> list[Row]:
    """The index against the files DCP's reader would read."""
    if folder.index is None:
        return []
    rows: list[Row] = []
    mapped = dict(folder.index)
    names = {f.name for f in folder.files}
    missing = sorted({v for v in mapped.values() if v not in names})
    for name in missing:
        keys = sorted(k for k, v in mapped.items() if v == name)
        rows.append(
            (
                Severity.ERROR,
                "index-missing-file",
                keys[0],
                (),
                f"the index maps {len(keys)} key(s) to {name}, which is not in the folder.",
                "re-export the folder; copy every shard file with the index",
            )
        )
    keys = _keys(folder)
    for f in folder.files:
        if f.header is None or f.name not in set(mapped.values()):
            continue
        held = {e.name for e in f.header.entries}
        said = {k for k, v in mapped.items() if v == f.name}
        if held != said:
            odd = sorted(held ^ said)
            rows.append(
                (
                    Severity.ERROR,
                    "index-disagrees",
                    odd[0],
                    (),
                    f"the index and {f.name} disagree about {len(odd)} key(s) ({', '.join(odd[:3])}): "
                    "the index belongs to another save.",
                    "re-export the folder",
                )
            )
    return rows + unindexed_files(folder) + _total_size(folder, missing)


def unindexed_files(folder: HFFolder) -> list[Row]:
    """Files the index does not name: DCP's HF reader reads them anyway."""
    if folder.index is None:
        return []
    rows: list[Row] = []
    mapped = dict(folder.index)
    keys = _keys(folder)
    indexed = set(mapped.values())
    for f in folder.files:
        if f.header is None or f.name in indexed:
            continue
        again = sorted(
            e.name for e in f.header.entries if any(n != f.name for n, _o in keys[e.name])
        )
        gone = sorted(
            e.name for e in f.header.entries if e.name not in mapped and e.name not in again
        )
        if again:
            rows.append(
                (
                    Severity.DATA_LOSS,
                    "stale-safetensors",
                    again[0],
                    (),
                    f"{f.name} is not in the index but DCP's HF reader reads every *.safetensors file: "
                    f"{len(again)} key(s) it holds are also in other files ({', '.join(again[:3])}), so a "
                    "load gets a second, older chunk (which one wins depends on the listing order).",
                    _FRESH,
                )
            )
        if gone:
            rows.append(
                (
                    Severity.WARNING,
                    "stale-safetensors",
                    gone[0],
                    (),
                    f"{f.name} is not in the index but DCP's HF reader reads it: {len(gone)} key(s) the "
                    f"index does not have come back ({', '.join(gone[:3])}).",
                    _FRESH,
                )
            )
    return rows


def _total_size(folder: HFFolder, missing: list[str]) -> list[Row]:
    rows: list[Row] = []
    indexed = set(dict(folder.index or ()).values())
    unread = any(f.header is None for f in folder.files if f.name in indexed)
    if folder.index_total_size is not None and not missing and not unread:
        data = sum(
            e.nbytes
            for f in folder.files
            if f.header is not None and f.name in indexed
            for e in f.header.entries
        )
        if data != folder.index_total_size:
            rows.append(
                (
                    Severity.WARNING,
                    "index-total-size",
                    "",
                    (),
                    f"the index says total_size {folder.index_total_size} but its files hold {data} "
                    "bytes of tensor data.",
                    "re-export the folder",
                )
            )
    return rows


def duplicate_chunks(folder: HFFolder) -> list[Row]:
    """One key at the same offsets in several files, with no index to say which is current."""
    if folder.index is not None:
        return []  # stale files are named by index_checks
    rows: list[Row] = []
    for key, where in sorted(_keys(folder).items()):
        seen: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for name, off in where:
            seen[off].append(name)
        for off, files in sorted(seen.items()):
            if len(files) > 1:
                rows.append(
                    (
                        Severity.ERROR,
                        "duplicate-chunk",
                        key,
                        (),
                        f"{key} at offsets {off} is in {len(files)} files ({', '.join(files[:3])}): DCP's HF "
                        "reader keeps one of them by listing order; an earlier save's file is left here.",
                        _FRESH,
                    )
                )
    return _capped(rows, Severity.ERROR, "duplicate-chunk", "are in several files", _FRESH)


def consolidation(folder: HFFolder) -> list[Row]:
    """A consolidating save's shards with no consolidated output: consolidation failed."""
    sub = folder.sharded
    if sub is None or folder.index is not None:
        return []
    ints = sorted(
        {
            e.name
            for f in sub.files
            if f.header is not None
            for e in f.header.entries
            if not e.dtype.startswith(("float", "bfloat", "complex"))
        }
    )
    why = (
        f" It holds non-floating tensors ({', '.join(ints[:3])}), which make consolidation's torch.finfo "
        "raise TypeError."
        if ints
        else ""
    )
    return [
        (
            Severity.ERROR,
            "consolidation-incomplete",
            ints[0] if ints else "",
            (),
            f"{len(sub.files)} shard file(s) in sharded/ and no consolidated index.json: the save's "
            f"consolidation did not finish.{why}",
            "drop or cast integer/bool tensors before exporting, then run DCP's "
            "consolidate_safetensors_files on sharded/",
        )
    ]


def quantized_pairs(folder: HFFolder) -> list[Row]:
    # Only keys that are a pair's companion as a pair: a lone key with a quantized suffix is an
    # ordinary key, which QuantizedHuggingFaceStorageReader would not leave unread.
    found: dict[str, list[str]] = defaultdict(list)
    for k, what in sorted(quantized_companions(_keys(folder)).items()):
        found[what].append(k)
    return [
        (
            Severity.INFO,
            "quantized-pair",
            ks[0],
            (),
            f"{len(ks)} {what} key(s) ({', '.join(ks[:3])}): DCP's HuggingFaceStorageReader loads them as stored; "
            "QuantizedHuggingFaceStorageReader dequantizes the weights and leaves them unread.",
            "load with QuantizedHuggingFaceStorageReader, and pass these keys as expected_unused",
        )
        for what, ks in sorted(found.items())
    ]


def folder_checks(folder: HFFolder) -> pd.DataFrame:
    """Every check of a safetensors folder, most severe first."""
    return _frame(
        unreadable(folder)
        + no_index(folder)
        + index_checks(folder)
        + duplicate_chunks(folder)
        + consolidation(folder)
        + quantized_pairs(folder)
    )
