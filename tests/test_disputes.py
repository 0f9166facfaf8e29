"""疑义校核 disputes and work lists, end to end: real node processes over mutual TLS.

The federation of tests/federation.py, plus one supported de facto unsupported
child whose father is in custody (justice/custody) and whose mother's disability
certificate (disabled-persons-federation/certificates) expired a month ago: the
rules exit the child. The family says the certificate was renewed, so the
caseworker disputes the mother's record. While the dispute is open the child
gets REVIEW "疑义校核中" (never EXIT); once the department answers
``confirmed``, the next round exits the child.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from psi.identifiers import identity_number
from tests import configs
from tests.configs import put
from tests.federation import (
    AS_OF,
    Federation,
    audit_entries,
    build_federation,
    coordinator_toml,
    round_run,
    start_nodes,
    state_rows,
    stop_nodes,
    xmatch,
)

DPF = "disabled-persons-federation"
CERTS = f"{DPF}/certificates"
CHILD = identity_number("150802", dt.date(2014, 6, 1), 901)
FATHER = identity_number("150802", dt.date(1984, 3, 3), 911)
MOTHER = identity_number("150802", dt.date(1986, 4, 4), 922)
PEOPLE = (CHILD, FATHER, MOTHER)
#: what a terminal obeys: set the title, ring, clear the screen, reverse the text
ESCAPES = "\x1b]0;TITLE\x07\x1b[2J\u202eevil"
SHARES: list[dict[str, object]] = [
    {
        "department": "medical-insurance",
        "lists": ["enrolled", "gaps", "exits"],
        "columns": ["child_id", "child_name", "decision"],
        "purpose": "medical-insurance-follow-up",
    }
]


def _append(path: Path, line: str, encoding: str = "utf-8") -> None:
    """Append one line with the file's own line ending."""
    data = path.read_bytes()
    end = b"\r\n" if b"\r\n" in data else b"\n"
    if not data.endswith(end):
        data += end
    path.write_bytes(data + line.encode(encoding) + end)


def _add_family(root: Path) -> None:
    """Our child, its parents' records, appended to the synthetic files."""
    roster = root / "data" / "roster.csv"
    header = roster.read_text(encoding="utf-8-sig").splitlines()[0].split(",")
    row = dict.fromkeys(header, "")
    row.update(
        child_id=CHILD,
        child_name="测试儿童",
        father_id=FATHER,
        father_name="测试父亲",
        mother_id=MOTHER,
        mother_name="测试母亲",
        status="supported",
        category="de_facto",
        region_code="150802",
        last_check_date=(AS_OF - dt.timedelta(days=30)).isoformat(),
    )
    _append(roster, ",".join(row[c] for c in header))
    custody = root / "data" / "justice" / "custody.csv"
    _append(custody, f"{FATHER},测试父亲,呼和浩特监狱,84,2023-01-01,2030-01-01")
    expired = (AS_OF - dt.timedelta(days=31)).isoformat()
    certs = root / "data" / "disabled_persons_federation" / "certificates.csv"
    _append(certs, f"{MOTHER},测试母亲,{MOTHER}11,肢体,4,1,2016-01-01,{expired}", "gb18030")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = build_federation(tmp_path_factory.mktemp("disputes"))
    _add_family(federation.root)
    coordinator_toml(federation, "coordinator.toml", edits=[put("shares", SHARES)])
    try:
        start_nodes(federation)
        yield federation
    finally:
        stop_nodes(federation.nodes)


def _round(fed: Federation, name: str) -> tuple[str, dict[str, object], str]:
    """Run a round into ``fed.root/name``: (round id, our child's entry, stderr)."""
    out = fed.root / name
    done = round_run(fed.root / "coordinator.toml", out, as_of=AS_OF)
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    (entry,) = [d for d in document["decisions"] if d["child_id"] == CHILD]
    return str(document["round_id"]), entry, done.stderr


def _cli(fed: Federation, *args: str) -> tuple[str, str, int]:
    done = xmatch(*args, cwd=fed.root)
    return done.stdout, done.stderr, done.returncode


def _coordinator(*args: str) -> tuple[str, ...]:
    return (*args, "--config", "coordinator.toml")


