"""One interface over the department databases: PostgreSQL, MySQL/MariaDB, Oracle, 达梦 (DM).

A :class:`Session` is one read-only connection:

1. :func:`open_session` reads the DSN (``dsn_env`` or the 0600 ``dsn_file``),
   connects with a connect timeout, makes the session read-only and sets a
   statement timeout (each engine in its own way, below).
2. :meth:`Session.columns` lists the columns (name, kind, database type) of a
   ``SELECT … WHERE 1 = 0``, so type problems are found before any row is read.
3. :meth:`Session.stream` runs one SELECT and yields its rows in batches, one
   text array per selected column (dates ``YYYY-MM-DD``, NULL ``""``).

``$as_of`` in a ``where`` or a ``query`` is replaced by :meth:`Session.as_of_sql`
and the date is bound by the driver: a prepared-statement parameter (MySQL,
Oracle, DM), or, for PostgreSQL, a DATE parameter of ``set_config`` that the query
reads back with ``current_setting`` (PostgreSQL's Arrow reader streams with COPY
only for queries without parameters; with one it holds the whole result, see
docs/node.md). The date is never formatted into SQL text.

Per engine (driver; batches; read-only; statement timeout):

- postgresql: adbc-driver-postgresql; Arrow record batches over COPY; the
  session's transactions are READ ONLY; ``statement_timeout``.
- mysql: mysql-connector-python; a prepared statement, rows fetched unbuffered;
  ``SET SESSION TRANSACTION READ ONLY`` and ``START TRANSACTION READ ONLY``;
  ``max_statement_time`` (MariaDB) or ``max_execution_time`` (MySQL).
- oracle: python-oracledb (thin); ``fetchmany`` with ``arraysize``;
  ``SET TRANSACTION READ ONLY``; ``call_timeout``.
- dm: dmPython; ``fetchmany``; the connection's ``access_mode`` is
  ``DSQL_MODE_READ_ONLY``; ``connection_timeout``.

Every driver error becomes one :class:`DatabaseError` line with a ``reason``
code. Only errors that name SQL objects (a missing table or column, a syntax
error) keep the driver's first line; errors about values (conversions) are
withheld, since they may quote a record. An error no rule knows shows the
engine's code, and the driver's text only where it quotes nothing (never a Python
exception type). Every message passes through :meth:`databases.source.Dsn.redact`,
:class:`DatabaseError` masks any digit run that could be an identity number (the
operator's own ``where`` may hold one, and syntax errors quote it), and driver
exceptions are never chained.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import decimal
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from databases.source import DatabaseSource, Dsn
from psi.errors import ConfigError

__all__ = [
    "Column",
    "DatabaseError",
    "Kind",
    "Session",
    "open_session",
    "replace_as_of",
]

Kind = Literal["text", "integer", "decimal", "float", "date", "timestamp", "other"]
Reason = Literal[
    "connect",
    "auth",
    "dsn",
    "missing",
    "type",
    "read_only",
    "timeout",
    "lost",
    "data",
    "sql",
    "driver",
]

_AS_OF = re.compile(r"\$as_of\b")
_TextArray = npt.NDArray[np.str_]


#: What could be an identity number: 15 or more digits in a row, also split by spaces,
#: hyphens, dots, slashes or underscores, with a check character X. ``\d`` also matches
#: full-width digits.
_ID_LIKE = re.compile(r"\d(?:[\s./_-]*\d){14,}(?:[\s-]*[Xx](?![A-Za-z0-9]))?")
_ID_MASK = "<number withheld>"
#: a driver text with one of these may quote a value (PostgreSQL quotes with "…",
#: MySQL with '…'); without one it names no value and can be shown
_QUOTES = re.compile("[\"'`\u2018\u2019\u201c\u201d]")


def mask_identity_numbers(text: str) -> str:
    """``text`` with every run of digits that could be an identity number masked.

    Driver texts quote the SQL they refuse (``near '… <> '1522…'``) and the
    identifiers they miss (``column "1522…" does not exist``); the operator's own
    ``where`` may hold an identity number, and no message may show one.
    """
    return _ID_LIKE.sub(_ID_MASK, text)


class DatabaseError(ConfigError):
    """A database source failed; ``reason`` says why (``connect``, ``auth``, ``missing``, …).

    The message is one line without credentials, record values or identity numbers
    (masked here, so that every message of every engine passes the same filter).
    """

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(mask_identity_numbers(message))
        self.reason = reason


@dataclass(frozen=True)
class Column:
    """A result column: its name as the database reports it, its kind and type name."""

    name: str
    kind: Kind
    type_name: str


def replace_as_of(text: str, placeholder: str) -> tuple[str, int]:
    """``text`` with every ``$as_of`` replaced by ``placeholder``, and how many there were."""
    return _AS_OF.subn(placeholder, text)


def _first_line(text: str) -> str:
    for line in str(text).strip().splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""


class Session(ABC):
    """One read-only connection to a department database (see the module docstring)."""

    engine: str = ""
    #: a column alias prefix every engine accepts unquoted (Oracle rejects a leading "_")
    alias = "xm_"

    def __init__(self, source: DatabaseSource, dsn: Dsn) -> None:
        self.source = source
        self.dsn = dsn

    # -- SQL of this dialect

    @abstractmethod
    def as_of_sql(self) -> str:
        """What replaces ``$as_of`` in SQL text (a placeholder, never the date)."""

    def as_of_params(self, count: int, as_of: _dt.date) -> Any:
        """The parameters binding ``count`` occurrences of :meth:`as_of_sql`."""
        return (as_of,) * count

    def select(self, expressions: Sequence[str], where: str | None) -> str:
        """``SELECT expressions FROM relation source [WHERE (where)]`` (no ``AS``: Oracle)."""
        cols = ", ".join(f"{e} {self.alias}{i}" for i, e in enumerate(expressions))
        sql = f"SELECT {cols} FROM {self.source.relation} source"
        return f"{sql} WHERE ({where})" if where else sql

    # -- running

    @abstractmethod
    def columns(self, expressions: Sequence[str] | None = None) -> list[Column]:
        """The columns of ``SELECT expressions`` (or ``*``) over the source, reading no row.

        Raises:
            DatabaseError: a missing table or column, a lost connection.
        """

    def bind_as_of(self, sql: str, as_of: _dt.date | None) -> tuple[str, Any]:
        """``sql`` with each ``$as_of`` replaced by :meth:`as_of_sql`, and its parameters."""
        text, count = replace_as_of(sql, self.as_of_sql())
        if count and as_of is None:
            raise DatabaseError("$as_of is used where no evaluation date exists", reason="sql")
        return text, (self.as_of_params(count, as_of) if count and as_of else ())

    @abstractmethod
    def stream(
        self, sql: str, params: Any, *, width: int, batch_rows: int
    ) -> Iterator[list[_TextArray]]:
        """Run ``sql`` with ``params`` (from :meth:`bind_as_of`); yield ``width`` text columns.

        Raises:
            DatabaseError: any failure, also in the middle of the stream.
        """

    @abstractmethod
    def fetch_row(self, sql: str, params: Any = ()) -> tuple[Any, ...]:
        """The first row of ``sql`` with ``params`` (from :meth:`bind_as_of`).

        Raises:
            DatabaseError: any failure.
        """

    @abstractmethod
    def close(self) -> None:
        """Close the connection (errors ignored: the server may be gone)."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- errors

    @abstractmethod
    def classify(self, exc: BaseException) -> tuple[Reason, str]:
        """(reason, driver detail safe to show or ``""``) for a driver exception."""

    def unknown(self, code: str, message: str) -> str:
        """The detail of an error no rule knows: its code, and its text if it quotes nothing.

        A text that quotes something may quote a record value, so it is withheld.
        """
        name = f"{self.engine} error" + (f" {code}" if code else "")
        if message and _QUOTES.search(message) is None:
            return f"{name}: {message}"
        if not message:
            return name
        return f"{name} (its text is withheld: it may quote record values)"

    def error(self, exc: BaseException, what: str) -> DatabaseError:
        """The one-line :class:`DatabaseError` for a driver exception during ``what``."""
        reason, detail = self.classify(exc)
        where = f"the {self.engine} server at {self.dsn.where}"
        text = {
            "connect": f"cannot connect to {where}"
            + (f" ({detail})" if detail else "")
            + "; is the server running and reachable from this machine?",
            "auth": f"authentication failed on {where} (check the user and password in "
            f"{self.source.credentials_origin()})",
            "dsn": f"{what}: {detail} (check the DSN in {self.source.credentials_origin()}; "
            "its text is withheld)",
            "missing": f"{what}: {detail or 'a table or column does not exist'}",
            "type": f"{what}: {detail}",
            "read_only": f"{what}: the statement tried to write, and the node's connection "
            "is read-only (refused by the database)",
            "timeout": f"{what}: cancelled by the statement timeout "
            f"({self.source.timeout_seconds:g} s, `timeout_seconds`)",
            "lost": f"{what}: the connection to {where} was lost"
            + (f" ({detail})" if detail else ""),
            "data": f"{what}: {detail} (check your `where` and `query`)"
            if detail
            else f"{what}: the database could not convert a value (details withheld: they "
            "may quote record values; check the column types your `where` compares)",
            "sql": f"{what}: {detail}",
            "driver": f"{what}: {detail}",
        }[reason]
        return DatabaseError(" ".join(self.dsn.redact(text).split()), reason=reason)


# --- converting values to text ---------------------------------------------------------------


def _text_of(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, _dt.datetime):
        return value.date().isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(int(value)) if value == value.to_integral_value() else str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace").strip()
    return str(value).strip()


def texts_of(values: Sequence[object]) -> _TextArray:
    """A column of driver values (str, date, datetime, Decimal, int, None) as text."""
    if not values:
        return np.zeros(0, dtype="<U1")
    first = next((v for v in values if v is not None), None)
    if isinstance(first, str) and all(type(v) is str for v in values):
        out: _TextArray = np.array([str(v).strip() for v in values], dtype=np.str_)
        return out
    return np.array([_text_of(v) for v in values], dtype=np.str_)


def _arrow_texts(column: Any) -> _TextArray:
    """An Arrow column (string, date, timestamp, integer, numeric) as text, NULL as ``""``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    typ = arr.type
    if isinstance(typ, pa.ExtensionType):  # PostgreSQL numeric: text in an opaque type
        arr = arr.storage
        typ = arr.type
    if pa.types.is_date(typ) or pa.types.is_timestamp(typ):
        if pa.types.is_timestamp(typ) and typ.tz is not None:
            arr = pc.local_timestamp(arr)
        days = pc.cast(arr, pa.date32()) if pa.types.is_timestamp(arr.type) else arr
        values = days.to_numpy(zero_copy_only=False)
        out = np.asarray(values, dtype="datetime64[D]").astype("<U10")
        if days.null_count:
            out[np.asarray(days.is_null())] = ""
        return out
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return texts_of(arr.to_pylist())
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        arr = pc.utf8_trim_whitespace(arr.fill_null("")) if arr.null_count else arr
        n = len(arr)
        if n and pa.types.is_string(arr.type):
            offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[
                arr.offset : arr.offset + n + 1
            ]
            width = int(offsets[1] - offsets[0])
            # every value that width (equal totals alone can match by chance)
            if 0 < width <= 64 and bool((np.diff(offsets) == width).all()):
                data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
                if not (data & 0x80).any() and not (data == 0x20).any():
                    fixed: _TextArray = data.view(f"S{width}").astype(f"<U{width}")
                    return fixed
        return texts_of(arr.to_pylist())
    return texts_of(arr.to_pylist())


# --- PostgreSQL (ADBC) -------------------------------------------------------------------------


_PG_KINDS: dict[str, Kind] = {
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
    "name": "text",
    "citext": "text",
    "int2": "integer",
    "int4": "integer",
    "int8": "integer",
    "numeric": "decimal",
    "float4": "float",
    "float8": "float",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamp",
}
# SQLSTATE classes (PostgreSQL appendix A)
_PG_MISSING = {"42P01", "42703", "3F000", "42883", "3D000"}
#: the server's message in libpq's text (after "ERROR:" or, while connecting, "FATAL:")
_PG_SERVER_LINE = re.compile(r"\b(?:ERROR|FATAL):\s+(.*)")
_PG_MISSING_TEXT = re.compile(
    r'\b(?:ERROR|FATAL):\s+((?:relation|column|function|schema|database) "[^"]*" does not exist)'
)
#: libpq refusing the URL before it connects: 'invalid sslmode value: "bogus"',
#: 'invalid URI query parameter: "x"', 'invalid integer value "x" for connection option "port"'
_PG_DSN_OPTION = re.compile(
    r'invalid (\w+) value:|invalid URI query parameter: "(\w+)"|'
    r'for connection option "(\w+)"|invalid connection option "(\w+)"'
)
#: libpq's own reason, after "[libpq] Failed to connect: … failed: " or the error kind
_PG_LIBPQ_LINE = re.compile(r"(?:failed|\]):\s+(?!connection to server)(.*)", re.IGNORECASE)
_PG_AUTH = ("28",)
_PG_CONNECT = ("08",)


class PostgresSession(Session):
    """PostgreSQL through ADBC: Arrow record batches over COPY, read-only session."""

    engine = "postgresql"

    def __init__(self, source: DatabaseSource, dsn: Dsn) -> None:
        super().__init__(source, dsn)
        import adbc_driver_postgresql.dbapi as adbc

        uri = dsn.url
        if "connect_timeout" not in dsn.options:
            uri += (
                "&" if "?" in uri else "?"
            ) + f"connect_timeout={source.connect_timeout_seconds}"
        try:
            self._con = adbc.connect(uri)
        except Exception as exc:
            raise self.error(exc, "connect") from None
        try:
            with self._con.cursor() as cur:
                # (1) every transaction of this session is read-only, and (2) bounded
                cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                cur.execute(f"SET statement_timeout = {int(source.timeout_seconds * 1000)}")
                cur.execute("SET idle_in_transaction_session_timeout = 0")
                cur.execute("SET DateStyle = 'ISO, YMD'")
            self._con.commit()
        except Exception as exc:
            self.close()
            raise self.error(exc, "connect") from None

    def as_of_sql(self) -> str:
        return "CAST(current_setting('xmatch.as_of') AS date)"

    def _rollback(self) -> None:
        with contextlib.suppress(Exception):  # the server may be gone
            self._con.rollback()

    def columns(self, expressions: Sequence[str] | None = None) -> list[Column]:
        sql = (
            f"SELECT * FROM {self.source.relation} source WHERE 1 = 0"
            if expressions is None
            else self.select(expressions, "1 = 0")
        )
        sql, _ = replace_as_of(sql, "CAST(NULL AS date)")
        try:
            with self._con.cursor() as cur:
                cur.execute(sql)
                schema = cur.fetch_arrow_table().schema
        except Exception as exc:
            raise self.error(exc, "source") from None
        finally:
            self._rollback()
        out: list[Column] = []
        for f in schema:
            meta = f.metadata or {}
            name = (meta.get(b"POSTGRESQL:type") or b"").decode() or str(f.type)
            out.append(Column(f.name, _PG_KINDS.get(name, "other"), name))
        return out

    def as_of_params(self, count: int, as_of: _dt.date) -> Any:
        return as_of  # bound to set_config by stream()

    def stream(
        self, sql: str, params: Any, *, width: int, batch_rows: int
    ) -> Iterator[list[_TextArray]]:
        what = "where" if "WHERE" in sql else "source"
        as_of = params if isinstance(params, _dt.date) else None
        cur = self._con.cursor()
        try:
            try:
                if as_of is not None:
                    # the date as a DATE parameter; the query reads it with current_setting
                    cur.execute(
                        "SELECT set_config('xmatch.as_of', CAST(CAST($1 AS date) AS text), true)",
                        (as_of,),
                    )
                    cur.fetchall()
                cur.adbc_statement.set_options(
                    **{"adbc.postgresql.batch_size_hint_bytes": str(max(1 << 16, batch_rows * 48))}
                )
                cur.execute(sql)
                reader = cur.fetch_record_batch()
            except Exception as exc:
                raise self.error(exc, what) from None
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except Exception as exc:
                    raise self.error(exc, what) from None
                # COPY's batches are sized in bytes: cut them to batch_rows rows
                for lo in range(0, batch.num_rows, batch_rows):
                    part = batch.slice(lo, batch_rows)
                    yield [_arrow_texts(part.column(i)) for i in range(part.num_columns)]
        finally:
            with contextlib.suppress(Exception):  # the server may be gone: we already raised
                cur.close()
            self._rollback()

    def fetch_row(self, sql: str, params: Any = ()) -> tuple[Any, ...]:
        try:
            with self._con.cursor() as cur:
                if isinstance(params, _dt.date):
                    cur.execute(
                        "SELECT set_config('xmatch.as_of', CAST(CAST($1 AS date) AS text), true)",
                        (params,),
                    )
                    cur.fetchall()
                cur.execute(sql)
                row = cur.fetchone()
        except Exception as exc:
            raise self.error(exc, "source") from None
        finally:
            self._rollback()
        return tuple(row) if row is not None else ()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._con.close()

    def classify(self, exc: BaseException) -> tuple[Reason, str]:
        state = str(getattr(exc, "sqlstate", "") or "")
        text = str(exc)
        details = dict(getattr(exc, "details", None) or ())
        primary = details.get(b"PG_DIAG_MESSAGE_PRIMARY", b"")
        message = _first_line(primary.decode("utf-8", errors="replace"))
        if not message:
            # errors while connecting or reading the COPY stream come as libpq's text,
            # without a SQLSTATE: "... failed: FATAL:  database "x" does not exist"
            found = _PG_SERVER_LINE.search(text)
            message = _first_line(found.group(1)) if found else ""
        low, said = text.lower(), message.lower()  # said: the server's words, not our SQL
        if state in _PG_MISSING:
            return "missing", message
        if state.startswith(_PG_AUTH):
            return "auth", ""
        if state == "25006" or "data-modifying statement" in said:
            # a data-modifying WITH inside the node's SELECT … FROM (query): 0A000
            return "read_only", ""
        if state == "57014":
            return "timeout", ""
        if state in ("57P01", "57P02", "57P03") or state.startswith(_PG_CONNECT):
            return "lost", ""
        if state.startswith("42"):
            return "sql", message
        if state == "22012" or said == "division by zero":
            return "data", "division by zero"
        if state.startswith("22"):
            return "data", ""
        if "read-only transaction" in low:
            return "read_only", ""
        if "statement timeout" in low:
            return "timeout", ""
        found = _PG_MISSING_TEXT.search(text)
        if found is not None:
            return "missing", found.group(1)
        if "invalid input syntax" in low or "out of range" in low:
            return "data", ""
        if "password authentication failed" in low or "no pg_hba.conf entry" in low:
            return "auth", ""
        option = _PG_DSN_OPTION.search(text)
        if option is not None:
            # libpq names the option and quotes its value: only the name is shown
            name = next(g for g in option.groups() if g)
            return "dsn", f"invalid DSN option {name}"
        if "connection refused" in low or "could not connect" in low or "timeout expired" in low:
            return "connect", "connection refused" if "refused" in low else "no answer"
        if "could not translate host name" in low:
            return "connect", "unknown host"
        if "server closed the connection" in low or "terminating connection" in low:
            return "lost", ""
        if "no connection to the server" in low or ("connection" in low and "lost" in low):
            return "lost", ""
        if not message:
            found = _PG_LIBPQ_LINE.search(text)
            message = _first_line(found.group(1)) if found else ""
        return "driver", self.unknown(f"SQLSTATE {state}" if state else "", message)


# --- MySQL / MariaDB (mysql-connector-python) -------------------------------------------------

_MY_TEXT = {15, 253, 254, 247, 248, 249, 250, 251, 252}  # VARCHAR, STRING, ENUM, SET, BLOB/TEXT
_MY_INT = {1, 2, 3, 8, 9, 13, 16}  # TINY SHORT LONG LONGLONG INT24 YEAR BIT
_MY_DEC = {0, 246}
_MY_FLOAT = {4, 5}
_MY_DATE = {10, 14}
_MY_TS = {7, 12}
_MY_CONNECT = {2002, 2003, 2005}
_MY_AUTH = {1045, 1698, 1251}
#: access denied to a database (1044), a table (1142) or a column (1143): what the
#: server also says for one that does not exist, to an account without rights on it
_MY_DENIED = {1044, 1142, 1143}
_MY_DENIED_OBJECT = re.compile(
    r"(?:for column (\S+) in table (\S+)|for table (\S+)|to database (\S+))\s*$"
)
_MY_MISSING = {1146, 1054, 1049, 1305}
_MY_LOST = {2006, 2013, 2055, 1053, 1927, 4031}
_MY_TIMEOUT = {1969, 3024, 1317}


def _mysql_kind(type_code: int) -> Kind:
    if type_code in _MY_TEXT:
        return "text"
    if type_code in _MY_INT:
        return "integer"
    if type_code in _MY_DEC:
        return "decimal"
    if type_code in _MY_FLOAT:
        return "float"
    if type_code in _MY_DATE:
        return "date"
    if type_code in _MY_TS:
        return "timestamp"
    return "other"


class _DbApiSession(Session):
    """A PEP 249 driver: prepared statement, rows fetched ``batch_rows`` at a time."""

    _con: Any

    def _cursor(self) -> Any:
        return self._con.cursor()

    def _begin(self, cur: Any) -> None:
        """Start a read-only transaction on ``cur`` (where the engine needs a statement)."""

    def _end(self) -> None:
        with contextlib.suppress(Exception):
            self._con.rollback()

    def _type_name(self, type_code: Any) -> str:
        return str(getattr(type_code, "name", type_code))

    @abstractmethod
    def _kind(self, description: Sequence[Any]) -> Kind: ...

    def columns(self, expressions: Sequence[str] | None = None) -> list[Column]:
        sql = (
            f"SELECT * FROM {self.source.relation} source WHERE 1 = 0"
            if expressions is None
            else self.select(expressions, "1 = 0")
        )
        sql, params = self.bind_as_of(sql, _dt.date.today())
        try:
            cur = self._cursor()
            try:
                self._begin(cur)
                cur.execute(sql, params)
                description = list(cur.description or ())
                cur.fetchall()
            finally:
                cur.close()
        except Exception as exc:
            raise self.error(exc, "source") from None
        finally:
            self._end()
        return [Column(str(d[0]), self._kind(d), self._type_name(d[1])) for d in description]

    def stream(
        self, sql: str, params: Any, *, width: int, batch_rows: int
    ) -> Iterator[list[_TextArray]]:
        what = "where" if "WHERE" in sql else "source"
        cur = None
        try:
            try:
                cur = self._cursor()
                cur.arraysize = batch_rows
                self._begin(cur)
                cur.execute(sql, params if params else ())
            except Exception as exc:
                raise self.error(exc, what) from None
            while True:
                try:
                    rows = cur.fetchmany(batch_rows)
                except Exception as exc:
                    raise self.error(exc, what) from None
                if not rows:
                    break
                columns = list(zip(*rows, strict=True)) if rows else [()] * width
                yield [texts_of(columns[i]) for i in range(width)]
        finally:
            if cur is not None:
                with contextlib.suppress(Exception):
                    cur.close()
            self._end()

    def fetch_row(self, sql: str, params: Any = ()) -> tuple[Any, ...]:
        try:
            cur = self._cursor()
            try:
                self._begin(cur)
                cur.execute(sql, params)
                row = cur.fetchone()
                cur.fetchall()
            finally:
                cur.close()
        except Exception as exc:
            raise self.error(exc, "source") from None
        finally:
            self._end()
        return tuple(row) if row is not None else ()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._con.close()


class MysqlSession(_DbApiSession):
    """MySQL or MariaDB through mysql-connector-python (C extension), prepared statements."""

    engine = "mysql"

    def __init__(self, source: DatabaseSource, dsn: Dsn) -> None:
        super().__init__(source, dsn)
        import mysql.connector

        try:
            self._con = mysql.connector.connect(
                host=dsn.host,
                port=dsn.port or 3306,
                user=dsn.user,
                password=dsn.password,
                database=dsn.database or None,
                connection_timeout=source.connect_timeout_seconds,
                charset="utf8mb4",
                autocommit=False,
                use_pure=True,  # the C extension needs a newer OpenSSL than Debian 12's
            )
            cur = self._con.cursor()
            try:
                cur.execute("SELECT VERSION()")
                (version,) = cur.fetchone()
                # (1) read-only transactions, (2) a statement timeout
                cur.execute("SET SESSION TRANSACTION READ ONLY")
                if "mariadb" in str(version).lower():
                    cur.execute(f"SET SESSION max_statement_time = {source.timeout_seconds:g}")
                else:
                    cur.execute(
                        f"SET SESSION max_execution_time = {int(source.timeout_seconds * 1000)}"
                    )
                cur.execute("SET SESSION time_zone = '+00:00'")
            finally:
                cur.close()
        except Exception as exc:
            self.close()
            raise self.error(exc, "connect") from None

    def as_of_sql(self) -> str:
        return "?"

    def _cursor(self) -> Any:
        return self._con.cursor(prepared=True)

    def _begin(self, cur: Any) -> None:
        plain = self._con.cursor()
        try:
            plain.execute("START TRANSACTION READ ONLY")
        finally:
            plain.close()

    def _kind(self, description: Sequence[Any]) -> Kind:
        return _mysql_kind(int(description[1]))

    def _type_name(self, type_code: Any) -> str:
        from mysql.connector import FieldType

        return str(FieldType.get_info(int(type_code)) or type_code)

    def classify(self, exc: BaseException) -> tuple[Reason, str]:
        errno = int(getattr(exc, "errno", 0) or 0)
        message = _first_line(str(getattr(exc, "msg", "") or ""))
        if errno in _MY_CONNECT:
            return "connect", "no server answered" if errno != 2005 else "unknown host"
        if errno in _MY_AUTH:
            return "auth", ""
        if errno in _MY_DENIED:
            return "missing", self._denied(errno, message)
        if errno in _MY_MISSING:
            return "missing", message
        if errno == 1792:
            return "read_only", ""
        if errno in _MY_TIMEOUT:
            return "timeout", ""
        if errno in _MY_LOST:
            return "lost", ""
        if errno in (1064, 1149, 1052, 1111, 1248, 1060):  # syntax, ambiguous, group, alias
            return "sql", message
        if 1264 <= errno <= 1366 or errno in (1292, 1411, 3156):  # conversions: quote values
            return "data", ""
        return "driver", self.unknown(str(errno) if errno else "", message)

    def _denied(self, errno: int, message: str) -> str:
        """What error 1044, 1142 or 1143 refused, without the account ("user"@"host")."""
        found = _MY_DENIED_OBJECT.search(message)
        column, table, table_only, database = found.groups() if found else (None,) * 4
        if errno == 1044:
            name = (database or "").strip("'`") or self.dsn.database
            return (
                f"no access to database {name}: it does not exist or is not granted to this account"
            )
        if errno == 1143 and column and table:
            return (
                f"column {column} of table {table} does not exist or is not granted to this account"
            )
        name = table_only or table
        return (f"table {name}" if name else "a table") + (
            " does not exist or is not granted to this account"
        )


# --- Oracle (python-oracledb, thin mode) ------------------------------------------------------

_ORA_CONNECT = {"DPY-6005", "DPY-6000", "DPY-6001", "ORA-12541", "ORA-12514", "ORA-12505"}
_ORA_AUTH = {"ORA-01017", "ORA-28000", "ORA-28001", "ORA-01045"}
_ORA_MISSING = {"ORA-00942", "ORA-00904", "ORA-04043"}
_ORA_LOST = {"DPY-4011", "ORA-03113", "ORA-03114", "ORA-03135", "DPY-1001"}
_ORA_TIMEOUT = {"DPY-4024", "ORA-03156", "DPI-1067", "ORA-01013"}
_ORA_READ_ONLY = {"ORA-01456", "ORA-16000"}
_ORA_SQL = {"ORA-00933", "ORA-00936", "ORA-00907", "ORA-00923", "ORA-00918", "ORA-00979"}
_ORA_DATA = {"ORA-01858", "ORA-01861", "ORA-01722", "ORA-01843", "ORA-01841", "ORA-01830"}


class OracleSession(_DbApiSession):
    """Oracle through python-oracledb (thin mode: no Oracle client libraries needed)."""

    engine = "oracle"

    def __init__(self, source: DatabaseSource, dsn: Dsn, *, connect: bool = True) -> None:
        super().__init__(source, dsn)
        if not connect:
            return
        import oracledb

        try:
            self._con = oracledb.connect(
                user=dsn.user,
                password=dsn.password,
                dsn=f"{dsn.host}:{dsn.port or 1521}/{dsn.database}",
                tcp_connect_timeout=float(source.connect_timeout_seconds),
            )
            # (2) every round trip is bounded
            self._con.call_timeout = int(source.timeout_seconds * 1000)
        except Exception as exc:
            raise self.error(exc, "connect") from None

    def as_of_sql(self) -> str:
        return ":as_of"

    def as_of_params(self, count: int, as_of: _dt.date) -> Any:
        return {"as_of": as_of} if count else {}

    def _begin(self, cur: Any) -> None:
        # (1) must be the first statement of the transaction; _end rolls back
        cur.execute("SET TRANSACTION READ ONLY")

    def _kind(self, description: Sequence[Any]) -> Kind:
        import oracledb

        t = description[1]
        if t in (
            oracledb.DB_TYPE_VARCHAR,
            oracledb.DB_TYPE_CHAR,
            oracledb.DB_TYPE_NVARCHAR,
            oracledb.DB_TYPE_NCHAR,
            oracledb.DB_TYPE_LONG,
        ):
            return "text"
        if t is oracledb.DB_TYPE_NUMBER:
            scale = description[5]
            return "integer" if scale == 0 else "decimal"
        if t in (oracledb.DB_TYPE_BINARY_DOUBLE, oracledb.DB_TYPE_BINARY_FLOAT):
            return "float"
        if t is oracledb.DB_TYPE_DATE:
            return "date"  # Oracle's DATE has a time part; the day is what counts
        if t in (
            oracledb.DB_TYPE_TIMESTAMP,
            oracledb.DB_TYPE_TIMESTAMP_TZ,
            oracledb.DB_TYPE_TIMESTAMP_LTZ,
        ):
            return "timestamp"
        return "other"

    def classify(self, exc: BaseException) -> tuple[Reason, str]:
        err = exc.args[0] if exc.args else None
        code = str(getattr(err, "full_code", "") or "")
        message = _first_line(str(getattr(err, "message", "") or ""))
        if code in _ORA_CONNECT:
            low = message.lower()
            return "connect", "connection refused" if "refused" in low else "no answer"
        if code in _ORA_AUTH:
            return "auth", ""
        if code in _ORA_MISSING:
            return "missing", message
        if code in _ORA_READ_ONLY:
            return "read_only", ""
        if code in _ORA_TIMEOUT:
            return "timeout", ""
        if code in _ORA_LOST or bool(getattr(err, "is_session_dead", False)):
            return "lost", ""
        if code in _ORA_SQL:
            return "sql", message
        if code in _ORA_DATA:
            return "data", ""
        return "driver", self.unknown(code, re.sub(r"^[A-Z]{3}-\d+:\s*", "", message))


# --- 达梦 DM8 (dmPython) ------------------------------------------------------------------------

# DM error codes (DM8 错误码): -70028 socket connect failure (seen from the driver here),
# -2501 invalid user name or password, -2106 invalid table or view name, -2111 invalid
# column name, -70019 / -70065 / -6009 connection lost, -6407 / -6408 timeout.
_DM_CONNECT = {-70028, -70029, -70101, -70102}
_DM_AUTH = {-2501, -2502, -2503, -2504}
_DM_MISSING = {-2106, -2111, -2103, -2105}
_DM_LOST = {-70019, -70065, -6009, -70006, -70001}
_DM_TIMEOUT = {-6407, -6408, -6404}
_DM_READ_ONLY = {-6815, -6819, -3216}
_DM_DATA = {-6111, -6118, -6112, -6117}


class DmSession(_DbApiSession):
    """达梦 DM8 through dmPython, with the connection's access mode set to read-only."""

    engine = "dm"

    def __init__(self, source: DatabaseSource, dsn: Dsn, *, connect: bool = True) -> None:
        super().__init__(source, dsn)
        if not connect:
            return
        import dmPython

        try:
            self._con = dmPython.connect(
                user=dsn.user,
                password=dsn.password,
                server=dsn.host,
                port=dsn.port or 5236,
                login_timeout=source.connect_timeout_seconds,
                # (1) the DPI's read-only access mode: the server refuses any write
                access_mode=dmPython.DSQL_MODE_READ_ONLY,
                autoCommit=False,
            )
            # (2) the driver's timeout for each request on this connection (seconds)
            self._con.connection_timeout = int(source.timeout_seconds)
            if dsn.database:
                self._con.current_schema = dsn.database
        except Exception as exc:
            raise self.error(exc, "connect") from None

    def as_of_sql(self) -> str:
        return "?"

    def _kind(self, description: Sequence[Any]) -> Kind:
        import dmPython

        t = description[1]
        if t in (dmPython.STRING, dmPython.FIXED_STRING, dmPython.LONG_STRING):
            return "text"
        if t is dmPython.BIGINT:
            return "integer"
        if t in (dmPython.NUMBER, dmPython.DECIMAL):
            return "integer" if description[5] == 0 else "decimal"
        if t in (dmPython.DOUBLE, dmPython.REAL):
            return "float"
        if t is dmPython.DATE:
            return "date"
        if t in (dmPython.TIMESTAMP, dmPython.DATETIME, dmPython.TIMESTAMP_WITH_TIMEZONE):
            return "timestamp"
        return "other"

    def classify(self, exc: BaseException) -> tuple[Reason, str]:
        err = exc.args[0] if exc.args else None
        code = int(getattr(err, "code", 0) or 0)
        message = _first_line(str(getattr(err, "message", "") or ""))
        message = re.sub(r"^\[CODE:-?\d+\]", "", message).strip()
        if code in _DM_CONNECT:
            return "connect", "no server answered"
        if code in _DM_AUTH:
            return "auth", ""
        if code in _DM_MISSING:
            return "missing", message
        if code in _DM_READ_ONLY:
            return "read_only", ""
        if code in _DM_TIMEOUT:
            return "timeout", ""
        if code in _DM_LOST:
            return "lost", ""
        if code in _DM_DATA:
            return "data", ""
        return "driver", self.unknown(str(code) if code else "", message)


_SESSIONS: dict[str, type[Session]] = {
    "postgresql": PostgresSession,
    "mysql": MysqlSession,
    "oracle": OracleSession,
    "dm": DmSession,
}


def session_class(engine: str) -> type[Session]:
    """The :class:`Session` class of ``engine``."""
    return _SESSIONS[engine]


def open_session(source: DatabaseSource) -> Session:
    """A read-only session on ``source``'s database.

    Raises:
        ConfigError: the DSN cannot be read (unset variable, bad file mode).
        DatabaseError: the server is unreachable, authentication fails.
    """
    dsn = source.read_dsn()
    return _SESSIONS[source.database](source, dsn)
