"""`xmatch node serve` as a real process over mutual TLS on loopback."""

from __future__ import annotations

import datetime as _dt
import datetime as dt
import hashlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from keys.handles import load_tls_credentials
from proto import xmatch_pb2, xmatch_pb2_grpc
from psi.context import RoundContext
from psi.ecdh import EcdhRequester
from psi.identifiers import encode_identities, identity_number
from psi.keyed_hash import KeyedHashRequester
from psi.messages import KeyShare, MatchChunk
from tests.conftest import Pki

pytestmark = pytest.mark.integration

XMATCH = Path(sys.executable).with_name("xmatch")
NODE = "justice"
REQUESTER = "civil-affairs"
PURPOSE = "eligibility-review"


def make_ids(rng: random.Random, n: int) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        year, month, day = rng.randrange(1950, 2015), rng.randrange(1, 13), rng.randrange(1, 29)
        out.add(identity_number("150802", dt.date(year, month, day), rng.randrange(1000)))
    return sorted(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    proc: subprocess.Popen[str]
    address: str
    audit_log: Path
    node_ids: list[str]
    end_dates: dict[str, str]

    def audit(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]


@pytest.fixture(scope="module")
def node(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    work = tmp_path_factory.mktemp("node")
    member = pki.issue(NODE, "node")
    pki.issue(REQUESTER, "coordinator")
    pki.issue("police", "coordinator")
    rng = random.Random(7)
    ids = make_ids(rng, 400)
    node_ids, end_dates = ids[:300], {}
    lines = ["id_number,term_months,start_date,end_date"]
    for i, pid in enumerate(node_ids):
        end = "" if i % 3 else f"2030-0{1 + i % 9}-15"
        end_dates[pid] = end
        lines.append(f"{pid},{12 + i % 5},2024-01-0{1 + i % 9},{end}")
    (work / "custody.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    port = free_port()
    (work / "node.toml").write_text(
        f"""
[node]
name = "{NODE}"
listen = "127.0.0.1:{port}"
ca = "{pki.ca}"
cert = "{member.cert}"
key = "{member.key}"
audit_log = "logs/justice.audit.jsonl"
workers = 1
max_chunk_bytes = 65536
shutdown_grace_seconds = 1

[[match_sets]]
name = "custody"
circumstance = "IMPRISONED"
source = "custody.csv"
id_column = "id_number"
where = "term_months >= 6 AND (end_date IS NULL OR end_date > $as_of)"
payload = ["start_date", "end_date"]
protocols = ["ecdh", "keyed-hash"]
allow = [{{ requester = "{REQUESTER}", purposes = ["{PURPOSE}"] }}]
""",
        encoding="utf-8",
    )
    (work / "logs").mkdir()
    proc = subprocess.Popen(
        [str(XMATCH), "node", "serve", "--config", str(work / "node.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=work,
    )
    assert proc.stdout is not None
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=20)
    if not ready or "serving" not in ready[0]:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        pytest.fail(f"node did not start: {ready} {err}")
    assert ready[0].strip() == f"{NODE}: serving 1 match set on 127.0.0.1:{port}"
    n = Node(proc, f"127.0.0.1:{port}", work / "logs/justice.audit.jsonl", node_ids, end_dates)
    yield n
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def channel(pki: Pki, name: str, address: str) -> grpc.Channel:
    member = pki.members[name] if name in pki.members else pki.issue(name, "coordinator")
    tls = load_tls_credentials(ca=pki.ca, cert=member.cert, key=member.key, name=name)
    return grpc.secure_channel(
        address, tls.channel_credentials(), options=[("grpc.ssl_target_name_override", NODE)]
    )


def context(requester: str = REQUESTER, protocol: str = "keyed-hash") -> RoundContext:
    return RoundContext.new(
        as_of=_dt.date.today(),
        purpose=PURPOSE,
        requester=requester,
        responder=NODE,
        match_set="custody",
        protocol=protocol,  # type: ignore[arg-type]
    )


def keyed_hash_round(
    ch: grpc.Channel,
    roster: list[str],
    requester: str = REQUESTER,
    chunk: int = 64,
    dones: list[xmatch_pb2.RoundDone] | None = None,
) -> tuple[set[str], dict[str, list[dict[str, str]]]]:
    ctx = context(requester)
    req = KeyedHashRequester.generate(ctx)
    stub = xmatch_pb2_grpc.NodeStub(ch)
    first = xmatch_pb2.KeyedHashRequest(
        start=xmatch_pb2.RoundStart(
            context=ctx.to_bytes(), query_size=len(roster), key_share=req.key_share().to_bytes()
        )
    )
    q: queue.Queue[xmatch_pb2.KeyedHashRequest | None] = queue.Queue()
    q.put(first)

    def requests() -> Iterator[xmatch_pb2.KeyedHashRequest]:
        while (item := q.get()) is not None:
            yield item

    responses: Iterator[xmatch_pb2.KeyedHashResponse] = iter(stub.KeyedHash(requests(), timeout=20))
    accept = next(responses)
    req.agree(KeyShare.from_bytes(accept.accept.key_share, round_id=ctx.round_id))
    encoded = encode_identities(roster)
    chunks = 0
    for start in range(0, len(roster), chunk):
        q.put(xmatch_pb2.KeyedHashRequest(tags=req.tag(encoded[start : start + chunk]).to_bytes()))
        chunks += 1
    q.put(xmatch_pb2.KeyedHashRequest(end=xmatch_pb2.RequestEnd(chunks=chunks, items=len(roster))))
    q.put(None)
    matched: set[str] = set()
    payloads: dict[str, list[dict[str, str]]] = {}
    for _ in range(chunks):
        resp = next(responses)
        mc = MatchChunk.from_bytes(resp.matches.psi, round_id=ctx.round_id)
        # map each wire tag back to its roster index through the requester's tags
        idx = req.resolve(mc)
        matched.update(roster[i] for i in idx.tolist())
        tag_index = {bytes(t): i for i, t in enumerate(mc.tags)}
        assert len(tag_index) == len(mc.tags)
        tags = list(resp.matches.tags)
        columns = {c.name: list(c.values) for c in resp.matches.columns}
        assert all(len(values) == len(tags) for values in columns.values())
        for i, t in enumerate(tags):
            assert 0 <= t < len(mc.tags)
            fields = {name: values[i] for name, values in columns.items() if values[i]}
            payloads.setdefault(str(t), []).append(fields)
    done = next(responses).done
    if dones is not None:
        dones.append(done)
    assert done.transcript == req.finish()
    assert done.matches == len(matched)
    assert list(responses) == []
    return matched, payloads


def test_keyed_hash_round_matches_plaintext_intersection(pki: Pki, node: Node) -> None:
    rng = random.Random(11)
    outside = make_ids(rng, 150)
    roster = node.node_ids[:120] + [i for i in outside if i not in node.node_ids]
    rng.shuffle(roster)
    dones: list[xmatch_pb2.RoundDone] = []
    with channel(pki, REQUESTER, node.address) as ch:
        matched, payloads = keyed_hash_round(ch, roster, dones=dones)
    assert matched == set(roster) & set(node.node_ids)
    records = [r for rs in payloads.values() for r in rs]
    assert len(records) == len(matched)
    assert all(set(r) <= {"start_date", "end_date"} and "start_date" in r for r in records)
    ok = [e for e in node.audit() if e["event"] == "round_finished"]
    assert ok and ok[-1]["match_count"] == len(matched) and ok[-1]["query_size"] == len(roster)
    # the log anchor: seq and SHA-256 of the node's round_finished line
    (done,) = dones
    line = node.audit_log.read_bytes().split(b"\n")[done.log_seq - 1]
    assert json.loads(line)["event"] == "round_finished"
    assert json.loads(line)["transcript"] == done.transcript.hex()
    assert hashlib.sha256(line).hexdigest() == done.log_head


def test_ecdh_round_matches_plaintext_intersection(pki: Pki, node: Node) -> None:
    rng = random.Random(12)
    roster = node.node_ids[50:150] + [i for i in make_ids(rng, 60) if i not in node.node_ids]
    ctx = context(protocol="ecdh")
    req = EcdhRequester.generate(ctx)
    blinded = [req.blind(encode_identities(roster[s : s + 50])) for s in range(0, len(roster), 50)]
    msgs = [
        xmatch_pb2.EcdhRequest(
            start=xmatch_pb2.RoundStart(context=ctx.to_bytes(), query_size=len(roster))
        )
    ]
    msgs += [xmatch_pb2.EcdhRequest(blinded=b.to_bytes()) for b in blinded]
    msgs.append(
        xmatch_pb2.EcdhRequest(end=xmatch_pb2.RequestEnd(chunks=len(blinded), items=len(roster)))
    )
    with channel(pki, REQUESTER, node.address) as ch:
        responses = list(xmatch_pb2_grpc.NodeStub(ch).Ecdh(iter(msgs), timeout=30))
    from psi.messages import PointChunk

    assert responses[0].WhichOneof("msg") == "accept"
    set_size = responses[0].accept.set_size
    for r in responses[1:-1]:
        if r.WhichOneof("msg") == "reblinded":
            req.receive_reblinded(PointChunk.from_bytes(r.reblinded, stage="reblinded"))
        else:
            req.receive_responder_set(PointChunk.from_bytes(r.set_points, stage="set"))
    req.receive_responder_done(set_size)
    result = req.finish()
    assert responses[-1].done.transcript == result.transcript
    assert {roster[i] for i in result.matched.tolist()} == set(roster) & set(node.node_ids)
    assert set_size >= 300


def test_requester_not_allowed_is_refused_and_audited(pki: Pki, node: Node) -> None:
    roster = node.node_ids[:100]
    with channel(pki, "police", node.address) as ch, pytest.raises(grpc.RpcError) as info:
        keyed_hash_round(ch, roster, requester="police")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not allowed" in (info.value.details() or "")
    refused = [e for e in node.audit() if e["event"] == "round_refused"]
    assert refused[-1]["requester"] == "police"
    # issue 16: refused before a slot; the log says why, the peer got the uniform answer
    assert refused[-1]["reason"] == "requester in no allow list"


def test_client_cert_from_another_ca_fails_at_tls(
    pki: Pki, pki_factory: Callable[[], Pki], node: Node
) -> None:
    foreign = pki_factory().issue(REQUESTER, "coordinator")
    # Trusts the right CA (so the server is accepted) but presents a foreign client cert.
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=foreign.key.read_bytes(),
        certificate_chain=foreign.cert.read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", NODE)]
    chan = grpc.secure_channel(node.address, creds, options=options)
    with chan as ch, pytest.raises(grpc.RpcError) as info:
        stub = xmatch_pb2_grpc.NodeStub(ch)
        stub.GetCapabilities(xmatch_pb2.CapabilitiesRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_capabilities_lists_only_allowed_sets(pki: Pki, node: Node) -> None:
    with channel(pki, REQUESTER, node.address) as ch:
        caps = xmatch_pb2_grpc.NodeStub(ch).GetCapabilities(xmatch_pb2.CapabilitiesRequest())
    assert caps.node == NODE and [m.name for m in caps.match_sets] == ["custody"]
    assert caps.max_chunk_bytes == 65536 and caps.min_query_size == 100
    with channel(pki, "police", node.address) as ch:
        caps = xmatch_pb2_grpc.NodeStub(ch).GetCapabilities(xmatch_pb2.CapabilitiesRequest())
    assert list(caps.match_sets) == []


def _raw_round(ch: grpc.Channel, extra: list[xmatch_pb2.KeyedHashRequest]) -> grpc.RpcError:
    ctx = context()
    req = KeyedHashRequester.generate(ctx)
    msgs = [
        xmatch_pb2.KeyedHashRequest(
            start=xmatch_pb2.RoundStart(
                context=ctx.to_bytes(), query_size=100, key_share=req.key_share().to_bytes()
            )
        ),
        *extra,
    ]
    with pytest.raises(grpc.RpcError) as info:
        list(xmatch_pb2_grpc.NodeStub(ch).KeyedHash(iter(msgs), timeout=10))
    return info.value


def test_garbage_and_oversized_chunks_then_next_round_works(pki: Pki, node: Node) -> None:
    with channel(pki, REQUESTER, node.address) as ch:
        err = _raw_round(ch, [xmatch_pb2.KeyedHashRequest(tags=b"garbage" * 10)])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = _raw_round(ch, [xmatch_pb2.KeyedHashRequest(tags=os.urandom(200_000))])
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        err = _raw_round(ch, [xmatch_pb2.KeyedHashRequest(start=xmatch_pb2.RoundStart())])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        matched, _ = keyed_hash_round(ch, node.node_ids[:100])
    assert matched == set(node.node_ids[:100]) & set(node.node_ids)
    failed = [e for e in node.audit() if e["event"] == "round_failed"]
    assert len(failed) >= 2


def test_cancelled_stream_is_logged_as_failed(pki: Pki, node: Node) -> None:
    ctx = context()
    req = KeyedHashRequester.generate(ctx)
    gate: queue.Queue[None] = queue.Queue()

    def requests() -> Iterator[xmatch_pb2.KeyedHashRequest]:
        yield xmatch_pb2.KeyedHashRequest(
            start=xmatch_pb2.RoundStart(
                context=ctx.to_bytes(), query_size=100, key_share=req.key_share().to_bytes()
            )
        )
        gate.get()  # never sends more

    with channel(pki, REQUESTER, node.address) as ch:
        call = xmatch_pb2_grpc.NodeStub(ch).KeyedHash(requests(), timeout=10)
        assert next(iter(call)).WhichOneof("msg") == "accept"
        call.cancel()  # type: ignore[no-untyped-call]
        gate.put(None)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            failed = [e for e in node.audit() if e["event"] == "round_failed"]
            if any(e["round_id"] == ctx.round_id_hex for e in failed):
                break
            time.sleep(0.1)
        else:
            pytest.fail("cancelled round not logged")
        matched, _ = keyed_hash_round(ch, node.node_ids[:100])  # still serving
    assert len(matched) == 100


def test_sigterm_stops_with_exit_0(node: Node) -> None:
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=15) == 0
    events = node.audit()
    assert events[-1]["event"] == "checkpoint" and events[-2]["event"] == "shutdown"
    assert events[-2]["reason"] == "SIGTERM"
    text = node.audit_log.read_text()
    for pid in node.node_ids:
        assert pid not in text


def test_restart_keeps_replay_memory(pki: Pki, node: Node) -> None:
    """After a restart a round id the node served is still refused (nodes.history)."""
    if node.proc.poll() is None:  # not stopped by the SIGTERM test (another xdist worker)
        with channel(pki, REQUESTER, node.address) as ch:
            keyed_hash_round(ch, node.node_ids[:100])
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=15) == 0
    served = [e for e in node.audit() if e["event"] == "round_finished"]
    assert served
    old = RoundContext(
        round_id=bytes.fromhex(str(served[0]["round_id"])),
        as_of=_dt.date.today(),
        purpose=PURPOSE,
        requester=REQUESTER,
        responder=NODE,
        match_set="custody",
        protocol="keyed-hash",
        params=(("prf", "aes128-ecb-v1"),),
    )
    config = node.audit_log.parent.parent / "node.toml"
    proc = subprocess.Popen(
        [str(XMATCH), "node", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config.parent,
    )
    try:
        assert proc.stdout is not None
        assert "serving" in proc.stdout.readline()
        req = KeyedHashRequester.generate(old)
        start = xmatch_pb2.KeyedHashRequest(
            start=xmatch_pb2.RoundStart(
                context=old.to_bytes(), query_size=100, key_share=req.key_share().to_bytes()
            )
        )
        with channel(pki, REQUESTER, node.address) as ch, pytest.raises(grpc.RpcError) as info:
            list(xmatch_pb2_grpc.NodeStub(ch).KeyedHash(iter([start]), timeout=10))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == "replayed round id"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
