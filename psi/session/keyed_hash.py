"""keyed-hash sessions: the message sequence of psi.keyed_hash, for both roles.

Requester: ``start{key share}`` → (``accept{key share}``) → ``chunk`` (tags) … →
``end``, receiving one ``matches`` per chunk, then ``done``. Responder: the
mirror image; a streamed set (larger than memory) answers every chunk after
``end``. The PRF (``aes128-ecb-v1``, ``aes256-ecb-v1``, ``sm4-ecb-v1``) is the
round's ``prf`` parameter, dispatched by :mod:`psi.keyed_hash`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from psi.context import RoundContext
from psi.errors import ProtocolError
from psi.keyed_hash import KeyedHashRequester, KeyedHashResponder
from psi.messages import MAX_TAGS_PER_CHUNK, KeyShare, MatchChunk, TagChunk
from psi.session._requester import Evidence, RequesterResult, RequesterSession
from psi.session._responder import ResponderSession
from psi.session._state import KEYED_HASH_REQUESTER_RECEIVES, KEYED_HASH_RESPONDER, State
from psi.session.messages import (
    Accept,
    Chunk,
    Done,
    End,
    Matches,
    PayloadColumns,
    ResponderMessage,
)

__all__ = [
    "DEFAULT_MAX_RECORDS_PER_IDENTITY",
    "KeyedHashRequesterSession",
    "KeyedHashResponderSession",
    "evidence_indices",
]

#: Payload of matched rows: the responder's row numbers -> their payload columns.
PayloadFn = Callable[[npt.NDArray[np.int64]], PayloadColumns]

#: Records one matched identity may carry in one match chunk, unless the requester
#: says otherwise: generous for honest sets (a custody history, service records),
#: yet a bound on what a node can make the requester hold per tag.
DEFAULT_MAX_RECORDS_PER_IDENTITY = 1000


def evidence_indices(
    indices: npt.NDArray[np.int64],
    tags: Sequence[int],
    *,
    max_records_per_identity: int | None = None,
) -> npt.NDArray[np.int64]:
    """One identity index per matched record: ``indices[tags]``, checked.

    ``indices`` are a match chunk's resolved identities (one per matched tag),
    ``tags`` name a matched tag for each record (:class:`Matches`).
    ``max_records_per_identity`` bounds the records of one matched tag (``None``:
    no bound); it reads only the tags, so a flood is refused before its payload
    is looked at.

    Raises:
        ProtocolError: a tag index out of range, a matched tag with more records
            than the bound, or a matched tag without a record.
    """
    at = np.fromiter(tags, dtype=np.int64, count=len(tags))
    if len(at) and (int(at.max()) >= len(indices) or int(at.min()) < 0):
        raise ProtocolError("payload entry names no matched tag")
    per_tag = np.bincount(at, minlength=len(indices))
    if (
        max_records_per_identity is not None
        and len(per_tag)
        and int(per_tag.max()) > max_records_per_identity
    ):
        raise ProtocolError(
            f"the responder sent more than {max_records_per_identity} records for one "
            "identity (max_records_per_identity)"
        )
    if not per_tag.all():
        raise ProtocolError("a matched tag has no payload entry")
    return indices[at]


class KeyedHashRequesterSession(RequesterSession):
    """The requester's side of a keyed-hash round over ``identities`` (encoded, in query order).

    ``max_records_per_identity`` refuses a match chunk in which one matched tag
    carries more records (see :func:`evidence_indices`).
    """

    protocol = "keyed-hash"

    def __init__(
        self,
        context: RoundContext,
        identities: npt.NDArray[np.uint8],
        *,
        chunk_items: int,
        rng: Callable[[int], bytes] = os.urandom,
        max_records_per_identity: int = DEFAULT_MAX_RECORDS_PER_IDENTITY,
    ) -> None:
        """Raises: ProtocolError (not a keyed-hash context, unknown prf), ValueError."""
        if max_records_per_identity < 1:
            raise ValueError("max_records_per_identity must be at least 1")
        super().__init__(
            context,
            identities,
            chunk_items=chunk_items,
            receives=KEYED_HASH_REQUESTER_RECEIVES,
            max_items=MAX_TAGS_PER_CHUNK,
        )
        self._requester = KeyedHashRequester.generate(context, rng=rng)
        self._max_records = max_records_per_identity
        self._core = threading.Lock()  # the requester is used from two threads
        # set once the round key is agreed: the state machine is OPEN a moment
        # before (receive steps it, then agrees), and a producer thread asking
        # for a chunk in between would find no key
        self._agreed = False
        self._found: list[npt.NDArray[np.int64]] = []
        self._payloads: list[PayloadColumns] = []
        self._seq = 0

    def _share(self) -> dict[str, bytes]:
        return {"key_share": self._requester.key_share().to_bytes()}

    def _may_send(self) -> bool:
        return self._agreed  # tags need the round key

    def _make_chunk(self, seq: int, identities: npt.NDArray[np.uint8]) -> bytes:
        with self._core:
            chunk = self._requester.tag(identities)
        return chunk.to_bytes()

    def _receive(self, message: ResponderMessage) -> Evidence | None:
        round_id = self._context.round_id
        if isinstance(message, Accept):
            share = KeyShare.from_bytes(message.key_share, round_id=round_id)
            with self._core:
                self._requester.agree(share)
            self._agreed = True
            return None
        assert isinstance(message, Matches)
        seq = self._seq
        chunk = MatchChunk.from_bytes(message.psi, round_id=round_id, seq=seq)
        with self._core:
            idx = self._requester.resolve(chunk)
        # the tags first: a runner may hand the columns over unread (a wire
        # container), and a flood must be refused before they are copied
        rows = evidence_indices(idx, message.tags, max_records_per_identity=self._max_records)
        if len(message.payload) != len(message.tags):
            raise ProtocolError("payload entries and their tags differ in number")
        message.payload.check()
        payload = message.payload.as_lists()
        self._found.append(rows)
        self._payloads.append(payload)
        self._seq += 1
        self._answered(seq)
        return Evidence(indices=rows, payload=payload)

    def _finish(self, done: Done) -> RequesterResult:
        with self._core:
            transcript = self._requester.finish()
        self._check_transcript(done, transcript)
        indices = np.concatenate(self._found) if self._found else np.zeros(0, dtype=np.int64)
        return RequesterResult(
            indices=indices,
            payload=PayloadColumns.joined(self._payloads),
            transcript=transcript,
            set_size=0,
            done=done,
        )


class KeyedHashResponderSession(ResponderSession):
    """The responder's side of a keyed-hash round.

    Sequence: :meth:`receive_start` (the caller then authorizes and finds its
    set), :meth:`accept` with the set held in memory (each chunk is answered
    as it arrives) or ``None`` (a streamed set: chunks are buffered; after
    ``end`` the caller feeds the set to :meth:`match_batch` and sends
    :meth:`streamed_matches`), :meth:`receive` for each chunk and ``end``,
    then :meth:`done`.
    """

    protocol = "keyed-hash"

    def __init__(
        self,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        on_rows: Callable[[npt.NDArray[np.uint8]], None] | None = None,
    ) -> None:
        """``on_rows`` sees each chunk's tags before they are matched (e.g. to refuse
        a repeated identity); an exception it raises ends the round."""
        super().__init__(KEYED_HASH_RESPONDER, on_rows=on_rows)
        self._rng = rng
        self._responder: KeyedHashResponder | None = None
        self._payload: PayloadFn | None = None
        self.match_count = 0

    @property
    def streamed(self) -> bool:
        """Whether the set is streamed (answers after ``end``)."""
        return self._responder is not None and self._payload is None

    def accept(
        self, identities: npt.NDArray[np.uint8] | None, payload: PayloadFn | None = None
    ) -> Accept:
        """Agree the round key and take the set: ``identities`` with ``payload`` (its
        rows' payload), or ``None`` for a set streamed after ``end``.

        Raises:
            ProtocolError: not legal now, a malformed key share, unknown prf.
            ValueError: ``identities`` is not (n, 16) uint8.
        """
        self._machine.step("accept")
        ctx, start = self.context, self._start_message()
        responder = KeyedHashResponder.generate(ctx, rng=self._rng)
        responder.agree(KeyShare.from_bytes(start.key_share, round_id=ctx.round_id))
        if identities is not None:
            responder.load_set(identities)
            self._payload = payload or (lambda rows: PayloadColumns(len(rows)))
        self._responder = responder
        return Accept(key_share=responder.key_share().to_bytes())

    def _chunk(self, data: bytes) -> Matches | None:
        assert self._responder is not None
        chunk = TagChunk.from_bytes(data, round_id=self.context.round_id, seq=self.chunks)
        self._count(chunk.tags)
        if self._payload is None:
            self._responder.buffer(chunk)
            return None
        result = self._responder.match(chunk)
        assert result.rows is not None
        return self._matches(result, self._payload(result.rows))

    def _matches(self, result: MatchChunk, payload: PayloadColumns) -> Matches:
        self._machine.step("matches")
        assert result.row_offsets is not None
        tag_of_row = np.repeat(
            np.arange(len(result.tags), dtype=np.int64), np.diff(result.row_offsets)
        )
        self.match_count += len(result.tags)
        return Matches(
            psi=result.without_rows().to_bytes(), payload=payload, tags=tag_of_row.tolist()
        )

    def match_batch(self, identities: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        """Streamed set, after ``end``: match the next batch of the set (see
        :meth:`psi.keyed_hash.KeyedHashResponder.match_batch`).

        Raises:
            ProtocolError: not streamed, or ``end`` not received yet.
        """
        if not self.streamed or self._machine.state is not State.ENDED:
            raise ProtocolError("keyed-hash responder: match_batch is for a streamed set after end")
        assert self._responder is not None
        return self._responder.match_batch(identities)

    def streamed_matches(
        self, payload: Callable[[MatchChunk], PayloadColumns]
    ) -> Iterator[Matches]:
        """Streamed set: the answer to every chunk, in order, ``payload`` giving each
        one's records.

        Raises:
            ProtocolError: as :meth:`match_batch`.
        """
        if not self.streamed or self._machine.state is not State.ENDED:
            raise ProtocolError("keyed-hash responder: streamed_matches is for a streamed set")
        assert self._responder is not None
        for result in self._responder.streamed_matches():
            yield self._matches(result, payload(result))

    def done(self) -> Done:
        """The last message: totals and transcript.

        Raises:
            ProtocolError: ``end`` has not been received.
        """
        self._machine.step("done")
        assert self._responder is not None
        transcript = self._responder.finish()
        self._responder = None
        return Done(matches=self.match_count, transcript=transcript, chunks=self.chunks)

    def close(self) -> None:
        """Drop the round secrets (the round failed or ended)."""
        self._responder = None

    def _end(self, end: End) -> None:
        del end  # the base class checked the counts

    def _receive_chunk(self, message: Chunk) -> Matches | None:
        return self._chunk(message.data)
