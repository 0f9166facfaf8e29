"""Published vectors: RFC 7748 (X25519) and RFC 9380 (curve25519 ELL2, RO and NU)."""

from __future__ import annotations

import numpy as np
import pytest

from psi.hazmat import hash_to_curve, x25519
from tests.utils import load_vectors, parse_key_value_blocks, parse_labelled_hex, parse_rfc_wrapped


def _row(hex_text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_text), dtype=np.uint8).reshape(1, 32)


@pytest.mark.parametrize(
    "vector", load_vectors("rfc7748/rfc7748.txt", parse_key_value_blocks), ids=lambda v: v["COUNT"]
)
def test_rfc7748_scalar_mult(vector: dict[str, str]) -> None:
    out = x25519.scalar_mult(bytes.fromhex(vector["INPUT_SCALAR"]), _row(vector["INPUT_U"]))
    assert out[0].tobytes().hex() == vector["OUTPUT_U"]


def test_rfc7748_iterations() -> None:
    expected = load_vectors("rfc7748/iterations.txt", parse_labelled_hex)
    k = u = (9).to_bytes(32, "little")
    for i in range(1, 1001):
        k, u = x25519.scalar_mult(k, np.frombuffer(u, np.uint8).reshape(1, 32))[0].tobytes(), k
        if i == 1:
            assert k.hex() == expected["After one iteration"]
    assert k.hex() == expected["After 1,000 iterations"]


def test_rfc7748_section_6_1() -> None:
    v = load_vectors("rfc7748/section6.1.txt", parse_labelled_hex)
    a, b = bytes.fromhex(v["Alice's private key, a"]), bytes.fromhex(v["Bob's private key, b"])
    nine = np.frombuffer((9).to_bytes(32, "little"), np.uint8).reshape(1, 32)
    assert x25519.scalar_mult(a, nine)[0].tobytes().hex() == v["Alice's public key, X25519(a, 9)"]
    assert x25519.scalar_mult(b, nine)[0].tobytes().hex() == v["Bob's public key, X25519(b, 9)"]
    k1 = x25519.scalar_mult(a, _row(v["Bob's public key, X25519(b, 9)"]))
    k2 = x25519.scalar_mult(b, _row(v["Alice's public key, X25519(a, 9)"]))
    assert k1[0].tobytes().hex() == k2[0].tobytes().hex() == v["Their shared secret, K"]


ELL2 = load_vectors("rfc9380/curve25519_XMD_SHA-512_ELL2_NU_.txt", parse_rfc_wrapped)


def test_rfc9380_file_complete() -> None:
    assert len(ELL2) == 4
    assert ELL2[3]["msg"] == "a512_" + "a" * 512


@pytest.mark.parametrize("vector", ELL2, ids=lambda v: v["msg"][:16] or "empty")
def test_rfc9380_curve25519_ell2_nu(vector: dict[str, str]) -> None:
    assert vector["suite"] == hash_to_curve.ELL2_SUITE
    dst, msg = vector["dst"].encode(), vector["msg"].encode()
    (u,) = hash_to_curve.hash_to_field(msg, dst)
    assert u == int(vector["u[0]"], 16)
    q = hash_to_curve.map_to_curve_elligator2(u)
    assert q == (int(vector["Q.x"], 16), int(vector["Q.y"], 16))
    p = (int(vector["P.x"], 16), int(vector["P.y"], 16))
    assert hash_to_curve.encode_to_curve(msg, dst) == p


ELL2_RO = load_vectors("rfc9380/curve25519_XMD_SHA-512_ELL2_RO_.txt", parse_rfc_wrapped)


def _point(vector: dict[str, str], name: str) -> tuple[int, int]:
    return int(vector[f"{name}.x"], 16), int(vector[f"{name}.y"], 16)


