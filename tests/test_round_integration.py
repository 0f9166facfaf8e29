"""End to end: real node processes on loopback, ``xmatch round run`` as a subprocess.

The evidence a round learns must equal the plaintext join of the same files
(computed here with plain Python and the same filters), for both protocols;
its decisions must equal ``xmatch rules evaluate`` on that evidence. Bad input
fails with one line, a non-zero exit and no output folder.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from coordinator import exit_codes
from psi import size_class
from tests import configs
from tests.configs import put
from tests.federation import (
    AS_OF,
    NEEDS,
    SPECS,
    SWAP,
    Federation,
    build_federation,
    coordinator_toml,
    expected_evidence,
    free_ports,
    read_evidence_csv,
    round_run,
    start_node,
    start_nodes,
    stop_nodes,
    write_node_configs,
    xmatch,
)
from xmatch import synth
from xmatch.demo import NodeProcess
from xmatch.synth import COORDINATOR_NAME

pytestmark = pytest.mark.integration


def _write_node_configs(
    root: Path, specs: tuple[synth.NodeSpec, ...], ports: dict[str, int]
) -> None:
    write_node_configs(root, specs, ports)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    fed = build_federation(tmp_path_factory.mktemp("federation"))
    try:
        start_nodes(fed)
        yield fed
    finally:
        stop_nodes(fed.nodes)


def _coordinator_toml(
    fed: Federation,
    name: str,
    *,
    specs: tuple[synth.NodeSpec, ...] = SPECS,
    nodes: Sequence[configs.Table] = (),
    edits: Sequence[configs.Edit] = (),
    roster: str = "data/roster.csv",
) -> Path:
    return coordinator_toml(fed, name, specs=specs, nodes=nodes, edits=edits, roster=roster)


def _no_identity_numbers(text: str) -> None:
    text = re.sub(r"\b[0-9a-f]{32}\b", "", text)  # round ids are random hex
    assert not re.search(r"\d{15}", text), "output holds something like an identity number"


def _evaluate(fed: Federation, out: Path, failed: list[str], tmp: Path) -> dict[str, object]:
    args = [
        "rules",
        "evaluate",
        "--roster",
        str(fed.root / "data" / "roster.csv"),
        "--evidence",
        str(out / "evidence.csv"),
        "--as-of",
        AS_OF.isoformat(),
        "--out",
        str(tmp / "evaluated.json"),
    ]
    for source in failed:
        args += ["--failed-source", source]
    for source in NEEDS:  # what the nodes' capabilities told the round
        args += ["--service-need", source]
    # the display names the nodes announced, as the round wrote them down
    args += ["--names", str(out / "names.csv")]
    done = xmatch(*args)
    assert done.returncode == 0, done.stderr
    document: dict[str, object] = json.loads((tmp / "evaluated.json").read_text(encoding="utf-8"))
    return document


@pytest.mark.parametrize("swap", [False, True], ids=["protocols-a", "protocols-b"])
def test_round_equals_plaintext_join_and_rules_evaluate(
    federation: Federation, tmp_path: Path, swap: bool
) -> None:
    specs = tuple(dataclasses.replace(s, protocol=SWAP[s.protocol]) if swap else s for s in SPECS)
    assert {s.protocol for s in specs} == {"ecdh", "keyed-hash"}
    config = _coordinator_toml(federation, f"coordinator-{int(swap)}.toml", specs=specs)
    out = tmp_path / "round"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == 0, done.stderr
    _no_identity_numbers(done.stdout + done.stderr)
    assert "warning" not in done.stderr
    # the two numbers a spreadsheet destroyed are reported with file, line and column
    assert len(re.findall(r"roster\.csv:\d+: column child_id: .*scientific", done.stderr)) == 2

    got = read_evidence_csv(out / "evidence.csv")
    want = expected_evidence(federation.root, specs)
    assert got == want
    assert {r[2] for r in got} == {f"{n.name}/{m.name}" for n in specs for m in n.match_sets}

    decisions = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    assert re.fullmatch(r"[0-9a-f]{32}", decisions.pop("round_id"))
    evaluated = _evaluate(federation, out, [], tmp_path)
    evaluated.pop("round_id")
    assert decisions == evaluated
    assert decisions["failed_sources"] == []
    # with display names set (synth's node.toml), no Chinese reason and no report heading
    # names a department by its id, and no reason has English in it
    reasons = [text for d in decisions["decisions"] for text in d["reasons"]]
    assert any("司法局·服刑在押人员" in text for text in reasons)
    node_ids = [n.name for n in specs]
    assert [t for t in reasons if any(node in t for node in node_ids)] == []
    assert [t for t in reasons if re.search("[A-Za-z]{2,}", t)] == []
    page = (out / "report.html").read_text(encoding="utf-8")
    headings = re.findall(r"<h[1-4]>(.*?)</h[1-4]>", page, re.S)
    assert headings and [h for h in headings if any(node in h for node in node_ids)] == []
    assert (out / "decisions.xlsx").stat().st_mode & 0o777 == 0o600
    # the round recorded its decision counts in the state: the history chart shows it
    history = page[page.index("aria-label='历次比对决定'") :]
    history = history[: history.index("</svg>")]
    assert f">{len(decisions['decisions']):,}</text>" in history
    assert "medical-insurance/enrolled" in decisions["coverage_gaps"]
    # the round took service_report = "needs" from the node's capabilities: the set lists
    # the covered children it matched, and is no coverage set
    assert NEEDS == ("disabled-persons-federation/rehab_needs",)
    needs = decisions["service_needs"]
    assert list(needs) == list(NEEDS) and needs[NEEDS[0]], needs
    assert NEEDS[0] not in decisions["coverage_gaps"]
    matched = {r[0] for r in got if r[2] == NEEDS[0]}
    covered = {
        d["child_id"]
        for d in decisions["decisions"]
        if d["decision"] in ("CONTINUE", "RECLASSIFY", "REVIEW") and d["child_id"]
    }
    assert set(needs[NEEDS[0]]) <= matched & covered
    assert (
        (out / "report.html").read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype")
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "decisions.json",
        "decisions.xlsx",
        "evidence.csv",
        "names.csv",
        "report.html",
    ]
    # both sides logged every sub-round with the same transcript
    logs = [
        str(federation.root / "logs" / f"{n}.audit.jsonl")
        for n in ["civil-affairs", *(s.name for s in SPECS)]
    ]
    ca = str(federation.root / "pki" / "ca.crt")
    # the nodes are still running: their logs may end in an unsigned tail
    rec = xmatch("audit", "reconcile", "--ca", ca, "--allow-unsigned-tail", *logs)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    # the coordinator's own log is complete: it ends "shutdown, checkpoint"
    ver = xmatch("audit", "verify", "--ca", ca, logs[0])
    assert ver.returncode == 0 and "closed cleanly" in ver.stdout, ver.stdout + ver.stderr


def test_unreachable_node_is_a_failed_source_not_an_exit(
    federation: Federation, tmp_path: Path
) -> None:
    dead_port = free_ports(1)[0]
    config = _coordinator_toml(
        federation,
        "coordinator-dead.toml",
        nodes=[
            {
                "name": "court",
                "address": f"127.0.0.1:{dead_port}",
                "match_sets": ["declarations"],
                "protocol": "keyed-hash",
                "retries": 1,
            }
        ],
    )
    out = tmp_path / "round"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == exit_codes.PARTIAL, done.stderr  # a department down: not 0
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: court/declarations failed: connection refused at 127.0.0.1:{dead_port} "
        "(children without a category get REVIEW, not EXIT)"
    ]
    decisions = json.loads((out / "decisions.json").read_text(encoding="utf-8"))
    assert decisions["failed_sources"] == ["court/declarations"]
    by_decision = {d["decision"] for d in decisions["decisions"]}
    assert "NOT_ELIGIBLE" not in by_decision and "REVIEW" in by_decision
    for entry in decisions["decisions"]:
        if entry["decision"] == "EXIT":  # only the 18th birthday still ends support
            born = dt.date.fromisoformat(
                f"{entry['child_id'][6:10]}-{entry['child_id'][10:12]}-{entry['child_id'][12:14]}"
            )
            assert (AS_OF.year - born.year) - (
                (AS_OF.month, AS_OF.day) < (born.month, born.day)
            ) >= 18
    evaluated = _evaluate(federation, out, ["court/declarations"], tmp_path)
    decisions.pop("round_id")
    evaluated.pop("round_id")
    assert decisions == evaluated
    assert read_evidence_csv(out / "evidence.csv") == expected_evidence(federation.root, SPECS)


def _assert_fatal(
    done: subprocess.CompletedProcess[str], out: Path, words: str, code: int = exit_codes.FAILURE
) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xmatch: error: "), done.stderr
    assert words in lines[0]
    assert "Traceback" not in done.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_roster_missing_required_column(federation: Federation, tmp_path: Path) -> None:
    source = federation.root / "data" / "roster.csv"
    with source.open(encoding="utf-8-sig", newline="") as fh:
        rows = [{k: v for k, v in r.items() if k != "status"} for r in csv.DictReader(fh)]
    broken = federation.root / "data" / "roster-no-status.csv"
    with broken.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = _coordinator_toml(
        federation, "coordinator-nostatus.toml", roster="data/roster-no-status.csv"
    )
    out = tmp_path / "round"
    done = round_run(config, out)
    _assert_fatal(done, out, "status")


def test_unknown_config_key(federation: Federation, tmp_path: Path) -> None:
    config = _coordinator_toml(
        federation, "coordinator-typo.toml", edits=[put("coordinator.purpse", "x")]
    )
    out = tmp_path / "round"
    done = round_run(config, out)
    _assert_fatal(done, out, "unknown key coordinator.purpse", exit_codes.USAGE)


def test_certificate_name_mismatch(federation: Federation, tmp_path: Path) -> None:
    config = _coordinator_toml(
        federation,
        "coordinator-wrongcert.toml",
        edits=[put("coordinator.cert", "pki/ghost.crt"), put("coordinator.key", "pki/ghost.key")],
    )
    out = tmp_path / "round"
    done = round_run(config, out)
    _assert_fatal(done, out, "certificate names 'ghost'", exit_codes.USAGE)


def _locked_copy(pki: Path, locked: Path, name: str, passphrase: bytes) -> None:
    """The coordinator's certificates and keys in ``locked``, each key encrypted."""
    from cryptography.hazmat.primitives import serialization

    locked.mkdir()
    for cert in (f"{name}.crt", f"{name}.audit.crt"):
        (locked / cert).write_bytes((pki / cert).read_bytes())
    for key in (f"{name}.key", f"{name}.audit.key"):
        private = serialization.load_pem_private_key((pki / key).read_bytes(), password=None)
        (locked / key).write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(passphrase),
            )
        )
        (locked / key).chmod(0o600)


