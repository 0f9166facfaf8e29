"""Match sets read from real PostgreSQL and MariaDB servers (tests/dbservers.py).

The same rows as a CSV file must give exactly the same loaded set; ``where``
runs in the database with ``$as_of`` bound; the connection is read-only and
bounded by a statement timeout; every failure is one line naming the match set
and never the password.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import mysql.connector
import numpy as np
import pytest

from databases import DatabaseError, DatabaseSource, Dsn, open_session
from nodes import matchset_rows, matchsets
from nodes.config import NodeConfig, load_node_config
from nodes.matchsets import LoadedMatchSet, MatchSetStore, load_match_set, stream_match_set
from psi.errors import ConfigError
from psi.identifiers import check_character
from tests.dbservers import table_name
from xmatch.localdb import LocalServer, load_csv, start_postgresql

AS_OF = _dt.date(2026, 11, 29)
WHERE = "term_months >= 6 AND start_date <= $as_of AND (end_date IS NULL OR end_date > $as_of)"


def ident(body17: str) -> str:
    return body17 + check_character(body17)


A = ident("15080219800101001")
B = ident("15020119751231002")
C = ident("15290219900615003")
X_ID = next(
    ident(f"150802198001010{n:02d}")
    for n in range(100)
    if ident(f"150802198001010{n:02d}").endswith("X")
)
OLD15 = "150802800101011"
# born 2026-11-30: in the future on AS_OF, not a day later
LATE = ident("15080220261130001")
CUSTODY = [
    "id_number,name,term_months,start_date,end_date",
    f"{A},张三,12,2025-02-01,2029-02-01",
    f"{B},李四,3,2026-01-01,2026-04-01",  # term too short
    f"{C},王五,24,2020-01-01,2026-10-10",  # released before AS_OF
    f"{X_ID.lower()},巴特尔,8,2026-06-01,",  # open end, lower-case x
    f"{OLD15},赵六,60,2024-01-01,2030-01-01",  # 15-digit number
    f"{A[:-1]}{'0' if A[-1] != '0' else '1'},钱七,60,2024-01-01,",  # bad check character
    f" {B[:6]} {B[6:]} ,孙八,9,2026-11-01,2027-11-01",  # spaces inside
    f"{LATE},周九,12,2026-11-01,",  # born after AS_OF
]


def write_node_toml(tmp_path: Path, source: str, *, where: str | None = WHERE) -> Path:
    for rel in ("ca.crt", "n.crt", "n.key"):
        (tmp_path / rel).write_text("x")
    where_line = f"where = {json.dumps(where)}\n" if where else ""
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
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
source = {source}
id_column = "id_number"
{where_line}payload = ["start_date", "end_date"]
protocols = ["keyed-hash"]
allow = [{{ requester = "civil-affairs", purposes = ["eligibility-review"] }}]
""",
        encoding="utf-8",
    )
    return path


def db_config(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: LocalServer,
    table: str,
    *,
    where: str | None = WHERE,
    extra: str = "",
    password: str | None = None,
) -> NodeConfig:
    monkeypatch.setenv("JUSTICE_DB_DSN", server.dsn(password=password))
    engine = "postgresql" if server.engine == "postgresql" else "mysql"
    source = f'{{ database = "{engine}", dsn_env = "JUSTICE_DB_DSN", table = "{table}"{extra} }}'
    return load_node_config(write_node_toml(tmp_path, source, where=where))


