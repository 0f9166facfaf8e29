"""DANGER: the SM2 curve (GB/T 32918) for ECDH-PSI: hash to curve, compressed points, scalars.

Use :mod:`psi.ecdh` with the suite ``SM2_XMD:SM3_SSWU_RO_``; nothing here checks rounds.

Hash to curve is RFC 9380's generic ``hash_to_curve`` (section 3) on the SM2
curve y^2 = x^3 + a*x + b over GF(p) (a = -3, so the simplified SWU map of
section 6.6.2 applies directly, without an isogeny): ``expand_message_xmd``
over SM3 (b_in_bytes 32, s_in_bytes 64; ``cryptography``'s ``hashes.SM3`` here, for
one message, and OpenSSL's through hashlib over buffers, :mod:`psi.hazmat.sm2_field`),
L = 48, two field elements, two maps, one point addition, cofactor 1. Z is
:data:`Z` (-9), the value RFC 9380 appendix H.2's ``find_z_sswu`` selects
for SM2 (tests/test_sm2.py runs that procedure). The DST is :data:`DST`.

Points travel as 33-byte SEC 1 compressed points. ``mbx_sm2_ecdh_mb8``
returns only the x-coordinate of k*P, and x(k*P) = x(k*(-P)), so a party
that multiplies sends the representative with even y (prefix 0x02) and a
receiver accepts either prefix: the sign of a blinded point changes no value
the protocol compares (docs/psi.md, "SM2 suite"). Decoding a buffer checks
every point (prefix 0x02 or 0x03, x < p, x^3 + a*x + b a square, so on the
curve and never the identity, which has no compressed form) and reports the
first bad one by position.

Scalar multiplication, two backends with the same bytes:

``crypto-mb``
    ``mbx_sm2_ecdh_mb8`` from libcrypto_mb (loaded by :mod:`psi.hazmat.x25519`'s
    loader), eight points per call. Its private key and public coordinates
    are the library's "BN" format: 256-bit integers as four little-endian
    64-bit words; the shared key comes back as the big-endian x-coordinate.
``gmpy2``
    Jacobian-coordinate arithmetic in gmpy2 (4-bit fixed window, one shared
    inversion per buffer). This is plain field arithmetic, not a library's
    primitive, and it is only the FALLBACK for CPUs without AVX-512 IFMA
    (about 200 times slower); it is checked against the library in the tests.

The field square roots (p = 3 mod 4: one exponentiation each, on libippcp or
gmpy2, :mod:`psi.hazmat.sm2_field`; the SWU branch's root derived from the first,
RFC 9380 appendix F.2.1.2) and inversions (Montgomery's trick, one per buffer:
both maps of a buffer share one) run over whole buffers, in gmpy2 integers. Not
constant time: the inputs are the party's own identities or the peer's
blinded points, and the scalars stay in the library on the fast path.

SM2 signatures (:func:`sign`, :func:`verify`, GB/T 32918.2) always run in a library:
libcrypto_mb where the CPU has AVX-512 IFMA, else libippcp
(:mod:`psi.hazmat.sm2_signatures`), the same bytes for the same k.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from typing import Final

import gmpy2
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes

from psi.hazmat import sm2_field, x25519
from psi.hazmat.sm2_signatures import (
    SIGNATURE_BACKENDS,
    CryptoMbSignatures,
    public_key_library,
    signature_backend,
    signer,
)

__all__ = [
    "DEFAULT_USER_ID",
    "DST",
    "POINT_SIZE",
    "SIGNATURE_BACKENDS",
    "SUITE",
    "EphemeralKey",
    "Z",
    "backend",
    "compress",
    "decompress",
    "expand_message_xmd_sm3",
    "first_bad_point",
    "generate_scalar",
    "hash_mult_buffer",
    "hash_to_curve_batch",
    "hash_to_field",
    "mult_buffer",
    "public_point",
    "sign",
    "signature_backend",
    "signature_digest",
    "verify",
]

P: Final = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A: Final = P - 3
B: Final = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N: Final = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX: Final = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY: Final = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0
#: RFC 9380 appendix H.2's choice for SM2 (tests/test_sm2.py recomputes it).
Z: Final = P - 9
SUITE: Final = "SM2_XMD:SM3_SSWU_RO_"
DST: Final = b"XMATCH-V01-CS01-with-SM2_XMD:SM3_SSWU_RO_"
POINT_SIZE: Final = 33
_L: Final = 48
_SQRT_EXP: Final = (P + 1) // 4
# SWU constants: -B/A, B/(Z*A), and Z*sqrt(-Z) (gives sqrt(g(x2)) from the root tried for g(x1)).
_MINUS_B_OVER_A: Final = (-B * pow(A, P - 2, P)) % P
_B_OVER_ZA: Final = B * pow(Z * A % P, P - 2, P) % P
_C_ROOT: Final = Z * pow(-Z % P, _SQRT_EXP, P) % P
_LANES: Final = 8
# The same constants as gmpy2 integers: mpz * mpz % mpz is about twice as fast as int's.
_MP, _MA, _MB, _MZ = (gmpy2.mpz(v) for v in (P, A, B, Z))
_M_MINUS_B_OVER_A, _M_B_OVER_ZA = gmpy2.mpz(_MINUS_B_OVER_A), gmpy2.mpz(_B_OVER_ZA)
_M_C_ROOT = gmpy2.mpz(_C_ROOT)


def expand_message_xmd_sm3(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 section 5.3.1 expand_message_xmd with H = SM3 (b_in_bytes 32, s_in_bytes 64).

    Raises:
        ValueError: ``len_in_bytes`` above 255 blocks or 65535, or a DST over 255 bytes.
    """
    ell = -(-len_in_bytes // 32)
    if ell > 255 or len_in_bytes > 65535 or len(dst) > 255:
        raise ValueError("expand_message_xmd: requested length or DST is too large")
    dst_prime = dst + bytes([len(dst)])
    b0 = _sm3(bytes(64) + msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime)
    blocks = [_sm3(b0 + b"\x01" + dst_prime)]
    b0_int = int.from_bytes(b0, "big")
    for i in range(2, ell + 1):
        mixed = (b0_int ^ int.from_bytes(blocks[-1], "big")).to_bytes(32, "big")
        blocks.append(_sm3(mixed + bytes([i]) + dst_prime))
    return b"".join(blocks)[:len_in_bytes]


def _sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def hash_to_field(msg: bytes, dst: bytes = DST, count: int = 2) -> list[int]:
    """RFC 9380 section 5.2 hash_to_field for GF(p) of SM2 (m = 1, L = 48)."""
    uniform = expand_message_xmd_sm3(msg, dst, count * _L)
    return [int.from_bytes(uniform[i * _L : (i + 1) * _L], "big") % P for i in range(count)]


def _hash_to_field_batch(msgs: Sequence[bytes], dst: bytes) -> tuple[list[int], list[int]]:
    """(u0, u1) of :func:`hash_to_field` for every message, in one batch when OpenSSL has SM3."""
    batch = sm2_field.hash_to_field_batch(msgs, dst)
    if batch is not None:
        return batch
    fields = [hash_to_field(m, dst, 2) for m in msgs]
    return [gmpy2.mpz(f[0]) for f in fields], [gmpy2.mpz(f[1]) for f in fields]


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """1/v mod P for every v (0 maps to 0, as RFC 9380's inv0), with one inversion."""
    prefix: list[int] = []
    acc = gmpy2.mpz(1)
    for v in values:
        prefix.append(acc)
        if v:
            acc = acc * v % _MP
    inv = gmpy2.powmod(acc, P - 2, _MP)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        v = values[i]
        if v:
            out[i] = inv * prefix[i] % _MP
            inv = inv * v % _MP
    return out


def _sswu_batch(us: Sequence[int]) -> list[tuple[int, int]]:
    """RFC 9380 section 6.6.2 simplified SWU for every u, inversions shared, one root each."""
    p, a, b = _MP, _MA, _MB
    zu2 = [_MZ * u * u % p for u in us]
    # Z^2 u^4 + Z u^2 = Z u^2 (Z u^2 + 1)
    inverses = _batch_inverse([t * (t + 1) % p for t in zu2])
    x1s = [_M_MINUS_B_OVER_A * (1 + t) % p if t else _M_B_OVER_ZA for t in inverses]
    gx1s = [((x * x + a) * x + b) % p for x in x1s]
    out: list[tuple[int, int]] = []
    roots = sm2_field.sqrt_candidates(gx1s)
    for u, t, x1, gx1, root in zip(us, zu2, x1s, gx1s, roots, strict=True):
        if root * root % p == gx1:
            x, y = x1, root
        else:
            # g(x2) = Z^3 u^6 g(x1) and root^2 = -g(x1), so sqrt(g(x2)) = root * Z sqrt(-Z) u^3.
            x = t * x1 % p
            y = root * _M_C_ROOT * u % p * u * u % p
        if (u ^ y) & 1:
            y = -y % p
        out.append((x, y))
    return out


def _add_batch(
    ps: Sequence[tuple[int, int]], qs: Sequence[tuple[int, int]]
) -> list[tuple[int, int] | None]:
    """Affine P + Q for every pair (short Weierstrass chord rule), slopes' inversions shared."""
    inv = _batch_inverse([(q[0] - p[0]) % P for p, q in zip(ps, qs, strict=True)])
    out: list[tuple[int, int] | None] = []
    for (x1, y1), (x2, y2), t in zip(ps, qs, inv, strict=True):
        if x1 == x2:
            if (y1 + y2) % P == 0:
                out.append(None)
                continue
            lam = (3 * x1 * x1 + A) * pow(2 * y1, P - 2, P) % _MP  # doubling: rare
        else:
            lam = (y2 - y1) * t % _MP
        x3 = (lam * lam - x1 - x2) % _MP
        out.append((x3, (lam * (x1 - x3) - y1) % _MP))
    return out


def hash_to_curve_batch(msgs: Sequence[bytes], dst: bytes = DST) -> list[tuple[int, int] | None]:
    """RFC 9380 hash_to_curve (RO) of every message: affine points (``None`` is the identity)."""
    return [None if q is None else (int(q[0]), int(q[1])) for q in _hash_to_curve(msgs, dst)]


def _hash_to_curve(msgs: Sequence[bytes], dst: bytes) -> list[tuple[int, int] | None]:
    """:func:`hash_to_curve_batch` with the coordinates left as gmpy2 integers."""
    u0, u1 = _hash_to_field_batch(msgs, dst)
    q = _sswu_batch(u0 + u1)  # both maps of every message: one shared inversion
    return _add_batch(q[: len(msgs)], q[len(msgs) :])  # cofactor 1: clear_cofactor is identity


def compress(xs: Sequence[int]) -> bytes:
    """x-coordinates as 33-byte compressed points with prefix 0x02 (see the module notes)."""
    return b"".join(b"\x02" + x.to_bytes(32, "big") for x in xs)


def _compress_raw(raw: bytes) -> bytes:
    """:func:`compress` of big-endian 32-byte x-coordinates, as numpy rows."""
    n = len(raw) // 32
    out = np.empty((n, POINT_SIZE), dtype=np.uint8)
    out[:, 0] = 2
    out[:, 1:] = np.frombuffer(raw, dtype=np.uint8).reshape(n, 32)
    return out.tobytes()


def _parse(buf: bytes) -> tuple[npt.NDArray[np.uint8], list[int], int]:
    """(rows, x values, n) of the points before the first bad prefix or x >= p; n < len(rows)
    names that bad point."""
    rows = np.frombuffer(buf, dtype=np.uint8, count=len(buf) // POINT_SIZE * POINT_SIZE)
    rows = rows.reshape(-1, POINT_SIZE)
    bad_prefix = np.flatnonzero((rows[:, 0] != 2) & (rows[:, 0] != 3))
    limit = int(bad_prefix[0]) if len(bad_prefix) else len(rows)
    raw = rows[:limit, 1:].tobytes()
    xs = [gmpy2.mpz.from_bytes(raw[at : at + 32], "big") for at in range(0, limit * 32, 32)]
    too_big = next((i for i, x in enumerate(xs) if x >= P), limit)
    return rows, xs[:too_big], too_big


def _decode(buf: bytes) -> tuple[npt.NDArray[np.uint8], list[int], list[int], int]:
    """(rows, xs, ys, bad) of :func:`decompress`: the square roots in one batch."""
    rows, xs, limit = _parse(buf)
    p, a, b = _MP, _MA, _MB
    rhs = [((x * x + a) * x + b) % p for x in xs]
    odd = (rows[: len(xs), 0] == 3).tolist()
    ys: list[int] = []
    for i, (r, root, want_odd) in enumerate(
        zip(rhs, sm2_field.sqrt_candidates(rhs), odd, strict=True)
    ):
        if root * root % p != r:
            return rows, [], [], i
        ys.append(root if (root & 1) == want_odd else p - root)
    return rows, xs, ys, (limit if limit < len(rows) else -1)


def decompress(buf: bytes) -> tuple[list[tuple[int, int]], int]:
    """Affine points of a buffer of 33-byte compressed points, or ``([], i)`` for bad point i.

    A point is bad when its prefix is not 0x02/0x03, its x is not below p, or
    x^3 + a*x + b is not a square (not on the curve).
    """
    _, xs, ys, bad = _decode(buf)
    if bad >= 0:
        return [], bad
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)], -1


