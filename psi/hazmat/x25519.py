"""DANGER: raw X25519 scalar multiplication over batches of u-coordinates.

Nothing here checks rounds, order or transcripts; use :mod:`psi.ecdh`.

``X25519(k, u)`` (RFC 7748, section 5) clamps ``k`` and computes the
u-coordinate of k*P on Curve25519 or its twist. Clamped scalars are
multiples of 8, and scalar multiplication commutes, so
``X25519(a, X25519(b, u)) == X25519(b, X25519(a, u))`` for every u whose
result is not zero; that is the commutative blinding of ECDH-PSI. A zero
result means u was a low-order point; the batch functions report its
position instead of returning it.

Two backends compute the same bytes:

``crypto-mb``
    Intel's multi-buffer ``mbx_x25519_mb8`` from ``libcrypto_mb`` (PyPI
    ``ipp-crypto``), eight multiplications per call on AVX-512 IFMA, through
    ctypes. The library and its Intel runtime (PyPI ``intel-cmplr-lib-rt``:
    libintlc, libimf, libirng, libsvml, loaded first with ``RTLD_GLOBAL``)
    are looked up in the environment's ``lib`` folder, then by the system
    loader. Used when ``mbx_is_crypto_mb_applicable`` accepts the CPU.
``openssl``
    ``cryptography``'s X25519, one call per point.

:func:`configure` picks one for the process: the environment variable
:data:`ENV_VAR` if set, else the name passed (a node.toml or
coordinator.toml key), else ``auto`` (crypto-mb where it loads and the CPU
supports it). A library that is missing or does not load gives one warning
line (through the caller's ``on_fallback``, else :func:`warnings.warn`) and
``openssl``; so does a CPU without AVX-512 IFMA when ``crypto-mb`` was asked
for. Under ``auto`` such a CPU is no fault: ``openssl`` is the documented
choice there, so nothing is said. Nothing raises.

With an executor, a batch is split into slices and a top-level, picklable
function is mapped over them; each worker gets the scalar bytes and a
contiguous buffer and returns bytes. Scalars go only to the executor the
caller provides (its own worker pool). Workers made by
:func:`workers.worker_pool` are given the backend the owner resolved.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Final, Literal, TypeVar, get_args

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from psi.errors import ProtocolError

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "POINT_SIZE",
    "Backend",
    "backend",
    "configure",
    "crypto_mb_library",
    "first_low_order",
    "generate_scalar",
    "load_crypto_mb_library",
    "mult_buffer",
    "scalar_mult",
    "split_map",
    "split_submit",
]

POINT_SIZE = 32

Backend = Literal["auto", "crypto-mb", "openssl"]
BACKENDS: Final[tuple[str, ...]] = get_args(Backend)
#: Environment variable that forces a backend; it wins over the configuration file.
ENV_VAR: Final = "XMATCH_X25519_BACKEND"

# libcrypto_mb needs these Intel runtime libraries, resolvable before it loads.
_RUNTIME_LIBS: Final = ("libintlc.so.5", "libimf.so", "libirng.so", "libsvml.so")
_CRYPTO_MB: Final = "libcrypto_mb.so"
_MBX_STATUS_LOW_ORDER: Final = 4
_LANES: Final = 8
_BASE_U: Final = (9).to_bytes(32, "little")  # fills the last call's spare lanes
_P: Final = 2**255 - 19
# Every u whose X25519 product is zero for every scalar (the points of order 1, 2, 4 and 8 on
# the curve and its twist), reduced mod p, with the aliases below 2^255 (p, p + 1).
_LOW_ORDER_U: Final = (
    0,
    1,
    _P - 1,
    0x00B8495F16056286FDB1329CEB8D09DA6AC49FF1FAE35616AEB8413B7C7AEBE0,
    0x57119FD0DD4E22D8868E1C58C45C44045BEF839C55B1D0B1248C50A3BC959C5F,
    _P,
    _P + 1,
)
_LOW_ORDER_WORDS: Final = np.frombuffer(
    b"".join(u.to_bytes(32, "little") for u in _LOW_ORDER_U), dtype="<u8"
).reshape(-1, 4)


def first_low_order(points: npt.NDArray[np.uint8]) -> int:
    """Index of the first row of (n, 32) u-coordinates that is a low-order point, or -1.

    The top bit is ignored, as X25519 does (RFC 7748 section 5). Why here and not from the
    result: ``mbx_x25519_mb8`` returns a non-zero product for u = p - 1, where RFC 7748 and
    OpenSSL give zero, so the multi-buffer backend checks its inputs first.
    """
    words = np.ascontiguousarray(points).view("<u8").reshape(-1, 4).copy()
    words[:, 3] &= np.uint64(0x7FFF_FFFF_FFFF_FFFF)
    hits = np.zeros(len(words), dtype=bool)
    for low in _LOW_ORDER_WORDS:
        hits |= (words == low).all(axis=1)
    found = np.flatnonzero(hits)
    return int(found[0]) if len(found) else -1


class _CryptoMb:
    """``mbx_x25519_mb8`` over whole buffers: pointer arrays built once per buffer with numpy."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib  # also serves psi.hazmat.sm2 (mbx_sm2_ecdh_mb8)
        self._mb8 = lib.mbx_x25519_mb8
        self._mb8.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self._mb8.restype = ctypes.c_uint32

    def mult(self, scalar: bytes, buf: bytes) -> tuple[bytes, int]:
        n = len(buf) // POINT_SIZE
        if n == 0:
            return b"", -1
        calls = -(-n // _LANES)
        src = np.empty((calls * _LANES, POINT_SIZE), dtype=np.uint8)
        src[:n] = np.frombuffer(buf, dtype=np.uint8, count=n * POINT_SIZE).reshape(n, POINT_SIZE)
        src[n:] = np.frombuffer(_BASE_U, dtype=np.uint8)
        low = first_low_order(src[:n])
        if low >= 0:
            return b"", low
        out = np.empty_like(src)
        stride = np.arange(calls * _LANES, dtype=np.uint64) * np.uint64(POINT_SIZE)
        src_ptrs = stride + np.uint64(src.ctypes.data)
        out_ptrs = stride + np.uint64(out.ctypes.data)
        key = ctypes.create_string_buffer(scalar, POINT_SIZE)
        keys = (ctypes.c_void_p * _LANES)(*([ctypes.addressof(key)] * _LANES))
        mb8, src_at, out_at = self._mb8, src_ptrs.ctypes.data, out_ptrs.ctypes.data
        step = _LANES * 8  # bytes of eight pointers
        try:
            for call in range(calls):
                status = mb8(out_at + call * step, keys, src_at + call * step)
                if status:
                    return b"", self._bad_lane(status, call, n)
        finally:
            ctypes.memset(key, 0, POINT_SIZE)
        # The library flags low-order inputs itself; checking for zero rows too costs little.
        zero = np.flatnonzero(~out[:n].any(axis=1))
        if len(zero):
            return b"", int(zero[0])
        return out[:n].tobytes(), -1

    @staticmethod
    def _bad_lane(status: int, call: int, n: int) -> int:
        for lane in range(_LANES):
            code = (status >> (4 * lane)) & 0xF
            if code == 0:
                continue
            if code != _MBX_STATUS_LOW_ORDER:
                raise RuntimeError(f"mbx_x25519_mb8 failed with status {code:#x}")
            index = call * _LANES + lane
            if index < n:
                return index
        raise RuntimeError(f"mbx_x25519_mb8 returned status {status:#x}")


def _openssl_mult(scalar: bytes, buf: bytes) -> tuple[bytes, int]:
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


def _library_dirs() -> list[str]:
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")]
    return list(dict.fromkeys(dirs))


class _CpuUnsuitable(OSError):
    """libcrypto_mb loaded, but ``mbx_is_crypto_mb_applicable`` refuses this CPU."""


def _load_crypto_mb(dirs: Sequence[str]) -> _CryptoMb:
    """Load libcrypto_mb (runtime first) and check the CPU, or raise OSError saying why."""

    def find(name: str) -> str:
        for folder in dirs:
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return path
        return name  # left to the system loader

    for name in _RUNTIME_LIBS:
        # One missing is not fatal here: libcrypto_mb's own load below says what it lacks.
        with contextlib.suppress(OSError):
            ctypes.CDLL(find(name), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(find(_CRYPTO_MB))
    lib.mbx_get_cpu_features.restype = ctypes.c_uint64
    lib.mbx_get_cpu_features.argtypes = []
    lib.mbx_is_crypto_mb_applicable.restype = ctypes.c_int
    lib.mbx_is_crypto_mb_applicable.argtypes = [ctypes.c_uint64]
    if not lib.mbx_is_crypto_mb_applicable(lib.mbx_get_cpu_features()):
        raise _CpuUnsuitable("mbx_is_crypto_mb_applicable: this CPU lacks AVX-512 IFMA")
    return _CryptoMb(lib)


_backend: str | None = None  # resolved: "crypto-mb" or "openssl"
_mb: _CryptoMb | None = None


def configure(
    requested: str | None = None,
    *,
    library_dirs: Sequence[str] | None = None,
    quiet: bool = False,
    on_fallback: Callable[[str], None] | None = None,
) -> str:
    """Choose this process's backend and return it (``crypto-mb`` or ``openssl``).

    :data:`ENV_VAR`, when set and not empty, wins over ``requested``;
    ``None`` means ``auto``. ``library_dirs`` replaces the folders searched
    for the libraries. When libcrypto_mb cannot be used, the one-line reason
    goes to ``on_fallback`` (a node prints it to its log), or to
    :func:`warnings.warn` without one; ``quiet`` drops it (for workers whose
    owner already gave it). Under ``auto``, a CPU without AVX-512 IFMA is
    not reported: OpenSSL is the expected backend there, and a warning on
    every round would teach operators to ignore warnings.

    Raises:
        ValueError: the name (from the environment or ``requested``) is not
            one of :data:`BACKENDS`.
    """
    global _backend, _mb
    env = os.environ.get(ENV_VAR, "").strip()
    name = env or requested or "auto"
    if name not in BACKENDS:
        source = f"environment variable {ENV_VAR}" if env else "x25519_backend"
        raise ValueError(f"{source}: unknown X25519 backend {name!r}; use one of {BACKENDS}")
    if name == "openssl":
        _backend, _mb = "openssl", None
        return _backend
    try:
        _mb = _load_crypto_mb(_library_dirs() if library_dirs is None else library_dirs)
        _backend = "crypto-mb"
    except (OSError, AttributeError) as exc:
        _backend, _mb = "openssl", None
        expected = name == "auto" and isinstance(exc, _CpuUnsuitable)
        if not quiet and not expected:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            line = f"X25519: libcrypto_mb not used ({reason}); falling back to OpenSSL"
            if on_fallback is not None:
                on_fallback(line)
            else:
                warnings.warn(line, RuntimeWarning, stacklevel=2)
    return _backend


def backend() -> str:
    """The backend in use (resolving ``auto`` on first use)."""
    if _backend is None:
        configure()
    assert _backend is not None
    return _backend


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
    """X25519(scalar, u) for each 32-byte u in ``buf``, on the configured backend.

    Returns ``(products, -1)``, or ``(b"", i)`` when u number ``i`` is a
    low-order point. Top-level and picklable, for process pools.
    """
    if backend() == "crypto-mb" and _mb is not None:
        return _mb.mult(scalar, buf)
    return _openssl_mult(scalar, buf)


_First = TypeVar("_First")


def split_map(
    fn: Callable[[_First, bytes], tuple[bytes, int]],
    first: _First,
    buf: bytes,
    item: int,
    executor: concurrent.futures.Executor | None,
    parts: int | None = None,
) -> tuple[bytes, int]:
    """Run ``fn(first, slice)`` over slices of ``buf`` (``item`` bytes per element).

    Returns the joined outputs and -1, or ``(b"", global index)`` of the
    first element a slice reported as bad.
    """
    return split_submit(fn, first, buf, item, executor, parts)()


def split_submit(
    fn: Callable[[_First, bytes], tuple[bytes, int]],
    first: _First,
    buf: bytes,
    item: int,
    executor: concurrent.futures.Executor | None,
    parts: int | None = None,
) -> Callable[[], tuple[bytes, int]]:
    """:func:`split_map` started now: the slices go to ``executor`` at once; the
    returned function waits for them and joins (without an executor, or for a
    small buffer, it computes when called).
    """
    n = len(buf) // item
    if executor is None or n < 64:
        return lambda: fn(first, buf)
    if parts is None:
        parts = int(getattr(executor, "_max_workers", os.cpu_count() or 1))
    parts = max(1, min(parts, n // 32))
    bounds = [n * k // parts for k in range(parts + 1)]
    futures = [
        executor.submit(fn, first, buf[bounds[k] * item : bounds[k + 1] * item])
        for k in range(parts)
    ]

    def join() -> tuple[bytes, int]:
        outs: list[bytes] = []
        for k, future in enumerate(futures):
            out, bad = future.result()
            if bad >= 0:
                for other in futures[k + 1 :]:
                    other.cancel()
                return b"", bounds[k] + bad
            outs.append(out)
        return b"".join(outs), -1

    return join


def scalar_mult(
    scalar: bytes,
    points: npt.NDArray[np.uint8],
    *,
    executor: concurrent.futures.Executor | None = None,
    what: str = "points",
    backend: str | None = None,
) -> npt.NDArray[np.uint8]:
    """X25519(scalar, u) for each row of an (n, 32) uint8 array.

    ``backend`` runs this call inline on the named backend (for tests and
    measurements); by default the configured one is used, in the executor.

    Raises:
        ProtocolError: a row is a low-order point; the message names
            ``what`` and the row position, never the value.
        ValueError: ``points`` is not an (n, 32) uint8 array, the scalar
            is not 32 bytes, or ``backend`` is not ``crypto-mb`` or ``openssl``.
        OSError: ``backend="crypto-mb"`` and libcrypto_mb cannot be used here.
    """
    arr = np.asarray(points)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != POINT_SIZE:
        raise ValueError("points must be an (n, 32) uint8 array")
    if not isinstance(scalar, bytes) or len(scalar) != 32:
        raise ValueError("scalar must be 32 bytes")
    if backend == "openssl":
        out, bad = _openssl_mult(scalar, arr.tobytes())
    elif backend == "crypto-mb":
        out, bad = _crypto_mb().mult(scalar, arr.tobytes())
    elif backend is not None:
        raise ValueError(f"unknown X25519 backend {backend!r}")
    else:
        out, bad = split_map(mult_buffer, scalar, arr.tobytes(), POINT_SIZE, executor)
    if bad >= 0:
        raise ProtocolError(f"{what}: point {bad} is a low-order point")
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, POINT_SIZE).copy()


def crypto_mb_library() -> ctypes.CDLL | None:
    """The loaded libcrypto_mb when this process's backend is ``crypto-mb``, else ``None``.

    For the SM2 suite (:mod:`psi.hazmat.sm2`), which follows the same backend choice.
    """
    if backend() == "crypto-mb" and _mb is not None:
        return _mb.lib
    return None


def load_crypto_mb_library() -> ctypes.CDLL:
    """libcrypto_mb loaded and checked against the CPU, whatever backend is configured.

    Raises:
        OSError: it cannot be loaded or the CPU lacks AVX-512 IFMA.
    """
    return _load_crypto_mb(_library_dirs()).lib


def _crypto_mb() -> _CryptoMb:
    global _mb
    if _mb is None:
        _mb = _load_crypto_mb(_library_dirs())
    return _mb
