"""The requester's runner over files: the same psi sessions, messages and response loop.

:func:`outgoing` produces a sub-round's requests as serialized proto messages
(exactly what :class:`coordinator.client.NodeClient` sends online), from a
requester whose key draws are recorded. :func:`import_sub_round` rebuilds that
requester from the draws, replays the requests (they must give the same bytes),
and feeds the node's serialized answers through
:func:`coordinator.streams.run_stream`, the online response loop.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.client import MatchSetResult, out_of_protocol
from coordinator.config import NodeEntry
from coordinator.records import Circumstance, EvidenceRow
from coordinator.streams import StreamState, log_anchor, records, run_stream
from coordinator.sub_round import SubRound, SubRoundStatus, _ordered, _safe_reason, evidence_rows
from proto import xmatch_pb2 as pb
from psi.context import RoundContext
from psi.ecdh import EcdhRequester
from psi.errors import PeerError, Refused, XmatchError
from psi.keyed_hash import KeyedHashRequester, KeyedHashResponder
from psi.messages import MAX_MESSAGE_BYTES, KeyShare, MatchChunk, PointChunk

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


def _requester(context: RoundContext, rng: Any, total: int) -> KeyedHashRequester | EcdhRequester:
    if context.protocol == "keyed-hash":
        return KeyedHashRequester.generate(context, rng=rng)
    return EcdhRequester.generate(context, rng=rng, query_size=total)


def _messages(
    context: RoundContext,
    requester: KeyedHashRequester | EcdhRequester,
    encoded: npt.NDArray[np.uint8],
    share: bytes,
    chunk_items: int,
) -> list[bytes]:
    total = len(encoded)
    start = pb.RoundStart(context=context.to_bytes(), query_size=total)
    chunks = 0
    if isinstance(requester, KeyedHashRequester):
        start.key_share = requester.key_share().to_bytes()
        out = [pb.KeyedHashRequest(start=start).SerializeToString()]
        requester.agree(KeyShare.from_bytes(share, round_id=context.round_id))
        step = _step(chunk_items, 16)
        for lo in range(0, total, step):
            tags = requester.tag(encoded[lo : lo + step])
            out.append(pb.KeyedHashRequest(tags=tags.to_bytes()).SerializeToString())
            chunks += 1
        end = pb.RequestEnd(chunks=chunks, items=total)
        out.append(pb.KeyedHashRequest(end=end).SerializeToString())
        return out
    out = [pb.EcdhRequest(start=start).SerializeToString()]
    step = _step(chunk_items, 32)
    for lo in range(0, total, step):
        blinded = requester.blind(encoded[lo : lo + step])
        out.append(pb.EcdhRequest(blinded=blinded.to_bytes()).SerializeToString())
        chunks += 1
    out.append(pb.EcdhRequest(end=pb.RequestEnd(chunks=chunks, items=total)).SerializeToString())
    return out


def outgoing(
    context: RoundContext, encoded: npt.NDArray[np.uint8], share: bytes, *, chunk_items: int
) -> tuple[list[bytes], bytes]:
    """The sub-round's requests (serialized proto) and the requester's key draws."""
    draw = _Recorder()
    requester = _requester(context, draw, len(encoded))
    messages = _messages(context, requester, encoded, share, chunk_items)
    return messages, bytes(draw.drawn)


class _Call:
    """The node's answers, as a finished gRPC call: iterate, ``cancel`` does nothing."""

    def __init__(self, messages: Sequence[Any]) -> None:
        self._messages = messages

    def __iter__(self) -> Iterator[Any]:
        return iter(self._messages)

    def cancel(self) -> None:
        """Nothing to cancel: the answers are already here."""