def test_encrypted_coordinator_keys_need_passphrase_env(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys issued with a passphrase (``keys issue`` uses the CA's by default) work with
    ``passphrase_env``; without it, or with the variable unset, one line says why."""
    secret = "coordinator-key-passphrase-7"
    _locked_copy(
        federation.root / "pki", federation.root / "pki-locked", COORDINATOR_NAME, secret.encode()
    )
    keys = [
        put("coordinator.cert", f"pki-locked/{COORDINATOR_NAME}.crt"),
        put("coordinator.key", f"pki-locked/{COORDINATOR_NAME}.key"),
    ]
    plain = _coordinator_toml(federation, "coordinator-locked.toml", edits=keys)
    done = round_run(plain, tmp_path / "no-passphrase")
    _assert_fatal(
        done, tmp_path / "no-passphrase", "key", exit_codes.USAGE
    )  # our own key: configuration
    assert "passphrase_env in node.toml / coordinator.toml" in done.stderr

    with_env = _coordinator_toml(
        federation,
        "coordinator-locked-env.toml",
        edits=[*keys, put("coordinator.passphrase_env", "XMATCH_TEST_COORDINATOR_PASS")],
    )
    monkeypatch.delenv("XMATCH_TEST_COORDINATOR_PASS", raising=False)
    done = round_run(with_env, tmp_path / "unset")
    _assert_fatal(
        done,
        tmp_path / "unset",
        "coordinator.passphrase_env: the environment variable it names is not set",
        exit_codes.USAGE,
    )

    monkeypatch.setenv("XMATCH_TEST_COORDINATOR_PASS", secret)
    out = tmp_path / "round"
    done = round_run(with_env, out, as_of=AS_OF)
    assert done.returncode == exit_codes.COMPLETE, done.stderr
    assert (out / "decisions.json").is_file()
    logged = federation.audit_log(COORDINATOR_NAME).read_text(encoding="utf-8")
    assert secret not in done.stdout + done.stderr + logged


def test_existing_output_folder_is_refused(federation: Federation, tmp_path: Path) -> None:
    out = tmp_path / "round"
    out.mkdir()
    (out / "decisions.json").write_text("{}", encoding="utf-8")
    config = _coordinator_toml(federation, "coordinator-again.toml")
    done = round_run(config, out)
    assert done.returncode == 1
    assert "not empty" in done.stderr
    assert (out / "decisions.json").read_text(encoding="utf-8") == "{}"


# ---------------------------------------------------------------------------
# Large sets: 50k roster identities against a 200k-row match set


@pytest.mark.slow
def test_large_sets_stay_within_message_limits(tmp_path: Path) -> None:
    root = tmp_path
    data = root / "data"
    data.mkdir()
    as_of = AS_OF
    roster_ids = [
        synth.make_id(
            "150102", dt.date(2010, 1, 1) + dt.timedelta(days=i % 2900), (i // 2900) * 2 + 1
        )
        for i in range(50_000)
    ]
    set_ids = [
        synth.make_id("150502", dt.date(1960, 1, 1) + dt.timedelta(days=i % 9000), (i // 9000) * 2)
        for i in range(190_000)
    ]
    set_ids += roster_ids[::5]  # 10,000 matches
    with (data / "roster.csv").open("w", encoding="utf-8", newline="") as fh:
        fh.write("child_id,child_name,status,category,father_id,mother_id\n")
        fh.writelines(f"{i},儿童,candidate,,,\n" for i in roster_ids)
    with (data / "big.csv").open("w", encoding="utf-8", newline="") as fh:
        fh.write("id_number\n")
        fh.writelines(f"{i}\n" for i in set_ids)
    big = (synth.MatchSetSpec("deaths", "DEAD", "data/big.csv", "id_number", None, ()),)
    specs = (synth.NodeSpec("bigecdh", "ecdh", big), synth.NodeSpec("bigkh", "keyed-hash", big))
    synth.write_pki(root, [s.name for s in specs])
    ports = dict(zip([s.name for s in specs], free_ports(2), strict=True))
    _write_node_configs(root, specs, ports)
    # The ecdh node treats the set as larger than memory: 200,000 source rows
    # are streamed and split into 4 encrypted bucket files under spill/.
    configs.edit_file(
        root / "bigecdh.node.toml",
        put("node.stream_rows", 100000),
        put("node.bucket_rows", 50000),
        put("node.spill_dir", "spill"),
    )
    config = synth.write_coordinator_config(root, specs, ports=ports, retries=1)
    nodes: list[NodeProcess] = []
    try:
        for spec in specs:
            nodes.append(
                start_node(spec.name, root / f"{spec.name}.node.toml", log_dir=root / "logs")
            )
        out = root / "round"
        done = round_run(config, out, as_of=as_of)
    finally:
        stop_nodes(nodes)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
    rows = read_evidence_csv(out / "evidence.csv")
    counts = {s: sum(1 for r in rows if r[2] == s) for s in ("bigecdh/deaths", "bigkh/deaths")}
    assert counts == {"bigecdh/deaths": 10_000, "bigkh/deaths": 10_000}
    assert {r[0] for r in rows} == set(roster_ids[::5])
    assert (root / "spill").is_dir() and list((root / "spill").iterdir()) == []
    finished = [
        json.loads(line)
        for line in (root / "logs" / "bigecdh.audit.jsonl").read_text().splitlines()
        if '"round_finished"' in line
    ]
    # padded exactly as if held in memory: the 200,000 distinct ids' size class
    assert [(e["set_size"], e["padded_set_size"]) for e in finished] == [
        (200_000, size_class(200_000))
    ]
