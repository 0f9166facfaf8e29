"""The messages of a round, as the sessions consume and produce them (transport-neutral).

Requester to responder: :class:`Start`, then :class:`Chunk` messages, then
:class:`End`. Responder to requester: :class:`Accept`, then :class:`Matches`
(keyed-hash) or :class:`Points` (ecdh), then :class:`Done`.

Each message is a frozen dataclass. Protocol payloads are the wire bytes of
the psi message objects (:mod:`psi.messages`): the session that receives
them parses them, checking round id and sequence number, and absorbs them
into the round transcript. A runner (gRPC stream, sealed file) only frames
these fields; :mod:`proto` names the same fields one for one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from psi.errors import ProtocolError

__all__ = [
    "Accept",
    "Chunk",
    "Done",
    "End",
    "Matches",
    "PayloadColumns",
    "Points",
    "RequesterMessage",
    "ResponderMessage",
    "Start",
    "kind_of",
]


@dataclass(frozen=True)
class Start:
    """First requester message: context bytes, announced size, key share (keyed-hash)."""

    context: bytes
    query_size: int
    key_share: bytes = b""


@dataclass(frozen=True)
class Chunk:
    """A tags (keyed-hash ``TagChunk``) or blinded (ecdh ``PointChunk``) chunk, psi bytes."""

    data: bytes


@dataclass(frozen=True)
class End:
    """Last requester message: how many chunks and identities it sent."""

    chunks: int
    items: int


@dataclass(frozen=True)
class Accept:
    """The responder accepts: its key share (keyed-hash) or padded set size (ecdh)."""

    key_share: bytes = b""
    set_size: int = 0


@dataclass(frozen=True)
class PayloadColumns:
    """The payload of ``count`` matched records, column by column.

    ``columns`` maps each payload field sent to one value per record, ``""``
    where that record has none. Columns rather than one mapping per record: a
    round moves hundreds of thousands of records, and a column is built,
    framed and parsed as one list.
    """

    count: int
    columns: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.count

    def check(self) -> None:
        """Raises: ProtocolError: a column with more or fewer values than records."""
        if any(len(values) != self.count for values in self.columns.values()):
            raise ProtocolError("a payload column's length differs from its records'")

    def as_lists(self) -> PayloadColumns:
        """The same columns as lists (``self`` when they are lists already): a runner
        may give any sequence, e.g. the received message's own container, and the
        requester keeps none of those."""
        if all(type(values) is list for values in self.columns.values()):
            return self
        return PayloadColumns(self.count, {k: list(v) for k, v in self.columns.items()})

    @classmethod
    def joined(cls, parts: Sequence[PayloadColumns]) -> PayloadColumns:
        """``parts`` one after the other; a column missing from a part is empty there."""
        names = list(dict.fromkeys(name for part in parts for name in part.columns))
        columns: dict[str, list[str]] = {name: [] for name in names}
        for part in parts:
            for name, values in columns.items():
                values.extend(part.columns.get(name, ("",) * part.count))
        return cls(sum(part.count for part in parts), columns)


@dataclass(frozen=True)
class Matches:
    """keyed-hash answer to one tag chunk: psi MatchChunk bytes + the matched records.

    ``tags[i]`` is the index, in the psi chunk, of the tag that record ``i`` matched
    (a person with two records gives two entries for one tag); ``payload`` holds
    the records' payload, one value per record in each column. A runner may give
    the received message's own sequences: the requester checks the tags (how many
    records each matched identity carries) before it copies any payload column.
    """

    psi: bytes
    payload: PayloadColumns
    tags: Sequence[int]


@dataclass(frozen=True)
class Points:
    """ecdh points: ``reblinded`` (answering the blinded chunk of the same seq) or ``set``."""

    stage: Literal["reblinded", "set"]
    data: bytes


@dataclass(frozen=True)
class Done:
    """Last responder message: the totals the requester checks, and the log anchor.

    ``matches``: matched tags (keyed-hash); ``chunks``: answer (keyed-hash) or
    set (ecdh) chunks sent; ``set_size``: ecdh, the points of the set sent (the
    size announced in :class:`Accept`), 0 for keyed-hash. ``log_seq`` /
    ``log_head`` anchor the node's ``round_finished`` entry (its seq and line
    hash); the node fills them in after writing that entry.
    """

    matches: int
    transcript: bytes
    chunks: int
    set_size: int = 0
    log_seq: int = 0
    log_head: str = ""


RequesterMessage = Start | Chunk | End
ResponderMessage = Accept | Matches | Points | Done


def kind_of(message: RequesterMessage | ResponderMessage) -> str:
    """The name a transition table uses: start, chunk, end, accept, matches,
    reblinded, set, done.

    Raises:
        ProtocolError: not a session message.
    """
    if isinstance(message, Points):
        if message.stage not in ("reblinded", "set"):
            raise ProtocolError(f"unknown points stage {message.stage!r}")
        return message.stage
    name = _KINDS.get(type(message))
    if name is None:
        raise ProtocolError(f"not a round message: {type(message).__name__}")
    return name


_KINDS: dict[type, str] = {
    Start: "start",
    Chunk: "chunk",
    End: "end",
    Accept: "accept",
    Matches: "matches",
    Done: "done",
}
