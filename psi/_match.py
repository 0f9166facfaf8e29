"""Sorted-array membership for fixed-width byte rows (tags, points).

Rows are ordered by their first 8 bytes as an unsigned integer (uniformly
random for AES tags and X25519 outputs, so ties are rare); every candidate
is then compared on the full row, so the result is exact for any input.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _keys(rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    head = np.ascontiguousarray(rows[:, :8])
    return head.view(">u8").reshape(-1).astype(np.uint64)


class SortedRows:
    """An (n, w) uint8 array prepared for repeated lookups."""

    def __init__(self, rows: npt.NDArray[np.uint8]) -> None:
        self.rows = rows
        keys = _keys(rows)
        # Unstable sort (about twice as fast): rows with equal keys come out in any
        # order. lookup() re-sorts its pairs, which keeps its documented order
        # (tests/test_psi_match.py checks that with many duplicate rows).
        self.order = np.argsort(keys).astype(np.int64)
        self.sorted_keys = keys[self.order]

    def lookup(
        self, queries: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """All pairs (query index, row index) whose rows are equal.

        Pairs come ordered by query index, then by row index within a query.
        """
        qkeys = _keys(queries)
        # Searching with sorted queries walks the table in order: several
        # times faster than random probes into a large array.
        qorder = np.argsort(qkeys)
        ordered = qkeys[qorder]
        left = np.empty(len(qkeys), dtype=np.int64)
        right = np.empty(len(qkeys), dtype=np.int64)
        left[qorder] = np.searchsorted(self.sorted_keys, ordered, side="left")
        right[qorder] = np.searchsorted(self.sorted_keys, ordered, side="right")
        counts = right - left
        total = int(counts.sum())
        if total == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        q_idx = np.repeat(np.arange(len(queries), dtype=np.int64), counts)
        first = np.cumsum(counts) - counts
        within = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
        src = self.order[np.repeat(left, counts) + within]
        same = np.all(self.rows[src] == queries[q_idx], axis=1)
        q_idx, src = q_idx[same], src[same]
        # Equal keys may come in any row order from the sort: re-sort the pairs.
        ordering = np.lexsort((src, q_idx))
        return q_idx[ordering], src[ordering]
