"""Shared helpers for tests that run real processes: nodes, the coordinator, the CLI.

- :func:`xmatch`: run the CLI as a user does (``python -m xmatch ...``).
- :data:`SPECS` / :func:`expected_evidence`: the test federation (four nodes,
  both protocols, a coverage and a needs set) and the plaintext join of its
  files, the ground truth that a round's ``evidence.csv`` must equal.
- :func:`build_federation`: data, PKI and node configs in one folder.
- :func:`coordinator_toml`: a ``coordinator.toml`` for it, with edits.
- :func:`start_stalling_node`: a node run through the test-only wrapper
  :mod:`tests.stalling_node` (see there), for deterministic mid-round faults.
- :func:`wait_for`: poll a condition with a time bound.

Node processes are started with :func:`xmatch.demo.start_node` (the product's
own launcher) and stopped with :func:`xmatch.demo.stop_nodes`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from psi.errors import InvalidIdentifier
from psi.identifiers import normalize_id
from tests import configs
from tests.configs import put
from xmatch import synth
from xmatch.demo import NodeProcess, free_ports, start_node, stop_nodes

__all__ = [
    "AS_OF",
    "FILTERS",
    "NEEDS",
    "REPO",
    "SPECS",
    "SWAP",
    "Federation",
    "audit_entries",
    "build_federation",
    "coordinator_toml",
    "expected_evidence",
    "free_ports",
    "query_ids",
    "read_evidence_csv",
    "roster_ids",
    "start_node",
    "start_nodes",
    "start_stalling_node",
    "state_rows",
    "stop_nodes",
    "wait_for",
    "write_node_configs",
    "xmatch",
]

AS_OF = dt.date.today()
REPO = Path(__file__).resolve().parent.parent
Row = tuple[str, str, str, str, str, str, str]
Filter = Callable[[dict[str, str]], bool]


def _num(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


# The test federation: simple filters, mirrored below in Python.
SPECS = (
    synth.NodeSpec(
        "police",
        "keyed-hash",
        (
            synth.MatchSetSpec(
                "deaths", "DEAD", "data/police/deaths.csv", "id_number", None, ("start_date",)
            ),
            synth.MatchSetSpec(
                "lost_contact",
                "LOST_CONTACT",
                "data/police/lost_contact.csv",
                "id_number",
                None,
                ("start_date", "end_date"),
            ),
        ),
    ),
    synth.NodeSpec(
        "justice",
        "ecdh",
        (
            synth.MatchSetSpec(
                "custody",
                "IMPRISONED",
                "data/justice/custody.csv",
                "id_number",
                "term_months >= 6",
                ("start_date", "end_date"),
            ),
        ),
    ),
    synth.NodeSpec(
        "disabled-persons-federation",
        "keyed-hash",
        (
            synth.MatchSetSpec(
                "certificates",
                "SEVERE_DISABILITY",
                "data/disabled_persons_federation/certificates.csv",
                "id_number",
                "disability_grade <= 2",
                ("start_date", "end_date", "disability_category", "disability_grade"),
                encoding="gb18030",
            ),
            # a service-needs set: only the node's config says so, the coordinator's does not
            synth.MatchSetSpec(
                "rehab_needs",
                "SERVICE",
                "data/disabled_persons_federation/rehab_needs.csv",
                "id_number",
                None,
                (),
                encoding="gb18030",
                service_report="needs",
            ),
        ),
    ),
    synth.NodeSpec(
        "medical-insurance",
        "ecdh",
        (
            synth.MatchSetSpec(
                "enrolled", "SERVICE", "data/medical_insurance/enrolled.csv", "id_number", None, ()
            ),
        ),
    ),
)
FILTERS: dict[str, Filter] = {
    "custody": lambda r: (_num(r["term_months"]) or 0) >= 6,
    "certificates": lambda r: (_num(r["disability_grade"]) or 99) <= 2,
}
SWAP = {"keyed-hash": "ecdh", "ecdh": "keyed-hash"}
#: the service-needs sets of :data:`SPECS` (``service_report = "needs"``)
NEEDS = tuple(
    f"{n.name}/{m.name}" for n in SPECS for m in n.match_sets if m.service_report == "needs"
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUTF8": "1"}


def xmatch(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user does."""
    return subprocess.run(
        [sys.executable, "-m", "xmatch", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        env=_env(),
        timeout=timeout,
        check=False,
    )


def round_run(
    config: Path,
    out: Path,
    *extra: str,
    as_of: dt.date | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``xmatch round run -q`` as an operator types it (``as_of`` omitted: today)."""
    dated = ("--as-of", as_of.isoformat()) if as_of is not None else ()
    return xmatch(
        "round",
        "run",
        "--config",
        str(config),
        *dated,
        "--out",
        str(out),
        "-q",
        *extra,
        timeout=timeout,
    )


@dataclasses.dataclass
class Federation:
    """A federation folder (data, ``pki/``, ``NODE.node.toml``) and its node ports."""

    root: Path
    ports: dict[str, int]
    nodes: list[NodeProcess]
    specs: tuple[synth.NodeSpec, ...] = SPECS

    def config(self, node: str) -> Path:
        """The node's ``node.toml``."""
        return self.root / f"{node}.node.toml"

    def audit_log(self, party: str) -> Path:
        """The protocol log of a node or the coordinator."""
        return self.root / "logs" / f"{party}.audit.jsonl"


def write_node_configs(
    root: Path, specs: tuple[synth.NodeSpec, ...], ports: dict[str, int]
) -> None:
    """``NODE.node.toml`` for each spec, logs under ``root/logs``."""
    (root / "logs").mkdir(exist_ok=True)
    for spec in specs:
        synth.write_node_config(root, spec, port=ports[spec.name])


def build_federation(
    root: Path, *, specs: tuple[synth.NodeSpec, ...] = SPECS, children: int = 90, seed: int = 11
) -> Federation:
    """Synthetic data, a PKI (plus an unused member ``ghost``) and node configs; no process."""
    synth.generate(root, children=children, seed=seed, as_of=AS_OF)
    synth.write_pki(root, [s.name for s in specs] + ["ghost"])
    ports = dict(zip([s.name for s in specs], free_ports(len(specs)), strict=True))
    write_node_configs(root, specs, ports)
    return Federation(root, ports, [], specs)


def start_nodes(fed: Federation, names: list[str] | None = None) -> list[NodeProcess]:
    """Start the named nodes (default: all) with the product's launcher."""
    started = [
        start_node(s.name, fed.config(s.name), log_dir=fed.root / "logs")
        for s in fed.specs
        if names is None or s.name in names
    ]
    fed.nodes.extend(started)
    return started


def coordinator_toml(
    fed: Federation,
    name: str,
    *,
    specs: tuple[synth.NodeSpec, ...] | None = None,
    roster: str = "data/roster.csv",
    coordinator: Mapping[str, object] | None = None,
    node_keys: Mapping[str, Mapping[str, object]] | None = None,
    nodes: Sequence[configs.Table] = (),
    edits: Sequence[configs.Edit] = (),
    deadline_seconds: float = 120,
) -> Path:
    """Write ``fed.root/NAME``: a coordinator config for ``specs``.

    ``coordinator`` sets keys of ``[coordinator]`` and ``node_keys`` keys of a
    node's ``[[nodes]]`` entry; ``nodes`` adds ``[[nodes]]`` entries; ``edits``
    (:mod:`tests.configs`) then change the result.
    """
    path = synth.write_coordinator_config(
        fed.root,
        specs or fed.specs,
        ports=fed.ports,
        retries=1,
        deadline_seconds=deadline_seconds,
        roster=roster,
    )
    doc = configs.read(path)
    path.unlink()
    changes = [put(f"coordinator.{key}", value) for key, value in (coordinator or {}).items()]
    for node, keys in (node_keys or {}).items():
        entry = configs.entry(doc, "nodes", node)
        changes += [put(f"{entry}.{key}", value) for key, value in keys.items()]
    doc = configs.apply(doc, *changes)
    doc["nodes"] += [dict(entry) for entry in nodes]
    return configs.write(fed.root / name, configs.apply(doc, *edits))


def _keep_all(_record: dict[str, str]) -> bool:
    return True


def roster_ids(path: Path) -> set[str]:
    """Every valid canonical identity number in a roster file."""
    ids: set[str] = set()
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            for col in ("child_id", "father_id", "mother_id"):
                if row.get(col, "").strip():
                    with contextlib.suppress(InvalidIdentifier):
                        ids.add(normalize_id(row[col], today=AS_OF))
    return ids


def query_ids(root: Path) -> list[str]:
    """The identities a round queries, sorted (the round sends them in a random order)."""
    return sorted(roster_ids(root / "data" / "roster.csv"))


def expected_evidence(root: Path, specs: tuple[synth.NodeSpec, ...]) -> list[Row]:
    """The plaintext join of the roster with each match set, as evidence rows."""
    roster = roster_ids(root / "data" / "roster.csv")
    rows: list[Row] = []
    for node in specs:
        for ms in node.match_sets:
            source = f"{node.name}/{ms.name}"
            keep: Filter = FILTERS.get(ms.name, _keep_all)
            seen: set[str] = set()
            with (root / ms.source).open(encoding=ms.encoding, newline="") as fh:
                for record in csv.DictReader(fh):
                    try:
                        pid = normalize_id(record[ms.id_column], today=AS_OF)
                    except InvalidIdentifier:
                        continue
                    if pid not in roster or not keep(record):
                        continue
                    if node.protocol == "ecdh":  # membership only, once per person
                        if pid not in seen:
                            rows.append((pid, ms.circumstance, source, "", "", "", ""))
                        seen.add(pid)
                        continue
                    cols = ("start_date", "end_date", "disability_category", "disability_grade")
                    vals = [record.get(c, "") if c in ms.payload else "" for c in cols]
                    rows.append((pid, ms.circumstance, source, *vals))  # type: ignore[arg-type]
    return sorted(rows)


def read_evidence_csv(path: Path) -> list[Row]:
    """A round's ``evidence.csv``, sorted."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        assert header == [
            "person_id",
            "circumstance",
            "source",
            "start_date",
            "end_date",
            "disability_category",
            "disability_grade",
        ]
        return sorted(tuple(r) for r in reader)  # type: ignore[misc]


def state_rows(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows of a query on the coordinator's SQLite state (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def wait_for(what: str, check: Callable[[], bool], *, timeout: float = 20.0) -> None:
    """Poll ``check`` every 50 ms until it is true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def audit_entries(path: Path) -> list[dict[str, object]]:
    """The entries of a protocol log (complete lines only)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def start_stalling_node(
    fed: Federation,
    name: str,
    *,
    marker_dir: Path,
    stall_after: int,
    stall_seconds: float = 3600.0,
    stall_rounds: int = 1,
    timeout: float = 60.0,
    config: Path | None = None,
    new_session: bool = False,
) -> NodeProcess:
    """Start ``name`` through :mod:`tests.stalling_node`: its rounds answer
    ``stall_after`` request chunks, then stall (see that module). ``config``
    replaces the node's ``node.toml``; ``new_session`` puts the node (and its
    workers) in a process group of its own, which ``os.killpg`` signals as a
    terminal's Ctrl-C does.

    Raises:
        AssertionError: the node printed no ready line within ``timeout``.
    """
    log_dir = fed.root / "logs"
    marker_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"{name}.stderr.log"
    env = {
        **_env(),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "XMATCH_TEST_STALL_AFTER": str(stall_after),
        "XMATCH_TEST_STALL_SECONDS": str(stall_seconds),
        "XMATCH_TEST_STALL_ROUNDS": str(stall_rounds),
        "XMATCH_TEST_MARKER_DIR": str(marker_dir),
    }
    with stderr_path.open("w", encoding="utf-8") as err_file:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.stalling_node"),
                *("--config", str(config or fed.config(name))),
            ],
            stdout=subprocess.PIPE,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            cwd=fed.root,
            env=env,
            start_new_session=new_session,
        )
    node = NodeProcess(name=name, process=process, stderr_path=stderr_path)
    ready = threading.Event()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            node.lines.append(line.rstrip("\n"))
            if line.startswith(f"{name}: serving"):
                node.ready_line = line.strip()
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(timeout):
        stop_nodes([node])
        raise AssertionError(f"stalling node {name} not ready: {node.last_stderr_line()}")
    fed.nodes.append(node)
    return node
