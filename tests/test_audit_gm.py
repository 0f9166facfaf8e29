"""The GM profile of protocol logs: SM3 chain, SM2 checkpoints (GB/T 32918 example), the
binding of the SM2 key to the audit certificate, verify and reconcile on mixed federations."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import stat
from pathlib import Path

import pytest

from audit import format as fmt
from audit.gm import BINDING_DOMAIN, GmAuditSigner, gm_signer, load_or_create_sm2_key, sm2_key_id
from audit.log import AuditLog
from audit.reconcile import reconcile
from audit.verify import check_log
from keys.ca import init_ca, issue
from keys.handles import AuditSigner
from psi.errors import InputError
from psi.hazmat import sm2
from psi.sm2_signature import Sm2SigningKey, verify
from tests.federation import xmatch
from tests.test_sm2_signatures import gb_example


def test_gbt_32918_signature_example() -> None:
    """The published example through the key-and-bytes face, on whichever library serves."""
    v = gb_example()
    assert sm2.public_point(v["d"]) == (v["x"], v["y"])
    sig = sm2.sign(v["d"], b"message digest", k=v["k"])
    assert sig.hex() == f"{v['r']:064x}{v['s']:064x}"
    public = b"\x04" + bytes.fromhex(f"{v['x']:064x}{v['y']:064x}")
    assert verify(public, b"message digest", sig)
    assert not verify(public, b"message digesT", sig)
    assert not verify(public, b"message digest", sig, user_id=b"ALICE123@YAHOO.COM")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify(public, b"message digest", flipped)
    assert not verify(public[:64], b"message digest", sig)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    issue(directory, name="justice", role="node")
    issue(directory, name="civil-affairs", role="coordinator")
    return directory


def _gm(pki: Path, name: str) -> GmAuditSigner:
    audit = AuditSigner.for_member(pki, name=name, ca=pki / "ca.crt")
    return gm_signer(audit, pki / f"{name}.audit-sm2.key")


ROUND = {
    "requester": "civil-affairs",
    "responder": "justice",
    "purpose": "eligibility-review",
    "match_set": "custody",
    "protocol": "ecdh",
    "suite": "SM2_XMD:SM3_SSWU_RO_",
}


def _finished(i: int, **extra: object) -> dict[str, object]:
    return {
        **ROUND,
        "round_id": f"{i:032x}",
        "transcript": f"{i:064x}",
        "query_size": 2000,
        "seconds": 0.5,
        "outcome": "ok",
        **extra,
    }


def test_key_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "x.audit-sm2.key"
    first = load_or_create_sm2_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_sm2_key(path).public_bytes == first.public_bytes
    path.write_text("not a key\n")
    with pytest.raises(InputError, match=r"x\.audit-sm2\.key: not an SM2 private key"):
        load_or_create_sm2_key(path)


def test_gm_log_chains_with_sm3_and_verifies(tmp_path: Path, pki: Path) -> None:
    signer = _gm(pki, "justice")
    path = tmp_path / "justice.jsonl"
    with AuditLog.open(path, party="justice", signer=signer, checkpoint_every=3) as log:
        for i in range(7):
            log.append(fmt.ROUND_FINISHED, **_finished(i + 1))
    lines = path.read_bytes().split(b"\n")[:-1]
    first = json.loads(lines[0])
    assert first["prev"] == fmt.GENESIS_GM and fmt.profile_of(lines[0]) == "gm"
    for before, raw in itertools.pairwise(lines):
        assert json.loads(raw)["prev"] == sm3_hex(before)
    checkpoint = json.loads(lines[3])
    assert checkpoint["event"] == "checkpoint" and list(checkpoint)[-1] == "sig"
    assert checkpoint["key_id"] == sm2_key_id(bytes.fromhex(checkpoint["sm2_key"]))
    ca = (pki / "ca.crt").read_bytes()
    result = check_log(path.read_bytes(), name="j", ca_pem=ca)
    assert [f for f in result.findings if f.severity == "error"] == []
    # reopening continues the SM3 chain under the same SM2 key
    with AuditLog.open(path, party="justice", signer=_gm(pki, "justice")) as log:
        log.append(fmt.ROUND_FINISHED, **_finished(9))
    again = check_log(path.read_bytes(), name="j", ca_pem=ca)
    assert [f for f in again.findings if f.severity == "error"] == []


def sm3_hex(data: bytes) -> str:
    return hashlib.new("sm3", data).hexdigest()  # OpenSSL's, not the code under test


def _checkpoint_line(path: Path) -> tuple[list[bytes], int]:
    lines = path.read_bytes().split(b"\n")[:-1]
    return lines, next(i for i, raw in enumerate(lines) if b'"event":"checkpoint"' in raw)


def test_altered_entry_unbound_key_and_forged_sm2_signature_are_found(
    tmp_path: Path, pki: Path
) -> None:
    ca = (pki / "ca.crt").read_bytes()
    path = tmp_path / "j.jsonl"
    with AuditLog.open(
        path, party="justice", signer=_gm(pki, "justice"), checkpoint_every=2
    ) as log:
        for i in range(3):
            log.append(fmt.ROUND_FINISHED, **_finished(i + 1))
    lines, at = _checkpoint_line(path)
    # an altered entry breaks the SM3 chain
    altered = [lines[0].replace(b'"query_size":2000', b'"query_size":2001'), *lines[1:]]
    found = check_log(b"\n".join(altered) + b"\n", name="j", ca_pem=ca).findings
    assert any("entry was altered" in f.message for f in found)
    # another SM2 key, with its own key_id but no binding by the audit key
    other = Sm2SigningKey(bytes.fromhex("11" * 32))
    entry = json.loads(lines[at])
    unsigned_fields = {k: v for k, v in entry.items() if k != "sig"}
    unsigned_fields["sm2_key"] = other.public_bytes.hex()
    unsigned_fields["key_id"] = sm2_key_id(other.public_bytes)
    unsigned = fmt.encode_entry(unsigned_fields)
    sig = base64.b64encode(other.sign(fmt.checkpoint_message(unsigned))).decode()
    forged = [*lines[:at], fmt.attach_signature(unsigned, sig), *lines[at + 1 :]]
    found = check_log(b"\n".join(forged) + b"\n", name="j", ca_pem=ca).findings
    assert any("SM2 key is not bound to the audit certificate" in f.message for f in found)
    # the right key and binding, a signature over something else
    bad_sig = base64.b64encode(bytes(64)).decode()
    unsigned2, _ = fmt.split_signature(lines[at]) or (b"", "")
    wrong = [*lines[:at], fmt.attach_signature(unsigned2, bad_sig), *lines[at + 1 :]]
    found = check_log(b"\n".join(wrong) + b"\n", name="j", ca_pem=ca).findings
    assert any("SM2 signature does not verify" in f.message for f in found)
    assert BINDING_DOMAIN.endswith(b"\n")


def test_mixed_federation_verify_reconcile_report(tmp_path: Path, pki: Path) -> None:
    """A GM node log and an international coordinator log reconcile; the CLI reads both."""
    ca = pki / "ca.crt"
    node_path, coord_path = tmp_path / "justice.jsonl", tmp_path / "civil-affairs.jsonl"
    coordinator = AuditSigner.for_member(pki, name="civil-affairs", ca=ca)
    with (
        AuditLog.open(node_path, party="justice", signer=_gm(pki, "justice")) as node,
        AuditLog.open(coord_path, party="civil-affairs", signer=coordinator) as coord,
    ):
        for i in range(3):
            started = {k: v for k, v in _finished(i + 1).items() if k in fmt.ROUND_FIELDS}
            coord.append(fmt.ROUND_STARTED, **started, query_size=2000)
            node.append(fmt.ROUND_STARTED, **started, query_size=2000)
            seq, head = node.append_anchored(fmt.ROUND_FINISHED, **_finished(i + 1))
            coord.append(
                fmt.ROUND_FINISHED, **_finished(i + 1), node_log_seq=seq, node_log_head=head
            )
    logs = {
        "civil-affairs.jsonl": coord_path.read_bytes(),
        "justice.jsonl": node_path.read_bytes(),
    }
    assert fmt.profile_of(logs["justice.jsonl"].split(b"\n")[0]) == "gm"
    assert fmt.profile_of(logs["civil-affairs.jsonl"].split(b"\n")[0]) == "international"
    checked = {
        name: check_log(data, name=name, ca_pem=ca.read_bytes()) for name, data in logs.items()
    }
    for one in checked.values():
        assert [f for f in one.findings if f.severity == "error"] == [], one.findings
    result = reconcile(checked["civil-affairs.jsonl"], [checked["justice.jsonl"]])
    assert result.ok and result.compared == 3, result.findings
    for command in (
        ("audit", "verify", "--ca", str(ca), str(node_path), str(coord_path)),
        ("audit", "reconcile", "--ca", str(ca), str(coord_path), str(node_path)),
    ):
        done = xmatch(*command)
        assert done.returncode == 0, done.stdout + done.stderr
    report = xmatch("audit", "report", "--ca", str(ca), str(coord_path), str(node_path))
    assert report.returncode in (0, 1), report.stdout + report.stderr  # 1: probing flagged
