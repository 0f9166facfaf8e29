"""The coordinator state's decision counts per round (the report's history chart)."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

from coordinator.state import RoundState


def test_decision_history(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    with RoundState.open(db) as state:
        for k, status in enumerate(("completed", "failed", "completed", "running")):
            rid = f"{k:032x}"
            state.start_round(rid, as_of=date(2026, 1 + k, 1), out_dir=tmp_path, sub_rounds=[])
            state.record_decisions(rid, {"ENROL": k + 1, "EXIT": 10 * k})
            if status != "running":
                state.finish_round(rid, status="completed" if status == "completed" else "failed")
        state.record_decisions(f"{3:032x}", {"ENROL": 7, "EXIT": 30})  # recorded again: replaced
        history = state.decision_history(current=f"{3:032x}")
        # completed rounds and the current one, oldest first; the failed round is left out
        assert [(h.as_of, h.counts) for h in history] == [
            ("2026-01-01", {"ENROL": 1, "EXIT": 0}),
            ("2026-03-01", {"ENROL": 3, "EXIT": 20}),
            ("2026-04-01", {"ENROL": 7, "EXIT": 30}),
        ]
        assert [h.as_of for h in state.decision_history()] == ["2026-01-01", "2026-03-01"]
        assert [h.as_of for h in state.decision_history(limit=1)] == ["2026-03-01"]
    # a state file from before the table gets it when opened
    old = tmp_path / "old.sqlite"
    with RoundState.open(old):
        pass
    conn = sqlite3.connect(old)
    conn.execute("DROP TABLE round_decisions")
    conn.commit()
    conn.close()
    with RoundState.open(old) as state:
        assert state.decision_history() == []
