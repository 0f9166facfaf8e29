"""``xmatch demo`` as a user runs it: a whole federation on loopback, one round."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_a_round_and_prints_the_summary(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "xmatch", "demo", "--children", "300", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONUTF8": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # the roster's deliberate mistakes are warnings, announced as deliberate, each once
    problems = [ln for ln in done.stderr.splitlines() if "roster.csv:" in ln]
    assert problems and all(ln.startswith("warning: ") for ln in problems), done.stderr
    assert "note: the synthetic roster has deliberate mistakes" in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == len(set(lines)), done.stderr
    for node in ("police", "justice", "court", "disabled-persons-federation", "medical-insurance"):
        assert re.search(rf"node {node}: serving \d+ match sets? on 127\.0\.0\.1:\d+", out), out
    assert "failed sources: none" in out
    counts = dict(
        re.findall(
            r"^  (ENROL|CONTINUE|RECLASSIFY|EXIT|REVIEW|NOT_ELIGIBLE)\s+(\d+)$", out, flags=re.M
        )
    )
    assert sum(int(v) for v in counts.values()) == 300
    assert all(int(v) > 0 for v in counts.values()) and len(counts) == 6, counts
    report = workdir / "round-1" / "report.html"
    assert f"report: {report}" in out and report.is_file()
    decisions = json.loads((workdir / "round-1" / "decisions.json").read_text(encoding="utf-8"))
    assert len(decisions["decisions"]) == 300 and decisions["failed_sources"] == []
    assert decisions["coverage_gaps"]["medical-insurance/enrolled"]
    # the federation's rehab_needs set is configured service_report = "needs"
    needs = decisions["service_needs"]["disabled-persons-federation/rehab_needs"]
    assert needs and "disabled-persons-federation/rehab_needs" not in decisions["coverage_gaps"]
    assert (
        f"service needs (disabled-persons-federation/rehab_needs): {len(needs)} "
        "supported children matched" in out
    ), out
    # the two protocols were both used, and the department files were not the roster
    assert re.search(r"justice\s+ecdh", out) and re.search(r"police\s+keyed-hash", out)
    # a second run into the same workdir replaces the earlier demo (200 children: 30 are
    # under the nodes' min_query_size, a partial round that exits 3)
    again = subprocess.run(
        [sys.executable, "-m", "xmatch", "demo", "--children", "200", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONUTF8": "1"},
    )
    assert again.returncode == 0, again.stderr


def test_demo_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "xmatch", "demo", "--children", "200", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "not made by xmatch demo" in done.stderr
    assert (tmp_path / "precious.txt").read_text(encoding="utf-8") == "keep me"
