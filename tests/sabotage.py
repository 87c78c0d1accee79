"""Breaking a shortcut on purpose, to show that its self-check works.

A sabotage replaces only the shortcut's key (what makes two questions the same), never its
self-check. With the check in place the check must be what noticed (it answered False at least
once) and the result must stay exact; with the check silenced (it always agrees) the same break
must show (so the sabotage is real). A case is a tuple
``(id, owner of the key, key's name, broken key, owner of the check, check's name)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Case = tuple[str, Any, str, Any, Any, str]


def _set_check(monkeypatch, owner: Any, name: str, check: Callable[..., Any]) -> None:
    """``owner.name = check``; on a class, as a staticmethod (called with the check's own args)."""
    monkeypatch.setattr(owner, name, staticmethod(check) if isinstance(owner, type) else check)


def spy_on_check(monkeypatch, owner: Any, name: str) -> list[Any]:
    """Let ``owner.name`` answer as before, and return the list its answers go into."""
    check = getattr(owner, name)
    answers: list[Any] = []

    def spy(*args):
        answers.append(check(*args))
        return answers[-1]

    _set_check(monkeypatch, owner, name, spy)
    return answers


def silence_check(monkeypatch, owner: Any, name: str) -> None:
    """Make ``owner.name`` always agree (answer True)."""

    def agree(*args):
        return True

    _set_check(monkeypatch, owner, name, agree)


def assert_the_check_catches(
    case: Case, monkeypatch, make_pair: Callable[[], tuple], differences: Callable
) -> None:
    """With the key broken, the check answers False at least once and ``make_pair()``'s (fast,
    plain) results do not differ."""
    _, owner, name, broken, check_owner, check_name = case
    monkeypatch.setattr(owner, name, broken)
    answers = spy_on_check(monkeypatch, check_owner, check_name)
    fast, plain = make_pair()
    assert False in answers, "the self-check never saw the broken shortcut"
    assert differences(fast, plain) == []


def assert_the_break_shows(
    case: Case, monkeypatch, make_pair: Callable[[], tuple], differences: Callable
) -> None:
    """With the key broken and the check silenced, (fast, plain) differ: the sabotage is real."""
    _, owner, name, broken, check_owner, check_name = case
    monkeypatch.setattr(owner, name, broken)
    silence_check(monkeypatch, check_owner, check_name)
    fast, plain = make_pair()
    assert differences(fast, plain) != []


def shapes_key_without_coordinate(global_shape, mesh, placements, skip_offset):
    """fastpath.SharedLocalShapes keyed without the rank's coordinate: every rank would get the
    shards of the first rank that asked."""
    return (tuple(global_shape), tuple(mesh.shape), tuple(placements), skip_offset)
