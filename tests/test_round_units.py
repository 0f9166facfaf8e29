"""Coordinator pieces without a network: config, state, evidence rows, error mapping."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from coordinator.client import MatchSetResult, describe_rpc_error
from coordinator.config import load_coordinator_config, parse_address
from coordinator.records import Circumstance
from coordinator.round import check_output_folder, evidence_rows
from coordinator.state import RoundState
from coordinator.streams import from_response
from proto import xmatch_pb2 as pb
from psi.errors import ConfigError, InputError, PeerError, XmatchError
from psi.session import PayloadColumns
from tests import configs
from tests.configs import Edit, Table, drop, put

GOOD: Table = {
    "coordinator": {
        "name": "civil-affairs",
        "ca": "pki/ca.crt",
        "cert": "pki/civil-affairs.crt",
        "key": "pki/civil-affairs.key",
        "audit_log": "logs/civil-affairs.audit.jsonl",
        "state": "state/coordinator.sqlite",
        "roster": "data/roster.csv",
        "purpose": "eligibility-review",
    },
    "nodes": [
        {
            "name": "justice",
            "address": "127.0.0.1:50061",
            "match_sets": ["custody"],
            "protocol": "ecdh",
        }
    ],
}


def _write(tmp_path: Path, doc: Table | str) -> Path:
    path = tmp_path / "coordinator.toml"
    if isinstance(doc, str):  # not TOML at all
        path.write_text(doc, encoding="utf-8")
        return path
    return configs.write(path, doc)


def test_config_resolves_paths_and_defaults(tmp_path: Path) -> None:
    cfg = load_coordinator_config(_write(tmp_path, GOOD))
    assert cfg.coordinator.ca == tmp_path / "pki" / "ca.crt"
    assert cfg.coordinator.roster == tmp_path / "data" / "roster.csv"
    assert cfg.coordinator.audit_key_path == tmp_path / "pki" / "civil-affairs.audit.key"
    node = cfg.nodes[0]
    assert (node.deadline_seconds, node.retries) == (600.0, 3)
    assert node.max_records_per_identity == 1000
    assert cfg.coordinator.chunk_items == 16384


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ((put("nodes[0].colour", "red"),), "unknown key nodes[0].colour"),
        (
            (put("coordinator.purpose", "x"), put("coordinator.secret", 1)),
            "unknown key coordinator.secret",
        ),
        ((put("nodes[0].address", "127.0.0.1"),), "key nodes[0].address"),
        ((put("nodes[0].address", "127.0.0.1:70000"),), "key nodes[0].address"),
        ((put("nodes[0].protocol", "rsa"),), "key nodes[0].protocol"),
        ((drop("coordinator.purpose"),), "missing key coordinator.purpose"),
        ((put("nodes[0].match_sets", []),), "key nodes[0].match_sets"),
        # TOML types are kept: true is not 1, "2" is not 2 (pydantic would convert both)
        (
            (put("coordinator.chunk_items", True),),
            "key coordinator.chunk_items: a whole number is expected, not true or false",
        ),
        (
            (put("coordinator.workers", "2"),),
            "key coordinator.workers: a whole number is expected, not a quoted string",
        ),
        (
            (put("nodes[0].deadline_seconds", "600"),),
            "key nodes[0].deadline_seconds: a number is expected, not a quoted string",
        ),
        ((put("nodes[0].deadline_seconds", 600),), None),  # an integer is a number
        # records per matched identity in one keyed-hash answer: 1..1_000_000, per node
        ((put("nodes[0].max_records_per_identity", 1),), None),
        ((put("nodes[0].max_records_per_identity", 1_000_000),), None),
        (
            (put("nodes[0].max_records_per_identity", 0),),
            "key nodes[0].max_records_per_identity: Input should be greater than or equal to 1",
        ),
        (
            (put("nodes[0].max_records_per_identity", 1_000_001),),
            "key nodes[0].max_records_per_identity: Input should be less than or equal to 1000000",
        ),
        (
            (put("nodes[0].max_records_per_identity", "50"),),
            "key nodes[0].max_records_per_identity: a whole number is expected, not a quoted",
        ),
        (
            (put("coordinator.max_records_per_identity", 50),),
            "unknown key coordinator.max_records_per_identity",
        ),
        ((), None),
    ],
)
def test_config_errors_name_file_and_key(
    tmp_path: Path, edits: tuple[Edit, ...], expected: str | None
) -> None:
    path = _write(tmp_path, configs.apply(GOOD, *edits))
    if expected is None:
        load_coordinator_config(path)
        return
    with pytest.raises(ConfigError) as info:
        load_coordinator_config(path)
    line = info.value.diagnostics()
    assert str(path) in line and expected in line
    assert "\n" not in line


def test_config_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_coordinator_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_coordinator_config(_write(tmp_path, "[coordinator\n"))


def test_config_duplicate_node(tmp_path: Path) -> None:
    doc = configs.apply(GOOD, put("nodes", GOOD["nodes"] * 2))
    with pytest.raises(ConfigError, match=r"nodes\[1\]\.name: the name of nodes\[0\] again"):
        load_coordinator_config(_write(tmp_path, doc))


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:50061") == ("127.0.0.1", 50061)
    assert parse_address("[::1]:1") == ("[::1]", 1)
    for bad in ("127.0.0.1", ":80", "host:0", "host:http", "[::1:80"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_state_marks_dead_coordinators_round_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    # A coordinator that starts a round and dies without finishing it.
    code = (
        "import datetime, pathlib, sys\n"
        "from coordinator.state import RoundState\n"
        "s = RoundState.open(pathlib.Path(sys.argv[1]))\n"
        "s.start_round('r1', as_of=datetime.date(2026, 11, 29), out_dir=pathlib.Path('x'),\n"
        "              sub_rounds=[('justice', 'custody', 'ecdh')])\n"
        "s.sub_round_running('r1', 'justice', 'custody')\n"
        "import os; os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(db)], check=False)
    assert done.returncode == 9
    with RoundState.open(db) as state:
        assert state.recovered == ["r1"]
        record = state.get_round("r1")
        assert record is not None and record.status == "interrupted"
        # Our own running round is left alone.
        state.start_round("r2", as_of=dt.date(2026, 11, 29), out_dir=tmp_path, sub_rounds=[])
        assert state.mark_interrupted() == []
        state.finish_sub_round(
            "r1",
            "justice",
            "custody",
            status="failed",
            matches=None,
            seconds=1.0,
            transcript=None,
            detail="connection refused at 127.0.0.1:1",
        )
        sub = state.sub_rounds("r1")[0]
        assert (sub.status, sub.detail) == ("failed", "connection refused at 127.0.0.1:1")
        state.finish_round("r2", status="completed")
        assert state.get_round("r2").status == "completed"  # type: ignore[union-attr]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert os.path.exists(db)


def test_output_folder_is_never_overwritten(tmp_path: Path) -> None:
    check_output_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "decisions.json").write_text("{}")
    with pytest.raises(InputError, match="not empty"):
        check_output_folder(tmp_path / "used")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_output_folder(tmp_path / "file")
    # under a file: refused before any traffic (it failed after the round, budgets spent)
    check_output_folder(tmp_path / "new" / "deeper" / "out")
    with pytest.raises(InputError, match=r"file is not a folder; choose another --out"):
        check_output_folder(tmp_path / "file" / "sub" / "out")


def _result(payloads: list[dict[str, str]], circumstance: str = "IMPRISONED") -> MatchSetResult:
    names = list(dict.fromkeys(name for record in payloads for name in record))
    columns = {name: [record.get(name, "") for record in payloads] for name in names}
    return MatchSetResult(
        node="justice",
        match_set="custody",
        protocol="keyed-hash",
        circumstance=circumstance,
        indices=np.arange(len(payloads), dtype=np.int64),
        payload=PayloadColumns(len(payloads), columns),
        transcript=b"\0" * 32,
        query_size=3,
        set_size=0,
        seconds=0.1,
    )


def test_evidence_rows_from_payload() -> None:
    ids = ["a", "b", "c"]
    rows = evidence_rows(
        _result(
            [
                {"start_date": "2025-02-01", "end_date": ""},
                {
                    "start_date": "2025-02-01 00:00:00",
                    "disability_category": "5",
                    "disability_grade": "3",
                },
            ]
        ),
        ids,
    )
    assert rows[0].person_id == "a" and rows[0].source == "justice/custody"
    assert rows[0].circumstance is Circumstance.IMPRISONED
    assert rows[0].start_date == dt.date(2025, 2, 1) and rows[0].end_date is None
    assert (rows[1].disability_category, rows[1].disability_grade) == (5, 3)


@pytest.mark.parametrize(
    "payload",
    [{"start_date": "01/02/2025"}, {"disability_grade": "9"}, {"name": "x"}],
)
def test_evidence_rows_reject_bad_payload_without_quoting_it(payload: dict[str, str]) -> None:
    with pytest.raises(XmatchError) as info:
        evidence_rows(_result([payload]), ["a"])
    assert all(v not in info.value.diagnostics() for v in payload.values() if v != "x")


def test_evidence_rows_reject_unknown_circumstance() -> None:
    with pytest.raises(XmatchError, match="circumstance"):
        evidence_rows(_result([{}], circumstance="ALIVE"), ["a"])


def test_records_map_payload_entries_to_tags() -> None:
    # The node's payload entries become a session Matches (coordinator.streams), whose
    # tags psi.session.evidence_indices maps to identities, one per record.
    from psi.errors import ProtocolError
    from psi.session import Matches, evidence_indices

    idx = np.array([4, 9], dtype=np.int64)
    days = ["2020-01-01", "2021-01-01", "2022-01-01"]
    chunk = pb.MatchChunk(psi=b"", tags=[0, 1, 1])
    chunk.columns.add(name="start_date", values=days)
    message = from_response("justice/custody", pb.KeyedHashResponse(matches=chunk))
    assert isinstance(message, Matches)
    rows, payload = evidence_indices(idx, message.tags), message.payload
    assert rows.tolist() == [4, 9, 9]
    assert payload.columns == {"start_date": days} and len(payload) == 3
    with pytest.raises(ProtocolError, match="no matched tag"):
        evidence_indices(idx, [7])
    with pytest.raises(ProtocolError, match="no payload entry"):
        evidence_indices(idx, [0])
    # a MatchChunk of the older wire format (records in field 2) reads as no tags at all
    with pytest.raises(ProtocolError, match="no payload entry"):
        evidence_indices(idx, [])


def test_a_payload_column_sent_twice_or_of_another_length_is_out_of_protocol() -> None:
    from psi.errors import ProtocolError
    from psi.session import Matches

    twice = pb.MatchChunk(psi=b"", tags=[0])
    twice.columns.add(name="start_date", values=["2020-01-01"])
    twice.columns.add(name="start_date", values=["2021-01-01"])
    with pytest.raises(PeerError, match="payload column sent twice") as info:
        from_response("justice/custody", pb.KeyedHashResponse(matches=twice))
    assert info.value.peer == "justice/custody"
    short = pb.MatchChunk(psi=b"", tags=[0, 0])
    short.columns.add(name="start_date", values=["2020-01-01"])
    message = from_response("justice/custody", pb.KeyedHashResponse(matches=short))
    assert isinstance(message, Matches)
    with pytest.raises(ProtocolError, match="payload column's length"):
        message.payload.check()
    result = dataclasses.replace(_result([{}, {}]), payload=message.payload)
    with pytest.raises(XmatchError, match="payload column's length"):
        evidence_rows(result, ["a", "b"])
    with pytest.raises(XmatchError, match="differ in number"):
        evidence_rows(dataclasses.replace(result, payload=PayloadColumns(3)), ["a", "b"])


class _FakeCall(grpc.RpcError, grpc.Call):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:  # type: ignore[override]
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: object) -> bool:
        return False


@pytest.mark.parametrize(
    ("code", "details", "reason", "refused", "transient"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50099: "
            "Failed to connect to remote host: Connection refused",
            "connection refused at 127.0.0.1:50099",
            False,
            True,
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "Ssl handshake failed: CERTIFICATE_VERIFY_FAILED",
            "TLS handshake with 127.0.0.1:50099 failed",
            False,
            False,
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "purpose not allowed",
            "refused: purpose not allowed",
            True,
            False,
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            "deadline exceeded after 600 s",
            False,
            False,
        ),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "budget for 150802201503150021 exhausted",
            "refused: no reason given",
            True,
            False,
        ),
    ],
)
def test_rpc_errors_become_one_safe_line(
    code: grpc.StatusCode, details: str, reason: str, refused: bool, transient: bool
) -> None:
    got = describe_rpc_error(
        _FakeCall(code, details), address="127.0.0.1:50099", deadline_seconds=600
    )
    assert got[0].startswith(reason)
    assert got[1:] == (refused, transient)


def _output(out: Path, **kwargs: Any) -> None:
    from coordinator.output import write_output

    arguments: dict[str, Any] = {
        "document": {"round_id": "0" * 32, "decisions": []},
        "report": "<html></html>",
        **kwargs,
    }
    write_output(out, round_id="0" * 32, evidence=[], **arguments)


def test_people_outputs_are_written_beside_the_others(tmp_path: Path) -> None:
    """The spreadsheet's writer runs in a forked child; what it writes lands in the folder,
    and ``waiting`` is called once the parent's own files are written."""
    out = tmp_path / "round"
    seen: list[int] = []

    def extra(staging: Path) -> None:
        (staging / "decisions.xlsx").write_bytes(str(os.getpid()).encode())

    _output(out, extra=extra, waiting=lambda: seen.append(1))
    assert seen == [1]
    assert sorted(p.name for p in out.iterdir()) == [
        "decisions.json",
        "decisions.xlsx",
        "evidence.csv",
        "report.html",
    ]
    assert int((out / "decisions.xlsx").read_bytes()) != os.getpid()  # another process wrote it


