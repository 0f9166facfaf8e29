"""The whole-buffer RFC 9380 path (shared inversions, gmpy2) gives the reference's points."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi.hazmat import hash_to_curve as h2c
from tests.utils import load_vectors, parse_rfc_wrapped

RO = load_vectors("rfc9380/curve25519_XMD_SHA-512_ELL2_RO_.txt", parse_rfc_wrapped)
NU = load_vectors("rfc9380/curve25519_XMD_SHA-512_ELL2_NU_.txt", parse_rfc_wrapped)


def _hex(vector: dict[str, str], name: str) -> int:
    return int(vector[name], 16)


def test_batch_maps_give_the_rfc9380_ro_points() -> None:
    u0 = [_hex(v, "u[0]") for v in RO]
    u1 = [_hex(v, "u[1]") for v in RO]
    q0, q1 = h2c._ell2_batch(u0), h2c._ell2_batch(u1)
    assert q0 == [(_hex(v, "Q0.x"), _hex(v, "Q0.y")) for v in RO]
    assert q1 == [(_hex(v, "Q1.x"), _hex(v, "Q1.y")) for v in RO]
    cleared = h2c._cleared_u(h2c._add_batch(q0, q1))
    assert cleared == b"".join(_hex(v, "P.x").to_bytes(32, "little") for v in RO)


def test_batch_x_only_path_gives_the_rfc9380_nu_points() -> None:
    xs, _, _ = h2c._ell2_x_batch([_hex(v, "u[0]") for v in NU])
    assert xs == [_hex(v, "Q.x") for v in NU]
    cleared = h2c._doubled_thrice_u([(x, 1) for x in xs])
    assert cleared == b"".join(_hex(v, "P.x").to_bytes(32, "little") for v in NU)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=12))
def test_hash_to_u_equals_the_reference_for_both_suites(messages: list[bytes]) -> None:
    rows = np.frombuffer(b"".join(messages), np.uint8).reshape(-1, 16)
    for suite, ref, dst in (
        (h2c.ELL2_RO_SUITE, h2c.hash_to_curve, h2c.ELL2_RO_DST),
        (h2c.ELL2_SUITE, h2c.encode_to_curve, h2c.ELL2_DST),
    ):
        expected = b"".join(h2c._u_bytes(ref(m, dst)) for m in messages)
        assert h2c.hash_to_u(suite, rows).tobytes() == expected


@pytest.mark.parametrize("u", [0, 1, 2, h2c.P - 1, (h2c.P - 1) // 2])
def test_edge_field_elements_map_as_the_reference(u: int) -> None:
    assert h2c._ell2_batch([u, 5]) == [
        h2c.map_to_curve_elligator2(u),
        h2c.map_to_curve_elligator2(5),
    ]


def test_equal_x_additions_and_infinity() -> None:
    q = h2c.map_to_curve_elligator2(5)
    minus_q = (q[0], -q[1] % h2c.P)
    r = h2c.map_to_curve_elligator2(7)
    sums = h2c._add_batch([q, q, r], [minus_q, q, q])
    assert sums == [None, h2c.add_points(q, q), h2c.add_points(r, q)]
    cleared = h2c._cleared_u(sums)
    expected = [h2c._u_bytes(h2c.clear_cofactor(s)) for s in sums]
    assert cleared == b"".join(expected)
    assert cleared[:32] == bytes(32)  # infinity becomes u = 0, which X25519 refuses


def test_batch_inverse_keeps_zero() -> None:
    values = [3, 0, h2c.P - 1, 12345]
    inv = h2c._batch_inverse(values)
    assert inv[1] == 0
    assert all(v * t % h2c.P == 1 for v, t in zip(values, inv, strict=True) if v)
