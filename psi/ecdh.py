"""Protocol ``ecdh``: commutative Diffie-Hellman PSI over X25519 (protocols.md).

Steps, with per-round secret scalars a (requester) and b (responder):

1. The requester sends ``a*H(x)`` for each roster identity x, in the order it
   passes them (:meth:`EcdhRequester.blind`, stage ``blinded``); the order
   should carry no meaning (the coordinator shuffles its roster each round).
2. The responder returns ``b*(a*H(x))`` in the same order
   (:meth:`EcdhResponder.reblind`, stage ``reblinded``, same ``seq``).
3. The responder sends ``b*H(y)`` for each y in its match set, deduplicated,
   padded to a size class with hashes of random blocks and shuffled
   (:meth:`EcdhResponder.set_chunks`, stage ``set``), then declares the total
   (:attr:`EcdhResponder.set_size`, given to
   :meth:`EcdhRequester.receive_responder_done`). A requester that learned
   the size up front (the node's ``RoundAccept``) passes it to
   :meth:`EcdhRequester.expect_responder_set` and then refuses any set point
   beyond it before doing any group operation on it.
4. The requester raises those to a and intersects (:meth:`EcdhRequester.finish`).

H is the round's ``suite`` (see :mod:`psi.hazmat.hash_to_curve`). The
requester learns which roster entries are in the set and the padded set size;
the responder learns |roster| (and which roster entries are equal to each
other; deduplicate the roster first). Membership is all this mode returns.

Size classes: :func:`size_class` pads to at least 1024, then to the next of
1024 * 1.25^k (rounded up), so the exact size is hidden within 25 %.

Sets larger than memory: :meth:`EcdhResponder.load_buckets` takes a set that
the caller has split into buckets with :func:`bucket_of` (a keyed function,
secret to the responder) and reads the buckets one after the other while
the set is sent, the next one prepared while the current one is multiplied.
Each bucket is deduplicated, padded and shuffled on its own; the padding of
the whole set is that of the unbucketed set, spread over the buckets, and
chunks run across bucket boundaries, so the requester receives the same
messages as for a set held in memory (their timing is not part of that
promise: see docs/threat-model.md). The requester, given its
``query_size``, intersects each set chunk as it arrives once its own
reblinded roster is complete, so it keeps the roster, not the set.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from psi._ecdh_core import (
    _PAD_KIND,
    _U64,
    BUCKET_KEY_SIZE,
    SUITES,
    X25519_BACKEND_ENV,
    _check_identities,
    _EcdhRole,
    _generate_scalar,
    _strictly_ascending,
    bucket_of,
    distinct_identities,
    ec_ready,
    size_class,
    use_x25519_backend,
)
from psi._match import SortedRows
from psi.context import RoundContext
from psi.errors import AlreadyUsed, ProtocolError
from psi.hazmat import sm2, x25519
from psi.messages import MAX_POINTS_PER_CHUNK, PointChunk

__all__ = [
    "BUCKET_KEY_SIZE",
    "SUITES",
    "X25519_BACKEND_ENV",
    "EcdhRequester",
    "EcdhResponder",
    "EcdhResult",
    "bucket_of",
    "distinct_identities",
    "ec_ready",
    "size_class",
    "use_x25519_backend",
]


@dataclass(frozen=True, eq=False)
class EcdhResult:
    """What the requester learns from an ``ecdh`` round.

    ``matched``: ascending indices into the requester's blinded identities
    (in :meth:`EcdhRequester.blind` call order) that are in the responder's
    set; ``responder_set_size``: the padded set size; ``transcript``: the
    32-byte transcript digest.
    """

    matched: npt.NDArray[np.int64]
    responder_set_size: int
    transcript: bytes


class EcdhRequester(_EcdhRole):
    """The coordinator's side of an ``ecdh`` round.

    With ``query_size`` (the number of identities it will blind), the
    requester knows when its reblinded roster is complete; from then on it
    intersects each set chunk as it arrives, so its memory is that of the
    roster whatever the size of the responder's set. Without it, set chunks
    are kept until the responder declares its set complete.
    """

    def __init__(
        self,
        context: RoundContext,
        scalar: bytes,
        executor: concurrent.futures.Executor | None = None,
        *,
        query_size: int | None = None,
    ) -> None:
        super().__init__(context, scalar, executor)
        if query_size is not None and (
            not isinstance(query_size, int) or isinstance(query_size, bool) or query_size < 0
        ):
            raise ValueError("query_size must be a non-negative integer")
        self._query_size = query_size
        self._blinded_counts: list[int] = []
        self._blinded_total = 0
        self._reblinded: list[npt.NDArray[np.uint8]] = []
        self._reblinded_chunks = 0
        self._reblinded_total = 0
        # a*b*H(y) that arrived before the reblinded roster was complete; after
        # that, each set chunk is intersected on arrival and dropped.
        self._pending: list[npt.NDArray[np.uint8]] = []
        # the last set chunk, being multiplied in the pool (see receive_responder_set)
        self._in_flight: Callable[[], npt.NDArray[np.uint8]] | None = None
        self._roster: SortedRows | None = None
        self._hits: list[npt.NDArray[np.int64]] = []
        self._set_chunks = 0
        self._set_received = 0
        self._set_declared: int | None = None
        self._done_total: int | None = None
        if query_size == 0:
            self._roster_complete()  # nothing to wait for

    @classmethod
    def generate(
        cls,
        context: RoundContext,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        executor: concurrent.futures.Executor | None = None,
        query_size: int | None = None,
    ) -> EcdhRequester:
        """A requester with a fresh secret scalar from ``rng``.

        ``executor`` (e.g. a process pool) runs the batch group operations;
        ``query_size`` is the number of identities that will be blinded (see
        the class).

        Raises:
            ProtocolError: the context is not an ecdh round or names an
                unknown ``suite``.
            ValueError: ``query_size`` is negative.
        """
        return cls(context, _generate_scalar(context, rng), executor, query_size=query_size)

    def blind(self, identities: npt.NDArray[np.uint8]) -> PointChunk:
        """``a*H(x)`` for the next batch of encoded identities, order kept.

        Raises:
            ProtocolError: the responder already declared its set complete,
                or the batch takes the query past ``query_size``.
            AlreadyUsed: the round has finished.
            ValueError: ``identities`` is not an (n, 16) uint8 array.
        """
        self._check_open()
        if self._done_total is not None:
            raise ProtocolError("cannot blind after the responder finished its set")
        ids = _check_identities(identities)
        if len(ids) > MAX_POINTS_PER_CHUNK:
            raise ProtocolError(f"at most {MAX_POINTS_PER_CHUNK} identities per chunk")
        if self._query_size is not None and self._blinded_total + len(ids) > self._query_size:
            raise ProtocolError(f"more identities than the query size ({self._query_size})")
        seq = len(self._blinded_counts)
        points = self._hash_mult(ids, f"blinded chunk {seq}")
        chunk = PointChunk(round_id=self._context.round_id, seq=seq, stage="blinded", points=points)
        self._transcript.absorb("requester", "blinded", chunk.to_bytes())
        self._blinded_total += len(ids)
        self._blinded_counts.append(len(ids))
        return chunk

    def receive_reblinded(self, chunk: PointChunk) -> None:
        """Store ``b*a*H(x)`` answering the blinded chunk with the same ``seq``.

        Raises:
            ProtocolError: wrong stage or round, out of order, an answer to a
                chunk never sent, or a different number of points.
            AlreadyUsed: the round has finished.
        """
        self._check_open()
        seq = self._reblinded_chunks
        self._check_chunk(chunk, "reblinded", seq)
        if seq >= len(self._blinded_counts):
            raise ProtocolError("reblinded chunk answers a chunk that was never sent")
        if len(chunk) != self._blinded_counts[seq]:
            raise ProtocolError(
                f"reblinded chunk {seq} has {len(chunk)} points, "
                f"expected {self._blinded_counts[seq]}"
            )
        self._transcript.absorb("responder", "reblinded", chunk.to_bytes())
        if self._sm2:
            bad = sm2.first_bad_point(chunk.points.tobytes())
            if bad >= 0:
                raise ProtocolError(f"reblinded chunk {seq}: point {bad} is not on the SM2 curve")
        self._reblinded.append(chunk.points)
        self._reblinded_chunks += 1
        self._reblinded_total += len(chunk)
        if self._reblinded_total == self._query_size:
            self._roster_complete()

    def _roster_complete(self) -> None:
        """Index the reblinded roster and intersect the set points that waited for it."""
        mine = (
            np.concatenate(self._reblinded)
            if self._reblinded
            else np.zeros((0, self._width), dtype=np.uint8)
        )
        self._reblinded = []
        self._roster = SortedRows(mine)
        pending, self._pending = self._pending, []
        for points in pending:
            self._intersect(points)

    def _intersect(self, points: npt.NDArray[np.uint8]) -> None:
        assert self._roster is not None
        _, roster_idx = self._roster.lookup(points)
        if len(roster_idx):
            self._hits.append(roster_idx)

    def expect_responder_set(self, size: int) -> None:
        """Bound the responder's set to the ``size`` it announced up front.

        Call it before the first set chunk (the coordinator does, with the
        node's ``RoundAccept.set_size``). From then on
        :meth:`receive_responder_set` refuses a chunk that would take the
        total past ``size`` before raising any of its points to ``a``, and
        :meth:`receive_responder_done` refuses any total but ``size``. So a
        responder cannot make the requester compute without bound.

        Raises:
            ProtocolError: ``size`` is not a non-negative integer, or set
                chunks were already received.
            AlreadyUsed: called twice, or the round has finished.
        """
        self._check_open()
        if self._set_declared is not None:
            raise AlreadyUsed("the responder's set size was already announced")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError("the announced set size must be a non-negative integer")
        if self._set_received or self._done_total is not None:
            raise ProtocolError("the set size must be announced before the first set chunk")
        self._set_declared = size

    def receive_responder_set(self, chunk: PointChunk) -> None:
        """Raise the next chunk of the responder's set, ``b*H(y)``, to ``a``.

        Raises:
            ProtocolError: wrong stage or round, out of order, after the
                responder declared its set complete, more points than the
                size announced through :meth:`expect_responder_set` (checked
                before any group operation), or a low-order point (the
                message names the chunk and position; with an executor, the
                chunk is checked when the next one arrives or at
                :meth:`receive_responder_done`).
            AlreadyUsed: the round has finished.
        """
        self._check_open()
        if self._done_total is not None:
            raise ProtocolError("set chunk after the responder declared its set complete")
        seq = self._set_chunks
        self._check_chunk(chunk, "set", seq)
        if self._set_declared is not None and self._set_received + len(chunk) > self._set_declared:
            raise ProtocolError(
                f"set chunk {seq} takes the responder's set past the {self._set_declared} "
                "points it announced"
            )
        self._transcript.absorb("responder", "set", chunk.to_bytes())
        if self._executor is None:
            self._take(self._mult(chunk.points, f"set chunk {seq}"))
            self._set_chunks += 1
            self._set_received += len(chunk)
            return
        started = self._mult_started(chunk.points, f"set chunk {seq}")
        self._set_chunks += 1
        self._set_received += len(chunk)
        # With a pool, this chunk's points are multiplied while the caller receives the
        # next one; the previous chunk is collected now (a low-order point in it is
        # reported here, or by receive_responder_done for the last chunk).
        previous, self._in_flight = self._in_flight, started
        if previous is not None:
            self._take(previous())

    def _take(self, points: npt.NDArray[np.uint8]) -> None:
        if self._roster is not None:
            self._intersect(points)
        else:
            self._pending.append(points)

    def _mult_started(
        self, points: npt.NDArray[np.uint8], what: str
    ) -> Callable[[], npt.NDArray[np.uint8]]:
        if self._scalar is None:
            raise AlreadyUsed("the round scalar is gone")
        arr = np.ascontiguousarray(points)
        # suite dispatch, as in _mult
        mult, flaw = (
            (sm2.mult_buffer, "is not a point of the SM2 curve")
            if self._sm2
            else (x25519.mult_buffer, "is a low-order point")
        )
        join = x25519.split_submit(mult, self._scalar, arr.tobytes(), self._width, self._executor)

        def result() -> npt.NDArray[np.uint8]:
            out, bad = join()
            if bad >= 0:
                raise ProtocolError(f"{what}: point {bad} {flaw}")
            return np.frombuffer(out, dtype=np.uint8).reshape(-1, self._width).copy()

        return result

    def receive_responder_done(self, total: int) -> None:
        """The responder declares its set complete with ``total`` points.

        Raises:
            ProtocolError: ``total`` differs from the points received or from
                the size announced through :meth:`expect_responder_set`, some
                blinded chunk has not been answered, or (with an executor) the
                last set chunk has a low-order point.
            AlreadyUsed: called twice, or the round has finished.
        """
        self._check_open()
        if self._done_total is not None:
            raise AlreadyUsed("responder already declared its set complete")
        previous, self._in_flight = self._in_flight, None
        if previous is not None:
            self._take(previous())
        if self._set_declared is not None and total != self._set_declared:
            raise ProtocolError(
                f"responder declared {total} set points, having announced {self._set_declared}"
            )
        if not isinstance(total, int) or total != self._set_received:
            raise ProtocolError(
                f"responder declared {total} set points, {self._set_received} received"
            )
        if self._reblinded_chunks != len(self._blinded_counts):
            raise ProtocolError(
                f"{len(self._blinded_counts) - self._reblinded_chunks} blinded chunk(s) "
                "still unanswered"
            )
        self._transcript.absorb("responder", "set-done", _U64.pack(total))
        self._done_total = total
        self._scalar = None  # every a-multiplication is done
        if self._roster is None:
            self._roster_complete()

    def finish(self) -> EcdhResult:
        """Intersect and end the round.

        Raises:
            ProtocolError: the responder has not declared its set complete.
            AlreadyUsed: called twice.
        """
        self._check_open()
        if self._done_total is None:
            raise ProtocolError("the responder has not declared its set complete")
        hits = np.concatenate(self._hits) if self._hits else np.zeros(0, dtype=np.int64)
        matched = np.unique(hits).astype(np.int64)
        self._finished = True
        self._roster, self._hits = None, []
        return EcdhResult(
            matched=matched,
            responder_set_size=self._done_total,
            transcript=self._transcript.digest(),
        )


@dataclass(frozen=True)
class _SetPlan:
    """The responder's set: distinct identities per bucket, padding per bucket, a reader."""

    sizes: tuple[int, ...]
    pads: tuple[int, ...]
    read: Callable[[int], npt.NDArray[np.uint8]]
    #: the buckets are known to be distinct (load_set deduplicated them itself)
    distinct: bool = False

    @property
    def total(self) -> int:
        return sum(self.sizes) + sum(self.pads)


class EcdhResponder(_EcdhRole):
    """The node's side of an ``ecdh`` round."""

    def __init__(
        self,
        context: RoundContext,
        scalar: bytes,
        executor: concurrent.futures.Executor | None = None,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        size_classes: Callable[[int], int] = size_class,
    ) -> None:
        super().__init__(context, scalar, executor)
        self._rng = rng
        self._size_classes = size_classes
        self._plan: _SetPlan | None = None
        self._next_blinded = 0
        self._set_started = False
        self._set_sent = 0

    @classmethod
    def generate(
        cls,
        context: RoundContext,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        executor: concurrent.futures.Executor | None = None,
        size_classes: Callable[[int], int] = size_class,
    ) -> EcdhResponder:
        """A responder with a fresh secret scalar from ``rng``.

        ``size_classes(n)`` gives the padded set size for n unique identities
        (default :func:`size_class`); ``rng`` also draws padding and shuffle.

        Raises:
            ProtocolError: the context is not an ecdh round or names an
                unknown ``suite``.
        """
        return cls(
            context, _generate_scalar(context, rng), executor, rng=rng, size_classes=size_classes
        )

    def load_set(self, identities: npt.NDArray[np.uint8], *, distinct: bool = False) -> None:
        """Take the match set, held in memory: deduplicated now, padded and shuffled when sent.

        ``distinct=True``: ``identities`` is already the output of
        :func:`distinct_identities` (a node keeps it for a set it serves many
        rounds); only checked, in one linear pass, to be strictly ascending.

        Raises:
            AlreadyUsed: a set was already loaded, or the round has finished.
            ValueError: ``identities`` is not (n, 16) uint8, ``size_classes``
                returned fewer than n, or ``distinct`` and the rows are not
                strictly ascending.
        """
        self._check_open()
        if self._plan is not None:
            raise AlreadyUsed("match set already loaded for this round")
        if distinct:
            unique = _check_identities(identities)
            if not _strictly_ascending(unique):
                raise ValueError("load_set(distinct=True): rows are not distinct_identities output")
        else:
            unique = distinct_identities(identities)
        self._plan = self._planned((len(unique),), lambda _bucket: unique, distinct=True)

    def load_buckets(
        self, sizes: Sequence[int], read: Callable[[int], npt.NDArray[np.uint8]]
    ) -> None:
        """Take a match set kept outside memory, split into ``len(sizes)`` buckets.

        Bucket ``j`` holds ``sizes[j]`` distinct identities and shares none
        with another bucket (split them with :func:`bucket_of`).
        :meth:`set_chunks` calls ``read(j)`` once per bucket, in order, while
        the chunks of bucket ``j - 1`` are being sent (so that no pause marks
        a bucket boundary); at most two buckets are in memory (16 bytes per
        identity and padding point, plus the chunk being multiplied).
        The set is padded to ``size_classes(sum(sizes))``, exactly as if it
        were loaded whole; the padding is spread evenly over the buckets and
        each bucket is shuffled on its own.

        Raises:
            AlreadyUsed: a set was already loaded, or the round has finished.
            ValueError: no bucket, a negative size, or ``size_classes``
                returned fewer than the total.
        """
        self._check_open()
        if self._plan is not None:
            raise AlreadyUsed("match set already loaded for this round")
        counts = tuple(int(size) for size in sizes)
        if not counts or min(counts) < 0:
            raise ValueError("load_buckets needs at least one bucket and sizes >= 0")
        self._plan = self._planned(counts, read, distinct=False)

    def _planned(
        self,
        counts: tuple[int, ...],
        read: Callable[[int], npt.NDArray[np.uint8]],
        *,
        distinct: bool,
    ) -> _SetPlan:
        total = sum(counts)
        target = self._size_classes(total)
        if target < total:
            raise ValueError("size class smaller than the set")
        extra, n = target - total, len(counts)
        pads = tuple(extra * (j + 1) // n - extra * j // n for j in range(n))
        return _SetPlan(sizes=counts, pads=pads, read=read, distinct=distinct)

    @property
    def set_size(self) -> int:
        """The padded set size (the total to declare when the set is sent).

        Raises:
            ProtocolError: no set loaded.
        """
        if self._plan is None:
            raise ProtocolError("no match set loaded: call load_set() first")
        return self._plan.total

    def reblind(self, chunk: PointChunk) -> PointChunk:
        """``b*(a*H(x))`` for a blinded chunk, same order and ``seq``.

        Raises:
            ProtocolError: wrong stage or round, out of order, or a low-order
                point (the message names the chunk and position).
            AlreadyUsed: the round has finished.
        """
        self._check_open()
        self._check_chunk(chunk, "blinded", self._next_blinded)
        self._transcript.absorb("requester", "blinded", chunk.to_bytes())
        self._next_blinded += 1
        points = self._mult(chunk.points, f"blinded chunk {chunk.seq}")
        out = PointChunk(
            round_id=self._context.round_id, seq=chunk.seq, stage="reblinded", points=points
        )
        self._transcript.absorb("responder", "reblinded", out.to_bytes())
        return out

    def set_chunks(self, chunk_size: int) -> Iterator[PointChunk]:
        """Yield ``b*H(y)`` for the shuffled, padded set in chunks (once).

        Every chunk has ``chunk_size`` points but the last, across bucket
        boundaries. A bucket is read, checked, padded and shuffled when the
        chunks reach it.

        Raises:
            ProtocolError: no set loaded, or ``chunk_size`` out of range.
            AlreadyUsed: called twice, or the round has finished.
            ValueError: (while iterating) a bucket read back with another
                size than announced, or with an identity twice.
        """
        self._check_open()
        if self._plan is None:
            raise ProtocolError("no match set loaded: call load_set() first")
        if self._set_started:
            raise AlreadyUsed("the set has already been sent in this round")
        if not 1 <= chunk_size <= MAX_POINTS_PER_CHUNK:
            raise ProtocolError(f"chunk_size must be 1..{MAX_POINTS_PER_CHUNK}")
        self._set_started = True
        return self._set_iter(self._plan, chunk_size)

    def _bucket_blocks(self, plan: _SetPlan, bucket: int) -> npt.NDArray[np.uint8]:
        """Bucket ``bucket``'s identities with its padding, shuffled (16-byte blocks)."""
        ids = _check_identities(plan.read(bucket))
        if len(ids) != plan.sizes[bucket]:
            raise ValueError(
                f"bucket {bucket} has {len(ids)} identities, {plan.sizes[bucket]} announced"
            )
        if not plan.distinct and len(distinct_identities(ids)) != len(ids):
            raise ValueError(f"bucket {bucket} repeats an identity")
        pad = plan.pads[bucket]
        padding = np.frombuffer(self._rng(16 * pad), dtype=np.uint8).reshape(-1, 16).copy()
        padding[:, 0] = _PAD_KIND
        blocks = np.concatenate([ids, padding])
        # A permutation from CSPRNG output: sort by 64-bit random keys.
        keys = np.frombuffer(self._rng(8 * len(blocks)), dtype=np.uint64)
        shuffled: npt.NDArray[np.uint8] = blocks[np.argsort(keys, kind="stable")]
        return shuffled

    def _set_iter(self, plan: _SetPlan, chunk_size: int) -> Iterator[PointChunk]:
        """The set chunks in order, ``chunk_size`` points each but the last.

        A set held whole (one bucket): chunk k + 1 is submitted to the pool before
        chunk k is awaited, so the workers have the next chunk while this one is
        framed and sent (and while the caller reblinds between chunks). Bucketed
        sets keep one chunk at a time: a look-ahead that stopped at bucket
        boundaries (to read buckets no earlier) would make those boundaries the
        only places with a pause. Contents and order are the same either way.
        """
        look_ahead = len(plan.sizes) == 1
        seq = 0
        carry = np.zeros((0, 16), dtype=np.uint8)
        ahead: tuple[int, Callable[[], npt.NDArray[np.uint8]]] | None = None
        for blocks in self._buckets_ahead(plan):
            pending = np.concatenate([carry, blocks]) if len(carry) else blocks
            del blocks
            full = len(pending) - len(pending) % chunk_size
            for start in range(0, full, chunk_size):
                self._check_open()
                started = self._hash_mult_started(
                    pending[start : start + chunk_size], f"set chunk {seq}"
                )
                if ahead is not None:
                    yield self._set_chunk(*ahead)
                ahead = (seq, started)
                seq += 1
                if not look_ahead:
                    yield self._set_chunk(*ahead)
                    ahead = None
            if ahead is not None:
                yield self._set_chunk(*ahead)
                ahead = None
            carry = pending[full:].copy()
            del pending
        if len(carry):
            self._check_open()
            yield self._set_chunk(seq, self._hash_mult_started(carry, f"set chunk {seq}"))

    def _buckets_ahead(self, plan: _SetPlan) -> Iterator[npt.NDArray[np.uint8]]:
        """Each bucket's shuffled blocks; bucket j+1 is prepared while j's chunks are multiplied.

        Why: preparing a bucket (read, check, pad, shuffle) takes about as long as
        a chunk, and a pause at every bucket boundary would show the requester
        where buckets end. At most two buckets are in memory.
        """
        n = len(plan.sizes)
        if n == 1:
            self._check_open()
            yield self._bucket_blocks(plan, 0)
            return
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bucket") as ahead:
            upcoming = ahead.submit(self._bucket_blocks, plan, 0)
            for bucket in range(n):
                self._check_open()
                blocks = upcoming.result()
                if bucket + 1 < n:
                    upcoming = ahead.submit(self._bucket_blocks, plan, bucket + 1)
                yield blocks
                del blocks

    def _set_chunk(self, seq: int, started: Callable[[], npt.NDArray[np.uint8]]) -> PointChunk:
        self._check_open()
        points = started()
        chunk = PointChunk(round_id=self._context.round_id, seq=seq, stage="set", points=points)
        self._transcript.absorb("responder", "set", chunk.to_bytes())
        self._set_sent += len(points)
        return chunk

    def finish(self) -> bytes:
        """End the round after the whole set was sent; returns the transcript digest.

        Raises:
            ProtocolError: the set has not been sent completely.
            AlreadyUsed: called twice.
        """
        self._check_open()
        if self._plan is None or self._set_sent != self._plan.total:
            raise ProtocolError("the match set has not been sent completely")
        self._transcript.absorb("responder", "set-done", _U64.pack(self._set_sent))
        self._finished = True
        self._scalar = None
        self._plan = None
        return self._transcript.digest()
