"""Ctrl-C is clean everywhere (issue 17, "Tracebacks"): real processes, real signals.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the
program and every worker process it started. Each test puts the program in a
process group of its own and signals the group with ``os.killpg``, as a
terminal does, so that the EC worker processes get the SIGINT too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator import exit_codes
from tests.federation import (
    AS_OF,
    SPECS,
    Federation,
    audit_entries,
    build_federation,
    coordinator_toml,
    start_nodes,
    start_stalling_node,
    state_rows,
    stop_nodes,
    wait_for,
)

pytestmark = pytest.mark.integration

NOISE = ("Traceback", "KeyboardInterrupt", "Exception ignored")
POLICE = tuple(s for s in SPECS if s.name == "police")
JUSTICE = tuple(s for s in SPECS if s.name == "justice")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = build_federation(tmp_path_factory.mktemp("ctrl-c"))
    yield federation
    stop_nodes(federation.nodes)


@pytest.fixture()
def nodes(fed: Federation) -> Iterator[Federation]:
    """Stops every node a test started."""
    try:
        yield fed
    finally:
        stop_nodes(fed.nodes, grace=10)
        fed.nodes.clear()


def _group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def _markers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _round_in_own_group(config: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "xmatch", "round", "run", "--config", str(config)),
            *("--as-of", AS_OF.isoformat(), "--out", str(out), "--lang", "en", "-q"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONUTF8": "1"},
        start_new_session=True,
    )


def _ends_by_set(entries: list[dict[str, object]], rid: str) -> dict[str, list[str]]:
    ends: dict[str, list[str]] = {}
    for e in entries:
        if e.get("round_id") == rid and e["event"] in (
            "round_finished",
            "round_failed",
            "round_refused",
        ):
            ends.setdefault(str(e["match_set"]), []).append(str(e["event"]))
    return ends


def test_ctrl_c_on_node_serve_prints_no_worker_tracebacks(nodes: Federation) -> None:
    fed = nodes
    config = fed.config("justice")  # an ecdh node: it starts EC worker processes
    proc = subprocess.Popen(
        [sys.executable, "-m", "xmatch", "node", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=fed.root,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert "serving" in proc.stdout.readline()
        # the workers are up and in the node's group: the SIGINT reaches them too
        assert len(_group(proc.pid)) >= 2, "no worker process to test with"
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    for word in NOISE:
        assert word not in stderr, stderr
    shutdowns = [e for e in audit_entries(fed.audit_log("justice")) if e["event"] == "shutdown"]
    assert shutdowns[-1]["reason"] == "SIGINT"
    wait_for("the workers to exit", lambda: not _group(proc.pid), timeout=10)


def test_sigint_on_a_node_during_a_round_ends_the_round_in_its_log(
    nodes: Federation, tmp_path: Path
) -> None:
    fed = nodes
    markers = tmp_path / "markers"
    police = start_stalling_node(
        fed, "police", marker_dir=markers, stall_after=1, stall_seconds=120, new_session=True
    )
    config = coordinator_toml(
        fed,
        "coordinator-sigint-node.toml",
        specs=POLICE,
        coordinator={"chunk_items": 32, "state": "state/sigint-node.sqlite"},
    )
    coordinator = _round_in_own_group(config, tmp_path / "round")
    try:
        wait_for("police to stall in both sets", lambda: len(_markers(markers)) == 2)
        rid = _markers(markers)[0].split(".")[1]
        started = time.monotonic()
        os.killpg(police.process.pid, signal.SIGINT)
        police.process.wait(timeout=30)
        took = time.monotonic() - started
        _, coord_err = coordinator.communicate(timeout=60)
    finally:
        for p in (police.process, coordinator):
            if p.poll() is None:
                p.kill()
    assert police.process.returncode == 130
    # the open rounds had the shutdown grace (5 s), then were ended
    assert 4 < took < 25, took
    node_err = police.stderr_path.read_text(encoding="utf-8")
    for word in NOISE:
        assert word not in node_err, node_err
    entries = audit_entries(fed.audit_log("police"))
    ends = _ends_by_set(entries, rid)
    assert sorted(ends) == ["deaths", "lost_contact"], ends
    assert all(v == ["round_failed"] for v in ends.values()), ends
    assert entries[-1]["event"] in ("shutdown", "checkpoint")
    # the coordinator: both police sets failed, so the round is partial
    assert coordinator.returncode == exit_codes.PARTIAL, coord_err
    assert "Traceback" not in coord_err


def test_ctrl_c_on_round_run_leaves_no_sub_round_running(nodes: Federation, tmp_path: Path) -> None:
    fed = nodes
    markers = tmp_path / "markers"
    start_nodes(fed, ["justice"])  # ecdh: the coordinator starts EC workers
    start_stalling_node(fed, "police", marker_dir=markers, stall_after=1, stall_seconds=120)
    config = coordinator_toml(
        fed,
        "coordinator-ctrl-c.toml",
        specs=POLICE + JUSTICE,
        coordinator={"chunk_items": 32, "state": "state/ctrl-c.sqlite"},
    )
    db = fed.root / "state" / "ctrl-c.sqlite"
    out = tmp_path / "round"
    proc = _round_in_own_group(config, out)
    try:
        wait_for("police to stall in both sets", lambda: len(_markers(markers)) == 2)
        rid = _markers(markers)[0].split(".")[1]
        wait_for(
            "justice's sub-round to complete",
            lambda: (
                state_rows(
                    db,
                    "SELECT status FROM sub_rounds WHERE node = 'justice' AND round_id = ?",
                    (rid,),
                )
                == [("completed",)]
            ),
        )
        assert len(_group(proc.pid)) >= 2, "no worker process to test with"
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == exit_codes.INTERRUPTED, stderr
    assert stderr.strip().splitlines()[-1] == "xmatch: interrupted", stderr
    for word in NOISE:
        assert word not in stderr, stderr
    assert not out.exists()
    assert state_rows(db, "SELECT status FROM rounds WHERE round_id = ?", (rid,)) == [
        ("interrupted",)
    ]
    statuses = state_rows(db, "SELECT node, status FROM sub_rounds WHERE round_id = ?", (rid,))
    assert sorted(statuses) == [
        ("justice", "completed"),
        ("police", "failed"),
        ("police", "failed"),
    ]
    # the coordinator's log: every sub-round it started has its end, then shutdown
    entries = audit_entries(fed.audit_log("civil-affairs"))
    ends = _ends_by_set(entries, rid)
    assert sorted(ends) == ["custody", "deaths", "lost_contact"], ends
    assert all(len(v) == 1 for v in ends.values()), ends
    shutdowns = [e for e in entries if e["event"] == "shutdown"]
    assert shutdowns[-1]["reason"] == "interrupted"


def test_ctrl_c_while_the_command_imports_is_one_line_and_exit_130() -> None:
    """Before ``main`` runs (its imports take a moment) a Ctrl-C once gave a traceback.
    The import is made to raise KeyboardInterrupt exactly there, in a real process."""
    script = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'xmatch.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['xmatch', '--help']\n"
        "from xmatch.entry import run\n"
        "run()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == exit_codes.INTERRUPTED
    assert done.stderr == "xmatch: interrupted\n"


def test_a_ctrl_c_once_the_folder_is_renamed_is_remembered_not_raised(tmp_path: Path) -> None:
    """``round run`` holds Ctrl-C from the output folder's rename on (CommitGuard): the
    folder, the state and the exit code then agree that the round is complete."""
    from coordinator.output import OutputFolder
    from runtime.signals import CommitGuard

    def ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, between two bytecodes

    out = tmp_path / "round"
    with CommitGuard() as guard:

        def commit_begins() -> None:
            guard.hold()
            ctrl_c()

        with OutputFolder(out, "ab" * 16, on_commit=commit_begins) as folder:
            folder.write_text("decisions.json", "{}\n")
            folder.commit()
        ctrl_c()  # still held until the guard's block ends
    assert guard.interrupted
    assert (out / "decisions.json").read_text(encoding="utf-8") == "{}\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # without the guard, Ctrl-C raises again
        ctrl_c()


_WORKERS_START_SCRIPT = """
import os, signal, sys, threading, time
from runtime.signals import sigint_blocked
from workers import worker_pool

