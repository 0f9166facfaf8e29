"""The dispute rule, the node's dispute and work-list handlers, and the CLI help, in-process.

The whole life cycle over real nodes is in tests/test_disputes.py.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from coordinator.decisions import decide_all
from coordinator.dispute_rule import OpenDispute, conflicting_records, hold_for_disputes
from coordinator.records import Decision
from nodes.auth import Peer
from nodes.config import NodeConfig, load_node_config
from nodes.disputes import DisputeStore, dispute_answers, file_dispute, withdraw_dispute
from nodes.shares import receive_work_list
from proto import xmatch_pb2 as pb
from psi.errors import InputError, ProtocolError, Refused
from runtime.text import control_character, printable
from tests.rules_helpers import child, ev, make_id

D = date(2026, 11, 29)
COORD = Peer("civil-affairs", "coordinator")


def _dispute(person: str, source: str = "dpf/certificates", *, on: date = D) -> OpenDispute:
    return OpenDispute("ab" * 16, person, source, on, "家属提供新证")


# -- the rule (coordinator.dispute_rule) ---------------------------------------------------


def _exit_case() -> tuple[list, list]:  # type: ignore[type-arg]
    kid = child(born=date(2013, 5, 5), status="supported", category="de_facto")
    assert kid.father_id and kid.mother_id
    rows = [
        ev(kid.father_id, "IMPRISONED", date(2024, 1, 10), date(2026, 10, 10)),
        ev(kid.mother_id, "SEVERE_DISABILITY", date(2018, 5, 2), grade=2, kind=4),
    ]
    return [kid], rows


def test_an_open_dispute_about_a_parent_turns_the_exit_into_review() -> None:
    roster, rows = _exit_case()
    (plain,) = decide_all(roster, rows, as_of=D).decisions
    assert plain.decision is Decision.EXIT and plain.stops_from is not None
    father = roster[0].father_id
    (held,) = hold_for_disputes([plain], [_dispute(father)])
    assert held.decision is Decision.REVIEW and held.stops_from is None
    assert held.reasons[0].key == "dispute_open"
    text = held.reason_texts("zh")[0]
    assert text.startswith("疑义校核中") and "ab" * 16 in text
    assert all(r.key != "stops_from" for r in held.reasons)
    # the decision's own reasons stay, after the dispute's
    assert [r.key for r in held.reasons[1:]] == [
        r.key for r in plain.reasons if r.key != "stops_from"
    ]


def test_a_dispute_about_someone_else_changes_nothing() -> None:
    roster, rows = _exit_case()
    decisions = decide_all(roster, rows, as_of=D).decisions
    stranger = make_id(date(1970, 1, 1))
    assert hold_for_disputes(decisions, [_dispute(stranger)]) == decisions
    assert hold_for_disputes(decisions, []) == decisions


def test_turning_18_is_not_held_it_rests_on_no_record() -> None:
    kid = child(born=date(2008, 1, 1), status="supported", category="orphan")
    assert kid.father_id and kid.mother_id
    rows = [
        ev(kid.father_id, "DEAD", date(2015, 1, 1)),
        ev(kid.mother_id, "DEAD", date(2015, 1, 1)),
    ]
    decisions = decide_all([kid], rows, as_of=D).decisions
    assert decisions[0].decision is Decision.EXIT
    assert hold_for_disputes(decisions, [_dispute(kid.father_id)]) == decisions


def test_a_downgrade_is_held_but_continue_and_candidates_are_not() -> None:
    orphan = child(born=date(2012, 2, 2), status="supported", category="orphan")
    candidate = child(born=date(2014, 3, 3))
    assert orphan.father_id and orphan.mother_id and candidate.father_id
    rows = [
        ev(orphan.father_id, "DEAD", date(2016, 3, 3)),
        ev(orphan.mother_id, "SEVERE_ILLNESS"),  # the mother's DEAD record is gone: de facto
        ev(candidate.father_id, "SEVERE_ILLNESS"),
    ]
    decisions = decide_all([orphan, candidate], rows, as_of=D).decisions
    assert [d.decision for d in decisions] == [Decision.RECLASSIFY, Decision.NOT_ELIGIBLE]
    disputes = [_dispute(orphan.mother_id), _dispute(candidate.father_id)]
    held = hold_for_disputes(decisions, disputes)
    assert [d.decision for d in held] == [Decision.REVIEW, Decision.NOT_ELIGIBLE]
    assert held[1] is decisions[1]


def test_the_oldest_open_dispute_is_named() -> None:
    roster, rows = _exit_case()
    decisions = decide_all(roster, rows, as_of=D).decisions
    newer = OpenDispute("cd" * 16, roster[0].mother_id or "", "x/y", date(2026, 11, 20), "r")
    older = OpenDispute("ef" * 16, roster[0].father_id or "", "x/z", date(2026, 11, 1), "r")
    (held,) = hold_for_disputes(decisions, [newer, older])
    assert dict(held.reasons[0].args)["dispute"] == "ef" * 16
    assert older.age_days(D) == 28 and older.age_days(date(2026, 10, 1)) == 0


@pytest.mark.parametrize(
    ("rows", "found"),
    [
        ([("DEAD", date(2020, 1, 1), None), ("IMPRISONED", date(2025, 1, 1), None)], True),
        ([("MISSING", None, None), ("DRUG_REHAB", date(2026, 9, 1), date(2026, 12, 1))], True),
        # custody ended before the date: no conflict
        ([("DEAD", date(2020, 1, 1), None), ("IMPRISONED", date(2019, 1, 1), D)], False),
        # MISSING with LOST_CONTACT is no conflict
        ([("MISSING", date(2020, 1, 1), None), ("LOST_CONTACT", date(2019, 1, 1), None)], False),
        # a death after the date does not count yet
        ([("DEAD", date(2026, 12, 1), None), ("IMPRISONED", date(2025, 1, 1), None)], False),
    ],
)
def test_conflicting_records(rows: list[tuple[str, date | None, date | None]], found: bool) -> None:
    person = make_id(date(1980, 1, 1))
    evidence = {person: [ev(person, code, start, end) for code, start, end in rows]}
    result = conflicting_records(evidence, [person], on=D)
    assert (person in result) is found
    if found:
        assert len(result[person]) == 2


# -- the node's handlers (nodes.disputes, nodes.shares) --------------------------------------


@pytest.fixture
def node_config(tmp_path: Path) -> NodeConfig:
    (tmp_path / "custody.csv").write_text("id_number\n", encoding="utf-8")
    for name in ("ca.crt", "justice.crt", "justice.key"):  # only checked to exist here
        (tmp_path / name).write_text("-", encoding="utf-8")
    (tmp_path / "node.toml").write_text(
        """