def test_rfc9380_ro_file_complete() -> None:
    assert len(ELL2_RO) == 4
    assert [v["msg"] for v in ELL2_RO[:3]] == ["", "abc", "abcdef0123456789"]
    assert ELL2_RO[3]["msg"] == "a512_" + "a" * 512
    assert all(v["dst"] == "QUUX-V01-CS02-with-" + v["suite"] for v in ELL2_RO)


@pytest.mark.parametrize("vector", ELL2_RO, ids=lambda v: v["msg"][:16] or "empty")
def test_rfc9380_curve25519_ell2_ro(vector: dict[str, str]) -> None:
    """RFC 9380 appendix J.4.1: hash_to_field (2 elements), both maps, Q0 + Q1, clear."""
    assert vector["suite"] == hash_to_curve.ELL2_RO_SUITE
    dst, msg = vector["dst"].encode(), vector["msg"].encode()
    u0, u1 = hash_to_curve.hash_to_field(msg, dst, 2)
    assert (u0, u1) == (int(vector["u[0]"], 16), int(vector["u[1]"], 16))
    q0 = hash_to_curve.map_to_curve_elligator2(u0)
    q1 = hash_to_curve.map_to_curve_elligator2(u1)
    assert (q0, q1) == (_point(vector, "Q0"), _point(vector, "Q1"))
    assert hash_to_curve.clear_cofactor(hash_to_curve.add_points(q0, q1)) == _point(vector, "P")
    assert hash_to_curve.hash_to_curve(msg, dst) == _point(vector, "P")


def test_point_addition_edge_cases() -> None:
    q = hash_to_curve.map_to_curve_elligator2(5)
    minus_q = (q[0], -q[1] % hash_to_curve.P)
    assert hash_to_curve.add_points(q, minus_q) is None
    assert hash_to_curve.add_points(q, None) == q == hash_to_curve.add_points(None, q)
    double = hash_to_curve.add_points(q, q)
    assert double is not None and hash_to_curve.add_points(double, minus_q) == q


def test_ro_suite_is_negotiable_and_differs_from_nu() -> None:
    assert hash_to_curve.ELL2_RO_SUITE == "curve25519_XMD:SHA-512_ELL2_RO_"
    assert hash_to_curve.ELL2_RO_SUITE in hash_to_curve.SUITES
    ids = np.arange(32, dtype=np.uint8).reshape(2, 16)
    ro = hash_to_curve.hash_to_u(hash_to_curve.ELL2_RO_SUITE, ids)
    nu = hash_to_curve.hash_to_u(hash_to_curve.ELL2_SUITE, ids)
    point = hash_to_curve.hash_to_curve(ids[0].tobytes())
    assert point is not None and ro[0].tobytes() == point[0].to_bytes(32, "little")
    assert not np.array_equal(ro, nu)


def test_ro_suite_round() -> None:
    from tests.test_psi_ecdh import ecdh_context, run_round
    from tests.test_psi_keyed_hash import ids_from_ints

    ctx = ecdh_context(suite=hash_to_curve.ELL2_RO_SUITE)
    assert ctx.param("suite") == "curve25519_XMD:SHA-512_ELL2_RO_"
    result, t_resp = run_round(ids_from_ints([1, 2, 3, 7]), ids_from_ints([3, 4, 7]), ctx=ctx)
    assert result.matched.tolist() == [2, 3] and result.transcript == t_resp


def test_ell2_points_blind_commutatively() -> None:
    # The u-coordinate of an encoded point is what X25519 consumes.
    point = hash_to_curve.encode_to_curve(b"abc", ELL2[1]["dst"].encode())
    assert point is not None
    u = np.frombuffer(point[0].to_bytes(32, "little"), np.uint8).reshape(1, 32)
    a, b = bytes([8] + [1] * 31), bytes([16] + [2] * 31)
    ab = x25519.scalar_mult(a, x25519.scalar_mult(b, u))
    ba = x25519.scalar_mult(b, x25519.scalar_mult(a, u))
    assert np.array_equal(ab, ba)
