"""Loading a match set for one round's evaluation date, with DuckDB.

For a match set of ``node.toml`` and a round's ``as_of`` this runs, inside the
node::

    SELECT <id_column>, <payload columns>
    FROM read_csv(<source>) | read_parquet(<source>)
    WHERE <where>                -- $as_of bound as a DATE named parameter

then normalizes the identity numbers (:func:`psi.identifiers.normalize_id_column`
with ``today=as_of``) and encodes them as 16-byte blocks. Rows whose number is
invalid, or whose payload value is malformed, are dropped and *counted by
reason*; their values are never logged or put into a message.

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
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import numpy.typing as npt

from databases import DatabaseError, DatabaseSource, Session, open_session
from nodes.config import MatchSetConfig, NodeConfig
from psi.errors import ConfigError
from psi.identifiers import encode_identities, normalize_id_column

__all__ = [
    "STREAM_BATCH_ROWS",
    "LoadedMatchSet",
    "MatchSetBatch",
    "MatchSetStore",
    "StreamSummary",
    "count_source_rows",
    "detect_encoding",
    "load_match_set",
    "stream_match_set",
]

_BLOCK = 1 << 20
#: Rows per record batch when a set is read (bounds the memory of a batch). Smaller is
#: not slower: 20M Parquet rows streamed in 11.6 s at 65,536 rows (peak 334 MiB) against
#: 18.9 s (750 MiB) at 524,288 (docs/performance.md).
STREAM_BATCH_ROWS = 1 << 16
#: DuckDB's memory limit per connection (one per set being read).
DUCKDB_MEMORY_LIMIT = "256MB"
_DATE_COLUMNS = frozenset({"start_date", "end_date"})
_ALLOWED_CODES: Mapping[str, frozenset[str]] = {
    "disability_category": frozenset({"", *map(str, range(1, 8))}),
    "disability_grade": frozenset({"", *map(str, range(1, 5))}),
}
_PARQUET = frozenset({".parquet", ".pq"})
_TEXT_TYPES = ("VARCHAR",)
_FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL")
# DuckDB errors whose first line names only SQL or column names, never values.
_SAFE_ERRORS = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)


@dataclass(frozen=True, eq=False)
class LoadedMatchSet:
    """One match set as of one date, ready for a round.

    ``identities`` is ``(n, 16)`` uint8 (psi's encoding); ``payload`` maps each
    allowed payload column to an ``n``-element string array aligned with the
    rows (dates ``YYYY-MM-DD``, unknown ``""``). ``rejected`` counts dropped
    rows by reason (``length``, ``check``, ``birth_date``, ``payload_end_date``,
    ...). ``rows_selected`` is the number of rows ``where`` kept.

    A set larger than ``stream_rows`` is never held in memory: the store
    returns it with ``streamed=True``, no rows, and ``streamed_rows`` = the
    rows kept when it was last read; rounds read it with
    :meth:`MatchSetStore.stream`.
    """

    name: str
    as_of: _dt.date
    identities: npt.NDArray[np.uint8]
    payload: Mapping[str, npt.NDArray[np.str_]]
    rows_selected: int
    rejected: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    streamed: bool = False
    streamed_rows: int = 0

    def __len__(self) -> int:
        return self.streamed_rows if self.streamed else int(self.identities.shape[0])

    @property
    def rejected_total(self) -> int:
        """Rows dropped for an invalid identity number or payload value."""
        return sum(self.rejected.values())

    def payload_rows(self, rows: npt.NDArray[np.int64]) -> list[dict[str, str]]:
        """The payload of the given row indices, one dict per row (empty values omitted)."""
        names = list(self.payload)
        if not names:
            return [{} for _ in range(len(rows))]
        lists = [self.payload[k][rows].tolist() for k in names]
        return [
            {k: v for k, v in zip(names, row, strict=True) if v != ""}
            for row in zip(*lists, strict=True)
        ]


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


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Reporter:
    """Builds the one-line errors of one match set."""

    def __init__(self, config: NodeConfig, ms: MatchSetConfig) -> None:
        self.prefix = f"{config.path}: {config.key_path(ms.name)} ({ms.name!r})"

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.prefix}: {message}")

    def database_error(self, source: DatabaseSource, exc: ConfigError) -> ConfigError:
        """A database source's error, prefixed with the match set (reason kept)."""
        text = f"{self.prefix}: source ({source.describe()}): {exc}"
        if isinstance(exc, DatabaseError):
            return DatabaseError(text, reason=exc.reason)
        return ConfigError(text)

    def duckdb_error(self, what: str, exc: duckdb.Error) -> ConfigError:
        if isinstance(exc, _SAFE_ERRORS):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return ConfigError(f"{self.prefix}: {what}: {first}")
        # Conversion and CSV errors quote the offending row: never show them.
        kind = type(exc).__name__.removesuffix("Exception")
        return ConfigError(
            f"{self.prefix}: {what}: DuckDB {kind} error while reading the source "
            "(details withheld: they may quote record values; check the file's format "
            "and the column types your `where` compares)"
        )


def _configured(config: NodeConfig, name: str) -> tuple[MatchSetConfig, _Reporter]:
    """Match set ``name`` of ``config`` and its error reporter.

    Raises:
        ConfigError: no match set of that name.
    """
    ms = config.match_set(name)
    if ms is None:
        raise ConfigError(f"{config.path}: no match set {name!r}")
    return ms, _Reporter(config, ms)


def _utf8_source(
    stack: contextlib.ExitStack[bool | None], ms: MatchSetConfig, rep: _Reporter, path: Path
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


def _connect(source: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    # A bound for DuckDB's own buffers (default: 80 % of RAM). Reading a set is a
    # streaming scan, and without a limit its buffer pool kept growing with the
    # file (20M Parquet rows: 275 MiB for the reader alone, 188 MiB with this).
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    # Never spill to disk: DuckDB's temporary files would hold source rows in the
    # clear (world-readable, under the working folder). A query that needs more
    # than the limit fails instead, with a one-line error.
    con.execute("SET temp_directory = ''")
    con.execute("SET allowed_paths = $p", {"p": [str(source)]})
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _payload_expr(col: str, dtype: str) -> tuple[str, str | None]:
    """SQL for the output value of a payload column, and for its "malformed" flag."""
    q = _quote(col)
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
    if upper in _TEXT_TYPES and col in _DATE_COLUMNS:
        trimmed = f"trim({q})"
        value = f"COALESCE(strftime(TRY_CAST({trimmed} AS DATE), '%Y-%m-%d'), '')"
        bad = f"({q} IS NOT NULL AND {trimmed} <> '' AND TRY_CAST({trimmed} AS DATE) IS NULL)"
        return value, bad
    return f"COALESCE(trim(CAST({q} AS VARCHAR)), '')", None


def _as_str(values: Any) -> npt.NDArray[np.str_]:
    arr = np.ma.filled(values, "") if np.ma.isMaskedArray(values) else np.asarray(values)
    if arr.dtype.kind == "U":
        return arr
    if len(arr) == 0:
        return np.zeros(0, dtype="<U1")
    return arr.astype(str)


def load_match_set(config: NodeConfig, name: str, as_of: _dt.date) -> LoadedMatchSet:
    """Load match set ``name`` of ``config`` for the evaluation date ``as_of``.

    Raises:
        ConfigError: unknown match set; the source cannot be read or decoded; the
            id column or a payload column is missing; ``where`` is not valid SQL
            for the source; a Parquet id column is not text. One line naming the
            node.toml match set and the problem, never a record value.
    """
    ms, rep = _configured(config, name)
    started = time.perf_counter()
    if ms.database is not None:
        summary = StreamSummary()
        return _collect(ms, as_of, _db_stream(ms, rep, as_of, summary=summary), summary, started)
    path = ms.source_file
    if path.suffix.lower() in _PARQUET:
        return _load(config, ms, rep, path, as_of, parquet=True, started=started)
    try:
        encoding = ms.encoding if ms.encoding != "auto" else detect_encoding(path)
    except OSError as exc:
        raise rep.error(f"source: cannot read ({exc.strerror})") from exc
    if encoding == "utf-8":
        return _load(config, ms, rep, path, as_of, parquet=False, started=started)
    try:
        with _utf8_copy(path, encoding) as copy:
            return _load(config, ms, rep, copy, as_of, parquet=False, started=started)
    except UnicodeDecodeError as exc:
        raise rep.error(
            f"source: not valid {encoding} text (byte offset about {exc.start}); "
            "set `encoding` or re-export the file"
        ) from None
    except OSError as exc:
        raise rep.error(f"source: cannot read ({exc.strerror})") from exc


@dataclass(frozen=True)
class _Query:
    sql: str
    params: dict[str, Any]
    bad_flags: tuple[str, ...]
    date_hints: tuple[str, ...] = ()
    #: the pieces of ``sql``: the file reader and its parameters, the select list, the filter
    reader: str = ""
    reader_params: dict[str, Any] = field(default_factory=dict)
    selects: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()


def _date_hints(
    con: duckdb.DuckDBPyConnection,
    ms: MatchSetConfig,
    rep: _Reporter,
    path: Path,
    columns: Mapping[str, str],
) -> list[str]:
    """CSV payload date columns detected as text whose every non-empty cell is a date."""
    candidates = [c for c in ms.payload if c in _DATE_COLUMNS and columns[c].upper() in _TEXT_TYPES]
    if not candidates:
        return []
    # A cell that is not NULL (empty) and does not cast, e.g. "someday" or blanks.
    counts = ", ".join(
        f"count_if({_quote(c)} IS NOT NULL AND TRY_CAST({_quote(c)} AS DATE) IS NULL)"
        for c in candidates
    )
    types = {ms.id_column: "VARCHAR", **dict.fromkeys(candidates, "VARCHAR")}
    try:
        rows = con.execute(
            f"SELECT {counts} FROM read_csv($path, header = true, types = $types)",
            {"path": str(path), "types": types},
        ).fetchall()  # fetch to the end: the connection runs the main query next
    except duckdb.Error as exc:
        raise rep.duckdb_error("source", exc) from None
    bad = rows[0] if rows else [1] * len(candidates)
    return [c for c, n in zip(candidates, bad, strict=True) if n == 0]


def _query(
    con: duckdb.DuckDBPyConnection,
    ms: MatchSetConfig,
    rep: _Reporter,
    path: Path,
    as_of: _dt.date,
    *,
    parquet: bool,
) -> _Query:
    """Check the source's columns and build the SELECT of one match set (steps 1-3)."""
    # (1) the source's columns and types
    if parquet:
        plain = reader = "read_parquet($path)"
        params: dict[str, Any] = {"path": str(path)}
    else:
        plain = "read_csv($path, header = true)"
        reader = "read_csv($path, header = true, types = $types)"
        params = {"path": str(path), "types": {ms.id_column: "VARCHAR"}}
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {plain}", {"path": str(path)})
        columns = {str(r[0]): str(r[1]) for r in described.fetchall()}
    except duckdb.Error as exc:
        raise rep.duckdb_error("source", exc) from None
    # (2) required columns
    if ms.id_column not in columns:
        raise rep.error(
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
        hints = _date_hints(con, ms, rep, path, columns)
        params["types"] = {**params["types"], **dict.fromkeys(hints, "DATE")}
        columns = {**columns, **dict.fromkeys(hints, "DATE")}
    # (3) the query; $as_of is always referenced (by the CTE), so binding it is valid
    selects = [f"COALESCE(CAST({_quote(ms.id_column)} AS VARCHAR), '') AS _id"]
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
    return _Query(
        sql=sql,
        params={**params, "as_of": as_of},
        bad_flags=tuple(bad_flags),
        date_hints=tuple(hints),
        reader=reader,
        reader_params=params,
        selects=tuple(selects),
        columns=tuple(columns),
    )


@dataclass(frozen=True, eq=False)
class _Converted:
    identities: npt.NDArray[np.uint8]
    payload: dict[str, npt.NDArray[np.str_]]
    rows: int
    rejected: Counter[str]


def _convert(
    result: Mapping[str, Any], ms: MatchSetConfig, bad_flags: tuple[str, ...], as_of: _dt.date
) -> _Converted:
    """Normalize and count one block of query output, with array operations (step 4)."""
    raw_ids = _as_str(result["_id"])
    n = len(raw_ids)
    column = normalize_id_column(raw_ids, today=as_of)
    keep = column.valid.copy()
    rejected: Counter[str] = Counter()
    for row in np.flatnonzero(~column.valid).tolist():
        rejected[column.reasons[row] or "invalid"] += 1
    payload: dict[str, npt.NDArray[np.str_]] = {}
    for i, col in enumerate(ms.payload):
        values = _as_str(result[f"_p{i}"])
        malformed = np.zeros(n, dtype=bool)
        if col in bad_flags:
            malformed |= np.asarray(np.ma.filled(result[f"_bad{i}"], False), dtype=bool)
        if col in _ALLOWED_CODES and n:
            malformed |= ~np.isin(values, list(_ALLOWED_CODES[col]))
        newly = malformed & keep
        if newly.any():
            rejected[f"payload_{col}"] += int(newly.sum())
            keep &= ~malformed
        payload[col] = values
    ids = column.ids[keep]
    return _Converted(
        identities=encode_identities(ids),
        payload={k: v[keep] for k, v in payload.items()},
        rows=n,
        rejected=rejected,
    )


def _load(
    config: NodeConfig,
    ms: MatchSetConfig,
    rep: _Reporter,
    path: Path,
    as_of: _dt.date,
    *,
    parquet: bool,
    started: float,
) -> LoadedMatchSet:
    summary = StreamSummary()
    batches = _stream(ms, rep, path, as_of, parquet=parquet, summary=summary)
    return _collect(ms, as_of, batches, summary, started)


def _collect(
    ms: MatchSetConfig,
    as_of: _dt.date,
    batches: Iterator[MatchSetBatch],
    summary: StreamSummary,
    started: float,
) -> LoadedMatchSet:
    # Read in record batches and keep only the encoded rows: the transient
    # arrays of normalization then cover one batch, not the whole set
    # (3M rows: peak 2.3 GiB with one fetchnumpy, well under 1 GiB this way).
    ids: list[npt.NDArray[np.uint8]] = []
    payload: dict[str, list[npt.NDArray[np.str_]]] = {col: [] for col in ms.payload}
    for batch in batches:
        ids.append(batch.identities)
        for col in payload:
            payload[col].append(batch.payload[col])
    return LoadedMatchSet(
        name=ms.name,
        as_of=as_of,
        identities=np.concatenate(ids) if ids else np.zeros((0, 16), dtype=np.uint8),
        payload={
            col: np.concatenate(parts) if parts else np.zeros(0, dtype="<U1")
            for col, parts in payload.items()
        },
        rows_selected=summary.rows_selected,
        rejected=dict(summary.rejected),
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------
# Streaming (sets larger than ``stream_rows``)


@dataclass(frozen=True, eq=False)
class MatchSetBatch:
    """One record batch of a streamed match set.

    ``identities`` (k, 16) and ``payload`` as in :class:`LoadedMatchSet`, for
    the rows of this batch that passed normalization; ``offset`` is the index
    of its first kept row among all kept rows of the set (so ``offset + i``
    is the same row number a full load would give).
    """

    identities: npt.NDArray[np.uint8]
    payload: Mapping[str, npt.NDArray[np.str_]]
    offset: int

    def __len__(self) -> int:
        return int(self.identities.shape[0])


@dataclass
class StreamSummary:
    """Filled in while a streamed set is read: what a full load reports."""

    rows_selected: int = 0
    kept: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_loaded(self, name: str, as_of: _dt.date, seconds: float) -> LoadedMatchSet:
        """A :class:`LoadedMatchSet` with the counts and no rows (``streamed=True``)."""
        return LoadedMatchSet(
            name=name,
            as_of=as_of,
            identities=np.zeros((0, 16), dtype=np.uint8),
            payload={},
            rows_selected=self.rows_selected,
            rejected=dict(self.rejected),
            seconds=seconds,
            streamed=True,
            streamed_rows=self.kept,
        )


def _arrow_strings(column: Any) -> npt.NDArray[np.str_]:
    """A pyarrow string column as a numpy ``<U`` array (fast when every value has one width)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n and arr.null_count == 0 and pa.types.is_string(arr.type):
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
        width = int(offsets[1] - offsets[0])
        # every value must have that width (the total alone can match by chance)
        if 0 < width <= 64 and bool((np.diff(offsets) == width).all()):
            data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
            if not (data & 0x80).any():  # ASCII: one byte per character
                fixed: npt.NDArray[np.str_] = data.view(f"S{width}").astype(f"<U{width}")
                return fixed
    return _as_str(arr.to_numpy(zero_copy_only=False))


def stream_match_set(
    config: NodeConfig,
    name: str,
    as_of: _dt.date,
    *,
    batch_rows: int = STREAM_BATCH_ROWS,
    summary: StreamSummary | None = None,
) -> Iterator[MatchSetBatch]:
    """Read match set ``name`` in record batches of at most ``batch_rows`` rows.

    The whole set is never in memory: DuckDB streams Arrow record batches and
    each is normalized and encoded on its own. ``summary`` (if given) collects
    the counts a full load would report.

    Raises:
        ConfigError: as :func:`load_match_set` (a conversion error may surface
            in the middle of the stream).
    """
    ms, rep = _configured(config, name)
    summary = summary if summary is not None else StreamSummary()
    if ms.database is not None:
        yield from _db_stream(ms, rep, as_of, summary=summary, batch_rows=batch_rows)
        return
    path = ms.source_file
    parquet = path.suffix.lower() in _PARQUET
    with contextlib.ExitStack() as stack:
        if not parquet:
            path = _utf8_source(stack, ms, rep, path)
        yield from _stream(
            ms, rep, path, as_of, parquet=parquet, summary=summary, batch_rows=batch_rows
        )


def _stream(
    ms: MatchSetConfig,
    rep: _Reporter,
    path: Path,
    as_of: _dt.date,
    *,
    parquet: bool,
    summary: StreamSummary,
    batch_rows: int = STREAM_BATCH_ROWS,
) -> Iterator[MatchSetBatch]:
    con = _connect(path)
    try:
        query = _query(con, ms, rep, path, as_of, parquet=parquet)
        what = "where" if ms.where else "source"

        def failed(exc: duckdb.Error) -> ConfigError:
            if query.date_hints and isinstance(exc, duckdb.ConversionException):
                # The file changed between the check and the read: name the columns only.
                return rep.error(
                    f"payload column(s) {', '.join(map(repr, query.date_hints))}: a value is "
                    "not a date (YYYY-MM-DD) while reading them as DATE (value withheld)"
                )
            return rep.duckdb_error(what, exc)

        try:
            reader = con.sql(query.sql, params=query.params).to_arrow_reader(batch_rows)
        except duckdb.Error as exc:
            raise failed(exc) from None
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except duckdb.Error as exc:
                raise failed(exc) from None
            result: dict[str, Any] = {}
            for col_name in batch.schema.names:
                col = batch.column(col_name)
                if col_name.startswith("_bad"):
                    result[col_name] = col.to_numpy(zero_copy_only=False).astype(bool)
                else:
                    result[col_name] = _arrow_strings(col)
            block = _convert(result, ms, query.bad_flags, as_of)
            summary.rows_selected += block.rows
            summary.rejected.update(block.rejected)
            out = MatchSetBatch(
                identities=block.identities, payload=block.payload, offset=summary.kept
            )
            summary.kept += len(out)
            yield out
    finally:
        con.close()


# --------------------------------------------------------------------------
# Prepared file sets: parsed and normalized once per file version, filtered per as_of


@dataclass(frozen=True, eq=False)
class PreparedFile:
    """A file source parsed once, for every ``as_of`` (issue 10: no reparse per round).

    ``rows`` is the file as an Arrow table of the columns a round needs (the id,
    the payload, and every column whose name occurs in ``where``), plus its row
    number. The identity numbers are normalized once without a date
    (``encoded`` for the valid ones, ``position`` = the index into ``encoded``
    of each row or -1); what depends on ``as_of`` (``where``, and the future
    birth date check, from ``birth``) is applied per round by
    :func:`_load_prepared`. Held in memory only, never written to disk.
    """

    version: tuple[int, int]
    rows: Any  # pyarrow.Table
    query: _Query
    encoded: npt.NDArray[np.uint8]
    position: npt.NDArray[np.int32]
    birth: npt.NDArray[np.int32]
    #: the reason code of each invalid row, as an index into ``reason_names`` (0: valid)
    reasons: npt.NDArray[np.uint8]
    reason_names: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        """Bytes held (the Arrow table and the arrays)."""
        arrays = (self.encoded, self.position, self.birth)
        return int(self.rows.nbytes) + sum(int(a.nbytes) for a in arrays)


_ROW = "_xmatch_row"


def _birth_days(ids: npt.NDArray[np.str_]) -> npt.NDArray[np.int32]:
    """YYYYMMDD of each canonical 18-character number (digits 7-14), 0 for ``""``."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    codes = np.ascontiguousarray(ids, dtype="<U18").view(np.uint32).reshape(n, 18)[:, 6:14]
    digits = codes.astype(np.int32) - ord("0")
    digits[codes == 0] = 0
    weights = 10 ** np.arange(7, -1, -1, dtype=np.int32)
    days: npt.NDArray[np.int32] = (digits @ weights).astype(np.int32)
    return days


def prepare_file(config: NodeConfig, name: str, version: tuple[int, int]) -> PreparedFile:
    """Parse and normalize a file match set once (see :class:`PreparedFile`).

    Raises:
        ConfigError: as :func:`load_match_set`.
    """
    ms, rep = _configured(config, name)
    path = ms.source_file
    parquet = path.suffix.lower() in _PARQUET
    with contextlib.ExitStack() as stack:
        if not parquet:
            path = _utf8_source(stack, ms, rep, path)
        con = _connect(path)
        stack.callback(con.close)
        today = _dt.date.today()
        query = _query(con, ms, rep, path, today, parquet=parquet)
        where = (ms.where or "").lower()
        keep = [
            c
            for c in query.columns
            if c == ms.id_column or c in ms.payload or (where and c.lower() in where)
        ]
        try:
            rows = con.sql(
                f"SELECT {', '.join(_quote(c) for c in keep)} FROM {query.reader}",
                params=query.reader_params,
            ).to_arrow_table()
        except duckdb.Error as exc:
            raise rep.duckdb_error("source", exc) from None
    import pyarrow as pa

    n = rows.num_rows
    rows = rows.append_column(_ROW, pa.array(np.arange(n, dtype=np.int64)))
    ids = rows.column(ms.id_column)
    encoded: list[npt.NDArray[np.uint8]] = []
    position = np.full(n, -1, dtype=np.int32)
    birth = np.zeros(n, dtype=np.int32)
    reasons = np.zeros(n, dtype=np.uint8)
    names: dict[str, int] = {"": 0}
    kept = 0
    # in slices: normalization's transient arrays cover one slice, not the file
    for lo in range(0, n, STREAM_BATCH_ROWS):
        part = ids.slice(lo, STREAM_BATCH_ROWS).fill_null("")
        column = normalize_id_column(_arrow_strings(part), today=None)
        valid = column.valid
        hi = lo + len(valid)
        position[lo:hi][valid] = kept + np.arange(int(valid.sum()), dtype=np.int32)
        kept += int(valid.sum())
        birth[lo:hi] = _birth_days(column.ids)
        for i in np.flatnonzero(~valid).tolist():
            reason = column.reasons[i] or "invalid"
            reasons[lo + i] = names.setdefault(reason, min(len(names), 255))
        encoded.append(encode_identities(column.ids[valid]))
    return PreparedFile(
        version=version,
        rows=rows,
        query=query,
        encoded=np.concatenate(encoded) if encoded else np.zeros((0, 16), dtype=np.uint8),
        position=position,
        birth=birth,
        reasons=reasons,
        reason_names=tuple(names),
    )


def _load_prepared(
    config: NodeConfig, prepared: PreparedFile, name: str, as_of: _dt.date
) -> LoadedMatchSet:
    """The set as of ``as_of`` from a :class:`PreparedFile`: ``where`` runs on the Arrow rows."""
    ms = config.match_set(name)
    assert ms is not None
    rep = _Reporter(config, ms)
    started = time.perf_counter()
    q = prepared.query
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        con.execute("SET temp_directory = ''")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        con.register("_xmatch_rows", prepared.rows)
        where = f"WHERE ({ms.where})" if ms.where else ""
        sql = (
            "WITH _xmatch_params AS (SELECT CAST($as_of AS DATE) AS as_of) "
            f"SELECT {_ROW}, {', '.join(q.selects[1:]) or '1 AS _none'} "
            f"FROM _xmatch_rows AS source {where}"
        )
        try:
            result = con.sql(sql, params={"as_of": as_of}).to_arrow_table()
        except duckdb.Error as exc:
            raise rep.duckdb_error("where" if ms.where else "source", exc) from None
    finally:
        con.close()
    selected = result.column(_ROW).to_numpy()
    n = len(selected)
    if n > 1 and not bool((np.diff(selected) > 0).all()):
        order = np.argsort(selected, kind="stable")  # file order, as a full read gives
        result = result.take(order)
        selected = selected[order]
    position = prepared.position[selected]
    keep = position >= 0
    rejected: Counter[str] = Counter()
    codes = np.bincount(prepared.reasons[selected[~keep]], minlength=len(prepared.reason_names))
    for code, count in enumerate(codes.tolist()):
        if code and count:
            rejected[prepared.reason_names[code]] += count
    future = keep & (prepared.birth[selected] > int(as_of.strftime("%Y%m%d")))
    if future.any():
        rejected["future_birth_date"] += int(future.sum())
        keep &= ~future
    payload: dict[str, npt.NDArray[np.str_]] = {}
    for i, col in enumerate(ms.payload):
        values = _arrow_strings(result.column(f"_p{i}"))
        malformed = np.zeros(n, dtype=bool)
        if col in q.bad_flags:
            malformed |= result.column(f"_bad{i}").to_numpy(zero_copy_only=False).astype(bool)
        if col in _ALLOWED_CODES and n:
            malformed |= ~np.isin(values, list(_ALLOWED_CODES[col]))
        newly = malformed & keep
        if newly.any():
            rejected[f"payload_{col}"] += int(newly.sum())
            keep &= ~malformed
        payload[col] = values
    return LoadedMatchSet(
        name=ms.name,
        as_of=as_of,
        identities=prepared.encoded[position[keep]],
        payload={k: v[keep] for k, v in payload.items()},
        rows_selected=n,
        rejected=dict(rejected),
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------
# Database sources (docs/node.md, "Match sets in a database")

_DATE_KINDS = ("date", "timestamp")
_CODE_KINDS = ("text", "integer", "decimal", "float")


def _open(ms: MatchSetConfig, rep: _Reporter) -> tuple[DatabaseSource, Session]:
    source = ms.database
    assert source is not None
    try:
        return source, open_session(source)
    except ConfigError as exc:
        raise rep.database_error(source, exc) from None


def _db_check_types(
    ms: MatchSetConfig, rep: _Reporter, source: DatabaseSource, session: Session
) -> None:
    """Refuse an id column that is not text and a date column that is not a date (step 2)."""
    try:
        columns = session.columns([ms.id_column, *ms.payload])
    except ConfigError as exc:
        raise rep.database_error(source, exc) from None
    id_col = columns[0]
    if id_col.kind != "text":
        raise rep.database_error(
            source,
            DatabaseError(
                f"id_column {ms.id_column!r} is {id_col.type_name} in the database; store "
                "identity numbers as text (a number loses leading digits and the check "
                "character X)",
                reason="type",
            ),
        )
    for col, found in zip(ms.payload, columns[1:], strict=True):
        allowed = _DATE_KINDS if col in _DATE_COLUMNS else _CODE_KINDS
        if found.kind not in allowed:
            hint = (
                "store dates as DATE (or convert them in `query`)"
                if col in _DATE_COLUMNS
                else "store it as a number or text"
            )
            raise rep.database_error(
                source,
                DatabaseError(
                    f"payload column {col!r} is {found.type_name} in the database; {hint}",
                    reason="type",
                ),
            )


def _db_stream(
    ms: MatchSetConfig,
    rep: _Reporter,
    as_of: _dt.date,
    *,
    summary: StreamSummary,
    batch_rows: int = STREAM_BATCH_ROWS,
) -> Iterator[MatchSetBatch]:
    """A database match set in batches: the database runs ``where``; we normalize (step 4)."""
    source, session = _open(ms, rep)
    try:
        # (1) connected read-only (databases.open_session), (2) column types
        _db_check_types(ms, rep, source, session)
        # (3) the SELECT, with $as_of bound by the driver
        sql = session.select([ms.id_column, *ms.payload], ms.where)
        try:
            sql, params = session.bind_as_of(sql, as_of)
            width = 1 + len(ms.payload)
            for columns in session.stream(sql, params, width=width, batch_rows=batch_rows):
                result: dict[str, Any] = {"_id": columns[0]}
                for i in range(len(ms.payload)):
                    result[f"_p{i}"] = columns[1 + i]
                block = _convert(result, ms, (), as_of)
                summary.rows_selected += block.rows
                summary.rejected.update(block.rejected)
                out = MatchSetBatch(
                    identities=block.identities, payload=block.payload, offset=summary.kept
                )
                summary.kept += len(out)
                yield out
        except ConfigError as exc:
            raise rep.database_error(source, exc) from None
    finally:
        session.close()


def _db_stamp(ms: MatchSetConfig, rep: _Reporter) -> tuple[int, str | None]:
    """(rows, max of ``change_column`` or None): what tells that the table changed."""
    source, session = _open(ms, rep)
    try:
        change = f", max({source.change_column})" if source.change_column else ""
        sql = f"SELECT count(*){change} FROM {source.relation} source"
        try:
            sql, params = session.bind_as_of(sql, _dt.date.today())
            row = session.fetch_row(sql, params)
        except ConfigError as exc:
            raise rep.database_error(source, exc) from None
    finally:
        session.close()
    rows = int(row[0]) if row and row[0] is not None else 0
    stamp = None if not source.change_column or len(row) < 2 else repr(row[1])
    return rows, stamp


def count_source_rows(config: NodeConfig, name: str) -> int:
    """Rows in the source of match set ``name``, before ``where`` (Parquet: from metadata).

    Raises:
        ConfigError: as :func:`load_match_set`.
    """
    ms, rep = _configured(config, name)
    if ms.database is not None:
        return _db_stamp(ms, rep)[0]
    path = ms.source_file
    parquet = path.suffix.lower() in _PARQUET
    with contextlib.ExitStack() as stack:
        if not parquet:
            path = _utf8_source(stack, ms, rep, path)
        con = _connect(path)
        stack.callback(con.close)
        reader = "read_parquet($path)" if parquet else "read_csv($path, header = true)"
        try:
            row = con.execute(f"SELECT count(*) FROM {reader}", {"path": str(path)}).fetchone()
        except duckdb.Error as exc:
            raise rep.duckdb_error("source", exc) from None
    return int(row[0]) if row else 0


#: (match set, as_of, source version): a file's (mtime, size), or a table's stamp
_Key = tuple[str, _dt.date, tuple[object, ...]]


class MatchSetStore:
    """Loads match sets on demand and keeps the last few in a small LRU cache.

    The cache key is (match set, as_of, the source's version), so an updated
    source is read again. A file's version is its mtime and size; a database
    table's is its row count and the maximum of ``change_column``, and a
    database source without ``change_column`` is never cached (every round
    reads it). Concurrent rounds asking for the same key wait for one load
    instead of each running it.

    A file source is also kept *prepared* (parsed and normalized once, a
    :class:`PreparedFile`, one per set) while its version is unchanged, so a
    round with a new ``as_of`` only runs ``where`` over the rows in memory
    instead of reparsing the file.
    """

    def __init__(self, config: NodeConfig, *, capacity: int | None = None) -> None:
        self._config = config
        self._capacity = config.node.cache_sets if capacity is None else capacity
        self._lock = threading.Lock()
        self._cache: OrderedDict[_Key, LoadedMatchSet] = OrderedDict()
        self._loading: dict[_Key, threading.Lock] = {}
        self._counts: dict[tuple[str, tuple[object, ...]], int] = {}
        self._prepared: dict[str, PreparedFile] = {}
        self._preparing: dict[str, threading.Lock] = {}

    def _ms(self, name: str) -> MatchSetConfig:
        ms = self._config.match_set(name)
        if ms is None:
            raise ConfigError(f"{self._config.path}: no match set {name!r}")
        return ms

    def _version(self, ms: MatchSetConfig) -> tuple[object, ...] | None:
        """The source's version, or None when it cannot be told (uncached database)."""
        if ms.database is not None:
            if ms.database.change_column is None:
                return None
            return ("table", *_db_stamp(ms, _Reporter(self._config, ms)))
        return self._stat_key(ms)

    def get(self, name: str, as_of: _dt.date) -> LoadedMatchSet:
        """Match set ``name`` as of ``as_of`` (cached).

        Raises:
            ConfigError: as :func:`load_match_set`.
        """
        ms = self._ms(name)
        version = self._version(ms)
        if version is None or self._capacity <= 0:
            return load_match_set(self._config, name, as_of)
        key: _Key = (name, as_of, version)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit
            try:
                if ms.database is None:
                    assert len(version) == 2
                    file_version = (int(str(version[0])), int(str(version[1])))
                    prepared = self._prepare(name, file_version)
                    loaded = _load_prepared(self._config, prepared, name, as_of)
                else:
                    loaded = load_match_set(self._config, name, as_of)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._cache[key] = loaded
                while len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)
        return loaded

    def _prepare(self, name: str, version: tuple[int, int]) -> PreparedFile:
        """The prepared file of set ``name`` at ``version`` (parsed once per version)."""
        with self._lock:
            hit = self._prepared.get(name)
            if hit is not None and hit.version == version:
                return hit
            gate = self._preparing.setdefault(name, threading.Lock())
        with gate:
            with self._lock:
                hit = self._prepared.get(name)
                if hit is not None and hit.version == version:
                    return hit
                self._prepared.pop(name, None)  # an older version: let it go first
            prepared = prepare_file(self._config, name, version)
            with self._lock:
                self._prepared[name] = prepared
        return prepared

    def _stat_key(self, ms: MatchSetConfig) -> tuple[int, int]:
        try:
            st = ms.source_file.stat()
        except OSError as exc:
            raise _Reporter(self._config, ms).error(
                f"source: cannot read ({exc.strerror})"
            ) from exc
        return st.st_mtime_ns, st.st_size

    def is_streamed(self, name: str) -> bool:
        """Whether match set ``name`` has more source rows than ``stream_rows``.

        The count (Parquet metadata, or one scan of a CSV) is cached per
        source version; a database is asked each time (``count(*)``) unless
        its ``change_column`` gives a version.

        Raises:
            ConfigError: unknown set, unreadable source.
        """
        threshold = self._config.node.stream_rows
        if threshold <= 0:
            return False
        return self.source_rows(name) > threshold

    def source_rows(self, name: str) -> int:
        """Rows in the source of match set ``name``, before ``where`` (cached per version).

        Raises:
            ConfigError: unknown set, unreadable source.
        """
        ms = self._ms(name)
        if ms.database is not None:
            return count_source_rows(self._config, name)
        key = (name, self._stat_key(ms))
        with self._lock:
            rows = self._counts.get(key)
        if rows is None:
            rows = count_source_rows(self._config, name)
            with self._lock:
                self._counts[key] = rows
        return rows

    def stream(
        self,
        name: str,
        as_of: _dt.date,
        *,
        summary: StreamSummary | None = None,
        batch_rows: int = STREAM_BATCH_ROWS,
    ) -> Iterator[MatchSetBatch]:
        """Read match set ``name`` as of ``as_of`` in record batches (never cached).

        Raises:
            ConfigError: as :func:`stream_match_set`.
        """
        return stream_match_set(self._config, name, as_of, batch_rows=batch_rows, summary=summary)

    def validate_all(self, today: _dt.date) -> list[LoadedMatchSet]:
        """Load every match set once as of ``today`` (startup check; fails fast).

        A streamed set is read through once (bounded memory) and returned
        with its counts only (``streamed=True``).

        Raises:
            ConfigError: as :func:`load_match_set`, for the first bad match set.
        """
        out: list[LoadedMatchSet] = []
        for ms in self._config.match_sets:
            if self.is_streamed(ms.name):
                started = time.perf_counter()
                summary = StreamSummary()
                for _ in self.stream(ms.name, today, summary=summary):
                    pass
                out.append(summary.as_loaded(ms.name, today, time.perf_counter() - started))
            else:
                out.append(self.get(ms.name, today))
        return out
