"""DANGER: the SM2 suite's field work over whole buffers: hash_to_field and square roots.

:func:`hash_to_field_batch` is RFC 9380's hash_to_field (expand_message_xmd over SM3,
L = 48, two elements) of :mod:`psi.hazmat.sm2` for a list of messages: OpenSSL's SM3
through :mod:`hashlib` (a context copied per call, far cheaper than ``cryptography``'s
``Hash`` objects; the 64-byte Z_pad, one SM3 block, absorbed once), the four SM3 calls as
four passes over the list, the XORs and the packing in numpy.

:func:`sqrt_candidates`: p = 3 mod 4, so r = v^((p+1)/4) is a square root of v when v
is a square; the caller checks r^2 = v (:mod:`psi.hazmat.sm2` does). Two backends, the
same values:

``ippcp``
    Intel IPP Cryptography's prime-field API (``libippcp`` of PyPI ``ipp-crypto``, the
    package that brings libcrypto_mb): ``ippsGFpInitFixed(256, ippsGFpMethod_p256sm2())``,
    the SM2 prime with its special reduction, and ``ippsGFpExp``, about 1.5 times faster
    than ``gmpy2.powmod`` on this machine (``ippsGFpSqrt`` was slower). The library and
    its Intel runtime (loaded first, as :mod:`psi.hazmat.x25519` does) are looked up in
    the environment's ``lib`` folder, then by the system loader.
``gmpy2``
    ``gmpy2.powmod_base_list``: the fallback when libippcp cannot be loaded.

The same loaded libippcp (:func:`ippcp_library`) also signs and verifies SM2 where
libcrypto_mb refuses the CPU (:mod:`psi.hazmat.sm2_signatures`).

The inputs are the party's own hashed identities or the peer's blinded points, never a
secret, so neither needs to be constant time.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import Final

import gmpy2
import numpy as np
import numpy.typing as npt

__all__ = ["BACKENDS", "P", "backend", "hash_to_field_batch", "ippcp_library", "sqrt_candidates"]

P: Final = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
SQRT_EXP: Final = (P + 1) // 4
BACKENDS: Final = ("ippcp", "gmpy2")
# libippcp, like libcrypto_mb, needs the Intel runtime resolvable before it loads.
_RUNTIME_LIBS: Final = ("libintlc.so.5", "libimf.so", "libirng.so", "libsvml.so")
_IPP_BIG_NUM_POS: Final = 1
_WORDS: Final = 8  # 32-bit words of a 256-bit element
_L: Final = 48


def _openssl_sm3() -> hashlib._Hash | None:
    try:
        return hashlib.new("sm3")
    except ValueError:  # this OpenSSL has no SM3
        return None


_SM3: Final = _openssl_sm3()


def hash_to_field_batch(msgs: Sequence[bytes], dst: bytes) -> tuple[list[int], list[int]] | None:
    """(u0, u1) of hash_to_field(msg, dst, 2) for every message, as gmpy2 integers; ``None``
    when hashlib has no SM3 or the DST is over 255 bytes (the caller hashes one by one)."""
    if _SM3 is None or len(dst) > 255:
        return None
    n = len(msgs)
    dst_prime = dst + bytes([len(dst)])
    first = _SM3.copy()
    first.update(bytes(64))
    tail = (2 * _L).to_bytes(2, "big") + b"\x00" + dst_prime

    def digests(proto: hashlib._Hash, datas: Sequence[bytes]) -> npt.NDArray[np.uint8]:
        out = []
        for data in datas:
            h = proto.copy()
            h.update(data)
            out.append(h.digest())
        return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(n, 32)

    b0 = digests(first, [m + tail for m in msgs])
    blocks = [digests(_SM3, [row + b"\x01" + dst_prime for row in _rows(b0)])]
    for i in (2, 3):
        mixed = _rows(b0 ^ blocks[-1])
        blocks.append(digests(_SM3, [row + bytes([i]) + dst_prime for row in mixed]))
    raw, step, p = np.hstack(blocks).tobytes(), 3 * 32, gmpy2.mpz(P)
    from_bytes = gmpy2.mpz.from_bytes
    u0 = [from_bytes(raw[at : at + _L], "big") % p for at in range(0, n * step, step)]
    u1 = [from_bytes(raw[at + _L : at + step], "big") % p for at in range(0, n * step, step)]
    return u0, u1


def _rows(array: npt.NDArray[np.uint8]) -> list[bytes]:
    raw = np.ascontiguousarray(array).tobytes()
    width = array.shape[1]
    return [raw[at : at + width] for at in range(0, len(raw), width)]


class _GfpState:
    """One ``IppsGFpState`` for SM2's p, two elements, the exponent and a scratch buffer."""

    def __init__(self, lib: ctypes.CDLL, method: ctypes.c_void_p) -> None:
        size = ctypes.c_int()
        _check(lib.ippsGFpGetSize(256, ctypes.byref(size)), "ippsGFpGetSize")
        self.gf = ctypes.create_string_buffer(size.value)
        _check(lib.ippsGFpInitFixed(256, method, self.gf), "ippsGFpInitFixed")
        _check(lib.ippsGFpElementGetSize(self.gf, ctypes.byref(size)), "ippsGFpElementGetSize")
        self.a = ctypes.create_string_buffer(size.value)
        self.r = ctypes.create_string_buffer(size.value)
        for element in (self.a, self.r):
            _check(lib.ippsGFpElementInit(None, 0, element, self.gf), "ippsGFpElementInit")
        _check(lib.ippsBigNumGetSize(_WORDS, ctypes.byref(size)), "ippsBigNumGetSize")
        self.exp = ctypes.create_string_buffer(size.value)
        _check(lib.ippsBigNumInit(_WORDS, self.exp), "ippsBigNumInit")
        words = (ctypes.c_uint32 * _WORDS)(*(SQRT_EXP >> (32 * i) & 0xFFFFFFFF for i in range(8)))
        _check(lib.ippsSet_BN(_IPP_BIG_NUM_POS, _WORDS, words, self.exp), "ippsSet_BN")
        _check(
            lib.ippsGFpScratchBufferSize(1, 256, self.gf, ctypes.byref(size)),
            "ippsGFpScratchBufferSize",
        )
        self.scratch = ctypes.create_string_buffer(max(1, size.value))


