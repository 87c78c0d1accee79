"""Every disagreement between a target state dict and a checkpoint, on every rank.

DCP's load planner raises at the first bad key of a rank (``create_default_local_load_plan``:
"Missing key in checkpoint state_dict: ...", "Size mismatch between saved ... and current: ...").
Here each key of each rank is compared with the checkpoint metadata, and on a rank whose plan
failed DCP's own per-key planning function is run on every key, so each mismatch carries DCP's
exact text wherever DCP produces one. Some disagreements DCP never raises on (a dtype change is
cast silently by ``copy_``; a key the target does not ask for is ignored); they are listed with
an empty message.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch.distributed.checkpoint import default_planner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)

from dcpviz.core.kinds import MismatchKind
from dcpviz.core.trace import MismatchRecord, TargetValue
from dcpviz.engine.convert.shared import dtype_str

Box = tuple[int, ...]


def read_facts(reads: Iterable[tuple[str, str]]) -> tuple[dict[str, str], set[str], set[str]]:
    """(target key -> checkpoint key where a planner renames, target keys read, checkpoint keys
    read) of one rank's plan, from its reads as (target key, checkpoint key) pairs."""
    renames: dict[str, str] = {}
    dest: set[str] = set()
    src: set[str] = set()
    for fqn, storage_fqn in reads:
        dest.add(fqn)
        src.add(storage_fqn)
        if storage_fqn != fqn:
            renames[fqn] = storage_fqn
    return renames, dest, src


@dataclass(frozen=True)
class Found:
    """One mismatch on one rank (ranks are added when grouping)."""

    fqn: str
    kind: str
    saved_size: Box | None = None
    saved_dtype: str | None = None
    current_size: Box | None = None
    current_dtype: str | None = None
    message: str = ""


def _saved_facts(md: Any) -> tuple[Box | None, str | None]:
    if isinstance(md, TensorStorageMetadata):
        return tuple(int(v) for v in md.size), dtype_str(md.properties.dtype)
    return None, None


def classify(tv: TargetValue, storage_fqn: str, metadata: Metadata) -> Found | None:
    """How the value a target rank holds disagrees with the checkpoint entry it loads from."""
    sd_md = metadata.state_dict_metadata
    cur = {"current_size": tv.size, "current_dtype": tv.dtype}
    if storage_fqn not in sd_md:
        return Found(tv.fqn, MismatchKind.MISSING, **cur)
    md = sd_md[storage_fqn]
    saved_size, saved_dtype = _saved_facts(md)
    facts = {"saved_size": saved_size, "saved_dtype": saved_dtype, **cur}
    if isinstance(md, TensorStorageMetadata):
        if tv.size is None:
            return Found(tv.fqn, MismatchKind.TYPE, **facts)
        if saved_size != tv.size:
            return Found(tv.fqn, MismatchKind.SIZE, **facts)
        if tv.dtype is not None and saved_dtype != tv.dtype:
            return Found(tv.fqn, MismatchKind.DTYPE, **facts)
    elif isinstance(md, BytesStorageMetadata) and tv.size is not None:
        return Found(tv.fqn, MismatchKind.TYPE, **facts)
    return None


def dcp_key_messages(flat: dict[str, Any], metadata: Metadata, strict: bool) -> dict[str, str]:
    """DCP's own verdict on each key alone: the text ``create_default_local_load_plan`` raises
    for it, for every key that raises."""
    out: dict[str, str] = {}
    for fqn, value in flat.items():
        try:
            default_planner.create_default_local_load_plan({fqn: value}, metadata, strict)
        except Exception as exc:
            out[fqn] = str(exc)
    return out


class MismatchCollector:
    """Collects Found mismatches per rank and groups identical ones across ranks."""

    def __init__(self) -> None:
        self._ranks: dict[Found, list[int]] = defaultdict(list)
        # classify() is a pure function of these facts and the metadata; W ranks ask it the
        # same question for every key (the metadata object is kept, so its id stays its own).
        self._classified: dict[tuple, Found | None] = {}
        self._metadata: list[Metadata] = []

    def add_rank(
        self,
        rank: int,
        values: list[TargetValue],
        metadata: Metadata,
        dcp_messages: dict[str, str] | None = None,
        storage_fqns: dict[str, str] | None = None,
        read_fqns: set[str] | None = None,
    ) -> None:
        """Compare one rank's values with the checkpoint.

        ``storage_fqns`` maps a target key to the checkpoint key the planner read it from when
        they differ (a renaming planner); ``read_fqns``: target keys the rank's plan does read —
        a key that is read is never 'missing', whatever its name.
        """
        dcp_messages = dcp_messages or {}
        storage_fqns = storage_fqns or {}
        if not any(m is metadata for m in self._metadata):
            self._metadata.append(metadata)
        for tv in values:
            storage_fqn = storage_fqns.get(tv.fqn, tv.fqn)
            key = (id(metadata), tv.fqn, tv.size, tv.dtype, storage_fqn)
            if key in self._classified:
                found = self._classified[key]
            else:
                found = self._classified[key] = classify(tv, storage_fqn, metadata)
            if (
                found is not None
                and found.kind == MismatchKind.MISSING
                and read_fqns
                and tv.fqn in read_fqns
            ):
                found = None
            msg = dcp_messages.get(tv.fqn)
            if msg is not None:
                if found is None:
                    found = Found(
                        tv.fqn, MismatchKind.OTHER, current_size=tv.size, current_dtype=tv.dtype
                    )
                found = Found(
                    found.fqn,
                    found.kind,
                    found.saved_size,
                    found.saved_dtype,
                    found.current_size,
                    found.current_dtype,
                    msg,
                )
            if found is not None:
                self._ranks[found].append(rank)

    def records(
        self, metadata: Metadata, wanted_fqns: set[str], read_storage_fqns: set[str]
    ) -> tuple[MismatchRecord, ...]:
        """All mismatches, grouped over ranks, plus checkpoint keys no target rank asks for."""
        out = [
            MismatchRecord(
                fqn=f.fqn,
                kind=f.kind,
                ranks=tuple(ranks),
                saved_size=f.saved_size,
                saved_dtype=f.saved_dtype,
                current_size=f.current_size,
                current_dtype=f.current_dtype,
                message=f.message,
            )
            for f, ranks in self._ranks.items()
        ]
        for fqn, md in metadata.state_dict_metadata.items():
            if fqn in wanted_fqns or fqn in read_storage_fqns:
                continue
            size, dtype = _saved_facts(md)
            out.append(
                MismatchRecord(
                    fqn=fqn,
                    kind=MismatchKind.UNEXPECTED,
                    ranks=(),
                    saved_size=size,
                    saved_dtype=dtype,
                )
            )
        return tuple(out)
