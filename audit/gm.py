"""The GM (国密) profile of protocol logs: SM3 hash chain, SM2-signed checkpoints.

Chosen per party (``audit_profile = "gm"`` in node.toml ``[node]`` or coordinator.toml
``[coordinator]``). The line format is the same as the international profile's
(audit/format.py), with three differences:

* ``prev`` is the SM3 (GB/T 32905) of the previous line; entry 1's is
  :data:`audit.format.GENESIS_GM`, which is also how a reader tells the profile.
* A checkpoint's ``sig`` is the base64 SM2 signature (GB/T 32918.2, ``r || s``, 64
  bytes, default user ID ``1234567812345678``) of ``CHECKPOINT_DOMAIN || line without
  sig``, made by :mod:`psi.sm2_signature` (libcrypto_mb, or libippcp on CPUs without
  AVX-512 IFMA: the same signatures); ``key_id`` is the hex SM3 of the SM2 public key.
* A checkpoint also carries ``sm2_key`` (hex ``04 || x || y``) and ``sm2_binding``:
  the base64 Ed25519 signature, by the party's CA-certified audit key (the ``cert``
  of the checkpoint, as in the international profile), of
  :data:`BINDING_DOMAIN` ``|| party || "\\n" || sm2_key bytes``. A verifier checks
  CA -> audit certificate -> binding -> SM2 signature (docs/threat-model.md, "GM
  profile of protocol logs").

The SM2 private key lives in ``NAME.audit-sm2.key`` beside the audit key (64 hex
digits, mode 0600), made on first use when missing.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path
from typing import Final, NoReturn

from cryptography.hazmat.primitives import hashes

from keys.handles import AuditSigner, own_credentials
from psi.errors import InputError
from psi.sm2_signature import Sm2SigningKey, generate_private_key

__all__ = [
    "BINDING_DOMAIN",
    "GmAuditSigner",
    "binding_message",
    "load_or_create_sm2_key",
    "sm2_key_id",
]

BINDING_DOMAIN: Final = b"xmatch sm2 audit key binding v1\n"


def sm2_key_id(public: bytes) -> str:
    """Hex SM3 of an SM2 public key (65 bytes, ``04 || x || y``)."""
    h = hashes.Hash(hashes.SM3())
    h.update(public)
    return h.finalize().hex()


def binding_message(party: str, public: bytes) -> bytes:
    """What the party's Ed25519 audit key signs to vouch for its SM2 audit key."""
    return BINDING_DOMAIN + party.encode("ascii") + b"\n" + public


def load_or_create_sm2_key(path: Path) -> Sm2SigningKey:
    """The SM2 audit key in ``path``, made there (mode 0600, atomically) when missing.

    Raises:
        InputError: the file cannot be read or written, or does not hold a key.
    """
    path = Path(path)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(generate_private_key().hex() + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise InputError(f"{path}: cannot write the SM2 audit key ({exc.strerror})") from exc
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the SM2 audit key") from exc
    try:
        return Sm2SigningKey(bytes.fromhex(text))
    except ValueError:
        raise InputError(f"{path}: not an SM2 private key (64 hex digits)") from None


class GmAuditSigner:
    """Checkpoint signer of the GM profile: the SM2 key, vouched for by the audit key."""

    profile: Final = "gm"

    def __init__(self, audit: AuditSigner, sm2_key: Sm2SigningKey) -> None:
        self.name = audit.name
        self.role = audit.role
        self._audit = audit
        self._sm2 = sm2_key
        self.key_id = sm2_key_id(sm2_key.public_bytes)
        binding = audit.sign(binding_message(audit.name, sm2_key.public_bytes))
        self._binding = base64.b64encode(binding).decode()

    def __reduce__(self) -> NoReturn:
        raise TypeError("GmAuditSigner holds private keys and cannot be pickled")

    def sign(self, data: bytes) -> bytes:
        """The 64-byte SM2 signature r || s of ``data`` (default user ID).

        Raises:
            OSError: neither libcrypto_mb nor libippcp loads on this machine.
        """
        return self._sm2.sign(data)

    def certificate_der(self) -> bytes:
        """The CA-issued audit certificate (its key signs the binding)."""
        return self._audit.certificate_der()

    def checkpoint_fields(self) -> dict[str, str]:
        """``sm2_key`` and ``sm2_binding``, written into every checkpoint before ``sig``."""
        return {"sm2_key": self._sm2.public_bytes.hex(), "sm2_binding": self._binding}

    def __repr__(self) -> str:
        return f"GmAuditSigner(name={self.name!r}, key_id={self.key_id[:16]}…)"


def log_signer(
    *,
    key: Path,
    cert: Path,
    passphrase: bytes | None,
    ca: Path,
    profile: str,
    sm2_key: Path,
) -> AuditSigner | GmAuditSigner:
    """The signer of a party's protocol log checkpoints: its audit key, or SM2 bound by
    it (``profile = "gm"``). The node and the coordinator load theirs here.

    Raises:
        ConfigError: the audit key, its certificate or the SM2 key is unusable (our own
            files: :func:`keys.handles.own_credentials`).
    """
    with own_credentials():
        signer = AuditSigner.load(key=key, cert=cert, passphrase=passphrase, ca=ca)
        if profile != "gm":
            return signer
        try:
            return gm_signer(signer, sm2_key)
        except OSError as exc:
            raise InputError(f'audit_profile = "gm": {exc}') from None


def gm_signer(audit: AuditSigner, key_path: Path) -> GmAuditSigner:
    """The GM signer for ``audit``'s party with the SM2 key in ``key_path``.

    Raises:
        InputError: the key file cannot be read, written or parsed.
        OSError: neither libcrypto_mb nor libippcp loads here (no SM2 signatures).
    """
    return GmAuditSigner(audit, load_or_create_sm2_key(key_path))
