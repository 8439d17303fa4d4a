"""The package declares what its code uses, and its code uses only what it declares."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Mapping
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "shared", "client")

# Declared, and used by name rather than by an import statement in the code.
USED_BY_NAME = {
    "aiosqlite": "SQLAlchemy's driver for sqlite+aiosqlite:// URLs",
}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {normal(Requirement(line).name) for line in project["dependencies"]}


def owner(module: str, owners: Mapping[str, list[str]]) -> str:
    """The distribution a module comes from. Several share the `pycrdt` namespace
    (pycrdt.websocket is pycrdt-websocket): the longest matching name wins."""
    parts = module.split(".")
    candidates = {normal(d) for d in owners.get(parts[0], [parts[0]])}
    for size in range(len(parts), 0, -1):
        name = normal("-".join(parts[:size]))
        if name in candidates:
            return name
    return sorted(candidates)[0]


def imported_distributions() -> set[str]:
    """The distributions that the modules of the shipped packages import."""
    owners = packages_distributions()
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top in PACKAGES or top in sys.stdlib_module_names:
                        continue
                    found.add(owner(name, owners))
    return found


def test_every_declared_dependency_is_used() -> None:
    unused = declared() - imported_distributions() - set(USED_BY_NAME)
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_every_imported_distribution_is_declared() -> None:
    # A dependency's own dependency may be imported directly only if it is declared too.
    undeclared = imported_distributions() - declared()
    assert not undeclared, f"imported but not declared: {sorted(undeclared)}"
