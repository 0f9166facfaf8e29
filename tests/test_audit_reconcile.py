"""audit/: reconciling both sides' logs, and the reviewer's usage report."""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from audit import format as fmt
from audit.cli import reconcile_command, report_command
from audit.log import AuditLog
from audit.reconcile import reconcile
from audit.report import build_report
from audit.verify import check_log
from keys.ca import init_ca, issue
from keys.handles import AuditSigner

COORD, NODE = "civil-affairs", "justice"
START = _dt.datetime.now(_dt.UTC).replace(microsecond=0)  # certificates are valid from now


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    issue(directory, name=NODE, role="node")
    issue(directory, name=COORD, role="coordinator")
    issue(directory, name="court", role="node")
    return directory


@pytest.fixture(scope="module")
def signers(pki: Path) -> dict[str, AuditSigner]:
    return {name: AuditSigner.for_member(pki, name=name) for name in (NODE, COORD, "court")}


CA: Path | None = None


@pytest.fixture(autouse=True)
def _federation_ca(pki: Path) -> None:
    """The commands below run with the federation CA, as a reviewer's should."""
    global CA
    CA = pki / "ca.crt"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> _dt.datetime:
        return self.now


def rid(i: int) -> str:
    # never 0: an all-zero round id is fmt.UNKNOWN_ROUND_ID, a refusal outside any round
    return f"{i + 1:032x}"


def transcript(i: int) -> str:
    return f"{i * 7919:064x}"


def round_event(
    i: int, *, responder: str = NODE, match_set: str = "custody", size: int = 2000
) -> dict[str, object]:
    return {
        "round_id": rid(i),
        "requester": COORD,
        "responder": responder,
        "purpose": "eligibility-review",
        "match_set": match_set,
        "protocol": "keyed-hash",
        "query_size": size,
        "set_size": 512,
        "match_count": i % 5,
        "seconds": 1.5,
        "outcome": "ok",
        "transcript": transcript(i),
    }


def write(
    path: Path,
    party: str,
    signer: AuditSigner,
    rounds: Iterable[dict[str, object]],
    *,
    step: _dt.timedelta = _dt.timedelta(days=30),
    event: str = fmt.ROUND_FINISHED,
) -> Path:
    clock = Clock()
    with AuditLog.open(path, party=party, signer=signer, clock=clock, checkpoint_every=5) as log:
        log.append(fmt.CONFIG_LOADED, config=f"{party}.toml")
        for fields in rounds:
            log.append(
                fmt.ROUND_STARTED, **{k: v for k, v in fields.items() if k in fmt.ROUND_FIELDS}
            )
            log.append(str(fields.pop("_event", event)), **fields)
            clock.now += step
    return path


def pair(
    tmp_path: Path, signers: dict[str, AuditSigner], node_rounds: list[dict[str, object]]
) -> tuple[Path, Path]:
    coord = write(
        tmp_path / "coord.jsonl", COORD, signers[COORD], [round_event(i) for i in range(6)]
    )
    node = write(tmp_path / "node.jsonl", NODE, signers[NODE], node_rounds)
    return coord, node


