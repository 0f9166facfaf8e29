"""Faults: nodes killed or frozen mid-round, a killed coordinator, broken clients.

Real processes on loopback (``tests.federation``). Mid-round faults are made
deterministic by :mod:`tests.stalling_node`, a test-only wrapper around
``xmatch node serve`` whose keyed-hash rounds answer N tag chunks and then
stall; the test then SIGKILLs or SIGSTOPs the process. Each test is bounded
(< 30 s). The first tests here need no network: the client and the sub-round
keep matches delivered before a failure (eligibility.md: "a match is a match").

Client faults already covered in ``tests/test_node_server.py`` and not
repeated here: garbage bytes as a tags chunk and a chunk above the size limit
(``test_garbage_and_oversized_chunks_then_next_round_works``), a malformed
start, a stream cancelled right after ``accept``
(``test_cancelled_stream_is_logged_as_failed``), a client certificate from
another CA (``test_client_cert_from_another_ca_fails_at_tls``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from coordinator import exit_codes
from coordinator.records import Circumstance
from coordinator.round import SubRound, remove_stale_staging, staging_prefix
from coordinator.state import RoundState
from coordinator.sub_round import _sub_round
from proto import xmatch_pb2 as pb
from proto import xmatch_pb2_grpc as pb_grpc
from psi.context import RoundContext
from psi.errors import InvalidIdentifier, PeerError
from psi.identifiers import encode_identities, normalize_id
from psi.keyed_hash import KeyedHashRequester, KeyedHashResponder
from psi.messages import KeyShare, TagChunk
from psi.session import PayloadColumns
from tests import configs
from tests import test_node_server as tns
from tests.configs import put
from tests.conftest import Pki
from tests.federation import (
    AS_OF,
    Federation,
    audit_entries,
    build_federation,
    coordinator_toml,
    expected_evidence,
    read_evidence_csv,
    round_run,
    start_node,
    start_nodes,
    start_stalling_node,
    state_rows,
    stop_nodes,
    wait_for,
    xmatch,
)
from tests.stub_client import stub_client, stub_context

# ---------------------------------------------------------------------------
# Without a network: matches delivered before a failure are kept


class _Broken(grpc.RpcError):
    """The transport broke off (what a killed node looks like to the client)."""


class _FakeCall:
    def __init__(self, responses: Iterator[pb.KeyedHashResponse]) -> None:
        self._responses = responses
        self.cancelled = False

    def __iter__(self) -> Iterator[pb.KeyedHashResponse]:
        return self._responses

    def cancel(self) -> None:
        self.cancelled = True


class _FakeNode:
    """A keyed-hash node in-process (real psi responder) whose stream breaks
    after ``fail_after`` answered tag chunks."""

    def __init__(self, node_ids: list[str], fail_after: int) -> None:
        self.node_ids = node_ids
        self.fail_after = fail_after
        self.call: _FakeCall | None = None

    def KeyedHash(self, requests: Iterator[pb.KeyedHashRequest], timeout: float) -> _FakeCall:
        def answers() -> Iterator[pb.KeyedHashResponse]:
            start = next(requests).start
            ctx = RoundContext.from_bytes(start.context)
            responder = KeyedHashResponder.generate(ctx)
            responder.agree(KeyShare.from_bytes(start.key_share, round_id=ctx.round_id))
            responder.load_set(encode_identities(self.node_ids))
            share = responder.key_share().to_bytes()
            yield pb.KeyedHashResponse(accept=pb.RoundAccept(key_share=share))
            for n, request in enumerate(requests):
                if n == self.fail_after:
                    raise _Broken()
                found = responder.match(TagChunk.from_bytes(request.tags))
                assert found.row_offsets is not None
                per_row = np.repeat(np.arange(len(found.tags)), np.diff(found.row_offsets))
                chunk = pb.MatchChunk(psi=found.without_rows().to_bytes(), tags=per_row.tolist())
                chunk.columns.add(name="start_date", values=["2020-02-02"] * len(per_row))
                yield pb.KeyedHashResponse(matches=chunk)

        self.call = _FakeCall(answers())
        return self.call


def _ids(n: int, region: str = "150102") -> list[str]:
    from xmatch.synth import make_id

    return sorted(make_id(region, dt.date(2012, 1, 1) + dt.timedelta(days=i), 1) for i in range(n))


@pytest.mark.parametrize("fail_after", [0, 1, 3])
def test_client_hands_over_matches_before_the_stream_breaks(fail_after: int) -> None:
    roster = _ids(40)
    node_ids = roster[::3] + _ids(10, region="150203")
    fake = _FakeNode(node_ids, fail_after)
    delivered: list[tuple[npt.NDArray[np.int64], PayloadColumns]] = []
    with stub_client(fake, chunk_items=8) as client, pytest.raises(PeerError) as info:
        client.query(
            "deaths",
            context=stub_context(),
            identities=encode_identities(roster),
            on_matches=lambda idx, payload: delivered.append((idx, payload)),
        )
    assert info.value.peer == "police/deaths"
    assert fake.call is not None and fake.call.cancelled
    # exactly the matches of the chunks answered before the break (8 identities each)
    assert len(delivered) == fail_after
    got = sorted(i for idx, _ in delivered for i in idx.tolist())
    want = [i for i in range(8 * fail_after) if roster[i] in set(node_ids)]
    assert got == want
    assert all(p.columns == {"start_date": ["2020-02-02"] * len(idx)} for idx, p in delivered)


class _Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, object]]] = []

    def append(self, event: str, **fields: object) -> int:
        self.entries.append((event, fields))
        return len(self.entries)


def test_failed_sub_round_keeps_delivered_matches_as_evidence(tmp_path: Path) -> None:
    roster = _ids(40)
    node_ids = roster[::3]
    fake = _FakeNode(node_ids, fail_after=2)
    state = RoundState.open(tmp_path / "state.sqlite")
    audit = _Audit()
    ctx = stub_context()
    state.start_round(
        ctx.round_id_hex,
        as_of=AS_OF,
        out_dir=tmp_path / "out",
        sub_rounds=[("police", "deaths", "keyed-hash")],
    )
    with stub_client(fake, chunk_items=8) as client:
        sub: SubRound = _sub_round(
            client,
            "deaths",
            context=ctx,
            encoded=encode_identities(roster),
            identities=roster,
            audit=cast(Any, audit),
            state=state,
            progress=lambda _n: None,
            finish=lambda _s: None,
        )
    kept = sorted(r.person_id for r in sub.rows)
    assert kept == sorted(i for i in roster[:16] if i in set(node_ids))
    assert kept  # the test would be vacuous without a delivered match
    assert sub.status == "failed" and sub.source == "police/deaths"
    assert all(
        r.circumstance is Circumstance.DEAD and r.source == "police/deaths" for r in sub.rows
    )
    assert all(r.start_date == dt.date(2020, 2, 2) for r in sub.rows)
    assert f"{len(kept)} match(es) delivered before the failure are kept" in sub.detail
    (record,) = state.sub_rounds(ctx.round_id_hex)
    assert (record.status, record.matches) == ("failed", len(kept))
    event, fields = audit.entries[-1]
    assert event == "round_failed" and fields["matches_kept"] == len(kept)
    # nothing in the state or the log is an identity number
    assert not any(i in json.dumps(audit.entries, default=str) for i in roster)
    assert not any(i in str(record) for i in roster)
    state.close()


def test_remove_stale_staging_removes_only_that_rounds_folder(tmp_path: Path) -> None:
    out = tmp_path / "round-7"
    mine = tmp_path / f"{staging_prefix(out, 'a' * 32)}x1"
    other = tmp_path / f"{staging_prefix(out, 'b' * 32)}x2"
    for folder in (mine, other):
        folder.mkdir()
        (folder / "decisions.json").write_text("{", encoding="utf-8")
    assert remove_stale_staging(out, "a" * 32) == [mine]
    assert not mine.exists() and other.exists()


# ---------------------------------------------------------------------------
# Real processes

integration = pytest.mark.integration
NODES = ["police", "justice", "disabled-persons-federation", "medical-insurance"]
POLICE_SETS = ["police/deaths", "police/lost_contact"]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = build_federation(tmp_path_factory.mktemp("faults"))
    yield federation
    stop_nodes(federation.nodes)


@pytest.fixture()
def nodes(fed: Federation) -> Iterator[Federation]:
    """Stops (SIGTERM, then SIGKILL) every node a test started, and thaws frozen ones."""
    try:
        yield fed
    finally:
        for node in fed.nodes:
            if node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGCONT)
        stop_nodes(fed.nodes, grace=5)
        fed.nodes.clear()


def _round(config: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "xmatch", "round", "run", "--config", str(config)),
            *("--as-of", AS_OF.isoformat(), "--out", str(out), "--lang", "en", "-q"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONUTF8": "1"},
    )


def _run_round(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return round_run(config, out, "--lang", "en", as_of=AS_OF, timeout=60)


def _markers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _check_delivered(
    fed: Federation, kept: Sequence[tuple[str, ...]], chunks: int, chunk_items: int
) -> None:
    """``kept`` are the police rows of the first ``chunks`` chunks of the query.

    The coordinator queries in a fresh random order each round (so that a
    node learns nothing from positions), so which identities those chunks
    held is not known here. What is known: every kept row is a true match,
    a kept person has all of their rows of that set (a chunk is answered
    whole), and there are at most ``chunks * chunk_items`` such persons.
    """
    full = [r for r in expected_evidence(fed.root, fed.specs) if r[2] in POLICE_SETS]
    persons = {(r[0], r[2]) for r in kept}
    assert list(kept) == [r for r in full if (r[0], r[2]) in persons]
    assert len({r[0] for r in kept}) <= chunks * chunk_items


def _age(child_id: str) -> int:
    born = dt.date(int(child_id[6:10]), int(child_id[10:12]), int(child_id[12:14]))
    return AS_OF.year - born.year - ((AS_OF.month, AS_OF.day) < (born.month, born.day))


def _check_no_exit_for_want_of_evidence(out: Path, failed: list[str]) -> None:
    """No EXIT or NOT_ELIGIBLE except for age or the child's own death record;
    REVIEW "evidence unavailable" names every failed source."""
    document = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    assert document["failed_sources"] == failed
    dead = {r[0] for r in read_evidence_csv(out / "evidence.csv") if r[1] == "DEAD"}
    unavailable = 0
    for entry in document["decisions"]:
        if entry["decision"] in ("EXIT", "NOT_ELIGIBLE"):
            assert entry["child_id"] and (
                _age(entry["child_id"]) >= 18 or entry["child_id"] in dead
            ), entry
        if any("evidence unavailable" in r for r in entry["reasons"]):
            assert entry["decision"] == "REVIEW"
            text = " ".join(entry["reasons"])
            assert all(source in text for source in failed), entry
            unavailable += 1
    assert unavailable > 0


def _evaluate_equals(fed: Federation, out: Path, failed: list[str], tmp: Path) -> None:
    args = ["rules", "evaluate", "--roster", str(fed.root / "data" / "roster.csv")]
    args += ["--evidence", str(out / "evidence.csv"), "--as-of", AS_OF.isoformat()]
    args += ["--out", str(tmp / "evaluated.json"), "--lang", "en"]
    for source in failed:
        args += ["--failed-source", source]
    done = xmatch(*args)
    assert done.returncode == 0, done.stderr
    evaluated = json.loads((tmp / "evaluated.json").read_text(encoding="utf-8"))
    decisions = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    evaluated.pop("round_id", None)
    decisions.pop("round_id")
    assert decisions["decisions"] == evaluated["decisions"]


def _complete_output(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == [
        "decisions.json",
        "decisions.xlsx",
        "evidence.csv",
        "names.csv",
        "report.html",
    ]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


@integration
def test_node_killed_mid_round_is_a_failed_source_and_restarts(
    nodes: Federation, tmp_path: Path
) -> None:
    fed = nodes
    markers = tmp_path / "markers"
    start_nodes(fed, [n for n in NODES if n != "police"])
    # 4 chunks of 32: past the node's min_query_size (100), before which it answers nothing
    police = start_stalling_node(fed, "police", marker_dir=markers, stall_after=4)
    config = coordinator_toml(
        fed,
        "coordinator-kill-node.toml",
        coordinator={"chunk_items": 32, "state": "state/kill-node.sqlite"},
    )
    out = tmp_path / "round-1"
    proc = _round(config, out)
    try:
        wait_for("police to stall in both sets", lambda: len(_markers(markers)) == 2)
        time.sleep(0.3)  # chunks 0 to 3 were handed to gRPC; let them reach the wire
        police.process.kill()  # SIGKILL
        police.process.wait(timeout=5)
        _, stderr = proc.communicate(timeout=25)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == exit_codes.PARTIAL, stderr  # some sets failed
    warnings = sorted(line for line in stderr.splitlines() if line.startswith("warning:"))
    assert [w.split()[1] for w in warnings] == POLICE_SETS
    assert "Traceback" not in stderr
    _complete_output(out)
    _check_no_exit_for_want_of_evidence(out, POLICE_SETS)
    _evaluate_equals(fed, out, POLICE_SETS, tmp_path)
    # matches delivered before the kill count; the rest of the federation is complete
    got = read_evidence_csv(out / "evidence.csv")
    kept = [r for r in got if r[2] in POLICE_SETS]
    _check_delivered(fed, kept, 4, 32)
    assert kept  # 73 of the 259 identities match police: some are in any 128 (p > 1 - 1e-10)
    full = expected_evidence(fed.root, fed.specs)
    assert [r for r in got if r[2] not in POLICE_SETS] == [
        r for r in full if r[2] not in POLICE_SETS
    ]
    db = fed.root / "state" / "kill-node.sqlite"
    assert state_rows(db, "SELECT status FROM rounds") == [("completed",)]
    failed = state_rows(db, "SELECT match_set, status, matches FROM sub_rounds WHERE node='police'")
    assert sorted(failed) == sorted(
        (s.split("/")[1], "failed", sum(1 for r in kept if r[2] == s) or None) for s in POLICE_SETS
    )

    # the node comes back: the next round answers, complete
    fed.nodes.remove(police)
    start_nodes(fed, ["police"])
    out2 = tmp_path / "round-2"
    done = _run_round(config, out2)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    assert json.loads((out2 / "decisions.json").read_text(encoding="utf-8"))["failed_sources"] == []
    assert read_evidence_csv(out2 / "evidence.csv") == full
    assert state_rows(db, "SELECT status FROM rounds ORDER BY rowid") == [
        ("completed",),
        ("completed",),
    ]


@integration
def test_bucketed_ecdh_node_killed_mid_round_leaves_no_readable_data(
    nodes: Federation, tmp_path: Path
) -> None:
    """justice's set is bucketed into encrypted files; SIGKILL mid-round; restart cleans up."""
    fed = nodes
    spill = fed.root / "spill-justice"
    bucketed = configs.write(
        fed.root / "justice-bucketed.node.toml",
        configs.apply(
            configs.read(fed.config("justice")),
            put("node.stream_rows", 1),
            put("node.bucket_rows", 20),
            put("node.spill_dir", "spill-justice"),
        ),
    )
    markers = tmp_path / "markers"
    start_nodes(fed, [n for n in NODES if n != "justice"])
    justice = start_stalling_node(
        fed, "justice", marker_dir=markers, stall_after=2, config=bucketed
    )
    config = coordinator_toml(
        fed,
        "coordinator-kill-bucketed.toml",
        coordinator={"chunk_items": 32, "state": "state/kill-bucketed.sqlite"},
    )
    out = tmp_path / "round-1"
    proc = _round(config, out)
    try:
        wait_for("justice to stall", lambda: len(_markers(markers)) == 1)
        # the set was split before accept: one folder of ciphertext bucket files
        (folder,) = list(spill.iterdir())
        files = sorted(folder.glob("*.bin"))
        assert len(files) > 1 and all(f.name.startswith("1-") for f in files)
        raw = b"".join(f.read_bytes() for f in files)
        justice.process.kill()  # SIGKILL: no cleanup runs
        justice.process.wait(timeout=5)
        _, stderr = proc.communicate(timeout=25)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == exit_codes.PARTIAL, stderr  # some sets failed
    assert "Traceback" not in stderr
    assert [w.split()[1] for w in stderr.splitlines() if w.startswith("warning:")] == [
        "justice/custody"
    ]
    _complete_output(out)
    _check_no_exit_for_want_of_evidence(out, ["justice/custody"])
    # what the killed node left is ciphertext: no identity number, no encoding of one
    with (fed.root / "data" / "justice" / "custody.csv").open(encoding="utf-8-sig") as fh:
        custody = [row["id_number"].strip() for row in csv.DictReader(fh)]
    valid = []
    for raw_id in custody:
        with contextlib.suppress(InvalidIdentifier):
            valid.append(normalize_id(raw_id))
    assert len(valid) > 50
    enc = encode_identities(valid)
    assert not any(row.tobytes()[:8] in raw for row in enc)
    assert not any(i.encode() in raw for i in valid)
    assert folder.exists()

    # the restarted node deletes the dead process's folder and answers in full
    fed.nodes.remove(justice)
    # the killed node's resource tracker still writes to its stderr file: move it aside
    justice.stderr_path.rename(justice.stderr_path.with_suffix(".killed.log"))
    restarted = start_node("justice", bucketed, log_dir=fed.root / "logs")
    fed.nodes.append(restarted)
    assert not folder.exists() and list(spill.iterdir()) == []
    notice = restarted.stderr_path.read_text(encoding="utf-8")
    assert "justice: removed 1 spill folder(s) left by a stopped node process" in notice
    out2 = tmp_path / "round-2"
    done = _run_round(config, out2)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    assert read_evidence_csv(out2 / "evidence.csv") == expected_evidence(fed.root, fed.specs)
    assert list(spill.iterdir()) == []


