"""A file match set parsed once per file version, filtered per round's ``as_of``.

:func:`prepare_file` reads the columns a round needs into an Arrow table and
normalizes the identity numbers once, without a date; :func:`load_prepared`
then runs ``where`` over those rows for one ``as_of`` and applies what depends
on the date (the future birth date check). :class:`nodes.matchsets.MatchSetStore`
keeps one prepared file per set while the file is unchanged (issue 10).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt

from nodes.config import NodeConfig
from nodes.matchset_files import (
    Query,
    build_query,
    connect,
    quote,
    readable_file,
    source_error,
)
from nodes.matchset_rows import (
    FIRST_ROWS,
    STREAM_BATCH_ROWS,
    LoadedMatchSet,
    arrow_strings,
    configured,
    drop_malformed,
    drop_reason,
    note_dropped,
)
from psi.identifiers import encode_identities, normalize_id_column

__all__ = ["PreparedFile", "load_prepared", "prepare_file"]


@dataclass(frozen=True, eq=False)
class PreparedFile:
    """A file source parsed once, for every ``as_of`` (issue 10: no reparse per round).

    ``rows`` is the file as an Arrow table of the columns a round needs (the id,
    the payload, and every column whose name occurs in ``where``), plus its row
    number. The identity numbers are normalized once without a date
    (``encoded`` for the valid ones, ``position`` = the index into ``encoded``
    of each row or -1); what depends on ``as_of`` (``where``, and the future
    birth date check, from ``birth``) is applied per round by
    :func:`load_prepared`. Held in memory only, never written to disk.
    """

    version: tuple[int, int]
    rows: Any  # pyarrow.Table
    query: Query
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
    ms, rep = configured(config, name)
    with readable_file(ms, rep) as (path, parquet), contextlib.closing(connect(path)) as con:
        today = _dt.date.today()
        query = build_query(con, ms, rep, path, today, parquet=parquet)
        where = (ms.where or "").lower()
        keep = [
            c
            for c in query.columns
            if c == ms.id_column or c in ms.payload or (where and c.lower() in where)
        ]
        try:
            rows = con.sql(
                f"SELECT {', '.join(quote(c) for c in keep)} FROM {query.reader}",
                params=query.reader_params,
            ).to_arrow_table()
        except (duckdb.Error, OSError) as exc:
            raise source_error(ms, rep, path, "source", exc, parquet=parquet) from None
    return _normalized(version, rows, query, ms.id_column)


def _normalized(version: tuple[int, int], rows: Any, query: Query, id_column: str) -> PreparedFile:
    """The file's rows with their numbers normalized once, without a date (in slices)."""
    import pyarrow as pa

    n = rows.num_rows
    rows = rows.append_column(_ROW, pa.array(np.arange(n, dtype=np.int64)))
    ids = rows.column(id_column)
    encoded: list[npt.NDArray[np.uint8]] = []
    position = np.full(n, -1, dtype=np.int32)
    birth = np.zeros(n, dtype=np.int32)
    reasons = np.zeros(n, dtype=np.uint8)
    names: dict[str, int] = {"": 0}
    kept = 0
    # in slices: normalization's transient arrays cover one slice, not the file
    for lo in range(0, n, STREAM_BATCH_ROWS):
        part = ids.slice(lo, STREAM_BATCH_ROWS).fill_null("")
        raw = arrow_strings(part)
        column = normalize_id_column(raw, today=None)
        valid = column.valid
        hi = lo + len(valid)
        position[lo:hi][valid] = kept + np.arange(int(valid.sum()), dtype=np.int32)
        kept += int(valid.sum())
        birth[lo:hi] = _birth_days(column.ids)
        for i in np.flatnonzero(~valid).tolist():
            reason = drop_reason(column.reasons[i], str(raw[i]))
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


def load_prepared(
    config: NodeConfig, prepared: PreparedFile, name: str, as_of: _dt.date
) -> LoadedMatchSet:
    """The set as of ``as_of`` from a :class:`PreparedFile`: ``where`` runs on the Arrow rows."""
    ms, rep = configured(config, name)
    started = time.perf_counter()
    q = prepared.query
    con = connect(None)
    try:
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
    dropped: dict[str, list[int]] = {}
    numbers = selected.astype(np.int64) + 1  # the file's data rows, 1-based, in file order
    invalid = np.flatnonzero(~keep)
    reasons = prepared.reasons[selected[invalid]]
    codes = np.bincount(reasons, minlength=len(prepared.reason_names))
    for code, count in enumerate(codes.tolist()):
        if code and count:
            rejected[prepared.reason_names[code]] += count
            first = invalid[reasons == code][:FIRST_ROWS]
            note_dropped(dropped, prepared.reason_names[code], numbers[first])
    future = keep & (prepared.birth[selected] > int(as_of.strftime("%Y%m%d")))
    if future.any():
        rejected["future_birth_date"] += int(future.sum())
        note_dropped(dropped, "future_birth_date", numbers[np.flatnonzero(future)[:FIRST_ROWS]])
        keep &= ~future
    columns: dict[str, tuple[npt.NDArray[np.str_], npt.NDArray[np.bool_] | None]] = {}
    for i, col in enumerate(ms.payload):
        bad = None
        if col in q.bad_flags:
            bad = result.column(f"_bad{i}").to_numpy(zero_copy_only=False).astype(bool)
        columns[col] = (arrow_strings(result.column(f"_p{i}")), bad)
    payload = drop_malformed(columns, keep, rejected, (dropped, numbers))
    return LoadedMatchSet(
        name=ms.name,
        as_of=as_of,
        identities=prepared.encoded[position[keep]],
        payload={k: v[keep] for k, v in payload.items()},
        rows_selected=n,
        rejected=dict(rejected),
        seconds=time.perf_counter() - started,
        dropped_rows={k: tuple(v) for k, v in dropped.items()},
        rows_of="file",
    )
