"""DANGER: the two SM2 signature backends (GB/T 32918.2) behind :func:`psi.hazmat.sm2.sign`.

Use :mod:`psi.sm2_signature`; nothing here checks key or nonce ranges (the caller does).

``crypto-mb``
    ``mbx_sm2_ecdsa_sign_mb8`` / ``mbx_sm2_ecdsa_verify_mb8`` of libcrypto_mb, one
    signature in all eight lanes. The library forms Z = SM3(ENTL || ID || a || b || xG ||
    yG || xA || yA) and e = SM3(Z || M) itself. Only on CPUs with AVX-512 IFMA.
``ippcp``
    ``ippsGFpECSignSM2`` / ``ippsGFpECVerifySM2`` of libippcp, the general (not multi-buffer)
    part of the same Intel library, on any x86-64 CPU. These take the digest e, which the
    caller forms with SM3 (:func:`psi.hazmat.sm2.signature_digest`): the library's
    ``ippsGFpECMessageRepresentationSM2`` is not used, as it hashes into a static context
    (not thread-safe), refuses an empty message, and in the shipped build returned a
    digest that was not e (seen with the GB/T 32918 example). Public keys d*G come from
    ``ippsGFpECPublicKey``.

Secrets: the copies of d and k handed to either library are zeroed after the call. On the
``ippcp`` path a signature gets a fresh field and curve context and scratch buffer, all
zeroed afterwards too (the library keeps intermediate values of s in its contexts' pools);
verifying (no secret) reuses one context per thread, as the contexts are not thread-safe
(no lock: a lock held by another thread at a fork would stay held in the child).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Final

from psi.hazmat import sm2_field, x25519

__all__ = [
    "SIGNATURE_BACKENDS",
    "CryptoMbSignatures",
    "IppcpSignatures",
    "public_key_library",
    "signature_backend",
    "signer",
]

#: Where :func:`signature_backend` looks, in order.
SIGNATURE_BACKENDS: Final = ("crypto-mb", "ippcp")

_LANES: Final = 8
_WORDS: Final = 8  # 32-bit words of a 256-bit big number
_IPP_EC_VALID: Final = 0  # IppECResult ippECValid


class CryptoMbSignatures:
    """``mbx_sm2_ecdsa_sign_mb8`` / ``verify_mb8`` for one signature (every lane the same)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._sign = lib.mbx_sm2_ecdsa_sign_mb8
        self._sign.argtypes = [ctypes.c_void_p] * 12
        self._sign.restype = ctypes.c_uint32
        self._verify = lib.mbx_sm2_ecdsa_verify_mb8
        self._verify.argtypes = [ctypes.c_void_p] * 10
        self._verify.restype = ctypes.c_uint32

    @staticmethod
    def _lanes(buf: ctypes.Array[ctypes.c_char]) -> ctypes.Array[ctypes.c_void_p]:
        return (ctypes.c_void_p * _LANES)(*([ctypes.addressof(buf)] * _LANES))

    @staticmethod
    def _bn(value: int) -> ctypes.Array[ctypes.c_char]:
        # The library's "BN" format: four little-endian 64-bit words.
        return ctypes.create_string_buffer(value.to_bytes(32, "little"), 32)

    def sign(
        self, d: int, public: tuple[int, int], msg: bytes, user_id: bytes, k: int
    ) -> tuple[bytes, bytes]:
        """Big-endian (r, s). Raises: RuntimeError: the library refused."""
        r_buf = ctypes.create_string_buffer(32)
        s_buf = ctypes.create_string_buffer(32)
        uid = ctypes.create_string_buffer(user_id, max(1, len(user_id)))
        m = ctypes.create_string_buffer(msg, max(1, len(msg)))
        lens = (ctypes.c_int * _LANES)(*([len(user_id)] * _LANES))
        mlens = (ctypes.c_int * _LANES)(*([len(msg)] * _LANES))
        eph, reg = self._bn(k), self._bn(d)
        px, py = self._bn(public[0]), self._bn(public[1])
        # Eight lanes, all the same signature: lane 0's result is taken.
        outs_r = (ctypes.c_void_p * _LANES)(*([ctypes.addressof(r_buf)] * _LANES))
        outs_s = (ctypes.c_void_p * _LANES)(*([ctypes.addressof(s_buf)] * _LANES))
        try:
            status = self._sign(
                outs_r, outs_s, self._lanes(uid), lens, self._lanes(m), mlens,
                self._lanes(eph), self._lanes(reg), self._lanes(px), self._lanes(py), None, None,
            )  # fmt: skip
        finally:
            ctypes.memset(eph, 0, 32)
            ctypes.memset(reg, 0, 32)
        if status & 0xF:
            raise RuntimeError(f"mbx_sm2_ecdsa_sign_mb8 returned status {status:#x}")
        return r_buf.raw, s_buf.raw

    def verify(
        self, public: tuple[int, int], msg: bytes, user_id: bytes, r: bytes, s: bytes
    ) -> bool:
        r_buf = ctypes.create_string_buffer(r, 32)
        s_buf = ctypes.create_string_buffer(s, 32)
        uid = ctypes.create_string_buffer(user_id, max(1, len(user_id)))
        m = ctypes.create_string_buffer(msg, max(1, len(msg)))
        lens = (ctypes.c_int * _LANES)(*([len(user_id)] * _LANES))
        mlens = (ctypes.c_int * _LANES)(*([len(msg)] * _LANES))
        px, py = self._bn(public[0]), self._bn(public[1])
        status = self._verify(
            self._lanes(r_buf), self._lanes(s_buf), self._lanes(uid), lens, self._lanes(m), mlens,
            self._lanes(px), self._lanes(py), None, None,
        )  # fmt: skip
        return bool(status & 0xF == 0)