[node]
name = "justice"
listen = "127.0.0.1:50061"
ca = "ca.crt"
cert = "justice.crt"
key = "justice.key"
audit_log = "logs/justice.audit.jsonl"

[[match_sets]]
name = "custody"
circumstance = "IMPRISONED"
source = "custody.csv"
id_column = "id_number"
protocols = ["ecdh"]
allow = [{ requester = "civil-affairs", purposes = ["eligibility-review"] }]
""",
        encoding="utf-8",
    )
    return load_node_config(tmp_path / "node.toml")


class Log:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, object]]] = []

    def append(self, event: str, **fields: object) -> int:
        from audit.format import check_fields

        check_fields(event, fields)  # the real log's guard, identity numbers included
        self.entries.append((event, fields))
        return len(self.entries)


PERSON = make_id(date(1984, 3, 3))


def _filing(**changes: str) -> pb.Dispute:
    fields = {
        "dispute_id": "12" * 16,
        "round_id": "34" * 16,
        "match_set": "custody",
        "person_id": PERSON,
        "reason": "家属称已释放",
        "filed_at": "2026-11-30T08:00:00Z",
        "as_of": "2026-11-29",
        "purpose": "eligibility-review",
        **changes,
    }
    return pb.Dispute(**fields)


def test_a_dispute_is_stored_logged_once_and_answered(node_config: NodeConfig) -> None:
    log = Log()
    receipt = file_dispute(node_config, log, COORD, _filing())
    assert receipt.status == "open"
    assert file_dispute(node_config, log, COORD, _filing()).status == "open"  # a retry
    assert [e for e, _ in log.entries] == ["dispute_filed"]
    store_path = node_config.path.parent / "inbox" / "justice" / "disputes.sqlite"
    assert store_path.stat().st_mode & 0o777 == 0o600
    assert PERSON not in repr(log.entries)
    request = pb.DisputeAnswersRequest(dispute_ids=["12" * 16])
    assert not dispute_answers(node_config, log, COORD, request).answers  # still open
    with DisputeStore.open(node_config) as store:
        store.resolve("12" * 16, "corrected", "结束日期已更正")
        with pytest.raises(InputError, match="is corrected, not open"):
            store.resolve("12" * 16, "confirmed", "x")
    (answer,) = dispute_answers(node_config, log, COORD, request).answers
    assert (answer.verdict, answer.note) == ("corrected", "结束日期已更正")
    assert [e for e, _ in log.entries] == ["dispute_filed", "dispute_answered"]
    # another coordinator sees nothing of it
    other = Peer("other-coordinator", "coordinator")
    assert not dispute_answers(node_config, log, other, request).answers
    with pytest.raises(Refused, match="no such dispute"):
        withdraw_dispute(node_config, log, other, pb.DisputeWithdrawal(dispute_id="12" * 16))


@pytest.mark.parametrize(
    ("peer", "changes", "error", "message"),
    [
        (Peer("justice", "node"), {}, Refused, "not a coordinator certificate"),
        (COORD, {"match_set": "deaths"}, Refused, "no such match set"),
        (COORD, {"purpose": "curiosity"}, Refused, "purpose not allowed"),
        (Peer("police-coord", "coordinator"), {}, Refused, "purpose not allowed"),
        (COORD, {"dispute_id": "xyz"}, ProtocolError, "dispute_id is not 32"),
        (COORD, {"person_id": PERSON[:-1] + "0"}, ProtocolError, "not a valid identity"),
        (COORD, {"reason": f"见 {PERSON}"}, ProtocolError, "looks like it holds an identity"),
        (COORD, {"reason": "  "}, ProtocolError, "reason is empty"),
        # what another member's terminal would obey: escapes, bells, bidi overrides
        (COORD, {"reason": "esc\x1b]0;TITLE\x07"}, ProtocolError, "character U\\+001B"),
        (COORD, {"reason": "称\u202e已释放"}, ProtocolError, "character U\\+202E"),
        (COORD, {"filed_at": "2026\x1b[2J"}, ProtocolError, "filed_at holds the control"),
    ],
)
def test_a_bad_filing_is_refused_without_quoting_the_identity(
    node_config: NodeConfig,
    peer: Peer,
    changes: dict[str, str],
    error: type[Exception],
    message: str,
) -> None:
    log = Log()
    with pytest.raises(error, match=message) as caught:
        file_dispute(node_config, log, peer, _filing(**changes))
    assert PERSON[:12] not in str(caught.value)
    assert log.entries == []


def test_control_and_format_characters_are_named_on_input_and_replaced_on_output() -> None:
    assert control_character("家属称 已释放, 见附件(2)") is None
    for char, name in [("\x1b", "U+001B"), ("\x07", "U+0007"), ("\u202e", "U+202E")]:
        assert control_character(f"ab{char}cd") == name
    assert control_character("a\u2028b") == "U+2028"  # a line separator
    assert control_character("a\ud800b") == "U+D800"  # an undecodable byte of argv
    assert printable("ok 经核实") == "ok 经核实"
    assert printable("l1\nl2\x1b[31mRED\x07\u202e") == "l1\ufffdl2\ufffd[31mRED\ufffd\ufffd"


def test_an_answer_the_log_refuses_is_skipped_and_blocks_no_other(
    node_config: NodeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row changed outside ``node resolve`` (a note holding an identity number): the
    other answers still go, the bad one never does, and stderr says why (no number)."""
    log = Log()
    good, bad = "12" * 16, "ab" * 16
    file_dispute(node_config, log, COORD, _filing(dispute_id=good))
    file_dispute(node_config, log, COORD, _filing(dispute_id=bad))
    with DisputeStore.open(node_config) as store:
        store.resolve(good, "confirmed", "记录无误")
        store.resolve(bad, "confirmed", "记录无误")
    conn = sqlite3.connect(node_config.path.parent / "inbox" / "justice" / "disputes.sqlite")
    with conn:
        conn.execute(
            "UPDATE disputes SET note = ? WHERE dispute_id = ?", (f"person {PERSON} checked", bad)
        )
    conn.close()
    request = pb.DisputeAnswersRequest(dispute_ids=[good, bad])
    (answer,) = dispute_answers(node_config, log, COORD, request).answers
    assert answer.dispute_id == good
    answered = [f["dispute_id"] for e, f in log.entries if e == "dispute_answered"]
    assert answered == [good]
    err = capsys.readouterr().err
    assert f"justice: warning: dispute {bad}: the answer is not handed over" in err
    assert "looks like it holds an identity number" in err and PERSON not in err
    # asked again: still skipped, still said
    assert [a.dispute_id for a in dispute_answers(node_config, log, COORD, request).answers] == [
        good
    ]
    assert bad in capsys.readouterr().err


