"""GM/T primitives as xmatch uses them: SM3 and SM4 against the standards, the sm4-ecb-v1 PRF,
SM3 transcripts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import KeyedHashRequester, KeyShare, ProtocolError
from psi.hazmat import sm2
from psi.transcript import Transcript, uses_sm3
from tests.test_psi_context import make_context
from tests.test_psi_keyed_hash import agreed, ids_from_ints, rng_for, run_round

GM = Path(__file__).parent / "vectors" / "gm"


def _pairs(name: str) -> dict[str, str]:
    out = {}
    for line in (GM / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split(" = ")
            out[key] = value
    return out


def test_sm3_gbt_32905_examples() -> None:
    vectors = _pairs("sm3.txt")
    assert len(vectors) == 2
    for msg, digest in vectors.items():
        h = hashes.Hash(hashes.SM3())
        h.update(msg.encode("ascii"))
        assert h.finalize().hex() == digest


def test_sm4_gbt_32907_example() -> None:
    v = _pairs("sm4.txt")
    enc = Cipher(algorithms.SM4(bytes.fromhex(v["key"])), modes.ECB()).encryptor()
    assert enc.update(bytes.fromhex(v["plaintext"])).hex() == v["ciphertext"]


def test_sm4_round_and_sm3_transcript() -> None:
    ctx = make_context(params=[("prf", "sm4-ecb-v1")], rng=rng_for(1))
    matched, _, t_req, t_resp = run_round(
        ids_from_ints([1, 2, 3, 2]), ids_from_ints([2, 8]), ctx=ctx
    )
    assert matched == [1, 3] and t_req == t_resp
    assert uses_sm3(ctx) and not uses_sm3(make_context(rng=rng_for(1)))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=15), st.lists(st.integers(0, 40), max_size=15))
def test_sm4_prf_equals_plain_intersection(roster: list[int], match_set: list[int]) -> None:
    ctx = make_context(params=[("prf", "sm4-ecb-v1")], rng=rng_for(3))
    matched, _, t_req, t_resp = run_round(ids_from_ints(roster), ids_from_ints(match_set), ctx=ctx)
    assert matched == [i for i, v in enumerate(roster) if v in set(match_set)]
    assert t_req == t_resp


def test_sm4_key_shares_are_sm2_points_and_key_is_sm4() -> None:
    ctx = make_context(params=[("prf", "sm4-ecb-v1")], rng=rng_for(2))
    req, resp = agreed(ctx)
    share = req.key_share()
    assert len(share.public_key) == 33 and share.to_bytes()[3] == 0x07
    assert KeyShare.from_bytes(share.to_bytes()) == share
    # Both sides hold the same 16-byte key; tags are SM4 of the encodings under it.
    assert req._key == resp._key and req._key is not None and len(req._key) == 16


def test_sm4_peer_share_off_curve_or_x25519_is_refused() -> None:
    ctx = make_context(params=[("prf", "sm4-ecb-v1")], rng=rng_for(2))
    req = KeyedHashRequester.generate(ctx, rng=rng_for(5))
    x = next(x for x in range(1, 50) if pow(x**3 + sm2.A * x + sm2.B, (sm2.P - 1) // 2, sm2.P) != 1)
    with pytest.raises(ProtocolError, match="not a point of the SM2 curve"):
        req.agree(KeyShare(ctx.round_id, b"\x02" + x.to_bytes(32, "big")))
    req2 = KeyedHashRequester.generate(ctx, rng=rng_for(5))
    with pytest.raises(ProtocolError, match="has 32 bytes, this prf uses 33"):
        req2.agree(KeyShare(ctx.round_id, bytes(31) + b"\x09"))


def test_sm3_transcript_is_sm3_of_the_same_layout() -> None:
    ctx = make_context(params=[("prf", "sm4-ecb-v1")], rng=rng_for(4))
    plain = make_context(rng=rng_for(4))
    gm, intl = Transcript(ctx), Transcript(plain)
    for t in (gm, intl):
        t.absorb("requester", "x", b"hello")
    # Same layout, other hash: recompute the GM digest with SM3 by hand.
    ctx_bytes = ctx.to_bytes()

    def sm3(data: bytes) -> bytes:
        return hashlib.new("sm3", data).digest()

    def u64(n: int) -> bytes:
        return n.to_bytes(8, "big")

    req = sm3(u64(1) + b"x" + u64(5) + b"hello")
    resp = sm3(b"")
    expected = sm3(
        b"xmatch-v1 transcript\x00"
        + u64(len(ctx_bytes))
        + ctx_bytes
        + b"requester"
        + u64(1)
        + req
        + b"responder"
        + u64(0)
        + resp
    )
    assert gm.digest() == expected
    assert len(intl.digest()) == 32 and intl.digest() != expected
