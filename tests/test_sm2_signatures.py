"""SM2 signatures (GB/T 32918.2) on both backends: the published example on the libippcp
fallback (every CPU), refusals, and agreement with libcrypto_mb where the CPU has it."""

from __future__ import annotations

import ctypes
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import sm2_signature
from psi.hazmat import sm2, sm2_signatures
from tests.utils import load_vectors, parse_key_value_blocks

MSG = b"message digest"


def gb_example() -> dict[str, int]:
    """tests/vectors/gm/sm2_sign.txt: d, x, y, k, r, s as integers."""
    (block,) = load_vectors("gm/sm2_sign.txt", parse_key_value_blocks)
    return {name: int(value.replace(" ", ""), 16) for name, value in block.items()}


def _fallback() -> sm2_signatures.IppcpSignatures:
    impl = sm2_signatures.signer("ippcp")
    assert isinstance(impl, sm2_signatures.IppcpSignatures)
    return impl


def _crypto_mb_usable() -> bool:
    try:
        sm2_signatures.signer("crypto-mb")
    except OSError:
        return False
    return True


def test_published_example_on_the_fallback() -> None:
    v = gb_example()
    public = (v["x"], v["y"])
    assert _fallback().public_key(v["d"]) == public
    assert sm2._full_mult(v["d"], (sm2.GX, sm2.GY)) == public  # the Jacobian fallback too
    sig = sm2.sign(v["d"], MSG, k=v["k"], backend="ippcp")
    assert sig == v["r"].to_bytes(32, "big") + v["s"].to_bytes(32, "big")
    assert sm2.verify(public, MSG, sig, backend="ippcp")


def test_digest_is_the_standards_z_and_e() -> None:
    """Z from the library's ippsGFpECUserIDHashSM2 and e = SM3(Z || M) from OpenSSL's SM3."""
    v = gb_example()
    public = (v["x"], v["y"])
    ipp = _fallback()
    lib, ctx = ipp.lib, sm2_signatures._Context(ipp)
    point = ipp._point(ctx)
    x, y = ipp._bn(v["x"].to_bytes(32, "big")), ipp._bn(v["y"].to_bytes(32, "big"))
    assert lib.ippsGFpECSetPointRegular(x, y, point, ctx.ec) == 0
    z = ctypes.create_string_buffer(32)
    uid = sm2.DEFAULT_USER_ID
    assert lib.ippsGFpECUserIDHashSM2(z, uid, len(uid), point, ctx.ec, ctx.scratch) == 0
    assert sm2.signature_digest(public, MSG) == hashlib.new("sm3", z.raw + MSG).digest()


def _public(d: int) -> tuple[int, int]:
    return sm2.public_point(d)


def test_fallback_refuses_wrong_signature_key_message_and_user_id() -> None:
    v = gb_example()
    public, d = (v["x"], v["y"]), v["d"]
    sig = sm2.sign(d, MSG, backend="ippcp")
    assert sm2.verify(public, MSG, sig, backend="ippcp")
    n = sm2.N.to_bytes(32, "big")
    r, s = sig[:32], sig[32:]
    wrong_sigs = [
        bytes([sig[0] ^ 1]) + sig[1:],
        sig[:63] + bytes([sig[63] ^ 0x80]),
        s + r,
        bytes(32) + s,  # r = 0
        r + bytes(32),  # s = 0
        n + s,  # r = n
        r + n,  # s = n
        b"\xff" * 64,
        sig[:63],
        sig + b"\x00",
    ]
    for wrong in wrong_sigs:
        assert not sm2.verify(public, MSG, wrong, backend="ippcp"), wrong.hex()
    other = _public(int("11" * 32, 16))
    assert not sm2.verify(other, MSG, sig, backend="ippcp")
    assert not sm2.verify((public[0], sm2.P - public[1]), MSG, sig, backend="ippcp")
    assert not sm2.verify((public[0], public[1] ^ 1), MSG, sig, backend="ippcp")  # off curve
    assert not sm2.verify(public, b"message digesT", sig, backend="ippcp")
    assert not sm2.verify(public, MSG + b"\x00", sig, backend="ippcp")
    assert not sm2.verify(public, MSG, sig, b"ALICE123@YAHOO.COM", backend="ippcp")


_messages = st.binary(max_size=300)
_user_ids = st.one_of(st.just(sm2.DEFAULT_USER_ID), st.binary(max_size=70))
_scalars = st.integers(min_value=1, max_value=sm2.N - 2)


@settings(max_examples=25, deadline=None)
@given(_scalars, _messages, _user_ids)
def test_fallback_signatures_verify(d: int, msg: bytes, user_id: bytes) -> None:
    public = sm2.public_point(d)
    assert public == sm2._full_mult(d, (sm2.GX, sm2.GY))
    sig = sm2.sign(d, msg, user_id, backend="ippcp")
    assert sm2.verify(public, msg, sig, user_id, backend="ippcp")
    assert not sm2.verify(public, msg + b"!", sig, user_id, backend="ippcp")


def test_backends_agree_on_the_published_example() -> None:
    if not _crypto_mb_usable():
        pytest.skip("libcrypto_mb unusable on this CPU: the fallback alone is checked")
    v = gb_example()
    public = (v["x"], v["y"])
    expected = v["r"].to_bytes(32, "big") + v["s"].to_bytes(32, "big")
    assert sm2.sign(v["d"], MSG, k=v["k"], backend="crypto-mb") == expected
    assert sm2.verify(public, MSG, expected, backend="crypto-mb")


