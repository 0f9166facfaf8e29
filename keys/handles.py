"""Opaque handles on a member's private keys.

- :class:`TlsMaterial`: the checked TLS identity of a member, ready to become
  gRPC server or channel credentials. gRPC needs the private key as cleartext PEM
  bytes; that conversion happens only in memory, in :mod:`keys.unsafe_cleartext`.
- :class:`AuditSigner`: the member's Ed25519 checkpoint-signing key. It signs; it
  never exports the private key.

Neither handle can be pickled, copied into a ``repr`` or built directly: use
:func:`load_tls_credentials`, :meth:`AuditSigner.load` or :meth:`AuditSigner.for_member`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from keys.ca import load_private_key
from keys.certs import (
    MemberCertificate,
    Role,
    check_ca_certificate,
    check_name,
    inspect_member_certificate,
    load_certificate,
)
from psi.errors import ConfigError, InputError, InvalidKey, VerificationError

if TYPE_CHECKING:
    import grpc

_TOKEN = object()


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read ({exc.strerror})") from exc


def _check_ca_file(ca: Path, ca_pem: bytes) -> None:
    """The file given as ``ca`` is a CA certificate; said about that file, before anything
    is checked against it (else a member certificate given as ``ca`` reads as if our own
    certificate were at fault)."""
    cert = load_certificate(ca_pem, what=f"{ca} (given as ca)")
    try:
        check_ca_certificate(cert, what="it")
    except VerificationError as exc:
        cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        whose = f"; it is the certificate of {cns[0]!r}" if len(cns) == 1 else ""
        raise ConfigError(
            f"{ca}: given as ca, but {exc}{whose}; ca must be the federation's ca.crt "
            "(written by xmatch keys init-ca)"
        ) from None


def _check_name_matches(cert_path: Path, cert_pem: bytes, name: str) -> None:
    """Compare the certificate's CN with the configured name before anything else."""
    cert = load_certificate(cert_pem, what=str(cert_path))
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [name]:
        shown = cns[0] if len(cns) == 1 else cns
        raise ConfigError(f"{cert_path}: certificate names {shown!r}, config says {name!r}")


@contextmanager
def own_credentials() -> Iterator[None]:
    """Loading our own CA, certificate or key files, as our config names them.

    Any problem with them (unreadable, not a certificate, expired, a key that
    does not belong) is a configuration error: re-raised as
    :class:`psi.errors.ConfigError` with the same line, so ``round`` and
    ``node serve`` exit 2, as for the config file itself (docs/coordinator.md,
    "Exit codes"; docs/node.md). Peers' certificates are not loaded through here.
    """
    try:
        yield
    except ConfigError:
        raise
    except (InputError, VerificationError, InvalidKey) as exc:
        raise ConfigError(exc.diagnostics()) from exc


class SecretKeyAccess:
    """A token proving the caller may see a private key in cleartext.

    Tink's pattern (``SecretKeyAccess`` / ``InsecureSecretKeyAccess.get()``): the
    handle never imports the cleartext module; that module holds the token callers
    use, so each cleartext export is visible at its call site.
    """

    __slots__ = ()


# gRPC credentials take PEM private keys, not key objects: the handle's own access
_GRPC_ACCESS = SecretKeyAccess()


class TlsMaterial:
    """A member's verified TLS identity. Build it with :func:`load_tls_credentials`.

    Public attributes: ``name``, ``role``, ``ca_pem``, ``cert_pem``, ``not_after``.
    The private key is reachable only through :meth:`server_credentials`,
    :meth:`channel_credentials` and :meth:`private_key_pem`, which needs a
    :class:`SecretKeyAccess` (callers get one from :mod:`keys.unsafe_cleartext`).
    """

    __slots__ = ("_key", "ca_pem", "cert_pem", "name", "not_after", "role")

    def __init__(
        self,
        token: object,
        *,
        name: str,
        role: Role,
        ca_pem: bytes,
        cert_pem: bytes,
        key: ec.EllipticCurvePrivateKey,
        not_after: _dt.datetime,
    ) -> None:
        if token is not _TOKEN:
            raise TypeError("use keys.handles.load_tls_credentials() to build TlsMaterial")
        self.name = name
        self.role = role
        self.ca_pem = ca_pem
        self.cert_pem = cert_pem
        self.not_after = not_after
        self._key = key

    def __repr__(self) -> str:
        until = self.not_after.isoformat()
        return f"TlsMaterial(name={self.name!r}, role={self.role!r}, not_after={until})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("TlsMaterial holds a private key and cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("TlsMaterial cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("TlsMaterial cannot be copied")

    def private_key_pem(self, access: SecretKeyAccess) -> bytes:
        """The TLS private key as unencrypted PKCS#8 PEM, in memory only.

        Raises:
            TypeError: ``access`` is not a :class:`SecretKeyAccess`.
        """
        if not isinstance(access, SecretKeyAccess):
            raise TypeError("cleartext key export needs keys.unsafe_cleartext")
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials that require a client certificate from the same CA."""
        import grpc

        return grpc.ssl_server_credentials(
            [(self.private_key_pem(_GRPC_ACCESS), self.cert_pem)],
            root_certificates=self.ca_pem,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials: trust only the federation CA, present this member's cert.

        Connect with the option ``("grpc.ssl_target_name_override", node_name)`` so
        that the server's SAN is checked against the node's configured name.
        """
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.private_key_pem(_GRPC_ACCESS),
            certificate_chain=self.cert_pem,
        )