def _parts(rows: list[list[str]], *, total: int | None = None, split: int = 2) -> list[pb.WorkList]:
    def part(chunk: list[list[str]]) -> pb.WorkList:
        return pb.WorkList(
            share_id="56" * 16,
            round_id="34" * 16,
            list="exits",
            purpose="follow-up",
            columns=["child_id", "decision"],
            as_of="2026-11-29",
            total_rows=len(rows) if total is None else total,
            rows=[pb.WorkListRow(values=r) for r in chunk],
        )

    return [part(rows[i : i + split]) for i in range(0, max(len(rows), 1), split)]


def test_a_work_list_is_stored_0600_and_logged_without_cells(node_config: NodeConfig) -> None:
    log = Log()
    rows = [[make_id(date(2015, 1, 1)), "EXIT"] for _ in range(5)]
    receipt = receive_work_list(node_config, log, COORD, iter(_parts(rows)))
    assert receipt.rows == 5
    folder = node_config.path.parent / "inbox" / "justice" / "lists"
    data = (folder / f"{'56' * 16}.csv").read_bytes().decode("utf-8-sig")
    assert data.split("\r\n")[0] == "child_id,decision" and rows[4][0] in data
    assert (folder / f"{'56' * 16}.csv").stat().st_mode & 0o777 == 0o600
    ((event, fields),) = log.entries
    assert event == "list_shared" and fields["rows"] == 5 and fields["list"] == "exits"
    assert rows[0][0] not in repr(log.entries)
    # sent again (a retry): stored and logged once
    receive_work_list(node_config, log, COORD, iter(_parts(rows)))
    assert len(log.entries) == 1


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (lambda rows: _parts(rows, total=9), "rows received, total_rows says 9"),
        (lambda rows: [_parts(rows)[0], pb.WorkList(share_id="78" * 16)], "another header"),
        (lambda rows: [], "empty work-list stream"),
    ],
)
def test_an_inconsistent_work_list_is_refused(
    node_config: NodeConfig, parts: object, message: str
) -> None:
    rows = [[make_id(date(2015, 1, 1)), "EXIT"] for _ in range(3)]
    assert callable(parts)
    with pytest.raises(ProtocolError, match=message):
        receive_work_list(node_config, Log(), COORD, iter(parts(rows)))
    with pytest.raises(Refused):
        receive_work_list(node_config, Log(), Peer("police", "node"), iter(_parts(rows)))


