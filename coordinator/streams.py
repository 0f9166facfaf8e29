"""The requester's gRPC runner: one stream runner that drives either requester session.

A requester session (:mod:`psi.session`) holds the protocol's whole message
sequence; this module only moves its messages over a ``Node.KeyedHash`` or
``Node.Ecdh`` stream (docs/architecture.md, "Sessions and runners"):

- a producer thread asks the session for its next request ahead of the wire
  (ecdh blinding runs in the pool while the stream waits for the node), at most
  :data:`READ_AHEAD` messages ahead;
- the request generator gRPC consumes sends ``start``, waits for ``accept``
  (nothing of the roster goes to a node that has not accepted), then the
  producer's messages;
- the response loop feeds every message to :meth:`RequesterSession.receive`,
  hands delivered evidence to the caller at once, and cancels the call on any
  error. The stream must end with the session finished (``done`` checked).
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from proto import xmatch_pb2 as pb
from psi.errors import PeerError
from psi.session import (
    Accept,
    Chunk,
    Done,
    End,
    Evidence,
    Matches,
    PayloadColumns,
    Points,
    RequesterMessage,
    RequesterResult,
    RequesterSession,
    ResponderMessage,
    Start,
)

__all__ = ["READ_AHEAD", "from_response", "log_anchor", "run_session", "to_request"]

#: Largest ``RoundDone.log_seq`` we accept; a protocol log never gets near it
#: (and the audit format refuses integers from 10**14 on).
_MAX_LOG_SEQ = 10**13
_LOG_HEAD = re.compile(r"[0-9a-f]{64}")
#: Requests the producer makes ahead of the wire.
READ_AHEAD = 2
_POLL_SECONDS = 0.05

Request = pb.KeyedHashRequest | pb.EcdhRequest
Response = pb.KeyedHashResponse | pb.EcdhResponse
#: Called after each message the session made or received: (message kind, session).
Observer = Callable[[str, RequesterSession], None]


def to_request(protocol: str, message: RequesterMessage) -> Request:
    """The proto request of either stream for a session message."""
    cls: Any = pb.KeyedHashRequest if protocol == "keyed-hash" else pb.EcdhRequest
    if isinstance(message, Start):
        start = pb.RoundStart(
            context=message.context, query_size=message.query_size, key_share=message.key_share
        )
        return cls(start=start)  # type: ignore[no-any-return]
    if isinstance(message, Chunk):
        field = "tags" if protocol == "keyed-hash" else "blinded"
        return cls(**{field: message.data})  # type: ignore[no-any-return]
    return cls(end=pb.RequestEnd(chunks=message.chunks, items=message.items))  # type: ignore[no-any-return]


def from_response(peer: str, response: Response) -> ResponderMessage:
    """The session message for a proto response of either stream.

    Raises:
        PeerError: an empty or unknown message.
    """
    kind = response.WhichOneof("msg")
    if kind == "accept":
        a = response.accept
        return Accept(key_share=bytes(a.key_share), set_size=int(a.set_size))
    if kind == "matches" and isinstance(response, pb.KeyedHashResponse):
        m = response.matches
        # the message's own containers, not lists: the session counts the records
        # per identity from the tags before any payload value becomes a str
        columns = {c.name: c.values for c in m.columns}
        if len(columns) != len(m.columns):
            raise PeerError(peer, "a payload column sent twice")
        return Matches(psi=bytes(m.psi), payload=PayloadColumns(len(m.tags), columns), tags=m.tags)
    if isinstance(response, pb.EcdhResponse):
        if kind == "reblinded":
            return Points(stage="reblinded", data=bytes(response.reblinded))
        if kind == "set_points":
            return Points(stage="set", data=bytes(response.set_points))
    if kind == "done":
        d = response.done
        return Done(
            matches=int(d.matches),
            transcript=bytes(d.transcript),
            chunks=int(d.chunks),
            set_size=int(d.set_size),
            log_seq=int(d.log_seq),
            log_head=str(d.log_head),
        )
    raise PeerError(peer, f"unexpected {kind or 'empty'} message")


class _Run:
    """The threads of one stream: the producer, the request generator, their stop flag."""

    def __init__(self, session: RequesterSession, observe: Observer) -> None:
        self.session = session
        self.observe = observe
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.outbox: queue.Queue[Chunk | End] = queue.Queue(maxsize=READ_AHEAD)

    def produce(self) -> None:
        """Producer thread: the session's requests, made ahead of the wire."""
        try:
            while not self.stop.is_set():
                message = self.session.next_request()
                if message is None:  # nothing before the node's next message (accept)
                    self.stop.wait(0.005)
                    continue
                if isinstance(message, Chunk):
                    self.observe("chunk", self.session)
                while not self.stop.is_set():
                    try:
                        self.outbox.put(message, timeout=_POLL_SECONDS)
                        break
                    except queue.Full:
                        continue
                if isinstance(message, End):
                    return
        except BaseException as exc:  # surfaced by the response loop
            self.error = exc
            self.stop.set()

    def requests(self, protocol: str, start: Start) -> Iterator[Request]:
        """The request stream gRPC consumes: start, then (after accept) the producer's."""
        yield to_request(protocol, start)
        while not self.session.accepted:
            if self.stop.wait(_POLL_SECONDS):
                return
        while not self.stop.is_set():
            try:
                message = self.outbox.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            yield to_request(protocol, message)
            if isinstance(message, End):
                return


