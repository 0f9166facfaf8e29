"""The coordinator's gRPC client: one mutual-TLS channel per department node.

For each configured node: one channel (``grpc.secure_channel`` with the
federation CA, our certificate and ``ssl_target_name_override`` = the node's
configured name, so the node's certificate must carry that name), one
``GetCapabilities`` call (retried with exponential back-off while the node is
not reachable yet), then one stream per match set with the protocol that
``coordinator.toml`` names for the node (docs/architecture.md, "Streams").

Each stream is one psi requester session (:mod:`psi.session`) driven by the one
stream runner :func:`coordinator.streams.run_session`: a request generator and a
response loop working at once, the session making tag or blinded-point chunks of
at most ``chunk_items`` identities (16384 by default: 256 KiB of tags, 512 KiB of
points; never near gRPC's 4 MiB) while the loop feeds it the node's answers.

Every failure becomes a :class:`psi.errors.PeerError` (``Refused`` for a
refusal) whose ``peer`` is ``node/match_set`` and whose reason is one
privacy-safe line: ``connection refused at 127.0.0.1:50099``, ``refused:
purpose not allowed``, ``deadline exceeded after 600 s``, ``stream ended
early``, ``transcript mismatch``. Any text or number that came from the node
reaches a reason only through :func:`_safe_detail` (one line, at most 160
characters, dropped if it looks like an identity number). Retries happen only
for transient errors before any data was exchanged; a refusal is never retried.

keyed-hash: a match chunk in which one matched identity carries more records
than the node entry's ``max_records_per_identity`` is out of protocol, refused
from its tags before any payload value is copied.

ecdh: the set size the node announces in ``RoundAccept`` bounds its set
(:meth:`psi.ecdh.EcdhRequester.expect_responder_set`): a node that sends more
points is out of protocol before we multiply them, and ``RoundDone.set_size``
must declare the same total.

Log anchor: the node's ``RoundDone`` names its own ``round_finished`` log line
(``log_seq``, ``log_head``); :attr:`MatchSetResult.node_log_seq` and
``node_log_head`` carry it to the round, which logs and stores it. A node that
sends none (``0``, ``""``) gives none; a partial or malformed anchor is out of
protocol.

Matches delivered before a failure still count (eligibility.md: "a match is a
match"): keyed-hash resolves each match chunk as it arrives and hands it to
the caller's ``on_matches`` callback at once, so a stream that breaks later
has already delivered them. ecdh learns nothing before the end of the stream
(the node's set arrives last), so a failed ecdh sub-round delivers nothing.
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from coordinator.config import NodeEntry, parse_address
from coordinator.streams import log_anchor, run_session
from proto import xmatch_pb2 as pb
from proto import xmatch_pb2_grpc as pb_grpc
from psi.context import RoundContext
from psi.errors import PeerError, Refused, VerificationError, XmatchError
from psi.session import (
    EcdhRequesterSession,
    Evidence,
    KeyedHashRequesterSession,
    PayloadColumns,
    RequesterSession,
)
from runtime.text import printable

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SERVICE_REPORTS",
    "MatchSetResult",
    "NodeClient",
    "describe_rpc_error",
    "log_anchor",
    "out_of_protocol",
]

#: gRPC send/receive limit of our channels (gRPC's default); chunks stay far below.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Seconds before the first reconnect attempt; doubles each time.
BACKOFF_SECONDS = 0.5
#: Room left in a node's ``max_chunk_bytes`` for the psi header and gRPC framing.
_CHUNK_MARGIN = 4096

_REFUSALS = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
    }
)
_TLS_WORDS = ("ssl", "tls", "handshake", "certificate", "peer name")
#: ``MatchSetInfo.service_report`` of a SERVICE set; empty (an older node) means gaps
SERVICE_REPORTS = frozenset({"", "gaps", "needs"})


#: The start of the reason when the node's certificate names someone else.
NAME_MISMATCH = "the certificate of the node does not name this node"


def presented_name(address: str, ca_pem: bytes, *, timeout: float = 5.0) -> str | None:
    """The member name (CN) in the certificate that the server at ``address`` presents.

    Only to explain a failed hostname check: a TLS 1.3 handshake verified
    against the federation CA, without our client certificate, reads the
    server's certificate; nothing else is sent, and the server then drops the
    connection. ``None`` when it cannot be read.
    """
    import socket
    import ssl

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        host, port = parse_address(address)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False  # the name is what we want to learn
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection((host.strip("[]"), port), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        if der is None:
            return None
        cert = x509.load_der_x509_certificate(der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if len(names) == 1 else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _safe_detail(text: str | None, *, fallback: str = "no reason given") -> str:
    """Text that came from a node, made fit for our logs and terminal: one line, short,
    no ID, no control or format character (:func:`runtime.text.printable`).

    ``fallback`` replaces text that is empty or looks like an identity number.
    """
    from audit.format import looks_like_identity_number

    line = printable(" ".join((text or "").split()))[:160]
    if not line or looks_like_identity_number(line):
        return fallback
    return line


def out_of_protocol(exc: XmatchError) -> str:
    """The reason for a node that answered out of protocol.

    The psi layer's message may quote numbers the node chose (a declared set
    size, a sequence number), so it goes through :func:`_safe_detail`.
    """
    return "out of protocol: " + _safe_detail(exc.diagnostics(), fallback="details withheld")


def describe_rpc_error(
    exc: grpc.RpcError, *, address: str, deadline_seconds: float
) -> tuple[str, bool, bool]:
    """Map a gRPC error to ``(reason, refused, transient)``.

    ``transient`` marks errors worth a reconnect (the node is not listening
    yet); TLS failures and refusals are not.
    """
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else ""
    low = (details or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE:
        if "hostname verification" in low or "peer name" in low:
            return (f"{NAME_MISMATCH} at {address}", False, False)
        if any(word in low for word in _TLS_WORDS):
            return (f"TLS handshake with {address} failed (certificate not accepted)", False, False)
        if "refused" in low:
            return (f"connection refused at {address}", False, True)
        if "failed to connect" in low or "connect" in low or "dns" in low or "resolve" in low:
            return (f"cannot connect to {address}", False, True)
        return (f"node unavailable at {address}: {_safe_detail(details)}", False, True)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (f"deadline exceeded after {deadline_seconds:g} s", False, False)
    if code in _REFUSALS:
        return (f"refused: {_safe_detail(details)}", True, False)
    if code == grpc.StatusCode.CANCELLED:
        return ("stream cancelled", False, False)
    return (f"{code.name.lower()}: {_safe_detail(details)}", False, False)


@dataclass
class MatchSetResult:
    """What one sub-round learned.

    ``indices`` point into the identities queried, one entry per evidence
    row (a person with two records of the set appears twice in keyed-hash);
    ``payload`` is aligned with it (no columns for ecdh, membership only).
    ``node_log_seq``/``node_log_head`` are the node's log anchor from
    ``RoundDone`` (checked: a seq from 1 and 64 lower-case hex digits), or
    ``0``/``""`` when the node sent none.
    """

    node: str
    match_set: str
    protocol: str
    circumstance: str
    indices: npt.NDArray[np.int64]
    payload: PayloadColumns
    transcript: bytes
    query_size: int
    set_size: int
    seconds: float
    node_log_seq: int = 0
    node_log_head: str = ""

    @property
    def source(self) -> str:
        """``node/match_set``, the evidence ``source``."""
        return f"{self.node}/{self.match_set}"

    @property
    def matches(self) -> int:
        """Number of evidence rows."""
        return len(self.indices)


ProgressFn = Callable[[int], None]
#: Called with ``(indices, payload)`` for each keyed-hash match chunk once it is
#: resolved: evidence delivered even if the stream fails later.
MatchesFn = Callable[[npt.NDArray[np.int64], PayloadColumns], None]
#: ``(node/match_set, phase, done, total)``: where a sub-round is, for a progress display.
#: Phases: ``blind`` (ecdh: our roster raised to our key), ``exchange`` (identities
#: sent and answered), ``intersect`` (ecdh: the node's set received and compared).
PhaseFn = Callable[[str, str, int, int], None]


class NodeClient:
    """One department node: its channel, capabilities and match-set queries.

    Thread-safe: the round runs the node's match sets concurrently on one
    channel. ``close()`` (or the context manager) closes the channel.
    """

    def __init__(
        self,
        entry: NodeEntry,
        *,
        credentials: grpc.ChannelCredentials,
        chunk_items: int,
        executor: Executor | None = None,
        sleep: Callable[[float], None] = time.sleep,
        interceptors: Sequence[grpc.StreamStreamClientInterceptor[Any, Any]] = (),
        ca_pem: bytes | None = None,
        phases: PhaseFn | None = None,
    ) -> None:
        """``interceptors`` see every stream message (the benchmark counts wire bytes);
        ``ca_pem`` (the federation CA) lets a failed name check say whose certificate
        the node presented."""
        self.entry = entry
        self._ca_pem = ca_pem
        self._phases = phases
        self._chunk_items = chunk_items
        self._executor = executor
        self._sleep = sleep
        self._deadline = time.monotonic() + entry.deadline_seconds
        self._channel = grpc.secure_channel(
            entry.address,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", entry.name),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 0),
            ],
        )
        self._stub = pb_grpc.NodeStub(
            grpc.intercept_channel(self._channel, *interceptors) if interceptors else self._channel
        )
        self._caps: pb.Capabilities | None = None
        self._caps_error: PeerError | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (streams still open are cancelled)."""
        self._channel.close()

    # -- helpers ---------------------------------------------------------------------------

    def _remaining(self, peer: str) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise PeerError(peer, f"deadline exceeded after {self.entry.deadline_seconds:g} s")
        return left

    def _error(self, peer: str, exc: grpc.RpcError) -> PeerError:
        reason, refused, _ = describe_rpc_error(
            exc, address=self.entry.address, deadline_seconds=self.entry.deadline_seconds
        )
        return Refused(peer, reason) if refused else PeerError(peer, reason)

    # -- capabilities ----------------------------------------------------------------------

    def capabilities(self) -> pb.Capabilities:
        """The node's capabilities for us (fetched once, then cached).

        Transient connection errors are retried ``retries`` times with
        exponential back-off (0.5 s, 1 s, 2 s, ...) within the deadline.

        Raises:
            PeerError: unreachable, TLS failure, deadline (peer is the node name).
            Refused: the node refused us.
        """
        with self._lock:
            if self._caps is not None:
                return self._caps
            if self._caps_error is not None:
                raise self._caps_error
            peer = self.entry.name
            attempt = 0
            while True:
                try:
                    caps: pb.Capabilities = self._stub.GetCapabilities(
                        pb.CapabilitiesRequest(), timeout=min(self._remaining(peer), 30.0)
                    )
                    break
                except grpc.RpcError as exc:
                    reason, refused, transient = describe_rpc_error(
                        exc,
                        address=self.entry.address,
                        deadline_seconds=self.entry.deadline_seconds,
                    )
                    delay = BACKOFF_SECONDS * 2**attempt
                    if (
                        transient
                        and attempt < self.entry.retries
                        and (time.monotonic() + delay < self._deadline)
                    ):
                        attempt += 1
                        self._sleep(delay)
                        continue
                    if reason.startswith(NAME_MISMATCH):
                        reason = self._name_mismatch(reason)
                    failure = Refused(peer, reason) if refused else PeerError(peer, reason)
                    self._caps_error = failure
                    raise failure from None
                except PeerError as err:
                    self._caps_error = err
                    raise
            if caps.node and caps.node != self.entry.name:
                wrong = PeerError(peer, f"answers as {_safe_detail(caps.node)!r}")
                self._caps_error = wrong
                raise wrong
            self._caps = caps
            return caps

    def _phase(self, peer: str, phase: str, done: int, total: int) -> None:
        if self._phases is not None:
            self._phases(peer, phase, done, total)

    def _name_mismatch(self, reason: str) -> str:
        """``reason``, with the name in the node's certificate when it can be read."""
        entry = self.entry
        found = presented_name(entry.address, self._ca_pem) if self._ca_pem else None
        if found is None:
            return f"{reason}: its certificate does not name {entry.name!r}"
        return (
            f"the node at {entry.address} presents the certificate of "
            f"{_safe_detail(found, fallback='another member')!r}, not {entry.name!r}: "
            "a [[nodes]] name must equal the name in that node's certificate"
        )

    def match_set_info(self, match_set: str) -> pb.MatchSetInfo:
        """The capabilities entry for ``match_set``, checked against our protocol.

        Raises:
            PeerError: as :meth:`capabilities`, with ``peer`` = ``node/match_set``;
                also when the node does not offer the set or the protocol, or
                announces a ``service_report`` other than gaps or needs for a
                ``SERVICE`` set.
        """
        peer = f"{self.entry.name}/{match_set}"
        try:
            caps = self.capabilities()
        except PeerError as exc:
            raise type(exc)(peer, exc.reason) from None
        for info in caps.match_sets:
            if info.name == match_set:
                if self.entry.protocol not in info.protocols:
                    raise PeerError(peer, f"protocol {self.entry.protocol} not offered")
                if info.circumstance == "SERVICE" and info.service_report not in SERVICE_REPORTS:
                    raise PeerError(peer, "out of protocol: unknown service_report")
                return info
        # The node lists only the sets this requester may use (the capabilities are
        # per caller), so naming them tells us nothing the node has not told us.
        offered = [_safe_detail(info.name, fallback="?") for info in caps.match_sets]
        near = difflib.get_close_matches(match_set, offered, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        listed = ", ".join(sorted(offered)) if offered else "none"
        raise Refused(
            peer,
            f"refused: match set not offered to this requester (it offers you: {listed}{hint})",
        )

    def _chunk_size(self, width: int) -> int:
        limit = self._caps.max_chunk_bytes if self._caps and self._caps.max_chunk_bytes else 0
        if limit:
            return max(1, min(self._chunk_items, (limit - _CHUNK_MARGIN) // width))
        return self._chunk_items

    # -- queries ---------------------------------------------------------------------------

    def query(
        self,
        match_set: str,
        *,
        context: RoundContext,
        identities: npt.NDArray[np.uint8],
        progress: ProgressFn | None = None,
        on_matches: MatchesFn | None = None,
    ) -> MatchSetResult:
        """Run one sub-round of ``match_set`` with this node's protocol.

        ``identities`` are ``psi.identifiers.encode_identities`` blocks;
        ``progress`` is called with the number of identities answered so far.
        ``on_matches`` (keyed-hash only) is called with each match chunk's
        ``(indices, payload)`` as soon as it is resolved, before the next
        message is read: what it received was delivered even when this method
        then raises. An exception it raises fails the sub-round (a
        :class:`psi.errors.XmatchError` becomes ``out of protocol: ...``).

        Raises:
            PeerError: the node failed, answered out of protocol, or its
                transcript differs from ours (peer = ``node/match_set``).
            Refused: the node refused the round.
        """
        peer = f"{self.entry.name}/{match_set}"
        info = self.match_set_info(match_set)
        started = time.monotonic()

        def delivered(evidence: Evidence) -> None:
            if on_matches is not None:
                on_matches(evidence.indices, evidence.payload)

        def observe(kind: str, session: RequesterSession) -> None:
            self._report(peer, kind, session, progress)

        try:
            session = self._session(context, identities)
            stub = self._stub.KeyedHash if session.protocol == "keyed-hash" else self._stub.Ecdh

            def open_stream(requests: Iterator[Any]) -> Any:
                return stub(requests, timeout=self._remaining(peer))

            result = run_session(peer, session, open_stream, on_evidence=delivered, observe=observe)
        except grpc.RpcError as exc:
            raise self._error(peer, exc) from None
        except PeerError:
            raise
        except VerificationError as exc:  # the transcripts differ
            raise PeerError(peer, exc.diagnostics()) from None
        except XmatchError as exc:  # ProtocolError, AlreadyUsed
            raise PeerError(peer, out_of_protocol(exc)) from None
        anchor = log_anchor(peer, result.done)
        log_seq, log_head = anchor if anchor is not None else (0, "")
        return MatchSetResult(
            node=self.entry.name,
            match_set=match_set,
            protocol=self.entry.protocol,
            circumstance=info.circumstance,
            indices=result.indices,
            payload=result.payload,
            transcript=result.transcript,
            query_size=len(identities),
            set_size=result.set_size,
            seconds=time.monotonic() - started,
            node_log_seq=log_seq,
            node_log_head=log_head,
        )

    def _session(
        self, context: RoundContext, identities: npt.NDArray[np.uint8]
    ) -> RequesterSession:
        """The requester session of this node's protocol for one sub-round."""
        if self.entry.protocol == "keyed-hash":
            return KeyedHashRequesterSession(
                context,
                identities,
                chunk_items=self._chunk_size(16),
                max_records_per_identity=self.entry.max_records_per_identity,
            )
        return EcdhRequesterSession(
            context,
            identities,
            chunk_items=self._chunk_size(32),
            executor=self._executor,
            max_set_size=self.entry.max_set_size,
        )

    def _report(
        self, peer: str, kind: str, session: RequesterSession, progress: ProgressFn | None
    ) -> None:
        """Progress display and callback after a message (phases: see :data:`PhaseFn`)."""
        p = session.progress
        if session.protocol == "keyed-hash":
            if kind in ("chunk", "matches"):
                self._phase(peer, "exchange", p.sent + p.answered, 2 * p.query_size)
        elif kind == "chunk":
            self._phase(peer, "blind", p.sent, p.query_size)
        elif kind == "reblinded":
            self._phase(peer, "exchange", p.answered, p.query_size)
        elif kind == "set":
            self._phase(peer, "intersect", p.set_received, max(p.set_size, p.set_received))
        if kind in ("matches", "reblinded") and progress is not None:
            progress(p.answered)
