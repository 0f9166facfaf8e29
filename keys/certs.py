"""Member certificates: what they contain and how they are checked against the CA.

Every federation certificate is issued directly by the federation CA (the CA has
``pathlen 0``, so there are no intermediates). A member certificate names the
member twice, as subject CN and as a SAN DNS name, and carries the member's role
as the subject OU. There are two kinds:

- **TLS** (``usage="tls"``): ECDSA P-256, EKU serverAuth + clientAuth, files
  ``NAME.crt`` / ``NAME.key``. gRPC verifies the SAN on the client side and
  exposes the CN to the server's interceptor.
- **audit** (``usage="audit"``): Ed25519, EKU :data:`AUDIT_SIGNING_EKU` only,
  files ``NAME.audit.crt`` / ``NAME.audit.key``. Signs protocol-log checkpoints.
- **seal** (``usage="seal"``): X25519, keyUsage keyAgreement only, EKU
  :data:`SEALING_EKU` only, files ``NAME.seal.crt`` / ``NAME.seal.key``. The
  HPKE recipient key of the member's sealed offline files (keys/sealed.py).

No key can pass as another kind: the key types and EKUs differ and
:func:`inspect_member_certificate` checks both.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from psi.errors import InputError, VerificationError

Usage = Literal["tls", "audit", "seal"]
Role = Literal["node", "coordinator"]

NAME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")
"""Member names: lower-case ASCII, digits and hyphens, starting with a letter, ≤ 63 chars.

A name is also a DNS label (gRPC checks it as the SAN), hence the limit of 63.
"""

ROLES: tuple[Role, ...] = ("node", "coordinator")

AUDIT_SIGNING_EKU = x509.ObjectIdentifier("2.25.208446934532860883187409553637263392145")
"""Extended key usage "xmatch protocol-log checkpoint signing".

A UUID-derived OID (ITU-T X.667, arc 2.25), so no private enterprise number is needed.
"""

SEALING_EKU = x509.ObjectIdentifier("2.25.93612457125186406339409290412780187262")
"""Extended key usage "xmatch sealed offline file recipient" (HPKE key, keys/sealed.py).

A UUID-derived OID like :data:`AUDIT_SIGNING_EKU`.
"""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid member name.

    Raises:
        InputError: the name is not ``^[a-z][a-z0-9-]{0,62}$``.
    """
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise InputError(
            f"member name {name!r} is invalid: use 1-63 lower-case letters, digits or '-', "
            "starting with a letter (for example 'justice' or 'civil-affairs')"
        )
    return name


@dataclass(frozen=True)
class MemberCertificate:
    """The checked facts of one member certificate."""

    name: str
    role: Role
    usage: Usage
    not_before: _dt.datetime
    not_after: _dt.datetime
    public_key_raw: bytes
    """Ed25519 and X25519: the 32 raw bytes; P-256: the uncompressed SEC1 point."""


def load_certificate(data: bytes, *, what: str) -> x509.Certificate:
    """Parse a PEM or DER certificate.

    Raises:
        VerificationError: the bytes are not a certificate (``what`` names it).
    """
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        # a key given where a certificate belongs (ca.key as ca or cert) is a common slip
        hint = ": it holds a private key" if b"PRIVATE KEY-----" in data[:200] else ""
        raise VerificationError(f"{what} is not an X.509 certificate{hint}") from exc


def check_ca_certificate(ca: x509.Certificate, *, what: str = "CA certificate") -> None:
    """Check that ``ca`` is a self-signed CA certificate fit to sign member certificates.

    Raises:
        VerificationError: not a CA, not self-signed, or cannot sign certificates.
    """
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise VerificationError(f"{what} lacks basicConstraints or keyUsage") from exc
    if not bc.ca or not ku.key_cert_sign:
        raise VerificationError(
            f"{what} is not a CA certificate (basicConstraints CA:true and keyCertSign required)"
        )
    try:
        ca.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise VerificationError(f"{what} is not self-signed") from exc


def _single_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise VerificationError(f"certificate subject must have exactly one {label}")
    return values[0].value


def inspect_member_certificate(
    cert_data: bytes,
    *,
    ca_pem: bytes | None,
    usage: Usage,
    at: _dt.datetime | None = None,
) -> MemberCertificate:
    """Check a member certificate and return its name, role and key.

    Steps:
      1. Parse the certificate.
      2. With ``ca_pem``: the CA is a self-signed CA, and it issued this certificate
         (issuer name and signature).
      3. The certificate is valid at ``at`` (default: now).
      4. The subject has exactly one CN, a valid member name, equal to the only SAN
         DNS name; the OU is a known role.
      5. The key type and EKU fit ``usage``.

    Without ``ca_pem`` step 2 is skipped: the result then only says what the
    certificate claims.

    Raises:
        VerificationError: any step fails.
    """
    try:
        return _inspect(cert_data, ca_pem=ca_pem, usage=usage, at=at)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # malformed extensions or names surface lazily, as ValueError, when accessed
        raise VerificationError(f"certificate is malformed ({type(exc).__name__})") from exc


