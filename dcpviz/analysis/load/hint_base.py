"""The Hint record and the helpers every hint rule shares (``hints.py``, ``hints_training.py``)."""

from __future__ import annotations

from dataclasses import dataclass

OPTIM_STATE_NAMES = {
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "momentum_buffer",
    "step",
    "sum",
    "square_avg",
    "acc_delta",
    "mu",
    "eta",
    "prev",
    "step_size",
}
_GROUP_NAMES = {"lr", "betas", "eps", "weight_decay", "amsgrad", "momentum", "params", "initial_lr"}


@dataclass(frozen=True)
class Hint:
    """One likely cause of mismatches and how to fix it.

    ``kind``: 'prefix', 'rename', 'optimizer', 'size', 'dtype', 'partial' or 'unexpected'.
    ``mapping``: concrete renames ``(target key, checkpoint key)`` where the fix is a rename.
    ``fix``: code that makes the load go through. ``keys``: the keys the hint explains.
    """

    kind: str
    title: str
    detail: str
    fix: str
    mapping: tuple[tuple[str, str], ...] = ()
    keys: tuple[str, ...] = ()
    cause: str = (
        ""  # a short phrase for the verdict line ("a renamed module ('mlp' → 'feed_forward')")
    )

    @property
    def rename(self) -> dict[str, str]:
        """``{target key: checkpoint key}`` for a rename hint."""
        return dict(self.mapping)

    def __str__(self) -> str:
        return f"{self.title}\n  {self.detail}\n  fix: {self.fix}"


def _examples(keys: list[str] | tuple[str, ...], n: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")
