"""psi/ depends on nothing of ours but itself, and exports no hazmat."""

from __future__ import annotations

import ast
from pathlib import Path

import psi

PSI = Path(psi.__file__).parent
FORBIDDEN = {"nodes", "coordinator", "keys", "audit", "proto", "xmatch", "tests"}
NO_IO = {"socket", "grpc", "time", "random", "pathlib", "io", "logging", "subprocess"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_psi_imports_nothing_of_ours() -> None:
    files = sorted(PSI.rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        for name in imported_modules(path):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{path.name} imports {name}"
            assert top not in NO_IO, f"{path.name} imports {name}"


def test_public_api_has_no_hazmat() -> None:
    assert not any("hazmat" in name for name in psi.__all__)
    exported = [getattr(psi, name) for name in psi.__all__]
    assert all(getattr(obj, "__module__", "psi").startswith("psi") for obj in exported)
    assert not any(getattr(obj, "__module__", "").startswith("psi.hazmat") for obj in exported)