@settings(max_examples=25, deadline=None)
@given(_scalars, st.integers(min_value=1, max_value=sm2.N - 1), _messages, _user_ids)
def test_backends_give_the_same_bytes_and_verify_each_other(
    d: int, k: int, msg: bytes, user_id: bytes
) -> None:
    if not _crypto_mb_usable():
        pytest.skip("libcrypto_mb unusable on this CPU: the fallback alone is checked")
    public = sm2.public_point(d)
    on_mb = sm2.sign(d, msg, user_id, k=k, backend="crypto-mb")
    assert sm2.sign(d, msg, user_id, k=k, backend="ippcp") == on_mb
    fresh_mb = sm2.sign(d, msg, user_id, backend="crypto-mb")
    fresh_ipp = sm2.sign(d, msg, user_id, backend="ippcp")
    for sig in (on_mb, fresh_mb, fresh_ipp):
        assert sm2.verify(public, msg, sig, user_id, backend="crypto-mb")
        assert sm2.verify(public, msg, sig, user_id, backend="ippcp")
    # one bit of r flipped (it used to replace byte 0 with byte 5 ^ 4: the same
    # signature again whenever those agreed, about one example in 256)
    bad = on_mb[:5] + bytes([on_mb[5] ^ 4]) + on_mb[6:]
    assert bad != on_mb
    assert not sm2.verify(public, msg, bad, user_id, backend="crypto-mb")
    assert not sm2.verify(public, msg, bad, user_id, backend="ippcp")


def test_default_backend_is_crypto_mb_where_usable_else_the_fallback() -> None:
    expected = "crypto-mb" if _crypto_mb_usable() else "ippcp"
    assert sm2.signature_backend() == expected
    key = sm2_signature.Sm2SigningKey(sm2_signature.generate_private_key())
    sig = key.sign(MSG)
    assert sm2_signature.verify(key.public_bytes, MSG, sig)


def test_backend_names_and_user_id_length() -> None:
    d = gb_example()["d"]
    with pytest.raises(ValueError, match="unknown SM2 signature backend"):
        sm2.sign(d, MSG, backend="openssl")
    with pytest.raises(ValueError, match="at most 8191 bytes"):
        sm2.sign(d, MSG, b"u" * 8192, backend="ippcp")
    with pytest.raises(ValueError, match="at most 8191 bytes"):
        sm2.verify(_public(d), MSG, bytes(64), b"u" * 8192)
    long_id = b"u" * 8191
    sig = sm2.sign(d, MSG, long_id, backend="ippcp")
    assert sm2.verify(_public(d), MSG, sig, long_id, backend="ippcp")
    for bad in (0, sm2.N - 1):
        with pytest.raises(ValueError, match="private key out of range"):
            sm2.sign(bad, MSG, backend="ippcp")
    with pytest.raises(ValueError, match="nonce out of range"):
        sm2.sign(d, MSG, k=sm2.N, backend="ippcp")


def test_fallback_zeroes_its_copies_of_d_and_k(monkeypatch: pytest.MonkeyPatch) -> None:
    v = gb_example()
    ipp = _fallback()
    made: list[ctypes.Array[ctypes.c_char]] = []
    wiped: list[sm2_signatures._Context] = []
    real_bn, real_wipe = ipp._bn, sm2_signatures._Context.wipe

    def recording_bn(value: bytes = bytes(32)) -> ctypes.Array[ctypes.c_char]:
        bn = real_bn(value)
        made.append(bn)
        return bn

    def recording_wipe(ctx: sm2_signatures._Context) -> None:
        real_wipe(ctx)
        wiped.append(ctx)

    monkeypatch.setattr(ipp, "_bn", recording_bn)
    monkeypatch.setattr(sm2_signatures._Context, "wipe", recording_wipe)
    digest = sm2.signature_digest((v["x"], v["y"]), MSG)
    r, s = ipp.sign(digest, v["d"], v["k"])
    assert int.from_bytes(r, "big") == v["r"] and int.from_bytes(s, "big") == v["s"]
    _e, reg, eph, r_bn, s_bn = made
    for bn in (reg, eph, r_bn, s_bn):
        assert bn.raw == bytes(len(bn))
    (ctx,) = wiped
    assert ctx.scratch.raw == bytes(len(ctx.scratch)) and ctx.ec.raw == bytes(len(ctx.ec))


def test_fallback_verifies_from_many_threads() -> None:
    """One verifying context per thread: no answer changes under contention."""
    d = int.from_bytes(os.urandom(31), "big") + 1
    public = sm2.public_point(d)
    sigs = [sm2.sign(d, bytes([i]), backend="ippcp") for i in range(16)]

    def check(i: int) -> bool:
        good = sm2.verify(public, bytes([i % 16]), sigs[i % 16], backend="ippcp")
        bad = sm2.verify(public, bytes([i % 16]), sigs[(i + 1) % 16], backend="ippcp")
        return good and not bad

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(check, range(200)))


def test_without_either_library_signing_and_verifying_raise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v = gb_example()
    monkeypatch.setattr(sm2_signatures, "_sig_mb", None)
    monkeypatch.setattr(sm2_signatures, "_sig_ipp", None)
    monkeypatch.setattr(sm2_signatures, "_sig_tried", {"crypto-mb", "ippcp"})
    with pytest.raises(OSError, match="need libcrypto_mb or libippcp"):
        sm2.signature_backend()
    assert sm2.public_point(v["d"]) == (v["x"], v["y"])  # the Jacobian arithmetic
    key = sm2_signature.Sm2SigningKey(v["d"].to_bytes(32, "big"))
    with pytest.raises(OSError, match="need libcrypto_mb or libippcp"):
        key.sign(MSG)
    with pytest.raises(OSError, match="backend ippcp cannot be used"):
        sm2.verify((v["x"], v["y"]), MSG, bytes(64), backend="ippcp")
    assert not sm2_signature.verify(key.public_bytes, MSG, bytes(63))  # malformed: no library
