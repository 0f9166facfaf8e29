"""Peer identity: a server interceptor that names the mTLS peer (house style 10).

gRPC's TLS layer has already verified the client's chain against the federation
CA (``require_client_auth=True``). The interceptor then checks the presented
certificate with :func:`keys.certs.inspect_member_certificate` (issued by our
CA, valid now, one CN equal to the SAN, a member role) and compares the name
with what the TLS layer reports (``x509_common_name``, else the SAN). A call
without a verified member certificate ends with ``UNAUTHENTICATED`` before any
servicer code runs, and is logged to the node's protocol log as ``round_refused``
with reason ``"unauthenticated"`` (placeholder round fields, as for a start the
servicer could not parse; nothing from the certificate is logged).

The verified :class:`Peer` is passed on in a context variable; servicers read it
with :func:`current_peer` and never parse certificates.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from audit.format import UNKNOWN_ROUND_ID
from keys.certs import inspect_member_certificate
from psi.errors import VerificationError, XmatchError

__all__ = [
    "Peer",
    "PeerIdentityInterceptor",
    "RefusalSink",
    "current_peer",
    "peer_from_auth_context",
    "peer_scope",
]


class RefusalSink(Protocol):
    """What the interceptor needs of :class:`audit.log.AuditLog`."""

    def append(self, event: str, **fields: object) -> int: ...


_PEER: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("xmatch_peer", default=None)


@dataclass(frozen=True)
class Peer:
    """A verified federation member on the other end of the call."""

    name: str
    role: str


class Unauthenticated(XmatchError):
    """The call carries no verified member certificate."""


def _values(auth: Mapping[str, Any], key: str) -> list[bytes]:
    raw = auth.get(key)
    if raw is None:
        return []
    if isinstance(raw, bytes):
        return [raw]
    return [v for v in raw if isinstance(v, bytes)]


def _one(values: list[bytes]) -> str | None:
    if len(values) != 1:
        return None
    try:
        return values[0].decode("ascii")
    except UnicodeDecodeError:
        return None


def peer_from_auth_context(auth: Mapping[str, Any], *, ca_pem: bytes) -> Peer:
    """The member named by a gRPC ``auth_context()``.

    Raises:
        Unauthenticated: not TLS, no client certificate, no single name, or the
            certificate fails :func:`keys.certs.inspect_member_certificate`.
    """
    if _one(_values(auth, "transport_security_type")) != "ssl":
        raise Unauthenticated("not a TLS connection")
    name = _one(_values(auth, "x509_common_name")) or _one(
        _values(auth, "x509_subject_alternative_name")
    )
    pem = _values(auth, "x509_pem_cert")
    if name is None or not pem:
        raise Unauthenticated("no client certificate with a single member name")
    try:
        info = inspect_member_certificate(pem[0], ca_pem=ca_pem, usage="tls")
    except VerificationError as exc:
        raise Unauthenticated(f"client certificate rejected: {exc}") from None
    if info.name != name:
        raise Unauthenticated("certificate name differs from the TLS peer name")
    return Peer(name=info.name, role=info.role)


def current_peer() -> Peer:
    """The verified peer of the call being served.

    Raises:
        Unauthenticated: called outside a call that passed the interceptor.
    """
    peer = _PEER.get()
    if peer is None:
        raise Unauthenticated("no authenticated peer for this call")
    return peer


@contextlib.contextmanager
def peer_scope(peer: Peer) -> Iterator[None]:
    """Make ``peer`` the :func:`current_peer` for the code in the block (one thread)."""
    token = _PEER.set(peer)
    try:
        yield
    finally:
        _PEER.reset(token)


Authenticate = Callable[[grpc.ServicerContext], Peer]


def _with_peer_unary(
    inner: Callable[[Any, grpc.ServicerContext], Any], authenticate: Authenticate
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
        with peer_scope(authenticate(context)):
            return inner(request, context)

    return behaviour


def _with_peer_stream(
    inner: Callable[[Any, grpc.ServicerContext], Iterator[Any]], authenticate: Authenticate
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def behaviour(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        peer = authenticate(context)

        def responses() -> Iterator[Any]:
            # The whole response stream is iterated on one server thread; the
            # variable is set for exactly that span.
            token = _PEER.set(peer)
            try:
                yield from inner(requests, context)
            finally:
                # Closed from another thread, whose context differs: nothing to reset.
                with contextlib.suppress(ValueError):
                    _PEER.reset(token)

        return responses()

    return behaviour


_PROTOCOL_OF_METHOD = {"KeyedHash": "keyed-hash", "Ecdh": "ecdh"}


class PeerIdentityInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls without a verified member certificate; names the peer for servicers.

    Each refusal is a ``round_refused`` entry in ``audit`` (when given) with reason
    ``"unauthenticated"``: placeholder round fields, ``responder`` = ``node``, the
    method's protocol (``"-"`` for GetCapabilities) and the method name in ``rpc``.
    """

    def __init__(self, *, ca_pem: bytes, audit: RefusalSink | None = None, node: str = "-") -> None:
        self._ca_pem = ca_pem
        self._audit = audit
        self._node = node

    def _log_refusal(self, method: str) -> None:
        if self._audit is None:
            return
        rpc = method.rsplit("/", 1)[-1]
        self._audit.append(
            "round_refused",
            round_id=UNKNOWN_ROUND_ID,
            requester="-",
            responder=self._node,
            purpose="-",
            match_set="-",
            protocol=_PROTOCOL_OF_METHOD.get(rpc, "-"),
            rpc=rpc if rpc.isidentifier() else "-",
            reason="unauthenticated",
            query_size=0,
            outcome="refused",
        )

    def _authenticator(self, method: str) -> Authenticate:
        def authenticate(context: grpc.ServicerContext) -> Peer:
            try:
                return peer_from_auth_context(context.auth_context(), ca_pem=self._ca_pem)
            except Unauthenticated as exc:
                try:
                    self._log_refusal(method)
                finally:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.diagnostics())
                raise  # abort() raises; this line only satisfies type checkers

        return authenticate

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        authenticate = self._authenticator(str(handler_call_details.method))
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _with_peer_unary(handler.unary_unary, authenticate),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:  # ShareList: the whole call runs on one thread
            return grpc.stream_unary_rpc_method_handler(
                _with_peer_unary(handler.stream_unary, authenticate),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _with_peer_stream(handler.stream_stream, authenticate),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return None  # this service has no other kinds of method