def test_a_failed_spreadsheet_leaves_no_round_folder(tmp_path: Path) -> None:
    """The child's failure comes back as one OSError line; nothing is left half-written."""
    out = tmp_path / "round"

    def extra(_staging: Path) -> None:
        raise OSError("No space left on device")

    with pytest.raises(OSError, match=r"decisions.xlsx not written: OSError: No space left"):
        _output(out, extra=extra)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_of_the_parent_stops_the_spreadsheet(tmp_path: Path) -> None:
    """When the parent's own writing fails, the child is killed and reaped, the staging
    folder removed."""
    out = tmp_path / "round"
    marker = tmp_path.parent / f"{tmp_path.name}-late"

    def extra(_staging: Path) -> None:
        import time

        time.sleep(5)
        marker.write_text("still ran", encoding="utf-8")

    def document() -> dict[str, object]:
        raise ValueError("broken document")

    with pytest.raises(ValueError, match="broken document"):
        _output(out, extra=extra, document=document)
    assert list(tmp_path.iterdir()) == []
    assert not marker.exists()


def test_report_is_written_by_its_own_child_and_its_failure_names_it(tmp_path: Path) -> None:
    """A report given as a function is rendered in a forked child; if that fails, the one
    line names report.html and no round folder appears."""
    out = tmp_path / "round"
    _output(out, report=lambda: f"<html>{os.getpid()}</html>")
    written = (out / "report.html").read_text(encoding="utf-8")
    assert written != f"<html>{os.getpid()}</html>"  # another process rendered it
    assert (out / "report.html").stat().st_mode & 0o777 == 0o600

    def broken() -> str:
        raise RuntimeError("template broke")

    again = tmp_path / "again"
    with pytest.raises(OSError, match=r"report.html not written: RuntimeError: template broke"):
        _output(again, report=broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round"]


def test_evidence_written_before_the_rules_end_lands_with_the_rest(tmp_path: Path) -> None:
    """The round opens its output folder before deciding and writes evidence.csv in a
    child meanwhile; the folder appears only at commit, and a failure of any writer
    (named in one line) or of the parent leaves nothing behind."""
    from coordinator.output import OutputFolder

    out = tmp_path / "round"
    with OutputFolder(out, "0" * 32) as folder:
        folder.start_evidence([])
        assert not out.exists() and folder.has("evidence.csv")
        _output(out, folder=folder)
    assert sorted(p.name for p in out.iterdir()) == [
        "decisions.json",
        "evidence.csv",
        "report.html",
    ]
    assert (out / "evidence.csv").read_text(encoding="utf-8").startswith("person_id,")

    def broken(_path: Path) -> None:
        raise OSError("disk full")

    late = tmp_path / "late"
    failed = pytest.raises(OSError, match=r"^evidence.csv not written: OSError: disk full$")
    with failed, OutputFolder(late, "1" * 32) as folder:
        folder.beside("evidence.csv", broken)
        _output(late, folder=folder)
    with pytest.raises(KeyboardInterrupt), OutputFolder(late, "2" * 32) as folder:
        folder.start_evidence([])
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round"]
