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
import re
import socket

import dmPython
import oracledb
import pytest
from oracledb.errors import _Error as OracleErrorInfo

from databases import DatabaseError, DatabaseSource, Dsn
from databases.engines import DmSession, OracleSession, Session, mask_identity_numbers

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


@pytest.mark.parametrize(
    ("engine", "error", "shown"),
    [
        (
            "oracle",
            oracledb.DatabaseError(OracleErrorInfo("ORA-01476: divisor is equal to zero")),
            "where: oracle error ORA-01476: divisor is equal to zero",
        ),
        # quotes a value (a record's, maybe): only the code is shown
        (
            "oracle",
            oracledb.DatabaseError(
                OracleErrorInfo(
                    'ORA-12899: value too large for column "P"."C"."NAME" (actual: 40, maximum: 30)'
                )
            ),
            "where: oracle error ORA-12899 (its text is withheld: it may quote record values)",
        ),
        (
            "dm",
            dmPython.DatabaseError(_DmError(-6103, "[CODE:-6103]除0错误")),
            "where: dm error -6103: 除0错误",
        ),
        (
            "dm",
            dmPython.DatabaseError(_DmError(-6120, "[CODE:-6120]'张三' 无效")),
            "where: dm error -6120 (its text is withheld",
        ),
    ],
    ids=["oracle-plain", "oracle-quotes", "dm-plain", "dm-quotes"],
)
def test_an_unknown_error_shows_its_code_never_a_python_type(
    engine: str, error: Exception, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = offline(engine, monkeypatch).error(error, "where")
    assert err.reason == "driver"
    assert shown in str(err), str(err)
    assert "DatabaseError" not in str(err) and "张三" not in str(err)


@pytest.mark.parametrize(
    "text",
    [
        "near '= ? AND id_number <> '152201193206264462')' at line 1",
        'column "15080219800101008X" does not exist',
        "Unknown column '15080219800101008x' in 'WHERE'",
        "Unknown column '150802800101011' in 'WHERE'",  # 15 digits
        "near '150802 1980 0101 0012'",
        "near '150802-19800101-0012'",
        "near '１５０８０２１９８００１０１００１２'",  # full-width digits
    ],
)
def test_an_identity_number_in_any_message_is_masked(text: str) -> None:
    err = DatabaseError(f"where: {text}", reason="sql")
    assert "<number withheld>" in str(err)
    assert not re.search(r"\d{6}", re.sub(r"[\s-]", "", str(err))), str(err)


def test_other_numbers_are_kept() -> None:
    text = "the mysql server at 127.0.0.1:3306/prison, error 1064 at line 1 on 2026-11-29"
    assert mask_identity_numbers(text) == text


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
