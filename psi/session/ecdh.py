"""ecdh sessions: the message sequence of psi.ecdh, for both roles.

Requester: ``start`` → ``chunk`` (blinded) … → ``end``; it receives ``accept{set_size}``,
then ``reblinded`` chunks (one per blinded chunk, same seq) and ``set`` chunks in
any interleaving, then ``done{set_size}``. The announced size bounds the set
before any point of it is multiplied, and ``done`` must declare the same total.
Blinded chunks do not depend on ``accept``, so a requester may make them (and
send them) right after ``start``. The suite (X25519 ones or
``SM2_XMD:SM3_SSWU_RO_``) is the round's ``suite`` parameter, dispatched by
:mod:`psi.ecdh`.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from psi.context import RoundContext
from psi.ecdh import EcdhRequester, EcdhResponder, size_class
from psi.errors import ProtocolError
from psi.messages import MAX_POINTS_PER_CHUNK, PointChunk
from psi.session._requester import Evidence, Progress, RequesterResult, RequesterSession
from psi.session._responder import ResponderSession
from psi.session._state import ECDH_REQUESTER_RECEIVES, ECDH_RESPONDER
from psi.session.messages import (
    Accept,
    Chunk,
    Done,
    End,
    PayloadColumns,
    Points,
    ResponderMessage,
)

__all__ = ["EcdhRequesterSession", "EcdhResponderSession"]


class EcdhRequesterSession(RequesterSession):
    """The requester's side of an ecdh round over ``identities`` (encoded, in query order).

    ``executor`` runs the group operations (an injected pool); ``max_set_size``
    refuses an ``accept`` announcing a larger set.
    """

    protocol = "ecdh"

    def __init__(
        self,
        context: RoundContext,
        identities: npt.NDArray[np.uint8],
        *,
        chunk_items: int,
        executor: concurrent.futures.Executor | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        max_set_size: int | None = None,
    ) -> None:
        """Raises: ProtocolError (not an ecdh context, unknown suite), ValueError."""
        super().__init__(
            context,
            identities,
            chunk_items=chunk_items,
            receives=ECDH_REQUESTER_RECEIVES,
            max_items=MAX_POINTS_PER_CHUNK,
        )
        # Knowing its query size, the requester intersects set chunks on arrival once
        # its reblinded roster is complete: memory follows the roster, not the set.
        self._requester = EcdhRequester.generate(
            context, rng=rng, executor=executor, query_size=len(self._ids)
        )
        self._max_set_size = max_set_size
        self._set_size = 0
        self._set_received = 0
        self._r_seq = 0
        self._s_seq = 0

    def _make_chunk(self, seq: int, identities: npt.NDArray[np.uint8]) -> bytes:
        # No lock: blinding runs beside the receiving thread, as the core allows.
        return self._requester.blind(identities).to_bytes()

    def _receive(self, message: ResponderMessage) -> Evidence | None:
        round_id = self._context.round_id
        if isinstance(message, Accept):
            size = int(message.set_size)
            if self._max_set_size is not None and size > self._max_set_size:
                raise ProtocolError(f"announced set size above max_set_size ({self._max_set_size})")
            # the announced size bounds the set points we will multiply
            self._requester.expect_responder_set(size)
            self._set_size = size
            return None
        assert isinstance(message, Points)
        if message.stage == "reblinded":
            chunk = PointChunk.from_bytes(
                message.data, stage="reblinded", round_id=round_id, seq=self._r_seq
            )
            self._requester.receive_reblinded(chunk)
            self._answered(self._r_seq)
            self._r_seq += 1
        else:
            chunk = PointChunk.from_bytes(
                message.data, stage="set", round_id=round_id, seq=self._s_seq
            )
            self._requester.receive_responder_set(chunk)
            self._s_seq += 1
            self._set_received += len(chunk)
        return None

    def _finish(self, done: Done) -> RequesterResult:
        self._requester.receive_responder_done(int(done.set_size))
        result = self._requester.finish()
        self._check_transcript(done, result.transcript)
        return RequesterResult(
            indices=result.matched,
            payload=PayloadColumns(len(result.matched)),
            transcript=result.transcript,
            set_size=result.responder_set_size,
            done=done,
        )

    @property
    def progress(self) -> Progress:
        """Counts so far, with the set's (for a progress display)."""
        base = super().progress
        return Progress(
            query_size=base.query_size,
            sent=base.sent,
            answered=base.answered,
            set_size=self._set_size,
            set_received=self._set_received,
        )


