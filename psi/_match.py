"""Sorted-array membership for fixed-width byte rows (tags, points).

Rows are ordered by their first 8 bytes as an unsigned integer (uniformly
random for AES tags and X25519 outputs, so ties are rare); every candidate
is then compared on the full row, so the result is exact for any input.

The sort is a plain ``np.sort`` of 64-bit words that carry the key's top
bits above the row index (``argsort`` costs about seven times as much on 3M
rows): the index comes back out of the low bits, and the truncated key
only widens the candidate ranges, which the full-row comparison settles.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _keys(rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    head = np.ascontiguousarray(rows[:, :8])
    return head.view(">u8").reshape(-1).astype(np.uint64)


def _packed_order(
    keys: npt.NDArray[np.uint64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], int]:
    """The order that sorts ``keys`` on their top bits, those sorted top bits, and the shift.

    Row ``i``'s word is ``(key >> shift) << shift | i``, with ``shift`` the bits
    an index needs; sorting the words sorts by truncated key, then index.
    """
    shift = max(1, (len(keys) - 1).bit_length())
    low = np.uint64((1 << shift) - 1)
    words = (keys >> np.uint64(shift)) << np.uint64(shift)
    words |= np.arange(len(keys), dtype=np.uint64)
    words.sort()
    order = (words & low).astype(np.int64)
    return order, words >> np.uint64(shift), shift


class SortedRows:
    """An (n, w) uint8 array prepared for repeated lookups."""

    def __init__(self, rows: npt.NDArray[np.uint8]) -> None:
        self.rows = rows
        self.order, self.sorted_keys, self._shift = _packed_order(_keys(rows))

    def lookup(
        self, queries: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """All pairs (query index, row index) whose rows are equal.

        Pairs come ordered by query index, then by row index within a query.
        """
        qkeys = _keys(queries) >> np.uint64(self._shift)
        # Searching with sorted queries walks the table in order: several
        # times faster than random probes into a large array. (Sorted on their
        # top bits only: searchsorted is exact for needles in any order.)
        qorder = _packed_order(qkeys << np.uint64(self._shift))[0]
        ordered = qkeys[qorder]
        left = np.empty(len(qkeys), dtype=np.int64)
        left[qorder] = np.searchsorted(self.sorted_keys, ordered, side="left")
        # Most queries are absent: search the right end only for those present.
        n = len(self.sorted_keys)
        counts = np.zeros(len(qkeys), dtype=np.int64)
        present = np.zeros(0, dtype=np.int64)
        if n:
            present = np.flatnonzero(self.sorted_keys[np.minimum(left, n - 1)] == qkeys)
        if len(present):
            right = np.searchsorted(self.sorted_keys, qkeys[present], side="right")
            counts[present] = right - left[present]
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
        # Candidates come by query, then row index (the words' low bits): sorted
        # already when the top bits tie; the lexsort keeps that order documented.
        ordering = np.lexsort((src, q_idx))
        return q_idx[ordering], src[ordering]
