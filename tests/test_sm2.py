"""The SM2 ecdh suite SM2_XMD:SM3_SSWU_RO_: curve, Z, our published vectors, backends, rounds."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import ProtocolError
from psi.hazmat import sm2, sm2_field, x25519
from psi.identifiers import encode_identities
from psi.messages import PointChunk
from tests import sm2_reference as ref
from tests.test_psi_ecdh import ecdh_context, roles, run_round
from tests.test_psi_keyed_hash import ids_from_ints

VECTORS = Path(__file__).parent / "vectors" / "gm" / "SM2_XMD_SM3_SSWU_RO_.json"
SUITE = sm2.SUITE


def test_curve_parameters() -> None:
    # GB/T 32918.5: the generator is on the curve and has order n.
    assert (sm2.GY**2 - sm2.GX**3 - sm2.A * sm2.GX - sm2.B) % sm2.P == 0
    g = (sm2.GX, sm2.GY)
    assert ref.mult(sm2.N, g) is None
    assert ref.mult(sm2.N - 1, g) == (sm2.GX, -sm2.GY % sm2.P)
    assert sm2.P % 4 == 3 and sm2.A == ref.A and sm2.B == ref.B and sm2.N == ref.N


def _polymulmod(f: list[int], g: list[int], c0: int, c1: int) -> list[int]:
    """f * g modulo the monic cubic x^3 + c1*x + c0 over GF(p) (coefficients low to high)."""
    p = sm2.P
    out = [0] * (len(f) + len(g) - 1)
    for i, a in enumerate(f):
        for j, b in enumerate(g):
            out[i + j] = (out[i + j] + a * b) % p
    while len(out) > 3:
        top = out.pop()
        k = len(out) - 3  # x^(k+3) = -x^k (c1*x + c0)
        out[k] = (out[k] - top * c0) % p
        out[k + 1] = (out[k + 1] - top * c1) % p
    return out + [0] * (3 - len(out))


def _cubic_has_root(c0: int, c1: int) -> bool:
    """Whether x^3 + c1*x + c0 has a root in GF(p): gcd(x^p - x, f) != 1."""
    p = sm2.P
    result, base, e = [1], [0, 1], p
    while e:
        if e & 1:
            result = _polymulmod(result, base, c0, c1)
        base = _polymulmod(base, base, c0, c1)
        e >>= 1
    result[1] = (result[1] - 1) % p

    def trim(a: list[int]) -> list[int]:
        while a and a[-1] == 0:
            a.pop()
        return a

    a, b = trim([c0, c1, 0, 1]), trim(result[:])
    while b:
        while len(a) >= len(b):
            coef = a[-1] * pow(b[-1], p - 2, p) % p
            shift = len(a) - len(b)
            for i, bi in enumerate(b):
                a[shift + i] = (a[shift + i] - coef * bi) % p
            a = trim(a)
            if not a:
                break
        a, b = b, a
    return len(a) > 1


def test_z_is_what_rfc9380_appendix_h2_selects() -> None:
    """find_z_sswu (RFC 9380 appendix H.2): first of 1, -1, 2, -2, ... meeting the criteria."""
    p, a, b = sm2.P, sm2.A, sm2.B

    def g(x: int) -> int:
        return (x**3 + a * x + b) % p

    def good(z: int) -> bool:
        return (
            not ref.is_square(z)  # criterion 1: non-square
            and z != p - 1  # criterion 2: not -1
            and not _cubic_has_root((b - z) % p, a)  # criterion 3: g(x) - Z irreducible
            and ref.is_square(g(b * pow(z * a, p - 2, p) % p))  # criterion 4
        )

    found = next(z for ctr in range(1, 100) for z in (ctr % p, -ctr % p) if good(z))
    assert found == sm2.Z == p - 9


def test_our_vectors_two_code_paths() -> None:
    doc = json.loads(VECTORS.read_text())
    assert doc["suite"] == SUITE and doc["dst"].encode() == sm2.DST
    msgs = [bytes.fromhex(v["msg"]) for v in doc["vectors"]]
    batched = sm2.hash_to_curve_batch(msgs)
    for vector, msg, point in zip(doc["vectors"], msgs, batched, strict=True):
        u, q0, q1, expected = ref.hash_to_curve(msg, sm2.DST)
        assert [f"{x:064x}" for x in u] == [vector["u0"], vector["u1"]]
        assert sm2.hash_to_field(msg) == u
        assert f"{q0[0]:064x}" == vector["Q0.x"] and f"{q0[1]:064x}" == vector["Q0.y"]
        assert f"{q1[0]:064x}" == vector["Q1.x"] and f"{q1[1]:064x}" == vector["Q1.y"]
        assert expected is not None and point == expected
        assert (f"{point[0]:064x}", f"{point[1]:064x}") == (vector["P.x"], vector["P.y"])


@settings(max_examples=10, deadline=None)
@given(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=6))
def test_batched_map_equals_reference(msgs: list[bytes]) -> None:
    assert sm2.hash_to_curve_batch(msgs) == [ref.hash_to_curve(m, sm2.DST)[3] for m in msgs]


def test_expand_message_xmd_lengths() -> None:
    for n in (1, 32, 33, 96, 255):
        assert sm2.expand_message_xmd_sm3(b"abc", sm2.DST, n) == ref.expand_message_xmd(
            b"abc", sm2.DST, n
        )
    with pytest.raises(ValueError, match="too large"):
        sm2.expand_message_xmd_sm3(b"", sm2.DST, 255 * 32 + 1)


def _crypto_mb_available() -> bool:
    return x25519.crypto_mb_library() is not None


def test_backends_agree_with_reference() -> None:
    k = sm2.generate_scalar(os.urandom)
    points = sm2.hash_to_curve_batch([bytes([i]) * 16 for i in range(11)])
    plain = [p for p in points if p is not None]
    expected = [ref.mult(int.from_bytes(k, "big"), p) for p in plain[:3]]
    fallback = sm2.mult_points(k, plain, backend="gmpy2")
    assert fallback[:3] == [e[0] for e in expected if e is not None]
    if not _crypto_mb_available():
        pytest.skip("libcrypto_mb not usable on this CPU: only the fallback is checked")
    assert sm2.mult_points(k, plain, backend="crypto-mb") == fallback


def test_commutative_x_only_blinding() -> None:
    """x(b * (a*P)) == x(a * (b*P)) though each side sends the even-y representative."""
    a, b = sm2.generate_scalar(), sm2.generate_scalar()
    msgs = b"".join(bytes([i]) * 16 for i in range(20))
    a_p, bad = sm2.hash_mult_buffer(a, msgs)
    b_p, bad2 = sm2.hash_mult_buffer(b, msgs)
    assert bad == bad2 == -1
    assert set(a_p[::33]) == {2}
    assert sm2.mult_buffer(b, a_p) == sm2.mult_buffer(a, b_p)


def test_decompress_refuses_bad_points_by_position() -> None:
    good = sm2.compress([sm2.GX])
    not_on_curve = next(x for x in range(1, 50) if not ref.is_square(x**3 + ref.A * x + ref.B))
    cases = {
        "prefix 04": b"\x04" + good[1:],
        "identity": b"\x00" * 33,
        "x = p": b"\x02" + sm2.P.to_bytes(32, "big"),
        "off curve": b"\x03" + not_on_curve.to_bytes(32, "big"),
    }
    for bad in cases.values():
        assert sm2.decompress(good * 2 + bad + good) == ([], 2)
        assert sm2.first_bad_point(good * 2 + bad + good) == 2
        assert sm2.mult_buffer(sm2.generate_scalar(), good + bad) == (b"", 1)
    points, bad_at = sm2.decompress(good + b"\x03" + good[1:])
    assert bad_at == -1 and points == [(sm2.GX, sm2.GY), (sm2.GX, sm2.P - sm2.GY)]


def test_first_bad_point_is_the_smallest_position_of_any_kind() -> None:
    """The checks run as separate passes (prefixes, x < p, roots): the lowest index wins."""
    good = sm2.compress([sm2.GX])
    not_on_curve = next(x for x in range(1, 50) if not ref.is_square(x**3 + ref.A * x + ref.B))
    off = b"\x02" + not_on_curve.to_bytes(32, "big")
    big = b"\x02" + sm2.P.to_bytes(32, "big")
    prefix = b"\x05" + good[1:]
    for buf, at in [
        (good + off + big + prefix, 1),
        (good + big + off + prefix, 1),
        (good + good + prefix + off, 2),
        (off + prefix, 0),
        (good + big, 1),
    ]:
        assert sm2.decompress(buf) == ([], at)
        assert sm2.first_bad_point(buf) == at
        assert sm2.mult_buffer(sm2.generate_scalar(), buf) == (b"", at)


_field_values = st.integers(min_value=0, max_value=sm2.P - 1)


@settings(max_examples=30, deadline=None)
@given(st.lists(_field_values, min_size=0, max_size=20))
def test_square_root_backends_give_the_same_values(values: list[int]) -> None:
    """libippcp's ippsGFpExp and gmpy2.powmod: the same v^((p+1)/4), squares or not."""
    expected = [pow(v, (sm2.P + 1) // 4, sm2.P) for v in values]
    assert sm2_field.sqrt_candidates(values, backend="gmpy2") == expected
    if sm2_field.backend() != "ippcp":
        pytest.skip("libippcp cannot be loaded here: only gmpy2 is checked")
    assert sm2_field.sqrt_candidates(values, backend="ippcp") == expected
    squares = [v * v % sm2.P for v in values]
    roots = sm2_field.sqrt_candidates(squares, backend="ippcp")
    assert [r * r % sm2.P for r in roots] == squares


def test_square_roots_from_many_threads() -> None:
    """libippcp's states are per thread: shared ones gave wrong roots under contention (about
    one in six here), which refused valid key shares in concurrent sub-rounds."""
    if sm2_field.backend() != "ippcp":
        pytest.skip("libippcp cannot be loaded here: only gmpy2 is checked")
    values = [int.from_bytes(os.urandom(32), "big") % sm2.P for _ in range(100)]
    squares = [v * v % sm2.P for v in values]

    def wrong(_: int) -> int:
        roots = sm2_field.sqrt_candidates(squares, backend="ippcp")
        return sum(r * r % sm2.P != s for r, s in zip(roots, squares, strict=True))

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert sum(pool.map(wrong, range(30))) == 0


def test_square_root_backend_names() -> None:
    with pytest.raises(ValueError, match="unknown SM2 field backend"):
        sm2_field.sqrt_candidates([4], backend="openssl")


@settings(max_examples=20, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=8), st.binary(max_size=64))
def test_batched_hash_to_field_equals_one_by_one(msgs: list[bytes], dst: bytes) -> None:
    """hashlib's SM3 over the buffer gives what cryptography's SM3 gives per message."""
    batch = sm2_field.hash_to_field_batch(msgs, dst)
    if batch is None:
        pytest.skip("this OpenSSL has no SM3 in hashlib")
    assert [list(pair) for pair in zip(*batch, strict=True)] == [
        sm2.hash_to_field(m, dst) for m in msgs
    ]


def test_buffer_products_equal_the_point_products() -> None:
    """mult_buffer and hash_mult_buffer (bytes straight to the library) against mult_points."""
    k = sm2.generate_scalar()
    msgs = [bytes([i, 7]) * 8 for i in range(19)]
    points = [p for p in sm2.hash_to_curve_batch(msgs) if p is not None]
    blinded, bad = sm2.hash_mult_buffer(k, b"".join(msgs))
    assert bad == -1 and blinded == sm2.compress(sm2.mult_points(k, points))
    odd = b"".join(b"\x03" + p[1:] for p in (blinded[i : i + 33] for i in range(0, 33 * 19, 33)))
    again, bad = sm2.mult_buffer(k, odd)
    decoded, _ = sm2.decompress(odd)
    assert bad == -1 and again == sm2.compress(sm2.mult_points(k, decoded))
    assert again == sm2.mult_buffer(k, blinded)[0]


def test_scalar_range() -> None:
    draws = iter([b"\x00" * 32, b"\xff" * 32, sm2.N.to_bytes(32, "big"), (5).to_bytes(32, "big")])
    assert sm2.generate_scalar(lambda n: next(draws)) == (5).to_bytes(32, "big")


# --- the suite in ecdh rounds -------------------------------------------------------------


def test_sm2_round_known_overlap() -> None:
    ctx = ecdh_context(suite=SUITE)
    result, t_resp = run_round(ids_from_ints([1, 2, 3, 2]), ids_from_ints([2, 9]), ctx=ctx)
    assert result.matched.tolist() == [1, 3] and result.transcript == t_resp


@settings(max_examples=8, deadline=None)
@given(
    st.lists(st.integers(0, 30), max_size=12),
    st.lists(st.integers(0, 30), max_size=12),
    st.integers(1, 6),
)
def test_sm2_psi_equals_plain_intersection(
    roster: list[int], match_set: list[int], chunk: int
) -> None:
    ctx = ecdh_context(suite=SUITE)
    result, t_resp = run_round(
        ids_from_ints(roster), ids_from_ints(match_set), chunk=chunk, ctx=ctx
    )
    assert result.matched.tolist() == [i for i, v in enumerate(roster) if v in set(match_set)]
    assert result.transcript == t_resp


def test_sm2_chunks_are_33_byte_points_with_own_types() -> None:
    ctx = ecdh_context(suite=SUITE)
    req, resp = roles(ctx)
    chunk = req.blind(encode_identities(ids_from_ints([1, 2])))
    wire = chunk.to_bytes()
    assert chunk.width == 33 and wire[3] == 0x14 and len(wire) == 28 + 66
    assert PointChunk.from_bytes(wire, stage="blinded") == chunk
    with pytest.raises(ProtocolError, match="multiple of 33"):
        PointChunk.from_bytes(wire[:-5])
    x_ctx = ecdh_context()
    x_req, _ = roles(x_ctx)
    x_chunk = x_req.blind(encode_identities(ids_from_ints([1])))
    with pytest.raises(ProtocolError, match="32-byte points; suite SM2_XMD:SM3_SSWU_RO_ uses 33"):
        resp.reblind(PointChunk(ctx.round_id, 0, "blinded", x_chunk.points))


def test_sm2_bad_point_named_by_position_only() -> None:
    ctx = ecdh_context(suite=SUITE)
    req, resp = roles(ctx)
    points = np.frombuffer(sm2.compress([sm2.GX] * 4), np.uint8).reshape(4, 33).copy()
    points[3, 0] = 0x04
    with pytest.raises(ProtocolError) as err:
        resp.reblind(PointChunk(ctx.round_id, 0, "blinded", points))
    assert str(err.value) == "blinded chunk 0: point 3 is not a point of the SM2 curve"
    with pytest.raises(ProtocolError, match="set chunk 0: point 3 is not a point"):
        req.receive_responder_set(PointChunk(ctx.round_id, 0, "set", points))
