"""Which message is legal next: the transition tables of the four sessions (after h11's _state.py).

A requester has two sides that move independently on a bidirectional
stream: what it *sends* (start, chunks, end) and what it *receives*
(accept, answers, done). A responder answers in step with what it
receives, so one table serves it. A message whose (state, kind) pair is not
in the table is a :class:`~psi.errors.ProtocolError`.

Cross-side rules, checked by the sessions themselves: a keyed-hash
requester sends no chunk before it has received ``accept`` (it needs the
round key); a requester accepts ``done`` only after it sent ``end``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from psi.errors import ProtocolError

__all__ = [
    "ECDH_REQUESTER_RECEIVES",
    "ECDH_RESPONDER",
    "KEYED_HASH_REQUESTER_RECEIVES",
    "KEYED_HASH_RESPONDER",
    "REQUESTER_SENDS",
    "Machine",
    "State",
]


class State(enum.Enum):
    """Where one side of a session is."""

    IDLE = "before start"
    STARTED = "after start, before accept"
    OPEN = "after accept"
    ENDED = "after end"
    DONE = "after done"


Table = Mapping[tuple[State, str], State]

S = State
#: A requester's sending side, both protocols: start, chunks, end.
REQUESTER_SENDS: Table = {
    (S.IDLE, "start"): S.STARTED,
    (S.STARTED, "chunk"): S.STARTED,
    (S.STARTED, "end"): S.ENDED,
}
#: A keyed-hash requester's receiving side (it starts in STARTED once start is sent).
KEYED_HASH_REQUESTER_RECEIVES: Table = {
    (S.STARTED, "accept"): S.OPEN,
    (S.OPEN, "matches"): S.OPEN,
    (S.OPEN, "done"): S.DONE,
}
#: An ecdh requester's receiving side: reblinded and set chunks interleave freely.
ECDH_REQUESTER_RECEIVES: Table = {
    (S.STARTED, "accept"): S.OPEN,
    (S.OPEN, "reblinded"): S.OPEN,
    (S.OPEN, "set"): S.OPEN,
    (S.OPEN, "done"): S.DONE,
}
#: A keyed-hash responder: both what it receives and what it sends. A streamed
#: set answers every chunk after end.
KEYED_HASH_RESPONDER: Table = {
    (S.IDLE, "start"): S.STARTED,
    (S.STARTED, "accept"): S.OPEN,
    (S.OPEN, "chunk"): S.OPEN,
    (S.OPEN, "matches"): S.OPEN,
    (S.OPEN, "end"): S.ENDED,
    (S.ENDED, "matches"): S.ENDED,
    (S.ENDED, "done"): S.DONE,
}
#: An ecdh responder: set chunks may go out any time after accept, until done.
ECDH_RESPONDER: Table = {
    (S.IDLE, "start"): S.STARTED,
    (S.STARTED, "accept"): S.OPEN,
    (S.OPEN, "chunk"): S.OPEN,
    (S.OPEN, "reblinded"): S.OPEN,
    (S.OPEN, "set"): S.OPEN,
    (S.OPEN, "end"): S.ENDED,
    (S.ENDED, "set"): S.ENDED,
    (S.ENDED, "done"): S.DONE,
}
del S


class Machine:
    """One side's state, moved only along ``table``."""

    def __init__(self, what: str, table: Table, initial: State = State.IDLE) -> None:
        self.what = what
        self.table = table
        self.state = initial

    def allows(self, kind: str) -> bool:
        """Whether a ``kind`` message is legal now."""
        return (self.state, kind) in self.table

    def step(self, kind: str) -> None:
        """Take the transition for a ``kind`` message.

        Raises:
            ProtocolError: no such transition from the current state.
        """
        try:
            self.state = self.table[(self.state, kind)]
        except KeyError:
            raise ProtocolError(
                f"{self.what}: {kind} message not legal {self.state.value}"
            ) from None
