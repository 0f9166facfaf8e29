"""SM2 signatures (GB/T 32918.2) with the default user ID, for the GM profile of protocol logs.

A thin, safe face on :mod:`psi.hazmat.sm2`, where one of two parts of Intel's library does
the work (:mod:`psi.hazmat.sm2_signatures`): libcrypto_mb's ``mbx_sm2_ecdsa_sign_mb8`` /
``mbx_sm2_ecdsa_verify_mb8`` on a CPU with AVX-512 IFMA, elsewhere (AMD, Hygon, older
Intel) libippcp's ``ippsGFpECSignSM2`` / ``ippsGFpECVerifySM2`` from the same package. Both
sign e = SM3(Z || M) with Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA), and give the
same bytes for the same k, so a log signed on one kind of machine checks on the other. The
per-signature secret k is drawn from ``os.urandom``. Only where neither library loads do
signing and verifying raise OSError.

Keys: a private key is a 32-byte big-endian integer d in [1, n - 2]; a public key travels as
65 bytes ``04 || x || y`` (SEC 1 uncompressed); a signature is 64 bytes ``r || s``.
"""

from __future__ import annotations

import os
from typing import NoReturn

from psi.hazmat import sm2 as _sm2

__all__ = ["DEFAULT_USER_ID", "Sm2SigningKey", "generate_private_key", "verify"]

DEFAULT_USER_ID = _sm2.DEFAULT_USER_ID


def generate_private_key() -> bytes:
    """A fresh private key (32 bytes, d in [1, n - 2])."""
    while True:
        d = _sm2.generate_scalar(os.urandom)
        if int.from_bytes(d, "big") < _sm2.N - 1:
            return d


class Sm2SigningKey:
    """An SM2 private key that signs; holds nothing but the key and its public point."""

    __slots__ = ("_d", "public_bytes")

    def __init__(self, private: bytes) -> None:
        """Raises: ValueError: not 32 bytes, or out of range."""
        d = int.from_bytes(private, "big")
        if len(private) != 32 or not 1 <= d < _sm2.N - 1:
            raise ValueError("an SM2 private key is 32 bytes, 1 <= d <= n - 2")
        self._d = d
        x, y = _sm2.public_point(d)
        #: ``04 || x || y``
        self.public_bytes = b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")

    def __reduce__(self) -> NoReturn:
        raise TypeError("Sm2SigningKey holds a private key and cannot be pickled")

    def sign(self, message: bytes, user_id: bytes = DEFAULT_USER_ID) -> bytes:
        """The 64-byte signature r || s. Raises: OSError: no SM2 library loads here."""
        return _sm2.sign(self._d, message, user_id)


def verify(
    public: bytes, message: bytes, signature: bytes, user_id: bytes = DEFAULT_USER_ID
) -> bool:
    """Whether ``signature`` is ``public``'s (65 bytes, ``04 || x || y``) signature of
    ``message``. Raises: OSError: no SM2 library loads here."""
    if len(public) != 65 or public[0] != 4:
        return False
    point = (int.from_bytes(public[1:33], "big"), int.from_bytes(public[33:], "big"))
    return _sm2.verify(point, message, signature, user_id)
