"""A match set in a CSV or Parquet file, read with DuckDB.

For a match set of ``node.toml`` and a round's ``as_of`` this runs, inside the
node::

    SELECT <id_column>, <payload columns>
    FROM read_csv(<source>) | read_parquet(<source>)
    WHERE <where>                -- $as_of bound as a DATE named parameter

in record batches, each converted by :func:`nodes.matchset_rows.convert`
(normalized identity numbers, 16-byte blocks; rows whose number is invalid, or
whose payload value is malformed, are dropped and *counted by reason*; their
values are never logged or put into a message).

Safety: ``where`` is the DBA's SQL and is inserted as written (it is the node's
own configuration), but it runs on a DuckDB connection that can read only the
source file (``enable_external_access = false`` with ``allowed_paths``, then the
configuration is locked), so it cannot read other files, write, or load
extensions. ``$as_of`` is always a bound parameter, never substituted text.

CSV: DuckDB detects column types (so ``where`` can compare dates), except the
id column, which is forced to VARCHAR so that numbers keep their leading
digits and ``X``. A ``start_date`` / ``end_date`` column listed in ``payload``
that DuckDB detects as text (it does so when every cell is empty) is read as
DATE when every non-empty cell is a date (checked first, in one scan), so
``where`` can compare it with ``$as_of`` without a ``CAST``; otherwise it stays
text and malformed values drop their rows as before. GB18030 files (what
Chinese spreadsheet software writes) are transcoded to a private temporary
UTF-8 file first, in a streaming pass.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as _dt
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb

from nodes.config import MatchSetConfig
from nodes.matchset_rows import (
    DATE_COLUMNS,
    STREAM_BATCH_ROWS,
    MatchSetBatch,
    Reporter,
    StreamSummary,
    arrow_strings,
    convert,
)
from psi.errors import ConfigError
from runtime.csv_faults import NOT_CLOSED, first_fault

__all__ = [
    "DUCKDB_MEMORY_LIMIT",
    "Query",
    "build_query",
    "connect",
    "count_file_rows",
    "csv_options",
    "detect_encoding",
    "quote",
    "readable_file",
    "source_error",
    "stream_file",
]

_BLOCK = 1 << 20
#: DuckDB's memory limit per connection (one per set being read).
DUCKDB_MEMORY_LIMIT = "256MB"
_PARQUET = frozenset({".parquet", ".pq"})
_TEXT_TYPES = ("VARCHAR",)
#: the quote and escape characters a CSV may use, as SQL literals
_CSV_CHARS = {'"': "'\"'", "'": "''''", "\\": "'\\'"}
#: DuckDB's words for a quote that does not close (its message quotes the record:
#: only the line number and our own words are ever shown)
_CSV_QUOTE_ERRORS = ("unterminated quote", "unquoted")
_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
_CSV_COUNTS = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")
_FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL")


def detect_encoding(path: Path) -> Literal["utf-8", "gb18030"]:
    """``utf-8`` if the whole file decodes as UTF-8 (with or without BOM), else ``gb18030``.

    Raises:
        OSError: the file cannot be read.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        try:
            while block := f.read(_BLOCK):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "gb18030"
    return "utf-8"


