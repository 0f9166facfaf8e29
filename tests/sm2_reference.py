"""A straightforward SM2_XMD:SM3_SSWU_RO_ written from RFC 9380's pseudocode, for the tests.

Independent of psi.hazmat.sm2's batched path: Python ``pow`` only, per element,
hashlib's SM3 (OpenSSL) instead of cryptography's, the sqrt of section 4 and the
straight-line simplified SWU of section 6.6.2, affine addition, and a double-and-add
scalar multiplication. Slow; for vectors and cross-checks only.
"""

from __future__ import annotations

import hashlib

P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = (P - 3) % P
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
Z = -9 % P

Point = tuple[int, int] | None


def sm3(data: bytes) -> bytes:
    return hashlib.new("sm3", data).digest()


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    # RFC 9380 section 5.3.1, step by step.
    b_in_bytes, s_in_bytes = 32, 64
    ell = (len_in_bytes + b_in_bytes - 1) // b_in_bytes
    assert ell <= 255 and len_in_bytes <= 65535 and len(dst) <= 255
    dst_prime = dst + len(dst).to_bytes(1, "big")
    z_pad = bytes(s_in_bytes)
    l_i_b_str = len_in_bytes.to_bytes(2, "big")
    msg_prime = z_pad + msg + l_i_b_str + (0).to_bytes(1, "big") + dst_prime
    b = [sm3(msg_prime)]
    b.append(sm3(b[0] + (1).to_bytes(1, "big") + dst_prime))
    for i in range(2, ell + 1):
        strxor = bytes(x ^ y for x, y in zip(b[0], b[i - 1], strict=True))
        b.append(sm3(strxor + i.to_bytes(1, "big") + dst_prime))
    return b"".join(b[1:])[:len_in_bytes]


def hash_to_field(msg: bytes, dst: bytes, count: int) -> list[int]:
    big_l = 48  # ceil((ceil(log2(p)) + k) / 8), k = 128
    uniform = expand_message_xmd(msg, dst, count * big_l)
    return [int.from_bytes(uniform[big_l * i : big_l * (i + 1)], "big") % P for i in range(count)]


def inv0(x: int) -> int:
    return pow(x, P - 2, P)


def is_square(x: int) -> bool:
    return pow(x, (P - 1) // 2, P) in (0, 1)


def sqrt(x: int) -> int:
    return pow(x, (P + 1) // 4, P)


def sgn0(x: int) -> int:
    return x % 2


def map_to_curve_simple_swu(u: int) -> tuple[int, int]:
    # RFC 9380 section 6.6.2, the straight-line description.
    tv1 = inv0((Z * Z * pow(u, 4, P) + Z * u * u) % P)
    x1 = (-B * inv0(A)) * (1 + tv1) % P
    if tv1 == 0:
        x1 = B * inv0(Z * A) % P
    gx1 = (pow(x1, 3, P) + A * x1 + B) % P
    x2 = Z * u * u * x1 % P
    gx2 = (pow(x2, 3, P) + A * x2 + B) % P
    if is_square(gx1):
        x, y = x1, sqrt(gx1)
    else:
        x, y = x2, sqrt(gx2)
    if sgn0(u) != sgn0(y):
        y = -y % P
    return x, y


def add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    doubling = (3 * x1 * x1 + A) * inv0(2 * y1) % P
    lam = doubling if p1 == p2 else (y2 - y1) * inv0(x2 - x1) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def hash_to_curve(
    msg: bytes, dst: bytes
) -> tuple[list[int], tuple[int, int], tuple[int, int], Point]:
    """(u values, Q0, Q1, P) of RFC 9380 section 3 hash_to_curve (h_eff = 1)."""
    u = hash_to_field(msg, dst, 2)
    q0, q1 = map_to_curve_simple_swu(u[0]), map_to_curve_simple_swu(u[1])
    return u, q0, q1, add(q0, q1)


def mult(k: int, point: Point) -> Point:
    result: Point = None
    addend = point
    while k:
        if k & 1:
            result = add(result, addend)
        addend = add(addend, addend)
        k >>= 1
    return result
