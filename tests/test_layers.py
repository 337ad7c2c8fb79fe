"""The import layers of the README's picture: `environments`, `retrievers` and `trainers` reach `agentrl`
only through `agentrl.core`, and `agentrl.core` imports nothing of the project outside itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("agentrl", "environments", "retrievers", "trainers")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
    return {n for n in names if n.split(".")[0] in PROJECT}


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["environments", "retrievers", "trainers"])
def test_the_middle_packages_reach_agentrl_only_through_its_core(package: str) -> None:
    wrong = {
        f"{path.relative_to(REPO)}: {name}"
        for path in sources(package)
        for name in imported_modules(path)
        if name.split(".")[0] == "agentrl" and not (name + ".").startswith("agentrl.core.")
    }
    assert not wrong, sorted(wrong)


def test_the_core_imports_nothing_of_the_project_outside_itself() -> None:
    wrong = {
        f"{path.relative_to(REPO)}: {name}"
        for path in sources("agentrl/core")
        for name in imported_modules(path)
        if not (name + ".").startswith("agentrl.core.")
    }
    assert not wrong, sorted(wrong)


def test_no_package_imports_the_cli() -> None:
    wrong = {
        f"{path.relative_to(REPO)}: {name}"
        for package in PROJECT
        for path in sources(package)
        if "cli" not in path.relative_to(REPO).parts
        for name in imported_modules(path)
        if (name + ".").startswith("agentrl.cli.")
    }
    assert not wrong, sorted(wrong)
