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
consumes. The per-element functions (``map_to_curve_elligator2``,
``add_points``, ``clear_cofactor``, ``hash_to_curve``, ``encode_to_curve``)
are the reference, in Python ``int`` with ``pow``, tested against RFC 9380.
:func:`hash_to_u` runs a whole buffer at once (:func:`_ell2_u_batch`): the
field inversions of all elements share one inversion (Montgomery's trick),
squares are decided with ``gmpy2.legendre`` and square roots and the one
inversion use ``gmpy2.powmod``, cofactor clearing is three x-only doublings
in projective coordinates; the same u-coordinates (checked against the
reference in the tests), about 25 times faster. Not constant time (the
inputs are the party's own identities, not secrets of the peer).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from collections.abc import Callable

import gmpy2
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
    b0_int = int.from_bytes(b0, "big")
    for i in range(2, ell + 1):
        mixed = (b0_int ^ int.from_bytes(b_prev, "big")).to_bytes(b_in_bytes, "big")
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


def _batch_inverse(values: list[int]) -> list[int]:
    """1/v mod P for every v (0 maps to 0, as inv0), with one modular inversion."""
    prefix: list[int] = []
    acc = 1
    for v in values:
        prefix.append(acc)
        if v:
            acc = acc * v % P
    inv = int(gmpy2.powmod(acc, P - 2, P))
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        v = values[i]
        if v:
            out[i] = inv * prefix[i] % P
            inv = inv * v % P
    return out


def _sqrt_batch(values: list[int]) -> list[int]:
    exponent, sqrt_m1 = (P + 3) // 8, _SQRT_M1
    roots = []
    for x in values:
        root = int(gmpy2.powmod(x, exponent, P))
        if root * root % P != x:
            root = root * sqrt_m1 % P
        roots.append(root)
    return roots


def _ell2_x_batch(us: list[int]) -> tuple[list[int], list[int], list[bool]]:
    """Elligator 2 for every u up to the square root: x, g(x) = y^2, and the branch.

    The branch is True where g(x1) is square (x = x1, y odd), False where x = x2
    (y even), as in map_to_curve_elligator2; the inversions are shared.
    """
    inv = _batch_inverse([(1 + _Z * u * u) % P for u in us])
    xs: list[int] = []
    squares: list[int] = []
    first: list[bool] = []
    for t in inv:
        x1 = (-_J * t) % P or (-_J % P)
        gx1 = (x1 * x1 * x1 + _J * x1 * x1 + x1) % P
        if gx1 == 0 or gmpy2.legendre(gx1, P) == 1:
            xs.append(x1)
            squares.append(gx1)
            first.append(True)
        else:
            x2 = (-x1 - _J) % P
            xs.append(x2)
            squares.append((x2 * x2 * x2 + _J * x2 * x2 + x2) % P)
            first.append(False)
    return xs, squares, first


def _ell2_batch(us: list[int]) -> list[tuple[int, int]]:
    """map_to_curve_elligator2 for every u (the same points), the inversions shared."""
    xs, squares, first = _ell2_x_batch(us)
    points = []
    for x, y, odd in zip(xs, _sqrt_batch(squares), first, strict=True):
        points.append((x, y if y % 2 == int(odd) else -y % P))
    return points


def _add_batch(
    ps: list[tuple[int, int]], qs: list[tuple[int, int]]
) -> list[tuple[int, int] | None]:
    """add_points for every pair; the chord slopes' inversions shared."""
    inv = _batch_inverse([(q[0] - p[0]) % P for p, q in zip(ps, qs, strict=True)])
    out: list[tuple[int, int] | None] = []
    for (x1, y1), (x2, y2), t in zip(ps, qs, inv, strict=True):
        if x1 == x2:
            out.append(add_points((x1, y1), (x2, y2)))  # doubling or infinity: rare
            continue
        lam = (y2 - y1) * t % P
        x3 = (lam * lam - _J - x1 - x2) % P
        out.append((x3, (lam * (x1 - x3) - y1) % P))
    return out


def _cleared_u(points: list[tuple[int, int] | None]) -> bytes:
    """u-coordinates of 8 * point as 32-byte little-endian words (0 for infinity).

    Three x-only doublings in projective (X : Z) coordinates, then one shared
    inversion: x(2P) = (X^2 - Z^2)^2 : 4XZ(X^2 + A*X*Z + Z^2), infinity (1 : 0).
    """
    xz = [(1, 0) if p is None else (p[0], 1) for p in points]
    return _doubled_thrice_u(xz)


def _doubled_thrice_u(xz: list[tuple[int, int]]) -> bytes:
    for _ in range(3):
        doubled = []
        for x, z in xz:
            xx, zz, xz_ = x * x % P, z * z % P, x * z % P
            doubled.append(((xx - zz) ** 2 % P, 4 * xz_ * (xx + _J * xz_ + zz) % P))
        xz = doubled
    inv = _batch_inverse([z for _, z in xz])
    return b"".join((x * t % P).to_bytes(32, "little") for (x, _), t in zip(xz, inv, strict=True))


def _ell2_u_batch(dst: bytes, buf: bytes, *, random_oracle: bool) -> bytes:
    """hash_to_u of the RFC 9380 suites for every 16-byte message in ``buf``."""
    msgs = [buf[i : i + 16] for i in range(0, len(buf) - len(buf) % 16, 16)]
    if not msgs:
        return b""
    count = 2 if random_oracle else 1
    fields = [hash_to_field(m, dst, count) for m in msgs]
    if random_oracle:
        q0 = _ell2_batch([f[0] for f in fields])
        q1 = _ell2_batch([f[1] for f in fields])
        return _cleared_u(_add_batch(q0, q1))
    # encode_to_curve: x(8Q) depends on x(Q) only, so no square root is needed.
    xs, _, _ = _ell2_x_batch([f[0] for f in fields])
    return _doubled_thrice_u([(x, 1) for x in xs])


def _ell2_buffer(dst: bytes, buf: bytes) -> tuple[bytes, int]:
    return _ell2_u_batch(dst, buf, random_oracle=False), -1


def _ell2_ro_buffer(dst: bytes, buf: bytes) -> tuple[bytes, int]:
    return _ell2_u_batch(dst, buf, random_oracle=True), -1


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
