"""DANGER: hashing encoded identities to X25519 u-coordinates.

Use :mod:`psi.ecdh`; the suite is a negotiated round parameter (``suite``).

Suites (name -> how the u-coordinate of H(x) is made from the 16-byte
encoding x of an identity):

``x25519-sha256-u`` (default)
    ``u = SHA-256("xmatch-v1 x25519-sha256-u" || 0x00 || x)``, the 32 bytes
    taken directly as a little-endian u-coordinate, as in the ECDH-PSI
    interconnection protocol used by SecretFlow. About half of the values lie
    on the twist; Curve25519 is twist-secure and clamping clears both
    cofactors, so what leaks is one bit of a random-oracle output per element
    (protocols.md). About 0.5 us per element.

``curve25519_XMD:SHA-512_ELL2_RO_`` (the strict suite)
    RFC 9380 ``hash_to_curve`` (section 3): two field elements from
    expand_message_xmd(SHA-512), each mapped by Elligator 2 (section 6.7.1),
    the two points added, then the cofactor cleared (h_eff = 8), with the DST
    ``XMATCH-V01-CS01-with-curve25519_XMD:SHA-512_ELL2_RO_``. This is the
    random-oracle encoding of RFC 9380 (sections 2.2.3 and 3: indifferentiable
    from a random oracle); protocols whose proof models H as a
    random oracle, DH-PSI among them, should use it. About twice the cost of
    the NU suite. Checked against RFC 9380 appendix J.4.1.

``curve25519_XMD:SHA-512_ELL2_NU_``
    RFC 9380 ``encode_to_curve`` (section 3): one field element, one
    Elligator 2 map, cofactor clearing, with the DST
    ``XMATCH-V01-CS01-with-curve25519_XMD:SHA-512_ELL2_NU_``. Its output is
    not uniformly distributed (it reaches only about half of the points) and
    it is *not* indifferentiable from a random oracle (RFC 9380 sections
    2.2.2 and 3); kept for rounds already configured with it. Checked against
    RFC 9380 appendix J.4.2.

For both RFC 9380 suites the u-coordinate of the point is what X25519
consumes. Field arithmetic is Python ``int`` with ``pow``: correct, not
constant time (the inputs are the party's own identities, not secrets of the
peer); about 0.4 ms per element for NU and 0.8 ms for RO.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from psi.hazmat.x25519 import split_map

__all__ = [
    "DEFAULT_SUITE",
    "ELL2_DST",
    "ELL2_RO_DST",
    "ELL2_RO_SUITE",
    "ELL2_SUITE",
    "SUITES",
    "add_points",
    "clear_cofactor",
    "encode_to_curve",
    "expand_message_xmd",
    "hash_to_curve",
    "hash_to_field",
    "hash_to_u",
    "map_to_curve_elligator2",
]

P = 2**255 - 19
_J = 486662
_Z = 2
_L = 48
_SQRT_M1 = pow(2, (P - 1) // 4, P)

DEFAULT_SUITE = "x25519-sha256-u"
ELL2_SUITE = "curve25519_XMD:SHA-512_ELL2_NU_"
_SHA256_U_PREFIX = b"xmatch-v1 x25519-sha256-u\x00"
ELL2_DST = b"XMATCH-V01-CS01-with-curve25519_XMD:SHA-512_ELL2_NU_"
ELL2_RO_SUITE = "curve25519_XMD:SHA-512_ELL2_RO_"
ELL2_RO_DST = b"XMATCH-V01-CS01-with-curve25519_XMD:SHA-512_ELL2_RO_"
SUITES: tuple[str, ...] = (DEFAULT_SUITE, ELL2_RO_SUITE, ELL2_SUITE)
"""Every suite a round may name; :mod:`psi.ecdh` refuses any other."""


def expand_message_xmd(
    msg: bytes, dst: bytes, len_in_bytes: int, hash_name: str = "sha512"
) -> bytes:
    """RFC 9380 section 5.3.1 expand_message_xmd.

    Raises:
        ValueError: ``len_in_bytes`` too large (more than 255 blocks or 65535).
    """
    h = hashlib.new(hash_name)
    b_in_bytes, r_in_bytes = h.digest_size, h.block_size
    if len(dst) > 255:
        dst = hashlib.new(hash_name, b"H2C-OVERSIZE-DST-" + dst).digest()
    ell = -(-len_in_bytes // b_in_bytes)
    if ell > 255 or len_in_bytes > 65535:
        raise ValueError("expand_message_xmd: requested length is too large")
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(r_in_bytes) + msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime
    b0 = hashlib.new(hash_name, msg_prime).digest()
    b_prev = hashlib.new(hash_name, b0 + b"\x01" + dst_prime).digest()
    out = [b_prev]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, b_prev, strict=True))
        b_prev = hashlib.new(hash_name, mixed + bytes([i]) + dst_prime).digest()
        out.append(b_prev)
    return b"".join(out)[:len_in_bytes]


def hash_to_field(msg: bytes, dst: bytes, count: int = 1) -> list[int]:
    """RFC 9380 section 5.2 hash_to_field for GF(2^255 - 19), L = 48, SHA-512."""
    uniform = expand_message_xmd(msg, dst, count * _L)
    return [int.from_bytes(uniform[i * _L : (i + 1) * _L], "big") % P for i in range(count)]


def _is_square(x: int) -> bool:
    return x == 0 or pow(x, (P - 1) // 2, P) == 1


def _sqrt(x: int) -> int:
    # p = 5 (mod 8): candidate x^((p+3)/8), fixed up by sqrt(-1) if needed.
    root = pow(x, (P + 3) // 8, P)
    if root * root % P != x % P:
        root = root * _SQRT_M1 % P
    return root


def _inv0(x: int) -> int:
    return pow(x, P - 2, P)


def map_to_curve_elligator2(u: int) -> tuple[int, int]:
    """RFC 9380 section 6.7.1 Elligator 2 for curve25519 (J = 486662, K = 1, Z = 2).

    Returns the Montgomery point (s, t).
    """
    x1 = (-_J * _inv0(1 + _Z * u * u)) % P
    if x1 == 0:
        x1 = -_J % P
    gx1 = (x1 * x1 * x1 + _J * x1 * x1 + x1) % P
    x2 = (-x1 - _J) % P
    gx2 = (x2 * x2 * x2 + _J * x2 * x2 + x2) % P
    if _is_square(gx1):
        x, y = x1, _sqrt(gx1)
        if y % 2 != 1:
            y = -y % P
    else:
        x, y = x2, _sqrt(gx2)
        if y % 2 != 0:
            y = -y % P
    return x, y


def _double(point: tuple[int, int] | None) -> tuple[int, int] | None:
    if point is None:
        return None
    x, y = point
    if y == 0:
        return None  # a point of order 2 doubles to infinity
    lam = (3 * x * x + 2 * _J * x + 1) * _inv0(2 * y) % P
    x3 = (lam * lam - _J - 2 * x) % P
    y3 = (lam * (x - x3) - y) % P
    return x3, y3


def add_points(p: tuple[int, int] | None, q: tuple[int, int] | None) -> tuple[int, int] | None:
    """Affine addition on curve25519 (Montgomery, B = 1); ``None`` is infinity.

    RFC 9380 leaves point addition to the curve; these are the usual chord
    formulas (Costello and Smith, "Montgomery curves and their arithmetic",
    section 2.2), falling back to doubling when ``p == q``.
    """
    if p is None:
        return q
    if q is None:
        return p
    (x1, y1), (x2, y2) = p, q
    if x1 == x2:
        return _double(p) if y1 == y2 else None  # p == q, or p == -q
    lam = (y2 - y1) * _inv0(x2 - x1) % P
    x3 = (lam * lam - _J - x1 - x2) % P
    y3 = (lam * (x1 - x3) - y1) % P
    return x3, y3


def clear_cofactor(point: tuple[int, int] | None) -> tuple[int, int] | None:
    """8 * point by three affine doublings (h_eff = 8); ``None`` is infinity."""
    result = point
    for _ in range(3):
        result = _double(result)
    return result


def encode_to_curve(msg: bytes, dst: bytes = ELL2_DST) -> tuple[int, int] | None:
    """RFC 9380 encode_to_curve for curve25519_XMD:SHA-512_ELL2_NU_ (Montgomery x, y)."""
    (u,) = hash_to_field(msg, dst, 1)
    return clear_cofactor(map_to_curve_elligator2(u))


def hash_to_curve(msg: bytes, dst: bytes = ELL2_RO_DST) -> tuple[int, int] | None:
    """RFC 9380 hash_to_curve for curve25519_XMD:SHA-512_ELL2_RO_ (Montgomery x, y).

    ``u0, u1 = hash_to_field(msg, 2)``; ``Q0, Q1 = map_to_curve(u0), map_to_curve(u1)``;
    ``P = clear_cofactor(Q0 + Q1)``. ``None`` is the point at infinity.
    """
    u0, u1 = hash_to_field(msg, dst, 2)
    q0 = map_to_curve_elligator2(u0)
    q1 = map_to_curve_elligator2(u1)
    return clear_cofactor(add_points(q0, q1))


def _u_bytes(point: tuple[int, int] | None) -> bytes:
    # Infinity becomes u = 0, a low-order input X25519 rejects (a ProtocolError).
    return (0 if point is None else point[0]).to_bytes(32, "little")


def _ell2_buffer(dst: bytes, buf: bytes) -> tuple[bytes, int]:
    out = bytearray()
    for i in range(len(buf) // 16):
        out += _u_bytes(encode_to_curve(buf[16 * i : 16 * i + 16], dst))
    return bytes(out), -1


def _ell2_ro_buffer(dst: bytes, buf: bytes) -> tuple[bytes, int]:
    out = bytearray()
    for i in range(len(buf) // 16):
        out += _u_bytes(hash_to_curve(buf[16 * i : 16 * i + 16], dst))
    return bytes(out), -1


def _sha256_u(rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    base = hashlib.sha256(_SHA256_U_PREFIX)
    data = rows.tobytes()
    out = bytearray(32 * len(rows))
    for i in range(len(rows)):
        h = base.copy()
        h.update(data[16 * i : 16 * i + 16])
        out[32 * i : 32 * i + 32] = h.digest()
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(-1, 32)


def hash_to_u(
    suite: str,
    identities: npt.NDArray[np.uint8],
    *,
    executor: concurrent.futures.Executor | None = None,
) -> npt.NDArray[np.uint8]:
    """u-coordinates (n, 32) of H(x) for (n, 16) encoded identities under ``suite``.

    Raises:
        ValueError: unknown suite, or ``identities`` is not (n, 16) uint8.
    """
    arr = np.asarray(identities)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 16:
        raise ValueError("identities must be an (n, 16) uint8 array")
    if suite == DEFAULT_SUITE:
        return _sha256_u(np.ascontiguousarray(arr))
    maps: dict[str, tuple[Callable[[bytes, bytes], tuple[bytes, int]], bytes]] = {
        ELL2_RO_SUITE: (_ell2_ro_buffer, ELL2_RO_DST),
        ELL2_SUITE: (_ell2_buffer, ELL2_DST),
    }
    if suite in maps:
        fn, dst = maps[suite]
        out, _ = split_map(fn, dst, arr.tobytes(), 16, executor)
        return np.frombuffer(out, dtype=np.uint8).reshape(-1, 32)
    raise ValueError(f"unknown hash-to-curve suite {suite!r}")