def _authority_key_id(cert: x509.Certificate) -> str | None:
    """The hex key identifier of the CA that ``cert`` names as its issuer, if it says."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    return aki.key_identifier.hex() if aki.key_identifier else None


def _subject_key_id(cert: x509.Certificate) -> str | None:
    """The hex key identifier of ``cert``'s own key, if it carries one."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except (x509.ExtensionNotFound, ValueError):
        return None


def _issuers(cert: x509.Certificate, ca: x509.Certificate) -> str:
    """What differs between the certificate's issuer and our CA, in public terms.

    Two federations' CAs often carry the same default name, so the names alone can
    read "issuer X, CA X"; the key identifiers (and our CA's fingerprint) tell them apart.
    """
    issuer, ours = cert.issuer.rfc4514_string(), ca.subject.rfc4514_string()
    theirs_id, ours_id = _authority_key_id(cert), _subject_key_id(ca)
    fingerprint = ca.fingerprint(hashes.SHA256()).hex()[:16]
    if issuer != ours:
        return f"issuer {issuer!r}, this federation's CA {ours!r}"
    if theirs_id is not None and ours_id is not None and theirs_id != ours_id:
        return (
            f"issuer {issuer!r} with key id {theirs_id[:16]}…, this federation's CA of the "
            f"same name has key id {ours_id[:16]}… (SHA-256 fingerprint {fingerprint}…)"
        )
    return (
        f"issuer {issuer!r}: its signature does not verify with the key of this federation's "
        f"CA of the same name (SHA-256 fingerprint {fingerprint}…)"
    )


def _inspect(
    cert_data: bytes, *, ca_pem: bytes | None, usage: Usage, at: _dt.datetime | None
) -> MemberCertificate:
    # (1)
    cert = load_certificate(cert_data, what="member certificate")
    # (2)
    if ca_pem is not None:
        ca = load_certificate(ca_pem, what="CA certificate")
        check_ca_certificate(ca)
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise VerificationError(
                f"certificate was not issued by this federation CA ({_issuers(cert, ca)})"
            ) from exc
    # (3)
    when = at if at is not None else _dt.datetime.now(_dt.UTC)
    if when < cert.not_valid_before_utc:
        raise VerificationError(
            f"certificate is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if when > cert.not_valid_after_utc:
        raise VerificationError(f"certificate expired on {cert.not_valid_after_utc.isoformat()}")
    # (4)
    name = _single_attribute(cert, NameOID.COMMON_NAME, "CN")
    if NAME_PATTERN.fullmatch(name) is None:
        raise VerificationError(f"certificate CN {name!r} is not a member name")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise VerificationError("certificate has no subjectAltName") from exc
    dns = san.get_values_for_type(x509.DNSName)
    if dns != [name]:
        raise VerificationError(f"certificate SAN {dns!r} does not equal its CN {name!r}")
    role = _single_attribute(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)")
    if role not in ROLES:
        raise VerificationError(f"certificate role {role!r} is not one of {', '.join(ROLES)}")
    # (5)
    try:
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound as exc:
        raise VerificationError("certificate has no extendedKeyUsage") from exc
    key = cert.public_key()
    if usage == "audit":
        if not isinstance(key, ed25519.Ed25519PublicKey) or AUDIT_SIGNING_EKU not in eku:
            raise VerificationError(
                "not an audit-signing certificate (Ed25519 key and audit EKU required)"
            )
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    elif usage == "seal":
        if not isinstance(key, x25519.X25519PublicKey) or eku != {SEALING_EKU}:
            raise VerificationError(
                "not a sealing certificate (X25519 key and the sealing EKU alone required)"
            )
        raw = key.public_bytes_raw()
    else:
        if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
            raise VerificationError("not a TLS certificate (ECDSA P-256 key required)")
        if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= eku:
            raise VerificationError(
                "TLS certificate lacks serverAuth/clientAuth extended key usage"
            )
        raw = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return MemberCertificate(
        name=name,
        role="node" if role == "node" else "coordinator",
        usage=usage,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        public_key_raw=raw,
    )


def verify_member_certificate(
    cert_pem: bytes, ca_pem: bytes, *, usage: Usage = "tls", at: _dt.datetime | None = None
) -> str:
    """Check that the CA issued ``cert_pem`` for ``usage`` and that it is valid; return the name.

    Raises:
        VerificationError: see :func:`inspect_member_certificate`.
    """
    return inspect_member_certificate(cert_pem, ca_pem=ca_pem, usage=usage, at=at).name
