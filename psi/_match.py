"""Sorted-array membership for fixed-width byte rows (tags, points).

Rows are ordered by their first 8 bytes as an unsigned integer (uniformly
random for AES tags and X25519 outputs, so ties are rare); every candidate
is then compared on the full row, so the result is exact for any input.

The sort is a plain ``np.sort`` of 64-bit words that carry the key's top
bits above the row index (``argsort`` costs about seven times as much on 3M
rows): the index comes back out of the low bits, and the truncated key
only widens the candidate ranges, which the full-row comparison settles.

Lookups go through a directory of the sorted keys' top bits (about one row
per bucket): a query reads its bucket's bounds and the few keys in it, two
cache misses, where a binary search into 3M keys costs about twenty. Keys
that are not spread (a test's, an adversary's) would make buckets large; then
the lookup falls back to ``searchsorted``, exact either way.
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


def _spans(
    first: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Ranges ``first[i] .. first[i] + counts[i]`` laid end to end: (owner i, position)."""
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.repeat(first - starts, counts) + np.arange(total, dtype=np.int64)


class SortedRows:
    """An (n, w) uint8 array prepared for repeated lookups."""

    def __init__(self, rows: npt.NDArray[np.uint8]) -> None:
        self.rows = rows
        self.order, self.sorted_keys, self._shift = _packed_order(_keys(rows))
        # bucket b holds sorted_keys[directory[b]:directory[b + 1]]: those whose
        # top ``bits`` bits are b; 2**bits <= rows, so at most 8 bytes a row
        n = len(self.sorted_keys)
        self._bits = min(max(0, n.bit_length() - 1), 64 - self._shift)
        self._drop = np.uint64(64 - self._shift - self._bits)
        self._directory = np.zeros((1 << self._bits) + 1, dtype=np.int64)
        if n:
            buckets = (self.sorted_keys >> self._drop).astype(np.int64)
            counts = np.bincount(buckets, minlength=1 << self._bits)
            np.cumsum(counts, out=self._directory[1:])

    def lookup(
        self, queries: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """All pairs (query index, row index) whose rows are equal.

        Pairs come ordered by query index, then by row index within a query.
        """
        qkeys = _keys(queries) >> np.uint64(self._shift)
        found = self._bucketed(qkeys)
        if found is None:
            found = self._searched(qkeys)
        first, counts = found
        total = int(counts.sum())
        if total == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        q_idx, position = _spans(first, counts)
        src = self.order[position]
        same = np.all(self.rows[src] == queries[q_idx], axis=1)
        q_idx, src = q_idx[same], src[same]
        # Candidates come by query, then row index (the words' low bits): sorted
        # already when the top bits tie; the lexsort keeps that order documented.
        ordering = np.lexsort((src, q_idx))
        return q_idx[ordering], src[ordering]

    def _bucketed(
        self, qkeys: npt.NDArray[np.uint64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """Per query: the first sorted position of its key and how many rows have it,
        through the directory; None when the buckets are too full for that to pay."""
        bucket = qkeys >> self._drop
        low = self._directory[bucket]
        sizes = self._directory[bucket + np.uint64(1)] - low
        total = int(sizes.sum())
        if total > 4 * len(qkeys) + 64:  # keys not spread: binary search instead
            return None
        # every key of each query's bucket; the equal ones are a contiguous run
        owner, slot = _spans(low, sizes)
        equal = self.sorted_keys[slot] == qkeys[owner]
        owner, slot = owner[equal], slot[equal]
        counts = np.bincount(owner, minlength=len(qkeys)).astype(np.int64)
        first = np.zeros(len(qkeys), dtype=np.int64)
        # slots ascend within an owner: its first equal slot opens its run
        opens = np.ones(len(owner), dtype=bool)
        opens[1:] = owner[1:] != owner[:-1]
        first[owner[opens]] = slot[opens]
        return first, counts

    def _searched(
        self, qkeys: npt.NDArray[np.uint64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """What :meth:`_bucketed` gives, by binary search (any key distribution)."""
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
        return left, counts
