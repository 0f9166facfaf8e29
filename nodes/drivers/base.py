"""The common part of the node's round drivers: event queue, authorization, run loop.

A driver is the node's runner of a responder session (:mod:`psi.session`;
docs/architecture.md, "Sessions and runners"): it reads the requests on a
helper thread (so that it can notice a message after ``end`` and a silent
requester), authorizes the round between ``start`` and ``accept``, finds the
match set, and yields the session's outputs in exactly the order the session
made them (the order of the transcript). The session owns the message
sequence; anything out of order is its :class:`psi.errors.ProtocolError`.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass

from nodes.authorization import REQUESTER_ROLE, authorize
from nodes.config import MatchSetConfig
from nodes.distinct import DistinctRows
from nodes.drivers.events import (
    CANCELLED,
    TIMED_OUT,
    Cancelled,
    Closed,
    DriverEvent,
    Failed,
    Request,
    TimedOut,
    Woken,
)
from nodes.matchsets import LoadedMatchSet
from nodes.state import NodeState
from psi.context import RoundContext
from psi.errors import ProtocolError, XmatchError
from psi.session import (
    Chunk,
    Done,
    End,
    RequesterMessage,
    ResponderMessage,
    ResponderSession,
    Start,
)

__all__ = [
    "IDLE_SECONDS",
    "READ_AHEAD",
    "TRAILING_SECONDS",
    "HeldSet",
    "RoundDriver",
    "SetSource",
    "StreamedSet",
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


@dataclass(frozen=True)
class HeldSet:
    """The round's match set, loaded and held in memory."""

    loaded: LoadedMatchSet


@dataclass(frozen=True)
class StreamedSet:
    """The round's match set is larger than ``stream_rows``: read from its source
    while the round runs (its summary is known only once it has been read)."""

    name: str


SetSource = HeldSet | StreamedSet


