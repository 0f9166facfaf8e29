"""Regression tests for the findings of the review of issues 12 and 17 (notes/review-findings.md).

Each test is named after its finding and fails with the fix removed.
"""

from __future__ import annotations

import stat
from pathlib import Path

from coordinator.round import _write_output


def test_report_and_decisions_json_are_mode_0600(tmp_path: Path) -> None:
    """Finding: a round wrote report.html and decisions.json with mode 0644 (umask), though
    both list children by identity number; evidence.csv, names.csv and the xlsx were 0600."""
    out = tmp_path / "round-1"
    _write_output(
        out,
        round_id="0" * 32,
        evidence=[],
        document={"round_id": "0" * 32, "decisions": [{"child_id": "x"}]},
        report="<html></html>",
    )
    for name in ("decisions.json", "report.html", "evidence.csv"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    assert (out / "report.html").read_text(encoding="utf-8") == "<html></html>"
    assert '"decisions": [\n  {"child_id": "x"}\n ]' in (out / "decisions.json").read_text()
