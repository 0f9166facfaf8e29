"""A match set in memory, and the conversion of its rows, whatever the source.

Every reader (a file, :mod:`nodes.matchset_files`; a database,
:mod:`nodes.matchset_db`; a prepared file, :mod:`nodes.matchset_prepared`)
selects the id column as ``_id``, payload column ``i`` as ``_p{i}`` and its
"malformed" flag as ``_bad{i}``; :func:`convert` normalizes such a block
(:func:`psi.identifiers.normalize_id_column` with ``today=as_of``), encodes the
identities as 16-byte blocks and counts the rows it drops *by reason*, never
logging their values. :class:`Reporter` words every error of one match set.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import numpy as np
import numpy.typing as npt

from databases import DatabaseError, DatabaseSource
from nodes.config import MatchSetConfig, NodeConfig
from psi.errors import ConfigError
from psi.identifiers import encode_identities, looks_cut_to_15_digits, normalize_id_column
from psi.session import PayloadColumns
from runtime.config import withhold_numbers

__all__ = [
    "DATE_COLUMNS",
    "STREAM_BATCH_ROWS",
    "Converted",
    "LoadedMatchSet",
    "MatchSetBatch",
    "Reporter",
    "StreamSummary",
    "arrow_strings",
    "as_str",
    "collect",
    "configured",
    "convert",
    "drop_malformed",
]

#: Rows per record batch when a set is read (bounds the memory of a batch). Smaller is
#: not slower: 20M Parquet rows streamed in 11.6 s at 65,536 rows (peak 334 MiB) against
#: 18.9 s (750 MiB) at 524,288 (docs/performance.md).
STREAM_BATCH_ROWS = 1 << 16
#: payload columns that hold dates
DATE_COLUMNS = frozenset({"start_date", "end_date"})
_ALLOWED_CODES: Mapping[str, frozenset[str]] = {
    "disability_category": frozenset({"", *map(str, range(1, 8))}),
    "disability_grade": frozenset({"", *map(str, range(1, 5))}),
}
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
    #: the first few dropped rows of each reason, 1-based: data rows of the file for a
    #: file read whole (``rows_of = "file"``), else rows of the source's query result
    dropped_rows: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    rows_of: Literal["file", "result"] = "result"

    def __len__(self) -> int:
        return self.streamed_rows if self.streamed else int(self.identities.shape[0])

    @property
    def rejected_total(self) -> int:
        """Rows dropped for an invalid identity number or payload value."""
        return sum(self.rejected.values())

    def payload_rows(self, rows: npt.NDArray[np.int64]) -> PayloadColumns:
        """The payload of the given row indices, column by column ("" where empty)."""
        return PayloadColumns(len(rows), {k: v[rows].tolist() for k, v in self.payload.items()})


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
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)

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
            dropped_rows={k: tuple(v) for k, v in self.dropped_rows.items()},
        )

    def add(self, block: Converted) -> MatchSetBatch:
        """Count one converted block and return it as the set's next batch."""
        for reason, rows in block.dropped_rows.items():
            first = self.dropped_rows.setdefault(reason, [])
            first.extend(self.rows_selected + r for r in rows[: FIRST_ROWS - len(first)])
        self.rows_selected += block.rows
        self.rejected.update(block.rejected)
        batch = MatchSetBatch(identities=block.identities, payload=block.payload, offset=self.kept)
        self.kept += len(batch)
        return batch


class Reporter:
    """Builds the one-line errors of one match set."""

    def __init__(self, config: NodeConfig, ms: MatchSetConfig) -> None:
        self.prefix = f"{config.path}: {config.key_path(ms.name)} ({ms.name!r})"

    def error(self, message: str) -> ConfigError:
        """``message`` prefixed with the file and the match set."""
        return ConfigError(f"{self.prefix}: {message}")

    def database_error(self, source: DatabaseSource, exc: ConfigError) -> ConfigError:
        """A database source's error, prefixed with the match set (reason kept)."""
        text = f"{self.prefix}: source ({source.describe()}): {exc}"
        if isinstance(exc, DatabaseError):
            return DatabaseError(text, reason=exc.reason)
        return ConfigError(text)

    def duckdb_error(self, what: str, exc: duckdb.Error | OSError) -> ConfigError:
        """A DuckDB error as one line; withheld where DuckDB may quote a record value.

        ``OSError``: DuckDB's error as its Arrow stream passes it on (same text).
        """
        if isinstance(exc, _SAFE_ERRORS):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # a syntax error quotes the `where` near it, which may hold an ID literal
            return ConfigError(f"{self.prefix}: {what}: {withhold_numbers(first)}")
        # Conversion and CSV errors quote the offending row: never show them.
        name = type(exc).__name__.removesuffix("Exception")
        kind = "stream" if isinstance(exc, OSError) else name
        return ConfigError(
            f"{self.prefix}: {what}: DuckDB {kind} error while reading the source "
            "(details withheld: they may quote record values; check the file's format "
            "and the column types your `where` compares)"
        )


def configured(config: NodeConfig, name: str) -> tuple[MatchSetConfig, Reporter]:
    """Match set ``name`` of ``config`` and its error reporter.

    Raises:
        ConfigError: no match set of that name.
    """
    ms = config.match_set(name)
    if ms is None:
        raise ConfigError(f"{config.path}: no match set {name!r}")
    return ms, Reporter(config, ms)


