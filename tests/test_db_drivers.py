"""Oracle (python-oracledb) and 达梦 DM8 (dmPython): no server here.

What runs: the query text each engine builds (placeholders, aliases Oracle
accepts, no ``AS`` before a table alias), how ``$as_of`` is bound (named
``:as_of`` for Oracle, ``?`` per occurrence for DM), and the translation of the
drivers' own exceptions: real ones raised by each driver when it cannot reach a
server, and exception objects built with the driver's own error class for the
server-side codes. What does not run: a query against an Oracle or DM server
(docs/node.md, "What was tested").
"""

from __future__ import annotations

import datetime as _dt
import socket

import dmPython
import oracledb
import pytest
from oracledb.errors import _Error as OracleErrorInfo

from databases import DatabaseError, DatabaseSource, Dsn
from databases.engines import DmSession, OracleSession, Session

AS_OF = _dt.date(2026, 11, 29)
SECRET = "Pa55-w0rd-never-shown"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def source(engine: str, monkeypatch: pytest.MonkeyPatch, port: int = 1) -> DatabaseSource:
    monkeypatch.setenv("XM_DSN", f"{engine}://justice_ro:{SECRET}@127.0.0.1:{port}/PRISON")
    return DatabaseSource.model_validate(
        {
            "database": engine,
            "dsn_env": "XM_DSN",
            "table": "prison.custody",
            "connect_timeout_seconds": 2,
        }
    )


def offline(engine: str, monkeypatch: pytest.MonkeyPatch) -> Session:
    src = source(engine, monkeypatch)
    dsn = src.read_dsn()
    return (OracleSession if engine == "oracle" else DmSession)(src, dsn, connect=False)


WHERE = "term_months >= 6 AND (end_date IS NULL OR end_date > $as_of) AND start_date <= $as_of"


def test_oracle_query_and_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    session = offline("oracle", monkeypatch)
    sql, params = session.bind_as_of(session.select(["id_number", "end_date"], WHERE), AS_OF)
    assert sql == (
        "SELECT id_number xm_0, end_date xm_1 FROM prison.custody source WHERE "
        "(term_months >= 6 AND (end_date IS NULL OR end_date > :as_of) AND start_date <= :as_of)"
    )
    assert params == {"as_of": AS_OF}  # one named bind, used twice
    # no $as_of: no parameters at all (oracledb refuses unused binds)
    assert session.bind_as_of(session.select(["a"], None), AS_OF) == (
        "SELECT a xm_0 FROM prison.custody source",
        (),
    )


def test_dm_query_and_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    session = offline("dm", monkeypatch)
    sql, params = session.bind_as_of(session.select(["id_number"], WHERE), AS_OF)
    assert sql.count("?") == 2 and "$as_of" not in sql and "2026" not in sql
    assert params == (AS_OF, AS_OF)
    assert dmPython.paramstyle == "qmark" and oracledb.paramstyle == "named"


@pytest.mark.parametrize("engine", ["oracle", "dm"])
def test_a_real_connection_failure_is_one_line(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source(engine, monkeypatch, port=closed_port())
    with pytest.raises(DatabaseError) as info:
        Session_for(src)
    assert info.value.reason == "connect", str(info.value)
    text = str(info.value)
    assert "\n" not in text and SECRET not in text and "justice_ro" not in text
    assert f"the {engine} server at 127.0.0.1:" in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def Session_for(src: DatabaseSource) -> Session:
    from databases import open_session

    return open_session(src)


@pytest.mark.parametrize(
    ("message", "reason", "shown"),
    [
        ("ORA-01017: invalid username/password; logon denied", "auth", None),
        ('ORA-00942: table or view "PRISON"."CUSTODY" does not exist', "missing", "ORA-00942"),
        ('ORA-00904: "TERM_MONTHS": invalid identifier', "missing", "TERM_MONTHS"),
        (
            "ORA-01456: may not perform insert/delete/update operation inside a READ ONLY "
            "transaction",
            "read_only",
            None,
        ),
        ("DPY-4024: call timeout of 600000 ms exceeded", "timeout", None),
        ("DPY-4011: the database or network closed the connection", "lost", None),
        ("ORA-01858: a non-numeric character was found where a numeric was expected", "data", None),
    ],
)
def test_oracle_errors(
    message: str, reason: str, shown: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = offline("oracle", monkeypatch)
    exc = oracledb.DatabaseError(OracleErrorInfo(message))
    err = session.error(exc, "where")
    assert err.reason == reason
    assert "\n" not in str(err) and SECRET not in str(err)
    if shown:
        assert shown in str(err)
    if reason == "data":
        assert "withheld" in str(err)


class _DmError:
    """The shape of ``dmPython.DmError`` (code, message), which Python cannot construct."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message


@pytest.mark.parametrize(
    ("code", "reason"),
    [(-2501, "auth"), (-2106, "missing"), (-2111, "missing"), (-70065, "lost"), (-6407, "timeout")],
)
def test_dm_errors(code: int, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    session = offline("dm", monkeypatch)
    exc = dmPython.DatabaseError(_DmError(code, f"[CODE:{code}]message"))
    err = session.error(exc, "source")
    assert err.reason == reason and "\n" not in str(err)


def test_dsn_parse_for_each_engine() -> None:
    for engine, url in (
        ("oracle", "oracle://u:p@db:1521/ORCLPDB1"),
        ("dm", "dm://SYSDBA:p@db:5236"),
        ("mysql", "mariadb://u:p@db/civil"),
        ("postgresql", "postgres://u:p@db/civil?sslmode=require"),
    ):
        dsn = Dsn.parse(url, engine=engine)
        assert dsn.host == "db" and dsn.password == "p"
    with pytest.raises(Exception, match="not a oracle URL"):
        Dsn.parse("postgresql://u:p@db/x", engine="oracle")
