"""The node servicer: its one status table, audit entries, log anchors; the interceptor."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, cast

import grpc
import pytest

from audit.format import IdentityLeak, check_fields
from audit.log import AuditLog
from keys.handles import AuditSigner
from nodes.auth import Peer, PeerIdentityInterceptor, peer_scope
from nodes.config import NodeConfig, load_node_config
from nodes.handlers import BudgetExhausted, NodeBusy, NodeState, QueryBudget, ReplayGuard
from nodes.history import read_round_entries, restore_limits
from nodes.servicer import NodeServicer, status_for
from proto import xmatch_pb2 as pb
from psi.ecdh import EcdhRequester
from psi.errors import ConfigError, ProtocolError, Refused, XmatchError
from psi.identifiers import encode_identities
from psi.keyed_hash import KeyedHashRequester
from tests import configs
from tests.configs import put
from tests.conftest import Pki
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
    assert event == "round_refused" and fields["reason"] == "not a coordinator certificate"


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


# -- second review


def _variant(tmp_path: Path, **node: object) -> NodeConfig:
    """make_cfg's node with the keys ``node`` added to ``[node]``."""
    cfg = make_cfg(tmp_path)
    assert cfg.path is not None
    path = cfg.path.with_name("variant.node.toml")
    edits = [put(f"node.{key}", value) for key, value in node.items()]
    configs.write(path, configs.apply(configs.read(cfg.path), *edits))
    return load_node_config(path)


def _audit_log(pki: Pki, path: Path) -> AuditLog:
    member = pki.issue("justice", "node")
    signer = AuditSigner.load(key=member.audit_key, cert=member.audit_cert, ca=pki.ca)
    return AuditLog.open(path, party="justice", signer=signer)


def test_claims_are_logged_under_the_tls_peer_and_burn_no_budget(tmp_path: Path, pki: Pki) -> None:
    """Finding 2: a member claiming to be civil-affairs cannot spend civil-affairs' budget.

    Its context names civil-affairs, arrives on the wrong stream (a failure before
    authorization) and announces a size that trips the identity guard, which sent
    the entry to the fallback that used to omit ``authorized``.
    """
    cfg = make_cfg(tmp_path)
    log = _audit_log(pki, tmp_path / "j.audit.jsonl")
    servicer = NodeServicer(NodeState.create(cfg, today=lambda: TODAY), log)
    for _ in range(3):
        c = ctx(protocol="keyed-hash")  # requester civil-affairs
        huge = 123_456_789_012_345  # >= 10**14: the log refuses it
        start = pb.EcdhRequest(start=pb.RoundStart(context=c.to_bytes(), query_size=huge))
        with peer_scope(Peer(name="education", role="coordinator")), pytest.raises(Aborted):
            list(servicer.Ecdh(iter([start]), _call_ctx()))
    # and a refusal: the context's requester is not the TLS peer
    c = ctx(protocol="ecdh")
    start = pb.EcdhRequest(start=pb.RoundStart(context=c.to_bytes(), query_size=20))
    with peer_scope(Peer(name="education", role="coordinator")), pytest.raises(Aborted):
        list(servicer.Ecdh(iter([start]), _call_ctx()))
    log.close()
    entries = [e for e in read_round_entries(tmp_path / "j.audit.jsonl")]
    assert [e.event for e in entries] == ["round_failed"] * 3 + ["round_refused"]
    assert {e.requester for e in entries} == {"education"}
    assert [e.authorized for e in entries] == [False, False, False, None]
    raw = [json.loads(line) for line in (tmp_path / "j.audit.jsonl").read_text().splitlines()]
    rounds = [r for r in raw if r["event"].startswith("round_")]
    assert all(r["claimed_requester"] == "civil-affairs" for r in rounds)
    # finding 8 (issue 16): a size the log refuses drops the size, not the reason
    assert [r["reason"] for r in rounds[:3]] == ["keyed-hash round context on the ecdh stream"] * 3
    assert all("query_size" not in r for r in rounds[:3])
    # after a restart civil-affairs still has its whole budget
    budget = QueryBudget()
    restore_limits(
        cfg,
        read_round_entries(tmp_path / "j.audit.jsonl"),
        budget=budget,
        replay=ReplayGuard(10),
        now=_dt.datetime.now(_dt.UTC),
    )
    b = cfg.match_sets[0].budget
    assert (
        budget.remaining(
            match_set="custody", requester="civil-affairs", purpose="eligibility-review", budget=b
        )
        == b.rounds
    )


IDENTITY_PURPOSE = b"110101199003074514"  # same length as "eligibility-review"


