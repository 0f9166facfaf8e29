"""``coordinator.toml``: the civil affairs coordinator's configuration.

The format is binding (data-contracts.md, "Configuration"); the keys marked
*ours* below are additions documented in ``docs/coordinator.md``:

```toml
[coordinator]
name = "civil-affairs"            # must equal the name in our certificate
ca = "pki/ca.crt"
cert = "pki/civil-affairs.crt"
key = "pki/civil-affairs.key"
audit_log = "logs/civil-affairs.audit.jsonl"
state = "state/coordinator.sqlite"
roster = "data/roster.csv"        # or a database table/query (docs/coordinator.md)
purpose = "eligibility-review"
workers = 2                       # ours: EC worker processes for ecdh (default: CPU count)
chunk_items = 16384               # ours: identities per stream message (default 16384)
roster_encoding = "auto"          # ours: auto | utf-8 | gb18030
audit_key = "pki/civil-affairs.audit.key"  # ours (default: NAME.audit.key beside `key`)
audit_cert = "pki/civil-affairs.audit.crt" # ours (default: NAME.audit.crt beside `key`)

[[nodes]]
name = "justice"                  # must equal the name in the node's certificate
address = "127.0.0.1:50061"
match_sets = ["custody"]
protocol = "ecdh"                 # or "keyed-hash"
deadline_seconds = 600            # ours: whole-node deadline for every sub-round
retries = 3                       # ours: reconnect attempts before any data was exchanged
max_records_per_identity = 1000   # ours, keyed-hash: records per matched identity per answer

[[nodes]]
name = "banner-court"
transport = "offline"             # instead of address: sealed files on removable media
match_sets = ["declarations"]
protocol = "keyed-hash"
seal_cert = "pki/banner-court.seal.crt"  # ours (default: NAME.seal.crt beside `ca`)
offline_days = 14                 # ours: a request (and its response) expires after this
```

Unknown keys are an error naming the key; relative paths resolve against the
folder of the config file. Every failure is one :class:`psi.errors.ConfigError`
line that names the file and the key, never the value typed there
(:mod:`runtime.config`).
"""

from __future__ import annotations

import os
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

from coordinator.share_config import ShareEntry
from databases import DatabaseSource, source_from_toml
from psi.contract import FileEncoding, ProtocolName
from psi.errors import ConfigError
from psi.session import DEFAULT_MAX_RECORDS_PER_IDENTITY
from runtime.config import (
    COORDINATOR_WORDING,
    Strict,
    check_context_name,
    config_folder,
    env_passphrase,
    one_line,
    parse_host_port,
    read_toml,
    resolve_path,
)

__all__ = [
    "DEFAULT_CHUNK_ITEMS",
    "MAX_CHUNK_ITEMS",
    "MAX_RECORDS_PER_IDENTITY",
    "CoordinatorConfig",
    "CoordinatorSection",
    "NodeEntry",
    "Protocol",
    "load_coordinator_config",
    "parse_address",
]

Protocol = ProtocolName

#: Identities per stream message: 16384 x 32-byte points = 512 KiB (ecdh),
#: 16384 x 16-byte tags = 256 KiB (keyed-hash); far below gRPC's 4 MiB.
DEFAULT_CHUNK_ITEMS = 16384
#: 32768 x 32 bytes = 1 MiB, the largest chunk a node accepts (max_chunk_bytes).
MAX_CHUNK_ITEMS = 32768
#: The highest ``max_records_per_identity`` a ``[[nodes]]`` entry may set.
MAX_RECORDS_PER_IDENTITY = 1_000_000