@integration
def test_frozen_node_hits_the_deadline_then_serves_again(nodes: Federation, tmp_path: Path) -> None:
    fed = nodes
    markers = tmp_path / "markers"
    start_nodes(fed, [n for n in NODES if n != "police"])
    police = start_stalling_node(fed, "police", marker_dir=markers, stall_after=1, stall_seconds=60)
    config = coordinator_toml(
        fed,
        "coordinator-stall.toml",
        coordinator={"chunk_items": 32, "state": "state/stall.sqlite"},
        node_keys={"police": {"deadline_seconds": 6}},
    )
    out = tmp_path / "round-1"
    started = time.monotonic()
    proc = _round(config, out)
    try:
        wait_for("police to stall in both sets", lambda: len(_markers(markers)) == 2)
        os.kill(police.process.pid, signal.SIGSTOP)
        _, stderr = proc.communicate(timeout=25)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - started
    assert proc.returncode == exit_codes.PARTIAL, stderr  # some sets failed
    assert 5.5 < took < 20, took
    warnings = sorted(line for line in stderr.splitlines() if line.startswith("warning:"))
    assert len(warnings) == 2
    for line, source in zip(warnings, POLICE_SETS, strict=True):
        assert line.startswith(f"warning: {source} failed: deadline exceeded after 6 s"), line
    _complete_output(out)
    _check_no_exit_for_want_of_evidence(out, POLICE_SETS)
    kept = [r for r in read_evidence_csv(out / "evidence.csv") if r[2] in POLICE_SETS]
    _check_delivered(fed, kept, 1, 32)

    # thawed, the node notices the requester went away and logs both rounds as failed
    os.kill(police.process.pid, signal.SIGCONT)
    rid = _markers(markers)[0].split(".")[1]

    def police_failed() -> bool:
        entries = audit_entries(fed.audit_log("police"))
        ends = [e for e in entries if e["event"] == "round_failed" and e["round_id"] == rid]
        return len(ends) == 2

    wait_for("police to log the stalled rounds as failed", police_failed, timeout=10)
    # and it serves the next round, complete (same process)
    plain = coordinator_toml(fed, "coordinator-stall-2.toml")
    done = _run_round(plain, tmp_path / "round-2")
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    evidence = read_evidence_csv(tmp_path / "round-2" / "evidence.csv")
    assert evidence == expected_evidence(fed.root, fed.specs)


