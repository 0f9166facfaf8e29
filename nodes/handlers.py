"""What a node does with a request: authorization, probing limits, round drivers.

Plain functions and classes over the psi role objects, testable without gRPC
(house style 9). The servicer (:mod:`nodes.servicer`) converts proto messages
to the small event classes here, runs a driver, converts its outputs back, and
maps the :class:`psi.errors.XmatchError` it raises to a status code.

Authorization (:func:`authorize`), in order; the first failure is a
:class:`psi.errors.Refused` whose ``reason`` goes into the audit log:

1. the TLS peer's certificate has the ``coordinator`` role;
2. the context's requester is the TLS peer;
3. the context's responder is this node;
4. the match set exists;
5. it offers the round's protocol, (6) with the round's ``suite`` (ecdh) or
   ``prf`` (keyed-hash) in its ``suites`` / ``prfs``;
7. the requester is in its ``allow`` list, (8) for this purpose;
9. the announced query size is at least ``min_query_size`` and at most
   ``max_query_size``;
10. ``as_of`` is at most ``max_future_days`` after and ``max_past_days``
    before today;
11. the (round id, match set) pair was not seen before (replay);
12. the requester+purpose still has budget on this match set
    (:class:`BudgetExhausted`).

Step 9 counts distinct identities: a driver refuses a tag (keyed-hash) or
blinded point (ecdh) that repeats one sent before in the round
(:class:`DistinctRows`), and the round must deliver exactly the announced
number of them.

Round drivers (:class:`KeyedHashDriver`, :class:`EcdhDriver`) consume a
stream of :class:`Start` / :class:`Chunk` / :class:`End` events and produce
:class:`Accept` / :class:`Matches` / :class:`Points` / :class:`Done`. Anything
out of order (no start first, a second start, a wrong sequence number, more
identities than announced, a repeated identity, counts that do not add up, a
message after end) is a :class:`psi.errors.ProtocolError`. A driver reads at
most :data:`READ_AHEAD` requests ahead of its work, so a fast sender waits for
the node (gRPC flow control) instead of making it buffer the query.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as _dt
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from nodes.authorization import REQUESTER_ROLE, CapabilityView, authorize, capabilities
from nodes.buckets import SpilledSet, bucket_count
from nodes.config import MatchSetConfig, NodeConfig
from nodes.distinct import DistinctRows
from nodes.limits import BudgetExhausted, QueryBudget, ReplayGuard
from nodes.matchsets import LoadedMatchSet, MatchSetStore, StreamSummary
from psi.context import RoundContext
from psi.ecdh import EcdhResponder, distinct_identities, prepare_executor
from psi.errors import PeerError, ProtocolError, XmatchError
from psi.keyed_hash import KeyedHashResponder
from psi.messages import MAX_POINTS_PER_CHUNK, KeyShare, MatchChunk, PointChunk, TagChunk

__all__ = [
    "Accept",
    "BudgetExhausted",
    "CapabilityView",
    "Chunk",
    "DistinctRows",
    "Done",
    "EcdhDriver",
    "End",
    "KeyedHashDriver",
    "Matches",
    "NodeBusy",
    "NodeState",
    "Points",
    "QueryBudget",
    "ReplayGuard",
    "RoundDriver",
    "Start",
    "authorize",
    "capabilities",
]

#: A requester silent for this long (seconds) fails the round.
IDLE_SECONDS = 300.0
#: After ``end``, how long to wait for the requester to close its side, so
#: that a message after ``end`` is caught. A closing requester costs nothing.
TRAILING_SECONDS = 0.5
#: Requests read ahead of the driver's work (the bound of the event queue).
READ_AHEAD = 4
#: How often a blocked reader or writer of the event queue checks for cancellation.
_POLL_SECONDS = 0.05


class NodeBusy(PeerError):
    """Every round slot stayed busy for ``queue_seconds`` (UNAVAILABLE: retry later)."""


# --------------------------------------------------------------------------
# Probing limits


# --------------------------------------------------------------------------
# Node state


@dataclass
class NodeState:
    """Everything a node's handlers share: config, match sets, limits, clocks."""

    config: NodeConfig
    store: MatchSetStore
    budget: QueryBudget
    replay: ReplayGuard
    today: Callable[[], _dt.date] = _dt.date.today
    rng: Callable[[int], bytes] = os.urandom
    executor: concurrent.futures.Executor | None = None
    slots: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(self.config.node.max_concurrent_rounds)

    @classmethod
    def create(
        cls,
        config: NodeConfig,
        *,
        store: MatchSetStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], _dt.date] = _dt.date.today,
        rng: Callable[[int], bytes] = os.urandom,
        executor: concurrent.futures.Executor | None = None,
    ) -> NodeState:
        """A fresh state for ``config`` (new budget and replay memory).

        The ``executor``'s worker processes are started here, so that the
        first ecdh round does not pay for them.
        """
        if executor is not None:
            prepare_executor(executor, config.node.ec_workers)
        return cls(
            config=config,
            store=store or MatchSetStore(config),
            budget=QueryBudget(clock=clock),
            replay=ReplayGuard(config.node.replay_memory),
            today=today,
            rng=rng,
            executor=executor,
        )

    @contextlib.contextmanager
    def round_slot(self, peer: str) -> Iterator[None]:
        """Hold one of ``max_concurrent_rounds`` slots for a round.

        Raises:
            NodeBusy: no slot became free within ``queue_seconds``.
        """
        if not self.slots.acquire(timeout=self.config.node.queue_seconds):
            raise NodeBusy(peer, "node busy: every round slot is in use; retry later")
        try:
            yield
        finally:
            self.slots.release()


