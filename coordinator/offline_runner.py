"""The requester's runner over files: the psi sessions of :mod:`psi.session`, nothing more.

:func:`outgoing` drives a requester session (whose key draws are recorded) to
its ``end`` and keeps its requests as serialized proto messages, converted by
:func:`coordinator.streams.to_request` exactly as the gRPC runner sends them.
:func:`import_sub_round` rebuilds the same session from the draws, replays the
requests (they must give the same bytes), and feeds it the node's answers,
converted by :func:`coordinator.streams.from_response`; the session checks the
order, the payload tags (at most the node entry's ``max_records_per_identity``
records per matched identity) and the transcript, as online.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.client import MatchSetResult, out_of_protocol
from coordinator.config import NodeEntry
from coordinator.records import Circumstance, EvidenceRow
from coordinator.streams import from_response, log_anchor, to_request
from coordinator.sub_round import SubRound, SubRoundStatus, _ordered, _safe_reason, evidence_rows
from proto import xmatch_pb2 as pb
from psi.context import RoundContext
from psi.errors import PeerError, ProtocolError, Refused, XmatchError
from psi.keyed_hash import KeyedHashResponder
from psi.messages import MAX_MESSAGE_BYTES
from psi.session import (
    DEFAULT_MAX_RECORDS_PER_IDENTITY,
    Accept,
    EcdhRequesterSession,
    End,
    KeyedHashRequesterSession,
    RequesterResult,
    RequesterSession,
)

__all__ = [
    "PendingSubRound",
    "import_sub_round",
    "outgoing",
    "responder_share",
    "sub_from_json",
    "sub_to_json",
]

#: A node refuses chunks above its max_chunk_bytes (1 MiB by default); offline we
#: cannot ask it, so chunks stay below the default.
OFFLINE_CHUNK_BYTES = 1 << 20
_MARGIN = 256


class _Recorder:
    """``os.urandom``, keeping what it drew (the requester's secrets, for the pending file)."""

    def __init__(self) -> None:
        self.drawn = bytearray()

    def __call__(self, n: int) -> bytes:
        data = os.urandom(n)
        self.drawn += data
        return data


class _Replay:
    """Gives back recorded draws, in order."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def __call__(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise XmatchError("the pending state's key draws are damaged")
        out = self._data[self._at : self._at + n]
        self._at += n
        return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


@dataclass(frozen=True)
class PendingSubRound:
    """What the coordinator keeps of one offline sub-round while it waits (secret)."""

    node: str
    match_set: str
    protocol: str
    context: bytes
    #: the requester's key draws (its ephemeral key or secret scalar)
    draws: bytes
    #: keyed-hash: the node's key share, drawn by us (empty for ecdh)
    share: bytes
    #: SHA-256 of the serialized requests, to check the replay against
    request_sha256: str

    def to_json(self) -> dict[str, Any]:
        """JSON form, for the sealed pending file."""
        return {
            "node": self.node,
            "match_set": self.match_set,
            "protocol": self.protocol,
            "context": _b64(self.context),
            "draws": _b64(self.draws),
            "share": _b64(self.share),
            "request_sha256": self.request_sha256,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PendingSubRound:
        """Back from :meth:`to_json`."""
        return cls(
            node=str(doc["node"]),
            match_set=str(doc["match_set"]),
            protocol=str(doc["protocol"]),
            context=_unb64(doc["context"]),
            draws=_unb64(doc["draws"]),
            share=_unb64(doc["share"]),
            request_sha256=str(doc["request_sha256"]),
        )

    def context_params(self) -> tuple[tuple[str, str], ...]:
        """The round's suite / PRF parameter, as online log entries name it."""
        return RoundContext.from_bytes(self.context).params


def responder_share(context: RoundContext) -> tuple[bytes, bytes]:
    """keyed-hash: the node's key share for the round and the draw that makes it.

    The draw travels to the node inside the sealed request; the node's responder
    session is generated from it (docs/threat-model.md, "Offline exchange").
    ecdh needs no key agreement: ``(b"", b"")``.
    """
    if context.protocol != "keyed-hash":
        return b"", b""
    draw = _Recorder()
    share = KeyedHashResponder.generate(context, rng=draw).key_share().to_bytes()
    return share, bytes(draw.drawn)


def _step(chunk_items: int, width: int) -> int:
    limit = min(OFFLINE_CHUNK_BYTES, MAX_MESSAGE_BYTES)
    return max(1, min(chunk_items, (limit - _MARGIN) // width))


def _session(
    context: RoundContext,
    encoded: npt.NDArray[np.uint8],
    rng: Callable[[int], bytes],
    *,
    chunk_items: int,
    max_set_size: int,
    max_records_per_identity: int = DEFAULT_MAX_RECORDS_PER_IDENTITY,
) -> RequesterSession:
    """The requester session of the sub-round, its key drawn from ``rng``."""
    if context.protocol == "keyed-hash":
        return KeyedHashRequesterSession(
            context,
            encoded,
            chunk_items=_step(chunk_items, 16),
            rng=rng,
            max_records_per_identity=max_records_per_identity,
        )
    return EcdhRequesterSession(
        context, encoded, chunk_items=_step(chunk_items, 32), rng=rng, max_set_size=max_set_size
    )


def _requests(session: RequesterSession, share: bytes) -> list[bytes]:
    """Every request of the session, serialized as online (``to_request``).

    keyed-hash: the node's key share (drawn by us, see :func:`responder_share`) is
    given to the session as the node's ``accept`` would give it, before the tags.
    """
    out = [to_request(session.protocol, session.start())]
    if session.protocol == "keyed-hash":
        session.receive(Accept(key_share=share))
    while True:
        message = session.next_request()
        if message is None:  # pragma: no cover - both sessions can send everything now
            raise ProtocolError("the session cannot send its requests without an answer")
        out.append(to_request(session.protocol, message))
        if isinstance(message, End):
            return [m.SerializeToString() for m in out]


def outgoing(
    context: RoundContext,
    encoded: npt.NDArray[np.uint8],
    share: bytes,
    *,
    chunk_items: int,
    max_set_size: int = 10**10,
) -> tuple[list[bytes], bytes]:
    """The sub-round's requests (serialized proto) and the requester's key draws."""
    draw = _Recorder()
    session = _session(context, encoded, draw, chunk_items=chunk_items, max_set_size=max_set_size)
    return _requests(session, share), bytes(draw.drawn)


def _receive(
    peer: str, session: RequesterSession, share: bytes, answers: Sequence[bytes]
) -> RequesterResult:
    """The node's answers into the session, in order; its result once ``done`` is in.

    keyed-hash: the node's ``accept`` must come first and carry the key share the
    request gave the node; the session has had it already.
    """
    parse: Any = pb.KeyedHashResponse if session.protocol == "keyed-hash" else pb.EcdhResponse
    for i, raw in enumerate(answers):
        message = from_response(peer, parse.FromString(raw))
        if session.protocol == "keyed-hash" and (i == 0) != isinstance(message, Accept):
            raise PeerError(peer, "out of protocol: accept must come first, and once")
        if isinstance(message, Accept) and session.protocol == "keyed-hash":
            if not hmac.compare_digest(message.key_share, share):
                raise PeerError(peer, "out of protocol: the key share is not the request's")
            continue
        session.receive(message)
    if not session.finished:
        raise PeerError(peer, "the response ended before done")
    return session.result()


def _failed(
    pending: PendingSubRound, reason: str, *, refused: bool, shown: str, info: dict[str, Any]
) -> SubRound:
    reason = _safe_reason(reason)
    return SubRound(
        node=pending.node,
        match_set=pending.match_set,
        protocol=pending.protocol,
        circumstance=str(info["circumstance"]) if info.get("circumstance") else None,
        status=SubRoundStatus.REFUSED if refused else SubRoundStatus.FAILED,
        matches=0,
        seconds=0.0,
        detail=reason,
        node_display_name=shown,
        display_name=str(info.get("display_name", "")),
        reason=reason,
    )


def _answered(
    peer: str,
    pending: PendingSubRound,
    session: RequesterSession,
    answer: dict[str, Any],
    parts: Sequence[bytes],
    encoded: npt.NDArray[np.uint8],
    identities: Sequence[str],
    started: float,
) -> tuple[MatchSetResult, tuple[EvidenceRow, ...]]:
    """The node's answers through the session; the result and its evidence rows."""
    lo, hi = answer["parts"]
    done = _receive(peer, session, pending.share, list(parts[int(lo) : int(hi)]))
    circumstance = str(answer["circumstance"])
    Circumstance(circumstance)
    anchor = log_anchor(peer, done.done)
    log_seq, log_head = anchor if anchor is not None else (0, "")
    result = MatchSetResult(
        node=pending.node,
        match_set=pending.match_set,
        protocol=pending.protocol,
        circumstance=circumstance,
        indices=done.indices,
        payload=done.payload,
        transcript=done.transcript,
        query_size=len(encoded),
        set_size=done.set_size,
        seconds=time.monotonic() - started,
        node_log_seq=log_seq,
        node_log_head=log_head,
    )
    rows = _ordered(evidence_rows(result, identities))
    return result, rows


def import_sub_round(
    pending: PendingSubRound,
    entry: NodeEntry,
    *,
    answer: dict[str, Any] | None,
    parts: Sequence[bytes],
    encoded: npt.NDArray[np.uint8],
    identities: Sequence[str],
    node_display_name: str,
    chunk_items: int,
) -> SubRound:
    """One sub-round from the node's answer; a failure of the node is an outcome, not a raise."""
    started = time.monotonic()
    peer = f"{pending.node}/{pending.match_set}"
    info = answer or {}
    if answer is None:
        return _failed(
            pending,
            "the response lacks this match set",
            refused=False,
            shown=node_display_name,
            info=info,
        )
    if answer.get("status") != "ok":
        return _failed(
            pending,
            f"{answer.get('status', 'failed')}: {answer.get('reason', '')}",
            refused=answer.get("status") == "refused",
            shown=node_display_name,
            info=info,
        )
    context = RoundContext.from_bytes(pending.context)
    session = _session(
        context,
        encoded,
        _Replay(pending.draws),
        chunk_items=chunk_items,
        max_set_size=entry.max_set_size,
        max_records_per_identity=entry.max_records_per_identity,
    )
    replayed = _requests(session, pending.share)
    if hashlib.sha256(b"".join(replayed)).hexdigest() != pending.request_sha256:
        raise XmatchError("the replayed request differs from the one written (state damaged)")
    try:
        result, rows = _answered(
            peer, pending, session, answer, parts, encoded, identities, started
        )
    except PeerError as exc:
        return _failed(
            pending,
            exc.reason,
            refused=isinstance(exc, Refused),
            shown=node_display_name,
            info=info,
        )
    except XmatchError as exc:
        return _failed(
            pending, out_of_protocol(exc), refused=False, shown=node_display_name, info=info
        )
    except (KeyError, TypeError, ValueError) as exc:
        return _failed(
            pending,
            f"out of protocol: unreadable answer ({type(exc).__name__})",
            refused=False,
            shown=node_display_name,
            info=info,
        )
    circumstance, set_size, transcript = result.circumstance, result.set_size, result.transcript
    anchor = (result.node_log_seq, result.node_log_head) if result.node_log_seq else None
    service = info.get("service_report") or None
    detail = f"{circumstance}; {pending.protocol}"
    if circumstance == Circumstance.SERVICE.value:
        service = service or "gaps"
        detail = f"{circumstance} ({service}); {pending.protocol}"
    if set_size:
        detail += f"; set size class {set_size}"
    log_seq, log_head = anchor if anchor is not None else (None, None)
    return SubRound(
        node=pending.node,
        match_set=pending.match_set,
        protocol=pending.protocol,
        circumstance=circumstance,
        status=SubRoundStatus.OK,
        matches=result.matches,
        seconds=result.seconds,
        detail=detail,
        transcript=transcript,
        rows=rows,
        node_log_seq=log_seq,
        node_log_head=log_head,
        service_report=service,
        node_display_name=node_display_name,
        display_name=str(info.get("display_name", "")),
        set_size=set_size,
    )


# ---------------------------------------------------------------------------
# SubRound <-> JSON (the pending file)


def _row_json(row: EvidenceRow) -> dict[str, Any]:
    return {
        "person_id": row.person_id,
        "circumstance": row.circumstance.value,
        "source": row.source,
        "start_date": row.start_date.isoformat() if row.start_date else None,
        "end_date": row.end_date.isoformat() if row.end_date else None,
        "disability_category": row.disability_category,
        "disability_grade": row.disability_grade,
    }


def _row_back(doc: dict[str, Any]) -> EvidenceRow:
    def day(value: Any) -> _dt.date | None:
        return _dt.date.fromisoformat(value) if value else None

    return EvidenceRow(
        person_id=str(doc["person_id"]),
        circumstance=Circumstance(doc["circumstance"]),
        source=str(doc["source"]),
        start_date=day(doc["start_date"]),
        end_date=day(doc["end_date"]),
        disability_category=doc["disability_category"],
        disability_grade=doc["disability_grade"],
    )


def sub_to_json(sub: SubRound) -> dict[str, Any]:
    """A sub-round's outcome, evidence rows included (for the sealed pending file only)."""
    return {
        "node": sub.node,
        "match_set": sub.match_set,
        "protocol": sub.protocol,
        "circumstance": sub.circumstance,
        "status": sub.status.value,
        "matches": sub.matches,
        "seconds": sub.seconds,
        "detail": sub.detail,
        "transcript": sub.transcript.hex() if sub.transcript is not None else None,
        "rows": [_row_json(r) for r in sub.rows],
        "node_log_seq": sub.node_log_seq,
        "node_log_head": sub.node_log_head,
        "service_report": sub.service_report,
        "node_display_name": sub.node_display_name,
        "display_name": sub.display_name,
        "reason": sub.reason,
        "set_size": sub.set_size,
    }


def sub_from_json(doc: dict[str, Any]) -> SubRound:
    """Back from :func:`sub_to_json`."""
    transcript = doc.get("transcript")
    return SubRound(
        node=str(doc["node"]),
        match_set=str(doc["match_set"]),
        protocol=str(doc["protocol"]),
        circumstance=doc.get("circumstance"),
        status=SubRoundStatus(doc["status"]),
        matches=int(doc["matches"]),
        seconds=float(doc["seconds"]),
        detail=str(doc["detail"]),
        transcript=bytes.fromhex(transcript) if transcript else None,
        rows=tuple(_row_back(r) for r in doc["rows"]),
        node_log_seq=doc.get("node_log_seq"),
        node_log_head=doc.get("node_log_head"),
        service_report=doc.get("service_report"),
        node_display_name=str(doc.get("node_display_name", "")),
        display_name=str(doc.get("display_name", "")),
        reason=str(doc.get("reason", "")),
        set_size=int(doc.get("set_size", 0)),
    )
