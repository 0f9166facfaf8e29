"""Reading rows from department databases, read-only (PostgreSQL, MySQL/MariaDB, Oracle, DM).

Used by ``nodes`` (a match set's ``source``) and ``coordinator`` (the ``roster``);
depends only on ``psi`` (its errors). docs/node.md, "Match sets in a database".
"""

from databases.engines import (
    Column,
    DatabaseError,
    Kind,
    Session,
    open_session,
    replace_as_of,
    session_class,
    texts_of,
)
from databases.source import ENGINES, DatabaseSource, Dsn, is_identifier, source_from_toml

__all__ = [
    "ENGINES",
    "Column",
    "DatabaseError",
    "DatabaseSource",
    "Dsn",
    "Kind",
    "Session",
    "is_identifier",
    "open_session",
    "replace_as_of",
    "session_class",
    "source_from_toml",
    "texts_of",
]