def first_bad_point(buf: bytes) -> int:
    """Index of the first 33-byte compressed point in ``buf`` that is not on the curve, or -1.

    The check of :func:`decompress` without the square root (a Legendre symbol), for points
    that are compared but not multiplied.
    """
    rows, xs, limit = _parse(buf)
    legendre, p, a, b = gmpy2.legendre, _MP, _MA, _MB
    for i, x in enumerate(xs):
        rhs = ((x * x + a) * x + b) % p
        if rhs and legendre(rhs, p) != 1:
            return i
    return limit if limit < len(rows) else -1


def generate_scalar(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """A uniform secret scalar in [1, n - 1], 32 big-endian bytes (rejection sampling).

    Raises:
        ValueError: ``rng`` did not return 32 bytes.
    """
    while True:
        raw = rng(32)
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise ValueError("rng must return the number of bytes asked for")
        k = int.from_bytes(raw, "big")
        if 1 <= k < N:
            return raw


# --- scalar multiplication ------------------------------------------------------------------


class _CryptoMb:
    """``mbx_sm2_ecdh_mb8`` over whole buffers (BN format: four little-endian 64-bit words)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._ecdh = lib.mbx_sm2_ecdh_mb8
        self._ecdh.argtypes = [ctypes.c_void_p] * 6
        self._ecdh.restype = ctypes.c_uint32

    def mult(self, scalar: bytes, points: Sequence[tuple[int, int]]) -> list[int]:
        raw = self.mult_raw(scalar, _le_bytes([p[0] for p in points]), [p[1] for p in points])
        return [int.from_bytes(raw[at : at + 32], "big") for at in range(0, len(raw), 32)]

    def mult_raw(self, scalar: bytes, x_le: bytes, ys: Sequence[int]) -> bytes:
        """Big-endian x(k*P) of every point given as little-endian x words and y values."""
        n = len(ys)
        if n == 0:
            return b""
        calls = -(-n // _LANES)
        spare = calls * _LANES - n  # spare lanes: the generator
        xs = np.frombuffer(x_le + _GX_LE * spare, dtype=np.uint8)
        ys_words = np.frombuffer(_le_bytes(ys) + _GY_LE * spare, dtype=np.uint8)
        out = np.empty(calls * _LANES * 32, dtype=np.uint8)
        key = ctypes.create_string_buffer(int.from_bytes(scalar, "big").to_bytes(32, "little"), 32)
        stride = np.arange(calls * _LANES, dtype=np.uint64) * np.uint64(32)
        x_ptrs, y_ptrs = (
            stride + np.uint64(xs.ctypes.data),
            stride + np.uint64(ys_words.ctypes.data),
        )
        out_ptrs = stride + np.uint64(out.ctypes.data)
        keys = (ctypes.c_void_p * _LANES)(*([ctypes.addressof(key)] * _LANES))
        step = _LANES * 8
        ecdh, out_at = self._ecdh, out_ptrs.ctypes.data
        x_at, y_at = x_ptrs.ctypes.data, y_ptrs.ctypes.data
        try:
            for at in range(0, calls * step, step):
                status = ecdh(out_at + at, keys, x_at + at, y_at + at, None, None)
                if status:
                    raise RuntimeError(f"mbx_sm2_ecdh_mb8 returned status {status:#x}")
        finally:
            ctypes.memset(key, 0, 32)
        return out[: n * 32].tobytes()


def _le_bytes(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(32, "little") for v in values)


_GX_LE: Final = GX.to_bytes(32, "little")
_GY_LE: Final = GY.to_bytes(32, "little")


def _jacobian_double(x: int, y: int, z: int) -> tuple[int, int, int]:
    # dbl-2001-b (a = -3), explicit-formulas database.
    if z == 0 or y == 0:
        return 1, 1, 0
    delta = z * z % P
    gamma = y * y % P
    beta = x * gamma % P
    alpha = 3 * (x - delta) * (x + delta) % P
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y + z) ** 2 - gamma - delta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return x3, y3, z3


def _jacobian_add(p1: tuple[int, int, int], p2: tuple[int, int, int]) -> tuple[int, int, int]:
    # add-2007-bl, explicit-formulas database.
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    z1z1, z2z2 = z1 * z1 % P, z2 * z2 % P
    u1, u2 = x1 * z2z2 % P, x2 * z1z1 % P
    s1, s2 = y1 * z2 % P * z2z2 % P, y2 * z1 % P * z1z1 % P
    h, r = (u2 - u1) % P, (s2 - s1) % P
    if h == 0:
        return _jacobian_double(x1, y1, z1) if r == 0 else (1, 1, 0)
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    y3 = (r * (v - x3) - s1 * hhh) % P
    return x3, y3, z1 * z2 % P * h % P


def _gmpy2_mult(scalar: bytes, points: Sequence[tuple[int, int]]) -> list[int]:
    """Fallback: x(k*P) for every point, 4-bit fixed window, one shared inversion."""
    k = int.from_bytes(scalar, "big")
    digits = [(k >> (4 * i)) & 0xF for i in range(63, -1, -1)]
    results: list[tuple[int, int, int]] = []
    for px, py in points:
        base = (gmpy2.mpz(px), gmpy2.mpz(py), gmpy2.mpz(1))
        table = [(1, 1, 0), base]
        for _ in range(14):
            table.append(_jacobian_add(table[-1], base))
        acc: tuple[int, int, int] = (1, 1, 0)
        for d in digits:
            for _ in range(4):
                acc = _jacobian_double(*acc)
            if d:
                acc = _jacobian_add(acc, table[d])
        results.append(acc)
    inv = _batch_inverse([z for _, _, z in results])
    return [int(x * t % P * t % P) for (x, _, _), t in zip(results, inv, strict=True)]


_mb: _CryptoMb | None = None
_mb_failed = False


def _crypto_mb() -> _CryptoMb | None:
    global _mb, _mb_failed
    if _mb is None and not _mb_failed:
        lib = x25519.crypto_mb_library()
        if lib is None:
            _mb_failed = True
        else:
            _mb = _CryptoMb(lib)
    return _mb


def backend() -> str:
    """``crypto-mb`` when libcrypto_mb serves this process (per :mod:`psi.hazmat.x25519`), else
    ``gmpy2``."""
    return "crypto-mb" if _crypto_mb() is not None else "gmpy2"


def mult_points(
    scalar: bytes, points: Sequence[tuple[int, int]], *, backend: str | None = None
) -> list[int]:
    """x(k*P) for every affine point, on the configured or the named backend.

    Raises:
        ValueError: unknown backend name.
        OSError: ``backend="crypto-mb"`` and libcrypto_mb cannot be used here.
    """
    if backend == "gmpy2":
        return _gmpy2_mult(scalar, points)
    if backend not in (None, "crypto-mb"):
        raise ValueError(f"unknown SM2 backend {backend!r}")
    mb = _crypto_mb()
    if mb is None:
        if backend == "crypto-mb":
            raise OSError("libcrypto_mb cannot be used in this process")
        return _gmpy2_mult(scalar, points)
    return mb.mult(scalar, points)


def mult_buffer(scalar: bytes, buf: bytes) -> tuple[bytes, int]:
    """k * P for each 33-byte compressed point in ``buf``, compressed (prefix 0x02).

    Returns ``(products, -1)`` or ``(b"", i)`` when point ``i`` is bad. Top-level, picklable.
    """
    rows, xs, ys, bad = _decode(buf)
    if bad >= 0:
        return b"", bad
    mb = _crypto_mb()
    if mb is None:
        return compress(_gmpy2_mult(scalar, list(zip(xs, ys, strict=True)))), -1
    # The library's x words are the received big-endian x bytes reversed: no integers.
    return _compress_raw(mb.mult_raw(scalar, rows[:, :0:-1].tobytes(), ys)), -1


def hash_mult_buffer(scalar: bytes, buf: bytes) -> tuple[bytes, int]:
    """k * H(x) for each 16-byte encoded identity in ``buf``, compressed. Top-level, picklable."""
    msgs = [buf[i : i + 16] for i in range(0, len(buf) - len(buf) % 16, 16)]
    points = _hash_to_curve(msgs, DST)
    for i, point in enumerate(points):
        if point is None:  # H(x) = identity: probability about 2^-256
            return b"", i
    present = [p for p in points if p is not None]
    mb = _crypto_mb()
    if mb is None:
        return compress(_gmpy2_mult(scalar, present)), -1
    x_le = _le_bytes([p[0] for p in present])
    return _compress_raw(mb.mult_raw(scalar, x_le, [p[1] for p in present])), -1


class EphemeralKey:
    """An ephemeral SM2 key pair for a round key agreement (the ``sm4-ecb-v1`` PRF).

    The public key travels compressed with prefix 0x02 (its x-coordinate, as
    ``mbx_sm2_ecdh_mb8`` gives it); :meth:`exchange` returns the 32-byte
    big-endian x-coordinate of d * Q, the same for either representative of Q.
    """

    def __init__(self, scalar: bytes) -> None:
        if len(scalar) != 32 or not 1 <= int.from_bytes(scalar, "big") < N:
            raise ValueError("an SM2 private key is 32 bytes in [1, n - 1]")
        self._scalar = scalar
        self._public = compress(mult_points(scalar, [(GX, GY)]))

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> EphemeralKey:
        """A fresh key pair from ``rng``."""
        return cls(generate_scalar(rng))

    def public_bytes(self) -> bytes:
        """The 33-byte compressed public key."""
        return self._public

    def exchange(self, peer: bytes) -> bytes:
        """x(d * Q) for the peer's 33-byte compressed public key Q.

        Raises:
            ValueError: ``peer`` is not a compressed point of the curve.
        """
        if len(peer) != POINT_SIZE:
            raise ValueError("peer key is not a 33-byte compressed SM2 point")
        shared, bad = mult_buffer(self._scalar, peer)
        if bad >= 0:
            raise ValueError("peer key is not a point of the SM2 curve")
        return shared[1:]


# --- SM2 signatures (GB/T 32918.2), for the GM profile of protocol logs ---------------------

#: The default user ID of GB/T 32918 / GM/T 0009 ("1234567812345678").
DEFAULT_USER_ID: Final = b"1234567812345678"
# ENTL, the user ID's length in bits, is two bytes.
_MAX_USER_ID: Final = 0xFFFF // 8


def _check_user_id(user_id: bytes) -> None:
    if len(user_id) > _MAX_USER_ID:
        raise ValueError(f"an SM2 user ID is at most {_MAX_USER_ID} bytes (ENTL is 16 bits)")


def signature_digest(
    public: tuple[int, int], msg: bytes, user_id: bytes = DEFAULT_USER_ID
) -> bytes:
    """e = SM3(Z || M), Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA) (GB/T 32918.2
    section 6.1): what the ``ippcp`` backend signs; libcrypto_mb forms the same inside.

    Raises:
        ValueError: the user ID is over 8191 bytes.
    """
    _check_user_id(user_id)
    fields = b"".join(v.to_bytes(32, "big") for v in (A, B, GX, GY, *public))
    z = _sm3((8 * len(user_id)).to_bytes(2, "big") + user_id + fields)
    return _sm3(z + msg)


def public_point(d: int) -> tuple[int, int]:
    """d * G in affine coordinates, d in [1, n - 1]: the SM2 public key of private key ``d``
    (one point, at key load and per signature). libippcp's ``ippsGFpECPublicKey`` where it
    loads, else the fallback's Jacobian arithmetic (libcrypto_mb returns x only)."""
    ipp = public_key_library()
    if ipp is not None:
        return ipp.public_key(d)
    return _full_mult(d, (GX, GY))


