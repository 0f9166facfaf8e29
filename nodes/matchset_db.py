"""A match set in a database table or query (docs/node.md, "Match sets in a database").

The database runs ``where`` (with ``$as_of`` bound by its driver, through
:mod:`databases`, on a read-only session); the node checks the column types
first and converts the rows it receives in batches
(:func:`nodes.matchset_rows.convert`). Every error names the match set and the
source (:meth:`databases.DatabaseSource.describe`), never a credential.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from typing import Any

from databases import DatabaseError, DatabaseSource, Session, open_session
from nodes.config import MatchSetConfig
from nodes.matchset_rows import (
    DATE_COLUMNS,
    STREAM_BATCH_ROWS,
    MatchSetBatch,
    Reporter,
    StreamSummary,
    convert,
)
from psi.errors import ConfigError

__all__ = ["database_stamp", "stream_database"]


_DATE_KINDS = ("date", "timestamp")
_CODE_KINDS = ("text", "integer", "decimal", "float")


def _open(ms: MatchSetConfig, rep: Reporter) -> tuple[DatabaseSource, Session]:
    source = ms.database
    assert source is not None
    try:
        return source, open_session(source)
    except ConfigError as exc:
        raise rep.database_error(source, exc) from None


def _db_check_types(
    ms: MatchSetConfig, rep: Reporter, source: DatabaseSource, session: Session
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
        allowed = _DATE_KINDS if col in DATE_COLUMNS else _CODE_KINDS
        if found.kind not in allowed:
            hint = (
                "store dates as DATE (or convert them in `query`)"
                if col in DATE_COLUMNS
                else "store it as a number or text"
            )
            raise rep.database_error(
                source,
                DatabaseError(
                    f"payload column {col!r} is {found.type_name} in the database; {hint}",
                    reason="type",
                ),
            )


def stream_database(
    ms: MatchSetConfig,
    rep: Reporter,
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
                yield summary.add(convert(result, ms, (), as_of))
        except ConfigError as exc:
            raise rep.database_error(source, exc) from None
    finally:
        session.close()


def database_stamp(ms: MatchSetConfig, rep: Reporter) -> tuple[int, str | None]:
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
