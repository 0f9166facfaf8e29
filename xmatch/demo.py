"""``xmatch demo``: a synthetic Inner Mongolia federation on loopback, one round.

1. Generate the data (:mod:`xmatch.synth`): a roster and five departments'
   records, with the defects of real exports.
2. Create a federation CA and every member's certificate (``keys``).
3. Write ``NODE.node.toml`` and ``coordinator.toml`` as operators would.
4. Start each node as its own ``xmatch node serve`` process on a free
   loopback port and wait for its ready line.
5. Run one round in-process (:func:`coordinator.round.run_round`).
6. Stop the nodes with SIGTERM and print the summary.

Exit 0 when the round completed (failed sources are listed, not fatal).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, TextIO

from psi.errors import InputError, XmatchError

if TYPE_CHECKING:
    from xmatch import synth

__all__ = ["NodeProcess", "free_ports", "run_demo", "start_node", "stop_nodes"]

#: Marks a folder as made by ``xmatch demo`` (so a rerun may clear it).
MARKER = ".xmatch-demo"
READY_TIMEOUT = 60.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NodeProcess:
    """A running ``xmatch node serve``."""

    name: str
    process: subprocess.Popen[str]
    stderr_path: Path
    ready_line: str = ""
    lines: list[str] = field(default_factory=list)

    def last_stderr_line(self) -> str:
        """The node's last non-empty stderr line (its one-line error, usually)."""
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def start_node(
    name: str, config: Path, *, log_dir: Path, timeout: float = READY_TIMEOUT
) -> NodeProcess:
    """Start ``xmatch node serve --config CONFIG`` and wait for its ready line.

    Raises:
        XmatchError: the node exited, or printed no ready line within
            ``timeout`` seconds; the message quotes its last stderr line.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"{name}.stderr.log"
    # 0600: a node's stderr names its files and rows dropped, for its operator only
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    err_file = os.fdopen(fd, "w", encoding="utf-8")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "xmatch", "node", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            cwd=config.parent,
        )
    finally:
        err_file.close()
    node = NodeProcess(name=name, process=process, stderr_path=stderr_path)
    ready = threading.Event()
    pattern = re.compile(rf"^{re.escape(name)}: serving\b")

    def drain(stream: IO[str]) -> None:
        for line in stream:
            node.lines.append(line.rstrip("\n"))
            if not ready.is_set() and pattern.match(line):
                node.ready_line = line.strip()
                ready.set()

    assert process.stdout is not None
    threading.Thread(target=drain, args=(process.stdout,), daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if process.poll() is not None:
            time.sleep(0.1)  # let stderr reach the file
            last = node.last_stderr_line() or "no message"
            raise XmatchError(
                f"node {name} exited with code {process.returncode} before it was ready: {last}"
            )
        if time.monotonic() > deadline:
            stop_nodes([node])
            last = node.last_stderr_line() or "no message"
            raise XmatchError(f"node {name} not ready after {timeout:g} s: {last}")
    return node


def stop_nodes(nodes: list[NodeProcess], *, grace: float = 10.0) -> None:
    """SIGTERM every node, wait up to ``grace`` seconds, then SIGKILL stragglers."""
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for node in nodes:
        try:
            node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


@contextlib.contextmanager
def running_nodes(configs: list[tuple[str, Path]], *, log_dir: Path) -> Iterator[list[NodeProcess]]:
    """Start every node (in order), yield them, and always stop them."""
    started: list[NodeProcess] = []
    try:
        for name, path in configs:
            started.append(start_node(name, path, log_dir=log_dir))
        yield started
    finally:
        stop_nodes(started)


@contextlib.contextmanager
def _spinner(text: str) -> Iterator[None]:
    """A spinner on stderr while ``text`` is being done (on a terminal only)."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists():
        if not workdir.is_dir():
            raise InputError(f"{workdir}: exists and is not a folder")
        if any(workdir.iterdir()):
            if not (workdir / MARKER).exists():
                raise InputError(
                    f"{workdir}: folder exists, is not empty and was not made by xmatch demo; "
                    "choose another --workdir"
                )
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by xmatch demo; rerunning the demo clears it\n")