# --------------------------------------------------------------------------
# Stream events


@dataclass(frozen=True)
class Start:
    """First requester message: context bytes, announced size, key share (keyed-hash)."""

    context: bytes
    query_size: int
    key_share: bytes = b""


@dataclass(frozen=True)
class Chunk:
    """A tags (keyed-hash) or blinded (ecdh) chunk, psi bytes."""

    data: bytes


@dataclass(frozen=True)
class End:
    """Last requester message: how many chunks and identities it sent."""

    chunks: int
    items: int


Event = Start | Chunk | End


@dataclass(frozen=True)
class Accept:
    """The node accepts: its key share (keyed-hash) or padded set size (ecdh)."""

    key_share: bytes = b""
    set_size: int = 0


@dataclass(frozen=True)
class Matches:
    """keyed-hash answer to one tag chunk: psi MatchChunk bytes + one payload per record.

    ``tags[i]`` is the index, in the psi chunk, of the tag that record ``i`` matched.
    """

    psi: bytes
    payload: list[dict[str, str]]
    tags: list[int]


@dataclass(frozen=True)
class Points:
    """ecdh points: ``reblinded`` (answering a blinded chunk) or ``set``."""

    stage: Literal["reblinded", "set"]
    data: bytes


@dataclass(frozen=True)
class Done:
    """Last node message.

    ``log_seq`` / ``log_head`` anchor the node's ``round_finished`` entry (its seq
    and line hash); the servicer fills them in after writing that entry.
    """

    matches: int
    transcript: bytes
    chunks: int
    set_size: int = 0
    log_seq: int = 0
    log_head: str = ""


Output = Accept | Matches | Points | Done


# --------------------------------------------------------------------------
# Distinct identities


# --------------------------------------------------------------------------
# Drivers

_EOF = object()
#: Points per ecdh set chunk the node sends (also bounded by max_chunk_bytes).
SET_CHUNK_POINTS = min(16384, MAX_POINTS_PER_CHUNK)


