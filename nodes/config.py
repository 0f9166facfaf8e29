"""``node.toml``: one department node's configuration.

The format is binding (data-contracts.md, "Configuration"). Keys marked *ours*
are additions, documented for the department's DBA in ``docs/node.md``:

```toml
[node]
name = "justice"                  # must equal the name in the node's certificate
listen = "127.0.0.1:50061"
ca = "pki/ca.crt"
cert = "pki/justice.crt"
key = "pki/justice.key"
audit_log = "logs/justice.audit.jsonl"
audit_key = "pki/justice.audit.key"   # ours (default: NAME.audit.key beside `key`)
audit_cert = "pki/justice.audit.crt"  # ours (default: NAME.audit.crt beside `key`)
audit_profile = "international"        # ours: or "gm" (SM3 chain, SM2 checkpoints; docs/audit.md)
passphrase_env = "JUSTICE_KEY_PASS"   # ours: env variable holding the key passphrase
max_concurrent_rounds = 4         # ours: rounds served at once; more wait for a slot
workers = 2                       # ours: EC worker processes for ecdh (default: CPU count)
max_chunk_bytes = 1048576         # ours: largest stream message accepted (1 MiB)
size_classes = [1000, 10000]      # ours: ecdh pads its set up to the next class
                                  #   (default: psi's classes, >= 1024 in 25 % steps)
max_future_days = 1               # ours: how far after today a round's as_of may lie
max_past_days = 31                # ours: how far before today a round's as_of may lie
max_query_size = 20000000         # ours: largest roster a round may announce
replay_memory = 100000            # ours: (round id, match set) pairs remembered
shutdown_grace_seconds = 5        # ours: time running rounds get on SIGTERM
queue_seconds = 60                # ours: how long a round waits for a free slot
start_timeout_seconds = 15        # ours: how long a new round may wait for its start message
cache_sets = 4                    # ours: loaded match sets kept in memory
stream_rows = 5000000             # ours: larger sets are streamed from the source each
                                  #   round, never held in memory (0: never stream)
bucket_rows = 1000000             # ours: an ecdh round splits a streamed set into
                                  #   buckets of about this many source rows
spill_dir = "spill"               # ours: where those buckets wait, encrypted, during the
                                  #   round (default: the folder spill beside node.toml)

[[match_sets]]
name = "custody"
circumstance = "IMPRISONED"
source = "data/custody.csv"       # or a database: { database = "postgresql", dsn_env = "…",
                                  #   table = "…" } (databases.DatabaseSource, docs/node.md)
id_column = "id_number"
where = "term_months >= 6 AND (end_date IS NULL OR end_date > $as_of)"
payload = ["start_date", "end_date"]
protocols = ["ecdh", "keyed-hash"]
allow = [{ requester = "civil-affairs", purposes = ["eligibility-review"] }]
service_report = "gaps"           # ours, SERVICE sets only: report covered children not
                                  #   matched ("gaps", default) or matched ("needs")
encoding = "auto"                 # ours: auto | utf-8 | gb18030 (CSV only)
min_query_size = 100              # ours: smallest roster (distinct identities) accepted
suites = ["x25519-sha256-u"]      # ours: ecdh hash-to-curve suites accepted (default: all
                                  #   but the GM one, "SM2_XMD:SM3_SSWU_RO_", listed to accept)
prfs = ["aes128-ecb-v1"]          # ours: keyed-hash PRFs accepted (default: all but the GM
                                  #   one, "sm4-ecb-v1", accepted only when listed)
budget = { rounds = 50, period = "1d" }  # ours: rounds per requester+purpose per period
```

Unknown keys are an error naming the key; relative paths resolve against the
folder of the config file. Every failure is one :class:`psi.errors.ConfigError`
line that names the file and the key path (``node.toml: match_sets[0].protocols:
unknown protocol 'foo'``), never the value typed there, except a misspelt choice
of a closed set and file paths (:mod:`runtime.config`).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from databases import DatabaseSource, is_identifier, source_from_toml
from nodes.allow import DEFAULT_ALLOW_MAX_QUERY_SIZE, check_sizes
from psi.context import context_name_problem
from psi.contract import (
    CIRCUMSTANCES,
    ECDH_SUITES,
    GM_ECDH_SUITES,
    GM_KEYED_HASH_PRFS,
    KEYED_HASH_PRFS,
    PAYLOAD_COLUMNS,
    PROTOCOLS,
    FileEncoding,
    ServiceReport,
)
from psi.ecdh import size_class
from psi.errors import ConfigError
from runtime.config import (
    NODE_WORDING,
    Strict,
    check_context_name,
    config_folder,
    display_name_problem,
    env_passphrase,
    one_line,
    parse_host_port,
    read_toml,
    resolve_path,
    shown_choice,
    shown_path,
)

__all__ = [
    "CIRCUMSTANCES",
    "DEFAULT_MAX_CHUNK_BYTES",
    "ECDH_SUITES",
    "GM_ECDH_SUITES",
    "GM_KEYED_HASH_PRFS",
    "KEYED_HASH_PRFS",
    "PAYLOAD_COLUMNS",
    "PROTOCOLS",
    "AllowEntry",
    "Budget",
    "MatchSetConfig",
    "NodeConfig",
    "NodeSection",
    "load_node_config",
    "parse_listen",
]

# The vocabulary of the data contract lives in psi.contract (shared with coordinator/).
#: 1 MiB: 32768 ecdh points or 65536 keyed-hash tags per message.
DEFAULT_MAX_CHUNK_BYTES = 1 << 20

_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
_SET_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_PERIOD = re.compile(r"([1-9][0-9]{0,5})([mhdw])")
_PERIOD_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_listen(text: str) -> tuple[str, int]:
    """Split a listen address ``host:port`` (IPv6 as ``[::1]:port``).

    Raises:
        ValueError: not ``host:port`` with a valid host and a port in 1..65535.
    """
    return parse_host_port(text)


def check_display_name(value: str | None) -> str | None:
    """A ``display_name``: trimmed, 1-40 characters, printable, no digit run of 6 or more.

    A long digit run could be (or look like) an identity number, which must
    never reach a report or a log.

    Raises:
        ValueError: empty, too long, a control character, or a long digit run.
    """
    if value is None:
        return None
    text = value.strip()
    problem = display_name_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


class Budget(Strict):
    """``budget = { rounds = 50, period = "1d" }``: rounds per requester+purpose per period."""

    rounds: int = Field(default=50, ge=1, le=1_000_000)
    period: str = "1d"

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        if _PERIOD.fullmatch(value) is None:
            raise ValueError("use a number and m, h, d or w (e.g. '1d')")
        return value

    @property
    def seconds(self) -> float:
        """Length of the period in seconds."""
        m = _PERIOD.fullmatch(self.period)
        assert m is not None  # validated
        return float(int(m.group(1)) * _PERIOD_UNITS[m.group(2)])


class AllowEntry(Strict):
    """One ``allow`` entry: a requester and the purposes it may query for."""

    requester: str
    purposes: list[str] = Field(min_length=1)
    max_query_size: int = Field(default=DEFAULT_ALLOW_MAX_QUERY_SIZE, ge=1, le=10**10)

    @field_validator("requester")
    @classmethod
    def _requester(cls, value: str) -> str:
        if _NAME.fullmatch(value) is None:
            raise ValueError("not a member name (lower-case letters, digits, '-')")
        return check_context_name(value)

    @field_validator("purposes")
    @classmethod
    def _purposes(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("empty purpose")
        for purpose in value:
            check_context_name(purpose)  # a round's purpose: the coordinator checks the same
        if len(set(value)) != len(value):
            raise ValueError("a purpose is listed twice")
        return value


def _known(value: list[str], known: tuple[str, ...], what: str) -> list[str]:
    for item in value:
        if item not in known:
            raise ValueError(f"unknown {what} {shown_choice(item)}; use any of {', '.join(known)}")
    if len(set(value)) != len(value):
        raise ValueError(f"a {what} is listed twice")
    return value


class MatchSetConfig(Strict):
    """One ``[[match_sets]]`` entry."""

    name: str
    circumstance: str
    #: a CSV or Parquet file, or a database table or query (``{ database = … }``)
    source: Path | DatabaseSource
    id_column: str = Field(min_length=1)
    where: str | None = None
    payload: list[str] = Field(default_factory=list)
    protocols: list[str] = Field(min_length=1)
    allow: list[AllowEntry] = Field(min_length=1)
    encoding: FileEncoding = "auto"
    min_query_size: int = Field(default=100, ge=1)
    budget: Budget = Field(default_factory=Budget)
    suites: list[str] = Field(default_factory=lambda: list(ECDH_SUITES), min_length=1)
    prfs: list[str] = Field(default_factory=lambda: list(KEYED_HASH_PRFS), min_length=1)
    service_report: ServiceReport | None = None
    #: the name people know the dataset by (服刑在押人员); shown in reasons and reports
    display_name: str | None = None

    @field_validator("display_name")
    @classmethod
    def _display_name(cls, value: str | None) -> str | None:
        return check_display_name(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if _SET_NAME.fullmatch(value) is None:
            # a round context names its match set in lower case: a set named in upper
            # case could never be queried, so it is refused here, not found unreachable
            raise ValueError("use lower-case letters, digits, '_', '.', '-' (at most 63)")
        # a round's rules for a match set name, so an identity number as a name is
        # refused now, not when a round logs it
        if problem := context_name_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("circumstance")
    @classmethod
    def _circumstance(cls, value: str) -> str:
        if value not in CIRCUMSTANCES:
            raise ValueError(
                f"unknown circumstance {shown_choice(value)}; "
                f"use one of {', '.join(sorted(CIRCUMSTANCES))}"
            )
        return value

    @field_validator("service_report")
    @classmethod
    def _service_report(
        cls, value: ServiceReport | None, info: ValidationInfo
    ) -> ServiceReport | None:
        circumstance = info.data.get("circumstance")
        if value is not None and circumstance is not None and circumstance != "SERVICE":
            raise ValueError(
                f'only for circumstance = "SERVICE" (this set is {circumstance}); remove the key'
            )
        return value

    @property
    def report(self) -> ServiceReport | None:
        """What a round reports of this SERVICE set: ``service_report``, default "gaps".

        None for an evidence set (any other circumstance).
        """
        if self.circumstance != "SERVICE":
            return None
        return self.service_report or "gaps"

    @field_validator("source", mode="before")
    @classmethod
    def _source_table(cls, value: object, info: ValidationInfo) -> object:
        return source_from_toml(value, info.context)

    @field_validator("source")
    @classmethod
    def _source(cls, value: Path | DatabaseSource, info: ValidationInfo) -> Path | DatabaseSource:
        return value if isinstance(value, DatabaseSource) else resolve_path(value, info)

    @model_validator(mode="after")
    def _database_columns(self) -> MatchSetConfig:
        if isinstance(self.source, DatabaseSource) and not is_identifier(self.id_column):
            raise ValueError(
                "id_column: not a plain column name; with a database "
                "source, rename it in `query` (SELECT … AS id_number)"
            )
        return self

    @property
    def database(self) -> DatabaseSource | None:
        """The database source, or None for a file."""
        return self.source if isinstance(self.source, DatabaseSource) else None

    @property
    def source_file(self) -> Path:
        """The source file (only for a file source).

        Raises:
            TypeError: the source is a database.
        """
        if isinstance(self.source, DatabaseSource):
            raise TypeError(f"match set {self.name!r} reads a database, not a file")
        return self.source

    @field_validator("where")
    @classmethod
    def _where(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and ";" in value:
            raise ValueError("one SQL condition only: ';' is not allowed")
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: list[str]) -> list[str]:
        return _known(value, PAYLOAD_COLUMNS, "payload column")

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, value: list[str]) -> list[str]:
        for p in value:
            if p not in PROTOCOLS:
                raise ValueError(f"unknown protocol {shown_choice(p)}; use ecdh or keyed-hash")
        if len(set(value)) != len(value):
            raise ValueError("a protocol is listed twice")
        return value

    @field_validator("suites")
    @classmethod
    def _suites(cls, value: list[str]) -> list[str]:
        return _known(value, ECDH_SUITES + GM_ECDH_SUITES, "ecdh suite")

    @field_validator("prfs")
    @classmethod
    def _prfs(cls, value: list[str]) -> list[str]:
        return _known(value, KEYED_HASH_PRFS + GM_KEYED_HASH_PRFS, "keyed-hash prf")

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[AllowEntry]) -> list[AllowEntry]:
        names = [a.requester for a in value]
        if len(set(names)) != len(names):
            raise ValueError("a requester is listed twice; merge its purposes")
        return value

    def allow_for(self, requester: str) -> AllowEntry | None:
        """The ``allow`` entry of ``requester`` (None: not allowed)."""
        for entry in self.allow:
            if entry.requester == requester:
                return entry
        return None

    def purposes_for(self, requester: str) -> list[str]:
        """The purposes ``requester`` may query this set for (empty: not allowed)."""
        entry = self.allow_for(requester)
        return [] if entry is None else list(entry.purposes)


class NodeSection(Strict):
    """``[node]``."""

    name: str
    listen: str
    ca: Path
    cert: Path
    key: Path
    audit_log: Path
    audit_key: Path | None = None
    audit_cert: Path | None = None
    #: protocol-log profile: SHA-256 + Ed25519, or "gm": SM3 chain + SM2 checkpoints
    audit_profile: Literal["international", "gm"] = "international"
    passphrase_env: str | None = None
    max_concurrent_rounds: int = Field(default=4, ge=1, le=256)
    workers: int | None = Field(default=None, ge=1, le=256)
    max_chunk_bytes: int = Field(default=DEFAULT_MAX_CHUNK_BYTES, ge=4096, le=3 << 20)
    size_classes: list[int] | None = None
    max_future_days: int = Field(default=1, ge=0, le=3660)
    max_past_days: int = Field(default=31, ge=0, le=36600)
    max_query_size: int = Field(default=20_000_000, ge=1, le=10**10)
    replay_memory: int = Field(default=100_000, ge=1, le=10_000_000)
    shutdown_grace_seconds: float = Field(default=5.0, ge=0, le=3600)
    queue_seconds: float = Field(default=60.0, ge=0, le=3600)
    start_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    cache_sets: int = Field(default=4, ge=0, le=64)
    stream_rows: int = Field(default=5_000_000, ge=0, le=10**12)
    bucket_rows: int = Field(default=1_000_000, ge=1, le=10**12)
    spill_dir: Path | None = None
    inbox: Path | None = None  #: disputes and work lists (nodes.disputes); default: inbox/NAME
    #: the name people know the department by (司法局); shown in reasons and reports
    display_name: str | None = None

    @field_validator("display_name")
    @classmethod
    def _display_name(cls, value: str | None) -> str | None:
        return check_display_name(value)

    #: X25519 for ecdh: libcrypto_mb where the CPU has AVX-512 IFMA ("auto"), or forced;
    #: the XMATCH_X25519_BACKEND environment variable wins over this key.
    x25519_backend: Literal["auto", "crypto-mb", "openssl"] = "auto"

    def key_passphrase(self) -> bytes | None:
        """The passphrase of our keys, from :attr:`passphrase_env` (``None``: not encrypted).

        Raises:
            ConfigError: the variable is not set (any more).
        """
        return env_passphrase(self.passphrase_env, "node.passphrase_env")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if _NAME.fullmatch(value) is None:
            raise ValueError(
                "not a member name: 1-63 lower-case letters, digits or '-', starting with a letter"
            )
        return check_context_name(value)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator(
        "ca", "cert", "key", "audit_log", "audit_key", "audit_cert", "spill_dir", "inbox"
    )
    @classmethod
    def _paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info)

    @field_validator("size_classes")
    @classmethod
    def _classes(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one size class")
        if any(v < 1 for v in value) or value != sorted(set(value)):
            raise ValueError("size classes must be positive and strictly increasing")
        return value

    @property
    def ec_workers(self) -> int:
        """EC worker processes for ecdh (``workers`` or the CPU count)."""
        return self.workers or os.cpu_count() or 1

    @property
    def audit_key_path(self) -> Path:
        """``audit_key``, or ``NAME.audit.key`` beside the TLS key (as ``keys issue`` writes it)."""
        return self.audit_key or self.key.with_name(f"{self.name}.audit.key")

    @property
    def audit_cert_path(self) -> Path:
        """``audit_cert``, or ``NAME.audit.crt`` beside the TLS key."""
        return self.audit_cert or self.key.with_name(f"{self.name}.audit.crt")

    @property
    def audit_sm2_key_path(self) -> Path:
        """The SM2 checkpoint key of the GM log profile: NAME.audit-sm2.key beside the audit key."""
        return self.audit_key_path.with_name(f"{self.name}.audit-sm2.key")

    def padded_size(self, size: int) -> int:
        """The size class an ecdh set of ``size`` unique elements is padded to.

        Without ``size_classes``: psi's default classes (at least 1024, then
        steps of 25 %, :func:`psi.ecdh.size_class`).
        """
        if self.size_classes is None:
            return size_class(size)
        for c in self.size_classes:
            if size <= c:
                return c
        top = self.size_classes[-1]
        return -(-size // top) * top

    def max_as_of(self, today: _dt.date) -> _dt.date:
        """The latest as_of a round may carry when the node's date is ``today``."""
        return today + _dt.timedelta(days=self.max_future_days)

    def min_as_of(self, today: _dt.date) -> _dt.date:
        """The earliest as_of a round may carry when the node's date is ``today``."""
        return today - _dt.timedelta(days=self.max_past_days)


