"""The gRPC servicer of a department node (house style 9; Flower's fleet servicer).

Each RPC: log to the audit log, convert proto messages to handler events, run
one driver (:mod:`nodes.drivers`), convert its outputs back, and map any
:class:`psi.errors.XmatchError` to a status code through :data:`STATUS_TABLE`.
Every refusal or failure is an audit entry (``round_refused`` / ``round_failed``
with its reason) and the node keeps serving: an entry whose fields the audit
log refuses is written again with placeholders, and the call is aborted with
its status either way.

A round's ``round_finished`` entry is written with
:meth:`audit.log.AuditLog.append_anchored` *before* ``done`` is sent, and
``done`` carries its anchor (``log_seq``, ``log_head``). The peer's identity
comes from :func:`nodes.auth.current_peer`, set by the interceptor; nothing here
parses a certificate.

Round entries name the TLS peer as ``requester``, never what the round context
claims; a context that names someone else adds ``claimed_requester``. A peer
whose certificate is not a coordinator's, or that no allow list names, is refused
(:func:`nodes.authorization.admit`) before it can hold a round slot, with one
uniform answer; its entry names the certificate (``requester``), its ``role``
and the ``rpc``. A listed requester passes the per-requester gate
(:class:`nodes.limits.RequesterGate`) before a slot, so that it cannot hold
every slot, and a round gets ``start_timeout_seconds`` to send its start.
``GetCapabilities`` calls are logged as ``capabilities_listed``.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

import grpc

from audit.format import UNKNOWN_ROUND_ID, looks_like_identity_number
from nodes import disputes, shares
from nodes.auth import current_peer
from nodes.authorization import NOT_ALLOWED, NotAdmitted, admit, capabilities
from nodes.drivers import EcdhDriver, KeyedHashDriver, RoundDriver
from nodes.limits import BudgetExhausted, RequesterGate
from nodes.state import NodeBusy, NodeState
from proto import xmatch_pb2, xmatch_pb2_grpc
from psi.errors import (
    AlreadyUsed,
    InputError,
    ProtocolError,
    Refused,
    VerificationError,
    XmatchError,
)
from psi.session import (
    Accept,
    Chunk,
    Done,
    End,
    Matches,
    Points,
    RequesterMessage,
    ResponderMessage,
    Start,
)

__all__ = ["STATUS_TABLE", "AuditSink", "NodeServicer", "status_for"]


class AuditSink(Protocol):
    """What the servicer needs of :class:`audit.log.AuditLog`."""

    def append(self, event: str, **fields: object) -> int: ...

    def append_anchored(self, event: str, **fields: object) -> tuple[int, str]: ...


#: The one mapping from domain errors to gRPC status codes; first match wins.
#: ``public`` says whether the error's own one-line message may go to the peer.
STATUS_TABLE: tuple[tuple[type[XmatchError], grpc.StatusCode, bool], ...] = (
    (BudgetExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    (Refused, grpc.StatusCode.PERMISSION_DENIED, True),
    (NodeBusy, grpc.StatusCode.UNAVAILABLE, True),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT, True),
    (AlreadyUsed, grpc.StatusCode.INVALID_ARGUMENT, True),
    (VerificationError, grpc.StatusCode.INVALID_ARGUMENT, True),
    (InputError, grpc.StatusCode.INTERNAL, False),  # match set unreadable: the DBA's problem
)
_RPC = {"keyed-hash": "KeyedHash", "ecdh": "Ecdh"}
_INTERNAL = "internal error on the node; the node's operator can see the cause in its audit log"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(status code, message for the peer, reason for the audit log)."""
    if isinstance(exc, NotAdmitted):  # one answer for every caller that may not query
        return grpc.StatusCode.PERMISSION_DENIED, NOT_ALLOWED, exc.reason
    if isinstance(exc, XmatchError):
        for cls, code, public in STATUS_TABLE:
            if isinstance(exc, cls):
                reason = exc.reason if isinstance(exc, Refused) else exc.diagnostics()
                return code, (reason if public else _INTERNAL), reason
        return grpc.StatusCode.INTERNAL, _INTERNAL, exc.diagnostics()
    # A bug: never echo the message (it could quote data); name the type.
    return grpc.StatusCode.INTERNAL, _INTERNAL, f"internal error ({type(exc).__name__})"