class RoundDriver:
    """Runs one round over a stream of requester messages; subclasses add the protocol.

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
        self.match_set: MatchSetConfig | None = None
        self.loaded: LoadedMatchSet | None = None
        #: The node's actual set size (rows kept), None while unknown (streamed keyed-hash).
        self.set_size: int | None = 0
        #: ecdh: the size class the set is padded to (what the requester sees).
        self.padded_set_size: int | None = None
        #: ecdh, streamed set: the number of bucket files it was split into (1: held whole).
        self.buckets: int | None = None
        self.started = time.monotonic()
        self._distinct = DistinctRows()
        self._session = self._new_session()
        self._cancel = threading.Event()
        # Bounded: the pump reads at most READ_AHEAD requests ahead of the work.
        self._events: queue.Queue[DriverEvent] = queue.Queue(maxsize=READ_AHEAD)
        self._lock = threading.Lock()  # serializes session calls + outbox appends
        self._outbox: collections.deque[ResponderMessage] = collections.deque()
        #: chunk answers held until min_query_size identities have arrived (:meth:`_answer`)
        self._held: list[ResponderMessage] = []

    # -- what the servicer reads

    @property
    def context(self) -> RoundContext | None:
        """The round context, once the start message was parsed."""
        return self._session.round_context

    @property
    def query_size(self) -> int:
        """Identities announced in start (0 before)."""
        return self._session.query_size

    @property
    def items(self) -> int:
        """Identities received so far."""
        return self._session.items

    @property
    def chunks(self) -> int:
        """Request chunks received so far."""
        return self._session.chunks

    @property
    def match_count(self) -> int | None:
        """keyed-hash: matched tags so far; None for ecdh."""
        return None

    # -- the common part

    def cancel(self) -> None:
        """Stop work (the requester went away); :meth:`run` ends with ProtocolError.

        Never blocks (it runs on a gRPC callback thread): a reader of a full
        queue sees the cancellation when it next finds the queue empty.
        """
        self._cancel.set()
        with contextlib.suppress(queue.Full):
            self._events.put_nowait(CANCELLED)

    def _put(self, item: DriverEvent) -> bool:
        """Put ``item``, waiting while the queue is full; False if cancelled first."""
        while not self._cancel.is_set():
            try:
                self._events.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, requests: Iterable[RequesterMessage]) -> None:
        try:
            for req in requests:
                if not self._put(Request(req)):
                    return
        except XmatchError as exc:  # a request that could not be converted
            self._put(Failed(exc))
            return
        except Exception:  # the transport broke off (cancelled stream)
            self._put(Closed(broken=True))
            return
        self._put(Closed())

    def _next(self, timeout: float = IDLE_SECONDS) -> DriverEvent:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return self._events.get(timeout=max(0.0, min(left, _POLL_SECONDS)))
            except queue.Empty:
                if self._cancel.is_set():
                    return CANCELLED
                if left <= _POLL_SECONDS:
                    return TIMED_OUT

    def _emit(self, out: ResponderMessage) -> None:
        self._outbox.append(out)

    def _answer(self, answer: ResponderMessage) -> None:
        """Emit the answer to a chunk once the round has sent ``min_query_size`` identities.

        The announced size is checked only at the end. A requester that announced
        100, sent one identity, read its answer and cancelled tested one person
        with no filler at all; now nothing is answered before the first
        ``min_query_size`` identities are in (a real roster's first chunk holds them).
        """
        self._held.append(answer)
        assert self.match_set is not None  # a chunk comes after an authorized start
        if self._session.items >= self.match_set.min_query_size:
            for held in self._held:
                self._emit(held)
            self._held.clear()

    def _flush(self) -> Iterator[ResponderMessage]:
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

    def run(self, requests: Iterable[RequesterMessage]) -> Generator[ResponderMessage, None, None]:
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
            first = self._next(wait)
            if isinstance(first, TimedOut):
                raise ProtocolError(f"no start message within {wait:g} s")
            self._start(self._first_start(first))
            yield from self._flush()
            while True:
                event = self._next()
                yield from self._flush()
                if isinstance(event, Woken):
                    continue
                message = self._request(event)
                if isinstance(message, Chunk):
                    self._check_size(message.data)
                    self._chunk(message.data)
                    yield from self._flush()
                    continue
                if not isinstance(message, End):  # a second start
                    self._session.receive(message)  # raises ProtocolError
                    continue
                with self._lock:
                    self._session.receive(message)  # checks the counts
                yield from self._before_end()
                self._trailing()
                done = self._finish()
                yield from self._flush()
                yield done
                return
        finally:
            self._cancel.set()
            self._cleanup()

    @staticmethod
    def _first_start(event: DriverEvent) -> Start:
        if isinstance(event, Failed):
            raise event.error
        if not isinstance(event, Request):
            raise ProtocolError("stream ended before start")
        if not isinstance(event.message, Start):
            raise ProtocolError("a round must begin with start")
        return event.message

    def _request(self, event: DriverEvent) -> RequesterMessage:
        """The message of a request event; any other event ends the round."""
        if isinstance(event, Request):
            return event.message
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, Closed) and event.broken:
            # a transport that broke off may be gRPC refusing a message above the
            # node's limit (it does not say which)
            limit = self.state.config.node.max_chunk_bytes
            raise ProtocolError(
                "stream broken off before end (the requester cancelled, or sent a message "
                f"above the node's limit of {limit} bytes per chunk)"
            )
        if isinstance(event, Closed | Cancelled):
            raise ProtocolError("stream ended before end")
        raise ProtocolError(f"requester silent for {IDLE_SECONDS:.0f} s")

    def _trailing(self) -> None:
        """After ``end``: the requester must close its side, nothing more."""
        event = self._next(TRAILING_SECONDS)
        if isinstance(event, Request):
            raise ProtocolError("message after end")
        if isinstance(event, Cancelled):
            raise ProtocolError("round cancelled")
        if isinstance(event, Failed):
            raise event.error

    def _authorized(self, start: Start) -> tuple[RoundContext, SetSource]:
        """Parse and authorize the start; where the round's match set comes from.

        Raises:
            ProtocolError: from the session (malformed, other protocol).
            Refused, BudgetExhausted: from :func:`authorize`.
            ConfigError: a set held in memory could not be loaded.
        """
        ctx = self._session.receive_start(start)
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
            return ctx, StreamedSet(self.match_set.name)
        return ctx, HeldSet(st.store.get(self.match_set.name, ctx.as_of))

    # -- protocol hooks

    def _new_session(self) -> ResponderSession:
        raise NotImplementedError

    def _start(self, start: Start) -> None:
        raise NotImplementedError

    def _chunk(self, data: bytes) -> None:
        raise NotImplementedError

    def _before_end(self) -> Iterator[ResponderMessage]:
        return iter(())

    def _finish(self) -> Done:
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Drop round secrets."""