class NodeConfig(Strict):
    """The whole ``node.toml``; ``path`` is the file it was read from."""

    node: NodeSection
    match_sets: list[MatchSetConfig] = Field(min_length=1)
    _path: Path = PrivateAttr(default=Path("node.toml"))
    _sha256: str | None = PrivateAttr(default=None)

    @property
    def path(self) -> Path:
        """The file this configuration was read from (as given)."""
        return self._path

    @property
    def sha256(self) -> str | None:
        """SHA-256 (hex) of the bytes this configuration was parsed from (None: not read
        from a file). The file is not read again for it: it may be a pipe."""
        return self._sha256

    @property
    def spill_dir(self) -> Path:
        """``node.spill_dir``, or the folder ``spill`` beside this file.

        Not the system's temporary folder: that is often a RAM disk (tmpfs),
        which would put a set too large for memory back into memory.
        """
        return self.node.spill_dir or self._path.absolute().parent / "spill"

    @model_validator(mode="after")
    def _unique_sets(self) -> NodeConfig:
        seen: dict[str, int] = {}
        for i, ms in enumerate(self.match_sets):
            if ms.name in seen:
                raise ValueError(
                    f"match_sets[{i}].name: the name of match_sets[{seen[ms.name]}] again; "
                    "each match set needs its own"
                )
            seen[ms.name] = i
            if ms.min_query_size > self.node.max_query_size:
                raise ValueError(
                    f"match_sets[{i}].min_query_size: {ms.min_query_size} is above "
                    f"node.max_query_size ({self.node.max_query_size})"
                )
            check_sizes(ms.allow, min_query_size=ms.min_query_size, where=f"match_sets[{i}]")
        return self

    def match_set(self, name: str) -> MatchSetConfig | None:
        """The match set called ``name``, or None."""
        for ms in self.match_sets:
            if ms.name == name:
                return ms
        return None

    def key_path(self, name: str) -> str:
        """``match_sets[i]`` for the set called ``name`` (for messages)."""
        for i, ms in enumerate(self.match_sets):
            if ms.name == name:
                return f"match_sets[{i}]"
        return "match_sets[?]"