def run_session(
    peer: str,
    session: RequesterSession,
    open_stream: Callable[[Iterator[Request]], Iterable[Response]],
    *,
    on_evidence: Callable[[Evidence], None] | None = None,
    observe: Observer = lambda kind, session: None,
) -> RequesterResult:
    """Drive ``session`` over the stream ``open_stream(requests)`` returns; its result.

    ``on_evidence`` gets each keyed-hash answer's evidence as soon as the session
    has checked it (before the next message is read); ``observe`` is told of every
    message made or received (for progress displays).

    Raises:
        PeerError: an unknown message, or the stream ended before ``done``.
        XmatchError: the session refused a message (ProtocolError,
            VerificationError), or what ``on_evidence`` raised.
        grpc.RpcError: the call failed.
    """
    run = _Run(session, observe)
    start = session.start()
    producer = threading.Thread(target=run.produce, name=f"requests {peer}", daemon=True)
    producer.start()
    call: Any = open_stream(run.requests(session.protocol, start))
    try:
        for response in call:
            message = from_response(peer, response)
            evidence = session.receive(message)
            if evidence is not None and on_evidence is not None:
                on_evidence(evidence)
            observe(_kind(message), session)
    except BaseException:
        run.stop.set()
        call.cancel()
        if run.error is not None:
            raise run.error from None
        raise
    finally:
        run.stop.set()
        producer.join(timeout=5)
    if run.error is not None:
        raise run.error
    if not session.finished:
        raise PeerError(peer, "stream ended early")
    return session.result()


def _kind(message: ResponderMessage) -> str:
    if isinstance(message, Points):
        return message.stage
    return type(message).__name__.lower()


def log_anchor(peer: str, done: pb.RoundDone | Done) -> tuple[int, str] | None:
    """The node's log anchor from ``done``: ``(log_seq, log_head)``, or None if absent.

    Raises:
        PeerError: only one of the two is set, ``log_seq`` is out of range, or
            ``log_head`` is not 64 lower-case hex digits (the reason never
            quotes what the node sent).
    """
    seq, head = int(done.log_seq), str(done.log_head)
    if seq == 0 and head == "":
        return None
    if not 1 <= seq <= _MAX_LOG_SEQ or _LOG_HEAD.fullmatch(head) is None:
        raise PeerError(peer, "out of protocol: malformed log anchor in RoundDone")
    return seq, head