def csv_config(tmp_path: Path, rows: list[str], *, where: str | None = WHERE) -> NodeConfig:
    (tmp_path / "custody.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return load_node_config(write_node_toml(tmp_path, '"custody.csv"', where=where))


def same(a: LoadedMatchSet, b: LoadedMatchSet) -> None:
    assert a.identities.tobytes() == b.identities.tobytes()
    assert set(a.payload) == set(b.payload)
    for col in a.payload:
        assert a.payload[col].tolist() == b.payload[col].tolist(), col
    assert a.rejected == b.rejected
    assert a.rows_selected == b.rows_selected


def pg_execute(server: LocalServer, *statements: str) -> None:
    with adbc.connect(server.dsn()) as con:
        with con.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
        con.commit()


def my_execute(server: LocalServer, *statements: str) -> None:
    con = mysql.connector.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=server.database,
        use_pure=True,
    )
    try:
        cur = con.cursor()
        for sql in statements:
            cur.execute(sql)
        con.commit()
    finally:
        con.close()


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request: pytest.FixtureRequest) -> LocalServer:
    server: LocalServer = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture
def custody(tmp_path: Path, server: LocalServer) -> str:
    """The CUSTODY rows as a table of ``server``."""
    return custody_table(tmp_path, server)


def custody_table(tmp_path: Path, server: LocalServer) -> str:
    """The CUSTODY rows as a new table of ``server``."""
    csv = tmp_path / "load.csv"
    csv.write_text("\n".join(CUSTODY) + "\n", encoding="utf-8")
    table = table_name("custody")
    assert load_csv(server, csv, table, text_columns=["id_number"]) == len(CUSTODY) - 1
    return table


# --- the same rows give the same set ---------------------------------------------------------


def test_a_table_gives_exactly_what_the_csv_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: LocalServer, custody: str
) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "csv").mkdir()
    from_db = db_config(tmp_path / "db", monkeypatch, server, custody)
    from_csv = csv_config(tmp_path / "csv", CUSTODY)
    for day in (AS_OF, AS_OF + _dt.timedelta(days=1), _dt.date(2026, 3, 1)):
        db_set = load_match_set(from_db, "custody", day)
        same(db_set, load_match_set(from_csv, "custody", day))
    # $as_of is really bound: the three dates select different rows
    sizes = {len(load_match_set(from_db, "custody", d)) for d in (AS_OF, _dt.date(2026, 3, 1))}
    assert len(sizes) == 2
    first = load_match_set(from_db, "custody", AS_OF)
    assert first.rejected == {"check": 1, "future_birth_date": 1}
    assert len(first) == 4  # A, X (open end), the 15-digit number, B with spaces


def test_streamed_batches_equal_the_full_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: LocalServer, custody: str
) -> None:
    cfg = db_config(tmp_path, monkeypatch, server, custody)
    full = load_match_set(cfg, "custody", AS_OF)
    summary = matchsets.StreamSummary()
    batches = list(stream_match_set(cfg, "custody", AS_OF, batch_rows=2, summary=summary))
    assert len(batches) >= 2
    ids = np.concatenate([b.identities for b in batches])
    assert ids.tobytes() == full.identities.tobytes()
    assert [b.offset for b in batches] == list(np.cumsum([0, *map(len, batches)])[:-1])
    assert summary.kept == len(full) and dict(summary.rejected) == full.rejected


def test_as_of_is_bound_never_formatted(server: LocalServer) -> None:
    engine = "postgresql" if server.engine == "postgresql" else "mysql"
    os.environ["XM_TEST_DSN"] = server.dsn()
    try:
        source = DatabaseSource(database=engine, dsn_env="XM_TEST_DSN", table="t")  # type: ignore[arg-type]
        with open_session(source) as session:
            sql, params = session.bind_as_of(
                session.select(["a"], "d > $as_of OR e < $as_of"), AS_OF
            )
    finally:
        del os.environ["XM_TEST_DSN"]
    assert "$as_of" not in sql and "2026" not in sql and "11" not in sql.replace("xm_", "")
    if engine == "postgresql":
        assert "current_setting('xmatch.as_of')" in sql and params == AS_OF
    else:
        assert sql.count("?") == 2 and params == (AS_OF, AS_OF)


# --- read-only, timeout ----------------------------------------------------------------------