@integration
def test_coordinator_killed_mid_round_is_interrupted_and_next_run_completes(
    nodes: Federation, tmp_path: Path
) -> None:
    fed = nodes
    markers = tmp_path / "markers"
    others = [n for n in NODES if n != "police"]
    start_nodes(fed, others)
    start_stalling_node(fed, "police", marker_dir=markers, stall_after=1, stall_seconds=60)
    config = coordinator_toml(
        fed,
        "coordinator-kill-coord.toml",
        coordinator={"chunk_items": 32, "state": "state/kill-coord.sqlite"},
    )
    out = tmp_path / "round"
    db = fed.root / "state" / "kill-coord.sqlite"
    proc = _round(config, out)
    try:
        wait_for("police to stall in both sets", lambda: len(_markers(markers)) == 2)
        rid = _markers(markers)[0].split(".")[1]

        others_sets = sum(len(s.match_sets) for s in fed.specs if s.name != "police")

        def others_recorded() -> bool:
            rows = state_rows(db, "SELECT count(*) FROM sub_rounds WHERE status = 'completed'")
            return rows == [(others_sets,)]

        # the coordinator recorded the other sub-rounds; only police's are open
        wait_for("the coordinator to record the other sub-rounds", others_recorded)
        proc.kill()  # SIGKILL the coordinator
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    # no output folder, and no half-written one
    assert not out.exists()
    assert _markers(tmp_path) == ["markers"]
    assert state_rows(db, "SELECT round_id, status, pid FROM rounds") == [
        (rid, "running", proc.pid)
    ]
    # what a kill during the final rename would leave, plus another round's folder
    leftover = tmp_path / f"{staging_prefix(out, rid)}k9"
    foreign = tmp_path / f"{staging_prefix(out, 'f' * 32)}k9"
    for folder in (leftover, foreign):
        folder.mkdir()
        (folder / "decisions.json").write_text("{", encoding="utf-8")

    def police_noticed() -> bool:
        entries = audit_entries(fed.audit_log("police"))
        return sum(1 for e in entries if e["event"] == "round_failed" and e["round_id"] == rid) == 2

    wait_for("police to log the abandoned rounds", police_noticed, timeout=10)

    done = _run_round(config, out)
    assert done.returncode == 0, done.stderr
    assert f"note: round {rid} was interrupted earlier" in done.stderr
    assert "warning" not in done.stderr
    assert not leftover.exists() and foreign.exists()
    _complete_output_except(out, foreign)
    assert read_evidence_csv(out / "evidence.csv") == expected_evidence(fed.root, fed.specs)
    rounds = state_rows(db, "SELECT round_id, status FROM rounds ORDER BY rowid")
    assert rounds[0] == (rid, "interrupted") and rounds[1][1] == "completed"
    new_rid = str(rounds[1][0])
    assert set(
        state_rows(db, "SELECT status, detail FROM sub_rounds WHERE round_id = ?", (rid,))
    ) <= {("completed", None), ("failed", "interrupted: coordinator stopped")}

    stop_nodes(fed.nodes, grace=5)
    logs = [str(fed.audit_log(p)) for p in ["civil-affairs", *NODES]]
    verify = xmatch("audit", "verify", "--ca", str(fed.root / "pki" / "ca.crt"), *logs)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # reconcile: the interrupted round's open sub-rounds (started, never ended
    # in the coordinator's log; failed in the node's) are NOTEs, not findings
    rec = xmatch("audit", "reconcile", "--ca", str(fed.root / "pki" / "ca.crt"), *logs)
    lines = rec.stdout.splitlines()
    mine = [ln for ln in lines if rid[:12] in ln and ln.startswith(("FINDING", "NOTE"))]
    assert len(mine) == 2, rec.stdout
    for line in mine:
        assert line.startswith("NOTE") and "'incomplete' at civil-affairs" in line, line
        assert "'failed' at police" in line, line
    assert not [ln for ln in lines if ln.startswith("FINDING") and new_rid[:12] in ln]
    assert not [ln for ln in lines if ln.startswith("FINDING") and rid[:12] in ln]


