"""The node servicer: its one status table, audit entries, log anchors; the interceptor."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, cast

import grpc
import pytest

from audit.format import check_fields
from nodes.auth import Peer, PeerIdentityInterceptor, peer_scope
from nodes.handlers import BudgetExhausted, NodeBusy, NodeState
from nodes.servicer import NodeServicer, status_for
from proto import xmatch_pb2 as pb
from psi.ecdh import EcdhRequester
from psi.errors import ConfigError, ProtocolError, Refused, XmatchError
from psi.identifiers import encode_identities
from psi.keyed_hash import KeyedHashRequester
from tests.test_node_handlers import NODE_IDS, OTHERS, TODAY, _streaming, ctx, make_cfg


@pytest.mark.parametrize(
    ("exc", "code", "public"),
    [
        (
            Refused("civil-affairs", "purpose not allowed"),
            grpc.StatusCode.PERMISSION_DENIED,
            "purpose not allowed",
        ),
        (
            BudgetExhausted("civil-affairs", "budget exhausted"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "budget exhausted",
        ),
        (
            NodeBusy("civil-affairs", "node busy"),
            grpc.StatusCode.UNAVAILABLE,
            "civil-affairs: node busy",
        ),
        (
            ProtocolError("tag chunk: bad magic"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tag chunk: bad magic",
        ),
    ],
)
def test_status_table(exc: XmatchError, code: grpc.StatusCode, public: str) -> None:
    got_code, got_public, reason = status_for(exc)
    assert (got_code, got_public) == (code, public)
    assert reason


def test_internal_errors_do_not_reach_the_peer() -> None:
    code, public, reason = status_for(ConfigError("node.toml: match_sets[0] ('custody'): where: x"))
    assert code == grpc.StatusCode.INTERNAL and "custody" not in public and "custody" in reason
    code, public, reason = status_for(ValueError("150802198001010011"))
    assert code == grpc.StatusCode.INTERNAL and "1508" not in public + reason
    assert reason == "internal error (ValueError)"


# -- the servicer without gRPC: fake call context, recording audit sink


class Aborted(Exception):
    """What the fake context's abort raises (grpc raises too)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class FakeContext:
    def __init__(self, auth: dict[str, list[bytes]] | None = None) -> None:
        self._auth = auth or {}

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