def test_a_query_that_writes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: LocalServer, custody: str
) -> None:
    log = table_name("writes")
    if server.engine == "postgresql":
        pg_execute(
            server,
            f"CREATE TABLE {log} (n int)",
            f"CREATE FUNCTION {log}_f() RETURNS int LANGUAGE sql VOLATILE AS "
            f"'INSERT INTO {log} VALUES (1) RETURNING n'",
        )
    else:
        my_execute(
            server,
            f"CREATE TABLE {log} (n int)",
            f"CREATE FUNCTION {log}_f() RETURNS INT MODIFIES SQL DATA "
            f"BEGIN INSERT INTO {log} VALUES (1); RETURN 1; END",
        )
    cfg = db_config(tmp_path, monkeypatch, server, custody, where=f"{log}_f() = 1")
    with pytest.raises(DatabaseError) as info:
        load_match_set(cfg, "custody", AS_OF)
    assert info.value.reason == "read_only"
    assert "read-only" in str(info.value) and "\n" not in str(info.value)
    # nothing was written
    src = DatabaseSource(
        database="postgresql" if server.engine == "postgresql" else "mysql",
        dsn_env="JUSTICE_DB_DSN",
        table=log,
    )
    with open_session(src) as session:
        assert session.fetch_row(f"SELECT count(*) FROM {log}")[0] == 0


def test_the_statement_timeout_cancels_a_slow_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: LocalServer, custody: str
) -> None:
    sleep = "pg_sleep(5) IS NOT NULL" if server.engine == "postgresql" else "SLEEP(5) = 0"
    cfg = db_config(
        tmp_path, monkeypatch, server, custody, where=sleep, extra=", timeout_seconds = 0.5"
    )
    with pytest.raises(DatabaseError) as info:
        load_match_set(cfg, "custody", AS_OF)
    assert info.value.reason == "timeout", str(info.value)
    assert "timeout_seconds" in str(info.value)


# --- bad input: one line naming the match set ------------------------------------------------


def expect_one_line(exc: BaseException, password: str, *needles: str) -> None:
    text = str(exc)
    assert "\n" not in text
    assert text.startswith(f"{Path('node.toml').name}") or "match_sets[0] ('custody')" in text
    assert "match_sets[0] ('custody')" in text
    assert password not in text and password not in repr(exc.args)
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    for needle in needles:
        assert needle in text, text


def test_unreachable_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: LocalServer
) -> None:
    closed = LocalServer(server.engine, server.port, server.password, tmp_path, server.process)
    closed.port = 1
    cfg = db_config(tmp_path, monkeypatch, closed, "custody")
    with pytest.raises(DatabaseError) as info:
        load_match_set(cfg, "custody", AS_OF)
    assert info.value.reason == "connect"
    expect_one_line(info.value, server.password, "cannot connect", "127.0.0.1:1/xmatch")


def test_authentication_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: LocalServer, custody: str
) -> None:
    wrong = "Wr0ng-" + server.password[::-1]
    cfg = db_config(tmp_path, monkeypatch, server, custody, password=wrong)
    with pytest.raises(DatabaseError) as info:
        load_match_set(cfg, "custody", AS_OF)
    assert info.value.reason == "auth"
    expect_one_line(info.value, wrong, "authentication failed", "dsn_env JUSTICE_DB_DSN")


@pytest.mark.parametrize(
    ("columns", "reason", "needle"),
    [
        (None, "missing", "custody_missing"),  # the table does not exist
        ("id_number TEXT, start_date DATE, term_months INT", "missing", "end_date"),
        ("id_number TEXT, start_date TEXT, end_date DATE, term_months INT", "type", "start_date"),
        ("id_number BIGINT, start_date DATE, end_date DATE, term_months INT", "type", "id_column"),
        (
            "id_number DECIMAL(18,0), start_date DATE, end_date DATE, term_months INT",
            "type",
            "as text",
        ),
    ],
    ids=["no-table", "no-column", "date-as-text", "id-as-bigint", "id-as-decimal"],
)
def test_missing_or_mistyped(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: LocalServer,
    columns: str | None,
    reason: str,
    needle: str,
) -> None:
    table = "custody_missing" if columns is None else table_name("typed")
    if columns is not None:
        run = pg_execute if server.engine == "postgresql" else my_execute
        run(server, f"CREATE TABLE {table} ({columns})")
    cfg = db_config(tmp_path, monkeypatch, server, table)
    with pytest.raises(DatabaseError) as info:
        load_match_set(cfg, "custody", AS_OF)
    assert info.value.reason == reason, str(info.value)
    expect_one_line(info.value, server.password, needle)


