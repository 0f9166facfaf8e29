"""Real rounds whose match sets and roster live in PostgreSQL.

Two nodes (police over keyed-hash with dated payload, justice over ecdh) run a
round from their CSV files, then from the same rows in PostgreSQL tables, with
the coordinator's roster in PostgreSQL too: the evidence and the decisions must
be identical. Then the server is stopped: the next round reports failed sources
(exit 3, REVIEW, never EXIT), and a node started now refuses to start with one
line. Nothing the node or the coordinator wrote may contain the password.
A second test kills the server while a node streams a set from it: the round
reports that set as failed and the node keeps serving.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import pytest

from tests import configs
from tests.configs import put
from tests.federation import (
    AS_OF,
    audit_entries,
    build_federation,
    coordinator_toml,
    free_ports,
    round_run,
    start_nodes,
    stop_nodes,
    wait_for,
    xmatch,
)
from xmatch import synth
from xmatch.localdb import load_csv, start_postgresql

pytestmark = pytest.mark.integration

SPECS = (
    synth.NodeSpec(
        "police",
        "keyed-hash",
        (
            synth.MatchSetSpec(
                "deaths",
                "DEAD",
                "data/police/deaths.csv",
                "id_number",
                "start_date <= $as_of",
                ("start_date",),
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
                "term_months >= 6 AND (end_date IS NULL OR end_date > $as_of)",
                ("start_date", "end_date"),
            ),
        ),
    ),
)
ROSTER_TEXT = ["child_id", "father_id", "mother_id", "child_name", "region_code"]


def to_database(root: Path, dsn_file: Path) -> None:
    """Point every match set of the node configs at its table (``dsn_file``)."""
    for spec in SPECS:
        path = root / f"{spec.name}.node.toml"
        doc = configs.read(path)
        edits = []
        for ms in spec.match_sets:
            entry = configs.entry(doc, "match_sets", ms.name)
            assert configs.get(doc, f"{entry}.source") == ms.source
            table = ms.source.removeprefix("data/").removesuffix(".csv").replace("/", "_")
            source = {"database": "postgresql", "dsn_file": dsn_file.name, "table": table}
            edits.append(put(f"{entry}.source", source))
        configs.write(path, configs.apply(doc, *edits))


def everything_written(root: Path) -> bytes:
    """Every file under ``root`` except the DSN file (the input that holds the password)."""
    return b"\n".join(
        p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".dsn"
    )


def test_rounds_from_postgresql_equal_rounds_from_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_postgresql()
    fed = build_federation(tmp_path / "fed", specs=SPECS, children=90)
    root = fed.root
    # justice streams its set and splits it into ecdh buckets (the paths of a 20M set)
    configs.edit_file(
        fed.config("justice"), put("node.stream_rows", 50), put("node.bucket_rows", 20)
    )
    try:
        # (1) the CSV round
        csv_config = coordinator_toml(fed, "csv.toml")
        start_nodes(fed)
        done = round_run(csv_config, root / "out-csv", as_of=AS_OF)
        assert done.returncode == 0, done.stderr
        stop_nodes(fed.nodes)
        fed.nodes.clear()
        # (2) the same rows in PostgreSQL, read through a 0600 dsn_file and dsn_env
        for spec in SPECS:
            for ms in spec.match_sets:
                table = ms.source.removeprefix("data/").removesuffix(".csv").replace("/", "_")
                load_csv(server, root / ms.source, table, text_columns=["id_number"])
        load_csv(server, root / "data" / "roster.csv", "roster", text_columns=ROSTER_TEXT)
        dsn_file = root / "police.dsn"
        dsn_file.write_text(server.dsn() + "\n")
        dsn_file.chmod(0o600)
        to_database(root, dsn_file)
        monkeypatch.setenv("CIVIL_DB_DSN", server.dsn())
        db_config = coordinator_toml(
            fed,
            "db.toml",
            coordinator={
                "roster": {"database": "postgresql", "dsn_env": "CIVIL_DB_DSN", "table": "roster"}
            },
        )
        start_nodes(fed)
        done = round_run(db_config, root / "out-db", as_of=AS_OF)
        assert done.returncode == 0, done.stderr
        outputs = [done.stdout, done.stderr]
        csv_evidence = (root / "out-csv" / "evidence.csv").read_text(encoding="utf-8")
        db_evidence = (root / "out-db" / "evidence.csv").read_text(encoding="utf-8")
        assert db_evidence == csv_evidence and csv_evidence.count("\n") > 5
        decisions = [
            json.loads((root / o / "decisions.json").read_text(encoding="utf-8"))
            for o in ("out-csv", "out-db")
        ]
        assert decisions[0]["decisions"] == decisions[1]["decisions"]
        justice_log = (root / "logs" / "justice.audit.jsonl").read_text(encoding="utf-8")
        # two entries (start, end) per bucketed round: both rounds used the buckets
        assert justice_log.count('"buckets":') >= 4
        # (3) the database goes away. The roster lives there too: that round stops at
        # once, with one line; a round with roster.csv gets failed sources, never EXIT,
        # and the nodes keep running.
        server.stop()
        done = round_run(db_config, root / "out-down-db", as_of=AS_OF)
        outputs += [done.stdout, done.stderr]
        assert done.returncode not in (0, 3)
        assert "roster (postgresql table roster): cannot connect" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        done = round_run(csv_config, root / "out-down", as_of=AS_OF)
        outputs += [done.stdout, done.stderr]
        assert done.returncode == 3, done.stderr  # failed sources: a partial round
        down = json.loads((root / "out-down" / "decisions.json").read_text(encoding="utf-8"))
        assert set(down["failed_sources"]) == {
            "police/deaths",
            "police/lost_contact",
            "justice/custody",
        }
        # a failed source never makes an EXIT: what changed became REVIEW
        before = {d["child_id"] or d["child_name"]: d for d in decisions[0]["decisions"]}
        changed = [d for d in down["decisions"] if d != before[d["child_id"] or d["child_name"]]]
        assert changed and all(d["decision"] == "REVIEW" for d in changed)
        audit = (root / "logs" / "police.audit.jsonl").read_text(encoding="utf-8")
        assert "cannot connect to the postgresql server" in audit  # the operator sees why
        assert all(n.process.poll() is None for n in fed.nodes)
        stop_nodes(fed.nodes)
        # (4) a node does not start while its database is unreachable: one line
        started = xmatch("node", "serve", "--config", str(fed.config("police")), cwd=root)
        outputs += [started.stdout, started.stderr]
        assert started.returncode != 0
        lines = started.stderr.strip().splitlines()
        assert len(lines) == 1, started.stderr
        assert "match_sets[0] ('deaths')" in lines[0] and "cannot connect" in lines[0]
        assert "Traceback" not in started.stderr
    finally:
        stop_nodes(fed.nodes)
        server.stop()
    # (5) zero credentials in anything written
    secret = server.password.encode()
    assert secret not in everything_written(root)
    assert all(server.password not in text for text in outputs)
    assert os.environ["CIVIL_DB_DSN"].encode() not in everything_written(root)


def test_the_server_dying_mid_stream_is_a_failed_source(tmp_path: Path) -> None:
    """A streamed keyed-hash set: the server is killed while the node reads it."""
    deaths = SPECS[0].match_sets[0]
    specs = (
        synth.NodeSpec(
            "police",
            "keyed-hash",
            (
                synth.MatchSetSpec(
                    "deaths",
                    "DEAD",
                    deaths.source,
                    "id_number",
                    # the server sleeps at row 20000, so the test can kill it mid-stream
                    "start_date <= $as_of AND pg_sleep(CASE WHEN n = 20000 THEN 60 ELSE 0 END) "
                    "IS NOT NULL",
                    ("start_date",),
                ),
            ),
        ),
    )
    server = start_postgresql()
    fed = build_federation(tmp_path / "fed", specs=specs, children=60)
    root = fed.root
    try:
        load_csv(server, root / deaths.source, "deaths", text_columns=["id_number"])
        with adbc.connect(server.dsn()) as con:
            with con.cursor() as cur:
                cur.execute(
                    "INSERT INTO deaths (id_number, start_date) SELECT '15080219800101' || "
                    "lpad(g::text, 4, '0'), DATE '2020-01-01' FROM generate_series(1, 30000) g"
                )
                cur.execute("ALTER TABLE deaths ADD COLUMN n serial")
            con.commit()
        dsn_file = root / "police.dsn"
        dsn_file.write_text(server.dsn() + "\n")
        dsn_file.chmod(0o600)
        config = fed.config("police")
        entry = configs.entry(configs.read(config), "match_sets", deaths.name)
        source = {"database": "postgresql", "dsn_file": "police.dsn", "table": "deaths"}
        # stream the set (above stream_rows); startup reads it once, without the sleep row
        configs.edit_file(config, put(f"{entry}.source", source), put("node.stream_rows", 1000))
        with adbc.connect(server.dsn()) as con:
            with con.cursor() as cur:
                cur.execute("UPDATE deaths SET n = n + 1000000")  # no row 20000 at startup
            con.commit()
        start_nodes(fed)
        with adbc.connect(server.dsn()) as con:
            with con.cursor() as cur:
                cur.execute("UPDATE deaths SET n = n - 1000000")
            con.commit()
        coordinator = coordinator_toml(fed, "coordinator.toml")
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xmatch",
                "round",
                "run",
                "--config",
                str(coordinator),
                "--as-of",
                AS_OF.isoformat(),
                "--out",
                str(root / "out"),
                "-q",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def sleeping() -> bool:
            with adbc.connect(server.dsn()) as con, con.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
                row = cur.fetchone()
            return bool(row and row[0])

        wait_for("the node's query to reach the sleeping row", sleeping, timeout=60)
        server.kill()
        out, err = run.communicate(timeout=120)
        assert run.returncode == 3, err  # a failed source: partial, never 0
        decisions = json.loads((root / "out" / "decisions.json").read_text(encoding="utf-8"))
        assert decisions["failed_sources"] == ["police/deaths"]
        assert all(n.process.poll() is None for n in fed.nodes)  # the node survived
        audit = (root / "logs" / "police.audit.jsonl").read_text(encoding="utf-8")
        assert "was lost" in audit
        assert server.password not in out + err
    finally:
        stop_nodes(fed.nodes)
        server.stop()
    assert server.password.encode() not in everything_written(root)


def test_an_offline_answer_while_the_database_is_down_does_not_use_up_the_request(
    tmp_path: Path,
) -> None:
    """``node answer`` with the department's database unreachable used to write a
    response with the set failed, and log it written: the request was used up ("answered
    before") although nothing was answered. Now nothing is written, the attempt is logged
    as failed, and a retry once the database is back answers it (and only once)."""
    from tests.test_offline import _offline_toml

    custody = SPECS[1].match_sets[0]
    server = start_postgresql()
    fed = build_federation(tmp_path / "fed", specs=SPECS, children=60)
    root = fed.root
    try:
        load_csv(server, root / custody.source, "justice_custody", text_columns=["id_number"])
        dsn_file = root / "justice.dsn"
        down = server.dsn().replace(f":{server.port}/", f":{free_ports(1)[0]}/")
        dsn_file.write_text(down + "\n")
        dsn_file.chmod(0o600)
        to_database(root, dsn_file)
        config = _offline_toml(fed, "offline.toml", ("justice",), specs=(SPECS[1],))
        run = round_run(config, root / "out", as_of=AS_OF)
        assert run.returncode == 4, run.stderr
        request = root / "out" / "offline" / "justice.request"
        response = root / "justice.response"

        def answer() -> subprocess.CompletedProcess[str]:
            return xmatch(
                "node", "answer", "--config", str(fed.config("justice")),
                "--request", str(request), "--out", str(response),
            )  # fmt: skip

        first = answer()
        assert first.returncode == 1, first.stdout + first.stderr
        assert first.stderr.count("\n") == 1 and "not answered: justice/custody" in first.stderr
        assert "the request is not used up" in first.stderr
        assert "cannot connect" in first.stdout, first.stdout  # the operator sees why
        assert not response.exists()
        failed = [
            e for e in audit_entries(fed.audit_log("justice")) if e["event"] == "offline_file"
        ][-1]
        assert (failed["kind"], failed["action"], failed["reason"]) == (
            "request",
            "failed",
            "source failed",
        )
        # the database is back: the same request is answered
        dsn_file.write_text(server.dsn() + "\n")
        again = answer()
        assert again.returncode == 0, again.stderr
        assert "justice/custody: ok" in again.stdout and response.is_file()
        # and only once: the replay protection holds for an answered request
        third = xmatch(
            "node", "answer", "--config", str(fed.config("justice")),
            "--request", str(request), "--out", str(root / "third.response"),
        )  # fmt: skip
        assert third.returncode == 1 and "answered before" in third.stderr, third.stderr
        imported = xmatch("round", "import", "--config", str(config), "--response", str(response))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        # the failed attempt and the answered one reconcile: no "round id reused"
        reconcile = xmatch(
            "audit", "reconcile", "--allow-unsigned-tail", "--ca", str(root / "pki" / "ca.crt"),
            str(fed.audit_log("civil-affairs")), str(fed.audit_log("justice")),
        )  # fmt: skip
        assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
        outputs = first.stdout + first.stderr + again.stdout + again.stderr
        assert server.password not in outputs
    finally:
        server.stop()
    assert server.password.encode() not in everything_written(root)