class _Ipp:
    """``ippsGFpExp`` with one :class:`_GfpState` per thread: the elements are overwritten
    on every call and the field state keeps temporaries in its pool, so threads sharing one
    got wrong roots (seen: concurrent sub-rounds refusing valid SM2 key shares)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.ippsGFpMethod_p256sm2.restype = ctypes.c_void_p
        self._method = ctypes.c_void_p(lib.ippsGFpMethod_p256sm2())
        self._local = threading.local()
        self._state()  # fails here, in the loading thread, when the library is unusable
        self._set = lib.ippsGFpSetElement
        self._set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self._pow = lib.ippsGFpExp
        self._pow.argtypes = [ctypes.c_void_p] * 5
        self._get = lib.ippsGFpGetElement
        self._get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]

    def _state(self) -> _GfpState:
        state: _GfpState | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _GfpState(self.lib, self._method)
        return state

    def powers(self, values: Sequence[int]) -> list[int]:
        n = len(values)
        if n == 0:
            return []
        src = np.frombuffer(b"".join(v.to_bytes(32, "little") for v in values), dtype=np.uint8)
        dst = np.empty(n * 32, dtype=np.uint8)
        set_, pow_, get = self._set, self._pow, self._get
        state = self._state()
        a, r, gf, exp, scratch = state.a, state.r, state.gf, state.exp, state.scratch
        src_at, dst_at = src.ctypes.data, dst.ctypes.data
        for at in range(0, n * 32, 32):
            status = set_(src_at + at, _WORDS, a, gf)
            status |= pow_(a, exp, r, gf, scratch)
            status |= get(r, dst_at + at, _WORDS, gf)
            if status:
                raise RuntimeError(f"libippcp GFp exponentiation failed (status {status})")
        raw = dst.tobytes()
        from_bytes = gmpy2.mpz.from_bytes
        return [from_bytes(raw[at : at + 32], "little") for at in range(0, n * 32, 32)]


def _check(status: int, what: str) -> None:
    if status:
        raise OSError(f"libippcp {what} returned status {status}")


def _load(dirs: Sequence[str]) -> _Ipp:
    def find(name: str) -> str:
        for folder in dirs:
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return path
        return name

    for name in _RUNTIME_LIBS:
        with contextlib.suppress(OSError):  # libippcp's own load says what it lacks
            ctypes.CDLL(find(name), mode=ctypes.RTLD_GLOBAL)
    ipp = _Ipp(ctypes.CDLL(find("libippcp.so")))
    probe = [0, 1, 4, P - 1, 0x1234567890ABCDEF << 180]
    if ipp.powers(probe) != [int(gmpy2.powmod(v, SQRT_EXP, P)) for v in probe]:
        raise OSError("libippcp: ippsGFpExp disagrees with gmpy2")
    return ipp


_ipp: _Ipp | None = None
_ipp_failed = False


def _ippcp() -> _Ipp | None:
    global _ipp, _ipp_failed
    if _ipp is None and not _ipp_failed:
        dirs = list(
            dict.fromkeys([os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")])
        )
        try:
            _ipp = _load(dirs)
        except (OSError, AttributeError):
            _ipp_failed = True
    return _ipp


def ippcp_library() -> ctypes.CDLL | None:
    """The loaded libippcp (checked as above), or ``None`` when it cannot be loaded here.

    For the SM2 signatures' fallback (:mod:`psi.hazmat.sm2_signatures`).
    """
    ipp = _ippcp()
    return None if ipp is None else ipp.lib


def backend() -> str:
    """``ippcp`` when libippcp loads in this process, else ``gmpy2``."""
    return "ippcp" if _ippcp() is not None else "gmpy2"


def sqrt_candidates(values: Sequence[int], *, backend: str | None = None) -> list[int]:
    """v^((p+1)/4) mod p for every v in [0, p) (as gmpy2 integers): v's root when v is a square.

    Raises:
        ValueError: unknown backend name.
        OSError: ``backend="ippcp"`` and libippcp cannot be used here.
    """
    if backend not in (None, *BACKENDS):
        raise ValueError(f"unknown SM2 field backend {backend!r}")
    ipp = None if backend == "gmpy2" else _ippcp()
    if ipp is None:
        if backend == "ippcp":
            raise OSError("libippcp cannot be used in this process")
        return list(gmpy2.powmod_base_list(list(values), SQRT_EXP, P))
    return ipp.powers(values)