def test_server_dies_in_the_middle_of_a_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed = start_postgresql()
    try:
        table = "big"
        pg_execute(
            doomed,
            f"CREATE TABLE {table} AS SELECT '150802198001010011' AS id_number, "
            "DATE '2020-01-01' AS start_date, CAST(NULL AS date) AS end_date, 12 AS term_months "
            "FROM generate_series(1, 400000)",
        )
        cfg = db_config(tmp_path, monkeypatch, doomed, table)
        stream = stream_match_set(cfg, "custody", AS_OF, batch_rows=1024)
        next(stream)
        doomed.kill()
        with pytest.raises(DatabaseError) as info:
            for _ in stream:
                pass
        assert info.value.reason == "lost", str(info.value)
        expect_one_line(info.value, doomed.password, "connection", "lost")
    finally:
        doomed.stop()


# --- driver errors: a plain reason a DBA understands ------------------------------------------

#: a Python exception type name (OperationalError, OSError, NotSupportedError, …)
PY_TYPE = re.compile(r"\b[A-Z]\w*(?:Error|Exception)\b")


def config_with_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str, source: str, where: str | None
) -> NodeConfig:
    """A node.toml whose match set reads ``source`` (``table = …`` or ``query = …``)."""
    monkeypatch.setenv("JUSTICE_DB_DSN", dsn)
    engine = "postgresql" if dsn.startswith("postgresql") else "mysql"
    inline = f'{{ database = "{engine}", dsn_env = "JUSTICE_DB_DSN", {source} }}'
    return load_node_config(write_node_toml(tmp_path, inline, where=where))


def expect_plain(exc: BaseException, password: str, *needles: str) -> None:
    expect_one_line(exc, password, *needles)
    assert PY_TYPE.search(str(exc)) is None, str(exc)


@pytest.mark.parametrize(
    ("dsn_change", "source", "where", "reason", "needle"),
    [
        ("/nosuchdb", "table = '{t}'", WHERE, "missing", 'database "nosuchdb" does not exist'),
        ("?sslmode=bogus", "table = '{t}'", WHERE, "dsn", "invalid DSN option sslmode"),
        (
            "",
            "query = 'WITH d AS (DELETE FROM {t} RETURNING *) SELECT * FROM d'",
            None,
            "read_only",
            "the statement tried to write, and the node's connection is read-only",
        ),
        (
            "",
            "table = '{t}'",
            "1 / (extract(day FROM start_date)::int - 1) > 0",
            "data",
            "where: division by zero",
        ),
    ],
    ids=["no-such-database", "bad-dsn-option", "data-modifying-with", "division-by-zero"],
)
def test_postgresql_errors_are_plain(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    postgresql_server: LocalServer,
    dsn_change: str,
    source: str,
    where: str | None,
    reason: str,
    needle: str,
) -> None:
    table = custody_table(tmp_path, postgresql_server)
    dsn = postgresql_server.dsn()
    if dsn_change.startswith("/"):
        dsn = dsn.rsplit("/", 1)[0] + dsn_change
    else:
        dsn += dsn_change
    cfg = config_with_source(tmp_path, monkeypatch, dsn, source.format(t=table), where)
    with pytest.raises(DatabaseError) as info:
        load_match_set(cfg, "custody", AS_OF)
    assert info.value.reason == reason, str(info.value)
    expect_plain(info.value, postgresql_server.password, needle)
    assert "bogus" not in str(info.value)  # a DSN option's value is never echoed
    # the data-modifying WITH deleted nothing
    monkeypatch.setenv("JUSTICE_DB_DSN", postgresql_server.dsn())
    with open_session(
        DatabaseSource(database="postgresql", dsn_env="JUSTICE_DB_DSN", table=table)
    ) as session:
        assert session.fetch_row(f"SELECT count(*) FROM {table}")[0] == len(CUSTODY) - 1


