"""Sealed files for offline rounds: HPKE (RFC 9180) to the recipient, ECDSA by the sender.

A sealed file carries one message between two federation members over
removable media (notice 四(二)4; docs/offline.md). Its layout, all integers
big-endian::

    magic      8 bytes   b"XMSEAL1\\n"
    header     u32 length, then canonical JSON (UTF-8, sorted keys)
    sealed     u64 length, then the HPKE single-shot output: enc (32) || ciphertext
    signature  u16 length, then ECDSA P-256 / SHA-256 (DER) by the sender's TLS key

and nothing after it. The header is in clear: ``format``, ``kind``
(``request``/``response``, or ``inbox``/``inbox-reply``), ``file_id`` (128 random
bits), ``round_id``,
``sender``, ``recipient``, ``created``, ``expires`` (ISO 8601 UTC),
``recipient_key`` (hex SHA-256 of the recipient's X25519 sealing key), and the
sender's TLS and sealing certificates (PEM). It names members and a round, never
a person.

Encryption: HPKE base mode, ``DHKEM(X25519, HKDF-SHA256)``, ``HKDF-SHA256``,
``AES-256-GCM``, to the recipient's sealing key (``NAME.seal.crt``, certified by the
federation CA), with ``info`` = :data:`INFO_LABEL` + the header bytes: a file whose
header was changed does not decrypt. Signature: over :data:`SIGNATURE_LABEL` + every
byte before the signature, by the sender's TLS key (``NAME.key``), whose
certificate the header carries. The label keeps the signature from ever being
taken for a TLS 1.3 CertificateVerify (which signs 64 spaces and its own context
string first). The threat model (docs/threat-model.md, "Offline exchange") says why.

Opening (:func:`open_sealed`) reads as a checklist; each failure is one
:class:`SealedFileError` line.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from keys.ca import load_private_key
from keys.certs import inspect_member_certificate, load_certificate
from psi.errors import InputError, InvalidKey, VerificationError

__all__ = [
    "FORMAT",
    "INFO_LABEL",
    "SIGNATURE_LABEL",
    "Kind",
    "Opened",
    "SealedFileError",
    "SealingKey",
    "SenderKey",
    "file_digest",
    "load_sealing_key",
    "load_sender_key",
    "open_sealed",
    "peek_header",
    "read_sealed",
    "seal",
]

#: request/response: an offline round (docs/offline.md); inbox/inbox-reply: disputes and
#: work lists for an offline department, and its answers (docs/coordinator.md, "Disputes")
Kind = Literal["request", "response", "inbox", "inbox-reply"]
FORMAT = "xmatch-sealed-v1"
MAGIC = b"XMSEAL1\n"
INFO_LABEL = b"xmatch sealed file v1 hpke info\x00"
SIGNATURE_LABEL = b"xmatch sealed file v1 signature\x00"
#: Largest header / sealed body / signature accepted (a header holds two certificates).
MAX_HEADER = 64 * 1024
MAX_BODY = 16 * 1024**3
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_HPKE_NAME = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"


class SealedFileError(VerificationError):
    """A sealed file is refused: truncated, altered, misdirected, expired or unknown.

    ``diagnostics()`` is the one line the operator sees; it never quotes content.
    """


@dataclass(frozen=True)
class SenderKey:
    """What a sender signs with: its TLS key and certificate, and its sealing certificate."""

    name: str
    tls_key: ec.EllipticCurvePrivateKey
    tls_cert_pem: bytes
    seal_cert_pem: bytes

    def __repr__(self) -> str:
        return f"SenderKey(name={self.name!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SenderKey holds a private key and cannot be pickled")


@dataclass(frozen=True)
class SealingKey:
    """A member's X25519 sealing key (``NAME.seal.key``) and the hex id of its public half."""

    name: str
    private: x25519.X25519PrivateKey

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the raw public key."""
        return hashlib.sha256(self.private.public_key().public_bytes_raw()).hexdigest()

    def __repr__(self) -> str:
        return f"SealingKey(name={self.name!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SealingKey holds a private key and cannot be pickled")


@dataclass(frozen=True)
class Opened:
    """A verified, decrypted sealed file."""

    header: dict[str, str]
    payload: bytes
    #: hex SHA-256 of the whole file, as both sides log it
    sha256: str

    @property
    def sender(self) -> str:
        """The sender's member name (checked against its certificate)."""
        return self.header["sender"]

    @property
    def file_id(self) -> str:
        """The file's random id (32 hex digits)."""
        return self.header["file_id"]

    @property
    def sender_seal_cert_pem(self) -> bytes:
        """The sender's sealing certificate (checked against the CA), for the answer."""
        return self.header["sender_seal_cert"].encode()


def file_digest(data: bytes) -> str:
    """Hex SHA-256 of a whole file."""
    return hashlib.sha256(data).hexdigest()


def _utc(when: _dt.datetime) -> str:
    return when.astimezone(_dt.UTC).replace(microsecond=0).isoformat()


