"""Offline rounds over sealed files (issue 14, docs/offline.md): real processes, real files."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keys.ca import init_ca, issue
from keys.sealed import (
    SealedFileError,
    load_sealing_key,
    load_sender_key,
    open_sealed,
    read_sealed,
    seal,
)
from psi.errors import InputError
from tests.federation import (
    AS_OF,
    Federation,
    audit_entries,
    build_federation,
    coordinator_toml,
    read_evidence_csv,
    round_run,
    start_nodes,
    xmatch,
)
from xmatch import synth
from xmatch.demo import stop_nodes

OFFLINE = ("police", "justice")  # keyed-hash and ecdh


def _offline_toml(
    fed: Federation,
    name: str,
    offline: tuple[str, ...],
    *,
    specs: tuple[synth.NodeSpec, ...] | None = None,
    keys: dict[str, dict[str, str]] | None = None,
) -> Path:
    """A coordinator.toml with ``offline`` nodes (``transport = "offline"``, no address);
    ``keys`` adds ``key = "value"`` lines to a node's entry (text edits, so that the
    test does not depend on how the helper writes TOML)."""
    path = coordinator_toml(fed, name, specs=specs)
    blocks = path.read_text(encoding="utf-8").split("[[nodes]]\n")
    for i, block in enumerate(blocks):
        found = re.search(r'^name = "([^"]+)"$', block, flags=re.MULTILINE)
        node = found.group(1) if found and i else None
        if node in offline:
            block = re.sub(r'^address = "[^"]*"$', 'transport = "offline"', block, flags=re.M)
        extra = "".join(f'{k} = "{v}"\n' for k, v in (keys or {}).get(node or "", {}).items())
        blocks[i] = block.rstrip("\n") + "\n" + extra + ("\n" if i < len(blocks) - 1 else "")
    path.write_text("[[nodes]]\n".join(blocks), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    fed = build_federation(tmp_path_factory.mktemp("offline"))
    yield fed
    stop_nodes(fed.nodes)


@pytest.fixture(scope="module")
def online(fed: Federation) -> Path:
    """The online round on the same data, every node served over gRPC."""
    start_nodes(fed)
    out = fed.root / "online"
    done = round_run(coordinator_toml(fed, "c-online.toml"), out, as_of=AS_OF)
    assert done.returncode in (0, 3), done.stderr
    # the offline departments have no network link from here on
    stop_nodes([n for n in fed.nodes if n.name in OFFLINE])
    return out


def _answer(
    fed: Federation, node: str, request: Path, out: Path
) -> subprocess.CompletedProcess[str]:
    return xmatch(
        "node",
        "answer",
        "--config",
        str(fed.config(node)),
        "--request",
        str(request),
        "--out",
        str(out),
    )


def _import(config: Path, response: Path) -> subprocess.CompletedProcess[str]:
    return xmatch("round", "import", "--config", str(config), "--response", str(response))


def _decisions(out: Path) -> list[dict[str, object]]:
    doc = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    return list(doc["decisions"])


@pytest.fixture(scope="module")
def mixed(fed: Federation, online: Path) -> dict[str, object]:
    """A mixed round: police (keyed-hash) and justice (ecdh) offline, the rest online."""
    config = _offline_toml(fed, "c-mixed.toml", OFFLINE)
    out = fed.root / "mixed"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == 4, done.stderr
    rid = re.search(r"round ([0-9a-f]{32})", done.stdout)
    assert rid is not None, done.stdout
    requests = {n: out / "offline" / f"{n}.request" for n in OFFLINE}
    assert all(p.is_file() for p in requests.values())
    assert not (out / "decisions.json").exists()
    return {"config": config, "out": out, "rid": rid.group(1), "requests": requests}


def test_offline_equals_online_for_both_protocols(
    fed: Federation, online: Path, mixed: dict[str, object]
) -> None:
    config, out = Path(str(mixed["config"])), Path(str(mixed["out"]))
    requests: dict[str, Path] = mixed["requests"]  # type: ignore[assignment]
    # the coordinator process is gone between run and import: state and pending file survive
    responses = {n: fed.root / f"{n}.response" for n in OFFLINE}
    for n in OFFLINE:
        done = _answer(fed, n, requests[n], responses[n])
        assert done.returncode == 0, done.stderr
    first = _import(config, responses["police"])
    assert first.returncode == 4, first.stderr
    assert "still waits for: justice" in first.stdout
    # a second import of the same response is refused, in one line
    again = _import(config, responses["police"])
    assert again.returncode == 1
    assert "imported before" in again.stderr and again.stderr.count("\n") == 1
    last = _import(config, responses["justice"])
    assert last.returncode in (0, 3), last.stderr
    assert read_evidence_csv(out / "evidence.csv") == read_evidence_csv(online / "evidence.csv")
    assert _decisions(out) == _decisions(online)
    assert (out / "decisions.xlsx").is_file() and (out / "report.html").is_file()
    # the node logs hold the same round entries as online, plus the files' digests
    reconcile = xmatch(
        "audit",
        "reconcile",
        "--ca",
        str(fed.root / "pki" / "ca.crt"),
        "--allow-unsigned-tail",
        str(fed.audit_log("civil-affairs")),
        *(str(fed.audit_log(s.name)) for s in fed.specs),
    )
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    events = [e["event"] for e in audit_entries(fed.audit_log("police"))]
    assert "offline_file" in events
    # the offline round declares its roster like an online one (reconcile checks sizes)
    declared = [
        e for e in audit_entries(fed.audit_log("civil-affairs")) if e["event"] == "roster_committed"
    ]
    assert str(mixed["rid"]) in {e["round_id"] for e in declared}


def test_refusals_other_node_altered_truncated_replayed(
    fed: Federation, mixed: dict[str, object]
) -> None:
    requests: dict[str, Path] = mixed["requests"]  # type: ignore[assignment]
    police = requests["police"]
    data = police.read_bytes()
    cases = {
        "meant for 'police'": police,
    }
    altered = fed.root / "altered.request"
    flipped = bytearray(data)
    flipped[-200] ^= 1
    altered.write_bytes(bytes(flipped))
    truncated = fed.root / "truncated.request"
    truncated.write_bytes(data[: len(data) // 2])
    for path, node, needle in (
        (police, "justice", "meant for 'police'"),
        (altered, "police", "altered"),
        (truncated, "police", "truncated"),
        (police, "police", "answered before"),
        # a device given by mistake: refused at once, never read into memory
        (Path("/dev/zero"), "police", "not a sealed xmatch file"),
    ):
        done = _answer(fed, node, path, fed.root / f"never-{node}-{path.stem}.response")
        assert done.returncode == 1, done.stdout
        assert needle in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    # an --out whose folder is missing: one line before the request is opened
    nowhere = fed.root / "no-such-folder" / "x.response"
    done = _answer(fed, "justice", requests["justice"], nowhere)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "no-such-folder does not exist; choose another --out" in done.stderr
    assert cases


def test_expired_and_unknown_sender(fed: Federation, tmp_path: Path) -> None:
    pki = fed.root / "pki"
    ca_pem = (pki / "ca.crt").read_bytes()
    sender = load_sender_key(
        name="civil-affairs",
        key=pki / "civil-affairs.key",
        cert=pki / "civil-affairs.crt",
        seal_cert=pki / "civil-affairs.seal.crt",
        passphrase=None,
    )
    police = load_sealing_key(pki / "police.seal.key", name="police", passphrase=None)
    now = dt.datetime.now(dt.UTC)
    data = seal(
        b"x",
        kind="request",
        sender=sender,
        recipient="police",
        recipient_seal_cert_pem=(pki / "police.seal.crt").read_bytes(),
        ca_pem=ca_pem,
        round_id="0" * 31 + "1",
        expires=now + dt.timedelta(days=1),
        now=now,
    )
    assert open_sealed(data, kind="request", recipient=police, ca_pem=ca_pem).payload == b"x"
    with pytest.raises(SealedFileError, match="expired"):
        open_sealed(
            data, kind="request", recipient=police, ca_pem=ca_pem, now=now + dt.timedelta(days=2)
        )
    # a member of another federation: its certificates are not from our CA
    other = tmp_path / "other"
    init_ca(other)
    issue(other, name="civil-affairs", role="coordinator")
    stranger = load_sender_key(
        name="civil-affairs",
        key=other / "civil-affairs.key",
        cert=other / "civil-affairs.crt",
        seal_cert=other / "civil-affairs.seal.crt",
        passphrase=None,
    )
    forged = seal(
        b"x",
        kind="request",
        sender=stranger,
        recipient="police",
        recipient_seal_cert_pem=(pki / "police.seal.crt").read_bytes(),
        ca_pem=ca_pem,
        round_id="0" * 31 + "1",
        expires=now + dt.timedelta(days=1),
        now=now,
    )
    with pytest.raises(SealedFileError, match="unknown sender"):
        open_sealed(forged, kind="request", recipient=police, ca_pem=ca_pem)
    # both CAs have the default name: the line used to read "issuer X, CA X"; now it
    # names what differs, the CAs' key ids (public), in the department's one line
    forged_file = tmp_path / "forged.request"
    forged_file.write_bytes(forged)
    done = _answer(fed, "police", forged_file, tmp_path / "forged.response")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "not issued by this federation CA" in done.stderr, done.stderr
    ids = re.findall(r"key id ([0-9a-f]{16})…", done.stderr)
    assert len(ids) == 2 and ids[0] != ids[1], done.stderr


def test_close_gives_review_never_exit(fed: Federation, online: Path) -> None:
    config = _offline_toml(fed, "c-close.toml", ("justice",))
    out = fed.root / "closed"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == 4, done.stderr
    rid = re.search(r"round ([0-9a-f]{32})", done.stdout)
    assert rid is not None
    closed = xmatch("round", "close", "--config", str(config), "--round", rid.group(1))
    assert closed.returncode == 3, closed.stderr
    doc = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    assert "justice/custody" in doc["failed_sources"]
    online_doc = json.loads((online / "decisions.json").read_text(encoding="utf-8"))
    before = {d["child_id"]: d["decision"] for d in online_doc["decisions"]}
    after = {d["child_id"]: d["decision"] for d in doc["decisions"]}
    assert "EXIT" not in {after[c] for c in after if before.get(c) != "EXIT"}
    # a response that comes after the close is refused like any refused file: one
    # "FILE: refused: reason" line and an offline_file entry (it used to be a bare
    # "round R is closed" line, and nothing in the log)
    response = fed.root / "closed-justice.response"
    answered = _answer(fed, "justice", out / "offline" / "justice.request", response)
    assert answered.returncode == 0, answered.stderr
    late = _import(config, response)
    assert late.returncode == 1 and late.stderr.count("\n") == 1, late.stderr
    assert f"{response}: refused: round {rid.group(1)} is closed" in late.stderr, late.stderr
    refused = audit_entries(fed.audit_log("civil-affairs"))[-3]
    assert (refused["event"], refused["action"]) == ("offline_file", "refused"), refused
    assert "is closed" in str(refused["reason"])
    # a coordinator.toml naming another state database (and log) creates neither
    text = config.read_text(encoding="utf-8")
    elsewhere = fed.root / "c-elsewhere.toml"
    moved = re.sub(r'^state = ".*"$', 'state = "state-elsewhere/c.sqlite"', text, flags=re.M)
    moved = re.sub(r'^audit_log = ".*"$', 'audit_log = "logs-else/c.jsonl"', moved, flags=re.M)
    assert "state-elsewhere" in moved and "logs-else" in moved
    elsewhere.write_text(moved, encoding="utf-8")
    wrong = _import(elsewhere, response)
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert f"{response}: refused: round {rid.group(1)} has no offline sub-rounds" in wrong.stderr
    assert not (fed.root / "state-elsewhere").exists() and not (fed.root / "logs-else").exists()
    # the same log and another state: the refusal is logged, no state is created
    same_log = fed.root / "c-same-log.toml"
    same_log.write_text(
        re.sub(r'^state = ".*"$', 'state = "state-other/c.sqlite"', text, flags=re.M),
        encoding="utf-8",
    )
    wrong = _import(same_log, response)
    assert wrong.returncode == 1 and "refused: round" in wrong.stderr, wrong.stderr
    assert not (fed.root / "state-other").exists()
    refused = audit_entries(fed.audit_log("civil-affairs"))[-3]
    assert (refused["event"], refused["action"]) == ("offline_file", "refused"), refused
    assert "does not exist" in str(refused["reason"])


@pytest.mark.parametrize("moment", ["state", "log"])
def test_a_ctrl_c_after_close_writes_the_folder_leaves_the_round_complete(
    fed: Federation, online: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """A Ctrl-C between the folder's rename and the state's update used to leave a
    complete folder beside a round still waiting, its offline requests moved aside.
    Now it is noted (CommitGuard, as in ``round run``): the round is complete."""
    import io

    from audit.log import AuditLog
    from coordinator.offline_import import close_command
    from coordinator.state import RoundState

    config = _offline_toml(fed, f"c-close-sigint-{moment}.toml", ("justice",))
    out = fed.root / f"closed-sigint-{moment}"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == 4, done.stderr
    rid = re.search(r"round ([0-9a-f]{32})", done.stdout)
    assert rid is not None
    finish, append = RoundState.finish_round, AuditLog.append

    def ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, at the worst moment
        time.sleep(0.05)

    def finish_after_ctrl_c(self: RoundState, *args: object, **kwargs: object) -> None:
        ctrl_c()
        finish(self, *args, **kwargs)  # type: ignore[arg-type]

    def shutdown_after_ctrl_c(self: AuditLog, event: str, **fields: object) -> int:
        if event == "shutdown":
            ctrl_c()
        return append(self, event, **fields)

    if moment == "state":  # between the folder's rename and the state's update
        monkeypatch.setattr(RoundState, "finish_round", finish_after_ctrl_c)
    else:  # while the log's shutdown entry is written
        monkeypatch.setattr(AuditLog, "append", shutdown_after_ctrl_c)
    err = io.StringIO()
    code = close_command(config=config, round_id=rid.group(1), stdout=io.StringIO(), stderr=err)
    assert code == 3
    assert "Ctrl-C came after the round was written; the round is complete" in err.getvalue()
    assert (out / "decisions.json").is_file() and (out / "offline").is_dir()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    again = xmatch("round", "close", "--config", str(config), "--round", rid.group(1))
    assert again.returncode == 1 and "waits for no response any more" in again.stderr, again.stderr


def test_a_last_response_refused_for_a_changed_roster_can_be_imported_again(
    fed: Federation, online: Path
) -> None:
    """The response used to be marked imported before the round was written: once the
    roster was restored, the same file was refused ("imported before"), and the
    department's answer was lost. Now it counts as imported only with the folder."""
    from coordinator.config import load_coordinator_config

    config = _offline_toml(fed, "c-reimport.toml", ("justice",))
    out = fed.root / "reimport"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == 4, done.stderr
    response = fed.root / "justice-reimport.response"
    answered = _answer(fed, "justice", out / "offline" / "justice.request", response)
    assert answered.returncode == 0, answered.stderr
    roster = load_coordinator_config(config).coordinator.roster
    assert isinstance(roster, Path)
    saved = roster.read_bytes()
    lines = saved.decode("utf-8").splitlines(keepends=True)
    roster.write_text("".join(lines[:-1]), encoding="utf-8")  # one child less
    try:
        first = _import(config, response)
    finally:
        roster.write_bytes(saved)
    assert first.returncode == 1 and "the roster changed since round" in first.stderr
    assert not (out / "decisions.json").exists()
    second = _import(config, response)
    assert second.returncode in (0, 3), second.stderr
    assert (out / "decisions.json").is_file()
    third = _import(config, response)
    assert third.returncode != 0 and "imported before" in third.stderr, third.stderr