@pytest.fixture
def granted_account(tmp_path: Path, mariadb_server: LocalServer) -> tuple[str, str, str]:
    """(user, password, table): a MariaDB account that may SELECT one table only."""
    table = custody_table(tmp_path, mariadb_server)
    user, password = f"ro_{table}"[:32], "Ro-" + mariadb_server.password[::-1]
    my_execute(
        mariadb_server,
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
        f"GRANT SELECT ON xmatch.{table} TO '{user}'@'%'",
    )
    return user, password, table


@pytest.mark.parametrize(
    ("database", "table", "needle"),
    [
        (
            "xmatch",
            "custody_nosuch",
            "table `xmatch`.`custody_nosuch` does not exist or is not granted to this account",
        ),
        ("xmatch", "mysql.user", "table `mysql`.`user` does not exist or is not granted"),
        (
            "nosuchdb",
            None,
            "connect: no access to database nosuchdb: it does not exist or is "
            "not granted to this account",
        ),
    ],
    ids=["table-typo", "table-not-granted", "database-not-granted"],
)
def test_mariadb_refusals_name_what_is_not_granted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mariadb_server: LocalServer,
    granted_account: tuple[str, str, str],
    database: str,
    table: str | None,
    needle: str,
) -> None:
    user, password, granted = granted_account
    dsn = mariadb_server.dsn(user=user, password=password).rsplit("/", 1)[0] + f"/{database}"
    cfg = config_with_source(
        tmp_path, monkeypatch, dsn, f"table = '{table or granted}'", where=WHERE
    )
    with pytest.raises(DatabaseError) as info:
        load_match_set(cfg, "custody", AS_OF)
    assert info.value.reason == "missing", str(info.value)
    expect_plain(info.value, password, needle)
    assert "authentication" not in str(info.value) and user not in str(info.value)


@pytest.mark.parametrize(
    ("engine", "where", "needle"),
    [
        # a quoted identifier: PostgreSQL names the column it does not know
        (
            "postgresql",
            f'start_date <= $as_of AND id_number <> "{A}"',
            'column "<number withheld>"',
        ),
        # a syntax error: PostgreSQL quotes the token, MariaDB the rest of the statement
        (
            "postgresql",
            f"start_date <= $as_of AND id_number <> '{A}' '{X_ID}'",
            "<number withheld>",
        ),
        ("mariadb", f"start_date <== $as_of AND id_number <> '{A}'", "syntax"),
        ("mariadb", f"start_date <= $as_of AND `{X_ID}` = 1", "Unknown column '<number withheld>'"),
        ("mariadb", f"start_date <= $as_of AND `{A[:6]} {A[6:]}` = 1", "<number withheld>"),
    ],
    ids=["pg-column", "pg-syntax", "my-syntax", "my-column", "my-spaced-column"],
)
def test_an_identity_number_in_a_driver_message_is_masked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    engine: str,
    where: str,
    needle: str,
) -> None:
    server: LocalServer = request.getfixturevalue(f"{engine}_server")
    table = custody_table(tmp_path, server)
    cfg = db_config(tmp_path, monkeypatch, server, table, where=where)
    with pytest.raises(DatabaseError) as info:
        load_match_set(cfg, "custody", AS_OF)
    expect_plain(info.value, server.password, needle)
    text = str(info.value)
    digits = re.sub(r"\D", "", text)
    for number in (A, X_ID):
        assert number[:15] not in digits, text
    assert "<number withheld>" in text, text