def as_str(values: Any) -> npt.NDArray[np.str_]:
    """``values`` (a numpy or masked array, or a sequence) as a ``<U`` array; masked as ``""``."""
    arr = np.ma.filled(values, "") if np.ma.isMaskedArray(values) else np.asarray(values)
    if arr.dtype.kind == "U":
        return arr
    if len(arr) == 0:
        return np.zeros(0, dtype="<U1")
    return arr.astype(str)


def arrow_strings(column: Any) -> npt.NDArray[np.str_]:
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
    return as_str(arr.to_numpy(zero_copy_only=False))


@dataclass(frozen=True, eq=False)
class Converted:
    """One block of query output, normalized: the kept rows, and what was read and dropped."""

    identities: npt.NDArray[np.uint8]
    payload: dict[str, npt.NDArray[np.str_]]
    rows: int
    rejected: Counter[str]
    #: the block's first few dropped rows by reason (1-based within the block)
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)


#: dropped rows named per reason (a count says how many there are in all)
FIRST_ROWS = 3


def note_dropped(
    dropped: dict[str, list[int]], reason: str, rows: npt.NDArray[np.int64] | list[int]
) -> None:
    """Keep the first :data:`FIRST_ROWS` of ``rows`` (1-based, ascending) under ``reason``."""
    first = dropped.setdefault(reason, [])
    if len(first) < FIRST_ROWS:
        first.extend(int(r) for r in rows[: FIRST_ROWS - len(first)])


def drop_malformed(
    columns: Mapping[str, tuple[npt.NDArray[np.str_], npt.NDArray[np.bool_] | None]],
    keep: npt.NDArray[np.bool_],
    rejected: Counter[str],
    dropped: tuple[dict[str, list[int]], npt.NDArray[np.int64]] | None = None,
) -> dict[str, npt.NDArray[np.str_]]:
    """The payload values by column; rows with a malformed value leave ``keep``.

    ``columns`` maps each payload column to its values and, where the query
    flagged them, which are malformed (a text cell that is not a date); a code
    column also refuses a value outside its codes. A dropped row is counted
    once, under ``payload_<column>`` of its first malformed column.
    ``dropped``: where to note the first rows dropped, and each row's 1-based number.
    """
    n = len(keep)
    payload: dict[str, npt.NDArray[np.str_]] = {}
    for col, (values, bad) in columns.items():
        malformed = np.zeros(n, dtype=bool) if bad is None else bad
        if col in _ALLOWED_CODES and n:
            malformed = malformed | ~np.isin(values, list(_ALLOWED_CODES[col]))
        newly = malformed & keep
        if newly.any():
            rejected[f"payload_{col}"] += int(newly.sum())
            if dropped is not None:
                notes, numbers = dropped
                note_dropped(notes, f"payload_{col}", numbers[np.flatnonzero(newly)[:FIRST_ROWS]])
            keep &= ~malformed
        payload[col] = values
    return payload


def drop_reason(reason: str | None, raw: str) -> str:
    """The count a row dropped for its identity number goes to: psi's reason code, but
    ``cut_digits`` for an 18-digit number ending in 000 whose check failed.

    That is what a spreadsheet makes of identity numbers stored as numbers (it keeps 15
    significant digits); about 1 in 11 of the cut numbers passes its check instead and
    names another person, so the node warns at startup (nodes.server).
    """
    if reason == "check" and looks_cut_to_15_digits(raw):
        return "cut_digits"
    return reason or "invalid"


def convert(
    result: Mapping[str, Any], ms: MatchSetConfig, bad_flags: tuple[str, ...], as_of: _dt.date
) -> Converted:
    """Normalize and count one block of query output, with array operations (step 4)."""
    raw_ids = as_str(result["_id"])
    n = len(raw_ids)
    column = normalize_id_column(raw_ids, today=as_of)
    keep = column.valid.copy()
    rejected: Counter[str] = Counter()
    dropped: dict[str, list[int]] = {}
    for row in np.flatnonzero(~column.valid).tolist():
        reason = drop_reason(column.reasons[row], str(raw_ids[row]))
        rejected[reason] += 1
        note_dropped(dropped, reason, [row + 1])
    columns: dict[str, tuple[npt.NDArray[np.str_], npt.NDArray[np.bool_] | None]] = {}
    for i, col in enumerate(ms.payload):
        bad = None
        if col in bad_flags:
            bad = np.asarray(np.ma.filled(result[f"_bad{i}"], False), dtype=bool)
        columns[col] = (as_str(result[f"_p{i}"]), bad)
    numbers = np.arange(1, n + 1, dtype=np.int64)
    payload = drop_malformed(columns, keep, rejected, (dropped, numbers))
    ids = column.ids[keep]
    return Converted(
        identities=encode_identities(ids),
        payload={k: v[keep] for k, v in payload.items()},
        rows=n,
        rejected=rejected,
        dropped_rows=dropped,
    )


def collect(
    ms: MatchSetConfig,
    as_of: _dt.date,
    batches: Iterator[MatchSetBatch],
    summary: StreamSummary,
    started: float,
) -> LoadedMatchSet:
    """The batches of one read as one :class:`LoadedMatchSet` (``summary`` filled by the read)."""
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
        dropped_rows={k: tuple(v) for k, v in summary.dropped_rows.items()},
    )