def test_privacy_no_identity_in_clear(fed: Federation, online: Path) -> None:
    ids = {row[0] for row in read_evidence_csv(online / "evidence.csv")}
    assert ids
    files = [*(fed.root / "mixed" / "offline").glob("*.request"), *fed.root.glob("*.response")]
    files += [fed.audit_log(n) for n in (*OFFLINE, "civil-affairs")]
    files += [p for p in (fed.root / "state").rglob("*") if p.is_file()]
    assert files
    for path in files:
        blob = path.read_bytes()
        for person in ids:
            assert person.encode() not in blob, path


def _entries(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            out.append(json.loads(line))
    return out


def test_node_killed_during_answer_and_coordinator_restarts(fed: Federation, online: Path) -> None:
    config = _offline_toml(fed, "c-kill.toml", ("police",))
    out = fed.root / "killed"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == 4, done.stderr
    request = out / "offline" / "police.request"
    # a coordinator killed while it runs another round, between our run and import
    other = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xmatch",
            "round",
            "run",
            "--config",
            str(coordinator_toml(fed, "c-other.toml")),
            "--out",
            str(fed.root / "other"),
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3)
    other.send_signal(signal.SIGKILL)
    other.wait()
    # the department's answer is killed after it opened the request
    response = fed.root / "police-killed.response"
    log = fed.audit_log("police")
    opened_before = sum(
        1 for e in _entries(log) if e.get("event") == "offline_file" and e.get("action") == "opened"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xmatch",
            "node",
            "answer",
            "--config",
            str(fed.config("police")),
            "--request",
            str(request),
            "--out",
            str(response),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        opened = sum(
            1
            for e in _entries(log)
            if e.get("event") == "offline_file" and e.get("action") == "opened"
        )
        if opened > opened_before:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not response.exists(), "the answer finished before it could be killed"
    # nothing half-written under the response's name; answering again works
    again = _answer(fed, "police", request, response)
    assert again.returncode == 0, again.stderr
    # the import, in a new coordinator process, completes the waiting round
    imported = _import(config, response)
    assert imported.returncode in (0, 3), imported.stderr
    assert (out / "decisions.json").is_file()
    doc = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    # justice is configured online here, and its node was stopped: it alone failed
    assert doc["failed_sources"] == ["justice/custody"]

    def police(folder: Path) -> list[tuple[str, ...]]:
        return [r for r in read_evidence_csv(folder / "evidence.csv") if r[2].startswith("police/")]

    assert police(out) == police(online) != []


def test_issue_seal_for_a_member_issued_before(tmp_path: Path) -> None:
    init_ca(tmp_path)
    issue(tmp_path, name="court", role="node")
    for suffix in (".seal.crt", ".seal.key"):
        (tmp_path / f"court{suffix}").unlink()
    done = xmatch("keys", "issue-seal", "--dir", str(tmp_path), "--name", "court", "--role", "node")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "court.seal.key").stat().st_mode & 0o777 == 0o600
    key = load_sealing_key(tmp_path / "court.seal.key", name="court", passphrase=None)
    ca_pem = (tmp_path / "ca.crt").read_bytes()
    sender = load_sender_key(
        name="court",
        key=tmp_path / "court.key",
        cert=tmp_path / "court.crt",
        seal_cert=tmp_path / "court.seal.crt",
        passphrase=None,
    )
    now = dt.datetime.now(dt.UTC)
    data = seal(
        b"y",
        kind="response",
        sender=sender,
        recipient="court",
        recipient_seal_cert_pem=(tmp_path / "court.seal.crt").read_bytes(),
        ca_pem=ca_pem,
        round_id="0" * 31 + "2",
        expires=now + dt.timedelta(hours=1),
    )
    assert open_sealed(data, kind="response", recipient=key, ca_pem=ca_pem).payload == b"y"
    with pytest.raises(SealedFileError, match="not a request"):
        open_sealed(data, kind="request", recipient=key, ca_pem=ca_pem)
    again = xmatch(
        "keys", "issue-seal", "--dir", str(tmp_path), "--name", "court", "--role", "node"
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    # read_sealed reads what the layout announces, and one byte more
    whole = tmp_path / "court.response"
    whole.write_bytes(data)
    assert read_sealed(whole) == data
    whole.write_bytes(data + b"appended")
    assert read_sealed(whole) == data + b"a"
    with pytest.raises(SealedFileError, match="truncated or not a sealed"):
        open_sealed(read_sealed(whole), kind="response", recipient=key, ca_pem=ca_pem)
    assert len(read_sealed(Path("/dev/zero"))) == 12
    huge = tmp_path / "huge.response"
    with huge.open("wb") as f:
        f.write(data[:8] + b"\xff\xff\xff\xff")  # a header longer than any
        f.truncate(1 << 30)  # sparse: 1 GiB that is never read
    assert len(read_sealed(huge)) == 12


def test_gm_suites_offline_equal_online(fed: Federation, online: Path) -> None:
    specs = tuple(s for s in fed.specs if s.name in OFFLINE)
    gm = {"police": {"prf": "sm4-ecb-v1"}, "justice": {"suite": "SM2_XMD:SM3_SSWU_RO_"}}
    path = _offline_toml(fed, "c-gm.toml", OFFLINE, specs=specs, keys=gm)
    out = fed.root / "gm"
    done = round_run(path, out, as_of=AS_OF)
    assert done.returncode == 4, done.stderr
    allow = {
        "police": 'prfs = ["aes128-ecb-v1", "sm4-ecb-v1"]\n',
        "justice": 'suites = ["x25519-sha256-u", "SM2_XMD:SM3_SSWU_RO_"]\n',
    }
    for n in OFFLINE:
        node_toml = fed.root / f"{n}-gm.node.toml"  # the same node, GM suites allowed too
        text = fed.config(n).read_text(encoding="utf-8")
        node_toml.write_text(text.replace("[[match_sets]]\n", "[[match_sets]]\n" + allow[n]))
        response = fed.root / f"gm-{n}.response"
        answered = xmatch(
            "node",
            "answer",
            "--config",
            str(node_toml),
            "--request",
            str(out / "offline" / f"{n}.request"),
            "--out",
            str(response),
        )
        assert answered.returncode == 0, answered.stderr
        imported = _import(path, response)
        assert imported.returncode in (0, 4), imported.stderr
    assert imported.returncode == 0, imported.stdout

    def offline_rows(folder: Path) -> list[tuple[str, ...]]:
        rows = read_evidence_csv(folder / "evidence.csv")
        return [r for r in rows if r[2].split("/")[0] in OFFLINE]

    assert offline_rows(out) == offline_rows(online) != []
    finished = [
        e for e in audit_entries(fed.audit_log("justice")) if e["event"] == "round_finished"
    ]
    assert finished[-1].get("suite") == "SM2_XMD:SM3_SSWU_RO_"


def test_a_set_the_node_refuses_is_a_failed_source(fed: Federation, online: Path) -> None:
    specs = tuple(s for s in fed.specs if s.name == "police")
    keys = {"police": {"prf": "sm4-ecb-v1"}}
    path = _offline_toml(fed, "c-refused.toml", ("police",), specs=specs, keys=keys)
    out = fed.root / "refused"
    assert round_run(path, out, as_of=AS_OF).returncode == 4
    response = fed.root / "refused-police.response"
    answered = _answer(fed, "police", out / "offline" / "police.request", response)
    assert answered.returncode == 0, answered.stderr
    assert "police/deaths: refused (keyed-hash prf not allowed" in answered.stdout
    imported = _import(path, response)
    assert imported.returncode == 3, imported.stderr
    assert "police/deaths refused: refused: keyed-hash prf not allowed" in imported.stderr
    doc = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    assert doc["failed_sources"] == ["police/deaths", "police/lost_contact"]
    refusals = [e for e in audit_entries(fed.audit_log("police")) if e["event"] == "round_refused"]
    assert refusals and refusals[-1]["reason"] == "keyed-hash prf not allowed for this match set"


def test_a_ctrl_c_while_requests_are_written_leaves_nothing(
    fed: Federation, online: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C after the first request was written (of two) used to leave that request in
    the output folder of a failed round, and a retry with the same --out was refused."""
    import io

    from coordinator import offline
    from coordinator.config import load_coordinator_config
    from coordinator.state import RoundState

    config = _offline_toml(fed, "c-sigint-requests.toml", OFFLINE)
    out = fed.root / "sigint-requests"
    write = offline._write_request
    calls: list[str] = []

    def interrupted_second(*args: object, **kwargs: object) -> object:
        calls.append("x")
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(offline, "_write_request", interrupted_second)
    printed = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        offline.run_offline_command(
            config=config, as_of=AS_OF, out=out, stdout=printed, stderr=io.StringIO()
        )
    monkeypatch.undo()
    assert calls == ["x", "x"]
    assert not out.exists()  # the request written first is gone, and the folders made
    assert "carry" not in printed.getvalue()  # no file was named to carry
    state = RoundState.open(load_coordinator_config(config).coordinator.state)
    try:
        assert state.rounds()[-1].status == "failed"
    finally:
        state.close()
    done = round_run(config, out, as_of=AS_OF)  # the same --out, again
    assert done.returncode == 4, done.stderr
    assert sorted(p.name for p in (out / "offline").iterdir()) == sorted(
        f"{name}.request" for name in OFFLINE
    )


@pytest.mark.parametrize("fault", ["ctrl-c", "unwritable"])
def test_a_retry_after_a_failed_answer_reconciles(
    fed: Federation, online: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A first ``node answer`` stopped by Ctrl-C (or whose response could not be written)
    was logged "cancelled by the requester", and the retry made audit reconcile report
    "a round id was reused". Now the attempt is logged as failed, with why, and a failed
    attempt followed by the answered one reconciles."""
    import errno
    import io

    from nodes import answer, servicer

    config = _offline_toml(fed, f"c-retry-{fault}.toml", ("police",))
    out = fed.root / f"retry-{fault}"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == 4, done.stderr
    rid = re.search(r"round ([0-9a-f]{32})", done.stdout)
    assert rid is not None
    request = out / "offline" / "police.request"
    response = fed.root / f"retry-{fault}.response"
    if fault == "ctrl-c":
        started = servicer.NodeServicer._started

        def ctrl_c_once_started(self: servicer.NodeServicer, driver: object) -> None:
            started(self, driver)  # type: ignore[arg-type]
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the first sub-round
            time.sleep(0.05)

        monkeypatch.setattr(servicer.NodeServicer, "_started", ctrl_c_once_started)
        with pytest.raises(KeyboardInterrupt):
            answer.answer_command(
                config=fed.config("police"), request=request, out=response, stdout=io.StringIO()
            )
        why = "interrupted"
    else:

        def full_medium(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(answer, "write_atomic", full_medium)
        with pytest.raises(InputError, match="the request is not used up"):
            answer.answer_command(
                config=fed.config("police"), request=request, out=response, stdout=io.StringIO()
            )
        why = "response not written"
    monkeypatch.undo()
    assert not response.exists()
    mine = [e for e in audit_entries(fed.audit_log("police")) if e.get("round_id") == rid.group(1)]
    assert [e["reason"] for e in mine if e.get("action") == "failed"] == [why], mine
    assert "cancelled by the requester" not in {e.get("reason") for e in mine}
    if fault == "ctrl-c":
        assert [e["reason"] for e in mine if e["event"] == "round_failed"] == [
            "interrupted on the node (Ctrl-C)"
        ]
    again = _answer(fed, "police", request, response)
    assert again.returncode == 0, again.stderr
    imported = _import(config, response)
    assert imported.returncode in (0, 3), imported.stderr
    reconcile = xmatch(
        "audit",
        "reconcile",
        "--ca",
        str(fed.root / "pki" / "ca.crt"),
        "--allow-unsigned-tail",
        str(fed.audit_log("civil-affairs")),
        str(fed.audit_log("police")),
    )
    findings = [
        line
        for line in reconcile.stdout.splitlines()
        if line.startswith("FINDING") and rid.group(1)[:12] in line
    ]
    assert findings == [], reconcile.stdout


#: a coordinator whose requests carry the key draws it chooses (review finding: an ecdh
#: draw became the node's secret scalar b, and then any identity could be tested)
_PLANTING_COORDINATOR = """
import sys
import coordinator.offline as offline
from coordinator.offline_runner import responder_share

def planted(ctx):
    share, draw = responder_share(ctx)
    if ctx.protocol == "ecdh":
        return share, bytes(range(1, 33))
    return share, draw + bytes(32)  # keyed-hash: 64 bytes, the rest would seed the node

offline.responder_share = planted
from xmatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_request_that_plants_the_nodes_secrets_is_refused(fed: Federation, online: Path) -> None:
    config = _offline_toml(fed, "c-planting.toml", OFFLINE)
    out = fed.root / "planting"
    done = subprocess.run(
        [sys.executable, "-c", _PLANTING_COORDINATOR, "round", "run", "--config", str(config),
         "--as-of", AS_OF.isoformat(), "--out", str(out), "-q"],
        capture_output=True, text=True, check=False, cwd=fed.root,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    for node, needle in (
        ("justice", "malformed request content: a ecdh sub-round carries a key draw"),
        ("police", "malformed request content: the key draw is 64 bytes, not 32"),
    ):
        response = fed.root / f"planting-{node}.response"
        answered = _answer(fed, node, out / "offline" / f"{node}.request", response)
        assert answered.returncode == 1, answered.stdout
        assert answered.stderr.count("\n") == 1 and needle in answered.stderr, answered.stderr
        assert not response.exists()
        refused = [
            e
            for e in audit_entries(fed.audit_log(node))
            if e.get("event") == "offline_file" and e.get("action") == "refused"
        ]
        assert refused and needle.split(": ", 1)[1] in str(refused[-1].get("reason"))