class _NodeStopped(XmatchError):
    """The node stopped (SIGTERM/SIGINT) while the round was open."""


def _ended(interrupted: bool) -> XmatchError:
    """Why a round without an error of its own ended unfinished (its end entry's reason)."""
    if interrupted:
        return _NodeStopped("interrupted on the node (Ctrl-C)")
    return ProtocolError("cancelled by the requester")


_T = TypeVar("_T")


_INTERNAL_CALL = "internal error on the node; the node's operator can see the cause on its stderr"


def _unary(context: grpc.ServicerContext, where: str, call: Callable[[], _T]) -> _T:
    """Run one handler of a unary RPC; an error aborts with its status (:func:`status_for`).

    These calls have no round entry to carry the cause of an internal error, so it
    goes to our stderr (the peer only learns that there is one): the operator's
    one place to look. ``where`` starts that line (``justice: warning:
    DisputeAnswers from civil-affairs``).
    """
    try:
        return call()
    except Exception as exc:
        code, public, reason = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            if looks_like_identity_number(reason):
                reason = "details withheld (they look like an identity number)"
            print(f"{where}: internal error: {reason}", file=sys.stderr, flush=True)
            public = _INTERNAL_CALL
        context.abort(code, public)
        raise  # abort raises; for the type checker


_Req = TypeVar("_Req", xmatch_pb2.KeyedHashRequest, xmatch_pb2.EcdhRequest)
_Resp = TypeVar("_Resp", xmatch_pb2.KeyedHashResponse, xmatch_pb2.EcdhResponse)


def _event(request: xmatch_pb2.KeyedHashRequest | xmatch_pb2.EcdhRequest) -> RequesterMessage:
    kind = request.WhichOneof("msg")
    if kind == "start":
        s = request.start
        return Start(context=s.context, query_size=s.query_size, key_share=s.key_share)
    if kind == "end":
        return End(chunks=request.end.chunks, items=request.end.items)
    if kind == "tags" and isinstance(request, xmatch_pb2.KeyedHashRequest):
        return Chunk(request.tags)
    if kind == "blinded" and isinstance(request, xmatch_pb2.EcdhRequest):
        return Chunk(request.blinded)
    raise ProtocolError("empty or unknown request message")


def _events(requests: Iterable[_Req]) -> Iterator[RequesterMessage]:
    for r in requests:
        yield _event(r)


def _round_done(done: Done) -> xmatch_pb2.RoundDone:
    return xmatch_pb2.RoundDone(
        matches=done.matches,
        transcript=done.transcript,
        chunks=done.chunks,
        set_size=done.set_size,
        log_seq=done.log_seq,
        log_head=done.log_head,
    )


def _keyed_hash_response(out: ResponderMessage) -> xmatch_pb2.KeyedHashResponse:
    if isinstance(out, Accept):
        return xmatch_pb2.KeyedHashResponse(accept=xmatch_pb2.RoundAccept(key_share=out.key_share))
    if isinstance(out, Matches):
        chunk = xmatch_pb2.MatchChunk(psi=out.psi, tags=out.tags)
        # One repeated string per payload column: the values are copied in C,
        # where a message per record cost a Python call each (the node's largest
        # keyed-hash cost before).
        add = chunk.columns.add
        for name, values in out.payload.columns.items():
            add(name=name, values=values)
        return xmatch_pb2.KeyedHashResponse(matches=chunk)
    if isinstance(out, Done):
        return xmatch_pb2.KeyedHashResponse(done=_round_done(out))
    raise TypeError(f"no keyed-hash response for {type(out).__name__}")