def load_tls_credentials(
    *,
    ca: Path,
    cert: Path,
    key: Path,
    name: str,
    passphrase: bytes | None = None,
    at: _dt.datetime | None = None,
) -> TlsMaterial:
    """Load and check a member's TLS certificate and key.

    Steps:
      1. The certificate's CN is the configured ``name``.
      2. The CA issued it for TLS, it is valid now, and its SAN equals its CN.
      3. The key decrypts with ``passphrase`` and belongs to the certificate.

    Raises:
        InputError: a file cannot be read.
        ConfigError: the certificate names another member, or ``ca`` is not a CA certificate.
        VerificationError: the certificate fails step 2.
        InvalidKey: the key fails step 3.
    """
    check_name(name)
    ca_pem = _read(ca, "CA certificate")
    _check_ca_file(ca, ca_pem)
    cert_pem = _read(cert, "certificate")
    # (1)
    _check_name_matches(cert, cert_pem, name)
    # (2)
    try:
        info = inspect_member_certificate(cert_pem, ca_pem=ca_pem, usage="tls", at=at)
    except VerificationError as exc:
        raise VerificationError(f"{cert}: {exc}") from exc
    # (3)
    private = load_private_key(key, passphrase=passphrase, what="TLS key")
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        private.curve, ec.SECP256R1
    ):
        raise InvalidKey(f"TLS key {key} is not an ECDSA P-256 key")
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    if point != info.public_key_raw:
        raise InvalidKey(f"TLS key {key} does not belong to certificate {cert}")
    return TlsMaterial(
        _TOKEN,
        name=info.name,
        role=info.role,
        ca_pem=ca_pem,
        cert_pem=cert_pem,
        key=private,
        not_after=info.not_after,
    )


def key_id(public_key_raw: bytes) -> str:
    """The id of an Ed25519 audit key: hex SHA-256 of its 32 raw public bytes."""
    return hashlib.sha256(public_key_raw).hexdigest()


class AuditSigner:
    """A member's Ed25519 protocol-log signing key (from ``NAME.audit.key``).

    ``sign`` is the only use of the private key. ``public_bytes``,
    ``certificate_pem`` and ``certificate_der`` export public material only.
    """

    __slots__ = ("_cert_der", "_cert_pem", "_key", "_public", "name", "role")

    def __init__(
        self,
        token: object,
        *,
        key: ed25519.Ed25519PrivateKey,
        cert_pem: bytes,
        info: MemberCertificate,
    ) -> None:
        if token is not _TOKEN:
            raise TypeError("use AuditSigner.load() or AuditSigner.for_member()")
        self._key = key
        self._public = info.public_key_raw
        self._cert_pem = cert_pem
        self._cert_der = load_certificate(cert_pem, what="audit certificate").public_bytes(
            serialization.Encoding.DER
        )
        self.name = info.name
        self.role = info.role

    @classmethod
    def load(
        cls,
        *,
        key: Path,
        cert: Path,
        passphrase: bytes | None = None,
        ca: Path | None = None,
        at: _dt.datetime | None = None,
    ) -> AuditSigner:
        """Load an audit key and its certificate, and check that they belong together.

        With ``ca``, the certificate must also have been issued by that CA.

        Raises:
            InputError: a file cannot be read.
            VerificationError: the certificate is not a valid audit certificate.
            InvalidKey: the key is not Ed25519, cannot be decrypted, or is not the
                certificate's key.
        """
        cert_pem = _read(cert, "audit certificate")
        ca_pem = _read(ca, "CA certificate") if ca is not None else None
        try:
            info = inspect_member_certificate(cert_pem, ca_pem=ca_pem, usage="audit", at=at)
        except VerificationError as exc:
            raise VerificationError(f"{cert}: {exc}") from exc
        private = load_private_key(key, passphrase=passphrase, what="audit key")
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise InvalidKey(f"audit key {key} is not an Ed25519 key")
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        if raw != info.public_key_raw:
            raise InvalidKey(f"audit key {key} does not belong to certificate {cert}")
        return cls(_TOKEN, key=private, cert_pem=cert_pem, info=info)

    @classmethod
    def for_member(
        cls, directory: Path, *, name: str, passphrase: bytes | None = None, ca: Path | None = None
    ) -> AuditSigner:
        """Load ``DIR/NAME.audit.key`` and ``DIR/NAME.audit.crt`` (as ``keys issue`` wrote them).

        Raises:
            ConfigError: the certificate names another member.
            InputError, VerificationError, InvalidKey: as :meth:`load`.
        """
        check_name(name)
        directory = Path(directory)
        signer = cls.load(
            key=directory / f"{name}.audit.key",
            cert=directory / f"{name}.audit.crt",
            passphrase=passphrase,
            ca=ca,
        )
        if signer.name != name:
            where = directory / f"{name}.audit.crt"
            raise ConfigError(f"{where}: certificate names {signer.name!r}, config says {name!r}")
        return signer

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        if not isinstance(data, bytes):
            raise TypeError("AuditSigner.sign takes bytes")
        return self._key.sign(data)

    def public_bytes(self) -> bytes:
        """The 32 raw bytes of the public key."""
        return self._public

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of :meth:`public_bytes`."""
        return key_id(self._public)

    def certificate_pem(self) -> bytes:
        """The CA-issued certificate of the public key, PEM."""
        return self._cert_pem

    def certificate_der(self) -> bytes:
        """The CA-issued certificate of the public key, DER."""
        return self._cert_der

    def __repr__(self) -> str:
        return f"AuditSigner(name={self.name!r}, key_id={self.key_id[:16]}…)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("AuditSigner holds a private key and cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("AuditSigner cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("AuditSigner cannot be copied")
