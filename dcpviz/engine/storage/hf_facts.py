"""Storage facts of a save through a storage writer that writes no ``.metadata`` (DCP's
``HuggingFaceStorageWriter``): what is on disk, read from the folder's safetensors headers.

FileSystemWriter's ``finish`` puts (file, offset, length) into the checkpoint metadata; the HF
writer does not (it writes ``model.safetensors.index.json`` at most). The facts then come from
the files themselves (``core.hf.folder``: bounded headers, no tensor data): one ``FileItem`` per
(file, key) in the same form as ``simulate_save(storage_writer=...)``'s file plan, so a real
save's ``file_plan``/``files`` can be compared with the simulated ones. Which rank wrote a file:
its DCP shard name where it has one (``shard-0000N-...``), else the rank whose final (or global)
plan holds that chunk; consolidated output files are written by the coordinator (rank 0).
"""

from __future__ import annotations

import os
from pathlib import Path

from dcpviz.core.errors import CheckpointError
from dcpviz.core.hf.folder import HFFolder, is_hf_folder, scan_folder
from dcpviz.core.trace import FileItem, PlanRecord, SaveTrace


def _chunk_facts(trace: SaveTrace) -> tuple[dict[tuple, int], dict[tuple, str]]:
    """(fqn, offsets) -> the rank whose plan writes it, and -> its WriteItemType name."""
    plans: tuple[PlanRecord | None, ...] | None = trace.final_plans or trace.global_plans
    writer: dict[tuple, int] = {}
    kind: dict[tuple, str] = {}
    for rank, plan in enumerate(plans or ()):
        for i in plan.items if plan is not None else ():
            it = trace.items[i]
            key = (it.fqn, tuple(it.offsets or ()))
            writer.setdefault(key, rank)
            kind.setdefault(key, it.item_type)
    return writer, kind


def _rows(
    folder: HFFolder, stage: str, writer: dict[tuple, int], kind: dict[tuple, str]
) -> list[FileItem]:
    rows = []
    for f in folder.files:
        assert f.header is not None
        offs = dict(f.offsets)
        for e in sorted(f.header.entries, key=lambda e: e.begin):  # the order the writer wrote them
            off = tuple(offs.get(e.name, (0,) * len(e.shape)))
            rank = (
                0
                if stage == "consolidate"
                else f.rank
                if f.rank >= 0
                else writer.get((e.name, off), -1)
            )
            rows.append(
                FileItem(
                    rank=rank,
                    file=f.name,
                    fqn=e.name,
                    offsets=off,
                    sizes=tuple(e.shape),
                    item_type=kind.get((e.name, off), "TENSOR"),
                    dtype=e.dtype,
                    nbytes=e.nbytes,
                    stage=stage,
                )
            )
    return rows


def folder_file_plan(
    root: str | os.PathLike[str], trace: SaveTrace
) -> tuple[tuple[FileItem, ...], str]:
    """(rows, note): the file plan of what a safetensors save left in ``root``, from the headers.
    A consolidating save's shards (``root/sharded``) are the 'write' rows and the output files in
    ``root`` the 'consolidate' rows. Raises CheckpointError when a file or the folder cannot be read."""
    path = Path(root)
    if not is_hf_folder(path):
        raise CheckpointError(f"{str(path)!r} holds no safetensors file: no storage facts to read.")
    folder = scan_folder(path)
    bad = [
        f
        for f in folder.files + (folder.sharded.files if folder.sharded else ())
        if f.header is None
    ]
    if bad:
        raise CheckpointError(
            f"{len(bad)} safetensors file(s) in {str(path)!r} cannot be read: {bad[0].error}"
        )
    writer, kind = _chunk_facts(trace)
    if folder.sharded is not None:
        rows = _rows(folder.sharded, "write", writer, kind) + _rows(
            folder, "consolidate", writer, kind
        )
    else:
        rows = _rows(folder, "write", writer, kind)
    note = (
        f"Storage facts (file, key, offsets, bytes) are from the safetensors headers of the "
        f"{len(folder.files) + (len(folder.sharded.files) if folder.sharded else 0)} file(s) the "
        "storage writer left (it writes no .metadata), read by dcpviz's bounded header reader."
    )
    return tuple(rows), note
