"""The ``source = { database = … }`` inline table, and the DSN it points at.

data-contracts.md: ``database`` names the engine; exactly one of ``dsn_env`` (an
environment variable holding the connection URL) and ``dsn_file`` (a file with
mode 0600 holding it) gives the credentials; exactly one of ``table`` and
``query`` gives the rows. ``change_column`` and ``timeout_seconds`` are ours
(docs/node.md, "Match sets in a database").

The DSN is read when a connection is opened, never kept in a model, a log or a
message: :class:`Dsn` holds it and :meth:`Dsn.redact` removes it (and its
password) from any text before that text leaves this package.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from psi.errors import ConfigError

__all__ = ["ENGINES", "DatabaseSource", "Dsn", "Engine", "is_identifier", "source_from_toml"]

Engine = Literal["postgresql", "mysql", "oracle", "dm"]
ENGINES: tuple[str, ...] = ("postgresql", "mysql", "oracle", "dm")

#: A table name: up to three dot-separated SQL identifiers, unquoted (so each engine
#: applies its own case rule: Oracle and DM fold to upper case, PostgreSQL to lower).
_IDENT = r"[A-Za-z_][A-Za-z0-9_$#]{0,127}"
_TABLE = re.compile(rf"{_IDENT}(?:\.{_IDENT}){{0,2}}")
_COLUMN = re.compile(_IDENT)
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# A statement that is not a single SELECT (a WITH ... SELECT counts as one).
_QUERY_START = re.compile(r"\s*(?:\(\s*)*(SELECT|WITH)\b", re.IGNORECASE)
#: MySQL/MariaDB write files from a SELECT (INTO OUTFILE / DUMPFILE), which a read-only
#: transaction does not stop; refused before the query ever reaches a server
_WRITES_FILE = re.compile(r"\bINTO\s+(OUTFILE|DUMPFILE)\b", re.IGNORECASE)


def is_identifier(name: str) -> bool:
    """Whether ``name`` is a plain SQL column identifier (letters, digits, ``_``, ``$``, ``#``)."""
    return _COLUMN.fullmatch(name) is not None


class DatabaseSource(BaseModel):
    """``source = { database = "postgresql", dsn_env = "…", table = "…" }``."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    database: Engine
    dsn_env: str | None = None
    dsn_file: Path | None = None
    table: str | None = None
    query: str | None = None
    #: ours: a column whose maximum changes whenever a row is added or updated (for
    #: example ``updated_at``); with it the node caches a loaded set until the row
    #: count or that maximum changes; without it every round reads the rows again.
    change_column: str | None = None
    #: ours: the statement timeout of every query the node runs (seconds).
    timeout_seconds: float = Field(default=600.0, gt=0, le=86400)
    #: ours: how long connecting may take (seconds).
    connect_timeout_seconds: int = Field(default=10, ge=1, le=600)

    @field_validator("dsn_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and _ENV.fullmatch(value) is None:
            # not the value: a DSN with its password is the likely mistake here
            raise ValueError("not an environment variable name (letters, digits, '_')")
        return value

    @field_validator("dsn_file")
    @classmethod
    def _file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        base = info.context.get("base") if isinstance(info.context, dict) else None
        value = value.expanduser()
        if isinstance(base, Path) and not value.is_absolute():
            value = base / value
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value is not None and _TABLE.fullmatch(value) is None:
            raise ValueError(
                "not a table name (schema.table, letters, digits and '_'); "
                "use `query` for anything else"
            )
        return value

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip().rstrip(";").strip()
        if ";" in text:
            raise ValueError("one SELECT statement only: ';' is not allowed")
        if _QUERY_START.match(text) is None:
            raise ValueError("must be a SELECT (or WITH ... SELECT) statement")
        if _WRITES_FILE.search(text) is not None:
            raise ValueError("SELECT ... INTO OUTFILE/DUMPFILE writes a file: not allowed")
        return text

    @field_validator("change_column")
    @classmethod
    def _change(cls, value: str | None) -> str | None:
        if value is not None and not is_identifier(value):
            raise ValueError("not a column name")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> DatabaseSource:
        if (self.dsn_env is None) == (self.dsn_file is None):
            raise ValueError("give exactly one of dsn_env and dsn_file")
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table and query")
        return self

    @property
    def relation(self) -> str:
        """The rows, as SQL that can follow ``FROM`` (a table name or ``(query)``)."""
        return self.table if self.table is not None else f"({self.query})"

    def describe(self) -> str:
        """``postgresql table custody`` / ``mysql query``: for messages (no credentials)."""
        return f"{self.database} table {self.table}" if self.table else f"{self.database} query"

    def credentials_origin(self) -> str:
        """Where the DSN comes from, for messages: ``dsn_env JUSTICE_DB_DSN`` or the file."""
        return f"dsn_env {self.dsn_env}" if self.dsn_env else f"dsn_file {self.dsn_file}"

    def check_credentials(self) -> None:
        """Check that the DSN can be read (variable set; file present with mode 0600).

        Raises:
            ConfigError: a one-line reason (never the DSN itself), without a
                file or key prefix: callers add it.
        """
        self.read_dsn()

    def read_dsn(self) -> Dsn:
        """The connection URL, from the environment variable or the 0600 file.

        Raises:
            ConfigError: as :meth:`check_credentials`.
        """
        if self.dsn_env is not None:
            text = os.environ.get(self.dsn_env)
            if text is None or not text.strip():
                # not the name: a password typed here by mistake would be printed
                raise ConfigError("dsn_env: the environment variable it names is not set")
            try:
                return Dsn.parse(text.strip(), engine=self.database)
            except ConfigError as exc:
                # the name of a variable that is set: a name, safe to show
                raise ConfigError(f"dsn_env: {self.dsn_env}: {exc}") from None
        assert self.dsn_file is not None
        path = self.dsn_file
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ConfigError(f"dsn_file: file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"dsn_file: cannot read {path} ({exc.strerror})") from None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"dsn_file: {path} has mode {mode:04o}; it holds a password, so it must be "
                f"readable by its owner only (chmod 600 {path})"
            )
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"dsn_file: cannot read {path} as UTF-8 text") from None
        if not text:
            raise ConfigError(f"dsn_file: {path} is empty")
        try:
            return Dsn.parse(text.splitlines()[0].strip(), engine=self.database)
        except ConfigError as exc:
            raise ConfigError(f"dsn_file: {path}: {exc}") from None


@dataclass(frozen=True)
class Dsn:
    """A connection URL ``scheme://user:password@host:port/database?options``.

    ``repr`` shows no part of it; :meth:`redact` removes it from a text.
    """

    url: str = field(repr=False)
    user: str = field(repr=False)
    password: str = field(repr=False)
    host: str
    port: int | None
    database: str
    options: dict[str, str] = field(default_factory=dict, repr=False)
    #: the password as written in the URL (percent-encoded), for :meth:`redact`
    raw_password: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str, *, engine: str) -> Dsn:
        """Split a connection URL (``postgresql://``, ``mysql://``, ``oracle://``, ``dm://``).

        Raises:
            ConfigError: not a URL of that form (the message never quotes it).
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ConfigError("the DSN is not a valid URL (its text is withheld)") from None
        schemes = {
            "postgresql": ("postgresql", "postgres"),
            "mysql": ("mysql", "mariadb"),
            "oracle": ("oracle",),
            "dm": ("dm", "dameng"),
        }[engine]
        if parts.scheme.lower() not in schemes or not parts.hostname:
            raise ConfigError(
                f"the DSN is not a {engine} URL: expected {schemes[0]}://user:password@host"
                f"[:port]/database (its text is withheld)"
            )
        options: dict[str, str] = {}
        for item in filter(None, parts.query.split("&")):
            key, _, value = item.partition("=")
            options[unquote(key)] = unquote(value)
        return cls(
            url=url,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            host=parts.hostname,
            port=port,
            database=unquote(parts.path.lstrip("/")),
            options=options,
            raw_password=parts.password or "",
        )

    @property
    def where(self) -> str:
        """``host:port/database``: what a message may say about the server."""
        port = f":{self.port}" if self.port else ""
        return f"{self.host}{port}/{self.database}"

    def redact(self, text: str) -> str:
        """``text`` with the URL, the password and the user name replaced by ``***``."""
        secrets = sorted(
            {s for s in (self.url, self.password, self.raw_password, self.user) if len(s) >= 3},
            key=len,
            reverse=True,
        )
        for s in secrets:
            text = text.replace(s, "***")
        return text


def source_from_toml(value: object, context: object) -> object:
    """A TOML inline table as a :class:`DatabaseSource`; anything else unchanged.

    For a ``mode="before"`` validator of a ``Path | DatabaseSource`` field, so that
    a bad table reports its own problem, not "not a valid path".

    Raises:
        ValueError: one line naming the key of the inline table and the problem.
    """
    if not isinstance(value, dict):
        return value
    try:
        return DatabaseSource.model_validate(value, context=context)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ValueError(f"unknown key {key!r} in the database source") from None
        if err["type"] == "missing":
            raise ValueError(f"missing key {key!r} in the database source") from None
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{key}: {msg}" if key else msg) from None
