"""A real round, node processes on loopback, in which every node accepts only the GM suites.

The coordinator proposes SM2_XMD:SM3_SSWU_RO_ (ecdh) and sm4-ecb-v1 (keyed-hash) per node;
the evidence equals the plaintext join; both sides' logs name the suite or PRF of every
sub-round; a coordinator proposing the international ones is refused by every node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.format import GENESIS_GM
from tests import configs
from tests.configs import put
from tests.federation import (
    AS_OF,
    Federation,
    audit_entries,
    build_federation,
    coordinator_toml,
    expected_evidence,
    read_evidence_csv,
    round_run,
    start_nodes,
    stop_nodes,
    xmatch,
)

pytestmark = pytest.mark.integration

GM_SUITE, GM_PRF = "SM2_XMD:SM3_SSWU_RO_", "sm4-ecb-v1"


@pytest.fixture(scope="module")
def gm_federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    fed = build_federation(tmp_path_factory.mktemp("gm-federation"), children=60)
    for spec in fed.specs:
        path = fed.config(spec.name)
        doc = configs.read(path)
        edits = []
        for i in range(len(doc["match_sets"])):
            edits += [
                put(f"match_sets[{i}].suites", [GM_SUITE]),
                put(f"match_sets[{i}].prfs", [GM_PRF]),
            ]
        if spec is fed.specs[0]:  # a mixed federation: one node keeps a GM-profile log
            edits.append(put("node.audit_profile", "gm"))
        configs.write(path, configs.apply(doc, *edits))
    try:
        start_nodes(fed)
        yield fed
    finally:
        stop_nodes(fed.nodes)


def _gm_keys(fed: Federation) -> dict[str, dict[str, object]]:
    return {s.name: {"suite": GM_SUITE, "prf": GM_PRF} for s in fed.specs}


def test_gm_only_nodes_serve_a_gm_round(gm_federation: Federation, tmp_path: Path) -> None:
    fed = gm_federation
    config = coordinator_toml(fed, "coordinator-gm.toml", node_keys=_gm_keys(fed))
    out = tmp_path / "round"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == 0, done.stderr
    assert "warning: " not in done.stderr.replace("warning: roster", "")
    assert read_evidence_csv(out / "evidence.csv") == expected_evidence(fed.root, fed.specs)
    protocols = {s.protocol for s in fed.specs}
    assert protocols == {"ecdh", "keyed-hash"}

    def named(entry: dict[str, object]) -> object:
        return entry.get("suite") if entry["protocol"] == "ecdh" else entry.get("prf")

    mine = [
        e for e in audit_entries(fed.audit_log("civil-affairs")) if e["event"] == "round_finished"
    ]
    assert mine and {named(e) for e in mine} == {GM_SUITE, GM_PRF}
    for spec in fed.specs:
        theirs = [
            e for e in audit_entries(fed.audit_log(spec.name)) if e["event"] == "round_finished"
        ]
        assert theirs and all(named(e) in (GM_SUITE, GM_PRF) for e in theirs)
    first = fed.audit_log(fed.specs[0].name).read_bytes().split(b"\n")[0]
    assert b'"prev":"' + GENESIS_GM.encode() in first  # that node's log chains with SM3
    # the reviewer's tools verify and reconcile both profiles, sub-round by sub-round
    logs = [str(fed.audit_log("civil-affairs"))] + [str(fed.audit_log(s.name)) for s in fed.specs]
    ca = str(fed.root / "pki" / "ca.crt")
    reconciled = xmatch("audit", "reconcile", "--ca", ca, "--allow-unsigned-tail", *logs)
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    verified = xmatch("audit", "verify", "--ca", ca, "--allow-unsigned-tail", *logs)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_gm_only_nodes_refuse_international_suites(
    gm_federation: Federation, tmp_path: Path
) -> None:
    fed = gm_federation
    config = coordinator_toml(fed, "coordinator-intl.toml")
    out = tmp_path / "round"
    done = round_run(config, out, as_of=AS_OF)
    refusals = [
        line for line in done.stderr.splitlines() if "not allowed for this match set" in line
    ]
    assert refusals, done.stderr
    assert all("suite" in line or "prf" in line for line in refusals)
    refused = [
        e
        for s in fed.specs
        for e in audit_entries(fed.audit_log(s.name))
        if e["event"] == "round_refused" and "not allowed" in str(e["reason"])
    ]
    assert refused and {e.get("suite") or e.get("prf") for e in refused} <= {
        "x25519-sha256-u",
        "aes128-ecb-v1",
    }
