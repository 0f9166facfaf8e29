"""The common part of both ecdh roles: suites, scalars, the group-work dispatch, set helpers.

Private to :mod:`psi.ecdh`, which re-exports the public names. The group work
is submitted to the injected executor as top-level, picklable functions chosen
by the round's suite: ``psi.hazmat.sm2`` for ``SM2_XMD:SM3_SSWU_RO_``, else
``psi.hazmat.x25519`` with the RFC 9380 hash of the suite (in the worker).
"""

from __future__ import annotations

import concurrent.futures
import hmac
import math
import struct
from collections.abc import Callable
from typing import NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from psi.context import RoundContext
from psi.errors import AlreadyUsed, ProtocolError
from psi.hazmat import hash_to_curve, sm2, x25519
from psi.messages import PointChunk, Stage
from psi.transcript import Transcript

_U64 = struct.Struct(">Q")
_PAD_KIND = 0xFF  # first byte of padding blocks; never a real encoding's kind
#: Every suite a round may name: the X25519 ones and the SM2 one (GM/T, psi.hazmat.sm2).
SUITES: tuple[str, ...] = (*hash_to_curve.SUITES, sm2.SUITE)


def _generate_scalar(context: RoundContext, rng: Callable[[int], bytes]) -> bytes:
    """Suite dispatch: an SM2 scalar in [1, n-1], or 32 X25519 bytes."""
    if context.param("suite", hash_to_curve.DEFAULT_SUITE) == sm2.SUITE:
        return sm2.generate_scalar(rng)
    return x25519.generate_scalar(rng)


def size_class(n: int, *, minimum: int = 1024, growth: float = 1.25) -> int:
    """Smallest class >= n among ``minimum``, then ceil(previous * growth).

    Raises:
        ValueError: negative ``n``, ``minimum`` < 1 or ``growth`` <= 1.
    """
    if n < 0 or minimum < 1 or growth <= 1:
        raise ValueError("size_class needs n >= 0, minimum >= 1, growth > 1")
    size = minimum
    while size < n:
        size = math.ceil(size * growth)
    return size


def ec_ready() -> bool:
    """Top-level (picklable), for a worker's warm-up: the group code is imported and up."""
    return x25519.POINT_SIZE == 32


#: The environment variable that chooses the X25519 backend (wins over configuration).
X25519_BACKEND_ENV = x25519.ENV_VAR


def use_x25519_backend(
    requested: str | None = None,
    *,
    on_fallback: Callable[[str], None] | None = None,
    quiet: bool = False,
) -> str:
    """Choose this process's X25519 backend; returns ``crypto-mb`` or ``openssl``.

    ``requested``: ``auto`` (default), ``crypto-mb`` or ``openssl``; the
    environment variable ``XMATCH_X25519_BACKEND`` wins over it. When
    libcrypto_mb cannot be used, ``on_fallback`` gets one line saying why
    (else :func:`warnings.warn`) and OpenSSL is used (docs/psi.md, "X25519
    backends"); ``quiet`` drops that line (a pool worker, whose owner said it).

    Raises:
        ValueError: an unknown backend name.
    """
    return x25519.configure(requested, on_fallback=on_fallback, quiet=quiet)


