"""Issue 16: the adversarial review's eight findings, one regression test (or more) each,
and the issue's two goals, run against real node processes over real mTLS.

- Goal 1: an unlisted coordinator certificate that keeps 14 silent streams open
  on every node does not delay a real round: every match set answers within 20 s.
- Goal 2: a 365,000-identity sweep on a made-up roster is refused by the
  default limit (and flagged), and, where an operator raised the limit, is
  flagged by ``xmatch audit report``; the normal rounds before it are not.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from audit import format as fmt
from audit.log import AuditLog
from audit.reconcile import reconcile
from audit.report import build_report
from audit.verify import LogVerification, check_log
from coordinator import exit_codes
from keys.ca import init_ca, issue
from keys.certs import inspect_member_certificate
from keys.handles import AuditSigner, load_tls_credentials
from nodes.allow import DEFAULT_ALLOW_MAX_QUERY_SIZE, max_query_size_for
from nodes.auth import Peer, peer_scope
from nodes.authorization import NOT_ALLOWED
from nodes.config import load_node_config
from nodes.handlers import NodeState
from nodes.limits import RequesterBusy, RequesterGate
from nodes.servicer import NodeServicer
from proto import xmatch_pb2 as pb
from proto import xmatch_pb2_grpc as pb_grpc
from psi.context import RoundContext
from psi.errors import InputError, ProtocolError, VerificationError
from psi.identifiers import identity_number
from psi.keyed_hash import KeyedHashRequester
from tests.conftest import Pki
from tests.federation import (
    AS_OF,
    Federation,
    audit_entries,
    build_federation,
    coordinator_toml,
    round_run,
    start_nodes,
    stop_nodes,
    xmatch,
)
from tests.test_audit_reconcile import START, Clock, round_event
from tests.test_node_handlers import TODAY, ctx, make_cfg
from tests.test_node_servicer import Aborted, Sink, _call_ctx
from xmatch import synth

SWEEP = 365_000  # every valid number of one county and birth year

# --------------------------------------------------------------------------
# Helpers: raw gRPC clients, as the reviewer's own


def _channel(fed: Federation, member: str, node: str) -> grpc.Channel:
    pki = fed.root / "pki"
    tls = load_tls_credentials(
        ca=pki / "ca.crt", cert=pki / f"{member}.crt", key=pki / f"{member}.key", name=member
    )
    return grpc.secure_channel(
        f"127.0.0.1:{fed.ports[node]}",
        tls.channel_credentials(),
        options=[("grpc.ssl_target_name_override", node)],
    )


def _keyed_hash_start(
    requester: str, responder: str, match_set: str, size: int
) -> tuple[RoundContext, KeyedHashRequester, pb.KeyedHashRequest]:
    context = RoundContext.new(
        as_of=AS_OF,
        purpose=synth.PURPOSE,
        requester=requester,
        responder=responder,
        match_set=match_set,
        protocol="keyed-hash",
    )
    req = KeyedHashRequester.generate(context)
    start = pb.RoundStart(
        context=context.to_bytes(), query_size=size, key_share=req.key_share().to_bytes()
    )
    return context, req, pb.KeyedHashRequest(start=start)


def _made_up_roster(n: int) -> list[str]:
    """``n`` distinct valid identity numbers of one county and birth year (nobody's roster)."""
    out: list[str] = []
    day, seq = _dt.date(2015, 1, 1), 0
    while len(out) < n:
        out.append(identity_number("150802", day, seq))
        seq += 1
        if seq == 1000:
            seq, day = 0, day + _dt.timedelta(days=1)
    return out


def _keyed_hash_sweep(fed: Federation, node: str, match_set: str, ids: list[str]) -> grpc.Call:
    """A whole keyed-hash round of ``ids`` from civil-affairs' own certificate (its call)."""
    from psi.identifiers import encode_identities
    from psi.messages import KeyShare

    context, req, start = _keyed_hash_start(synth.COORDINATOR_NAME, node, match_set, len(ids))
    encoded = encode_identities(ids)
    accepted = threading.Event()
    frames: list[pb.KeyedHashRequest] = []

    def requests() -> Iterator[pb.KeyedHashRequest]:
        yield start
        accepted.wait(30)
        yield from frames

    with _channel(fed, synth.COORDINATOR_NAME, node) as ch:
        call = pb_grpc.NodeStub(ch).KeyedHash(requests(), timeout=120)
        responses = iter(call)
        try:
            first = next(responses)
            req.agree(KeyShare.from_bytes(first.accept.key_share, round_id=context.round_id))
            step = 16384
            chunks = [req.tag(encoded[i : i + step]) for i in range(0, len(encoded), step)]
            frames.extend(pb.KeyedHashRequest(tags=c.to_bytes()) for c in chunks)
            frames.append(
                pb.KeyedHashRequest(end=pb.RequestEnd(chunks=len(chunks), items=len(ids)))
            )
        except grpc.RpcError:
            pass
        finally:
            accepted.set()
        for _ in responses:
            pass
    return call


# --------------------------------------------------------------------------
# The federation, started once


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("harden")
    fed = build_federation(root)
    issue(root / "pki", name="intruder", role="coordinator")  # in no allow list
    try:
        start_nodes(fed)
        yield fed
    finally:
        stop_nodes(fed.nodes)


@pytest.fixture(scope="module")
def fresh_fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """A second federation, whose logs hold only the rounds of one test."""
    fed = build_federation(tmp_path_factory.mktemp("harden-sweep"))
    try:
        start_nodes(fed)
        yield fed
    finally:
        stop_nodes(fed.nodes)


class SilentStreams:
    """An unlisted coordinator keeping ``per_node`` silent streams open on every node.

    Each stream the node ends is opened again at once, for as long as the
    attacker runs; the statuses it got are kept.
    """

    def __init__(self, fed: Federation, *, per_node: int = 14) -> None:
        self.fed = fed
        self.per_node = per_node
        self.stop = threading.Event()
        self.codes: list[tuple[grpc.StatusCode, str]] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def _hold(self, node: str) -> None:
        silence = threading.Event()

        def nothing() -> Iterator[pb.EcdhRequest]:
            silence.wait(60)  # never sends a start
            return
            yield

        with _channel(self.fed, "intruder", node) as ch:
            stub = pb_grpc.NodeStub(ch)
            while not self.stop.is_set():
                try:
                    for _ in stub.Ecdh(nothing(), timeout=30):
                        pass
                except grpc.RpcError as exc:
                    with self.lock:
                        self.codes.append((exc.code(), exc.details() or ""))
                self.stop.wait(0.05)
        silence.set()

    def __enter__(self) -> SilentStreams:
        for node in self.fed.ports:
            for _ in range(self.per_node):
                t = threading.Thread(target=self._hold, args=(node,), daemon=True)
                t.start()
                self.threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


# --------------------------------------------------------------------------
# Goals, with real processes


@pytest.mark.integration
def test_goal_unlisted_silent_streams_do_not_delay_a_round(fed: Federation) -> None:
    """Goal 1 (finding 3): 14 silent streams per node from an unlisted certificate; every
    match set still answers within 20 s, and every attacker stream got the one answer."""
    config = coordinator_toml(fed, "coordinator-goal1.toml")
    with SilentStreams(fed, per_node=14) as attacker:
        time.sleep(1.0)  # the streams are open before the round starts
        started = time.monotonic()
        done = round_run(config, fed.root / "round-goal1", as_of=AS_OF, timeout=120)
        elapsed = time.monotonic() - started
    assert done.returncode == exit_codes.COMPLETE, done.stdout + done.stderr
    coord = audit_entries(fed.audit_log(synth.COORDINATOR_NAME))
    finished = [e for e in coord if e["event"] == "round_finished"]
    planned = sum(len(s.match_sets) for s in fed.specs)
    assert len(finished) == planned
    assert all(float(str(e["seconds"])) < 20 for e in finished), [e["seconds"] for e in finished]
    assert elapsed < 60, elapsed
    assert attacker.codes, "the attacker's streams never ended"
    assert {c for c, _ in attacker.codes} == {grpc.StatusCode.PERMISSION_DENIED}
    assert {d for _, d in attacker.codes} == {NOT_ALLOWED}
    # each refusal is in the node's log, naming the certificate and the RPC
    for node in fed.ports:
        refused = [
            e
            for e in audit_entries(fed.audit_log(node))
            if e["event"] == "round_refused" and e["requester"] == "intruder"
        ]
        assert refused and all(e["rpc"] == "Ecdh" and e["role"] == "coordinator" for e in refused)
        assert {e["reason"] for e in refused} == {"requester in no allow list"}


@pytest.mark.integration
def test_finding7_round_outputs_state_and_node_stderr_are_0600(fed: Federation) -> None:
    """Finding 7: every file a round writes that names children, the state database with
    its -wal/-shm, and the nodes' stderr logs are 0600."""
    config = coordinator_toml(fed, "coordinator-modes.toml")
    out = fed.root / "round-modes"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == exit_codes.COMPLETE, done.stdout + done.stderr
    written = [p for p in out.iterdir() if p.is_file()]
    names = {p.name for p in written}
    assert {"decisions.json", "report.html", "evidence.csv", "decisions.xlsx", "names.csv"} <= (
        names
    ), names
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    state = fed.root / "state"
    dbs = [p for p in state.iterdir() if p.name.startswith("coordinator.sqlite")]
    assert any(p.name == "coordinator.sqlite" for p in dbs)
    for path in dbs:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    for node in fed.nodes:
        assert stat.S_IMODE(node.stderr_path.stat().st_mode) == 0o600, node.stderr_path


def _report(fed: Federation, log: Path) -> tuple[int, list[str]]:
    ca = str(fed.root / "pki" / "ca.crt")
    done = xmatch("audit", "report", "--ca", ca, "--allow-unsigned-tail", str(log))
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, [ln for ln in done.stdout.splitlines() if ln.startswith("FLAG:")]


@pytest.mark.integration
def test_goal_sweep_refused_by_default_and_flagged_normal_round_not(
    fresh_fed: Federation,
) -> None:
    """Goal 2 (finding 1): normal rounds are not flagged; a 365,000-identity sweep of a
    made-up roster is refused by the default per-allow limit, logged as above maximum,
    and flagged by ``audit report``."""
    fed = fresh_fed
    node, match_set = fed.specs[0].name, fed.specs[0].match_sets[0].name
    config = coordinator_toml(fed, "coordinator-goal2.toml")
    for i in range(2):
        done = round_run(config, fed.root / f"round-goal2-{i}", as_of=AS_OF)
        assert done.returncode == exit_codes.COMPLETE, done.stdout + done.stderr
    log = fed.audit_log(node)
    code, flags = _report(fed, log)
    assert code == 0 and flags == []  # the normal rounds: nothing flagged
    # the sweep: the coordinator's own certificate, its own client
    _, _, start = _keyed_hash_start(synth.COORDINATOR_NAME, node, match_set, SWEEP)
    with _channel(fed, synth.COORDINATOR_NAME, node) as ch, pytest.raises(grpc.RpcError) as info:
        list(pb_grpc.NodeStub(ch).KeyedHash(iter([start]), timeout=30))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    limit = f"query above maximum size ({DEFAULT_ALLOW_MAX_QUERY_SIZE})"
    assert info.value.details() == limit
    refused = [e for e in audit_entries(log) if e["event"] == "round_refused"]
    assert refused[-1]["reason"] == limit and refused[-1]["query_size"] == SWEEP
    code, flags = _report(fed, log)
    assert code == 1
    assert any(f.startswith("FLAG: oversized:") and "365,000" in f for f in flags), flags
    # reconcile: the normal rounds match the roster the coordinator declared; the
    # sweep, sent by a client of the coordinator's own, is in no coordinator log
    coord_log = fed.audit_log(synth.COORDINATOR_NAME)
    declared = [e for e in audit_entries(coord_log) if e["event"] == "roster_committed"]
    assert len(declared) == 2 and all(int(str(e["roster_size"])) > 0 for e in declared)
    done = xmatch(
        "audit",
        "reconcile",
        "--ca",
        str(fed.root / "pki" / "ca.crt"),
        "--allow-unsigned-tail",
        str(coord_log),
        str(log),
    )
    findings = [ln for ln in done.stdout.splitlines() if ln.startswith("FINDING:")]
    assert done.returncode == 1 and len(findings) == 1, done.stdout
    assert "not in civil-affairs's log" in findings[0]


@pytest.mark.integration
def test_finding1_sweep_under_a_raised_limit_is_flagged(tmp_path: Path) -> None:
    """Finding 1, where an operator raised the allow entry's max_query_size: the sweep
    runs, and ``audit report`` flags it (far above the usual size); the normal round
    before it is not flagged."""
    spec = synth.NodeSpec(
        name="justice",
        protocol="keyed-hash",
        match_sets=(
            synth.MatchSetSpec(
                name="custody",
                circumstance="IMPRISONED",
                source="data/custody.csv",
                id_column="id_number",
                where=None,
                payload=(),
            ),
        ),
    )
    root = tmp_path
    (root / "data").mkdir()
    ids = _made_up_roster(SWEEP)
    held = ids[::26_000]  # 14 of the county's people are in custody
    (root / "data" / "custody.csv").write_text("id_number\n" + "\n".join(held) + "\n", "utf-8")
    synth.write_pki(root, ["justice"])
    from xmatch.demo import free_ports, start_node

    (port,) = free_ports(1)
    (root / "logs").mkdir()
    synth.write_node_config(root, spec, port=port, max_query_size=1_000_000)
    fed = Federation(root, {"justice": port}, [])
    fed.nodes.append(start_node("justice", root / "justice.node.toml", log_dir=root / "logs"))
    try:
        normal = _made_up_roster(2_000 + SWEEP)[SWEEP:]  # someone else's county
        first = _keyed_hash_sweep(fed, "justice", "custody", normal)
        assert first.code() == grpc.StatusCode.OK, first.details()
        code, flags = _report(fed, fed.audit_log("justice"))
        assert code == 0 and flags == []
        sweep = _keyed_hash_sweep(fed, "justice", "custody", ids)
        assert sweep.code() == grpc.StatusCode.OK, sweep.details()
    finally:
        stop_nodes(fed.nodes)
    code, flags = _report(fed, fed.audit_log("justice"))
    assert code == 1
    assert any(f.startswith("FLAG: oversized:") and "365,000 identities" in f for f in flags)


# --------------------------------------------------------------------------
# Findings, each on its own


@pytest.fixture(scope="module")
def audit_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("audit-pki")
    init_ca(directory)
    for name, role in (("justice", "node"), ("civil-affairs", "coordinator"), ("court", "node")):
        issue(directory, name=name, role=role)
    return directory


@pytest.fixture(scope="module")
def signers(audit_pki: Path) -> dict[str, AuditSigner]:
    """The members' audit signers, and under "ca" the CA certificate's path."""
    out: dict[str, object] = {
        name: AuditSigner.for_member(audit_pki, name=name)
        for name in ("justice", "civil-affairs", "court")
    }
    out["ca"] = audit_pki / "ca.crt"
    return out  # type: ignore[return-value]


def _verified(path: Path, ca: Path) -> LogVerification:
    return check_log(path.read_bytes(), name=path.name, ca_pem=ca.read_bytes())


def test_finding1_sweep_refused_by_default_limit(tmp_path: Path) -> None:
    """Finding 1: an allow entry without max_query_size admits at most 100,000 identities;
    the old default (the node's 20M) admitted 55 county-years a round."""
    from nodes.authorization import authorize
    from nodes.limits import QueryBudget, ReplayGuard
    from psi.errors import Refused

    cfg = make_cfg(tmp_path)
    raw = cfg.path.read_text(encoding="utf-8").replace("max_query_size = 1000\n", "")
    cfg.path.write_text(raw, encoding="utf-8")
    cfg = load_node_config(cfg.path)
    assert cfg.node.max_query_size == 20_000_000
    assert (
        max_query_size_for(cfg.match_sets[0].allow, "civil-affairs") == DEFAULT_ALLOW_MAX_QUERY_SIZE
    )
    assert DEFAULT_ALLOW_MAX_QUERY_SIZE < SWEEP
    kwargs = {"budget": QueryBudget(), "replay": ReplayGuard(10), "today": TODAY}
    with pytest.raises(Refused) as info:
        authorize(cfg, "civil-affairs", ctx(), SWEEP, role="coordinator", **kwargs)  # type: ignore[arg-type]
    assert info.value.reason == "query above maximum size (100000)"
    assert (
        authorize(
            cfg,
            "civil-affairs",
            ctx(),
            5_000,
            role="coordinator",
            **kwargs,  # type: ignore[arg-type]
        ).name
        == "custody"
    )


def test_finding1_per_allow_max_query_size_is_read_and_checked(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    raw = cfg.path.read_text(encoding="utf-8").replace(
        'purposes = ["coverage"]', 'purposes = ["coverage"], max_query_size = 5000'
    )
    cfg.path.write_text(raw, encoding="utf-8")
    loaded = load_node_config(cfg.path)
    assert max_query_size_for(loaded.match_sets[0].allow, "education") == 5000
    cfg.path.write_text(raw.replace("max_query_size = 5000", "max_query_size = 5"), "utf-8")
    from psi.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_node_config(cfg.path)
    assert "match_sets[0].allow[1].max_query_size" in str(info.value)


def _log(
    path: Path,
    party: str,
    signer: AuditSigner,
    entries: list[tuple[str, dict[str, object]]],
    step: _dt.timedelta = _dt.timedelta(minutes=1),
) -> None:
    with AuditLog.open(path, party=party, signer=signer, clock=(clock := Clock())) as log:
        clock.now = START
        for event, fields in entries:
            log.append(event, **fields)
            clock.now += step


def test_finding1_reconcile_flags_a_query_size_other_than_the_declared_roster(
    tmp_path: Path, signers: dict[str, AuditSigner], audit_pki: Path
) -> None:
    """Finding 1: the coordinator declares its roster (size, commitment); a node that saw
    a larger query than declared is a reconcile finding."""
    ids = _made_up_roster(2000)
    rid = bytes.fromhex(round_event(7)["round_id"])  # type: ignore[arg-type]
    roster = fmt.roster_fields(rid, ids)
    assert roster["roster_size"] == 2000
    assert roster["roster_sha256"] == fmt.roster_commitment(rid, list(reversed(ids)))
    assert roster["roster_sha256"] != fmt.roster_commitment(bytes(16), ids)  # bound to the round
    ok = {**round_event(7), "query_size": 2000}
    swept = {**round_event(7), "query_size": SWEEP}
    coord = tmp_path / "coord.jsonl"
    _log(
        coord,
        "civil-affairs",
        signers["civil-affairs"],
        [(fmt.ROSTER_COMMITTED, roster), (fmt.ROUND_FINISHED, {**ok, "query_size": 2000})],
    )
    for name, node_round in (("honest", ok), ("swept", swept)):
        node = tmp_path / f"{name}.jsonl"
        _log(node, "justice", signers["justice"], [(fmt.ROUND_FINISHED, node_round)])
        ca = audit_pki / "ca.crt"
        result = reconcile(_verified(coord, ca), [_verified(node, ca)])
        messages = [f.message for f in result.findings]
        if name == "honest":
            assert result.ok, messages
        else:
            assert any("declared a roster of 2000" in m and str(SWEEP) in m for m in messages)


def _series(
    sizes: list[int], step: _dt.timedelta, start: int = 0
) -> list[tuple[str, dict[str, object]]]:
    return [
        (fmt.ROUND_FINISHED, {**round_event(start + i), "query_size": s})
        for i, s in enumerate(sizes)
    ]


def _flags(
    tmp_path: Path,
    signers: dict[str, AuditSigner],
    entries: list[tuple[str, dict[str, object]]],
    step: _dt.timedelta,
) -> list[str]:
    path = tmp_path / "node.jsonl"
    _log(path, "justice", signers["justice"], entries, step)
    report = build_report([_verified(path, signers["ca"])])  # type: ignore[arg-type]
    return [f.kind for f in report.flags]


def test_finding2_normal_periodic_rounds_are_not_flagged(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    """Finding 2's flags leave alone what departments really do: the same roster every
    day for two months, growing a little now and then, shrinking now and then."""
    sizes = [2000 + (i // 7) * 15 - (i % 3) for i in range(60)]
    assert (
        _flags(tmp_path, signers, _series(sizes, _dt.timedelta(days=1)), _dt.timedelta(days=1))
        == []
    )


def test_finding2_creeping_sizes_are_flagged(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    """Finding 2: sizes growing 3-5 % a round (each step too small for "repeated")."""
    sizes = [1000]
    for i in range(8):
        sizes.append(int(sizes[-1] * (1.03 + 0.02 * (i % 2))))
    kinds = _flags(
        tmp_path, signers, _series(sizes, _dt.timedelta(hours=3)), _dt.timedelta(hours=3)
    )
    assert "creeping" in kinds, kinds


def test_finding2_many_small_rounds_over_days_are_flagged(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    """Finding 2: a target plus 99 made-up numbers, three times a day for a week: below
    every hourly budget, each size different (not "repeated")."""
    sizes = [100 + (i * 137) % 400 for i in range(21)]
    kinds = _flags(
        tmp_path, signers, _series(sizes, _dt.timedelta(hours=8)), _dt.timedelta(hours=8)
    )
    assert kinds == ["drip"], kinds


def test_finding2_query_far_above_the_usual_size_is_flagged(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    sizes = [2000, 2010, 1995, 2003, 9000]
    kinds = _flags(
        tmp_path, signers, _series(sizes, _dt.timedelta(days=30)), _dt.timedelta(days=30)
    )
    assert kinds == ["oversized"], kinds


def _refusal(
    requester: str, role: str, reason: str, rpc: str = "Ecdh"
) -> tuple[str, dict[str, object]]:
    return (
        fmt.ROUND_REFUSED,
        {
            "round_id": fmt.UNKNOWN_ROUND_ID,
            "requester": requester,
            "responder": "justice",
            "purpose": "-",
            "match_set": "-",
            "protocol": "ecdh",
            "reason": reason,
            "query_size": 0,
            "outcome": "refused",
            "role": role,
            "rpc": rpc,
        },
    )


def test_finding4_refusals_without_a_round_grouped_and_impersonation_called_out(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    """Finding 4: 33 refusals without a round used to be one row, flagged as "tiny"."""
    entries = [
        *[_refusal("intruder", "coordinator", "requester in no allow list")] * 20,
        *[_refusal("court", "node", "not a coordinator certificate", "KeyedHash")] * 7,
        *[_refusal("civil-affairs", "coordinator", "no start message within 15 s")] * 6,
    ]
    path = tmp_path / "node.jsonl"
    _log(path, "justice", signers["justice"], entries)
    report = build_report([_verified(path, signers["ca"])])  # type: ignore[arg-type]
    flags = {(f.kind, f.requester): f for f in report.flags}
    assert set(flags) == {
        ("refused-without-round", "intruder"),
        ("impersonation", "court"),
        ("refused-without-round", "civil-affairs"),
    }
    assert "20 refusals" in flags[("refused-without-round", "intruder")].message
    assert "a node certificate tried to run rounds" in flags[("impersonation", "court")].message
    assert "tiny" not in {f.kind for f in report.flags}


def test_finding3_unlisted_caller_holds_no_slot(tmp_path: Path) -> None:
    """Finding 3: with every slot taken by nobody, an unlisted caller is refused at once
    (no wait for a slot), and so is a node certificate."""
    sink = Sink()
    state = NodeState.create(make_cfg(tmp_path), today=lambda: TODAY)
    servicer = NodeServicer(state, sink)
    for _ in range(state.config.node.max_concurrent_rounds):
        assert state.slots.acquire(timeout=1)
    for peer in (Peer("intruder", "coordinator"), Peer("civil-affairs", "node")):
        started = time.monotonic()
        with peer_scope(peer), pytest.raises(Aborted) as info:
            list(servicer.Ecdh(iter([]), _call_ctx()))
        assert time.monotonic() - started < 1
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert str(info.value) == NOT_ALLOWED
    reasons = [f["reason"] for _, f in sink.entries]
    assert reasons == ["requester in no allow list", "not a coordinator certificate"]
    assert [f["rpc"] for _, f in sink.entries] == ["Ecdh", "Ecdh"]


def test_finding3_one_requester_cannot_take_every_slot() -> None:
    """Finding 3: the per-requester gate leaves a slot to others, and bounds the waiting."""
    gate = RequesterGate.for_node(4)
    assert (gate.running, gate.waiting) == (3, 4)
    held = [gate.hold("a", timeout=0.1) for _ in range(3)]
    for h in held:
        h.__enter__()
    busy = pytest.raises(RequesterBusy, match="round\\(s\\) at once are all in use")
    with busy, gate.hold("a", timeout=0.1):
        pass
    with gate.hold("b", timeout=0.1):  # another requester is not held up
        pass
    waiting = []
    for _ in range(4):
        t = threading.Thread(target=lambda: waiting.append(_try(gate, "a", 2.0)), daemon=True)
        t.start()
    time.sleep(0.3)
    with pytest.raises(RequesterBusy, match="too many rounds open"), gate.hold("a", timeout=1):
        pass
    for h in held:
        h.__exit__(None, None, None)
    deadline = time.monotonic() + 5
    while len(waiting) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiting == [True] * 4


def _try(gate: RequesterGate, peer: str, timeout: float) -> bool:
    try:
        with gate.hold(peer, timeout=timeout):
            time.sleep(0.05)
        return True
    except RequesterBusy:
        return False


def test_finding5_unlisted_caller_gets_one_answer_whatever_it_names(tmp_path: Path) -> None:
    """Finding 5: hidden sets' names and protocols no longer show through the answer."""
    sink = Sink()
    servicer = NodeServicer(NodeState.create(make_cfg(tmp_path), today=lambda: TODAY), sink)
    answers = set()
    for over in (
        {"match_set": "nope"},
        {"match_set": "register"},  # keyed-hash only
        {"match_set": "deaths"},
        {"match_set": "custody", "params": [("suite", "curve25519_XMD:SHA-512_ELL2_NU_")]},
    ):
        c = ctx(protocol="ecdh", requester="intruder", **over)
        start = pb.EcdhRequest(start=pb.RoundStart(context=c.to_bytes(), query_size=20))
        with peer_scope(Peer("intruder", "coordinator")), pytest.raises(Aborted) as info:
            list(servicer.Ecdh(iter([start]), _call_ctx()))
        answers.add((info.value.code, str(info.value)))
    assert answers == {(grpc.StatusCode.PERMISSION_DENIED, NOT_ALLOWED)}
    # a listed requester asking for a set not open to it gets the same answer as for none
    from nodes.authorization import authorize
    from nodes.limits import QueryBudget, ReplayGuard
    from psi.errors import Refused

    cfg = make_cfg(tmp_path)
    got = set()
    for name in ("nope", "deaths"):
        with pytest.raises(Refused) as refused:
            authorize(
                cfg,
                "education",
                ctx(requester="education", match_set=name, purpose="coverage"),
                20,
                role="coordinator",
                budget=QueryBudget(),
                replay=ReplayGuard(5),
                today=TODAY,
            )
        got.add(refused.value.reason)
    assert got == {NOT_ALLOWED}


def test_finding6_get_capabilities_is_logged(tmp_path: Path) -> None:
    """Finding 6: GetCapabilities calls are in the node's log (name, role, sets shown)."""
    sink = Sink()
    servicer = NodeServicer(NodeState.create(make_cfg(tmp_path), today=lambda: TODAY), sink)
    for peer in (Peer("civil-affairs", "coordinator"), Peer("court", "node")):
        with peer_scope(peer):
            servicer.GetCapabilities(pb.CapabilitiesRequest(), _call_ctx())
    assert sink.entries == [
        (
            "capabilities_listed",
            {
                "requester": "civil-affairs",
                "role": "coordinator",
                "responder": "justice",
                "match_sets": 3,
            },
        ),
        (
            "capabilities_listed",
            {"requester": "court", "role": "node", "responder": "justice", "match_sets": 0},
        ),
    ]


def test_finding6_handshake_refusals_are_documented_as_a_limit() -> None:
    """Finding 6: gRPC Python gives a server no hook on a failed TLS handshake, so those
    refusals cannot be logged; the docs say so instead of claiming it."""
    root = Path(__file__).resolve().parents[1]
    node_md = (root / "docs" / "node.md").read_text(encoding="utf-8")
    threat = (root / "docs" / "threat-model.md").read_text(encoding="utf-8")
    assert "Handshake refusals are not logged" in node_md
    assert "Handshake refusals are not logged" in threat


def test_finding8_huge_query_size_is_logged_as_above_maximum(tmp_path: Path, pki: Pki) -> None:
    """Finding 8: a query size the log refuses (10**14 and above) lost its reason to
    'withheld'; now the reason stays and only the size is left out."""
    member = pki.issue("justice", "node")
    signer = AuditSigner.load(key=member.audit_key, cert=member.audit_cert, ca=pki.ca)
    log = AuditLog.open(tmp_path / "j.jsonl", party="justice", signer=signer)
    servicer = NodeServicer(NodeState.create(make_cfg(tmp_path), today=lambda: TODAY), log)
    start = pb.EcdhRequest(
        start=pb.RoundStart(context=ctx(protocol="ecdh").to_bytes(), query_size=10**15)
    )
    with peer_scope(Peer("civil-affairs", "coordinator")), pytest.raises(Aborted):
        list(servicer.Ecdh(iter([start]), _call_ctx()))
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    refused = [r for r in rows if r["event"] == "round_refused"]
    assert refused[0]["reason"] == "query above maximum size (1000)"
    assert "query_size" not in refused[0]


def test_finding8_a_broken_stream_names_the_message_limit(tmp_path: Path) -> None:
    """Finding 8: a 3 MiB message showed as "stream ended before end"."""
    from nodes.drivers.events import Closed
    from nodes.handlers import KeyedHashDriver

    driver = KeyedHashDriver(NodeState.create(make_cfg(tmp_path), today=lambda: TODAY), "x")
    with pytest.raises(ProtocolError) as broken:
        driver._request(Closed(broken=True))
    text = str(broken.value)
    assert "a message above the node's limit" in text and "stream broken off" in text
    with pytest.raises(ProtocolError, match=r"^stream ended before end$"):
        driver._request(Closed())


@pytest.mark.integration
def test_finding8_bind_failure_logs_shutdown(tmp_path: Path) -> None:
    """Finding 8: a node that could not bind its port left config_loaded and a checkpoint
    but no shutdown."""
    import socket

    fed = build_federation(tmp_path)
    node = fed.specs[0].name
    config = fed.config(node)
    text = config.read_text(encoding="utf-8")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config.write_text(
            re.sub(r'listen = "[^"]+"', f'listen = "127.0.0.1:{port}"', text), "utf-8"
        )
        done = xmatch("node", "serve", "--config", str(config), cwd=tmp_path, timeout=120)
    assert done.returncode != 0 and "cannot listen" in done.stderr, done.stderr
    entries = audit_entries(fed.audit_log(node))
    events = [e["event"] for e in entries]
    assert "config_loaded" in events
    assert events[-2:] == ["shutdown", "checkpoint"], events
    assert entries[-2]["reason"] == "startup failed"


def test_finding8_init_ca_takes_the_federation_name(tmp_path: Path) -> None:
    """Finding 8: every init-ca wrote the same CA name, so "not issued by this federation
    CA" printed two identical names."""
    init_ca(tmp_path / "a", name="Inner Mongolia child support")
    init_ca(tmp_path / "b", name="Hulunbuir pilot")
    issue(tmp_path / "b", name="justice", role="node")
    with pytest.raises(VerificationError) as info:
        inspect_member_certificate(
            (tmp_path / "b" / "justice.crt").read_bytes(),
            ca_pem=(tmp_path / "a" / "ca.crt").read_bytes(),
            usage="tls",
        )
    message = str(info.value)
    assert "Hulunbuir pilot CA" in message and "Inner Mongolia child support CA" in message
    with pytest.raises(InputError, match="--name"):
        init_ca(tmp_path / "c", name="")
    done = xmatch("keys", "init-ca", "--dir", str(tmp_path / "d"), "--name", "Test federation")
    assert done.returncode == 0, done.stderr
    assert b"Test federation CA" in (tmp_path / "d" / "ca.crt").read_bytes() or (
        "Test federation CA" in _subject(tmp_path / "d" / "ca.crt")
    )


def _subject(path: Path) -> str:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()


def test_finding7_spill_files_are_0600(tmp_path: Path) -> None:
    """Finding 7: encrypted spill files were 0644 inside their 0700 folder."""
    import numpy as np

    from nodes.buckets import SpilledSet

    old = os.umask(0o022)
    try:
        rows = np.frombuffer(os.urandom(16 * 3000), dtype=np.uint8).reshape(3000, 16)
        spilled = SpilledSet.create(
            iter([rows[:1500], rows[1500:]]),
            buckets=3,
            spill_dir=tmp_path / "spill",
            rng=os.urandom,
            what="test",
        )
        try:
            files = [p for p in (tmp_path / "spill").rglob("*") if p.is_file()]
            assert files
            for path in files:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        finally:
            spilled.close()
    finally:
        os.umask(old)


def test_finding7_state_database_is_0600(tmp_path: Path) -> None:
    from coordinator.state import RoundState

    old = os.umask(0o022)
    try:
        state = RoundState.open(tmp_path / "state" / "coordinator.sqlite")
        state.start_round("ab" * 16, as_of=AS_OF, out_dir=tmp_path / "out", sub_rounds=[])
        paths = list((tmp_path / "state").iterdir())
        assert {p.name for p in paths} >= {"coordinator.sqlite", "coordinator.sqlite-wal"}
        for path in paths:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        os.umask(old)