def _no_people(text: str, where: str) -> None:
    for person in PEOPLE:
        assert person not in text, f"{where} holds an identity number"
    assert "测试母亲" not in text and "测试儿童" not in text, f"{where} holds a name"


@pytest.fixture(scope="module")
def lifecycle(fed: Federation) -> dict[str, object]:
    """The whole dispute life cycle once; the tests below read what it left."""
    seen: dict[str, object] = {"stderr": []}
    errs: list[str] = seen["stderr"]  # type: ignore[assignment]
    r1, before, err = _round(fed, "round-1")
    errs.append(err)
    seen["before"] = before
    # (1) file a dispute about the mother's certificate record of round 1
    out, err, code = _cli(
        fed,
        *_coordinator("dispute", "file"),
        *("--round", r1, "--person", MOTHER, "--source", CERTS),
        *("--reason", "家属提供了换发的残疾人证,请核实有效期"),
    )
    assert code == 0, err
    errs.append(err)
    dispute = out.strip().split("\n")[-1].split()[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", dispute), out
    assert f"{CERTS}: delivered" in out
    seen["dispute"] = dispute
    # (2) the department's operator sees it, with the identity number
    out, err, code = _cli(fed, "node", "disputes", "--config", f"{DPF}.node.toml")
    assert code == 0, err
    seen["node_listing"] = out
    # (3) the next round holds the exit
    _, during, err = _round(fed, "round-2")
    errs.append(err)
    seen["during"] = during
    seen["round2"] = fed.root / "round-2"
    # (4) the department answers: the record stands
    out, err, code = _cli(
        fed,
        *("node", "resolve", "--config", f"{DPF}.node.toml", "--dispute", dispute),
        *("--verdict", "confirmed", "--note", "经核实,该证已于到期日失效,未换发"),
    )
    assert code == 0, err
    errs.append(err)
    # (5) the coordinator fetches the answer
    out, err, code = _cli(fed, *_coordinator("dispute", "sync"))
    assert code == 0, err
    errs.append(err)
    seen["sync"] = out
    out, err, code = _cli(fed, *_coordinator("dispute", "list"))
    assert code == 0, err
    seen["listing"] = out
    # (6) the round after the answer decides as usual
    r3, after, err = _round(fed, "round-3")
    errs.append(err)
    seen["after"] = after
    seen["round3"] = r3
    # (7) a second dispute, about the father's custody record, withdrawn
    out, err, code = _cli(
        fed,
        *_coordinator("dispute", "file"),
        *("--round", r3, "--person", FATHER, "--source", "justice/custody"),
        *("--reason", "家属称已假释"),
    )
    assert code == 0, err
    second = out.strip().split()[-1]
    out, err, code = _cli(
        fed, *_coordinator("dispute", "withdraw"), "--dispute", second, "--reason", "家属撤回"
    )
    assert code == 0, err
    errs.append(err)
    seen["second"] = second
    return seen


def test_an_open_dispute_holds_the_exit_and_confirmed_lets_it_happen(
    lifecycle: dict[str, object],
) -> None:
    before, during, after = lifecycle["before"], lifecycle["during"], lifecycle["after"]
    assert isinstance(before, dict) and isinstance(during, dict) and isinstance(after, dict)
    assert before["decision"] == "EXIT"
    # while the dispute is open: REVIEW "疑义校核中" with the dispute id, support continues
    assert during["decision"] == "REVIEW"
    assert "疑义校核中" in during["reasons"][0]
    assert str(lifecycle["dispute"]) in during["reasons"][0]
    assert not any("停发" in r for r in during["reasons"])
    # after "confirmed": the next round decides as usual
    assert after["decision"] == "EXIT"
    assert not any("疑义校核中" in r for r in after["reasons"])


def test_the_round_reports_open_disputes_with_their_age(
    lifecycle: dict[str, object],
) -> None:
    out = lifecycle["round2"]
    assert isinstance(out, Path)
    document = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    (item,) = document["open_disputes"]
    assert item["dispute_id"] == lifecycle["dispute"]
    assert item["source"] == CERTS and item["age_days"] == 0
    assert MOTHER not in json.dumps(document["open_disputes"])
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "疑义校核中" in report and str(lifecycle["dispute"]) in report


def test_the_department_sees_the_one_identity_and_answers(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    listing = str(lifecycle["node_listing"])
    line = next(ln for ln in listing.split("\n") if str(lifecycle["dispute"]) in ln)
    cells = line.split("\t")
    assert cells[1] == "open" and cells[3] == "civil-affairs" and cells[5] == "certificates"
    assert cells[7] == MOTHER and "换发的残疾人证" in cells[8]
    # only the disputed person's identity reached the node's store
    store = fed.root / "inbox" / DPF / "disputes.sqlite"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    data = store.read_bytes()
    assert MOTHER.encode() in data and CHILD.encode() not in data
    assert "confirmed" in str(lifecycle["sync"])
    listing = str(lifecycle["listing"])
    rows = {ln.split("\t")[0]: ln.split("\t") for ln in listing.split("\n")[1:] if ln}
    assert rows[str(lifecycle["dispute"])][1] == "confirmed"
    listing, _, _ = _cli(fed, *_coordinator("dispute", "list"), "--status", "withdrawn")
    assert listing.split("\n")[1].split("\t")[0] == lifecycle["second"]
    node_side, _, _ = _cli(fed, "node", "disputes", "--config", "justice.node.toml", "--all")
    assert f"{lifecycle['second']}\twithdrawn\t" in node_side
    book = fed.root / "state" / "disputes.sqlite"
    assert stat.S_IMODE(book.stat().st_mode) == 0o600


def test_both_logs_record_filed_answered_withdrawn_without_identities(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    dispute, second = str(lifecycle["dispute"]), str(lifecycle["second"])
    coordinator = audit_entries(fed.audit_log("civil-affairs"))
    dpf = audit_entries(fed.audit_log(DPF))
    justice = audit_entries(fed.audit_log("justice"))

    def events(entries: list[dict[str, object]], dispute_id: str) -> list[object]:
        return [e["event"] for e in entries if e.get("dispute_id") == dispute_id]

    assert events(coordinator, dispute) == ["dispute_filed", "dispute_answered"]
    assert events(dpf, dispute) == ["dispute_filed", "dispute_answered"]
    assert events(coordinator, second) == ["dispute_filed", "dispute_withdrawn"]
    assert events(justice, second) == ["dispute_filed", "dispute_withdrawn"]
    (filed,) = [e for e in dpf if e["event"] == "dispute_filed"]
    assert filed["requester"] == "civil-affairs" and filed["match_set"] == "certificates"
    assert "换发的残疾人证" in str(filed["reason"])
    (answered,) = [e for e in dpf if e["event"] == "dispute_answered"]
    assert answered["verdict"] == "confirmed"
    for party in ("civil-affairs", DPF, "justice", "police", "medical-insurance"):
        _no_people(fed.audit_log(party).read_text(encoding="utf-8"), f"{party}'s log")
    for path in (fed.root / "logs").glob("*.stderr.log"):
        _no_people(path.read_text(encoding="utf-8"), path.name)
    for text in lifecycle["stderr"]:  # type: ignore[attr-defined]
        _no_people(str(text), "stderr")
    verified = xmatch(
        "audit",
        "verify",
        "--ca",
        "pki/ca.crt",
        "--allow-unsigned-tail",  # the nodes are still running
        *map(str, (fed.root / "logs").glob("*.audit.jsonl")),
        cwd=fed.root,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_bad_filings_fail_with_one_line_that_quotes_no_identity(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    r3 = str(lifecycle["round3"])
    cases = [
        # a reason that holds an identity number would reach both logs
        (
            ("--round", r3, "--person", MOTHER, "--source", CERTS, "--reason", f"见 {CHILD}"),
            "looks like it holds an identity number",
        ),
        # a person the round has no record of from that source
        (
            ("--round", r3, "--person", CHILD, "--source", CERTS, "--reason", "核实"),
            "has no record of this person",
        ),
        # an invalid number
        (
            ("--round", r3, "--person", MOTHER[:-1] + "0", "--source", CERTS, "--reason", "x"),
            "not a valid identity number",
        ),
        # a set the coordinator does not query
        (
            ("--round", r3, "--person", MOTHER, "--source", f"{DPF}/nothing", "--reason", "x"),
            "no match set",
        ),
        # given, but empty: said so (not "required")
        (
            ("--round", r3, "--person", MOTHER, "--source", CERTS, "--reason", ""),
            "--reason: empty; say what is doubtful",
        ),
        # terminal escapes and a bidi override would reach the department's terminal
        (
            ("--round", r3, "--person", MOTHER, "--source", CERTS, "--reason", f"esc{ESCAPES}"),
            "--reason: holds the control or format character U+001B",
        ),
    ]
    for args, expected in cases:
        out, err, code = _cli(fed, *_coordinator("dispute", "file"), *args)
        assert code == 1, (args, out, err)
        assert expected in err and len(err.strip().split("\n")) == 1, err
        assert "\x1b" not in err
        _no_people(err, "an error")
        assert MOTHER[:-1] not in err


def test_bulk_filing_of_a_round_s_conflicts(fed: Federation, lifecycle: dict[str, object]) -> None:
    out, err, code = _cli(
        fed,
        *_coordinator("dispute", "file"),
        "--from-round",
        str(lifecycle["round3"]),
        "--conflicts",
    )
    assert code == 0, err
    _no_people(err, "stderr")
    # the synthetic data hold conflicts (a dead or missing parent in custody): one
    # dispute per conflicting record, each delivered; a second run files none
    filed = [ln for ln in out.split("\n") if ": delivered: dispute " in ln]
    assert filed, out
    again, err, code = _cli(
        fed,
        *_coordinator("dispute", "file"),
        "--from-round",
        str(lifecycle["round3"]),
        "--conflicts",
    )
    assert code == 0 and "no conflict without an open dispute" in again, again + err


def test_work_lists_reach_their_department_with_only_the_configured_columns(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    r3 = str(lifecycle["round3"])
    out, err, code = _cli(fed, *_coordinator("round", "share"), "--round", r3)
    assert code == 0, err
    assert "medical-insurance: exits: " in out and "medical-insurance: gaps (" in out
    listing, err, code = _cli(fed, "node", "lists", "--config", "medical-insurance.node.toml")
    assert code == 0, err
    rows = [ln.split("\t") for ln in listing.split("\n")[1:] if ln]
    assert {r[3] for r in rows} == {"enrolled", "gaps", "exits"}
    (exits,) = [r for r in rows if r[3] == "exits"]
    assert exits[1] == "civil-affairs" and exits[5] == "medical-insurance-follow-up"
    path = Path(exits[8])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_bytes().decode("utf-8-sig").strip().split("\r\n")
    assert lines[0] == "child_id,child_name,decision"
    assert f"{CHILD},测试儿童,EXIT" in lines
    assert int(exits[6]) == len(lines) - 1
    # both logs: what, with whom, how many rows, for which purpose; never a cell
    for party in ("civil-affairs", "medical-insurance"):
        shared = [e for e in audit_entries(fed.audit_log(party)) if e["event"] == "list_shared"]
        assert {e["list"] for e in shared} == {"enrolled", "gaps", "exits"}
        (logged,) = [e for e in shared if e["list"] == "exits"]
        assert (
            logged["rows"] == int(exits[6]) and logged["purpose"] == "medical-insurance-follow-up"
        )
        assert logged["requester"] == "civil-affairs" and logged["responder"] == "medical-insurance"
        _no_people(fed.audit_log(party).read_text(encoding="utf-8"), f"{party}'s log")


def test_a_share_is_refused_for_a_department_not_configured_for_it(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    before = fed.audit_log("police").read_text(encoding="utf-8")
    out, err, code = _cli(
        fed,
        *_coordinator("round", "share"),
        "--round",
        str(lifecycle["round3"]),
        "--department",
        "police",
    )
    assert code == 1 and "police: no [[shares]] entry" in err, out + err
    assert fed.audit_log("police").read_text(encoding="utf-8") == before
    assert not (fed.root / "inbox" / "police" / "lists").exists()


def test_a_dispute_for_an_unreachable_node_waits_and_goes_at_the_next_round(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    """Filed while police is down: recorded, not delivered; the next round delivers it."""
    r3 = str(lifecycle["round3"])
    evidence = (fed.root / "round-3" / "evidence.csv").read_text(encoding="utf-8-sig")
    person = next(ln.split(",")[0] for ln in evidence.splitlines() if ",police/deaths," in ln)
    (police,) = [n for n in fed.nodes if n.name == "police" and n.process.poll() is None]
    stop_nodes([police])
    try:
        out, err, code = _cli(
            fed,
            *_coordinator("dispute", "file"),
            *("--round", r3, "--person", person, "--source", "police/deaths"),
            *("--reason", "家属称本人健在"),
        )
        assert code == 0, err
        assert "police/deaths: waiting for delivery: dispute " in out
        assert "warning: police: not delivered now (connection refused" in err
        assert person not in err
        waiting = out.strip().split()[-1]
        listing, _, _ = _cli(fed, *_coordinator("dispute", "list"), "--status", "open")
        assert f"{waiting}\topen (not delivered)\t" in listing
        synced, err, code = _cli(fed, *_coordinator("dispute", "sync"))
        assert code == 3 and "warning: police:" in err, synced + err
    finally:
        start_nodes(fed, ["police"])
    # the next contact: the round delivers it before deciding
    _round(fed, "round-4")
    node_side, _, _ = _cli(fed, "node", "disputes", "--config", "police.node.toml")
    assert f"{waiting}\topen\t" in node_side and person in node_side
    listing, _, _ = _cli(fed, *_coordinator("dispute", "list"), "--status", "open")
    assert f"{waiting}\topen\t" in listing


# -- the dispute channel under trouble: refusals, hostile text, crossed messages, node faults


def _police_people(fed: Federation, lifecycle: dict[str, object], n: int) -> list[str]:
    """``n`` people with a police/deaths record in round 3 and no open dispute about it."""
    evidence = (fed.root / "round-3" / "evidence.csv").read_text(encoding="utf-8-sig")
    listing, _, _ = _cli(fed, *_coordinator("dispute", "list"), "--status", "open")
    busy = {c[6] for c in (ln.split("\t") for ln in listing.splitlines()[1:]) if len(c) > 6}
    found: list[str] = []
    for line in evidence.splitlines():
        person = line.split(",")[0]
        if ",police/deaths," in line and person not in busy and person not in found:
            found.append(person)
    assert len(found) >= n, "the synthetic data hold too few police/deaths records"
    return found[:n]


def _file_police(fed: Federation, lifecycle: dict[str, object], person: str, *conf: str) -> str:
    """File a dispute about ``person``'s police/deaths record of round 3; its id."""
    out, err, code = _cli(
        fed,
        *("dispute", "file", *(conf or ("--config", "coordinator.toml"))),
        *("--round", str(lifecycle["round3"]), "--person", person, "--source", "police/deaths"),
        *("--reason", "家属称本人健在"),
    )
    assert code == 0, out + err
    _no_people(err, "stderr")
    assert person not in err
    return out.strip().split()[-1]


def _resolve_police(fed: Federation, dispute: str, note: str = "经核实,死亡记录无误") -> None:
    out, err, code = _cli(
        fed,
        *("node", "resolve", "--config", "police.node.toml", "--dispute", dispute),
        *("--verdict", "confirmed", "--note", note),
    )
    assert code == 0, out + err


def _listed(fed: Federation) -> dict[str, list[str]]:
    listing, _, _ = _cli(fed, *_coordinator("dispute", "list"))
    return {c[0]: c for c in (ln.split("\t") for ln in listing.splitlines()[1:])}


def _events(fed: Federation, party: str, dispute: str) -> list[object]:
    entries = audit_entries(fed.audit_log(party))
    return [e["event"] for e in entries if e.get("dispute_id") == dispute]


def test_a_refused_dispute_blocks_neither_the_others_nor_the_answers(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    """The node refuses one dispute (a purpose it does not allow): recorded as refused,
    never promised for later; the answer to another dispute still comes home."""
    answered_person, refused_person = _police_people(fed, lifecycle, 2)
    answered = _file_police(fed, lifecycle, answered_person)
    _resolve_police(fed, answered)
    # the same state, book and log, filing for a purpose police does not allow
    doc = configs.read(fed.root / "coordinator.toml")
    configs.write(fed.root / "curious.toml", configs.apply(doc, put("coordinator.purpose", "x")))
    out, err, code = _cli(
        fed,
        *("dispute", "file", "--config", "curious.toml"),
        *("--round", str(lifecycle["round3"]), "--person", refused_person),
        *("--source", "police/deaths", "--reason", "家属称本人健在"),
    )
    assert code == 0, out + err
    refused = out.strip().split()[-1]
    assert f"police/deaths: refused by the node: dispute {refused}" in out
    assert f"warning: police: dispute {refused} refused (purpose not allowed); it stays open" in err
    assert "delivers it" not in err and refused_person not in err
    out, err, code = _cli(fed, *_coordinator("dispute", "sync"))
    assert code == 3, out + err
    assert "police: 0 delivered, 0 withdrawn, 1 answered" in out
    assert f"  {answered} confirmed: 经核实,死亡记录无误" in out
    assert f"warning: police: dispute {refused} refused (purpose not allowed)" in err
    assert "delivers it" not in err
    rows = _listed(fed)
    assert rows[answered][1] == "confirmed"
    assert rows[refused][1] == "open (refused: purpose not allowed)"
    # the caseworker gives up on it: it never reached the node, so only we log it
    out, err, code = _cli(
        fed, *_coordinator("dispute", "withdraw"), "--dispute", refused, "--reason", "误报"
    )
    assert code == 0 and f"withdrawn: dispute {refused}" in out, out + err
    assert _events(fed, "police", refused) == []
    out, err, code = _cli(fed, *_coordinator("dispute", "sync"))
    assert code == 0 and "refused" not in err, out + err


def test_control_characters_from_the_other_side_are_never_printed_raw(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    """Refused on input at both ends; what arrives anyway (a store or a peer that does
    not check) is printed with U+FFFD in place of each such character."""
    (person,) = _police_people(fed, lifecycle, 1)
    dispute = _file_police(fed, lifecycle, person)
    out, err, code = _cli(
        fed,
        *("node", "resolve", "--config", "police.node.toml", "--dispute", dispute),
        *("--verdict", "confirmed", "--note", "line1\nline2\x1b[31mRED\x07"),
    )
    assert code == 1 and "--note holds the control or format character U+001B" in err, out + err
    assert len(err.strip().split("\n")) == 1 and "\x1b" not in err
    # a reason as an unchecking coordinator (or an older store) would leave it
    store = fed.root / "inbox" / "police" / "disputes.sqlite"
    with sqlite3.connect(store) as conn:
        conn.execute(
            "UPDATE disputes SET reason = ? WHERE dispute_id = ?", (f"esc{ESCAPES}", dispute)
        )
    conn.close()
    listing, _, _ = _cli(fed, "node", "disputes", "--config", "police.node.toml")
    (line,) = [ln for ln in listing.splitlines() if ln.startswith(dispute)]
    assert "esc\ufffd]0;TITLE\ufffd\ufffd[2J\ufffdevil" in line
    # the department's note, as an unchecking node would send it
    _resolve_police(fed, dispute)
    with sqlite3.connect(store) as conn:
        conn.execute(
            "UPDATE disputes SET note = ? WHERE dispute_id = ?",
            ("line1\x1b[31mRED\x07\u202e", dispute),
        )
    conn.close()
    out, err, code = _cli(fed, *_coordinator("dispute", "sync"))
    assert code == 0, out + err
    assert f"  {dispute} confirmed: line1\ufffd[31mRED\ufffd\ufffd" in out
    listing, _, _ = _cli(fed, *_coordinator("dispute", "list"))
    (note,) = state_rows(
        fed.root / "state" / "disputes.sqlite",
        "SELECT note FROM disputes WHERE dispute_id = ?",
        (dispute,),
    )[0]
    log = fed.audit_log("civil-affairs").read_text(encoding="utf-8")
    for text in (out, err, listing, log, str(note)):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text


def test_a_withdrawal_never_hides_an_answer(fed: Federation, lifecycle: dict[str, object]) -> None:
    """Answered before the withdrawal: refused, the answer kept; a withdrawal that crosses
    the answer (the node was down): the answer comes home; both sides agree."""
    first, second = _police_people(fed, lifecycle, 2)
    answered = _file_police(fed, lifecycle, first)
    _resolve_police(fed, answered)
    out, err, code = _cli(
        fed, *_coordinator("dispute", "withdraw"), "--dispute", answered, "--reason", "家属撤回"
    )
    assert code == 1, out + err
    assert f"dispute {answered} is confirmed, not withdrawn: the department had answered" in err
    assert _listed(fed)[answered][1] == "confirmed"
    assert _events(fed, "civil-affairs", answered) == ["dispute_filed", "dispute_answered"]
    assert _events(fed, "police", answered) == ["dispute_filed", "dispute_answered"]
    # crossed: withdrawn here while the node is down, answered there meanwhile
    crossed = _file_police(fed, lifecycle, second)
    (police,) = [n for n in fed.nodes if n.name == "police" and n.process.poll() is None]
    stop_nodes([police])
    try:
        out, err, code = _cli(
            fed, *_coordinator("dispute", "withdraw"), "--dispute", crossed, "--reason", "家属撤回"
        )
        assert code == 0 and "warning: police: not told now" in err, out + err
        _resolve_police(fed, crossed)
    finally:
        start_nodes(fed, ["police"])
    out, err, code = _cli(fed, *_coordinator("dispute", "sync"))
    assert code == 0, out + err
    assert "police: 0 delivered, 0 withdrawn, 1 answered" in out
    assert f"  {crossed} confirmed: " in out
    assert _listed(fed)[crossed][1] == "confirmed"
    node_side, _, _ = _cli(fed, "node", "disputes", "--config", "police.node.toml", "--all")
    assert f"{crossed}\tconfirmed\t" in node_side
    assert _events(fed, "civil-affairs", crossed) == [
        "dispute_filed",
        "dispute_withdrawn",
        "dispute_answered",
    ]
    assert _events(fed, "police", crossed) == ["dispute_filed", "dispute_answered"]
    out, err, code = _cli(fed, *_coordinator("dispute", "sync"))
    assert code == 0 and "nothing to sync" in out, out + err


def test_an_internal_error_on_the_node_is_explained_on_its_stderr(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    """The peer is told to look at the node's output; the cause is there."""
    (person,) = _police_people(fed, lifecycle, 1)
    dispute = _file_police(fed, lifecycle, person)
    store = fed.root / "inbox" / "police" / "disputes.sqlite"
    kept = store.with_name("kept.sqlite")
    store.rename(kept)
    try:
        store.write_bytes(b"this is not a database, " * 64)
        out, err, code = _cli(fed, *_coordinator("dispute", "sync"))
        node_err = (fed.root / "logs" / "police.stderr.log").read_text(encoding="utf-8")
    finally:
        kept.replace(store)
    assert code == 3, out + err
    assert "warning: police: internal: internal error on the node; the node's operator can " in err
    assert "see the cause on its stderr" in err
    assert "police: warning: DisputeAnswers from civil-affairs: internal error: " in node_err
    assert "not a dispute store" in node_err and person not in node_err
    out, err, code = _cli(
        fed, *_coordinator("dispute", "withdraw"), "--dispute", dispute, "--reason", "测试结束"
    )
    assert code == 0, out + err


def test_a_book_from_before_refusals_were_recorded_still_opens(
    fed: Federation, lifecycle: dict[str, object]
) -> None:
    """The ``refused`` column is added to an older book in place."""
    old = fed.root / "old-book" / "disputes.sqlite"
    old.parent.mkdir(mode=0o700)
    old.write_bytes((fed.root / "state" / "disputes.sqlite").read_bytes())
    old.chmod(0o600)
    with sqlite3.connect(old) as conn:
        conn.execute("ALTER TABLE disputes DROP COLUMN refused")
    conn.close()
    doc = configs.read(fed.root / "coordinator.toml")
    configs.write(fed.root / "old.toml", configs.apply(doc, put("coordinator.disputes", str(old))))
    out, err, code = _cli(fed, "dispute", "list", "--config", "old.toml")
    assert code == 0, out + err
    assert f"{lifecycle['dispute']}\tconfirmed\t" in out