def _shown(path: Path, base: Path) -> str:
    try:
        return shown_path(str(path.relative_to(base)))
    except ValueError:
        return shown_path(str(path))


def _check_files(cfg: NodeConfig, label: str, base: Path) -> None:
    node = cfg.node
    for key in ("ca", "cert", "key"):
        p: Path = getattr(node, key)
        if not p.is_file():
            raise ConfigError(f"{label}: node.{key}: file not found: {_shown(p, base)}")
    for key, opt in (("audit_key", node.audit_key), ("audit_cert", node.audit_cert)):
        if opt is not None and not opt.is_file():
            raise ConfigError(f"{label}: node.{key}: file not found: {_shown(opt, base)}")
    parent = node.audit_log.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{label}: node.audit_log: not a folder: {_shown(parent, base)}")
    if node.audit_log.exists() and not node.audit_log.is_file():
        raise ConfigError(f"{label}: node.audit_log: not a file: {_shown(node.audit_log, base)}")
    if node.passphrase_env is not None and node.passphrase_env not in os.environ:
        # not the name: a passphrase typed here by mistake would be printed
        raise ConfigError(
            f"{label}: node.passphrase_env: the environment variable it names is not set"
        )
    for i, ms in enumerate(cfg.match_sets):
        if isinstance(ms.source, DatabaseSource):
            try:
                ms.source.check_credentials()
            except ConfigError as exc:
                raise ConfigError(f"{label}: match_sets[{i}].source.{exc}") from None
            continue
        if not ms.source.is_file():
            raise ConfigError(
                f"{label}: match_sets[{i}].source: file not found: {_shown(ms.source, base)}"
            )
        if ms.source.suffix.lower() not in (".csv", ".parquet", ".pq", ".txt", ".tsv"):
            raise ConfigError(
                f"{label}: match_sets[{i}].source: unsupported file type "
                f"{shown_choice(ms.source.suffix)}; use .csv or .parquet"
            )


def load_node_config(path: Path | str) -> NodeConfig:
    """Read and check ``node.toml``.

    Relative paths are resolved against the file's folder; the certificate,
    key and source files must exist (their contents are checked later, by
    ``keys`` and :mod:`nodes.matchsets`).

    Raises:
        ConfigError: the file cannot be read, is not TOML, has an unknown or
            missing key, a bad value, or names a file that does not exist. The
            message is one line naming the file and the key path.
    """
    path = Path(path)
    label = str(path)
    toml = read_toml(path, NODE_WORDING)
    base = config_folder(path)
    try:
        cfg = NodeConfig.model_validate(toml.data, context={"base": base})
    except ValidationError as exc:
        raise ConfigError(f"{label}: {one_line(exc, NODE_WORDING)}") from None
    cfg._path = path
    cfg._sha256 = toml.sha256
    _check_files(cfg, label, base)
    return cfg