def _complete_output_except(out: Path, foreign: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == [
        "decisions.json",
        "decisions.xlsx",
        "evidence.csv",
        "names.csv",
        "report.html",
    ]
    partial = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]
    assert partial == [foreign]


# ---------------------------------------------------------------------------
# Broken clients against a real node (extends tests/test_node_server.py)

node = tns.node  # the same single-node fixture (its own process for this module)


def _start(ctx: RoundContext, req: KeyedHashRequester, size: int) -> pb.KeyedHashRequest:
    return pb.KeyedHashRequest(
        start=pb.RoundStart(
            context=ctx.to_bytes(), query_size=size, key_share=req.key_share().to_bytes()
        )
    )


def _failed_entry(n: tns.Node, ctx: RoundContext) -> dict[str, object]:
    found: list[dict[str, object]] = []

    def logged() -> bool:
        found[:] = [
            e
            for e in n.audit()
            if e["event"] == "round_failed" and e["round_id"] == ctx.round_id_hex
        ]
        return bool(found)

    wait_for("the node's round_failed entry", logged, timeout=10)
    assert len(found) == 1
    return found[0]


def _tag_chunks(
    n: tns.Node, ctx: RoundContext, req: KeyedHashRequester, count: int
) -> tuple[list[bytes], list[str]]:
    roster = n.node_ids[: 50 * count]
    encoded = encode_identities(roster)
    return [req.tag(encoded[i : i + 50]).to_bytes() for i in range(0, len(roster), 50)], roster


