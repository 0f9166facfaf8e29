"""The federation CA: create it, and issue member credentials.

Files in the CA folder (every ``*.key`` is created with mode 0600 and never
overwritten):

- ``ca.crt`` / ``ca.key``: the federation CA, ECDSA P-256, about 10 years,
  basicConstraints CA:true pathlen 0, keyUsage keyCertSign + cRLSign.
- ``NAME.crt`` / ``NAME.key``: the member's TLS identity, ECDSA P-256 (gRPC's
  BoringSSL accepts it), about 2 years, CN = SAN DNS = NAME, OU = role,
  EKU serverAuth + clientAuth.
- ``NAME.audit.crt`` / ``NAME.audit.key``: the member's Ed25519 key for signing
  protocol-log checkpoints, certified by the CA so that a reviewer can check
  signatures against the CA alone.
- ``NAME.seal.crt`` / ``NAME.seal.key``: the member's X25519 key that sealed
  offline files are encrypted to (HPKE, keys/sealed.py), keyUsage keyAgreement
  only: a key of its own, never the TLS or the audit key.

Private keys are PKCS#8 PEM, encrypted with the passphrase when one is given.
"""

from __future__ import annotations

import datetime as _dt
import os
import unicodedata
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.certs import (
    AUDIT_SIGNING_EKU,
    ROLES,
    SEALING_EKU,
    check_ca_certificate,
    check_name,
    load_certificate,
)
from psi.errors import InputError, InvalidKey, VerificationError

CA_VALIDITY = _dt.timedelta(days=3652)
MEMBER_VALIDITY = _dt.timedelta(days=730)
CLOCK_SKEW = _dt.timedelta(minutes=5)
"""Certificates start this much before issuance, to tolerate clocks that run behind."""

_SAME = "same"


