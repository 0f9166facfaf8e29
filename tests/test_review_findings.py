"""Regression tests for the findings of the review of issues 12 and 17 (notes/review-findings.md).

Each test is named after its finding and fails with the fix removed.
"""

from __future__ import annotations

import datetime as _dt
import stat
from pathlib import Path

import pydantic
import pytest

from coordinator.output import write_output as _write_output
from databases.source import DatabaseSource

AS_OF = _dt.date(2026, 11, 29)


def test_report_and_decisions_json_are_mode_0600(tmp_path: Path) -> None:
    """Finding: a round wrote report.html and decisions.json with mode 0644 (umask), though
    both list children by identity number; evidence.csv, names.csv and the xlsx were 0600."""
    out = tmp_path / "round-1"
    _write_output(
        out,
        round_id="0" * 32,
        evidence=[],
        document={"round_id": "0" * 32, "decisions": [{"child_id": "x"}]},
        report="<html></html>",
    )
    for name in ("decisions.json", "report.html", "evidence.csv"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    assert (out / "report.html").read_text(encoding="utf-8") == "<html></html>"
    assert '"decisions": [\n  {"child_id": "x"}\n ]' in (out / "decisions.json").read_text()


def test_undecodable_csv_gives_the_same_line_from_every_entry_point(tmp_path: Path) -> None:
    """Finding: the "open a CSV source as UTF-8" block was written four times in
    nodes/matchsets.py; count_source_rows's copy dropped the byte offset. One helper now."""
    import pytest

    from nodes.config import load_node_config
    from nodes.matchsets import count_source_rows, prepare_file, stream_match_set
    from psi.errors import ConfigError

    for rel in ("ca.crt", "n.crt", "n.key"):
        (tmp_path / rel).write_text("x")
    (tmp_path / "custody.csv").write_bytes(b"id_number\n150802\x81\x2019800101\n")
    (tmp_path / "node.toml").write_text(
        """
[node]
name = "justice"
listen = "127.0.0.1:50061"
ca = "ca.crt"
cert = "n.crt"
key = "n.key"
audit_log = "audit.jsonl"

[[match_sets]]
name = "custody"
circumstance = "IMPRISONED"
source = "custody.csv"
encoding = "gb18030"
id_column = "id_number"
protocols = ["keyed-hash"]
allow = [{ requester = "civil-affairs", purposes = ["eligibility-review"] }]
""",
        encoding="utf-8",
    )
    cfg = load_node_config(tmp_path / "node.toml")
    messages = []
    for call in (
        lambda: count_source_rows(cfg, "custody"),
        lambda: prepare_file(cfg, "custody", (0, 0)),
        lambda: list(stream_match_set(cfg, "custody", AS_OF)),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        messages.append(str(info.value))
    assert len(set(messages)) == 1, messages
    assert "not valid gb18030 text (byte offset about 16)" in messages[0]
    assert "match_sets[0]" in messages[0] and "\n" not in messages[0]


def test_formats_md_examples_are_valid_input() -> None:
    """Finding: every identity number in docs/formats.md's examples had a wrong check
    character, so a newcomer who copied the roster example got a warning per row, and the
    evidence example was refused outright. The examples must parse cleanly."""
    import re

    from coordinator.records import read_evidence, read_roster
    from psi.identifiers import check_character

    text = (Path(__file__).parent.parent / "docs" / "formats.md").read_text(encoding="utf-8")
    numbers = set(re.findall(r"(?<![0-9])[0-9]{17}[0-9X](?![0-9])", text))
    assert numbers and {n for n in numbers if n[:17] + check_character(n[:17]) != n} == set()
    blocks = re.findall(r"```csv\n(.*?)```", text, re.S)
    kinds = {b.split(",", 1)[0]: b for b in blocks}
    assert {"child_id", "person_id"} <= set(kinds), list(kinds)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        roster = Path(folder) / "roster.csv"
        roster.write_text(kinds["child_id"], encoding="utf-8")
        parsed = read_roster(roster, as_of=AS_OF)
        assert parsed.problems == [] and len(parsed.rows) == 3
        evidence = Path(folder) / "evidence.csv"
        evidence.write_text(kinds["person_id"], encoding="utf-8")
        assert len(read_evidence(evidence)) == 3


_POOL_SCRIPT = """
import os, signal, sys, threading, time
from types import SimpleNamespace
import coordinator.round as rnd

seen = {}
real = rnd.prepare_executor

def prepare(pool, workers):
    # a SIGINT while the workers start, with another thread running (the demo's log
    # readers, the progress display): it must reach us, not be dropped while ignored
    if sys.argv[1] == "kill":
        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
    real(pool, workers)

rnd.prepare_executor = prepare
config = SimpleNamespace(
    nodes=[SimpleNamespace(protocol="ecdh")],
    coordinator=SimpleNamespace(ec_workers=1, x25519_backend="auto"),
)
try:
    with rnd._ec_pool(config) as pool:
        ignored = pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
        print("worker-ignores-sigint" if ignored else "worker-takes-sigint")
        time.sleep(1)
    print("no-interrupt")
except KeyboardInterrupt:
    print("delivered")
"""


def test_ctrl_c_while_ecdh_workers_start_is_not_lost(tmp_path: Path) -> None:
    """Finding: the coordinator ignored SIGINT for the whole worker warm-up (hundreds of
    ms, seconds under load); a Ctrl-C then went to another thread and was dropped, so
    `xmatch demo` carried on against nodes the same Ctrl-C had stopped, and wrote a round
    of 11 failed sources. Only the fork server's start is shielded now; the workers still
    ignore SIGINT (no worker tracebacks)."""
    import subprocess
    import sys

    def run(mode: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", _POOL_SCRIPT, mode],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).parent.parent,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout.split()

    assert run("kill") == ["delivered"]
    assert run("quiet") == ["worker-ignores-sigint", "no-interrupt"]


_DEMO_TYPO = """
import sys
from pathlib import Path
from xmatch import demo, synth

real = synth.write_configs

def write_configs(fed, *, ports):
    path = real(fed, ports=ports)
    text = path.read_text(encoding="utf-8")
    # a match-set name police does not offer: that sub-round fails, the rest answer
    path.write_text(text.replace('"deportations"]', '"deportations", "deportatoins"]', 1))
    return path

synth.write_configs = write_configs
sys.exit(demo.run_demo(workdir=Path(sys.argv[1]), children=200))
"""


def test_demo_with_a_failed_source_exits_3(tmp_path: Path) -> None:
    """Finding: `xmatch demo` always exited 0, even when every source failed (the
    nodes stopped by a Ctrl-C): a script could not tell it from success."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _DEMO_TYPO, str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert "failed source: police/deportatoins" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 3, done.stdout + done.stderr


@pytest.mark.parametrize(
    "query",
    [
        "SELECT id_number FROM custody INTO OUTFILE '/tmp/custody.txt'",
        "select id_number into  dumpfile '/tmp/x' from custody",
        "WITH c AS (SELECT id_number FROM custody) SELECT * FROM c INTO\nOUTFILE '/tmp/y'",
    ],
)
def test_a_select_that_writes_a_file_is_refused(query: str) -> None:
    """Finding: MySQL's SELECT ... INTO OUTFILE writes on the server despite READ ONLY."""
    with pytest.raises(pydantic.ValidationError, match="INTO OUTFILE/DUMPFILE writes a file"):
        DatabaseSource(database="mysql", dsn_env="JUSTICE_DB_DSN", query=query)
    # a column merely named like the keywords stays allowed
    DatabaseSource(database="mysql", dsn_env="JUSTICE_DB_DSN", query="SELECT outfile FROM t")