def run_demo(
    *,
    workdir: Path,
    children: int = 2000,
    seed: int = 2023,
    as_of: _dt.date | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Build the federation in ``workdir``, run one round, print the summary.

    ``workdir`` is cleared first if an earlier demo made it; any other
    non-empty folder is refused.

    Raises:
        InputError: ``workdir`` is unusable or ``children`` < 1.
        XmatchError: a node did not start (its last stderr line is quoted),
            or the round could not run.
    """
    from xmatch import synth

    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if children < 1:
        raise InputError("--children must be at least 1")
    workdir = Path(workdir).absolute()
    as_of = as_of or _dt.date.today()
    started = time.monotonic()
    _prepare_workdir(workdir)
    with _spinner(f"generating {children} children's synthetic data, keys and configs"):
        fed = synth.generate(workdir, children=children, seed=seed, as_of=as_of)
        synth.write_pki(workdir, [n.name for n in fed.nodes])
        ports = dict(zip((n.name for n in fed.nodes), free_ports(len(fed.nodes)), strict=True))
        coordinator_toml = synth.write_configs(fed, ports=ports)
    with contextlib.ExitStack() as stack:
        database = _database_department(workdir, stack)
        prepared = time.monotonic() - started
        print(
            f"xmatch demo: synthetic Inner Mongolia federation in {workdir}\n"
            f"  roster: {children} children, seed {seed}, as of {as_of}; "
            f"{sum(fed.file_rows.values())} department records; prepared in {prepared:.1f} s",
            file=out,
        )
        print(database, file=out)
        return _run(fed, workdir, coordinator_toml, as_of=as_of, out=out, err=err)


#: the demo's database department: police keeps its deaths register in PostgreSQL
DATABASE_SET = ("police", "deaths", "data/police/deaths.csv", "police_deaths")


def _database_department(workdir: Path, stack: contextlib.ExitStack) -> str:
    """Start a throwaway PostgreSQL, copy police/deaths into it and point police.node.toml there.

    The server runs as an unprivileged user in a temporary folder on a free port and
    is stopped when ``stack`` closes. Without Debian's postgresql the set stays a CSV
    file. Returns the line the demo prints about it.
    """
    from xmatch import localdb, synth

    node, name, csv_path, table = DATABASE_SET
    if not localdb.postgresql_available():
        return f"  {node}/{name}: CSV file (install Debian's postgresql to read it from a database)"
    server = localdb.start_postgresql()
    stack.callback(server.stop)
    rows = localdb.load_csv(server, workdir / csv_path, table, text_columns=["id_number"])
    secrets = workdir / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    dsn_file = secrets / f"{node}.dsn"
    fd = os.open(dsn_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(server.dsn() + "\n")
    synth.use_database(
        workdir / f"{node}.node.toml",
        csv_path,
        database="postgresql",
        dsn_file=f"secrets/{dsn_file.name}",
        table=table,
    )
    return (
        f"  {node}/{name}: PostgreSQL table {table} ({rows} rows) on 127.0.0.1:{server.port}, "
        "read-only; the server stops with the demo"
    )


def _run(
    fed: synth.Federation,
    workdir: Path,
    coordinator_toml: Path,
    *,
    as_of: _dt.date,
    out: TextIO,
    err: TextIO,
) -> int:
    from coordinator import exit_codes
    from coordinator.config import load_coordinator_config
    from coordinator.round import run_round

    configs = [(n.name, workdir / f"{n.name}.node.toml") for n in fed.nodes]
    with running_nodes(configs, log_dir=workdir / "logs") as nodes:
        for node, spec in zip(nodes, fed.nodes, strict=True):
            print(f"  node {node.ready_line} (coordinator uses {spec.protocol})", file=out)
        config = load_coordinator_config(coordinator_toml)
        print(
            "note: the synthetic roster has deliberate mistakes, as real exports do "
            "(numbers a spreadsheet turned into 1.5E+17, wrong check characters); "
            "each is listed below as a warning and its child gets REVIEW",
            file=err,
        )
        outcome = run_round(
            config,
            as_of=as_of,
            out=workdir / "round-1",
            lang="zh",
            progress=True,
            stderr=err,
            problem_prefix="warning: ",
        )
    print(
        f"\nround {outcome.round_id}: {outcome.query_size} identities queried in "
        f"{len(outcome.sub_rounds)} match sets, {outcome.seconds:.1f} s",
        file=out,
    )
    counts = outcome.decisions.counts()
    print("decisions:", file=out)
    for decision in ("ENROL", "CONTINUE", "RECLASSIFY", "EXIT", "REVIEW", "NOT_ELIGIBLE"):
        n = sum(v for k, v in counts.items() if k.value == decision)
        print(f"  {decision:<13}{n:>6}", file=out)
    print("matches by department:", file=out)
    by_node: dict[str, list[str]] = {}
    for sub in outcome.sub_rounds:
        text = (
            f"{sub.match_set} {sub.matches}" if sub.status == "ok" else (f"{sub.match_set} FAILED")
        )
        by_node.setdefault(sub.node, []).append(text)
    protocols = {s.node: s.protocol for s in outcome.sub_rounds}
    for node_name, sets in by_node.items():
        print(f"  {node_name:<28} {protocols[node_name]:<11} {', '.join(sets)}", file=out)
    for source, gaps in outcome.decisions.coverage_gaps.items():
        print(f"coverage gaps ({source}): {len(gaps)} supported children not matched", file=out)
    for source, needs in outcome.decisions.service_needs.items():
        print(f"service needs ({source}): {len(needs)} supported children matched", file=out)
    failed = outcome.failed_sources
    if failed:
        for sub in outcome.sub_rounds:
            if sub.status != "ok":
                print(f"failed source: {sub.source}: {sub.detail}", file=out)
    else:
        print("failed sources: none", file=out)
    print(f"report: {outcome.out / 'report.html'}", file=out)
    print(f"decisions: {outcome.out / 'decisions.json'}", file=out)
    print(f"spreadsheet: {outcome.out / 'decisions.xlsx'}", file=out)
    print(f"protocol logs: {workdir / 'logs'}{os.sep}*.audit.jsonl", file=out)
    # as `round run`: a demo whose sources failed is not a success (exit 3)
    return exit_codes.round_status([s.status for s in outcome.sub_rounds])