@pytest.mark.parametrize(
    "command",
    [
        ["dispute", "file"],
        ["dispute", "sync"],
        ["dispute", "list"],
        ["dispute", "withdraw"],
        ["node", "disputes"],
        ["node", "resolve"],
        ["node", "lists"],
        ["round", "share"],
    ],
    ids=lambda c: "-".join(c),
)
def test_subcommand_help_has_examples(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xmatch", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert f"  xmatch {' '.join(command)}" in done.stdout.split("examples:\n", 1)[1]


_COORDINATOR_TOML = """
[coordinator]
name = "civil-affairs"
ca = "pki/ca.crt"
cert = "pki/c.crt"
key = "pki/c.key"
audit_log = "logs/c.jsonl"
state = "state/c.sqlite"
roster = "roster.csv"
purpose = "eligibility-review"

[[nodes]]
name = "justice"
address = "127.0.0.1:50061"
match_sets = ["custody"]
protocol = "ecdh"
"""


@pytest.mark.parametrize("side", ["node", "coordinator"])
def test_a_damaged_dispute_store_is_one_plain_line(node_config: NodeConfig, side: str) -> None:
    folder = node_config.path.parent
    if side == "node":
        store, command = folder / "inbox" / "justice" / "disputes.sqlite", ["node", "disputes"]
        config = node_config.path
    else:
        store, command = folder / "state" / "disputes.sqlite", ["dispute", "list"]
        config = folder / "coordinator.toml"
        config.write_text(_COORDINATOR_TOML, encoding="utf-8")
    store.parent.mkdir(parents=True, mode=0o700)
    store.write_bytes(bytes(range(256)) * 16)  # not an SQLite file
    store.chmod(0o600)
    done = subprocess.run(
        [sys.executable, "-m", "xmatch", *command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    what = "store" if side == "node" else "book"
    assert done.stderr == (
        f"xmatch: error: {store}: not a dispute {what} (SQLite says: file is not a database)\n"
    )