def report():
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN

if __name__ == "__main__":
    # a library's thread that does not block SIGINT (OpenBLAS, DuckDB and gRPC start
    # such threads before a node's workers): the kernel may give it the SIGINT
    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
    pool = worker_pool(1, start_method="spawn")
    try:
        with sigint_blocked():
            started = pool.submit(report)
            # as a terminal does: the whole group, the worker that is starting included
            os.killpg(0, signal.SIGINT)
            time.sleep(0.2)
            print("worker-ignores-sigint" if started.result(timeout=60) else "worker-takes-it")
        time.sleep(1)
        print("lost")
    except KeyboardInterrupt:
        print("delivered")
    finally:
        pool.shutdown()
"""


def test_ctrl_c_while_node_workers_start_is_held_not_lost(tmp_path: Path) -> None:
    """Finding: a Ctrl-C about a second into `xmatch node serve` (its EC workers starting)
    was dropped and the node went on serving. SIGINT was ignored meanwhile, and the kernel
    gave it to a library thread that does not block it. Now SIGINT is only blocked: it is
    delivered when the block ends, and the worker that was starting, which got the same
    SIGINT, survives it without a traceback."""
    script = tmp_path / "start.py"  # spawn re-imports the main module: a file, not -c
    script.write_text(_WORKERS_START_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        check=False,
    )
    assert done.stdout.split() == ["worker-ignores-sigint", "delivered"], done.stderr
    for word in NOISE:
        assert word not in done.stderr, done.stderr


_LIBRARY_SCRIPT = """
import os, signal, sys, time
from psi.errors import ConfigError
from xmatch import cli

def reading(args):
    # as DuckDB does when a Ctrl-C comes while it reads a match set at node startup:
    # it catches the KeyboardInterrupt raised inside it and raises its own error
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        if sys.argv[1] == "config":  # what the node makes of a failed read
            raise ConfigError("match set custody: cannot read data/custody.csv") from None
        raise RuntimeError("INTERRUPT Error: Interrupted!") from None
    return 0

cli._cmd_bench = reading  # the parser is built after this: `bench` runs it
sys.exit(cli.main(["bench"]))
"""


def test_ctrl_c_that_a_library_turns_into_its_own_error_is_an_interrupt() -> None:
    """Finding: a Ctrl-C while a node read its match set with DuckDB gave `xmatch: internal
    error: RuntimeError at matchset_files.py:191`. Whatever a command raises after a Ctrl-C
    is the Ctrl-C's doing."""
    for mode in ("internal", "config"):
        done = subprocess.run(
            [sys.executable, "-c", _LIBRARY_SCRIPT, mode],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == exit_codes.INTERRUPTED, done.stderr
        assert done.stderr == "xmatch: interrupted\n"
