"""Smoke test of ``xmatch bench``: real node process, both protocols, openmined-psi.

Checks the shape and sanity of ``bench.json`` and that the plot exists;
performance numbers themselves are never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from psi.identifiers import normalize_id_column
from xmatch.bench import ids_at, make_ids


def test_generated_ids_are_valid_and_distinct() -> None:
    ids = make_ids(0, 5000).astype("U18")
    column = normalize_id_column(ids)
    assert column.valid.all()
    assert len(np.unique(ids)) == 5000
    assert ids_at(np.array([7, 3], dtype=np.int64)).tolist() == [
        make_ids(7, 8)[0],
        make_ids(3, 4)[0],
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("node_options", [[], ["--stream-rows", "500", "--bucket-rows", "300"]])
def test_bench_smoke(tmp_path: Path, node_options: list[str]) -> None:
    """In memory, and streamed (keyed-hash) / split into 4 bucket files (ecdh)."""
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xmatch",
            "bench",
            "--sizes",
            "1000",
            "--protocol",
            "keyed-hash",
            "ecdh",
            *node_options,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    if node_options:
        assert (doc["node_stream_rows"], doc["node_bucket_rows"]) == (500, 300)
    # the node's own log says how it held the ecdh set: 4 bucket files, or in memory
    log = [json.loads(line) for line in (out / "logs" / "bench-node.audit.jsonl").open()]
    finished = [e for e in log if e["event"] == "round_finished" and e["protocol"] == "ecdh"]
    assert [e.get("buckets") for e in finished] == [4 if node_options else None]
    assert doc["machine"]["cores"] >= 1
    assert doc["machine"]["x25519_ops_per_s_per_core"] > 0
    by_protocol = {r["protocol"]: r for r in doc["results"]}
    assert set(by_protocol) == {"keyed-hash", "ecdh", "openmined-psi"}
    for name in ("keyed-hash", "ecdh"):
        r = by_protocol[name]
        assert r["size"] == 1000 and r["roster"] == 1000
        assert r["matches"] == r["expected_matches"] == 500
        assert r["seconds"] > 0 and r["records_per_s"] > 0
        assert r["wire_bytes_sent"] > 1000 * 16 and r["wire_bytes_received"] > 0
        assert r["peak_rss_node"] > 0 and r["peak_rss_node_total"] >= r["peak_rss_node"]
        assert r["peak_rss_coordinator"] > 0
        assert r["vs_openmined"] > 0
        assert r["note"] == ""
    ecdh = by_protocol["ecdh"]
    assert ecdh["padded_set_size"] == 1024
    assert ecdh["ec_ops"] == 2 * 1000 + 2 * 1024
    assert ecdh["ec_ops_per_s_per_core"] > 0 and ecdh["x25519_limit_seconds"] > 0
    base = by_protocol["openmined-psi"]
    assert base["matches"] == 500 and base["seconds"] > 0
    png = (out / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG")


REPO = Path(__file__).resolve().parents[1]


def _bench(tmp_path: Path, *options: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xmatch", "bench", "--sizes", "1000", *options],
        capture_output=True,
        text=True,
        timeout=170,
        env={**os.environ, **env},
        cwd=tmp_path,
    )


@pytest.mark.timeout(180)
def test_secretflow_baseline_without_peers_venv_is_skipped_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-venv"
    out = tmp_path / "bench"
    proc = _bench(
        tmp_path,
        *("--protocol", "keyed-hash", "--baseline", "secretflow", "--out", str(out)),
        env={"XMATCH_PEERS_VENV": str(missing)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("secretflow")]
    assert skipped == [
        f"secretflow baseline skipped: no peers virtualenv at {missing} (make bench-peers)"
    ]
    doc = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert {r["protocol"] for r in doc["results"]} == {"keyed-hash", "openmined-psi"}
    assert doc["baselines"] == ["openmined", "secretflow"]


@pytest.mark.timeout(180)
def test_secretflow_baseline_runs_spu_beside_openmined(tmp_path: Path) -> None:
    peers = REPO / ".venv-peers"
    if not (peers / "bin" / "python").exists():
        pytest.skip("no peers virtualenv (make bench-peers)")
    out = tmp_path / "bench"
    proc = _bench(
        tmp_path,
        *("--protocol", "keyed-hash", "ecdh", "--baseline", "secretflow", "--out", str(out)),
        env={"XMATCH_PEERS_VENV": str(peers)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    by_protocol = {r["protocol"]: r for r in doc["results"]}
    assert set(by_protocol) == {
        "keyed-hash",
        "ecdh",
        "openmined-psi",
        "secretflow-ecdh",
        "secretflow-rr22",
    }
    for name in ("secretflow-ecdh", "secretflow-rr22"):
        assert by_protocol[name]["matches"] == 500 and by_protocol[name]["seconds"] > 0
    for name in ("keyed-hash", "ecdh"):
        r = by_protocol[name]
        assert r["vs_openmined"] > 0 and r["vs_secretflow_ecdh"] > 0 and r["vs_secretflow_rr22"] > 0
    assert doc["machine"]["x25519_backend"] in ("crypto-mb", "openssl")