def _full_mult(k: int, point: tuple[int, int]) -> tuple[int, int]:
    digits = [(k >> (4 * i)) & 0xF for i in range(63, -1, -1)]
    base = (point[0], point[1], 1)
    table = [(1, 1, 0), base]
    for _ in range(14):
        table.append(_jacobian_add(table[-1], base))
    acc: tuple[int, int, int] = (1, 1, 0)
    for digit in digits:
        for _ in range(4):
            acc = _jacobian_double(*acc)
        if digit:
            acc = _jacobian_add(acc, table[digit])
    x, y, z = acc
    zi = pow(z, P - 2, P)
    return x * zi * zi % P, y * zi * zi * zi % P


def sign(
    d: int,
    msg: bytes,
    user_id: bytes = DEFAULT_USER_ID,
    *,
    k: int | None = None,
    backend: str | None = None,
) -> bytes:
    """SM2 signature r || s (64 bytes, big-endian) of ``msg`` under private key ``d``.

    ``k`` (the per-signature secret) is drawn uniformly from [1, n - 1] unless given (the
    tests give the published example's). ``backend`` (one of :data:`SIGNATURE_BACKENDS`)
    forces a library; by default :func:`signature_backend` picks.

    Raises:
        OSError: no SM2 signature library (or not the one named) can be used here.
        ValueError: ``d`` or ``k`` out of range, user ID over 8191 bytes, unknown backend.
    """
    if not 1 <= d < N - 1:
        raise ValueError("SM2 private key out of range")
    _check_user_id(user_id)
    impl = signer(backend)
    nonce = int.from_bytes(generate_scalar(), "big") if k is None else k
    if not 1 <= nonce < N:
        raise ValueError("SM2 signature nonce out of range")
    public = public_point(d)
    if isinstance(impl, CryptoMbSignatures):
        r, s = impl.sign(d, public, msg, user_id, nonce)
    else:
        r, s = impl.sign(signature_digest(public, msg, user_id), d, nonce)
    return r + s


def verify(
    public: tuple[int, int],
    msg: bytes,
    signature: bytes,
    user_id: bytes = DEFAULT_USER_ID,
    *,
    backend: str | None = None,
) -> bool:
    """Whether ``signature`` (r || s) is ``public``'s SM2 signature of ``msg``.

    Raises:
        OSError: no SM2 signature library (or not the one named) can be used here.
        ValueError: user ID over 8191 bytes, unknown backend.
    """
    _check_user_id(user_id)
    x, y = public
    if len(signature) != 64 or not (0 <= x < P and 0 <= y < P):
        return False
    if (y * y - x * x * x - A * x - B) % P:
        return False  # cofactor 1: on the curve is in the group (ippsGFpECVerifySM2 never checks)
    impl = signer(backend)
    r, s = signature[:32], signature[32:]
    if isinstance(impl, CryptoMbSignatures):
        return impl.verify(public, msg, user_id, r, s)
    return impl.verify(signature_digest(public, msg, user_id), public, r, s)
