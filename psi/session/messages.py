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

from dataclasses import dataclass
from typing import Literal

from psi.errors import ProtocolError

__all__ = [
    "Accept",
    "Chunk",
    "Done",
    "End",
    "Matches",
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
class Matches:
    """keyed-hash answer to one tag chunk: psi MatchChunk bytes + one payload per record.

    ``tags[i]`` is the index, in the psi chunk, of the tag that record ``i`` matched
    (a person with two records gives two entries for one tag).
    """

    psi: bytes
    payload: list[dict[str, str]]
    tags: list[int]


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