def _recipient_key(seal_cert_pem: bytes, *, ca_pem: bytes, name: str, at: _dt.datetime) -> bytes:
    info = inspect_member_certificate(seal_cert_pem, ca_pem=ca_pem, usage="seal", at=at)
    if info.name != name:
        raise SealedFileError(f"the sealing certificate names {info.name!r}, not {name!r}")
    return info.public_key_raw


def seal(
    payload: bytes,
    *,
    kind: Kind,
    sender: SenderKey,
    recipient: str,
    recipient_seal_cert_pem: bytes,
    ca_pem: bytes,
    round_id: str,
    expires: _dt.datetime,
    now: _dt.datetime | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Seal ``payload`` for ``recipient``; returns the file's bytes.

    Raises:
        VerificationError: the recipient's sealing certificate was not issued by
            the CA to ``recipient``, or has expired.
    """
    when = now or _dt.datetime.now(_dt.UTC)
    raw = _recipient_key(recipient_seal_cert_pem, ca_pem=ca_pem, name=recipient, at=when)
    header = {
        "format": FORMAT,
        "kind": kind,
        "file_id": rng(16).hex(),
        "round_id": round_id,
        "sender": sender.name,
        "recipient": recipient,
        "created": _utc(when),
        "expires": _utc(expires),
        "hpke": _HPKE_NAME,
        "recipient_key": hashlib.sha256(raw).hexdigest(),
        "sender_cert": sender.tls_cert_pem.decode(),
        "sender_seal_cert": sender.seal_cert_pem.decode(),
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = _SUITE.encrypt(
        payload, x25519.X25519PublicKey.from_public_bytes(raw), info=INFO_LABEL + head
    )
    signed = MAGIC + struct.pack(">I", len(head)) + head + struct.pack(">Q", len(body)) + body
    signature = sender.tls_key.sign(SIGNATURE_LABEL + signed, ec.ECDSA(hashes.SHA256()))
    return signed + struct.pack(">H", len(signature)) + signature


@dataclass(frozen=True)
class _Parts:
    head: bytes
    body: bytes
    signed: bytes
    signature: bytes


def _split(data: bytes) -> _Parts:
    broken = SealedFileError("truncated or not a sealed xmatch file")
    if not data.startswith(MAGIC):
        raise broken
    at = len(MAGIC)
    if len(data) < at + 4:
        raise broken
    (head_len,) = struct.unpack_from(">I", data, at)
    at += 4
    if head_len > MAX_HEADER or len(data) < at + head_len + 8:
        raise broken
    head = data[at : at + head_len]
    at += head_len
    (body_len,) = struct.unpack_from(">Q", data, at)
    at += 8
    if body_len > MAX_BODY or len(data) < at + body_len + 2:
        raise broken
    body = data[at : at + body_len]
    at += body_len
    signed = data[:at]
    (sig_len,) = struct.unpack_from(">H", data, at)
    at += 2
    if len(data) != at + sig_len:
        raise broken
    return _Parts(head, body, signed, data[at:])


def read_sealed(path: Path) -> bytes:
    """The bytes of a sealed file at ``path``, read no further than its layout announces.

    A file that does not start like a sealed file gives its first bytes only, which
    :func:`open_sealed` refuses as "truncated or not a sealed xmatch file": a device
    such as ``/dev/zero`` given by mistake, or a large file of anything else, is never
    read into memory. One byte past the signature is read, so that a file with bytes
    appended is still refused as such.

    Raises:
        OSError: the file cannot be opened or read.
    """
    with path.open("rb") as f:
        data = f.read(len(MAGIC) + 4)
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
            return data
        (head_len,) = struct.unpack_from(">I", data, len(MAGIC))
        if head_len > MAX_HEADER:
            return data
        data += f.read(head_len + 8)
        if len(data) < len(MAGIC) + 4 + head_len + 8:
            return data
        (body_len,) = struct.unpack_from(">Q", data, len(data) - 8)
        if body_len > MAX_BODY:
            return data
        announced = len(data) + body_len + 2
        data += f.read(body_len + 2)
        if len(data) < announced:
            return data
        (sig_len,) = struct.unpack_from(">H", data, len(data) - 2)
        return data + f.read(sig_len + 1)


_HEADER_KEYS = frozenset(
    {
        "format",
        "kind",
        "file_id",
        "round_id",
        "sender",
        "recipient",
        "created",
        "expires",
        "hpke",
        "recipient_key",
        "sender_cert",
        "sender_seal_cert",
    }
)


def _header(head: bytes) -> dict[str, str]:
    try:
        value = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SealedFileError("altered: the header is not readable") from None
    if (
        not isinstance(value, dict)
        or set(value) != _HEADER_KEYS
        or not all(isinstance(v, str) for v in value.values())
        or value["format"] != FORMAT
    ):
        raise SealedFileError(f"altered or of another version: the header is not {FORMAT}")
    return value


def peek_header(data: bytes) -> dict[str, str]:
    """The clear header of a sealed file, unverified (for messages and routing only).

    Raises:
        SealedFileError: the file is truncated or its header unreadable.
    """
    return _header(_split(data).head)


def _time(header: dict[str, str], field: str) -> _dt.datetime:
    try:
        when = _dt.datetime.fromisoformat(header[field])
    except ValueError:
        raise SealedFileError(f"altered: the header's {field} is not a time") from None
    if when.tzinfo is None:
        raise SealedFileError(f"altered: the header's {field} has no time zone")
    return when


def open_sealed(
    data: bytes,
    *,
    kind: Kind,
    recipient: SealingKey,
    ca_pem: bytes,
    now: _dt.datetime | None = None,
) -> Opened:
    """Verify and decrypt a sealed file meant for ``recipient``.

    Steps:
      1. The layout is complete: magic, lengths, nothing after the signature.
      2. The header is ``xmatch-sealed-v1`` of the expected ``kind``.
      3. It is addressed to us (``recipient`` and our sealing key id).
      4. The sender's TLS and sealing certificates were issued by the federation
         CA to the member the header names (an unknown sender is refused).
      5. The sender's signature covers every byte before it.
      6. The file has not expired.
      7. HPKE opens the body with our sealing key, the header bound as ``info``.

    Replay (a file opened before) is the caller's check: it keeps the ids.

    Raises:
        SealedFileError: the first step that fails, in one line.
    """
    when = now or _dt.datetime.now(_dt.UTC)
    # (1)
    parts = _split(data)
    # (2)
    header = _header(parts.head)
    if header["kind"] != kind:
        raise SealedFileError(f"this is a sealed {header['kind']}, not a {kind}")
    # (3)
    if header["recipient"] != recipient.name:
        raise SealedFileError(
            f"meant for {header['recipient']!r}, not for {recipient.name!r}: carry it there"
        )
    if not hmac.compare_digest(header["recipient_key"], recipient.key_id):
        raise SealedFileError(
            "sealed to another sealing key of ours (an old or a foreign NAME.seal.crt)"
        )
    # (4)
    sender = header["sender"]
    try:
        tls = inspect_member_certificate(
            header["sender_cert"].encode(), ca_pem=ca_pem, usage="tls", at=when
        )
        sealing = inspect_member_certificate(
            header["sender_seal_cert"].encode(), ca_pem=ca_pem, usage="seal", at=when
        )
    except VerificationError as exc:
        raise SealedFileError(f"unknown sender {sender!r}: {exc.diagnostics()}") from None
    if tls.name != sender or sealing.name != sender:
        raise SealedFileError(
            f"unknown sender: the header says {sender!r}, its certificates name "
            f"{tls.name!r} and {sealing.name!r}"
        )
    # (5)
    public = load_certificate(header["sender_cert"].encode(), what="sender certificate")
    key = public.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SealedFileError(f"unknown sender {sender!r}: not an ECDSA certificate")
    try:
        key.verify(parts.signature, SIGNATURE_LABEL + parts.signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SealedFileError(f"altered: the signature of {sender!r} does not match") from None
    # (6)
    expires = _time(header, "expires")
    if when > expires:
        raise SealedFileError(f"expired on {header['expires']}: ask {sender!r} for a new file")
    # (7)
    try:
        payload = _SUITE.decrypt(parts.body, recipient.private, info=INFO_LABEL + parts.head)
    except (InvalidTag, ValueError):
        raise SealedFileError("altered: the sealed body does not decrypt") from None
    return Opened(header=header, payload=payload, sha256=file_digest(data))


def load_sealing_key(path: Path, *, name: str, passphrase: bytes | None) -> SealingKey:
    """Load ``NAME.seal.key``.

    Raises:
        InvalidKey: not an X25519 key, or it cannot be decrypted.
        InputError: the file cannot be read.
    """
    key = load_private_key(path, passphrase=passphrase, what="sealing key")
    if not isinstance(key, x25519.X25519PrivateKey):
        raise InvalidKey(f"{path}: not an X25519 sealing key")
    return SealingKey(name=name, private=key)


def load_sender_key(
    *, name: str, key: Path, cert: Path, seal_cert: Path, passphrase: bytes | None
) -> SenderKey:
    """The sender's TLS key and certificate, and its sealing certificate.

    Raises:
        InvalidKey: the TLS key is not ECDSA, cannot be decrypted, or is not the
            certificate's key.
        InputError: a file cannot be read.
        VerificationError: a certificate cannot be parsed.
    """
    private = load_private_key(key, passphrase=passphrase, what="TLS key")
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise InvalidKey(f"{key}: not an ECDSA key")
    try:
        cert_pem = cert.read_bytes()
        seal_pem = seal_cert.read_bytes()
    except OSError as exc:
        raise InputError(f"{exc.filename}: cannot read ({exc.strerror})") from None
    if load_certificate(cert_pem, what=str(cert)).public_key() != private.public_key():
        raise InvalidKey(f"{key} does not belong to {cert}")
    load_certificate(seal_pem, what=str(seal_cert))
    return SenderKey(name=name, tls_key=private, tls_cert_pem=cert_pem, seal_cert_pem=seal_pem)
