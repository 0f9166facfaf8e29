"""One sub-round: query one (node, match set), then record its outcome once.

A node's failure is an outcome (:class:`SubRound` with a failed or refused
status), never an exception: the round goes on without that source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter
from typing import Literal

import numpy as np
import numpy.typing as npt

from audit.format import looks_like_identity_number
from audit.log import AuditLog
from coordinator.client import MatchSetResult, NodeClient, out_of_protocol
from coordinator.records import (
    Circumstance,
    EvidenceRow,
    match_rows,
)
from coordinator.state import RoundState
from psi.context import RoundContext
from psi.errors import PeerError, Refused, XmatchError
from psi.session import PayloadColumns

ProgressFn = Callable[[int], None]


class SubRoundStatus(StrEnum):
    """How one (node, match set) query ended: the round's one status vocabulary.

    The state database keeps its own two words (:data:`STATE_STATUS`), the
    report and the log use these.
    """

    OK = "ok"
    FAILED = "failed"
    REFUSED = "refused"


#: what the state database records for each outcome (a refusal is a failed sub-round there)
STATE_STATUS: dict[SubRoundStatus, Literal["completed", "failed"]] = {
    SubRoundStatus.OK: "completed",
    SubRoundStatus.FAILED: "failed",
    SubRoundStatus.REFUSED: "failed",
}


@dataclass
class SubRound:
    """The outcome of one (node, match set) query."""

    node: str
    match_set: str
    protocol: str
    circumstance: str | None
    status: SubRoundStatus
    matches: int
    seconds: float
    detail: str
    transcript: bytes | None = None
    rows: tuple[EvidenceRow, ...] = ()
    node_log_seq: int | None = None
    node_log_head: str | None = None
    #: SERVICE sets: "gaps" or "needs", as the node's capabilities say; else None
    service_report: str | None = None
    #: the display names the node announced for itself and this set ("" when none)
    node_display_name: str = ""
    display_name: str = ""
    #: a failure's privacy-safe reason, as the log records it
    reason: str = ""
    #: the set size class the node announced (0: none)
    set_size: int = 0

    @property
    def source(self) -> str:
        """``node/match_set``."""
        return f"{self.node}/{self.match_set}"


_PERSON = attrgetter("person_id")


def _ordered(rows: Sequence[EvidenceRow]) -> tuple[EvidenceRow, ...]:
    """Rows sorted by identity; a person's records keep the node's order (stable)."""
    return tuple(sorted(rows, key=_PERSON))


def evidence_rows(result: MatchSetResult, identities: Sequence[str]) -> tuple[EvidenceRow, ...]:
    """One evidence row per match of a sub-round.

    keyed-hash payload fields become the evidence columns of the same name;
    ecdh matches carry no dates (membership only).

    Raises:
        XmatchError: an unknown circumstance code, payload field or value
            (the message names a known field, never a value or an unknown
            field's name).
    """
    return match_rows(
        source=result.source,
        circumstance=result.circumstance,
        indices=result.indices,
        payload=result.payload,
        identities=identities,
    )


def _append(
    audit: AuditLog,
    event: str,
    fields: dict[str, object],
    *,
    fallback: dict[str, object],
) -> None:
    """Append ``event``; if the log refuses ``fields`` (e.g. node text tripped the
    identity guard), append it with ``fallback`` instead.

    ``fallback`` holds only our own values, so a node can never make a log
    entry fail (as ``nodes/servicer.py`` ``_log_end`` does for the node).

    Raises:
        XmatchError: the log refused even ``fallback`` (our own fault: fatal).
    """
    try:
        audit.append(event, **fields)
    except XmatchError:
        audit.append(event, **fallback)


def _safe_reason(reason: str) -> str:
    """Last guard on a failure reason before the log, the state and the report."""
    line = " ".join(reason.split())
    if not line or looks_like_identity_number(line):
        return "withheld"
    return line


def _sub_round(
    client: NodeClient,
    match_set: str,
    *,
    context: RoundContext,
    encoded: npt.NDArray[np.uint8],
    identities: Sequence[str],
    audit: AuditLog,
    state: RoundState,
    progress: ProgressFn,
    finish: Callable[[str], None],
) -> SubRound:
    """One sub-round; never raises for a node's failure (it is recorded instead).

    Whatever the node sends, the outcome is a :class:`SubRound`: a failure of
    the node (``PeerError``, or any other error while its answers are read)
    becomes ``failed``/``refused`` with a privacy-safe reason, and the log
    entries fall back to fields of our own if the log refuses the node's.
    Only our own faults (the state database, a log that cannot be written at
    all) propagate.
    """
    entry = client.entry
    rid = context.round_id_hex
    common: dict[str, object] = {
        "round_id": rid,
        "requester": context.requester,
        "responder": entry.name,
        "purpose": context.purpose,
        "match_set": match_set,
        # suite/PRF dispatch: every sub-round entry names its ecdh "suite" or keyed-hash "prf"
        **dict(context.params),
    }
    state.sub_round_running(rid, entry.name, match_set)
    audit.append("round_started", **common, protocol=entry.protocol, query_size=len(encoded))
    outcome = _exchange(
        client,
        match_set,
        context=context,
        encoded=encoded,
        identities=identities,
        progress=progress,
    )
    record_sub_round(audit, state, outcome, round_id=rid, common=common, query_size=len(encoded))
    finish(outcome.status.value)
    return outcome


def _exchange(
    client: NodeClient,
    match_set: str,
    *,
    context: RoundContext,
    encoded: npt.NDArray[np.uint8],
    identities: Sequence[str],
    progress: ProgressFn,
) -> SubRound:
    """Query one match set; a node's failure becomes a failed or refused :class:`SubRound`."""
    entry = client.entry
    started = time.monotonic()
    circumstance: str | None = None
    service_report: str | None = None
    node_shown = set_shown = ""  # display names, once the capabilities are read
    # keyed-hash matches as each chunk is resolved: kept if the stream fails later
    delivered: list[EvidenceRow] = []
    try:
        info = client.match_set_info(match_set)
        circumstance = info.circumstance
        node_shown, set_shown = client.capabilities().display_name, info.display_name
        if circumstance == Circumstance.SERVICE.value:  # checked by match_set_info
            service_report = info.service_report or "gaps"
        source = f"{entry.name}/{match_set}"
        parsed: dict[str, dict[str, object]] = {}  # payload values, from chunk to chunk

        def keep(indices: npt.NDArray[np.int64], payload: PayloadColumns) -> None:
            delivered.extend(
                match_rows(
                    source=source,
                    circumstance=info.circumstance,
                    indices=indices,
                    payload=payload,
                    identities=identities,
                    parsed=parsed,
                )
            )

        result = client.query(
            match_set, context=context, identities=encoded, progress=progress, on_matches=keep
        )
        try:
            # keyed-hash: every chunk's matches were parsed as they came (keep)
            whole = len(delivered) == len(result.indices)
            rows = _ordered(delivered if whole else evidence_rows(result, identities))
        except XmatchError as exc:
            raise PeerError(result.source, out_of_protocol(exc)) from None
    except PeerError as exc:
        failure = exc
    except Exception as exc:  # a node's answer we could not read: its failure, not ours
        failure = PeerError(
            f"{entry.name}/{match_set}",
            f"out of protocol: unreadable answer ({type(exc).__name__})",
        )
    else:
        detail = f"{result.circumstance}; {result.protocol}"
        if service_report is not None:
            detail = f"{result.circumstance} ({service_report}); {result.protocol}"
        if result.set_size:
            detail += f"; set size class {result.set_size}"
        return SubRound(
            node=entry.name,
            match_set=match_set,
            protocol=entry.protocol,
            circumstance=result.circumstance,
            status=SubRoundStatus.OK,
            matches=result.matches,
            seconds=result.seconds,
            detail=detail,
            transcript=result.transcript,
            rows=rows,
            node_log_seq=result.node_log_seq or None,
            node_log_head=result.node_log_head or None,
            service_report=service_report,
            node_display_name=node_shown,
            display_name=set_shown,
            set_size=result.set_size,
        )
    reason = _safe_reason(failure.reason)
    kept = _ordered(delivered)
    detail = reason
    if kept:
        detail += f" ({len(kept)} match(es) delivered before the failure are kept)"
    return SubRound(
        node=entry.name,
        match_set=match_set,
        protocol=entry.protocol,
        circumstance=circumstance,
        status=SubRoundStatus.REFUSED if isinstance(failure, Refused) else SubRoundStatus.FAILED,
        matches=len(kept),
        seconds=time.monotonic() - started,
        detail=detail,
        rows=kept,
        service_report=service_report,
        node_display_name=node_shown,
        display_name=set_shown,
        reason=reason,
    )


def record_sub_round(
    audit: AuditLog,
    state: RoundState,
    outcome: SubRound,
    *,
    round_id: str,
    common: dict[str, object],
    query_size: int,
) -> None:
    """Write one sub-round's outcome to the log and the state: the one place that does.

    Raises:
        XmatchError: the log or the state database refused it (our own fault: fatal).
    """
    base: dict[str, object] = {
        **common,
        "protocol": outcome.protocol,
        "seconds": round(outcome.seconds, 3),
    }
    if outcome.status is SubRoundStatus.OK:
        assert outcome.transcript is not None
        finished: dict[str, object] = {
            **common,
            "protocol": outcome.protocol,
            "transcript": outcome.transcript.hex(),
            "query_size": query_size,
            "set_size": outcome.set_size or None,
            "match_count": outcome.matches,
            "seconds": base["seconds"],
            "outcome": "ok",
        }
        # the node's log anchor (checked by the client), if it sent one
        anchor: dict[str, object] = (
            {"node_log_seq": outcome.node_log_seq, "node_log_head": outcome.node_log_head}
            if outcome.node_log_seq
            else {}
        )
        _append(audit, "round_finished", {**finished, **anchor}, fallback=finished)
    else:
        kept: dict[str, object] = {"matches_kept": outcome.matches} if outcome.rows else {}
        failed = {**base, "outcome": "failed", "query_size": query_size, **kept}
        _append(
            audit,
            "round_failed",
            {**failed, "reason": outcome.reason},
            fallback={**failed, "reason": "withheld"},
        )
    ok = outcome.status is SubRoundStatus.OK
    state.finish_sub_round(
        round_id,
        outcome.node,
        outcome.match_set,
        status=STATE_STATUS[outcome.status],
        matches=outcome.matches if ok or outcome.rows else None,
        seconds=outcome.seconds,
        transcript=outcome.transcript if ok else None,
        detail=None if ok else outcome.detail,
        node_log_seq=outcome.node_log_seq,
        node_log_head=outcome.node_log_head,
    )
