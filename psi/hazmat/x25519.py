"""DANGER: raw X25519 scalar multiplication over batches of u-coordinates.

Nothing here checks rounds, order or transcripts; use :mod:`psi.ecdh`.

``X25519(k, u)`` (RFC 7748, section 5) clamps ``k`` and computes the
u-coordinate of k*P on Curve25519 or its twist. Clamped scalars are
multiples of 8, and scalar multiplication commutes, so
``X25519(a, X25519(b, u)) == X25519(b, X25519(a, u))`` for every u whose
result is not zero; that is the commutative blinding of ECDH-PSI. A zero
result means u was a low-order point; the batch functions report its
position instead of returning it.

With an executor, a batch is split into slices and a top-level, picklable
function is mapped over them; each worker gets the scalar bytes and a
contiguous buffer and returns bytes. Scalars go only to the executor the
caller provides (its own worker pool).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from psi.errors import ProtocolError

__all__ = [
    "POINT_SIZE",
    "generate_scalar",
    "mult_buffer",
    "scalar_mult",
    "split_map",
]

POINT_SIZE = 32


def generate_scalar(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """32 random bytes from ``rng`` (X25519 clamps them on use).

    Raises:
        ValueError: ``rng`` did not return 32 bytes.
    """
    scalar = rng(32)
    if not isinstance(scalar, bytes) or len(scalar) != 32:
        raise ValueError("rng must return the number of bytes asked for")
    return scalar


def mult_buffer(scalar: bytes, buf: bytes) -> tuple[bytes, int]:
    """X25519(scalar, u) for each 32-byte u in ``buf``.

    Returns ``(products, -1)``, or ``(b"", i)`` when u number ``i`` is a
    low-order point. Top-level and picklable, for process pools.
    """
    key = X25519PrivateKey.from_private_bytes(scalar)
    from_public = X25519PublicKey.from_public_bytes
    out = bytearray(len(buf))
    zero = bytes(POINT_SIZE)
    for i in range(len(buf) // POINT_SIZE):
        start = i * POINT_SIZE
        try:
            product = key.exchange(from_public(buf[start : start + POINT_SIZE]))
        except ValueError:
            return b"", i
        if product == zero:
            return b"", i
        out[start : start + POINT_SIZE] = product
    return bytes(out), -1


def split_map(
    fn: Callable[[bytes, bytes], tuple[bytes, int]],
    first: bytes,
    buf: bytes,
    item: int,
    executor: concurrent.futures.Executor | None,
    parts: int | None = None,
) -> tuple[bytes, int]:
    """Run ``fn(first, slice)`` over slices of ``buf`` (``item`` bytes per element).

    Returns the joined outputs and -1, or ``(b"", global index)`` of the
    first element a slice reported as bad.
    """
    n = len(buf) // item
    if executor is None or n < 64:
        return fn(first, buf)
    if parts is None:
        parts = int(getattr(executor, "_max_workers", os.cpu_count() or 1))
    parts = max(1, min(parts, n // 32))
    bounds = [n * k // parts for k in range(parts + 1)]
    futures = [
        executor.submit(fn, first, buf[bounds[k] * item : bounds[k + 1] * item])
        for k in range(parts)
    ]
    outs: list[bytes] = []
    for k, future in enumerate(futures):
        out, bad = future.result()
        if bad >= 0:
            for other in futures[k + 1 :]:
                other.cancel()
            return b"", bounds[k] + bad
        outs.append(out)
    return b"".join(outs), -1


def scalar_mult(
    scalar: bytes,
    points: npt.NDArray[np.uint8],
    *,
    executor: concurrent.futures.Executor | None = None,
    what: str = "points",
) -> npt.NDArray[np.uint8]:
    """X25519(scalar, u) for each row of an (n, 32) uint8 array.

    Raises:
        ProtocolError: a row is a low-order point; the message names
            ``what`` and the row position, never the value.
        ValueError: ``points`` is not an (n, 32) uint8 array, or the scalar
            is not 32 bytes.
    """
    arr = np.asarray(points)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != POINT_SIZE:
        raise ValueError("points must be an (n, 32) uint8 array")
    if not isinstance(scalar, bytes) or len(scalar) != 32:
        raise ValueError("scalar must be 32 bytes")
    out, bad = split_map(mult_buffer, scalar, arr.tobytes(), POINT_SIZE, executor)
    if bad >= 0:
        raise ProtocolError(f"{what}: point {bad} is a low-order point")
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, POINT_SIZE).copy()