def _agreed(n: tns.Node) -> tuple[RoundContext, KeyedHashRequester]:
    ctx = tns.context()
    return ctx, KeyedHashRequester.generate(ctx)


@integration
def test_out_of_order_chunk_is_refused_and_logged(pki: Pki, node: tns.Node) -> None:
    ctx, req = _agreed(node)
    start = _start(ctx, req, 100)
    # the requester needs the node's key share to tag; tag locally after accept
    q_err = _run_with_tags(pki, node, ctx, req, start, order=[1, 0])
    assert q_err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sequence number 1, expected 0" in (q_err.details() or "")
    assert "sequence number 1, expected 0" in str(_failed_entry(node, ctx)["reason"])
    _still_serving(pki, node)


@integration
def test_chunk_after_end_is_refused_and_logged(pki: Pki, node: tns.Node) -> None:
    ctx, req = _agreed(node)
    err = _run_with_tags(pki, node, ctx, req, _start(ctx, req, 100), order=[0, 1], after_end=True)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message after end" in (err.details() or "")
    assert _failed_entry(node, ctx)["reason"] == "message after end"
    _still_serving(pki, node)


@integration
def test_stream_closed_half_way_is_refused_and_logged(pki: Pki, node: tns.Node) -> None:
    ctx, req = _agreed(node)
    err = _run_with_tags(pki, node, ctx, req, _start(ctx, req, 100), order=[0], end=False)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream ended before end" in (err.details() or "")
    entry = _failed_entry(node, ctx)
    assert entry["reason"] == "stream ended before end" and entry["items"] == 50
    _still_serving(pki, node)


