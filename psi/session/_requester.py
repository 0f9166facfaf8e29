"""What both requester sessions share: the two state machines, counters and the result."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from psi.context import RoundContext
from psi.errors import AlreadyUsed, ProtocolError, VerificationError
from psi.session._state import REQUESTER_SENDS, Machine, State, Table
from psi.session.messages import (
    Chunk,
    Done,
    End,
    PayloadColumns,
    ResponderMessage,
    Start,
    kind_of,
)

__all__ = ["Evidence", "Progress", "RequesterResult"]


@dataclass(frozen=True, eq=False)
class Evidence:
    """What one answer delivered (keyed-hash ``matches``): one entry per matched record.

    ``indices`` point into the requester's identities; ``payload`` is aligned with them.
    """

    indices: npt.NDArray[np.int64]
    payload: PayloadColumns


@dataclass(frozen=True)
class Progress:
    """Where a requester session is, in identities and set points (for a progress display)."""

    query_size: int
    #: identities tagged or blinded (made ready to send)
    sent: int
    #: identities answered (matches or reblinded chunks received)
    answered: int
    #: ecdh: the set size the responder announced; 0 before accept and for keyed-hash
    set_size: int = 0
    #: ecdh: set points received
    set_received: int = 0


@dataclass(frozen=True, eq=False)
class RequesterResult:
    """What a requester session returns once ``done`` was received and checked.

    ``indices``/``payload``: one entry per evidence row (keyed-hash: a person
    with two records appears twice; ecdh: membership only, no payload columns).
    ``set_size``: ecdh, the responder's padded set size; 0 for keyed-hash.
    ``transcript``: the digest both sides computed (already compared).
    ``done``: the responder's last message as received (its log anchor).
    """

    indices: npt.NDArray[np.int64]
    payload: PayloadColumns
    transcript: bytes
    set_size: int
    done: Done


@dataclass
class _Counts:
    sent_chunks: int = 0
    sent_items: int = 0
    answered: int = 0
    chunk_sizes: list[int] = field(default_factory=list)


class RequesterSession:
    """The shape of a requester session; subclasses add the protocol.

    Thread-safe for one sender and one receiver thread (a bidirectional stream):
    :meth:`next_request` may run on one thread while :meth:`receive` runs on another.
    """

    protocol: str = ""

    def __init__(
        self,
        context: RoundContext,
        identities: npt.NDArray[np.uint8],
        *,
        chunk_items: int,
        receives: Table,
        max_items: int,
    ) -> None:
        if context.protocol != self.protocol:
            raise ProtocolError(f"round protocol is {context.protocol}, not {self.protocol}")
        arr = np.asarray(identities)
        if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 16:
            raise ValueError("identities must be an (n, 16) uint8 array from encode_identities")
        if not 1 <= chunk_items <= max_items:
            raise ValueError(f"chunk_items must be 1..{max_items}")
        self._context = context
        self._ids = np.ascontiguousarray(arr)
        self._step = chunk_items
        self._lock = threading.Lock()  # state machines and counters
        self._sends = Machine(f"{self.protocol} requester", REQUESTER_SENDS)
        self._receives = Machine(f"{self.protocol} requester", receives)
        self._counts = _Counts()
        self._result: RequesterResult | None = None

    @property
    def context(self) -> RoundContext:
        """The round this session runs."""
        return self._context

    @property
    def query_size(self) -> int:
        """Identities this session sends in all (announced in :class:`Start`)."""
        return len(self._ids)

    @property
    def accepted(self) -> bool:
        """Whether the responder's ``accept`` has been received."""
        return self._receives.state in (State.OPEN, State.DONE)

    @property
    def finished(self) -> bool:
        """Whether ``done`` was received and checked (:meth:`result` is ready)."""
        return self._result is not None

    def start(self) -> Start:
        """The first message to send (once).

        Raises:
            ProtocolError: called twice.
        """
        with self._lock:
            self._sends.step("start")
            self._receives.state = State.STARTED  # now waiting for accept
        return Start(context=self._context.to_bytes(), query_size=len(self._ids), **self._share())

    def next_request(self) -> Chunk | End | None:
        """The next message to send: a chunk, then :class:`End` (the last one).

        ``None``: nothing may be sent until the responder's next message has been
        received (keyed-hash before ``accept``). Call again after :meth:`receive`.

        Raises:
            ProtocolError: before :meth:`start`, or after :class:`End` was returned.
            AlreadyUsed: the round has finished.
        """
        with self._lock:
            if self._result is not None:
                raise AlreadyUsed("the round has finished")
            if self._sends.state is State.STARTED and not self._may_send():
                return None
            counts = self._counts
            lo = counts.sent_items
            if lo >= len(self._ids) and self._sends.allows("end"):
                self._sends.step("end")
                return End(chunks=counts.sent_chunks, items=counts.sent_items)
            self._sends.step("chunk")
            hi = min(lo + self._step, len(self._ids))
            counts.sent_items = hi
            seq = counts.sent_chunks
            counts.sent_chunks += 1
            counts.chunk_sizes.append(hi - lo)
        return Chunk(self._make_chunk(seq, self._ids[lo:hi]))

    def requests(self) -> Iterator[Chunk | End]:
        """Every chunk, then :class:`End`; for a runner that need not wait (after accept).

        Raises:
            ProtocolError: :meth:`next_request` returned ``None`` (not accepted yet).
        """
        while True:
            message = self.next_request()
            if message is None:
                raise ProtocolError(f"{self.protocol} requester: nothing to send before accept")
            yield message
            if isinstance(message, End):
                return

    def receive(self, message: ResponderMessage) -> Evidence | None:
        """Consume one responder message; returns the evidence it delivered, if any.

        Raises:
            ProtocolError: a message not legal now (before start, a second
                accept, data before accept, anything after done, done before
                end) or one the protocol core refuses.
            VerificationError: the responder's transcript differs from ours.
        """
        kind = kind_of(message)
        with self._lock:
            self._receives.step(kind)
            if kind == "done" and self._sends.state is not State.ENDED:
                raise ProtocolError(f"{self.protocol} requester: done before end was sent")
        if isinstance(message, Done):
            self._result = self._finish(message)
            return None
        return self._receive(message)

    def result(self) -> RequesterResult:
        """The round's result, after ``done``.

        Raises:
            ProtocolError: ``done`` has not been received.
        """
        if self._result is None:
            raise ProtocolError(f"{self.protocol} requester: the responder has not sent done")
        return self._result

    @property
    def progress(self) -> Progress:
        """Counts so far (for a progress display)."""
        counts = self._counts
        return Progress(query_size=len(self._ids), sent=counts.sent_items, answered=counts.answered)

    def _answered(self, seq: int) -> None:
        self._counts.answered += self._counts.chunk_sizes[seq]

    @staticmethod
    def _check_transcript(done: Done, ours: bytes) -> None:
        if not hmac.compare_digest(bytes(done.transcript), ours):
            raise VerificationError("transcript mismatch")

    # -- protocol hooks

    def _share(self) -> dict[str, bytes]:
        return {}

    def _may_send(self) -> bool:
        return True

    def _make_chunk(self, seq: int, identities: npt.NDArray[np.uint8]) -> bytes:
        raise NotImplementedError

    def _receive(self, message: ResponderMessage) -> Evidence | None:
        raise NotImplementedError

    def _finish(self, done: Done) -> RequesterResult:
        raise NotImplementedError
