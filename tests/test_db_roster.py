"""The coordinator's roster from the civil-affairs database (a real PostgreSQL server).

The same rows as roster.csv give the same roster; the column contract and the
one-line errors are roster.csv's, with the row number in place of the line.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import pytest

from coordinator.config import load_coordinator_config
from coordinator.records import read_roster, read_roster_database, read_roster_source
from databases import DatabaseError, DatabaseSource
from psi.errors import ConfigError, InputError
from tests.dbservers import table_name
from xmatch import synth
from xmatch.localdb import LocalServer, load_csv

AS_OF = _dt.date(2026, 11, 29)
ID_COLUMNS = ["child_id", "father_id", "mother_id"]


@pytest.fixture(scope="module")
def roster_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("roster")
    synth.generate(root, children=80, seed=5, as_of=AS_OF)
    return root / "data" / "roster.csv"


def source(monkeypatch: pytest.MonkeyPatch, server: LocalServer, table: str) -> DatabaseSource:
    monkeypatch.setenv("CIVIL_DB_DSN", server.dsn())
    return DatabaseSource(database="postgresql", dsn_env="CIVIL_DB_DSN", table=table)


def pg(server: LocalServer, *statements: str) -> None:
    with adbc.connect(server.dsn()) as con:
        with con.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
        con.commit()


def test_the_database_roster_equals_roster_csv(
    roster_csv: Path, postgresql_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = table_name("roster")
    text = ["child_id", "father_id", "mother_id", "child_name", "region_code"]
    load_csv(postgresql_server, roster_csv, table, text_columns=text)
    from_csv = read_roster(roster_csv, as_of=AS_OF)
    from_db = read_roster_database(
        source(monkeypatch, postgresql_server, table), as_of=AS_OF, label="coordinator.toml"
    )
    assert len(from_db.rows) == len(from_csv.rows) == 80
    assert from_db.problems  # the synthetic roster has invalid numbers; both see them
    for a, b in zip(from_db.rows, from_csv.rows, strict=True):
        assert a.line == b.line - 1  # row 1 is the file's line 2
        assert a._replace(line=0, problems=()) == b._replace(line=0, problems=())
        assert [(p.column, p.message) for p in a.problems] == [
            (p.column, p.message) for p in b.problems
        ]
    assert from_db.path == f"coordinator.toml ({'postgresql table ' + table})"


def test_missing_required_column(
    postgresql_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = table_name("roster_nostatus")
    pg(postgresql_server, f"CREATE TABLE {table} (child_id text, child_name text)")
    with pytest.raises(InputError) as info:
        read_roster_database(source(monkeypatch, postgresql_server, table), label="c.toml")
    assert str(info.value) == (f"c.toml (postgresql table {table}): missing required column status")


def test_an_id_stored_as_a_number_is_refused(
    postgresql_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = table_name("roster_bigint")
    pg(
        postgresql_server,
        f"CREATE TABLE {table} (child_id bigint, child_name text, status text, category text, "
        "father_id text, mother_id text)",
    )
    with pytest.raises(DatabaseError) as info:
        read_roster_database(source(monkeypatch, postgresql_server, table), label="c.toml")
    assert info.value.reason == "type"
    assert "column child_id is int8 in the database" in str(info.value)


def test_a_bad_cell_names_the_row(
    postgresql_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = table_name("roster_bad")
    pg(
        postgresql_server,
        f"CREATE TABLE {table} (child_id text, child_name text, status text, category text, "
        "father_id text, mother_id text)",
        f"INSERT INTO {table} (child_id, child_name, status, category) "
        "VALUES ('150802201503150021', 'A', 'supported', 'orphan'), "
        "('150802201503150021', 'B', 'maybe', NULL)",
    )
    with pytest.raises(InputError) as info:
        read_roster_database(source(monkeypatch, postgresql_server, table), label="c.toml")
    assert str(info.value) == (
        f"c.toml (postgresql table {table}):2: column status: unknown value "
        "(expected one of supported, candidate)"
    )


def test_unreachable_roster_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVIL_DB_DSN", "postgresql://civil:Secr3t-roster@127.0.0.1:1/civil")
    src = DatabaseSource(database="postgresql", dsn_env="CIVIL_DB_DSN", table="roster")
    with pytest.raises(DatabaseError) as info:
        read_roster_source(src, label="coordinator.toml: roster")
    assert info.value.reason == "connect"
    assert str(info.value).startswith("coordinator.toml: roster (postgresql table roster): ")
    assert "Secr3t" not in str(info.value)


def test_coordinator_toml_takes_an_inline_table(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    body = """
[coordinator]
name = "civil-affairs"
ca = "pki/ca.crt"
cert = "pki/c.crt"
key = "pki/c.key"
audit_log = "logs/c.jsonl"
state = "state/c.sqlite"
roster = {{ database = "mysql", dsn_file = "secrets/civil.dsn", query = "{query}" }}
purpose = "eligibility-review"

[[nodes]]
name = "justice"
address = "127.0.0.1:50061"
match_sets = ["custody"]
protocol = "ecdh"
"""
    path.write_text(body.format(query="SELECT * FROM civil.roster ORDER BY child_id"))
    roster = load_coordinator_config(path).coordinator.roster
    assert isinstance(roster, DatabaseSource)
    assert roster.dsn_file == tmp_path / "secrets" / "civil.dsn"
    path.write_text(body.format(query="UPDATE civil.roster SET status = 1"))
    with pytest.raises(ConfigError, match="roster: query: must be a SELECT"):
        load_coordinator_config(path)
