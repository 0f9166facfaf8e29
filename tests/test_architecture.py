"""Dependencies point one way (docs/architecture.md); the hazmat layer stays inside psi."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {
    "psi",
    "nodes",
    "coordinator",
    "keys",
    "audit",
    "proto",
    "xmatch",
    "databases",
    "runtime",
    "workers",
}

# Which of our packages each package may import.
ALLOWED = {
    "psi": {"psi"},
    "keys": {"psi", "keys"},
    "audit": {"psi", "keys", "audit"},
    "databases": {"psi", "databases"},
    "runtime": {"psi", "runtime"},
    # the EC worker pool: starts the processes psi may not, passes psi an Executor
    "workers": {"psi", "workers"},
    "nodes": {"psi", "keys", "audit", "proto", "nodes", "databases", "runtime", "workers"},
    "coordinator": {
        "psi",
        "keys",
        "audit",
        "proto",
        "coordinator",
        "databases",
        "runtime",
        "workers",
    },
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


@pytest.mark.parametrize("package", ["nodes", "coordinator", "keys", "audit", "xmatch", "workers"])
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
    # psi.contract holds the codes; coordinator's enum spells them out for mypy, and the
    # node validates config against the contract: this pins the three together.
    from coordinator.records import Circumstance
    from nodes.config import CIRCUMSTANCES
    from psi.contract import CIRCUMSTANCE_CODES, SERVICE

    assert [c.value for c in Circumstance] == [*CIRCUMSTANCE_CODES, SERVICE]
    assert {c.value for c in Circumstance} == CIRCUMSTANCES


def test_the_contract_names_what_psi_offers() -> None:
    from psi import contract, keyed_hash
    from psi.hazmat import hash_to_curve

    assert sorted(contract.ECDH_SUITES) == sorted(hash_to_curve.SUITES)
    prfs = (*contract.KEYED_HASH_PRFS, *contract.GM_KEYED_HASH_PRFS)
    assert sorted(prfs) == sorted(keyed_hash.PRFS)


def test_the_contract_depends_on_nothing() -> None:
    assert imported_modules(ROOT / "psi" / "contract.py") <= {"__future__", "typing"}


# --- sizes, processes and cycles (issue 13's goals) --------------------------------------------

SIZED = ("coordinator", "nodes", "psi")
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 700
# What still exceeds a limit; the list may only shrink (each entry must still exceed it).
OVER_LIMIT: set[str] = set()
# psi/ is pure: no module of it starts processes (or imports what would)
PROCESS_APIS = {"multiprocessing", "subprocess", "concurrent.futures.process"}
STARTS_PROCESSES: set[str] = set()
# Import cycles not yet broken, each as its sorted modules joined by " <-> ".
CYCLES: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def oversized() -> set[str]:
    found: set[str] = set()
    for package in SIZED:
        for path in sources(package):
            text = path.read_text(encoding="utf-8")
            name = str(path.relative_to(ROOT))
            if text.count("\n") > MAX_MODULE_LINES:
                found.add(name)
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert node.end_lineno is not None
                    if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                        found.add(f"{name}:{node.name}")
    return found


def test_no_function_or_module_over_the_limits() -> None:
    found = oversized()
    assert found <= OVER_LIMIT, sorted(found - OVER_LIMIT)
    assert found >= OVER_LIMIT, f"no longer over a limit, drop: {sorted(OVER_LIMIT - found)}"


def process_starters() -> set[str]:
    found: set[str] = set()
    for path in sources("psi"):
        text = path.read_text(encoding="utf-8")
        modules = imported_modules(path)
        if modules & PROCESS_APIS or "ProcessPoolExecutor" in text or "os.fork" in text:
            found.add(str(path.relative_to(ROOT)))
    return found


def test_psi_starts_no_processes() -> None:
    assert process_starters() == STARTS_PROCESSES


def import_targets(path: Path, modules: dict[str, set[str]]) -> set[str]:
    """Our modules that ``path`` imports; ``from psi import errors`` names psi.errors."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif node.module in modules:
                    found.add(node.module)
    return found


def import_cycles() -> set[str]:
    """Strongly connected components (Tarjan) of the graph of our modules' imports."""
    graph: dict[str, set[str]] = {}
    for package in sorted(OURS):
        for path in sources(package):
            graph[module_name(path)] = set()
    for package in sorted(OURS):
        for path in sources(package):
            edges = graph[module_name(path)]
            for target in import_targets(path, graph):
                if target != module_name(path):
                    edges.add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: set[str] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.add(" <-> ".join(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle() -> None:
    assert import_cycles() == CYCLES


def test_the_cycle_finder_finds_cycles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A finder that finds nothing would pass the test above; show it sees a real cycle.
    for name in ("psi", "keys"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "psi" / "a.py").write_text("from keys import b\n")
    (tmp_path / "keys" / "b.py").write_text("import psi.a\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert import_cycles() == {"keys.b <-> psi.a"}