_Buffer = ctypes.Array[ctypes.c_char]


class _Context:
    """A field (SM2's p, ``ippsGFpInitFixed``), the standard SM2 curve on it
    (``ippsGFpECInitStdSM2``, base-point table bound) and a scratch buffer."""

    def __init__(self, api: IppcpSignatures) -> None:
        self.gf = ctypes.create_string_buffer(api.gf_size)
        _check(api.lib.ippsGFpInitFixed(256, api.method, self.gf), "ippsGFpInitFixed")
        self.ec = ctypes.create_string_buffer(api.ec_size)
        _check(api.lib.ippsGFpECInitStdSM2(self.gf, self.ec), "ippsGFpECInitStdSM2")
        _check(api.lib.ippsGFpECBindGxyTblStdSM2(self.ec), "ippsGFpECBindGxyTblStdSM2")
        self.scratch = ctypes.create_string_buffer(api.scratch_size)

    def wipe(self) -> None:
        for buf in (self.scratch, self.ec, self.gf):
            ctypes.memset(buf, 0, len(buf))


class IppcpSignatures:
    """``ippsGFpECSignSM2`` / ``ippsGFpECVerifySM2`` / ``ippsGFpECPublicKey`` of libippcp."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        for name in (
            "ippsGFpGetSize", "ippsGFpInitFixed", "ippsGFpECGetSize", "ippsGFpECInitStdSM2",
            "ippsGFpECBindGxyTblStdSM2", "ippsGFpECScratchBufferSize", "ippsBigNumGetSize",
            "ippsBigNumInit", "ippsSetOctString_BN", "ippsGetOctString_BN",
            "ippsGFpECPointGetSize", "ippsGFpECPointInit", "ippsGFpECSetPointRegular",
            "ippsGFpECGetPointRegular", "ippsGFpECPublicKey", "ippsGFpECSignSM2",
            "ippsGFpECVerifySM2",
        ):  # fmt: skip
            getattr(lib, name).restype = ctypes.c_int  # IppStatus
        lib.ippsGFpMethod_p256sm2.restype = ctypes.c_void_p
        self.method = ctypes.c_void_p(lib.ippsGFpMethod_p256sm2())
        size = ctypes.c_int()
        _check(lib.ippsGFpGetSize(256, ctypes.byref(size)), "ippsGFpGetSize")
        self.gf_size = size.value
        gf = ctypes.create_string_buffer(self.gf_size)
        _check(lib.ippsGFpInitFixed(256, self.method, gf), "ippsGFpInitFixed")
        _check(lib.ippsGFpECGetSize(gf, ctypes.byref(size)), "ippsGFpECGetSize")
        self.ec_size = size.value
        ec = ctypes.create_string_buffer(self.ec_size)
        _check(lib.ippsGFpECInitStdSM2(gf, ec), "ippsGFpECInitStdSM2")
        # Two scalars: verification's s*G + t*P (signing needs less).
        _check(lib.ippsGFpECScratchBufferSize(2, ec, ctypes.byref(size)), "ScratchBufferSize")
        self.scratch_size = size.value
        _check(lib.ippsGFpECPointGetSize(ec, ctypes.byref(size)), "ippsGFpECPointGetSize")
        self._point_size = size.value
        _check(lib.ippsBigNumGetSize(_WORDS, ctypes.byref(size)), "ippsBigNumGetSize")
        self._bn_size = size.value
        self._local = threading.local()
        _Context(self)  # fails here, at load, when the library is unusable

    def _bn(self, value: bytes = bytes(32)) -> _Buffer:
        """An ``IppsBigNumState`` holding the big-endian ``value``."""
        bn = ctypes.create_string_buffer(self._bn_size)
        _check(self.lib.ippsBigNumInit(_WORDS, bn), "ippsBigNumInit")
        _check(self.lib.ippsSetOctString_BN(value, len(value), bn), "ippsSetOctString_BN")
        return bn

    def _octets(self, bn: _Buffer) -> bytes:
        out = ctypes.create_string_buffer(32)
        _check(self.lib.ippsGetOctString_BN(out, 32, bn), "ippsGetOctString_BN")
        return out.raw

    def _point(self, ctx: _Context) -> _Buffer:
        point = ctypes.create_string_buffer(self._point_size)
        _check(self.lib.ippsGFpECPointInit(None, None, point, ctx.ec), "ippsGFpECPointInit")
        return point

    def public_key(self, d: int) -> tuple[int, int]:
        """d * G, affine. Raises: RuntimeError: the library refused ``d``."""
        ctx, private = _Context(self), self._bn(_be(d))
        x, y = self._bn(), self._bn()
        try:
            point = self._point(ctx)
            status = self.lib.ippsGFpECPublicKey(private, point, ctx.ec, ctx.scratch)
            _check(status, "ippsGFpECPublicKey", RuntimeError)
            _check(self.lib.ippsGFpECGetPointRegular(point, x, y, ctx.ec), "GetPointRegular")
            return int.from_bytes(self._octets(x), "big"), int.from_bytes(self._octets(y), "big")
        finally:
            ctypes.memset(private, 0, len(private))
            ctx.wipe()

    def sign(self, digest: bytes, d: int, k: int) -> tuple[bytes, bytes]:
        """Big-endian (r, s) of the 32-byte digest e. Raises: RuntimeError: the library
        refused (r = 0, r + k = n or s = 0 for this k: about 2^-254)."""
        ctx = _Context(self)
        e, reg, eph = self._bn(digest), self._bn(_be(d)), self._bn(_be(k))
        r, s = self._bn(), self._bn()
        try:
            status = self.lib.ippsGFpECSignSM2(e, reg, eph, r, s, ctx.ec, ctx.scratch)
            _check(status, "ippsGFpECSignSM2", RuntimeError)
            return self._octets(r), self._octets(s)
        finally:
            # r's and s's states carry intermediate values of s (r * d, k - r * d) in their
            # spare words: wiped along with the keys.
            for bn in (reg, eph, r, s):
                ctypes.memset(bn, 0, len(bn))
            ctx.wipe()

    def verify(self, digest: bytes, public: tuple[int, int], r: bytes, s: bytes) -> bool:
        """Whether (r, s) is ``public``'s signature of the digest e (``public`` on the curve:
        the caller checks; the library does not)."""
        e, r_bn, s_bn = self._bn(digest), self._bn(r), self._bn(s)
        x, y = self._bn(_be(public[0])), self._bn(_be(public[1]))
        result = ctypes.c_int(-1)
        ctx: _Context | None = getattr(self._local, "verifying", None)
        if ctx is None:
            ctx = self._local.verifying = _Context(self)
        point = self._point(ctx)
        _check(self.lib.ippsGFpECSetPointRegular(x, y, point, ctx.ec), "SetPointRegular")
        status = self.lib.ippsGFpECVerifySM2(
            e, point, r_bn, s_bn, ctypes.byref(result), ctx.ec, ctx.scratch
        )
        _check(status, "ippsGFpECVerifySM2", RuntimeError)
        return result.value == _IPP_EC_VALID


def _be(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _check(status: int, what: str, error: type[Exception] = OSError) -> None:
    if status:
        raise error(f"libippcp {what} returned status {status}")


# --- which library ---------------------------------------------------------------------

_sig_mb: CryptoMbSignatures | None = None
_sig_ipp: IppcpSignatures | None = None
_sig_tried: set[str] = set()


def _mb_signatures() -> CryptoMbSignatures | None:
    global _sig_mb
    if _sig_mb is None and "crypto-mb" not in _sig_tried:
        _sig_tried.add("crypto-mb")
        lib = x25519.crypto_mb_library()
        if lib is None:
            # Loaded for signatures alone where the CPU has AVX-512 IFMA: the process's
            # X25519 backend choice stays as configured.
            with contextlib.suppress(OSError, AttributeError):
                lib = x25519.load_crypto_mb_library()
        if lib is not None:
            _sig_mb = CryptoMbSignatures(lib)
    return _sig_mb


def _ipp_signatures() -> IppcpSignatures | None:
    global _sig_ipp
    if _sig_ipp is None and "ippcp" not in _sig_tried:
        _sig_tried.add("ippcp")
        lib = sm2_field.ippcp_library()
        if lib is not None:
            with contextlib.suppress(OSError, AttributeError):
                _sig_ipp = IppcpSignatures(lib)
    return _sig_ipp


def signature_backend() -> str:
    """``crypto-mb`` where libcrypto_mb is usable (AVX-512 IFMA), else ``ippcp`` (libippcp's
    general SM2 code, any x86-64 CPU); both give the same signatures for the same k.

    Raises:
        OSError: neither library can be used in this process.
    """
    for name, impl in (("crypto-mb", _mb_signatures), ("ippcp", _ipp_signatures)):
        if impl() is not None:
            return name
    raise OSError("SM2 signatures need libcrypto_mb or libippcp; neither loads here")


def signer(backend: str | None) -> CryptoMbSignatures | IppcpSignatures:
    """The named backend (``None``: :func:`signature_backend`'s pick).

    Raises:
        ValueError: unknown name.
        OSError: that library cannot be used in this process.
    """
    name = signature_backend() if backend is None else backend
    if name not in SIGNATURE_BACKENDS:
        raise ValueError(f"unknown SM2 signature backend {name!r}")
    impl = _mb_signatures() if name == "crypto-mb" else _ipp_signatures()
    if impl is None:
        raise OSError(f"SM2 signature backend {name} cannot be used in this process")
    return impl


def public_key_library() -> IppcpSignatures | None:
    """libippcp's SM2 code for d * G, or ``None`` where it does not load."""
    return _ipp_signatures()
