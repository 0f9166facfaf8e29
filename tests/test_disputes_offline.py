"""Disputes and work lists for an offline department: sealed inbox files, real processes.

The round runs online (all nodes serving); then the disabled persons' federation is
treated as offline (its node stopped, ``transport = "offline"`` in a second
coordinator.toml over the same state, book and log): the dispute goes out as a
sealed ``inbox`` file, ``xmatch node inbox`` applies it and writes the sealed reply,
``xmatch dispute import`` reads it; the department's answer comes home the same way.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.configs import put
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
from tests.test_disputes import CERTS, CHILD, DPF, MOTHER, PEOPLE, _add_family

SHARES: list[dict[str, object]] = [
    {
        "department": "disabled-persons-federation",
        "lists": ["exits"],
        "columns": ["child_id", "decision"],
    }
]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = build_federation(tmp_path_factory.mktemp("disputes-offline"))
    _add_family(federation.root)
    coordinator_toml(federation, "online.toml")
    path = coordinator_toml(federation, "offline.toml", edits=[put("shares", SHARES)])
    text = path.read_text(encoding="utf-8")
    head, sep, rest = text.partition(f'name = "{DPF}"\n')
    rest = re.sub(r"^address = .*\n", 'transport = "offline"\n', rest, count=1, flags=re.M)
    path.write_text(head + sep + rest, encoding="utf-8")
    try:
        start_nodes(federation)
        yield federation
    finally:
        stop_nodes(federation.nodes)


def _run(fed: Federation, *args: str) -> tuple[str, str]:
    done = xmatch(*args, cwd=fed.root)
    assert done.returncode == 0, done.stdout + done.stderr
    for person in PEOPLE:
        assert person not in done.stderr
    return done.stdout, done.stderr


def test_the_dispute_life_cycle_over_sealed_files(fed: Federation) -> None:
    done = round_run(fed.root / "online.toml", fed.root / "round-1", as_of=AS_OF)
    assert done.returncode == 0, done.stderr
    rid = (fed.root / "round-1" / "decisions.json").read_text(encoding="utf-8")
    rid = re.search(r'"round_id": "([0-9a-f]{32})"', rid).group(1)  # type: ignore[union-attr]
    (dpf,) = [n for n in fed.nodes if n.name == DPF]
    stop_nodes([dpf])  # from now on the department is reached by removable media only
    usb = fed.root / "usb"
    offline = ("--config", "offline.toml")
    # (1) filed: recorded, waiting for the sealed inbox
    out, err = _run(
        fed,
        *("dispute", "file", *offline, "--round", rid, "--person", MOTHER, "--source", CERTS),
        *("--reason", "家属提供了换发的残疾人证"),
    )
    dispute = out.strip().split()[-1]
    assert "waiting for delivery" in out and f"note: {DPF}: an offline node" in err
    # sync without --offline-dir: the dispute waits, and that is said (exit 3)
    done = xmatch("dispute", "sync", *offline, cwd=fed.root)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"warning: {DPF}: an offline node with disputes waiting: give --offline-dir" in (
        done.stderr
    )
    assert "nothing to sync" not in done.stdout
    out, _ = _run(fed, "dispute", "sync", *offline, "--offline-dir", str(usb))
    inbox = usb / f"{DPF}.inbox"
    assert f"written {inbox} (1 dispute(s), 0 withdrawal(s))" in out
    assert MOTHER.encode() not in inbox.read_bytes()  # sealed: nothing in clear
    # (2) in the department: apply the inbox, see the dispute, answer it
    node_toml = f"{DPF}.node.toml"
    out, _ = _run(
        fed, "node", "inbox", "--config", node_toml, "--file", str(inbox), "--out", str(usb / "r1")
    )
    assert "1 dispute(s)" in out and "0 refusal(s)" in out
    listing, _ = _run(fed, "node", "disputes", "--config", node_toml)
    assert f"{dispute}\topen\t" in listing and MOTHER in listing
    _run(
        fed,
        *("node", "resolve", "--config", node_toml, "--dispute", dispute),
        *("--verdict", "confirmed", "--note", "经核实,证件已失效"),
    )
    # (3) home: the receipt makes it delivered; the next exchange brings the answer
    out, _ = _run(fed, "dispute", "import", *offline, "--reply", str(usb / "r1"))
    assert f"{DPF}: 1 delivered, 0 answered" in out
    listing, _ = _run(fed, "dispute", "list", *offline, "--status", "open")
    assert f"{dispute}\topen\t" in listing  # delivered now
    (inbox := usb / f"{DPF}.inbox").unlink()
    _run(fed, "dispute", "sync", *offline, "--offline-dir", str(usb))
    _run(
        fed, "node", "inbox", "--config", node_toml, "--file", str(inbox), "--out", str(usb / "r2")
    )
    out, _ = _run(fed, "dispute", "import", *offline, "--reply", str(usb / "r2"))
    assert f"{DPF}: 0 delivered, 1 answered" in out and f"{dispute} confirmed" in out
    # (4) both logs: filed and answered, and the files' digests; never the identity
    for party in ("civil-affairs", DPF):
        entries = audit_entries(fed.audit_log(party))
        events = [e["event"] for e in entries if e.get("dispute_id") == dispute]
        assert events == ["dispute_filed", "dispute_answered"], party
        kinds = {(e["kind"], e["action"]) for e in entries if e["event"] == "offline_file"}
        assert {("inbox", "written" if party == "civil-affairs" else "opened")} <= kinds
        text = fed.audit_log(party).read_text(encoding="utf-8")
        for person in PEOPLE:
            assert person not in text
    # (5) a work list for the offline department travels the same way
    out, _ = _run(
        fed, "round", "share", *offline, "--round", rid, "--offline-dir", str(usb / "lists")
    )
    (sealed,) = (usb / "lists").iterdir()
    _run(
        fed, "node", "inbox", "--config", node_toml, "--file", str(sealed), "--out", str(usb / "r3")
    )
    listing, _ = _run(fed, "node", "lists", "--config", node_toml)
    (row,) = [ln.split("\t") for ln in listing.split("\n")[1:] if ln]
    assert row[3] == "exits" and row[7] == "child_id,decision"
    assert f"{CHILD},EXIT" in Path(row[8]).read_bytes().decode("utf-8-sig")
    shared = [e for e in audit_entries(fed.audit_log(DPF)) if e["event"] == "list_shared"]
    assert len(shared) == 1 and shared[0]["rows"] == int(row[6])
    # a changed byte: refused with one line, nothing applied
    data = bytearray(sealed.read_bytes())
    data[-10] ^= 1
    sealed.write_bytes(bytes(data))
    done = xmatch(
        *("node", "inbox", "--config", node_toml, "--file", str(sealed)),
        *("--out", str(usb / "r4")),
        cwd=fed.root,
    )
    assert done.returncode == 1 and "refused" in done.stderr
    assert len(done.stderr.strip().split("\n")) == 1 and not (usb / "r4").exists()
    assert dt.date.today() >= AS_OF


def test_a_withdrawal_that_crosses_an_answer_over_sealed_files(fed: Federation) -> None:
    """Withdrawn here after the department answered it: the next exchange brings the
    answer, which stands on both sides."""
    decisions = (fed.root / "round-1" / "decisions.json").read_text(encoding="utf-8")
    rid = re.search(r'"round_id": "([0-9a-f]{32})"', decisions).group(1)  # type: ignore[union-attr]
    usb = fed.root / "usb-crossed"
    offline = ("--config", "offline.toml")
    node_toml = f"{DPF}.node.toml"
    out, _ = _run(
        fed,
        *("dispute", "file", *offline, "--round", rid, "--person", MOTHER, "--source", CERTS),
        *("--reason", "家属再次提供证件"),
    )
    dispute = out.strip().split()[-1]
    _run(fed, "dispute", "sync", *offline, "--offline-dir", str(usb))
    inbox = usb / f"{DPF}.inbox"
    _run(
        fed, "node", "inbox", "--config", node_toml, "--file", str(inbox), "--out", str(usb / "r1")
    )
    _run(fed, "dispute", "import", *offline, "--reply", str(usb / "r1"))  # delivered
    _run(
        fed,
        *("node", "resolve", "--config", node_toml, "--dispute", dispute),
        *("--verdict", "corrected", "--note", "有效期已更正"),
    )
    out, _ = _run(fed, "dispute", "withdraw", *offline, "--dispute", dispute, "--reason", "撤回")
    assert f"withdrawn: dispute {dispute}" in out
    inbox.unlink()
    out, _ = _run(fed, "dispute", "sync", *offline, "--offline-dir", str(usb))
    assert "(0 dispute(s), 1 withdrawal(s))" in out
    _run(
        fed, "node", "inbox", "--config", node_toml, "--file", str(inbox), "--out", str(usb / "r2")
    )
    out, _ = _run(fed, "dispute", "import", *offline, "--reply", str(usb / "r2"))
    assert f"{DPF}: 0 delivered, 1 answered" in out and f"{dispute} corrected: 有效期已更正" in out
    listing, _ = _run(fed, "dispute", "list", *offline, "--status", "corrected")
    assert f"{dispute}\tcorrected\t" in listing
    node_side, _ = _run(fed, "node", "disputes", "--config", node_toml, "--all")
    assert f"{dispute}\tcorrected\t" in node_side
    # nothing is left to send: the answer closed the withdrawal too
    out, _ = _run(fed, "dispute", "sync", *offline)
    assert "nothing to sync" in out