def test_a_name_like_an_identity_number_is_refused_and_logged(tmp_path: Path) -> None:
    """Finding 3: both appends used to raise IdentityLeak; the peer got UNKNOWN, no entry."""
    sink = Sink()
    servicer = NodeServicer(NodeState.create(make_cfg(tmp_path), today=lambda: TODAY), sink)
    raw = ctx(protocol="ecdh").to_bytes().replace(b"eligibility-review", IDENTITY_PURPOSE)
    start = pb.EcdhRequest(start=pb.RoundStart(context=raw, query_size=20))
    with peer_scope(COORDINATOR), pytest.raises(Aborted) as info:
        list(servicer.Ecdh(iter([start]), _call_ctx()))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(info.value) == (
        "invalid round context: purpose must not hold 15 or more digits in a row"
    )
    [(event, fields)] = sink.entries
    assert event == "round_refused"
    assert fields["round_id"] == "0" * 32 and fields["match_set"] == "-"
    assert fields["requester"] == "civil-affairs"
    assert IDENTITY_PURPOSE.decode() not in repr(sink.entries)


class RefusingSink(Sink):
    """An audit log that refuses every entry (as the identity guard might)."""

    def append_anchored(self, event: str, **fields: object) -> tuple[int, str]:
        raise IdentityLeak("log field 'reason' looks like it holds an identity number")


def test_the_call_is_aborted_even_if_no_entry_can_be_written(tmp_path: Path) -> None:
    """Finding 3: the exception used to escape before ``context.abort``."""
    servicer = NodeServicer(
        NodeState.create(make_cfg(tmp_path), today=lambda: TODAY), RefusingSink()
    )
    start = pb.EcdhRequest(start=pb.RoundStart(context=b"garbage", query_size=20))
    with peer_scope(COORDINATOR), pytest.raises(Aborted) as info:
        list(servicer.Ecdh(iter([start]), _call_ctx()))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_node_certificate_is_refused_before_it_can_hold_a_slot(tmp_path: Path) -> None:
    """Finding 5: refused at once, even with every slot busy, and nothing read."""
    state = NodeState.create(_variant(tmp_path, queue_seconds=0.2), today=lambda: TODAY)
    sink = Sink()
    servicer = NodeServicer(state, sink)
    held = 0
    while state.slots.acquire(blocking=False):
        held += 1
    pulled = 0

    def requests() -> Iterator[pb.EcdhRequest]:
        nonlocal pulled
        pulled += 1
        yield pb.EcdhRequest(start=pb.RoundStart(context=ctx(protocol="ecdh").to_bytes()))

    try:
        with peer_scope(Peer(name="police", role="node")), pytest.raises(Aborted) as info:
            list(servicer.Ecdh(requests(), _call_ctx()))
    finally:
        for _ in range(held):
            state.slots.release()
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert pulled == 0
    [(event, fields)] = sink.entries
    assert event == "round_refused" and fields["reason"] == "not a coordinator certificate"
    assert fields["requester"] == "police" and fields["round_id"] == "0" * 32
    assert fields["match_set"] == "-" and fields["protocol"] == "ecdh"


def test_a_round_without_a_start_gives_its_slot_back(tmp_path: Path) -> None:
    """Finding 5: a silent stream held a slot for IDLE_SECONDS (300 s)."""
    cfg = _variant(tmp_path, start_timeout_seconds=0.3, max_concurrent_rounds=1)
    assert make_cfg(tmp_path).node.start_timeout_seconds == 15  # the default
    state = NodeState.create(cfg, today=lambda: TODAY)
    sink = Sink()
    servicer = NodeServicer(state, sink)
    release = threading.Event()

    def silent() -> Iterator[pb.KeyedHashRequest]:
        release.wait(30)
        yield from ()

    outcome: list[BaseException] = []

    def call() -> None:
        with peer_scope(COORDINATOR):
            try:
                list(servicer.KeyedHash(silent(), _call_ctx()))
            except BaseException as exc:
                outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(10)
    release.set()
    assert not worker.is_alive(), "the round kept its slot"
    assert time.monotonic() - started < 5
    [exc] = outcome
    assert isinstance(exc, Aborted) and exc.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(exc) == "no start message within 0.3 s"
    assert state.slots.acquire(blocking=False)  # the one slot is free again
    state.slots.release()
    [(event, fields)] = sink.entries
    assert event == "round_refused" and fields["reason"] == "no start message within 0.3 s"
    assert fields["round_id"] == "0" * 32 and fields["match_set"] == "-"


def test_a_round_whose_handler_runs_after_the_stop_never_begins(tmp_path: Path) -> None:
    """Found when CI sent SIGINT to a node during a round: a call gRPC had accepted just
    before the stop began once end_open_rounds had run and the log was closed; its end
    entry then failed ("protocol log ... is closed") as an "Exception ignored" traceback."""
    cfg = make_cfg(tmp_path)
    sink = Sink()
    servicer = NodeServicer(NodeState.create(cfg, today=lambda: TODAY), sink)
    assert servicer.end_open_rounds("node stopped (SIGINT) during the round") == 0
    c = ctx()
    req = KeyedHashRequester.generate(c)
    start = pb.KeyedHashRequest(
        start=pb.RoundStart(
            context=c.to_bytes(), query_size=12, key_share=req.key_share().to_bytes()
        )
    )
    with peer_scope(COORDINATOR), pytest.raises(Aborted) as info:
        next(iter(servicer.KeyedHash(iter([start]), _call_ctx())))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert sink.entries == []  # nothing for a log that is closing
