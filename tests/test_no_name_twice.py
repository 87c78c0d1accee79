"""No name is defined twice in one module or class body: a second ``def`` silently replaces the
first (ruff's F811 only sees it when nothing used the first in between)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import dcpviz

ROOT = Path(dcpviz.__file__).parent

KNOWN: set[tuple[str, str, str]] = set()  # (file, scope, name) allowed twice: none


def _replaces(node: ast.AST) -> bool:
    """A definition meant to sit next to one of the same name (a property's setter, an overload)."""
    for d in getattr(node, "decorator_list", ()):
        if isinstance(d, ast.Attribute) and d.attr in {"setter", "deleter", "getter"}:
            return True
        if (
            isinstance(d, ast.Name | ast.Attribute)
            and getattr(d, "id", getattr(d, "attr", "")) == "overload"
        ):
            return True
    return False


def defined_twice(source: str) -> list[tuple[str, str]]:
    """(scope, name) of every def or class defined more than once directly in one body."""
    out = []
    scopes = [("<module>", ast.parse(source).body)]
    scopes += [(n.name, n.body) for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)]
    for scope, body in scopes:
        names = Counter(
            n.name
            for n in body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and not _replaces(n)
        )
        out += [(scope, name) for name, k in sorted(names.items()) if k > 1]
    return out


def test_the_check_sees_a_second_definition():
    assert defined_twice("def f():\n    pass\n\nx = f()\n\ndef f():\n    pass\n") == [
        ("<module>", "f")
    ]
    assert defined_twice("class A:\n    def g(self): ...\n    def g(self): ...\n") == [("A", "g")]
    assert (
        defined_twice(
            "class A:\n    @property\n    def p(self): ...\n    @p.setter\n    def p(self, v): ...\n"
        )
        == []
    )


def test_no_name_is_defined_twice_in_one_module():
    found = [
        (path.relative_to(ROOT).as_posix(), scope, name)
        for path in sorted(ROOT.rglob("*.py"))
        for scope, name in defined_twice(path.read_text(encoding="utf-8"))
    ]
    assert [f for f in found if f not in KNOWN] == []