def _keyed_hash(
    peer: str,
    context: RoundContext,
    requester: KeyedHashRequester,
    share: bytes,
    answers: list[bytes],
) -> tuple[npt.NDArray[np.int64], list[dict[str, str]], bytes, int, tuple[int, str] | None]:
    state = StreamState()
    found: list[npt.NDArray[np.int64]] = []
    payloads: list[dict[str, str]] = []
    seq = 0

    def accept(message: pb.RoundAccept) -> None:
        if not hmac.compare_digest(bytes(message.key_share), share):
            raise PeerError(peer, "out of protocol: the key share is not the request's")
        state.accepted.set()

    def matches(message: pb.MatchChunk) -> None:
        nonlocal seq
        chunk = MatchChunk.from_bytes(message.psi, round_id=context.round_id, seq=seq)
        rows, fields = records(peer, requester.resolve(chunk), message.payload)
        found.append(rows)
        payloads.extend(fields)
        seq += 1

    call = _Call([pb.KeyedHashResponse.FromString(a) for a in answers])
    done = run_stream(peer, call, state, {"accept": accept, "matches": matches})
    transcript = requester.finish()
    if not hmac.compare_digest(bytes(done.transcript), transcript):
        raise PeerError(peer, "transcript mismatch")
    indices = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    return indices, payloads, transcript, 0, log_anchor(peer, done)


def _ecdh(
    peer: str,
    entry: NodeEntry,
    context: RoundContext,
    requester: EcdhRequester,
    answers: list[bytes],
) -> tuple[npt.NDArray[np.int64], list[dict[str, str]], bytes, int, tuple[int, str] | None]:
    state = StreamState()
    set_size = 0
    seqs = {"reblinded": 0, "set": 0}

    def accept(message: pb.RoundAccept) -> None:
        nonlocal set_size
        set_size = int(message.set_size)
        if set_size > entry.max_set_size:
            raise PeerError(peer, "out of protocol: announced set size above max_set_size")
        requester.expect_responder_set(set_size)
        state.accepted.set()

    def reblinded(message: bytes) -> None:
        chunk = PointChunk.from_bytes(
            message, stage="reblinded", round_id=context.round_id, seq=seqs["reblinded"]
        )
        requester.receive_reblinded(chunk)
        seqs["reblinded"] += 1

    def set_points(message: bytes) -> None:
        chunk = PointChunk.from_bytes(
            message, stage="set", round_id=context.round_id, seq=seqs["set"]
        )
        requester.receive_responder_set(chunk)
        seqs["set"] += 1

    call = _Call([pb.EcdhResponse.FromString(a) for a in answers])
    handlers: dict[str, Any] = {"accept": accept, "reblinded": reblinded, "set_points": set_points}
    done = run_stream(peer, call, state, handlers)
    requester.receive_responder_done(set_size)
    result = requester.finish()
    if not hmac.compare_digest(bytes(done.transcript), result.transcript):
        raise PeerError(peer, "transcript mismatch")
    empty: list[dict[str, str]] = [{} for _ in range(len(result.matched))]
    return (
        result.matched,
        empty,
        result.transcript,
        result.responder_set_size,
        log_anchor(peer, done),
    )


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
    entry: NodeEntry,
    context: RoundContext,
    requester: KeyedHashRequester | EcdhRequester,
    answer: dict[str, Any],
    parts: Sequence[bytes],
    encoded: npt.NDArray[np.uint8],
    identities: Sequence[str],
    started: float,
) -> tuple[MatchSetResult, tuple[EvidenceRow, ...]]:
    """The node's answers through the response loop; the result and its evidence rows."""
    lo, hi = answer["parts"]
    answers = list(parts[int(lo) : int(hi)])
    if isinstance(requester, KeyedHashRequester):
        indices, payloads, transcript, set_size, anchor = _keyed_hash(
            peer, context, requester, pending.share, answers
        )
    else:
        indices, payloads, transcript, set_size, anchor = _ecdh(
            peer, entry, context, requester, answers
        )
    circumstance = str(answer["circumstance"])
    Circumstance(circumstance)
    log_seq, log_head = anchor if anchor is not None else (0, "")
    result = MatchSetResult(
        node=pending.node,
        match_set=pending.match_set,
        protocol=pending.protocol,
        circumstance=circumstance,
        indices=indices,
        payloads=payloads,
        transcript=transcript,
        query_size=len(encoded),
        set_size=set_size,
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
    requester = _requester(context, _Replay(pending.draws), len(encoded))
    replayed = _messages(context, requester, encoded, pending.share, chunk_items)
    if hashlib.sha256(b"".join(replayed)).hexdigest() != pending.request_sha256:
        raise XmatchError("the replayed request differs from the one written (state damaged)")
    try:
        result, rows = _answered(
            peer, pending, entry, context, requester, answer, parts, encoded, identities, started
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
