"""What both responder sessions share: start parsing, chunk counting, the end check."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from psi.context import RoundContext
from psi.errors import ProtocolError
from psi.session._state import Machine, Table
from psi.session.messages import Chunk, End, Matches, Points, RequesterMessage, Start, kind_of

__all__ = ["ResponderSession"]


class ResponderSession:
    """The shape of a responder session; subclasses add the protocol.

    Not thread-safe: a caller that produces messages on two threads (the ecdh
    set alongside the answers) serializes its calls, in the order it sends.
    """

    protocol: str = ""

    def __init__(
        self, table: Table, *, on_rows: Callable[[npt.NDArray[np.uint8]], None] | None
    ) -> None:
        self._machine = Machine(f"{self.protocol} responder", table)
        self._on_rows = on_rows
        self._context: RoundContext | None = None
        self._start: Start | None = None
        #: identities announced in start, received so far, and chunks received
        self.query_size = 0
        self.items = 0
        self.chunks = 0

    @property
    def context(self) -> RoundContext:
        """The round, once :meth:`receive_start` has parsed it.

        Raises:
            ProtocolError: no start received yet.
        """
        if self._context is None:
            raise ProtocolError(f"{self.protocol} responder: no start received")
        return self._context

    @property
    def round_context(self) -> RoundContext | None:
        """The round context once :meth:`receive_start` parsed it (even if it then
        refused it as the other protocol's), else None."""
        return self._context

    def receive_start(self, start: Start) -> RoundContext:
        """Parse the first message; returns its round context (the caller authorizes it).

        Raises:
            ProtocolError: not a start, a second start, a malformed context, or a
                context of the other protocol.
        """
        if not isinstance(start, Start):
            raise ProtocolError("a round must begin with start")
        if self._start is not None:
            raise ProtocolError("second start in one round")
        self._machine.step("start")
        ctx = RoundContext.from_bytes(start.context)
        self._context, self._start = ctx, start
        self.query_size = start.query_size
        if ctx.protocol != self.protocol:
            raise ProtocolError(f"{ctx.protocol} round context on the {self.protocol} stream")
        return ctx

    def _start_message(self) -> Start:
        assert self._start is not None
        return self._start

    def receive(self, message: RequesterMessage) -> Matches | Points | None:
        """Consume a chunk or ``end``; returns the answer to send now, if any.

        Raises:
            ProtocolError: a second start, a message not legal now, a malformed
                or out-of-order chunk, more identities than announced, or an
                ``end`` whose counts do not add up.
        """
        if isinstance(message, Start):
            raise ProtocolError("second start in one round")
        kind = kind_of(message)
        if kind == "end" and self._machine.allows("end"):
            assert isinstance(message, End)
            self._check_end(message)
        self._machine.step(kind)
        if isinstance(message, End):
            self._end(message)
            return None
        assert isinstance(message, Chunk)
        return self._receive_chunk(message)

    def _check_end(self, end: End) -> None:
        if end.chunks != self.chunks or end.items != self.items:
            raise ProtocolError(
                f"end says {end.chunks} chunks and {end.items} identities, "
                f"node received {self.chunks} and {self.items}"
            )
        if self.items != self.query_size:
            raise ProtocolError(
                f"{self.items} identities sent, {self.query_size} announced at start"
            )

    def _count(self, rows: npt.NDArray[np.uint8]) -> None:
        """Count one chunk's rows: no more than announced; ``on_rows`` sees them.

        An empty chunk is out of protocol: a requester never needs one, and each
        message restarts the node's idle timer, so empty chunks could hold a
        round slot for ever without sending anything.
        """
        if rows.shape[0] == 0:
            raise ProtocolError("an empty chunk")
        self.chunks += 1
        self.items += int(rows.shape[0])
        if self.items > self.query_size:
            raise ProtocolError(f"more identities than announced at start ({self.query_size})")
        if self._on_rows is not None:
            self._on_rows(rows)

    # -- protocol hooks

    def _receive_chunk(self, message: Chunk) -> Matches | Points | None:
        raise NotImplementedError

    def _end(self, end: End) -> None:
        raise NotImplementedError
