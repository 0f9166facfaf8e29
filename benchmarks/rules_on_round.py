"""Time the coordinator's steps after the PSI on a real round's files, in-process.

    .venv/bin/python benchmarks/rules_on_round.py [--roster data/roster.csv]
        [--evidence rounds/r1/evidence.csv] [--as-of 2026-11-29] [--xlsx FILE] [--profile]

Defaults are those of ``benchmarks/bench_round.py --data /tmp/bench-round``:
its roster (100k children) and the evidence.csv of one of its rounds. Prints
the seconds of each step: reading the roster and the evidence, deciding every
child (``decide_all``), rendering the reasons, building and encoding
decisions.json (as dicts, then as the round writes it: entries encoded
directly), rendering report.html, writing decisions.xlsx. ``--profile`` runs the same under cProfile
and prints the 35 functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import pstats
import time
from pathlib import Path

from coordinator.decisions import decide_all, decisions_text
from coordinator.evaluate import offline_provenance
from coordinator.records import gc_paused, read_evidence, read_roster
from coordinator.report import render_report
from coordinator.spreadsheet import write_decisions_xlsx

ROOT = Path("/tmp/bench-round")


def steps(roster: Path, evidence: Path, as_of: dt.date, out: Path) -> None:
    """Run and time each step once."""
    started = time.perf_counter()

    def mark(name: str, extra: str = "") -> None:
        nonlocal started
        now = time.perf_counter()
        print(f"{name:16s} {now - started:6.2f} s {extra}")
        started = now

    children = read_roster(roster, encoding="auto", as_of=as_of)
    mark("read roster", f"({len(children.rows):,} children)")
    rows = read_evidence(evidence, encoding="auto")
    mark("read evidence", f"({len(rows):,} rows)")
    decisions = decide_all(children, rows, as_of=as_of)
    mark("decide_all")
    decisions.render_texts()
    mark("render texts")
    document = decisions.to_json()
    mark("to_json")
    text = decisions_text(document)
    mark("decisions text", f"({len(text):,} characters)")
    encoded = decisions_text(decisions.to_json(encoded=True))
    same = "same text" if encoded == text else "DIFFERENT TEXT"
    mark("decisions.json", f"(encoded entries, as a round writes it; {same})")
    provenance = offline_provenance(rows, as_of=as_of, failed_sources=[])
    page = render_report(decisions, provenance=provenance)
    mark("report.html", f"({len(page):,} characters)")
    write_decisions_xlsx(out, decisions, provenance)
    mark("decisions.xlsx", f"({out.stat().st_size:,} bytes)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--roster", type=Path, default=ROOT / "data" / "roster.csv")
    parser.add_argument("--evidence", type=Path, default=ROOT / "rounds" / "r1" / "evidence.csv")
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date(2026, 11, 29))
    parser.add_argument("--xlsx", type=Path, default=ROOT / "rules_on_round.xlsx")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with gc_paused():  # as the round runs them
        if not args.profile:
            steps(args.roster, args.evidence, args.as_of, args.xlsx)
            return 0
        profile = cProfile.Profile()
        profile.runcall(steps, args.roster, args.evidence, args.as_of, args.xlsx)
        pstats.Stats(profile).sort_stats("tottime").print_stats(35)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