def _ecdh_response(out: ResponderMessage) -> xmatch_pb2.EcdhResponse:
    if isinstance(out, Accept):
        return xmatch_pb2.EcdhResponse(accept=xmatch_pb2.RoundAccept(set_size=out.set_size))
    if isinstance(out, Points):
        if out.stage == "reblinded":
            return xmatch_pb2.EcdhResponse(reblinded=out.data)
        return xmatch_pb2.EcdhResponse(set_points=out.data)
    if isinstance(out, Done):
        return xmatch_pb2.EcdhResponse(done=_round_done(out))
    raise TypeError(f"no ecdh response for {type(out).__name__}")


class NodeServicer(xmatch_pb2_grpc.NodeServicer):
    """The Node service: capabilities and the two round streams."""

    def __init__(self, state: NodeState, audit: AuditSink) -> None:
        self._state = state
        self._audit = audit
        #: rounds whose end entry is not written yet, by id(driver); see :meth:`end_open_rounds`
        self._open: dict[int, RoundDriver] = {}
        self._open_lock = threading.Lock()
        #: set by end_open_rounds: the log is about to close, so no round may begin
        self._stopped = False
        self._gate = RequesterGate.for_node(state.config.node.max_concurrent_rounds)

    def end_open_rounds(self, reason: str) -> int:
        """Cancel every round still open and write its end entry (``round_failed``
        or ``round_refused``) with ``reason``; returns how many there were.

        Called when the node stops, after the shutdown grace and before the
        protocol log is closed: every ``round_started`` gets its end, and a round
        generator finalized later finds its entry written and logs nothing.
        """
        with self._open_lock:
            drivers = list(self._open.values())
            self._open.clear()
            self._stopped = True
        for driver in drivers:
            driver.cancel()
            self._log_end(driver, _NodeStopped(reason))
        return len(drivers)

    def _claim_end(self, driver: RoundDriver) -> bool:
        """True for the one caller that may write ``driver``'s end entry."""
        with self._open_lock:
            return self._open.pop(id(driver), None) is not None

    def GetCapabilities(
        self, request: xmatch_pb2.CapabilitiesRequest, context: grpc.ServicerContext
    ) -> xmatch_pb2.Capabilities:
        peer = current_peer()
        views = capabilities(self._state.config, peer.name, role=peer.role)
        self._audit.append(
            "capabilities_listed",
            requester=peer.name,
            role=peer.role,
            responder=self._state.config.node.name,
            match_sets=len(views),
        )
        return xmatch_pb2.Capabilities(
            node=self._state.config.node.name,
            match_sets=[
                xmatch_pb2.MatchSetInfo(
                    name=v.name,
                    circumstance=v.circumstance,
                    protocols=v.protocols,
                    payload=v.payload,
                    purposes=v.purposes,
                    service_report=v.service_report,
                    display_name=v.display_name,
                )
                for v in views
            ],
            max_chunk_bytes=self._state.config.node.max_chunk_bytes,
            # One number for all sets: the largest minimum, which satisfies each.
            min_query_size=max((v.min_query_size for v in views), default=0),
            display_name=self._state.config.node.display_name or "",
        )

    def KeyedHash(
        self,
        request_iterator: Iterator[xmatch_pb2.KeyedHashRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[xmatch_pb2.KeyedHashResponse]:
        peer = current_peer()
        driver = KeyedHashDriver(self._state, peer.name, role=peer.role)
        return self._round(driver, request_iterator, context, _keyed_hash_response)

    def Ecdh(
        self,
        request_iterator: Iterator[xmatch_pb2.EcdhRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[xmatch_pb2.EcdhResponse]:
        peer = current_peer()
        driver = EcdhDriver(self._state, peer.name, role=peer.role)
        return self._round(driver, request_iterator, context, _ecdh_response)

    # -- 疑义校核 disputes and work lists: thin calls into nodes.disputes / nodes.shares

    def FileDispute(
        self, request: xmatch_pb2.Dispute, context: grpc.ServicerContext
    ) -> xmatch_pb2.DisputeReceipt:
        config, peer = self._state.config, current_peer()
        return _unary(
            context,
            f"{config.node.name}: warning: FileDispute from {peer.name}",
            lambda: disputes.file_dispute(config, self._audit, peer, request),
        )

    def WithdrawDispute(
        self, request: xmatch_pb2.DisputeWithdrawal, context: grpc.ServicerContext
    ) -> xmatch_pb2.DisputeReceipt:
        config, peer = self._state.config, current_peer()
        return _unary(
            context,
            f"{config.node.name}: warning: WithdrawDispute from {peer.name}",
            lambda: disputes.withdraw_dispute(config, self._audit, peer, request),
        )

    def DisputeAnswers(
        self, request: xmatch_pb2.DisputeAnswersRequest, context: grpc.ServicerContext
    ) -> xmatch_pb2.DisputeAnswerList:
        config, peer = self._state.config, current_peer()
        return _unary(
            context,
            f"{config.node.name}: warning: DisputeAnswers from {peer.name}",
            lambda: disputes.dispute_answers(config, self._audit, peer, request),
        )

    def ShareList(
        self, request_iterator: Iterator[xmatch_pb2.WorkList], context: grpc.ServicerContext
    ) -> xmatch_pb2.ShareReceipt:
        config, peer = self._state.config, current_peer()
        return _unary(
            context,
            f"{config.node.name}: warning: ShareList from {peer.name}",
            lambda: shares.receive_work_list(config, self._audit, peer, request_iterator),
        )

    # -- one round, either protocol

    def _placeholders(self, driver: RoundDriver) -> dict[str, object]:
        """Round fields from our own values only: for a call without a round context."""
        return {
            "round_id": UNKNOWN_ROUND_ID,
            "requester": driver.peer,
            "responder": self._state.config.node.name,
            "purpose": "-",
            "match_set": "-",
            "protocol": driver.protocol,
        }

    def _fields(self, driver: RoundDriver) -> dict[str, object]:
        """The round fields; ``requester`` is always the TLS peer.

        The context's requester goes into ``claimed_requester`` when it names
        someone else (authorization refuses such a round), so that a refusal is
        never filed under, nor a budget charged to, a member who did not call.
        """
        ctx = driver.context
        if ctx is None:  # the start message could not even be parsed
            return self._placeholders(driver)
        fields: dict[str, object] = {
            "round_id": ctx.round_id_hex,
            "requester": driver.peer,
            "responder": ctx.responder,
            "purpose": ctx.purpose,
            "match_set": ctx.match_set,
            "protocol": ctx.protocol,
            # suite/PRF dispatch: the sub-round's ecdh "suite" or keyed-hash "prf", named
            **dict(ctx.params),
        }
        if ctx.requester != driver.peer:
            fields["claimed_requester"] = ctx.requester
        return fields

    def _log_end(self, driver: RoundDriver, exc: BaseException) -> None:
        """Write the round's ``round_refused`` or ``round_failed`` entry.

        If the audit log refuses the entry (a field trips its identity guard),
        it is written with reason ``withheld`` and without the requester's
        numbers; if that is refused too, with :meth:`_placeholders`.
        """
        seconds = round(time.monotonic() - driver.started, 3)
        _, _, reason = status_for(exc)
        authorized = driver.match_set is not None
        # A call that never got a round context (no start, an unreadable one, or
        # none in time) is refused like an unauthenticated one: its entry has the
        # placeholder round id, which only refusals may use (audit.reconcile).
        refused = not authorized and (
            driver.context is None or isinstance(exc, (Refused, NodeBusy))
        )
        event = "round_refused" if refused else "round_failed"
        extra: dict[str, object] = {
            "outcome": event[6:],
            "role": driver.role,
            "rpc": _RPC[driver.protocol],
        }
        if not refused:
            # whether the round passed authorize (and so used budget): read back
            # at startup (nodes.history)
            extra["authorized"] = authorized
        sizes: dict[str, object] = {"query_size": driver.query_size}
        if not refused:
            sizes.update(items=driver.items, seconds=seconds)
        try:
            self._audit.append(event, **self._fields(driver), reason=reason, **sizes, **extra)
            return
        except XmatchError:  # e.g. the reason or a size tripped the identity guard
            pass
        try:  # a size the log refuses (10**14 and above): keep the reason, drop the sizes
            self._audit.append(event, **self._fields(driver), reason=reason, **extra)
            return
        except XmatchError:
            pass
        try:
            self._audit.append(event, **self._fields(driver), reason="withheld", **extra)
        except XmatchError:
            self._audit.append(event, **self._placeholders(driver), reason="withheld", **extra)

    def _round(
        self,
        driver: RoundDriver,
        requests: Iterable[_Req],
        context: grpc.ServicerContext,
        to_proto: Callable[[ResponderMessage], _Resp],
    ) -> Iterator[_Resp]:
        context.add_callback(driver.cancel)
        error: BaseException | None = None
        finished = False
        claimed = False  # this call took the right to write the end entry
        interrupted = False
        with self._open_lock:
            stopped = self._stopped
            if not stopped:
                self._open[id(driver)] = driver
        if stopped:
            # a call gRPC accepted just before the stop, whose handler runs only now:
            # its end entry could no longer be written (the log closes), so it never
            # begins (found when CI ran a SIGINT during a round)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the node is stopping")
        try:
            # Before a slot is taken: only a listed coordinator may hold one, and no
            # requester more than the gate grants it.
            admit(self._state.config, driver.peer, role=driver.role)
            gate = self._gate.hold(driver.peer, timeout=self._state.config.node.queue_seconds)
            with gate, self._state.round_slot(driver.peer):
                outputs = driver.run(_events(requests))
                try:
                    for out in outputs:
                        if isinstance(out, Accept):
                            self._started(driver)
                        if isinstance(out, Done):
                            claimed = self._claim_end(driver)
                            if not claimed:
                                raise _NodeStopped("node stopped during the round")
                            # logged (and fsynced) before the requester hears of it
                            out = self._finished(driver, out)
                            finished = True
                        yield to_proto(out)
                finally:
                    outputs.close()
        except KeyboardInterrupt:
            # Ctrl-C in this process (``node answer`` runs rounds in its main thread):
            # the requester cancelled nothing, so the end entry must not say it did
            interrupted = True
            raise
        except Exception as exc:
            error = exc
        finally:
            # the end entry is written once: here, or by end_open_rounds at shutdown
            mine = claimed or self._claim_end(driver)
            if not finished:
                try:
                    if mine:
                        self._log_end(driver, error or _ended(interrupted))
                finally:
                    if error is not None:
                        code, public, _ = status_for(error)
                        context.abort(code, public)

    @staticmethod
    def _sizes(driver: RoundDriver) -> dict[str, object]:
        """The node's actual set size where known, the padded size class and buckets (ecdh)."""
        sizes: dict[str, object] = {}
        if driver.set_size is not None:
            sizes["set_size"] = driver.set_size
        if driver.padded_set_size is not None:
            sizes["padded_set_size"] = driver.padded_set_size
        if driver.buckets is not None:
            sizes["buckets"] = driver.buckets
        return sizes

    def _started(self, driver: RoundDriver) -> None:
        loaded = driver.loaded
        fields: dict[str, object] = {
            **self._fields(driver),
            "query_size": driver.query_size,
            **self._sizes(driver),
        }
        if loaded is not None:  # a streamed keyed-hash set is read only at end
            fields["set_rejected"] = loaded.rejected_total
        self._audit.append("round_started", **fields)

    def _finished(self, driver: RoundDriver, done: Done) -> Done:
        """Write ``round_finished`` and return ``done`` with the entry's anchor."""
        fields: dict[str, object] = {
            **self._fields(driver),
            "query_size": driver.query_size,
            **self._sizes(driver),
            "seconds": round(time.monotonic() - driver.started, 3),
            "outcome": "ok",
            "transcript": done.transcript.hex(),
        }
        if driver.match_count is not None:
            fields["match_count"] = driver.match_count
        seq, head = self._audit.append_anchored("round_finished", **fields)
        return dataclasses.replace(done, log_seq=seq, log_head=head)
