"""psi._match.SortedRows: exact pairs, in a fixed order, whatever the sort does with ties."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from psi._match import SortedRows, _keys


def reference(
    table: npt.NDArray[np.uint8], queries: npt.NDArray[np.uint8]
) -> list[tuple[int, int]]:
    """Every (query, row) pair with equal bytes, by query then row: the documented order."""
    return [
        (q, r)
        for q in range(len(queries))
        for r in range(len(table))
        if table[r].tobytes() == queries[q].tobytes()
    ]


def pairs(table: npt.NDArray[np.uint8], queries: npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
    q_idx, rows = SortedRows(table).lookup(queries)
    return list(zip(q_idx.tolist(), rows.tolist(), strict=True))


def test_duplicate_tags_map_to_all_rows_in_row_order() -> None:
    # A node's set may hold one identity on many rows (several records per
    # person). The sort of the table is unstable, so equal keys come out of
    # it in any order; lookup must still list each tag's rows ascending.
    rng = np.random.default_rng(7)
    table = rng.integers(0, 256, size=(3000, 16), dtype=np.uint8)
    dup_a, dup_b = table[11].copy(), table[12].copy()
    rows_a = rng.choice(np.arange(20, 3000), size=400, replace=False)
    rows_b = rng.choice(np.setdiff1d(np.arange(20, 3000), rows_a), size=300, replace=False)
    table[rows_a] = dup_a
    table[rows_b] = dup_b
    # same first 8 bytes as dup_a, different tail: ties on the sort key, no match
    near = dup_a.copy()
    near[15] ^= 1
    table[13] = near
    queries = np.stack([dup_b, near, dup_a, dup_b])
    got = pairs(table, queries)
    expected_a = sorted([11, *rows_a.tolist()])
    expected_b = sorted([12, *rows_b.tolist()])
    assert got == (
        [(0, r) for r in expected_b]
        + [(1, 13)]
        + [(2, r) for r in expected_a]
        + [(3, r) for r in expected_b]
    )
    assert got == reference(table, queries)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 5), max_size=80),
    st.lists(st.integers(0, 7), max_size=20),
)
def test_lookup_equals_brute_force(table_keys: list[int], query_keys: list[int]) -> None:
    # Few distinct values (many ties); rows share their first 8 bytes in pairs
    # of values so that the full-row comparison matters too.
    def rows(keys: list[int]) -> npt.NDArray[np.uint8]:
        out = np.zeros((len(keys), 16), dtype=np.uint8)
        for i, k in enumerate(keys):
            out[i, 0] = k // 2
            out[i, 15] = k % 2
        return out

    table, queries = rows(table_keys), rows(query_keys)
    assert pairs(table, queries) == reference(table, queries)


def by_bytes(table: npt.NDArray[np.uint8], queries: npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
    """The reference for large inputs: rows grouped by their bytes."""
    where: dict[bytes, list[int]] = {}
    for r, row in enumerate(table):
        where.setdefault(row.tobytes(), []).append(r)
    return [(q, r) for q, row in enumerate(queries) for r in where.get(row.tobytes(), [])]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 5000), st.integers(0, 3000), st.integers(0, 2**32 - 1))
def test_random_tags_go_through_the_directory(n: int, m: int, seed: int) -> None:
    """Spread keys (AES tags, X25519 outputs) take the bucket directory, and it is exact:
    present and absent queries, duplicate rows, a row equal on its 8-byte head only."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    if n > 2:
        table[1] = table[0]  # one person, two records
        table[2, :8] = table[0, :8]  # same head, other tail
    picked = table[rng.integers(0, n, size=m // 2)] if n else table[:0]
    queries = np.concatenate(
        [picked, rng.integers(0, 256, size=(m - len(picked), 16), dtype=np.uint8)]
    )
    sorted_rows = SortedRows(table)
    assert sorted_rows._bucketed(_keys(queries) >> np.uint64(sorted_rows._shift)) is not None
    assert pairs(table, queries) == by_bytes(table, queries)


def test_keys_that_are_not_spread_fall_back_to_binary_search() -> None:
    """Every row in one bucket (equal heads): the directory would compare every query with
    every row, so the lookup searches instead, with the same exact answer."""
    rng = np.random.default_rng(3)
    table = np.zeros((4000, 16), dtype=np.uint8)
    table[:, 8:] = rng.integers(0, 256, size=(4000, 8), dtype=np.uint8)
    queries = np.concatenate([table[::7], np.zeros((50, 16), dtype=np.uint8)])
    sorted_rows = SortedRows(table)
    assert sorted_rows._bucketed(_keys(queries) >> np.uint64(sorted_rows._shift)) is None
    assert pairs(table, queries) == by_bytes(table, queries)
