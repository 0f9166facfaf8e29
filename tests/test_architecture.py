"""Dependencies point one way (docs/architecture.md); the hazmat layer stays inside psi."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"psi", "nodes", "coordinator", "keys", "audit", "proto", "xmatch", "databases"}

# Which of our packages each package may import.
ALLOWED = {
    "psi": {"psi"},
    "keys": {"psi", "keys"},
    "audit": {"psi", "keys", "audit"},
    "databases": {"psi", "databases"},
    "nodes": {"psi", "keys", "audit", "proto", "nodes", "databases"},
    "coordinator": {"psi", "keys", "audit", "proto", "coordinator", "databases"},
    "xmatch": OURS,
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources(package)
        for module in imported_modules(path)
        if module.split(".")[0] in OURS and module.split(".")[0] not in ALLOWED[package]
    ]
    assert not bad, bad


@pytest.mark.parametrize("package", ["nodes", "coordinator", "keys", "audit", "xmatch"])
def test_hazmat_stays_inside_psi(package: str) -> None:
    bad = [
        str(path.relative_to(ROOT))
        for path in sources(package)
        if any(m == "psi.hazmat" or m.startswith("psi.hazmat.") for m in imported_modules(path))
    ]
    assert not bad, bad


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    # Guard against a checker that finds nothing: it must see both import forms.
    sample = tmp_path / "m.py"
    sample.write_text("import nodes.server\nfrom psi.hazmat import x25519\n")
    assert imported_modules(sample) == {"nodes.server", "psi.hazmat"}


def test_node_and_coordinator_share_one_circumstance_vocabulary() -> None:
    # nodes/ may not import coordinator/, so the node keeps its own copy of the
    # eligibility.md codes; this pins the two together.
    from coordinator.records import Circumstance
    from nodes.config import CIRCUMSTANCES

    assert {c.value for c in Circumstance} == CIRCUMSTANCES