# --- credentials -----------------------------------------------------------------------------


def test_dsn_file_must_be_private(tmp_path: Path, postgresql_server: LocalServer) -> None:
    dsn = tmp_path / "justice.dsn"
    dsn.write_text(postgresql_server.dsn() + "\n")
    source = '{ database = "postgresql", dsn_file = "justice.dsn", table = "custody" }'
    path = write_node_toml(tmp_path, source)
    dsn.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    text = str(info.value)
    assert "match_sets[0].source.dsn_file" in text and "0644" in text and "chmod 600" in text
    assert postgresql_server.password not in text
    dsn.chmod(0o600)
    cfg = load_node_config(path)
    assert cfg.match_sets[0].database is not None


def test_dsn_env_must_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_DSN", raising=False)
    source = '{ database = "mysql", dsn_env = "NO_SUCH_DSN", query = "SELECT * FROM x" }'
    with pytest.raises(ConfigError) as info:
        load_node_config(write_node_toml(tmp_path, source))
    # the key, not its value: a password typed there by mistake must not be printed
    message = str(info.value)
    assert "match_sets[0].source.dsn_env: the environment variable it names is not set" in message
    assert "NO_SUCH_DSN" not in message


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            '{ database = "postgresql", dsn_env = "X", table = "t", query = "SELECT 1" }',
            "exactly one of table",
        ),
        (
            '{ database = "postgresql", dsn_env = "X", dsn_file = "f", table = "t" }',
            "exactly one of dsn_env",
        ),
        ('{ database = "sqlite", dsn_env = "X", table = "t" }', "database"),
        (
            '{ database = "postgresql", dsn_env = "X", table = "t; DROP TABLE t" }',
            "not a table name",
        ),
        ('{ database = "postgresql", dsn_env = "X", query = "DELETE FROM t" }', "SELECT"),
        ('{ database = "postgresql", dsn_env = "X", query = "SELECT 1; SELECT 2" }', "';'"),
        ('{ database = "postgresql", dsn_env = "X", table = "t", password = "p" }', "unknown key"),
    ],
)
def test_source_table_is_checked(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_node_config(write_node_toml(tmp_path, source))


def test_dsn_is_never_shown() -> None:
    dsn = Dsn.parse(
        "postgresql://justice_ro:S3cret%21pw@db.example:5432/prison", engine="postgresql"
    )
    assert dsn.password == "S3cret!pw" and dsn.where == "db.example:5432/prison"
    assert "S3cret" not in repr(dsn) and "justice_ro" not in repr(dsn)
    whole = "postgresql://justice_ro:S3cret%21pw@db.example:5432/prison"
    assert dsn.redact(f"x {whole} y S3cret!pw") == "x *** y ***"
    assert dsn.redact("x postgresql://justice_ro:S3cret%21pw@db") == "x postgresql://***:***@db"
    with pytest.raises(ConfigError) as info:
        Dsn.parse("mysql://u:S3cret@h/db", engine="postgresql")
    assert "S3cret" not in str(info.value)


# --- the loaded-set cache --------------------------------------------------------------------


def test_cache_follows_the_change_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgresql_server: LocalServer
) -> None:
    table = table_name("changing")
    pg_execute(
        postgresql_server,
        f"CREATE TABLE {table} (id_number text, start_date date, end_date date, "
        "term_months int, updated_at timestamp)",
        f"INSERT INTO {table} VALUES ('{A}', DATE '2025-01-01', NULL, 12, TIMESTAMP '2026-01-01')",
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cached = db_config(
        tmp_path / "a",
        monkeypatch,
        postgresql_server,
        table,
        extra=', change_column = "updated_at"',
    )
    uncached = db_config(
        tmp_path / "b",
        monkeypatch,
        postgresql_server,
        table,
    )
    with_stamp, without = MatchSetStore(cached), MatchSetStore(uncached)
    first = with_stamp.get("custody", AS_OF)
    assert with_stamp.get("custody", AS_OF) is first  # unchanged table: cached
    plain = without.get("custody", AS_OF)
    assert without.get("custody", AS_OF) is not plain  # no change column: read every time
    pg_execute(
        postgresql_server,
        f"INSERT INTO {table} VALUES ('{C}', DATE '2025-01-01', NULL, 12, TIMESTAMP '2026-02-01')",
    )
    second = with_stamp.get("custody", AS_OF)
    assert second is not first and len(second) == 2 == len(without.get("custody", AS_OF))
    pg_execute(postgresql_server, f"UPDATE {table} SET term_months = 1, updated_at = now()")
    assert len(with_stamp.get("custody", AS_OF)) == 0  # an update moves max(updated_at)


def test_a_csv_is_parsed_once_for_every_as_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = csv_config(tmp_path, CUSTODY)
    calls: list[str] = []
    real = matchsets.prepare_file

    def counting(config: NodeConfig, name: str, version: tuple[int, int]) -> object:
        calls.append(name)
        return real(config, name, version)

    monkeypatch.setattr(matchsets, "prepare_file", counting)
    store = MatchSetStore(cfg)
    days = [AS_OF, AS_OF + _dt.timedelta(days=1), _dt.date(2026, 3, 1), _dt.date(2027, 1, 1)]
    for day in days:
        same(store.get("custody", day), load_match_set(cfg, "custody", day))
    assert calls == ["custody"]  # one parse for four dates
    # the LATE number is rejected on AS_OF (born the day after) and kept a day later
    assert store.get("custody", AS_OF).rejected.get("future_birth_date") == 1
    assert "future_birth_date" not in store.get("custody", days[1]).rejected
    # a changed file is parsed again
    (tmp_path / "custody.csv").write_text("\n".join(CUSTODY[:3]) + "\n", encoding="utf-8")
    os.utime(tmp_path / "custody.csv", ns=(1, 1))
    same(store.get("custody", AS_OF), load_match_set(cfg, "custody", AS_OF))
    assert calls == ["custody", "custody"]


def test_streamed_db_set_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: LocalServer, custody: str
) -> None:
    cfg = db_config(tmp_path, monkeypatch, server, custody)
    store = MatchSetStore(cfg)
    assert store.source_rows("custody") == len(CUSTODY) - 1
    assert not store.is_streamed("custody")