class EcdhResponderSession(ResponderSession):
    """The responder's side of an ecdh round.

    Sequence: :meth:`receive_start` (the caller then authorizes), :meth:`open`
    (the caller loads the set into the role object it returns, whole or in
    buckets), :meth:`accept`, then :meth:`receive` for each blinded chunk and
    ``end`` and :meth:`next_set_chunk` until it returns ``None`` (in any
    interleaving; serialize the calls in send order), then :meth:`done`.
    """

    protocol = "ecdh"

    def __init__(
        self,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        executor: concurrent.futures.Executor | None = None,
        size_classes: Callable[[int], int] = size_class,
        on_rows: Callable[[npt.NDArray[np.uint8]], None] | None = None,
    ) -> None:
        super().__init__(ECDH_RESPONDER, on_rows=on_rows)
        self._rng = rng
        self._executor = executor
        self._size_classes = size_classes
        self._responder: EcdhResponder | None = None
        self._set: Iterator[PointChunk] | None = None
        self.set_chunks = 0
        self._set_points = 0
        self._set_finished = False

    def open(self) -> EcdhResponder:
        """The round's role object, for the caller to load the set into.

        Raises:
            ProtocolError: no start, or the start carried a key share.
        """
        ctx = self.context
        if self._start_message().key_share:
            raise ProtocolError("ecdh start carries no key share")
        if self._responder is None:
            self._responder = EcdhResponder.generate(
                ctx, rng=self._rng, executor=self._executor, size_classes=self._size_classes
            )
        return self._responder

    @property
    def set_size(self) -> int:
        """The padded set size (announced in accept, declared in done).

        Raises:
            ProtocolError: no set loaded.
        """
        return self.open().set_size

    def accept(self, chunk_points: int) -> Accept:
        """Announce the padded set; its chunks (``chunk_points`` each) come from
        :meth:`next_set_chunk`.

        Raises:
            ProtocolError: not legal now, no set loaded, ``chunk_points`` out of range.
        """
        self._machine.step("accept")
        responder = self.open()
        self._set = responder.set_chunks(chunk_points)
        return Accept(set_size=responder.set_size)

    @property
    def set_finished(self) -> bool:
        """Whether every set chunk has been produced."""
        return self._set_finished

    def next_set_chunk(self) -> Points | None:
        """The next set chunk to send, ``None`` once the whole set was produced.

        Raises:
            ProtocolError: before accept or after done.
            ValueError: a bucket read back wrong (see ``EcdhResponder.set_chunks``).
        """
        if self._set_finished:
            return None
        if not self._machine.allows("set") or self._set is None:
            state = self._machine.state.value
            raise ProtocolError(f"ecdh responder: set message not legal {state}")
        chunk = next(self._set, None)
        if chunk is None:
            self._set_finished = True
            return None
        self._machine.step("set")
        self.set_chunks += 1
        self._set_points += len(chunk)
        return Points(stage="set", data=chunk.to_bytes())

    def _receive_chunk(self, message: Chunk) -> Points:
        assert self._responder is not None
        chunk = PointChunk.from_bytes(
            message.data, stage="blinded", round_id=self.context.round_id, seq=self.chunks
        )
        self._count(chunk.points)
        out = self._responder.reblind(chunk)
        self._machine.step("reblinded")
        return Points(stage="reblinded", data=out.to_bytes())

    def _end(self, end: End) -> None:
        del end  # the base class checked the counts

    def done(self) -> Done:
        """The last message: the set total, set chunks and transcript.

        Raises:
            ProtocolError: ``end`` not received, or the set not sent completely.
        """
        self._machine.step("done")
        assert self._responder is not None
        total = self._responder.set_size
        transcript = self._responder.finish()
        self._responder = None
        return Done(matches=0, transcript=transcript, chunks=self.set_chunks, set_size=total)

    def close(self) -> None:
        """Drop the round secrets (the round failed or ended)."""
        self._responder = None
        self._set = None