class Sink:
    """Records entries after the audit format's own field checks; anchors like AuditLog."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, object]]] = []

    def append(self, event: str, **fields: object) -> int:
        return self.append_anchored(event, **fields)[0]

    def append_anchored(self, event: str, **fields: object) -> tuple[int, str]:
        check_fields(event, fields)
        self.entries.append((event, fields))
        return len(self.entries), hashlib.sha256(repr(fields).encode()).hexdigest()


def _call_ctx() -> grpc.ServicerContext:
    return cast(grpc.ServicerContext, FakeContext())


COORDINATOR = Peer(name="civil-affairs", role="coordinator")


def test_round_finished_is_logged_before_done_and_anchors_it(tmp_path: Path) -> None:
    """Done carries (seq, line hash) of round_finished, written before Done is sent."""
    cfg = make_cfg(tmp_path)
    sink = Sink()
    servicer = NodeServicer(NodeState.create(cfg, today=lambda: TODAY), sink)
    roster = NODE_IDS[10:30] + OTHERS[:12]
    c = ctx(protocol="ecdh")
    req = EcdhRequester.generate(c)
    blinded = [req.blind(encode_identities(roster[s : s + 8])) for s in range(0, len(roster), 8)]
    msgs = [pb.EcdhRequest(start=pb.RoundStart(context=c.to_bytes(), query_size=len(roster)))]
    msgs += [pb.EcdhRequest(blinded=b.to_bytes()) for b in blinded]
    msgs.append(pb.EcdhRequest(end=pb.RequestEnd(chunks=len(blinded), items=len(roster))))
    with peer_scope(COORDINATOR):
        responses = servicer.Ecdh(iter(msgs), _call_ctx())
        done = None
        for resp in responses:
            if resp.WhichOneof("msg") == "done":
                done = resp.done
                # already logged when the requester hears of it
                event, fields = sink.entries[-1]
                assert event == "round_finished" and fields["round_id"] == c.round_id_hex
    assert done is not None
    assert done.log_seq == len(sink.entries) and done.log_head
    assert done.log_head == hashlib.sha256(repr(sink.entries[-1][1]).encode()).hexdigest()
    started = dict(sink.entries[0][1])
    finished = dict(sink.entries[-1][1])
    # the node's actual size (41 rows kept) and the padded class the requester saw
    assert started["set_size"] == finished["set_size"] == len(NODE_IDS) + 1
    assert started["padded_set_size"] == finished["padded_set_size"] == 64


def test_streamed_keyed_hash_round_started_has_no_unknown_set_size(tmp_path: Path) -> None:
    cfg = _streaming(make_cfg(tmp_path))
    sink = Sink()
    servicer = NodeServicer(NodeState.create(cfg, today=lambda: TODAY), sink)
    c = ctx()
    req = KeyedHashRequester.generate(c)
    roster = NODE_IDS[:12]
    start = pb.KeyedHashRequest(
        start=pb.RoundStart(
            context=c.to_bytes(), query_size=len(roster), key_share=req.key_share().to_bytes()
        )
    )
    with peer_scope(COORDINATOR):
        responses = iter(servicer.KeyedHash(iter([start]), _call_ctx()))
        assert next(responses).WhichOneof("msg") == "accept"
        with pytest.raises(Aborted):  # the stream ends before end: a failed round
            next(responses)
    event, fields = sink.entries[0]
    assert event == "round_started" and "set_size" not in fields
    assert [e for e, _ in sink.entries] == ["round_started", "round_failed"]
    assert sink.entries[1][1]["authorized"] is True


def test_node_certificate_cannot_run_a_round(tmp_path: Path) -> None:
    """A node's certificate listed in `allow` still may not act as requester."""
    sink = Sink()
    servicer = NodeServicer(NodeState.create(make_cfg(tmp_path), today=lambda: TODAY), sink)
    c = ctx(protocol="ecdh")
    start = pb.EcdhRequest(start=pb.RoundStart(context=c.to_bytes(), query_size=20))
    with peer_scope(Peer(name="civil-affairs", role="node")), pytest.raises(Aborted) as info:
        list(servicer.Ecdh(iter([start]), _call_ctx()))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    event, fields = sink.entries[-1]
    assert event == "round_refused" and "role node" in str(fields["reason"])


@dataclass(frozen=True)
class CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


@pytest.mark.parametrize(
    ("method", "protocol"),
    [("GetCapabilities", "-"), ("KeyedHash", "keyed-hash"), ("Ecdh", "ecdh")],
)
def test_unauthenticated_calls_are_audit_logged(method: str, protocol: str) -> None:
    sink = Sink()
    interceptor = PeerIdentityInterceptor(ca_pem=b"", audit=sink, node="justice")
    inner = grpc.unary_unary_rpc_method_handler(lambda request, context: "served")
    if method != "GetCapabilities":
        inner = grpc.stream_stream_rpc_method_handler(lambda requests, context: iter(["served"]))
    details = cast(grpc.HandlerCallDetails, CallDetails(f"/xmatch.v1.Node/{method}"))
    handler = interceptor.intercept_service(lambda d: inner, details)
    assert handler is not None
    call = handler.unary_unary or handler.stream_stream
    assert call is not None
    with pytest.raises(Aborted) as info:
        call(iter(()), _call_ctx())  # no TLS auth context at all
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert len(sink.entries) == 1
    event, fields = sink.entries[0]
    assert event == "round_refused"
    assert fields["reason"] == "unauthenticated" and fields["requester"] == "-"
    assert fields["protocol"] == protocol and fields["rpc"] == method
    assert fields["responder"] == "justice" and fields["outcome"] == "refused"