def test_arrow_strings_regression_equal_total_width(tmp_path: Path) -> None:
    # Regression: the fast path of arrow_strings took a column for fixed-width when its
    # total length was width x rows, so 15 + 21 characters next to 18s were cut into
    # 18-character pieces of their neighbours (the CUSTODY rows above did exactly that).
    import pyarrow as pa

    values = [A, OLD15, f" {B[:6]} {B[6:]} ", C]  # 18 + 15 + 21 + 18 = 4 x 18
    assert sum(map(len, values)) == 18 * len(values)
    assert matchset_rows.arrow_strings(pa.array(values)).tolist() == values
    cfg = csv_config(
        tmp_path,
        ["id_number,term_months,start_date,end_date"] + [f"{v},12,2020-01-01," for v in values],
        where=None,
    )
    assert len(load_match_set(cfg, "custody", AS_OF)) == 4


def test_a_dsn_that_is_not_a_url_is_refused_without_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUSTICE_DB_DSN", "host=db user=justice password=Hunter2-secret")
    source = '{ database = "postgresql", dsn_env = "JUSTICE_DB_DSN", table = "custody" }'
    with pytest.raises(ConfigError) as info:
        load_node_config(write_node_toml(tmp_path, source))
    text = str(info.value)
    assert "match_sets[0].source.dsn_env: JUSTICE_DB_DSN: the DSN is not a postgresql URL" in text
    assert "Hunter2" not in text