def parse_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:port``).

    The same rules as a node's ``listen`` (:func:`runtime.config.parse_host_port`):
    a bare IPv6 address (``::1:47101``) is refused here, not by gRPC later.

    Raises:
        ValueError: not ``host:port`` with a valid host and a port in 1..65535.
    """
    return parse_host_port(text)


class CoordinatorSection(Strict):
    """``[coordinator]``."""

    name: str = Field(min_length=1)
    ca: Path
    cert: Path
    key: Path
    audit_log: Path
    state: Path
    #: roster.csv, or a civil-affairs database table or query (``{ database = … }``)
    roster: Path | DatabaseSource
    purpose: str = Field(min_length=1)
    workers: int | None = Field(default=None, ge=1, le=256)
    chunk_items: int = Field(default=DEFAULT_CHUNK_ITEMS, ge=1, le=MAX_CHUNK_ITEMS)
    roster_encoding: FileEncoding = "auto"
    audit_key: Path | None = None
    audit_cert: Path | None = None
    #: protocol-log profile: SHA-256 + Ed25519, or "gm": SM3 chain + SM2 checkpoints
    audit_profile: Literal["international", "gm"] = "international"
    #: X25519 for ecdh, as the node's key of the same name (XMATCH_X25519_BACKEND wins).
    x25519_backend: Literal["auto", "crypto-mb", "openssl"] = "auto"
    #: the 疑义校核 disputes (identity numbers: mode 0600); default disputes.sqlite beside state
    disputes: Path | None = None
    #: the environment variable holding the passphrase of our keys (TLS, audit, sealing),
    #: as ``keys issue --key-passphrase-env`` (or the CA's passphrase) encrypted them
    passphrase_env: str | None = Field(default=None, min_length=1)

    def key_passphrase(self) -> bytes | None:
        """The passphrase of our keys, from :attr:`passphrase_env` (``None``: not encrypted).

        Raises:
            ConfigError: the variable is not set (any more).
        """
        return env_passphrase(self.passphrase_env, "coordinator.passphrase_env")

    @field_validator("name", "purpose")
    @classmethod
    def _context_names(cls, value: str) -> str:
        # both go into every round context: checked now, not when the round starts
        return check_context_name(value)

    @field_validator("roster", mode="before")
    @classmethod
    def _roster_table(cls, value: object, info: ValidationInfo) -> object:
        return source_from_toml(value, info.context)

    @field_validator(
        "ca", "cert", "key", "audit_log", "state", "roster", "audit_key", "audit_cert", "disputes"
    )
    @classmethod
    def _relative_to_config(
        cls, value: Path | DatabaseSource | None, info: ValidationInfo
    ) -> Path | DatabaseSource | None:
        if value is None or isinstance(value, DatabaseSource):
            return value
        return resolve_path(value, info)

    @property
    def audit_key_path(self) -> Path:
        """The Ed25519 log-signing key (default: NAME.audit.key beside ``key``)."""
        return self.audit_key or self.key.parent / f"{self.name}.audit.key"

    @property
    def audit_cert_path(self) -> Path:
        """Its certificate (default: NAME.audit.crt beside ``key``)."""
        return self.audit_cert or self.key.parent / f"{self.name}.audit.crt"

    @property
    def audit_sm2_key_path(self) -> Path:
        """The SM2 checkpoint key of the GM log profile: NAME.audit-sm2.key beside the audit key."""
        return self.audit_key_path.with_name(f"{self.name}.audit-sm2.key")

    @property
    def ec_workers(self) -> int:
        """Worker processes for ecdh EC work (``workers`` or the CPU count)."""
        return self.workers or os.cpu_count() or 1


class NodeEntry(Strict):
    """One ``[[nodes]]`` entry: a department node and the match sets to query."""

    name: str = Field(min_length=1)
    #: host:port of a gRPC node; left out for ``transport = "offline"`` (then "")
    address: str
    #: "grpc" (default), or "offline": sealed files on removable media (docs/offline.md)
    transport: Literal["grpc", "offline"] = "grpc"
    #: offline: the node's sealing certificate (default: NAME.seal.crt beside ``ca``)
    seal_cert: Path | None = None
    #: offline: days until a request, and the response to it, expire
    offline_days: int = Field(default=14, ge=1, le=366)
    match_sets: list[str] = Field(min_length=1)
    protocol: Protocol
    deadline_seconds: float = Field(default=600.0, gt=0, le=86_400)
    retries: int = Field(default=3, ge=0, le=20)
    #: ecdh: the largest (padded) set we will receive and raise to our key; the node
    #: announces its size, but a hostile node could announce anything
    max_set_size: int = Field(default=50_000_000, ge=1, le=10**10)
    #: keyed-hash: the most records one matched identity may carry in one answer;
    #: honest sets hold a few per person, a hostile node could send a million
    max_records_per_identity: int = Field(
        default=DEFAULT_MAX_RECORDS_PER_IDENTITY, ge=1, le=MAX_RECORDS_PER_IDENTITY
    )
    #: The ecdh suite / keyed-hash PRF proposed to this node (a round parameter); it must
    #: be in the node's ``suites`` / ``prfs``. GM: "SM2_XMD:SM3_SSWU_RO_" / "sm4-ecb-v1".
    suite: Literal[
        "x25519-sha256-u",
        "curve25519_XMD:SHA-512_ELL2_RO_",
        "curve25519_XMD:SHA-512_ELL2_NU_",
        "SM2_XMD:SM3_SSWU_RO_",
    ] = "x25519-sha256-u"
    prf: Literal["aes128-ecb-v1", "aes256-ecb-v1", "sm4-ecb-v1"] = "aes128-ecb-v1"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_context_name(value)  # the responder of its round contexts

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            parse_address(value)
        return value

    @field_validator("seal_cert")
    @classmethod
    def _seal_cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info)

    @model_validator(mode="before")
    @classmethod
    def _no_address_offline(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("transport") == "offline":
            data = {"address": "", **data}
        return data

    @model_validator(mode="after")
    def _transport(self) -> NodeEntry:
        if self.transport == "grpc" and not self.address:
            raise ValueError('address is required (or transport = "offline")')
        if self.transport == "offline" and self.address:
            raise ValueError('an offline node has no address (transport = "offline")')
        return self

    @property
    def offline(self) -> bool:
        """Reached through sealed files, not gRPC."""
        return self.transport == "offline"

    @field_validator("match_sets")
    @classmethod
    def _unique_sets(cls, value: list[str]) -> list[str]:
        if any(not s.strip() for s in value):
            raise ValueError("empty match set name")
        for name in value:
            check_context_name(name)  # the match set of a round context
        if len(set(value)) != len(value):
            raise ValueError("a match set is listed twice")
        return value


class CoordinatorConfig(Strict):
    """The whole ``coordinator.toml``; ``path`` is where it was loaded from."""

    coordinator: CoordinatorSection
    nodes: list[NodeEntry] = Field(min_length=1)
    #: work lists for the service departments (coordinator.share_config)
    shares: list[ShareEntry] = Field(default_factory=list)
    path: Path | None = None
    _sha256: str | None = PrivateAttr(default=None)

    @property
    def sha256(self) -> str | None:
        """SHA-256 (hex) of the bytes this configuration was parsed from (None: not
        loaded from a file). Not read again: the file may be a pipe or ``/dev/stdin``."""
        return self._sha256

    @model_validator(mode="after")
    def _unique_nodes(self) -> CoordinatorConfig:
        # the names are not repeated: the key paths say where to look
        names = [n.name for n in self.nodes]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(
                    f"nodes[{i}].name: the name of nodes[{names.index(name)}] again; "
                    "each node is configured once"
                )
        for i, share in enumerate(self.shares):
            if share.department not in names:
                raise ValueError(f"shares[{i}].department: not the name of a [[nodes]] entry")
            earlier = [s.department for s in self.shares[:i]]
            if share.department in earlier:
                raise ValueError(
                    f"shares[{i}].department: the department of "
                    f"shares[{earlier.index(share.department)}] again"
                )
        return self


def load_coordinator_config(path: Path | str) -> CoordinatorConfig:
    """Read and validate ``coordinator.toml``.

    Relative paths are resolved against the folder of ``path``. Files named
    by the config are not opened here (the round does, naming them).

    Raises:
        ConfigError: the file is missing or unreadable, is not TOML, has an
            unknown or missing key, or a bad value (for example an address
            that is not ``host:port``). The one-line message names the file
            and the key, never a secret.
    """
    path = Path(path)
    toml = read_toml(path, COORDINATOR_WORDING)
    if "path" in toml.data:
        raise ConfigError(f"{path}: unknown key path")
    try:
        config = CoordinatorConfig.model_validate(toml.data, context={"base": config_folder(path)})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {one_line(exc, COORDINATOR_WORDING)}") from None
    try:
        config.coordinator.key_passphrase()  # before anything runs: one line naming the key
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    config = config.model_copy(update={"path": path})
    config._sha256 = toml.sha256
    return config