@integration
def test_stream_cancelled_half_way_is_logged(pki: Pki, node: tns.Node) -> None:
    ctx, req = _agreed(node)
    gate: queue.Queue[pb.KeyedHashRequest | None] = queue.Queue()
    gate.put(_start(ctx, req, 200))

    def requests() -> Iterator[pb.KeyedHashRequest]:
        while (item := gate.get()) is not None:
            yield item

    with tns.channel(pki, tns.REQUESTER, node.address) as ch:
        call = pb_grpc.NodeStub(ch).KeyedHash(requests(), timeout=15)
        responses = iter(call)
        accept = next(responses)
        req.agree(KeyShare.from_bytes(accept.accept.key_share, round_id=ctx.round_id))
        chunks, _ = _tag_chunks(node, ctx, req, 4)
        # two chunks of 50: the node answers nothing before min_query_size (100) are in
        gate.put(pb.KeyedHashRequest(tags=chunks[0]))
        gate.put(pb.KeyedHashRequest(tags=chunks[1]))
        assert next(responses).WhichOneof("msg") == "matches"  # both chunks answered
        assert next(responses).WhichOneof("msg") == "matches"
        call.cancel()  # type: ignore[no-untyped-call]
        gate.put(None)
    entry = _failed_entry(node, ctx)
    assert entry["items"] == 100
    # the node sees either the cancellation itself or its request stream break off
    # (issue 16: a stream that breaks off says it may also be an oversized message)
    reason = str(entry["reason"])
    assert reason in ("cancelled by the requester", "stream ended before end") or (
        reason.startswith("stream broken off before end")
    )
    _still_serving(pki, node)