def distinct_identities(identities: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The distinct rows of (n, 16) encoded identities, sorted (``np.unique(axis=0)``, faster).

    Raises:
        ValueError: ``identities`` is not an (n, 16) uint8 array.
    """
    rows = _check_identities(identities)
    if len(rows) == 0:
        return rows
    words = rows.view(">u8").reshape(-1, 2).astype(np.uint64)
    order = np.lexsort((words[:, 1], words[:, 0]))
    ordered = words[order]
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    return rows[order[keep]]


def _strictly_ascending(rows: npt.NDArray[np.uint8]) -> bool:
    """Rows of (n, 16) uint8 in strictly ascending byte order (as distinct_identities sorts)."""
    if len(rows) < 2:
        return True
    words = rows.view(">u8").reshape(-1, 2)
    hi, lo = words[:, 0], words[:, 1]
    greater = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))
    return bool(greater.all())


def _check_identities(identities: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    arr = np.asarray(identities)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 16:
        raise ValueError("identities must be an (n, 16) uint8 array from encode_identities")
    return np.ascontiguousarray(arr)


#: Bytes of the key of :func:`bucket_of` (AES-128).
BUCKET_KEY_SIZE = 16


def bucket_of(identities: npt.NDArray[np.uint8], key: bytes, buckets: int) -> npt.NDArray[np.int64]:
    """The bucket, in ``0 .. buckets - 1``, of each encoded identity under a secret ``key``.

    AES-128 of the 16-byte encoding, one call over the whole buffer; the
    first 8 bytes of each block, as an integer, modulo ``buckets``. Equal
    identities share a bucket, so a set deduplicated bucket by bucket is
    deduplicated as a whole. A responder draws ``key`` per round and keeps
    it: the requester cannot compute which bucket an identity falls in.

    Raises:
        ValueError: ``identities`` is not (n, 16) uint8, ``key`` is not
            :data:`BUCKET_KEY_SIZE` bytes, or ``buckets`` < 1.
    """
    ids = _check_identities(identities)
    if len(key) != BUCKET_KEY_SIZE:
        raise ValueError(f"the bucket key must be {BUCKET_KEY_SIZE} bytes")
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = encryptor.update(ids.tobytes()) + encryptor.finalize()
    head = np.frombuffer(blocks, dtype=np.uint8).reshape(-1, 16)[:, :8]
    words = np.ascontiguousarray(head).view(">u8").reshape(-1).astype(np.uint64)
    return (words % np.uint64(buckets)).astype(np.int64)


class _EcdhRole:
    def __init__(
        self,
        context: RoundContext,
        scalar: bytes,
        executor: concurrent.futures.Executor | None,
    ) -> None:
        if context.protocol != "ecdh":
            raise ProtocolError(f"round protocol is {context.protocol}, not ecdh")
        suite = context.param("suite", hash_to_curve.DEFAULT_SUITE)
        if suite not in SUITES:
            raise ProtocolError(f"unknown ecdh suite {suite!r}")
        self._context = context
        self._suite = suite
        # Suite dispatch: SM2 points are 33-byte compressed points (psi.hazmat.sm2).
        self._sm2 = suite == sm2.SUITE
        self._width = sm2.POINT_SIZE if self._sm2 else x25519.POINT_SIZE
        self._scalar: bytes | None = scalar
        self._executor = executor
        self._transcript = Transcript(context)
        self._finished = False

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds round secrets and cannot be pickled")

    @property
    def context(self) -> RoundContext:
        """The round this object serves."""
        return self._context

    def _check_open(self) -> None:
        if self._finished:
            raise AlreadyUsed(f"{type(self).__name__} for this round has finished")

    def _check_chunk(self, chunk: PointChunk, stage: Stage, seq: int) -> None:
        if not isinstance(chunk, PointChunk):
            raise ProtocolError("expected a PointChunk")
        if chunk.stage != stage:
            raise ProtocolError(f"expected a {stage} chunk, got a {chunk.stage} chunk")
        if not hmac.compare_digest(chunk.round_id, self._context.round_id):
            raise ProtocolError(f"{stage} chunk belongs to another round")
        if chunk.seq != seq:
            raise ProtocolError(f"{stage} chunk sequence number {chunk.seq}, expected {seq}")
        if chunk.width != self._width:
            raise ProtocolError(
                f"{stage} chunk carries {chunk.width}-byte points; suite {self._suite} "
                f"uses {self._width}"
            )

    def _mult(self, points: npt.NDArray[np.uint8], what: str) -> npt.NDArray[np.uint8]:
        if self._scalar is None:
            raise AlreadyUsed("the round scalar is gone")
        if self._sm2:
            out, bad = x25519.split_map(
                sm2.mult_buffer, self._scalar, points.tobytes(), sm2.POINT_SIZE, self._executor
            )
            if bad >= 0:
                raise ProtocolError(f"{what}: point {bad} is not a point of the SM2 curve")
            return np.frombuffer(out, dtype=np.uint8).reshape(-1, sm2.POINT_SIZE).copy()
        return x25519.scalar_mult(self._scalar, points, executor=self._executor, what=what)

    def _hash_mult(self, identities: npt.NDArray[np.uint8], what: str) -> npt.NDArray[np.uint8]:
        """``scalar * H(x)`` for (n, 16) identities; hash and multiply run in the same worker.

        Why one task: hashing in this process while the workers multiply would leave it
        the serial part of every chunk (about a tenth of the work at multi-buffer speed).
        """
        return self._hash_mult_started(identities, what)()

    def _hash_mult_started(
        self, identities: npt.NDArray[np.uint8], what: str
    ) -> Callable[[], npt.NDArray[np.uint8]]:
        """:meth:`_hash_mult` submitted to the executor now; call the result to wait for it."""
        if self._scalar is None:
            raise AlreadyUsed("the round scalar is gone")
        rows = np.ascontiguousarray(identities)
        if self._sm2:
            join = x25519.split_submit(
                sm2.hash_mult_buffer, self._scalar, rows.tobytes(), 16, self._executor
            )
        else:
            join = x25519.split_submit(
                _hash_mult_buffer, (self._suite, self._scalar), rows.tobytes(), 16, self._executor
            )
        width = self._width

        def result() -> npt.NDArray[np.uint8]:
            out, bad = join()
            if bad >= 0:
                raise ProtocolError(f"{what}: point {bad} is a low-order point")
            return np.frombuffer(out, dtype=np.uint8).reshape(-1, width).copy()

        return result


def _hash_mult_buffer(suite_scalar: tuple[str, bytes], buf: bytes) -> tuple[bytes, int]:
    """Top-level (picklable): X25519(scalar, H(x)) for each 16-byte x in ``buf``."""
    suite, scalar = suite_scalar
    rows = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 16)
    hashed = hash_to_curve.hash_to_u(suite, rows)
    return x25519.mult_buffer(scalar, hashed.tobytes())