def _encryption(passphrase: bytes | None) -> serialization.KeySerializationEncryption:
    if passphrase is None:
        return serialization.NoEncryption()
    if not isinstance(passphrase, bytes) or not passphrase:
        raise InputError("the passphrase must be non-empty bytes")
    return serialization.BestAvailableEncryption(passphrase)


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` with ``mode`` (never following an existing file) and fsync it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise InputError(f"{path} already exists; refusing to overwrite it") from None
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise InputError(f"{path} already exists; refusing to overwrite it")


def _key_pem(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey,
    passphrase: bytes | None,
) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(passphrase)
    )


def load_private_key(path: Path, *, passphrase: bytes | None, what: str) -> object:
    """Load a PEM private key file.

    Raises:
        InputError: the file cannot be read.
        InvalidKey: not a private key, encrypted without a passphrase given, or the
            passphrase is wrong.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read ({exc.strerror})") from exc
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and passphrase is None:
        raise InvalidKey(
            f"{what} {path} is encrypted: give its passphrase (--passphrase-env VAR, or "
            "passphrase_env in node.toml / coordinator.toml)"
        )
    try:
        return serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise InvalidKey(f"{what} {path}: wrong passphrase or damaged key") from exc
        raise InvalidKey(f"{what} {path} is not a PEM private key") from exc


#: The federation name of a CA made without ``--name``.
DEFAULT_FEDERATION = "xmatch federation"


def _federation_name(name: str) -> str:
    """``name`` if it can be a certificate's organization (1-56 characters, no control ones).

    Raises:
        InputError: it cannot.
    """
    text = name.strip()
    if not 1 <= len(text) <= 56 or any(unicodedata.category(c).startswith("C") for c in text):
        raise InputError("--name: the federation's name must be 1 to 56 printable characters")
    return text


def init_ca(
    directory: Path,
    *,
    passphrase: bytes | None = None,
    now: _dt.datetime | None = None,
    name: str = DEFAULT_FEDERATION,
) -> None:
    """Create the federation CA in ``directory`` (``ca.crt`` and ``ca.key``, mode 0600).

    The CA is named after the federation: organization ``name``, common name
    ``"<name> CA"``, so that two federations' CAs have different names.

    Raises:
        InputError: a CA already exists there, the folder cannot be written, or
            ``name`` is empty, too long or holds control characters.
    """
    federation = _federation_name(name)
    directory = Path(directory)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    _refuse_existing(cert_path, key_path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{directory}: cannot create ({exc.strerror})") from exc
    start = (now or _dt.datetime.now(_dt.UTC)) - CLOCK_SKEW
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(key_path, _key_pem(key, passphrase), mode=0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _leaf(
    *,
    name: str,
    role: str,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | x25519.X25519PublicKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    eku: list[x509.ObjectIdentifier],
    key_usage: x509.KeyUsage,
    start: _dt.datetime,
) -> x509.Certificate:
    end = min(start + MEMBER_VALIDITY, ca_cert.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xmatch federation"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _usage(
    *, digital_signature: bool, content_commitment: bool, key_agreement: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue(
    directory: Path,
    *,
    name: str,
    role: str,
    passphrase: bytes | None = None,
    key_passphrase: bytes | str | None = _SAME,
    now: _dt.datetime | None = None,
) -> None:
    """Issue a member's TLS and audit credentials, signed by the CA in ``directory``.

    Writes ``NAME.crt``, ``NAME.key``, ``NAME.audit.crt``, ``NAME.audit.key``,
    ``NAME.seal.crt`` and ``NAME.seal.key``.
    ``passphrase`` decrypts the CA key; the new keys are encrypted with
    ``key_passphrase``, which by default is the same passphrase (``None`` leaves them
    unencrypted).

    Raises:
        InputError: bad name or role, no CA in ``directory``, or a file exists already.
        InvalidKey: the CA key cannot be loaded (passphrase missing or wrong).
        VerificationError: ``ca.crt`` is not a CA certificate or does not match ``ca.key``.
    """
    directory = Path(directory)
    check_name(name)
    if role not in ROLES:
        raise InputError(f"role {role!r} is invalid: use one of {', '.join(ROLES)}")
    new_pass = passphrase if key_passphrase == _SAME else key_passphrase
    if isinstance(new_pass, str):
        raise InputError("key_passphrase must be bytes or None")
    outputs = [
        directory / f"{name}{suffix}"
        for suffix in (".crt", ".key", ".audit.crt", ".audit.key", ".seal.crt", ".seal.key")
    ]
    _refuse_existing(*outputs)
    ca_cert, ca_key = _load_ca(directory, passphrase)
    start = (now or _dt.datetime.now(_dt.UTC)) - CLOCK_SKEW

    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = _leaf(
        name=name,
        role=role,
        public_key=tls_key.public_key(),
        ca_cert=ca_cert,
        ca_key=ca_key,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        key_usage=_usage(digital_signature=True, content_commitment=False),
        start=start,
    )
    audit_key = ed25519.Ed25519PrivateKey.generate()
    audit_cert = _leaf(
        name=name,
        role=role,
        public_key=audit_key.public_key(),
        ca_cert=ca_cert,
        ca_key=ca_key,
        eku=[AUDIT_SIGNING_EKU],
        key_usage=_usage(digital_signature=True, content_commitment=True),
        start=start,
    )
    seal_key = x25519.X25519PrivateKey.generate()
    seal_cert = _seal_leaf(name, role, seal_key.public_key(), ca_cert, ca_key, start)
    crt, key, audit_crt, audit_key_path, seal_crt, seal_key_path = outputs
    _write_new(key, _key_pem(tls_key, new_pass), mode=0o600)
    _write_new(audit_key_path, _key_pem(audit_key, new_pass), mode=0o600)
    _write_new(seal_key_path, _key_pem(seal_key, new_pass), mode=0o600)
    _write_new(crt, tls_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write_new(audit_crt, audit_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write_new(seal_crt, seal_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def issue_seal(
    directory: Path,
    *,
    name: str,
    role: str,
    passphrase: bytes | None = None,
    key_passphrase: bytes | str | None = _SAME,
    now: _dt.datetime | None = None,
) -> None:
    """Issue only the sealing key (``NAME.seal.crt``, ``NAME.seal.key``) of a member
    issued before sealing keys existed.

    Raises:
        InputError: bad name or role, no CA in ``directory``, or a file exists already.
        InvalidKey: the CA key cannot be loaded (passphrase missing or wrong).
        VerificationError: ``ca.crt`` is not a CA certificate or does not match ``ca.key``.
    """
    directory = Path(directory)
    check_name(name)
    if role not in ROLES:
        raise InputError(f"role {role!r} is invalid: use one of {', '.join(ROLES)}")
    new_pass = passphrase if key_passphrase == _SAME else key_passphrase
    if isinstance(new_pass, str):
        raise InputError("key_passphrase must be bytes or None")
    crt, key = directory / f"{name}.seal.crt", directory / f"{name}.seal.key"
    _refuse_existing(crt, key)
    ca_cert, ca_key = _load_ca(directory, passphrase)
    start = (now or _dt.datetime.now(_dt.UTC)) - CLOCK_SKEW
    seal_key = x25519.X25519PrivateKey.generate()
    cert = _seal_leaf(name, role, seal_key.public_key(), ca_cert, ca_key, start)
    _write_new(key, _key_pem(seal_key, new_pass), mode=0o600)
    _write_new(crt, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _load_ca(
    directory: Path, passphrase: bytes | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert_path, ca_key_path = directory / "ca.crt", directory / "ca.key"
    if not ca_cert_path.exists() or not ca_key_path.exists():
        raise InputError(
            f"{directory} holds no federation CA (ca.crt, ca.key): run 'xmatch keys init-ca' first"
        )
    ca_cert = load_certificate(ca_cert_path.read_bytes(), what=str(ca_cert_path))
    check_ca_certificate(ca_cert, what=str(ca_cert_path))
    ca_key = load_private_key(ca_key_path, passphrase=passphrase, what="CA key")
    if (
        not isinstance(ca_key, ec.EllipticCurvePrivateKey)
        or ca_key.public_key() != ca_cert.public_key()
    ):
        raise VerificationError(f"{ca_key_path} does not belong to {ca_cert_path}")
    return ca_cert, ca_key


def _seal_leaf(
    name: str,
    role: str,
    public_key: x25519.X25519PublicKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    start: _dt.datetime,
) -> x509.Certificate:
    """The sealing certificate: X25519, keyAgreement only (RFC 8410), the sealing EKU."""
    return _leaf(
        name=name,
        role=role,
        public_key=public_key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        eku=[SEALING_EKU],
        key_usage=_usage(digital_signature=False, content_commitment=False, key_agreement=True),
        start=start,
    )