def _run_with_tags(
    pki: Pki,
    n: tns.Node,
    ctx: RoundContext,
    req: KeyedHashRequester,
    start: pb.KeyedHashRequest,
    *,
    order: list[int],
    end: bool = True,
    after_end: bool = False,
) -> grpc.RpcError:
    gate: queue.Queue[pb.KeyedHashRequest | None] = queue.Queue()
    gate.put(start)

    def requests() -> Iterator[pb.KeyedHashRequest]:
        while (item := gate.get()) is not None:
            yield item

    with tns.channel(pki, tns.REQUESTER, n.address) as ch:
        call = pb_grpc.NodeStub(ch).KeyedHash(requests(), timeout=15)
        responses = iter(call)
        with pytest.raises(grpc.RpcError) as info:
            accept = next(responses)
            req.agree(KeyShare.from_bytes(accept.accept.key_share, round_id=ctx.round_id))
            chunks, _ = _tag_chunks(n, ctx, req, 2)
            for i in order:
                gate.put(pb.KeyedHashRequest(tags=chunks[i]))
            if end:
                gate.put(pb.KeyedHashRequest(end=pb.RequestEnd(chunks=len(order), items=100)))
            if after_end:
                gate.put(pb.KeyedHashRequest(tags=chunks[0]))
            gate.put(None)
            list(responses)
    return info.value


def _still_serving(pki: Pki, n: tns.Node) -> None:
    with tns.channel(pki, tns.REQUESTER, n.address) as ch:
        matched, _ = tns.keyed_hash_round(ch, n.node_ids[:100])
    assert matched == set(n.node_ids[:100])
