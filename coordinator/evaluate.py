"""``xmatch rules evaluate``: eligibility.md applied to evidence already gathered.

Reads the roster and the evidence (all checks happen before anything is
written), lists each invalid identity number on stderr as
``FILE:LINE: column COLUMN: problem`` (never the value), decides, and writes
decisions.json atomically, plus report.html when asked.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TextIO

from coordinator.decisions import decide_all, decisions_text
from coordinator.names import SourceNames, read_names
from coordinator.reasons import Lang
from coordinator.records import (
    Circumstance,
    Encoding,
    EvidenceRow,
    gc_paused,
    read_evidence,
    read_roster,
    write_atomically,
)
from coordinator.report import Provenance, SourceRun, render_report
from coordinator.spreadsheet import write_decisions_xlsx
from psi.errors import InputError


def _check_source(value: str, flag: str) -> str:
    node, slash, dataset = value.strip().partition("/")
    if not (slash and node and dataset and "/" not in dataset):
        raise InputError(f"{flag}: expected NODE/SET, for example justice/custody")
    return value.strip()


def offline_provenance(
    evidence: Sequence[EvidenceRow],
    *,
    as_of: date,
    failed_sources: Sequence[str],
    service_sources: Sequence[str] = (),
    service_need_sources: Sequence[str] = (),
    seconds: float = 0.0,
    display: SourceNames | None = None,
) -> Provenance:
    """The provenance of an offline evaluation: each source's matches in the evidence file."""
    matches = Counter(row.source for row in evidence)
    services = {row.source for row in evidence if row.circumstance is Circumstance.SERVICE}
    names = sorted(
        set(matches) | set(failed_sources) | set(service_sources) | set(service_need_sources)
    )
    runs = []
    for name in names:
        node, _, match_set = name.partition("/")
        failed = name in failed_sources
        if name in service_need_sources:
            kind = "service needs"
        elif name in services or name in service_sources:
            kind = "service coverage"
        else:
            kind = "evidence"
        runs.append(
            SourceRun(
                node=node,
                match_set=match_set,
                protocol="offline",
                status="failed" if failed else "ok",
                matches=matches.get(name, 0),
                seconds=0.0,
                detail=f"{kind}; from the evidence file"
                + ("; named by --failed-source" if failed else ""),
            )
        )
    return Provenance(
        round_id=None,
        as_of=as_of,
        generated_at=datetime.now(UTC),
        sources=tuple(runs),
        failed_sources=tuple(sorted(set(failed_sources))),
        timings=(("evaluate", seconds),),
        names=display if display is not None else SourceNames(),
    )


def _same_spelling(
    evidence: Path,
    present: set[str],
    *,
    failed: Sequence[str],
    services: Sequence[str],
    needs: Sequence[str],
) -> None:
    """Refuse a set named on the command line in another case than in the evidence file.

    Set names are compared exactly, so ``--service-source police/Insurance`` beside
    evidence of ``police/insurance`` would make a second, empty coverage list (every
    covered child a gap) beside the real one.

    Raises:
        InputError: an option names a set that the evidence spells otherwise.
    """
    folded = {name.casefold(): name for name in present}
    for option, names in (
        ("--failed-source", failed),
        ("--service-source", services),
        ("--service-need", needs),
    ):
        for name in names:
            spelled = folded.get(name.casefold())
            if name not in present and spelled is not None:
                raise InputError(
                    f"{option} {name}: {evidence.name} spells this set {spelled} "
                    "(set names are compared exactly, case included)"
                )


@gc_paused()
def evaluate_command(
    *,
    roster: Path,
    evidence: Path,
    as_of: date,
    failed_sources: Sequence[str],
    out: Path,
    lang: Lang = "zh",
    encoding: Encoding = "auto",
    report: Path | None = None,
    service_sources: Sequence[str] = (),
    service_need_sources: Sequence[str] = (),
    stderr: TextIO | None = None,
    stdout: TextIO | None = None,
    xlsx: Path | None = None,
    names: Path | None = None,
) -> int:
    """Run ``xmatch rules evaluate``; returns the exit code (0) after one summary line.

    ``service_sources`` (``--service-source``) are service-coverage sets: the
    covered children they did not match are coverage gaps.
    ``service_need_sources`` (``--service-need``) are service-needs sets: the
    covered children they matched are service needs.
    ``xlsx`` (``--xlsx``): also write decisions.xlsx there. ``names``
    (``--names``): a names.csv of display names for the Chinese reasons, the
    report and the spreadsheet (a round writes one into its output folder).

    Raises:
        InputError: an output path that is a folder, a bad roster, evidence or
            names file, a malformed
            ``--failed-source``/``--service-source``/``--service-need``, or a
            set named by both ``--service-source`` and ``--service-need``;
            nothing is written then.
        OSError: the output cannot be written.
    """
    started = time.perf_counter()
    err = stderr if stderr is not None else sys.stderr
    for option, path in (("--out", out), ("--report", report), ("--xlsx", xlsx)):
        if path is not None and path.is_dir():  # before any work, and before any file
            raise InputError(f"{option} {path}: is a folder; give the file to write")
    failed = [_check_source(s, "--failed-source") for s in failed_sources]
    services = [_check_source(s, "--service-source") for s in service_sources]
    needs = [_check_source(s, "--service-need") for s in service_need_sources]
    both = sorted(set(services) & set(needs))
    if both:
        raise InputError(
            f"--service-source and --service-need both name {', '.join(both)}: "
            "a set reports either gaps or needs"
        )
    shown = read_names(names) if names is not None else SourceNames()
    table = read_roster(roster, encoding=encoding, as_of=as_of)
    gathered = read_evidence(evidence, encoding=encoding)
    _same_spelling(
        evidence, {row.source for row in gathered}, failed=failed, services=services, needs=needs
    )
    for problem in table.problems:
        print(problem, file=err)
    decisions = decide_all(
        table,
        gathered,
        as_of=as_of,
        failed_sources=failed,
        service_sources=services,
        service_need_sources=needs,
        lang=lang,
        source_names=shown.labels({row.source for row in gathered} | {*failed, *services, *needs}),
    )
    text = decisions_text(decisions.to_json(round_id=None, encoded=True))
    write_atomically(out, lambda f: f.write(text))
    if report is not None or xlsx is not None:
        provenance = offline_provenance(
            gathered,
            as_of=as_of,
            failed_sources=failed,
            service_sources=services,
            service_need_sources=needs,
            seconds=time.perf_counter() - started,
            display=shown,
        )
        if report is not None:
            page = render_report(decisions, provenance=provenance)
            write_atomically(report, lambda f: f.write(page))
        if xlsx is not None:
            write_decisions_xlsx(xlsx, decisions, provenance)
    # one line on success, as round run prints its summary
    counts = ", ".join(f"{d.value} {n}" for d, n in sorted(decisions.counts().items()))
    written = ", ".join(str(p) for p in (out, report, xlsx) if p is not None)
    print(
        f"rules evaluate as of {as_of}: {len(decisions.decisions)} children, "
        f"{len(gathered)} evidence rows: {counts or 'no decisions'}; written {written}",
        file=stdout if stdout is not None else sys.stdout,
    )
    return 0
