"""The tree a newcomer reads: every folder small enough to hold in your head, saying what lives
in it, and named in the README's layout."""

from __future__ import annotations

import ast
from pathlib import Path

import dcpviz

ROOT = Path(dcpviz.__file__).parent
README = (ROOT.parent / "README.md").read_text(encoding="utf-8")
MAX_MODULES = 15


def _packages() -> list[Path]:
    return sorted(p.parent for p in ROOT.rglob("__init__.py"))


def test_no_folder_holds_more_than_fifteen_modules():
    big = {
        p.relative_to(ROOT).as_posix() or ".": n
        for p in _packages()
        if (n := len([m for m in p.glob("*.py") if m.name != "__init__.py"])) > MAX_MODULES
    }
    assert big == {}


def test_every_sub_package_says_what_lives_there():
    silent = [
        p.relative_to(ROOT).as_posix()
        for p in _packages()
        if p != ROOT and not ast.get_docstring(ast.parse((p / "__init__.py").read_text()))
    ]
    assert silent == []


def test_the_readme_layout_names_every_folder():
    layout = README[README.index("## Layout") :] if "## Layout" in README else README
    missing = [
        p.relative_to(ROOT).as_posix()
        for p in _packages()
        if p != ROOT and f"{p.name}/" not in layout
    ]
    assert missing == []