@contextlib.contextmanager
def _utf8_copy(path: Path, encoding: str) -> Iterator[Path]:
    """A private temporary UTF-8 copy of ``path`` (streamed), removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="xmatch-node-", suffix=".csv")
    tmp = Path(name)
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        with os.fdopen(fd, "wb") as out, path.open("rb") as src:
            while block := src.read(_BLOCK):
                out.write(decoder.decode(block).encode("utf-8"))
            out.write(decoder.decode(b"", final=True).encode("utf-8"))
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _utf8_source(
    stack: contextlib.ExitStack[bool | None], ms: MatchSetConfig, rep: Reporter, path: Path
) -> Path:
    """A CSV source as UTF-8: ``path`` itself, or a temporary copy that ``stack`` removes.

    Raises:
        ConfigError: the file cannot be read, or is not valid text in its encoding.
    """
    try:
        encoding = ms.encoding if ms.encoding != "auto" else detect_encoding(path)
        if encoding == "utf-8":
            return path
        return stack.enter_context(_utf8_copy(path, encoding))
    except OSError as exc:
        raise rep.error(f"source: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise rep.error(
            f"source: not valid {encoding} text (byte offset about {exc.start}); "
            "set `encoding` or re-export the file"
        ) from None


@contextlib.contextmanager
def readable_file(ms: MatchSetConfig, rep: Reporter) -> Iterator[tuple[Path, bool]]:
    """The file source as DuckDB reads it: (path, whether Parquet).

    A CSV in another encoding is read from a private temporary UTF-8 copy,
    removed when the block ends.

    Raises:
        ConfigError: the file cannot be read, or is not valid text in its encoding.
    """
    path = ms.source_file
    parquet = path.suffix.lower() in _PARQUET
    with contextlib.ExitStack() as stack:
        if not parquet:
            path = _utf8_source(stack, ms, rep, path)
        yield path, parquet


def connect(source: Path | None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can read ``source`` only (None: no file at all), locked."""
    con = duckdb.connect(":memory:")
    # A bound for DuckDB's own buffers (default: 80 % of RAM). Reading a set is a
    # streaming scan, and without a limit its buffer pool kept growing with the
    # file (20M Parquet rows: 275 MiB for the reader alone, 188 MiB with this).
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    # Never spill to disk: DuckDB's temporary files would hold source rows in the
    # clear (world-readable, under the working folder). A query that needs more
    # than the limit fails instead, with a one-line error.
    con.execute("SET temp_directory = ''")
    if source is not None:
        con.execute("SET allowed_paths = $p", {"p": [str(source)]})
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def csv_options(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """How the CSV at ``path`` is read: a header line, no row skipped, and its quotes.

    DuckDB detects the delimiter and the types. The quote and escape are those its
    sniffer finds (``"`` or ``'``; a backslash or the quote doubled), but ``"``
    (RFC 4180, what spreadsheet software writes) where it finds none: given a row
    whose quote does not close, the sniffer chose "no quoting", and every quoted
    identity number was then dropped as invalid. ``skip = 0``: given a ragged
    row, the sniffer chose to skip the rows before it.
    """
    try:
        found = con.execute(
            "SELECT Quote, Escape FROM sniff_csv($path, header = true, skip = 0)",
            {"path": str(path)},
        ).fetchone()
    except duckdb.Error:
        found = None  # the read itself names the problem
    quote_char = found[0] if found is not None and found[0] in ('"', "'") else '"'
    escape = found[1] if found is not None and found[1] in _CSV_CHARS else quote_char
    chars = _CSV_CHARS
    return f"header = true, skip = 0, quote = {chars[quote_char]}, escape = {chars[escape]}"


def quote(name: str) -> str:
    """``name`` as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _payload_expr(col: str, dtype: str) -> tuple[str, str | None]:
    """SQL for the output value of a payload column, and for its "malformed" flag."""
    q = quote(col)
    upper = dtype.upper()
    if upper == "DATE":
        return f"COALESCE(strftime({q}, '%Y-%m-%d'), '')", None
    if upper.startswith("TIMESTAMP"):
        return f"COALESCE(strftime(CAST({q} AS DATE), '%Y-%m-%d'), '')", None
    if upper.startswith(_FLOAT_TYPES) or upper.startswith("DECIMAL"):
        expr = (
            f"COALESCE(CASE WHEN {q} = floor({q}) THEN CAST(CAST({q} AS BIGINT) AS VARCHAR) "
            f"ELSE CAST({q} AS VARCHAR) END, '')"
        )
        return expr, None
    if upper in _TEXT_TYPES and col in DATE_COLUMNS:
        trimmed = f"trim({q})"
        value = f"COALESCE(strftime(TRY_CAST({trimmed} AS DATE), '%Y-%m-%d'), '')"
        bad = f"({q} IS NOT NULL AND {trimmed} <> '' AND TRY_CAST({trimmed} AS DATE) IS NULL)"
        return value, bad
    return f"COALESCE(trim(CAST({q} AS VARCHAR)), '')", None


@dataclass(frozen=True)
class Query:
    """The SELECT of one match set over its file, with what was learnt building it."""

    sql: str
    params: dict[str, Any]
    bad_flags: tuple[str, ...]
    date_hints: tuple[str, ...] = ()
    #: the pieces of ``sql``: the file reader and its parameters, the select list, the filter
    reader: str = ""
    reader_params: dict[str, Any] = field(default_factory=dict)
    selects: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    #: how a CSV source is read (:func:`csv_options`; empty for Parquet)
    options: str = ""


def _csv_fault(ms: MatchSetConfig, rep: Reporter, path: Path) -> ConfigError | None:
    """The first malformed record of the CSV at ``path`` (a UTF-8 copy of the source), if any."""
    try:
        fault = first_fault(path, ms.source_file.name)
    except OSError:
        return None
    return None if fault is None else rep.error(fault)


def source_error(
    ms: MatchSetConfig,
    rep: Reporter,
    path: Path,
    what: str,
    exc: duckdb.Error | OSError,
    *,
    parquet: bool,
) -> ConfigError:
    """DuckDB failing on the source; for a malformed CSV, the line of the record.

    DuckDB names the line when it meets the record while reading (it counts
    records, the header as 1: the file's line unless a cell holds a line break).
    When its sniffer gives up instead, the file is scanned here for the first
    malformed record. Any other error (a ``where`` typo, a type) is DuckDB's.
    """
    text = str(exc)
    if parquet or not (isinstance(exc, OSError) or "CSV" in text or "sniffing" in text):
        return rep.duckdb_error(what, exc)
    line = _CSV_LINE.search(text)
    if line is None:
        fault = _csv_fault(ms, rep, path)
        return fault if fault is not None else rep.duckdb_error(what, exc)
    counts = _CSV_COUNTS.search(text)
    if counts is not None:
        kind = f"expected {counts.group(1)} fields as in the header, found {counts.group(2)}"
    elif any(words in text for words in _CSV_QUOTE_ERRORS):
        kind = NOT_CLOSED
    else:
        return rep.duckdb_error(what, exc)
    return rep.error(f"{ms.source_file.name}:{line.group(1)}: malformed CSV: {kind}")


def _date_hints(
    con: duckdb.DuckDBPyConnection,
    ms: MatchSetConfig,
    rep: Reporter,
    path: Path,
    columns: Mapping[str, str],
    options: str,
) -> list[str]:
    """CSV payload date columns detected as text whose every non-empty cell is a date."""
    candidates = [c for c in ms.payload if c in DATE_COLUMNS and columns[c].upper() in _TEXT_TYPES]
    if not candidates:
        return []
    # A cell that is not NULL (empty) and does not cast, e.g. "someday" or blanks.
    counts = ", ".join(
        f"count_if({quote(c)} IS NOT NULL AND TRY_CAST({quote(c)} AS DATE) IS NULL)"
        for c in candidates
    )
    types = {ms.id_column: "VARCHAR", **dict.fromkeys(candidates, "VARCHAR")}
    try:
        rows = con.execute(
            f"SELECT {counts} FROM read_csv($path, {options}, types = $types)",
            {"path": str(path), "types": types},
        ).fetchall()  # fetch to the end: the connection runs the main query next
    except duckdb.Error as exc:
        raise source_error(ms, rep, path, "source", exc, parquet=False) from None
    bad = rows[0] if rows else [1] * len(candidates)
    return [c for c, n in zip(candidates, bad, strict=True) if n == 0]


def build_query(
    con: duckdb.DuckDBPyConnection,
    ms: MatchSetConfig,
    rep: Reporter,
    path: Path,
    as_of: _dt.date,
    *,
    parquet: bool,
) -> Query:
    """Check the source's columns and build the SELECT of one match set (steps 1-3)."""
    # (1) the source's columns and types
    options = ""
    if parquet:
        plain = reader = "read_parquet($path)"
        params: dict[str, Any] = {"path": str(path)}
    else:
        options = csv_options(con, path)
        plain = f"read_csv($path, {options})"
        reader = f"read_csv($path, {options}, types = $types)"
        params = {"path": str(path), "types": {ms.id_column: "VARCHAR"}}
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {plain}", {"path": str(path)})
        columns = {str(r[0]): str(r[1]) for r in described.fetchall()}
    except duckdb.Error as exc:
        raise source_error(ms, rep, path, "source", exc, parquet=parquet) from None
    # (2) required columns
    if ms.id_column not in columns:
        # a ragged row makes DuckDB guess another delimiter: the header is one column
        fault = None if parquet or len(columns) > 1 else _csv_fault(ms, rep, path)
        raise fault or rep.error(
            f"id_column {ms.id_column!r} not found in {ms.source_file.name} "
            f"(columns: {', '.join(list(columns)[:20])})"
        )
    missing = [c for c in ms.payload if c not in columns]
    if missing:
        raise rep.error(
            f"payload column {missing[0]!r} not found in {ms.source_file.name}; "
            "rename the column in the source or drop it from `payload`"
        )
    if parquet and columns[ms.id_column].upper() not in _TEXT_TYPES:
        raise rep.error(
            f"id_column {ms.id_column!r} is {columns[ms.id_column]} in the Parquet file; "
            "store identity numbers as text (numbers lose the check character X)"
        )
    hints: list[str] = []
    if not parquet:
        hints = _date_hints(con, ms, rep, path, columns, options)
        params["types"] = {**params["types"], **dict.fromkeys(hints, "DATE")}
        columns = {**columns, **dict.fromkeys(hints, "DATE")}
    # (3) the query; $as_of is always referenced (by the CTE), so binding it is valid
    selects = [f"COALESCE(CAST({quote(ms.id_column)} AS VARCHAR), '') AS _id"]
    bad_flags: list[str] = []
    for i, col in enumerate(ms.payload):
        value, bad = _payload_expr(col, columns[col])
        selects.append(f"{value} AS _p{i}")
        if bad is not None:
            selects.append(f"{bad} AS _bad{i}")
            bad_flags.append(col)
    where = f"WHERE ({ms.where})" if ms.where else ""
    sql = (
        "WITH _xmatch_params AS (SELECT CAST($as_of AS DATE) AS as_of) "
        f"SELECT {', '.join(selects)} FROM {reader} AS source {where}"
    )
    return Query(
        sql=sql,
        params={**params, "as_of": as_of},
        bad_flags=tuple(bad_flags),
        date_hints=tuple(hints),
        reader=reader,
        reader_params=params,
        selects=tuple(selects),
        columns=tuple(columns),
        options=options,
    )


def _no_rows(con: duckdb.DuckDBPyConnection, path: Path, options: str) -> bool:
    """Whether the CSV at ``path`` (read with ``options``) has no data row (asked only
    after a failure)."""
    try:
        found = con.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM read_csv($path, {options}, all_varchar = true)"
            " LIMIT 1)",
            {"path": str(path)},
        ).fetchone()
    except duckdb.Error:
        return False
    return found is not None and found[0] == 0


def stream_file(
    ms: MatchSetConfig,
    rep: Reporter,
    path: Path,
    as_of: _dt.date,
    *,
    parquet: bool,
    summary: StreamSummary,
    batch_rows: int = STREAM_BATCH_ROWS,
) -> Iterator[MatchSetBatch]:
    """The file at ``path`` (UTF-8 or Parquet) as of ``as_of``, in converted record batches.

    Raises:
        ConfigError: a column is missing or of the wrong type, ``where`` is not
            valid SQL for the source, or DuckDB fails while reading (details withheld).
    """
    con = connect(path)
    try:
        query = build_query(con, ms, rep, path, as_of, parquet=parquet)
        what = "where" if ms.where else "source"

        def failed(exc: duckdb.Error | OSError) -> ConfigError:
            if query.date_hints and isinstance(exc, duckdb.ConversionException):
                # The file changed between the check and the read: name the columns only.
                return rep.error(
                    f"payload column(s) {', '.join(map(repr, query.date_hints))}: a value is "
                    "not a date (YYYY-MM-DD) while reading them as DATE (value withheld)"
                )
            if not parquet and _no_rows(con, path, query.options):
                # every column of a header-only CSV is text: `where` fails on its types,
                # which says nothing about the real problem
                return rep.error(f"{ms.source_file.name} has a header and no rows")
            return source_error(ms, rep, path, what, exc, parquet=parquet)

        try:
            reader = con.sql(query.sql, params=query.params).to_arrow_reader(batch_rows)
        except duckdb.Error as exc:
            raise failed(exc) from None
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (duckdb.Error, OSError) as exc:
                # a failure inside the stream comes as OSError, with DuckDB's text
                raise failed(exc) from None
            result: dict[str, Any] = {}
            for col_name in batch.schema.names:
                col = batch.column(col_name)
                if col_name.startswith("_bad"):
                    result[col_name] = col.to_numpy(zero_copy_only=False).astype(bool)
                else:
                    result[col_name] = arrow_strings(col)
            yield summary.add(convert(result, ms, query.bad_flags, as_of))
    finally:
        con.close()


def count_file_rows(ms: MatchSetConfig, rep: Reporter) -> int:
    """Rows in the file source, before ``where`` (Parquet: from its metadata).

    Raises:
        ConfigError: the file cannot be read.
    """
    with readable_file(ms, rep) as (path, parquet), contextlib.closing(connect(path)) as con:
        reader = "read_parquet($path)" if parquet else f"read_csv($path, {csv_options(con, path)})"
        try:
            row = con.execute(f"SELECT count(*) FROM {reader}", {"path": str(path)}).fetchone()
        except duckdb.Error as exc:
            raise source_error(ms, rep, path, "source", exc, parquet=parquet) from None
    return int(row[0]) if row else 0
