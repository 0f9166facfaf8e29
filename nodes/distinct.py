"""Distinct-row counting for a streamed request: a repeated identity is refused."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from psi.errors import ProtocolError

_U64Pair = tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]
#: where a row's key starts, by row width: after the prefix byte of an SM2 point
_KEY_FROM = {33: 1}


def _overlap(level: _U64Pair, hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> bool:
    """Whether any (hi, lo) pair is in ``level`` (sorted by hi, then lo). Vectorized.

    Two searches, each O(n log L) for n new and L stored rows whatever the
    rows are: ``np.searchsorted`` finds each new row's run of equal ``hi``,
    then a segmented binary search, run for all rows at once, finds its
    ``lo`` within that run. Rows that share their first word (which the
    requester can choose: keyed-hash tags are its bytes, ecdh points are
    counted before they are validated) cost more search steps, never a
    pairwise comparison, and no array is longer than n.
    """
    shi, slo = level
    left = np.searchsorted(shi, hi, side="left")
    right = np.searchsorted(shi, hi, side="right")
    cand = np.flatnonzero(right > left)
    if cand.size == 0:
        return False
    # Lower bound of each lo in slo[start:end] (sorted there), all rows in step.
    start, end, want = left[cand], right[cand], lo[cand]
    last = len(slo) - 1
    for _ in range(int((end - start).max()).bit_length()):
        live = start < end
        mid = (start + end) >> 1
        above = live & (slo[np.minimum(mid, last)] < want)
        start = np.where(above, mid + 1, start)
        end = np.where(live & ~above, mid, end)
    hit = start < right[cand]
    return bool(np.any(slo[start[hit]] == want[hit]))


class DistinctRows:
    """The rows (tags or points) of one round so far; refuses one that repeats.

    Each row is keyed by its first 16 bytes as two uint64 columns: the whole
    tag in keyed-hash (AES is a permutation, so distinct identities give
    distinct tags), and 128 bits of a blinded point in ecdh, which also
    catches the same point sent with its unused top bit flipped; an SM2 point
    is keyed by its x (after the prefix byte), so that a point and its
    negation, the same element under the x-only suite, count as one. Rows are
    kept in sorted levels that merge as they grow (a log-structured merge),
    and each chunk is looked up in every level by binary search on both
    words (:func:`_overlap`). A round of n rows therefore costs O(n log² n)
    array work and 16 bytes per row whatever the rows are, also when the
    requester makes them share their first 8 bytes; no temporary array is
    longer than the chunk or the level, and no Python loop runs per row.
    """

    def __init__(self) -> None:
        self._levels: list[_U64Pair] = []
        self.count = 0

    def add(self, rows: npt.NDArray[np.uint8]) -> None:
        """Record the rows of one chunk.

        Raises:
            ProtocolError: a row repeats one of this chunk or of an earlier one.
        """
        n = int(rows.shape[0])
        if n == 0:
            return
        # an SM2 point (33 bytes, compressed) by its x alone: under the x-only SM2
        # suite P and -P (prefix 02 and 03) are the same element, so one person
        key = np.ascontiguousarray(rows[:, _KEY_FROM.get(rows.shape[1], 0) :][:, :16])
        key = key.view(np.uint64)
        order = np.lexsort((key[:, 1], key[:, 0]))
        hi, lo = key[order, 0], key[order, 1]
        if n > 1 and bool(np.any((hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1]))):
            raise ProtocolError("the query repeats an identity within one chunk")
        if any(_overlap(level, hi, lo) for level in self._levels):
            raise ProtocolError("the query repeats an identity sent in an earlier chunk")
        level: _U64Pair = (hi, lo)
        while self._levels and len(self._levels[-1][0]) <= len(level[0]):
            phi, plo = self._levels.pop()
            level = _merge_levels((phi, plo), level)
        self._levels.append(level)
        self.count += n


def _merge_levels(first: _U64Pair, second: _U64Pair) -> _U64Pair:
    """Two levels, each sorted by (hi, lo), merged into one.

    Why not ``lexsort`` of the concatenation: it sorts by ``lo`` first, a full
    O(n log n) pass over random words, and was the node's largest cost in a 1M
    ecdh round (about 2 s of 21). A stable sort by ``hi`` alone finds the two
    sorted runs (timsort) and merges them in about linear time; that order is
    the (hi, lo) order unless some ``hi`` repeats, which only a requester that
    chooses its rows' first word causes, and then the full sort runs.
    """
    mhi, mlo = np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]])
    order = np.argsort(mhi, kind="stable")
    shi = mhi[order]
    if len(shi) > 1 and bool(np.any(shi[1:] == shi[:-1])):
        order = np.lexsort((mlo, mhi))
        shi = mhi[order]
    return shi, mlo[order]