class RoundDriver:
    """Runs one round over a stream of events; subclasses add the protocol.

    :meth:`run` reads the requests on a helper thread (so that it can notice a
    message after ``end`` and a silent requester) and yields outputs in exactly
    the order the psi role object absorbed them into its transcript.
    ``context``, ``match_set``, ``loaded`` and ``query_size`` are set as soon as
    known, for the audit log. ``role`` is the role in the peer's certificate
    (:class:`nodes.auth.Peer`); the servicer always passes it, and
    :func:`authorize` refuses any role but ``coordinator``.
    """

    protocol: str = ""

    def __init__(self, state: NodeState, peer: str, *, role: str = REQUESTER_ROLE) -> None:
        self.state = state
        self.peer = peer
        self.role = role
        self.context: RoundContext | None = None
        self.match_set: MatchSetConfig | None = None
        self.loaded: LoadedMatchSet | None = None
        self.query_size = 0
        self.items = 0
        self.chunks = 0
        #: The node's actual set size (rows kept), None while unknown (streamed keyed-hash).
        self.set_size: int | None = 0
        #: ecdh: the size class the set is padded to (what the requester sees).
        self.padded_set_size: int | None = None
        #: ecdh, streamed set: the number of bucket files it was split into (1: held whole).
        self.buckets: int | None = None
        self.match_count: int | None = None
        self.started = time.monotonic()
        self._cancel = threading.Event()
        # Bounded: the pump reads at most READ_AHEAD requests ahead of the work.
        self._events: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=READ_AHEAD)
        self._lock = threading.Lock()  # serializes psi calls + outbox appends
        self._outbox: collections.deque[Output] = collections.deque()
        self._distinct = DistinctRows()

    # -- the common part

    def cancel(self) -> None:
        """Stop work (the requester went away); :meth:`run` ends with ProtocolError.

        Never blocks (it runs on a gRPC callback thread): a reader of a full
        queue sees the cancellation when it next finds the queue empty.
        """
        self._cancel.set()
        with contextlib.suppress(queue.Full):
            self._events.put_nowait(("cancel", None))

    def _put(self, item: tuple[str, object]) -> bool:
        """Put ``item``, waiting while the queue is full; False if cancelled first."""
        while not self._cancel.is_set():
            try:
                self._events.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, requests: Iterable[Event]) -> None:
        try:
            for req in requests:
                if not self._put(("req", req)):
                    return
        except XmatchError as exc:  # a request that could not be converted
            self._put(("error", exc))
            return
        except Exception:  # the transport broke off (cancelled stream)
            self._put(("eof", "broken"))
            return
        self._put(("eof", None))

    def _next(self, timeout: float = IDLE_SECONDS) -> tuple[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return self._events.get(timeout=max(0.0, min(left, _POLL_SECONDS)))
            except queue.Empty:
                if self._cancel.is_set():
                    return ("cancel", None)
                if left <= _POLL_SECONDS:
                    return ("timeout", None)

    def _emit(self, out: Output) -> None:
        self._outbox.append(out)

    def _flush(self) -> Iterator[Output]:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                out = self._outbox.popleft()
            yield out

    def _check_size(self, data: bytes) -> None:
        limit = self.state.config.node.max_chunk_bytes
        if len(data) > limit:
            raise ProtocolError(f"chunk of {len(data)} bytes exceeds max_chunk_bytes ({limit})")

    def run(self, requests: Iterable[Event]) -> Generator[Output, None, None]:
        """Drive the round; yields outputs. Closing the generator cancels the round.

        Raises:
            ProtocolError: out-of-order or malformed message, counts that do not
                add up, the stream ended early, no start within
                ``start_timeout_seconds``, or the requester fell silent
                (:data:`IDLE_SECONDS`).
            Refused, BudgetExhausted: from :func:`authorize`.
            ConfigError: the match set could not be loaded.
        """
        pump = threading.Thread(target=self._pump, args=(requests,), daemon=True)
        pump.start()
        try:
            # A round holds a slot from here: a requester gets only a short time to start.
            wait = self.state.config.node.start_timeout_seconds
            kind, item = self._next(wait)
            if kind == "error":
                assert isinstance(item, BaseException)
                raise item
            if kind == "timeout":
                raise ProtocolError(f"no start message within {wait:g} s")
            if kind != "req":
                raise ProtocolError("stream ended before start")
            if not isinstance(item, Start):
                raise ProtocolError("a round must begin with start")
            self._start(item)
            yield from self._flush()
            while True:
                kind, item = self._next()
                yield from self._flush()
                if kind == "woken":
                    continue
                if kind == "error":
                    assert isinstance(item, BaseException)
                    raise item
                if kind in ("eof", "cancel"):
                    raise ProtocolError("stream ended before end")
                if kind == "timeout":
                    raise ProtocolError(f"requester silent for {IDLE_SECONDS:.0f} s")
                if isinstance(item, Start):
                    raise ProtocolError("second start in one round")
                if isinstance(item, Chunk):
                    self._check_size(item.data)
                    self._chunk(item.data)
                    yield from self._flush()
                    continue
                assert isinstance(item, End)
                if item.chunks != self.chunks or item.items != self.items:
                    raise ProtocolError(
                        f"end says {item.chunks} chunks and {item.items} identities, "
                        f"node received {self.chunks} and {self.items}"
                    )
                if self.items != self.query_size:
                    raise ProtocolError(
                        f"{self.items} identities sent, {self.query_size} announced at start"
                    )
                yield from self._before_end()
                kind, item = self._next(TRAILING_SECONDS)
                if kind == "req":
                    raise ProtocolError("message after end")
                if kind == "cancel":
                    raise ProtocolError("round cancelled")
                if kind == "error":
                    assert isinstance(item, BaseException)
                    raise item
                done = self._finish()
                yield from self._flush()
                yield done
                return
        finally:
            self._cancel.set()
            self._cleanup()

    def _start_common(self, start: Start) -> tuple[RoundContext, LoadedMatchSet | None]:
        """Parse and authorize; the loaded set, or None for a streamed set (``stream_rows``)."""
        ctx = RoundContext.from_bytes(start.context)
        self.context = ctx
        self.query_size = start.query_size
        if ctx.protocol != self.protocol:
            raise ProtocolError(f"{ctx.protocol} round context on the {self.protocol} stream")
        st = self.state
        self.match_set = authorize(
            st.config,
            self.peer,
            ctx,
            start.query_size,
            role=self.role,
            budget=st.budget,
            replay=st.replay,
            today=st.today(),
        )
        if st.store.is_streamed(self.match_set.name):
            return ctx, None
        self.loaded = st.store.get(self.match_set.name, ctx.as_of)
        return ctx, self.loaded

    def _count(self, rows: npt.NDArray[np.uint8]) -> None:
        """Count one chunk's rows: no more than announced, none repeated (step 9)."""
        self.chunks += 1
        self.items += int(rows.shape[0])
        if self.items > self.query_size:
            raise ProtocolError(f"more identities than announced at start ({self.query_size})")
        self._distinct.add(rows)

    # -- protocol hooks

    def _start(self, start: Start) -> None:
        raise NotImplementedError

    def _chunk(self, data: bytes) -> None:
        raise NotImplementedError

    def _before_end(self) -> Iterator[Output]:
        return iter(())

    def _finish(self) -> Done:
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Drop round secrets."""


class KeyedHashDriver(RoundDriver):
    """keyed-hash (docs/architecture.md, "Streams"), node side.

    Each matched record gives one payload entry: the allowed payload columns
    with a value, and the index of its tag in the psi MatchChunk (a person
    with two records gives two entries for one tag).

    A set held in memory answers each tag chunk as it arrives. A set larger
    than ``stream_rows`` is streamed instead: the tag chunks are kept (16
    bytes per roster identity), and after ``end`` the set is read from the
    source in record batches, each tagged and matched against all the
    chunks' tags; then the same match chunks are sent, in order. Memory is
    bounded by one batch plus the roster's tags and the matches.
    """

    protocol = "keyed-hash"

    def __init__(self, state: NodeState, peer: str, *, role: str = REQUESTER_ROLE) -> None:
        super().__init__(state, peer, role=role)
        self._responder: KeyedHashResponder | None = None
        self._streamed = False
        self.match_count = 0

    def _start(self, start: Start) -> None:
        ctx, loaded = self._start_common(start)
        responder = KeyedHashResponder.generate(ctx, rng=self.state.rng)
        responder.agree(KeyShare.from_bytes(start.key_share, round_id=ctx.round_id))
        if loaded is None:
            self._streamed = True
            self.set_size = None  # known after the set is read, at end
        else:
            responder.load_set(loaded.identities)
            self.set_size = len(loaded)
        self._responder = responder
        self._emit(Accept(key_share=responder.key_share().to_bytes()))

    def _chunk(self, data: bytes) -> None:
        assert self._responder is not None and self.context is not None
        chunk = TagChunk.from_bytes(data, round_id=self.context.round_id, seq=self.chunks)
        self._count(chunk.tags)
        if self._streamed:
            self._responder.buffer(chunk)
            return
        assert self.loaded is not None
        result = self._responder.match(chunk)
        assert result.rows is not None and result.row_offsets is not None
        self._emit_matches(result, self.loaded.payload_rows(result.rows))

    def _emit_matches(self, result: MatchChunk, payload: list[dict[str, str]]) -> None:
        assert result.row_offsets is not None and self.match_count is not None
        tag_of_row = np.repeat(
            np.arange(len(result.tags), dtype=np.int64), np.diff(result.row_offsets)
        )
        self.match_count += len(result.tags)
        self._emit(
            Matches(psi=result.without_rows().to_bytes(), payload=payload, tags=tag_of_row.tolist())
        )

    def _before_end(self) -> Iterator[Output]:
        if not self._streamed:
            return
        assert self._responder is not None and self.context is not None
        assert self.match_set is not None
        started = time.perf_counter()
        summary = StreamSummary()
        # Only the matched rows' payload is kept, by row number.
        rows: list[npt.NDArray[np.int64]] = []
        values: dict[str, list[npt.NDArray[np.str_]]] = {col: [] for col in self.match_set.payload}
        for batch in self.state.store.stream(
            self.match_set.name, self.context.as_of, summary=summary
        ):
            if self._cancel.is_set():
                raise ProtocolError("round cancelled")
            hit = self._responder.match_batch(batch.identities)
            rows.append(hit + batch.offset)
            for col in values:
                values[col].append(batch.payload[col][hit])
        matched = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        columns = {
            col: np.concatenate(parts) if parts else np.zeros(0, dtype="<U1")
            for col, parts in values.items()
        }
        self.loaded = summary.as_loaded(
            self.match_set.name, self.context.as_of, time.perf_counter() - started
        )
        self.set_size = summary.kept
        for result in self._responder.streamed_matches():
            assert result.rows is not None
            where = np.searchsorted(matched, result.rows)
            payload = _payload_dicts(
                {col: v[where] for col, v in columns.items()}, rows=len(result.rows)
            )
            self._emit_matches(result, payload)
            yield from self._flush()

    def _finish(self) -> Done:
        assert self._responder is not None and self.match_count is not None
        transcript = self._responder.finish()
        self._responder = None
        return Done(matches=self.match_count, transcript=transcript, chunks=self.chunks)

    def _cleanup(self) -> None:
        self._responder = None


def _payload_dicts(cols: dict[str, npt.NDArray[np.str_]], *, rows: int) -> list[dict[str, str]]:
    """One dict per row of ``rows`` aligned payload columns, empty values left out.

    ``rows`` is given explicitly: a set without payload columns still has one
    (empty) entry per matched record.
    """
    names = list(cols)
    if not names:
        return [{} for _ in range(rows)]
    lists = [cols[name].tolist() for name in names]
    return [
        {name: value for name, value in zip(names, row, strict=True) if value != ""}
        for row in zip(*lists, strict=True)
    ]


# The distinct identities of each cached match set, computed once (a 1M set: about 0.4 s
# of one core before the accept of every ecdh round, while the requester can only wait).
# Weak keys: an entry goes when the store drops the loaded set.
_DISTINCT: weakref.WeakKeyDictionary[LoadedMatchSet, npt.NDArray[np.uint8]] = (
    weakref.WeakKeyDictionary()
)
_DISTINCT_LOCK = threading.Lock()


def keep_distinct(config: NodeConfig, loaded: Iterable[LoadedMatchSet]) -> None:
    """Deduplicate now the sets held in memory that ecdh rounds may query (node startup).

    Their first ecdh round then starts as fast as the later ones.
    """
    ecdh = {ms.name for ms in config.match_sets if "ecdh" in ms.protocols}
    for ms in loaded:
        if ms.name in ecdh and not ms.streamed:
            _distinct_of(ms)


def _distinct_of(loaded: LoadedMatchSet) -> npt.NDArray[np.uint8]:
    with _DISTINCT_LOCK:
        unique = _DISTINCT.get(loaded)
    if unique is None:
        unique = distinct_identities(loaded.identities)
        with _DISTINCT_LOCK:
            _DISTINCT[loaded] = unique
    return unique


class EcdhDriver(RoundDriver):
    """ecdh (docs/architecture.md, "Streams"), node side.

    b·H(y) set chunks are computed on a helper thread and interleaved with
    the reblinded chunks; the psi lock keeps the send order equal to the
    transcript order. A set held in memory starts at accept, to overlap with
    the requester's roster.

    A set larger than ``stream_rows`` is bucketed (:mod:`nodes.buckets`)
    when its source has more than ``bucket_rows`` rows: before accept, one
    pass over the source splits it into about ``source rows / bucket_rows``
    (:func:`nodes.buckets.bucket_count`) encrypted bucket files, each
    deduplicated; the set is then sent bucket by bucket, and only after the
    requester's ``end``, so that the requester has its whole reblinded
    roster before the first set point and can intersect on arrival. Node
    memory is two buckets; the requester's is its roster.
    """

    protocol = "ecdh"

    def __init__(self, state: NodeState, peer: str, *, role: str = REQUESTER_ROLE) -> None:
        super().__init__(state, peer, role=role)
        self._responder: EcdhResponder | None = None
        self._producer: threading.Thread | None = None
        self._chunks: Iterator[PointChunk] | None = None
        self._spilled: SpilledSet | None = None
        self._set_chunks = 0
        self._set_done = threading.Event()

    def _start(self, start: Start) -> None:
        ctx, loaded = self._start_common(start)
        if start.key_share:
            raise ProtocolError("ecdh start carries no key share")
        node = self.state.config.node
        responder = EcdhResponder.generate(
            ctx, rng=self.state.rng, executor=self.state.executor, size_classes=node.padded_size
        )
        if loaded is None:
            self._load_streamed(ctx, responder)
        else:
            responder.load_set(_distinct_of(loaded), distinct=True)
        self._responder = responder
        assert self.loaded is not None
        self.set_size = len(self.loaded)
        self.padded_set_size = responder.set_size
        # At most 16,384 points (the coordinator's chunk): the requester multiplies the
        # last set chunk after the node is done, so a smaller one shortens that tail.
        per_chunk = max(1, min(SET_CHUNK_POINTS, (node.max_chunk_bytes - 64) // 32))
        self._chunks = responder.set_chunks(per_chunk)
        self._emit(Accept(set_size=responder.set_size))
        if self._spilled is None:
            self._start_producer()

    def _load_streamed(self, ctx: RoundContext, responder: EcdhResponder) -> None:
        """A set above ``stream_rows``: read batch by batch; bucketed above ``bucket_rows``."""
        assert self.match_set is not None
        store, node = self.state.store, self.state.config.node
        name = self.match_set.name
        buckets = self.buckets = bucket_count(store.source_rows(name), node.bucket_rows)
        summary = StreamSummary()

        def batches() -> Iterator[npt.NDArray[np.uint8]]:
            for batch in store.stream(name, ctx.as_of, summary=summary):
                if self._cancel.is_set():  # the requester went away: stop reading
                    raise ProtocolError("round cancelled while the set was being read")
                yield batch.identities

        if buckets == 1:
            parts = list(batches())  # 16 bytes per identity, no payload
            responder.load_set(
                np.concatenate(parts) if parts else np.zeros((0, 16), dtype=np.uint8)
            )
        else:
            self._spilled = SpilledSet.create(
                batches(),
                buckets=buckets,
                spill_dir=self.state.config.spill_dir,
                rng=self.state.rng,
                what=f"{self.state.config.path.name}: node.spill_dir",
            )
            responder.load_buckets(self._spilled.sizes, self._spilled.read)
        self.loaded = summary.as_loaded(name, ctx.as_of, 0.0)

    def _start_producer(self) -> None:
        self._producer = threading.Thread(target=self._produce, daemon=True)
        self._producer.start()

    def _produce(self) -> None:
        assert self._chunks is not None
        try:
            while not self._cancel.is_set():
                with self._lock:
                    chunk = next(self._chunks, None)
                    if chunk is None:
                        break
                    self._set_chunks += 1
                    self._emit(Points(stage="set", data=chunk.to_bytes()))
                self._put(("woken", None))
        except Exception as exc:  # surfaced by run()
            self._put(("error", exc))
        finally:
            self._set_done.set()
            self._put(("woken", None))

    def _chunk(self, data: bytes) -> None:
        assert self._responder is not None and self.context is not None
        chunk = PointChunk.from_bytes(
            data, stage="blinded", round_id=self.context.round_id, seq=self.chunks
        )
        self._count(chunk.points)
        with self._lock:
            out = self._responder.reblind(chunk)
            self._emit(Points(stage="reblinded", data=out.to_bytes()))

    def _before_end(self) -> Iterator[Output]:
        if self._producer is None:  # bucketed: the set goes after the whole roster
            self._start_producer()
        while not self._set_done.is_set():
            kind, item = self._next()
            yield from self._flush()
            if kind == "error":
                assert isinstance(item, BaseException)
                raise item
            if kind == "req":
                raise ProtocolError("message after end")
            if kind in ("cancel", "timeout"):
                raise ProtocolError("round cancelled while sending the set")
        yield from self._flush()

    def _finish(self) -> Done:
        assert self._responder is not None
        with self._lock:
            total = self._responder.set_size
            transcript = self._responder.finish()
        self._responder = None
        return Done(matches=0, transcript=transcript, chunks=self._set_chunks, set_size=total)

    def _cleanup(self) -> None:
        if self._producer is not None:
            self._producer.join(timeout=30)
        self._responder = None
        self._chunks = None
        if self._spilled is not None:
            self._spilled.close()
            self._spilled = None