def run_reconcile(coord: Path, *nodes: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = reconcile_command(coord, list(nodes), ca=CA, out=out)
    return code, out.getvalue()


def test_matching_logs_reconcile(tmp_path: Path, signers: dict[str, AuditSigner]) -> None:
    coord, node = pair(tmp_path, signers, [round_event(i) for i in range(6)])
    code, text = run_reconcile(coord, node)
    assert code == 0, text
    assert "OK: 6 rounds reconciled across 2 logs" in text


def test_refusals_before_any_round_are_not_paired(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    # Calls refused before a start message could be read (unauthenticated, unparseable)
    # share the placeholder round id; several of them are not "a round id reused".
    coord, node = pair(tmp_path, signers, [round_event(i) for i in range(6)])
    placeholder = {
        "round_id": fmt.UNKNOWN_ROUND_ID,
        "requester": "-",
        "responder": NODE,
        "purpose": "-",
        "match_set": "-",
        "protocol": "-",
        "outcome": "refused",
        "reason": "unauthenticated",
    }
    with AuditLog.open(node, party=NODE, signer=signers[NODE]) as log:
        log.append(fmt.ROUND_REFUSED, **placeholder)
        log.append(fmt.ROUND_REFUSED, **placeholder)
    code, text = run_reconcile(coord, node)
    assert code == 0, text
    assert "OK: 6 rounds reconciled across 2 logs" in text


def test_round_only_at_the_node_is_a_finding(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    coord, node = pair(tmp_path, signers, [round_event(i) for i in range(7)])
    code, text = run_reconcile(coord, node)
    assert code == 1
    assert (
        f"FINDING: round {rid(6)[:12]}: in justice's log" in text
        and "not in civil-affairs's log" in text
    )


def test_round_missing_at_the_node_is_a_finding(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    coord, node = pair(tmp_path, signers, [round_event(i) for i in range(6) if i != 3])
    code, text = run_reconcile(coord, node)
    assert code == 1
    assert (
        f"FINDING: round {rid(3)[:12]}: in civil-affairs's log" in text
        and "not in justice's log" in text
    )


def test_differing_transcript_and_match_count_are_findings(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    rounds = [round_event(i) for i in range(6)]
    rounds[2]["transcript"] = transcript(99)
    rounds[4]["match_count"] = 40
    coord, node = pair(tmp_path, signers, rounds)
    code, text = run_reconcile(coord, node)
    assert code == 1
    assert f"round {rid(2)[:12]}: transcript hashes differ" in text
    assert f"round {rid(4)[:12]}: match_count 4 at civil-affairs, 40 at justice" in text
    assert text.count("FINDING:") == 2


def test_outcome_mismatch_and_reused_round_id(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    rounds = [round_event(i) for i in range(6)]
    rounds[1] = {
        **rounds[1],
        "_event": fmt.ROUND_REFUSED,
        "reason": "budget exhausted",
        "outcome": "refused",
    }
    rounds.append(round_event(5))  # a replayed round id
    coord, node = pair(tmp_path, signers, rounds)
    result = reconcile(
        check_log(coord.read_bytes(), name="c"), [check_log(node.read_bytes(), name="n")]
    )
    messages = [f.describe() for f in result.findings]
    assert any("outcome 'ok' at civil-affairs, 'refused' at justice" in m for m in messages)
    assert any("a round id was reused" in m for m in messages)


def test_node_refusal_logged_as_coordinator_failure_is_a_note(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    coord_rounds = [round_event(i) for i in range(3)]
    coord_rounds[1] = {**coord_rounds[1], "_event": fmt.ROUND_FAILED, "reason": "refused: budget"}
    node_rounds = [round_event(i) for i in range(3)]
    node_rounds[1] = {**node_rounds[1], "_event": fmt.ROUND_REFUSED, "reason": "budget exhausted"}
    coord = write(tmp_path / "coord.jsonl", COORD, signers[COORD], coord_rounds)
    node = write(tmp_path / "node.jsonl", NODE, signers[NODE], node_rounds)
    code, text = run_reconcile(coord, node)
    assert code == 0, text
    assert (
        "NOTE: round" in text and "outcome 'failed' at civil-affairs, 'refused' at justice" in text
    )


def test_failure_that_never_reached_the_node_is_only_a_note(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    coord_rounds = [round_event(i) for i in range(3)]
    coord_rounds.append(
        {**round_event(3), "_event": fmt.ROUND_FAILED, "reason": "node unavailable"}
    )
    coord_rounds.append(round_event(4, responder="court"))
    coord = write(tmp_path / "coord.jsonl", COORD, signers[COORD], coord_rounds)
    node = write(tmp_path / "node.jsonl", NODE, signers[NODE], [round_event(i) for i in range(3)])
    code, text = run_reconcile(coord, node)
    assert code == 0, text
    assert (
        "NOTE:" in text
        and "it may never have reached the node" in text
        and "no log given for 'court'" in text
    )


def test_tampered_log_is_not_reconciled(tmp_path: Path, signers: dict[str, AuditSigner]) -> None:
    coord, node = pair(tmp_path, signers, [round_event(i) for i in range(6)])
    node.write_bytes(node.read_bytes().replace(b'"match_count":2', b'"match_count":3', 1))
    exe = Path(sys.executable).parent / "xmatch"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "xmatch"]
    done = subprocess.run(
        [*cmd, "audit", "reconcile", "--ca", str(CA), str(coord), str(node)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"FAIL: {node}: entry" in done.stdout and f"OK: {coord}" in done.stdout


# --- report ----------------------------------------------------------------------------


def history(
    tmp_path: Path,
    signers: dict[str, AuditSigner],
    extra: list[dict[str, object]],
    step: _dt.timedelta,
) -> Path:
    """A year of monthly rounds against three match sets, then ``extra`` rounds."""
    normal = [
        round_event(i * 3 + k, match_set=ms, size=2000 + 37 * i)
        for i in range(12)
        for k, ms in enumerate(("custody", "community-correction", "parole"))
    ]
    path = tmp_path / "node.jsonl"
    write(path, NODE, signers[NODE], normal, step=_dt.timedelta(days=10))
    with AuditLog.open(path, party=NODE, signer=signers[NODE], clock=(clock := Clock())) as log:
        clock.now = START + _dt.timedelta(days=400)
        for fields in extra:
            log.append(str(fields.pop("_event", fmt.ROUND_FINISHED)), **fields)
            clock.now += step
    return path


def report(path: Path, *, json_out: Path | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = report_command([path], json_out=json_out, ca=CA, out=out)
    return code, out.getvalue()


def test_normal_history_is_not_flagged(tmp_path: Path, signers: dict[str, AuditSigner]) -> None:
    path = history(tmp_path, signers, [], _dt.timedelta(minutes=1))
    json_out = tmp_path / "report.json"
    code, text = report(path, json_out=json_out)
    assert code == 0, text
    assert "OK: no probing patterns" in text
    data = json.loads(json_out.read_text())
    assert data["queries"] == 36 and data["flags"] == []
    custody = next(row for row in data["usage"] if row["match_set"] == "justice/custody")
    assert custody["rounds"] == 12 and custody["total_query_size"] == sum(
        2000 + 37 * i for i in range(12)
    )


def test_tiny_queries_are_flagged(tmp_path: Path, signers: dict[str, AuditSigner]) -> None:
    tiny = [{**round_event(900), "query_size": 3}]
    code, text = report(history(tmp_path, signers, tiny, _dt.timedelta(hours=5)))
    assert code == 1
    assert (
        "FLAG: tiny: civil-affairs / eligibility-review / justice/custody: 1 query below 100"
        in text
    )


def test_a_round_cancelled_after_one_identity_is_a_tiny_query(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    """Finding (a probe): a coordinator announced 100, sent one identity, read its answer
    (a node answers the first chunks at once) and cancelled. The flag read the announced
    size only, never the identities the node logged as sent."""
    probe = [
        {
            **round_event(900),
            "_event": fmt.ROUND_FAILED,
            "query_size": 100,
            "items": 1,
            "reason": "cancelled by the requester",
        }
    ]
    code, text = report(history(tmp_path, signers, probe, _dt.timedelta(hours=5)))
    assert code == 1
    assert "FLAG: tiny: civil-affairs / eligibility-review / justice/custody: 1 query" in text
    assert "(smallest 1)" in text


def test_repeated_near_identical_queries_are_flagged(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    sizes = [500, 501, 500, 503, 500]
    repeated = [{**round_event(900 + i), "query_size": s} for i, s in enumerate(sizes)]
    code, text = report(history(tmp_path, signers, repeated, _dt.timedelta(hours=2)))
    assert code == 1
    assert "FLAG: repeated:" in text and "5 queries of about 500 identities" in text
    assert "FLAG: tiny" not in text and "FLAG: burst" not in text


def test_spread_out_repeats_are_not_flagged(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    repeated = [{**round_event(900 + i), "query_size": 500} for i in range(5)]
    code, text = report(history(tmp_path, signers, repeated, _dt.timedelta(days=2)))
    assert code == 0, text


def test_bursts_over_budget_are_flagged(tmp_path: Path, signers: dict[str, AuditSigner]) -> None:
    burst = [{**round_event(900 + i), "query_size": 1000 + 50 * i} for i in range(40)]
    code, text = report(history(tmp_path, signers, burst, _dt.timedelta(minutes=1)))
    assert code == 1
    assert (
        "FLAG: burst: civil-affairs / eligibility-review" in text
        and "40 rounds within one hour" in text
    )
    assert "FLAG: repeated" not in text
    within_budget = build_report(
        [check_log((tmp_path / "node.jsonl").read_bytes(), name="n")], hourly_budget=40
    )
    # growing by 50 identities a round, the burst also creeps (its own flag since issue 16)
    assert [f.kind for f in within_budget.flags] == ["creeping"]


def test_report_refuses_tampered_logs(tmp_path: Path, signers: dict[str, AuditSigner]) -> None:
    path = history(tmp_path, signers, [], _dt.timedelta(minutes=1))
    lines = path.read_bytes().split(b"\n")
    del lines[4]
    path.write_bytes(b"\n".join(lines))
    code, text = report(path)
    assert code == 2 and "FAIL:" in text


def test_without_a_ca_reconcile_and_report_never_print_a_bare_ok(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    coord, node = pair(tmp_path, signers, [round_event(i) for i in range(6)])
    out = io.StringIO()
    assert reconcile_command(coord, [node], ca=None, out=out) == 0
    lines = out.getvalue().splitlines()
    assert not [line for line in lines if line.startswith("OK:")], lines
    assert lines[-1] == (
        "OK (no CA: signatures not checked against the federation CA): "
        "6 rounds reconciled across 2 logs"
    )
    out = io.StringIO()
    assert report_command([node], ca=None, out=out) == 0
    lines = out.getvalue().splitlines()
    assert not [line for line in lines if line.startswith("OK:")], lines
    assert lines[-1].endswith("federation CA): no probing patterns")


# --- anchors (review finding 1c) ---------------------------------------------------------


def node_log(
    path: Path,
    signer: AuditSigner,
    rounds: Iterable[int],
    *,
    refused: Iterable[int] = (),
) -> dict[int, tuple[int, str]]:
    """A node's log as the node writes it; returns each round's anchor (seq, line hash)."""
    anchors: dict[int, tuple[int, str]] = {}
    clock = Clock()
    with AuditLog.open(path, party=NODE, signer=signer, clock=clock, checkpoint_every=4) as log:
        log.append(fmt.CONFIG_LOADED, config=f"{NODE}.toml")
        for i in refused:
            log.append(
                fmt.ROUND_REFUSED,
                **{**round_event(i), "reason": "budget exhausted", "outcome": "refused"},
            )
            clock.now += _dt.timedelta(minutes=1)
        for i in rounds:
            fields = round_event(i)
            log.append(fmt.ROUND_STARTED, **{k: fields[k] for k in fmt.ROUND_FIELDS})
            anchors[i] = log.append_anchored(fmt.ROUND_FINISHED, **fields)
            clock.now += _dt.timedelta(minutes=1)
        log.append(fmt.SHUTDOWN, reason="done")
    return anchors


def coordinator_log(
    path: Path,
    signer: AuditSigner,
    anchors: dict[int, tuple[int, str]],
    *,
    refused: Iterable[int] = (),
) -> Path:
    """The coordinator's log, with the anchor the node sent in each round_finished."""
    refusals = [
        {**round_event(i), "_event": fmt.ROUND_FAILED, "reason": "refused: budget exhausted"}
        for i in refused
    ]
    finished = [
        {**round_event(i), "node_log_seq": seq, "node_log_head": head}
        for i, (seq, head) in anchors.items()
    ]
    return write(path, COORD, signer, [*refusals, *finished], step=_dt.timedelta(minutes=1))


def reconciled(coord: Path, node: Path) -> list[str]:
    result = reconcile(
        check_log(coord.read_bytes(), name="c"), [check_log(node.read_bytes(), name="n")]
    )
    return [f.describe() for f in result.findings]


def test_intact_anchored_logs_reconcile(tmp_path: Path, signers: dict[str, AuditSigner]) -> None:
    node = tmp_path / "node.jsonl"
    anchors = node_log(node, signers[NODE], range(5))
    assert [seq for seq, _ in anchors.values()] == [3, 6, 8, 11, 13]  # checkpoints at 5, 10
    coord = coordinator_log(tmp_path / "coord.jsonl", signers[COORD], anchors)
    assert '"node_log_seq":3,' in coord.read_text()
    assert reconciled(coord, node) == []
    code, text = run_reconcile(coord, node)
    assert code == 0 and "OK: 5 rounds reconciled across 2 logs" in text, text


def test_node_log_cut_after_a_checkpoint_breaks_its_anchors(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    node = tmp_path / "node.jsonl"
    anchors = node_log(node, signers[NODE], range(5))
    coord = coordinator_log(tmp_path / "coord.jsonl", signers[COORD], anchors)
    lines = node.read_bytes().split(b"\n")[:-1]
    assert b'"event":"checkpoint"' in lines[9]
    node.write_bytes(b"".join(line + b"\n" for line in lines[:10]))  # cut after entry 10
    assert check_log(node.read_bytes(), name="n").ok  # no signature shows the cut
    findings = reconciled(coord, node)
    assert any(
        f.startswith(f"round {rid(3)[:12]}: civil-affairs's anchor (entry ")
        and f.endswith(") and justice's log disagree at entry 11: justice's log ends at entry 10")
        for f in findings
    ), findings
    lacks = [f for f in findings if "disagree at entry" in f]
    assert len(lacks) == 2 and all(f.endswith("justice's log ends at entry 10") for f in lacks)


def test_node_log_rewritten_and_resigned_breaks_its_anchors(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    # The node rewrites its whole log with its own key, dropping a refusal (say, to
    # hide a probing pattern). Every round still agrees; only the anchors show it.
    node = tmp_path / "node.jsonl"
    anchors = node_log(node, signers[NODE], range(3), refused=[9])
    coord = coordinator_log(tmp_path / "coord.jsonl", signers[COORD], anchors, refused=[9])
    assert reconciled(coord, node) == []
    node.unlink()
    node_log(node, signers[NODE], range(3))  # the same rounds, without the refusal
    rewritten = check_log(node.read_bytes(), name="n")
    assert rewritten.ok and rewritten.closed_cleanly
    findings = reconciled(coord, node)
    assert len(findings) == 3, findings
    for i, (seq, _) in anchors.items():
        assert any(
            f.startswith(f"round {rid(i)[:12]}: civil-affairs's anchor ")
            and f"and justice's log disagree at entry {seq}: it hashes to " in f
            for f in findings
        ), findings


def test_anchor_of_another_round_is_a_finding(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    node = tmp_path / "node.jsonl"
    anchors = node_log(node, signers[NODE], range(3))
    anchors[2] = anchors[1]  # the node answered round 2 with round 1's anchor
    coord = coordinator_log(tmp_path / "coord.jsonl", signers[COORD], anchors)
    assert reconciled(coord, node) == [
        f"round {rid(2)[:12]}: civil-affairs's anchor (entry 8) and justice's log disagree "
        f"at entry {anchors[1][0]}: it is not this round's round_finished"
    ]


def test_anchor_findings_blame_neither_side(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    """Second review, finding 7: the coordinator chose the anchor, the node its log."""
    node = tmp_path / "node.jsonl"
    anchors = node_log(node, signers[NODE], range(2))
    anchors[1] = (anchors[1][0], "ab" * 32)  # a wrong anchor logged by the coordinator
    coord = coordinator_log(tmp_path / "coord.jsonl", signers[COORD], anchors)
    (finding,) = reconciled(coord, node)
    assert "disagree" in finding
    for blame in ("lacks", "truncated", "rewritten"):
        assert blame not in finding


class _CountingEntries(tuple):  # type: ignore[type-arg]
    """A node log's entries that count how often they are walked."""

    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        type(self).walks += 1
        return super().__iter__()


def test_anchors_are_checked_in_one_pass_over_each_node_log(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    """Second review, finding 7: the node log was indexed again for every anchor."""
    import dataclasses

    from audit.reconcile import check_anchors

    node = tmp_path / "node.jsonl"
    anchors = node_log(node, signers[NODE], range(40))
    coord = coordinator_log(tmp_path / "coord.jsonl", signers[COORD], anchors)
    node_result = check_log(node.read_bytes(), name="n")
    counted = dataclasses.replace(node_result, entries=_CountingEntries(node_result.entries))
    _CountingEntries.walks = 0
    assert check_anchors(check_log(coord.read_bytes(), name="c"), {NODE: counted}) == []
    assert _CountingEntries.walks == 1


# --- the placeholder round id (second review, finding 4) ----------------------------------


@pytest.mark.parametrize(
    ("event", "match_set"),
    [
        (fmt.ROUND_FINISHED, "custody"),  # a real round run under the placeholder id
        (fmt.ROUND_STARTED, "custody"),
        (fmt.ROUND_FAILED, "-"),
        (fmt.ROUND_REFUSED, "custody"),
    ],
)
def test_placeholder_round_id_outside_a_refusal_is_a_finding(
    tmp_path: Path, signers: dict[str, AuditSigner], event: str, match_set: str
) -> None:
    coord, node = pair(tmp_path, signers, [round_event(i) for i in range(6)])
    fields: dict[str, object] = {
        **round_event(0),
        "round_id": fmt.UNKNOWN_ROUND_ID,
        "match_set": match_set,
        "reason": "x",
    }
    if event != fmt.ROUND_FINISHED:
        fields = {k: v for k, v in fields.items() if k != "transcript"}
    with AuditLog.open(node, party=NODE, signer=signers[NODE]) as log:
        log.append(event, **fields)
    result = reconcile(
        check_log(coord.read_bytes(), name="c"), [check_log(node.read_bytes(), name="n")]
    )
    assert [f.describe() for f in result.findings] == [
        f"round {fmt.UNKNOWN_ROUND_ID[:12]}: justice's log has a {event} entry under the "
        f"placeholder round id (entry 17): only a refusal before any round (match set '-') "
        f"may use it"
    ]
    code, text = run_reconcile(coord, node)
    assert code == 1 and "FINDING: round 000000000000: justice's log has a" in text


def test_report_never_writes_its_json_over_an_existing_file(
    tmp_path: Path, signers: dict[str, AuditSigner]
) -> None:
    """``--json`` naming the log itself (a typo in a reviewer's command) or an earlier
    report is refused before any work: the evidence is never overwritten."""
    from psi.errors import InputError

    path = history(tmp_path, signers, [], _dt.timedelta(minutes=1))
    before = path.read_bytes()
    with pytest.raises(InputError, match="exists already; give the name of a new file"):
        report(path, json_out=path)
    assert path.read_bytes() == before
    earlier = tmp_path / "report.json"
    earlier.write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match="exists already"):
        report(path, json_out=earlier)
    assert earlier.read_text(encoding="utf-8") == "{}"


def _answer_attempt(
    log: AuditLog, i: int, *, request: str, answered: bool, event: str = fmt.ROUND_FINISHED
) -> None:
    """One ``node answer`` of the offline request ``request`` for round ``i``."""
    offline = {"peer": COORD, "file_sha256": "ab" * 32, "round_id": rid(i)}
    log.append(fmt.OFFLINE_FILE, kind="request", action="opened", file_id=request, **offline)
    fields = round_event(i)
    log.append(fmt.ROUND_STARTED, **{k: v for k, v in fields.items() if k in fmt.ROUND_FIELDS})
    if event == fmt.ROUND_FAILED:
        fields = {**fields, "outcome": "failed", "reason": "interrupted on the node (Ctrl-C)"}
        del fields["transcript"]
    log.append(event, **fields)
    if answered:
        log.append(fmt.OFFLINE_FILE, kind="response", action="written", request_id=request,
                   file_id="cd" * 16, **offline)  # fmt: skip
    else:
        log.append(fmt.OFFLINE_FILE, kind="request", action="failed", file_id=request,
                   reason="interrupted", **offline)  # fmt: skip
    log.append(fmt.SHUTDOWN, reason="done")


@pytest.mark.parametrize("first", [fmt.ROUND_FAILED, fmt.ROUND_FINISHED])
def test_an_offline_retry_after_a_failed_attempt_is_no_reuse(
    tmp_path: Path, signers: dict[str, AuditSigner], first: str
) -> None:
    """A node answers an offline request again after an attempt that wrote no response
    (interrupted, or its response could not be written, so even after round_finished):
    that used to be "a round id was reused". A request answered twice still is a finding."""
    coord, node = pair(tmp_path, signers, [round_event(i) for i in range(5)])
    request = "ef" * 16
    with AuditLog.open(node, party=NODE, signer=signers[NODE]) as log:
        _answer_attempt(log, 5, request=request, answered=False, event=first)
        _answer_attempt(log, 5, request=request, answered=False, event=fmt.ROUND_FAILED)
        _answer_attempt(log, 5, request=request, answered=True)
    code, text = run_reconcile(coord, node)
    assert code == 0, text
    assert "OK: 6 rounds reconciled across 2 logs" in text
    # the usage report counts the round once, as answered (it took the first attempt)
    usage = build_report([check_log(node.read_bytes(), name="n")])
    assert (usage.queries, sum(r.failures for r in usage.rows)) == (6, 0)
    with AuditLog.open(node, party=NODE, signer=signers[NODE]) as log:
        _answer_attempt(log, 5, request=request, answered=True)
    code, text = run_reconcile(coord, node)
    assert code == 1, text
    assert f"justice's log answers the offline request {request[:12]} twice" in text
    assert "a round id was reused" in text
