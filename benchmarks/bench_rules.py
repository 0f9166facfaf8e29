"""Benchmark: ``xmatch rules evaluate`` end to end on 100k children and 300k evidence rows.

    .venv/bin/python benchmarks/bench_rules.py [--children 100000] [--evidence 300000] [--report]
        [--xlsx] [--phases]

Generates a synthetic roster and evidence (seeded), then times the command as
a subprocess: reading both files (ID normalization included), deciding, and
writing decisions.json (and report.html with ``--report``, decisions.xlsx with
``--xlsx``, both with display names from a names.csv). Prints the wall
time and the decision counts. ``--phases`` also times each phase in-process
on the same files, as docs/performance.md ("Rules evaluation") lists them.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

from psi.contract import CIRCUMSTANCE_CODES
from psi.identifiers import identity_number

REGIONS = ["150102", "150203", "150402", "150502", "150602", "150702", "152201", "152502"]
CODES = list(CIRCUMSTANCE_CODES)
SOURCE = {
    "DEAD": "police/deaths",
    "MISSING": "court/declarations",
    "SEVERE_DISABILITY": "dpf/certificates",
    "SEVERE_ILLNESS": "health/illness",
    "IMPRISONED": "justice/custody",
    "DRUG_REHAB": "police/rehab",
    "OTHER_RESTRICTION": "police/custody",
    "LOST_CONTACT": "police/lost_contact",
    "GUARDIANSHIP_REVOKED": "court/guardianship",
    "DEPORTED": "police/deportations",
}


#: display names of the sources above (names.csv, as a round writes it)
NAMES = """source,display_name
police,公安局
police/deaths,死亡注销人员
police/rehab,强制隔离戒毒人员
police/custody,刑事拘留人员
police/lost_contact,失联人员报案
police/deportations,遣送出境人员
court,人民法院
court/declarations,宣告失踪
court/guardianship,撤销监护资格
dpf,残疾人联合会
dpf/certificates,残疾人证
health,卫生健康委员会
health/illness,重病患者
justice,司法局
justice/custody,服刑在押人员
medical_insurance,医疗保障局
medical_insurance/enrolled,基本医疗保险参保人员
"""


def _id(rng: random.Random, born: date) -> str:
    return identity_number(rng.choice(REGIONS), born, rng.randrange(1000))


def _day(rng: random.Random, start: date, end: date) -> date:
    return start + timedelta(days=rng.randrange((end - start).days))


def generate(folder: Path, *, children: int, evidence: int, seed: int = 2023) -> tuple[Path, Path]:
    """Write roster.csv and evidence.csv into ``folder``; returns their paths."""
    rng = random.Random(seed)
    roster_path, evidence_path = folder / "roster.csv", folder / "evidence.csv"
    parents: list[str] = []
    children_ids: list[str] = []
    with roster_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "child_id",
                "child_name",
                "child_birth_date",
                "child_sex",
                "father_id",
                "mother_id",
                "status",
                "category",
                "foundling",
                "region_code",
                "last_check_date",
            ]
        )
        for i in range(children):
            child = _id(rng, _day(rng, date(2007, 1, 1), date(2026, 10, 1)))
            father = _id(rng, _day(rng, date(1965, 1, 1), date(1995, 1, 1)))
            mother = _id(rng, _day(rng, date(1965, 1, 1), date(1995, 1, 1)))
            parents += [father, mother]
            children_ids.append(child)
            supported = rng.random() < 0.7
            w.writerow(
                [
                    child,
                    f"儿童{i}",
                    "",
                    "",
                    father,
                    mother,
                    "supported" if supported else "candidate",
                    rng.choice(["orphan", "de_facto"]) if supported else "",
                    "",
                    child[:6],
                    _day(rng, date(2025, 1, 1), date(2026, 11, 1)).isoformat() if supported else "",
                ]
            )
    with evidence_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "person_id",
                "circumstance",
                "source",
                "start_date",
                "end_date",
                "disability_category",
                "disability_grade",
            ]
        )
        for _ in range(evidence):
            if rng.random() < 0.1:
                w.writerow(
                    [
                        rng.choice(children_ids),
                        "SERVICE",
                        "medical_insurance/enrolled",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
                continue
            code = rng.choice(CODES)
            start = _day(rng, date(2010, 1, 1), date(2026, 11, 1))
            end = (
                ""
                if rng.random() < 0.5
                else (start + timedelta(days=rng.randrange(60, 3000))).isoformat()
            )
            disabled = code == "SEVERE_DISABILITY"
            w.writerow(
                [
                    rng.choice(parents),
                    code,
                    SOURCE[code],
                    start.isoformat(),
                    end,
                    rng.randrange(1, 8) if disabled else "",
                    rng.randrange(1, 5) if disabled else "",
                ]
            )
    return roster_path, evidence_path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--children", type=int, default=100_000)
    parser.add_argument("--evidence", type=int, default=300_000)
    parser.add_argument("--report", action="store_true", help="also render report.html")
    parser.add_argument("--xlsx", action="store_true", help="also write decisions.xlsx")
    parser.add_argument("--phases", action="store_true", help="also time each phase in-process")
    args = parser.parse_args()
    xmatch = Path(sys.executable).parent / "xmatch"
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
        folder = Path(tmp)
        roster, evidence = generate(folder, children=args.children, evidence=args.evidence)
        out = folder / "decisions.json"
        command = [
            str(xmatch),
            "rules",
            "evaluate",
            "--roster",
            str(roster),
            "--evidence",
            str(evidence),
            "--as-of",
            "2026-11-29",
            "--out",
            str(out),
            "--service-source",
            "medical_insurance/enrolled",
        ]
        names = folder / "names.csv"
        names.write_text(NAMES, encoding="utf-8")
        if args.report or args.xlsx:
            command += ["--names", str(names)]
        if args.report:
            command += ["--report", str(folder / "report.html")]
        if args.xlsx:
            command += ["--xlsx", str(folder / "decisions.xlsx")]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        document = json.loads(out.read_text(encoding="utf-8"))
        counts = Counter(d["decision"] for d in document["decisions"])
        print(
            f"rules evaluate: {args.children:,} children, {args.evidence:,} evidence rows: "
            f"{seconds:.2f} s wall, {cpu:.2f} s CPU"
        )
        print("decisions:", dict(sorted(counts.items())))
        for name in ("report.html", "decisions.xlsx"):
            if (folder / name).exists():
                print(f"{name}: {(folder / name).stat().st_size:,} bytes")
        if args.phases:
            phases(roster, evidence, report=args.report, xlsx=args.xlsx, names=names)
    return 0


def phases(
    roster_path: Path, evidence_path: Path, *, report: bool, xlsx: bool, names: Path
) -> None:
    """Time read roster, read evidence, decide, decisions.json (report, xlsx) in-process."""
    from coordinator.decisions import decide_all, decisions_text
    from coordinator.evaluate import offline_provenance
    from coordinator.names import read_names
    from coordinator.records import gc_paused, read_evidence, read_roster
    from coordinator.report import render_report
    from coordinator.spreadsheet import write_decisions_xlsx

    shown = read_names(names)

    as_of, services = date(2026, 11, 29), ["medical_insurance/enrolled"]
    times: list[tuple[str, float]] = []
    with gc_paused():  # as evaluate_command runs
        started = time.perf_counter()
        roster = read_roster(roster_path, as_of=as_of)
        times.append(("read roster.csv", time.perf_counter() - started))
        started = time.perf_counter()
        evidence = read_evidence(evidence_path)
        times.append(("read evidence.csv", time.perf_counter() - started))
        started = time.perf_counter()
        decisions = decide_all(
            roster,
            evidence,
            as_of=as_of,
            service_sources=services,
            source_names=shown.labels({*SOURCE.values(), *services}),
        )
        times.append(("decide", time.perf_counter() - started))
        started = time.perf_counter()
        decisions_text(decisions.to_json(round_id=None, encoded=True))
        times.append(("render reasons + decisions.json text", time.perf_counter() - started))
        provenance = offline_provenance(
            evidence, as_of=as_of, failed_sources=[], service_sources=services, display=shown
        )
        if report:
            started = time.perf_counter()
            render_report(decisions, provenance=provenance)
            times.append(("render report.html", time.perf_counter() - started))
        if xlsx:
            with tempfile.TemporaryDirectory(prefix="bench-xlsx-") as tmp:
                started = time.perf_counter()
                write_decisions_xlsx(Path(tmp) / "decisions.xlsx", decisions, provenance)
                times.append(("write decisions.xlsx", time.perf_counter() - started))
    for name, seconds in times:
        print(f"  {name:40s} {seconds:6.2f} s")


if __name__ == "__main__":
    sys.exit(main())
