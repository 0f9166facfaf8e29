"""The ``xmatch audit`` commands: read files, call the pure checks, print, exit.

Exit codes:

- ``verify``: 0 every log intact (warnings and notes allowed), 1 tampering,
  damage or an unsigned tail found (``allow_unsigned_tail`` makes the tail a
  warning, for a log that is still being written).
- ``reconcile``: 0 no findings, 1 findings, 2 a log failed verification.
- ``report``: 0 nothing flagged, 1 probing patterns flagged, 2 a log failed
  verification.

Without a CA nothing ties the signing keys to the federation: a log forged and
re-signed wholesale with a self-made certificate in the party's name verifies.
Every ``OK`` line then says so (:data:`OK_NO_CA`); the CLI requires ``--ca`` or an
explicit ``--no-ca``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from audit.reconcile import reconcile
from audit.report import AuditReport, build_report
from audit.verify import LogVerification, check_log
from psi.errors import InputError

_MAX_LINES = 20
OK_NO_CA = "OK (no CA: signatures not checked against the federation CA):"
"""What every ``OK:`` becomes when no CA was given."""


def _ok(ca: Path | None) -> str:
    return "OK:" if ca is not None else OK_NO_CA


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read ({exc.strerror})") from exc


def _check(
    logs: Sequence[Path], ca: Path | None, *, allow_unsigned_tail: bool, out: TextIO
) -> tuple[list[LogVerification], bool]:
    """Verify each log, print OK/FAIL/WARNING/NOTE lines; return results and whether all passed.

    The OK line says ``closed cleanly`` when the log ends with ``shutdown`` and its
    checkpoint; otherwise a NOTE says how it ends. A log that cannot be read is a
    FAIL line (and no result): the others are still checked.
    """
    ca_pem = _read(ca, "CA certificate") if ca is not None else None
    results: list[LogVerification] = []
    all_ok = True
    for path in logs:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            # a FAIL like any other, and the next logs are still checked
            all_ok = False
            print(f"FAIL: {path}: cannot read ({exc.strerror})", file=out)
            continue
        result = check_log(
            data,
            name=str(path),
            ca_pem=ca_pem,
            allow_unsigned_tail=allow_unsigned_tail,
        )
        results.append(result)
        failures = list(result.errors)
        if failures:
            all_ok = False
            for finding in failures[:_MAX_LINES]:
                print(f"FAIL: {path}: {finding.describe()}", file=out)
            if len(failures) > _MAX_LINES:
                print(f"FAIL: {path}: … and {len(failures) - _MAX_LINES} more findings", file=out)
        else:
            closed = ", closed cleanly" if result.closed_cleanly else ""
            print(
                f"{_ok(ca)} {path} ({len(result.entries)} entries, party {result.party}{closed})",
                file=out,
            )
        for finding in result.warnings[:_MAX_LINES]:
            print(f"WARNING: {path}: {finding.describe()}", file=out)
        for finding in result.notes[:_MAX_LINES]:
            print(f"NOTE: {path}: {finding.describe()}", file=out)
    return results, all_ok


def verify_command(
    logs: Sequence[Path],
    ca: Path | None = None,
    *,
    allow_unsigned_tail: bool = False,
    out: TextIO | None = None,
) -> int:
    """``xmatch audit verify``: 0 if every log is intact, 1 otherwise.

    An unsigned tail fails unless ``allow_unsigned_tail`` (a live log).

    Raises:
        InputError: a log or the CA file cannot be read.
    """
    _, ok = _check(logs, ca, allow_unsigned_tail=allow_unsigned_tail, out=out or sys.stdout)
    return 0 if ok else 1


def reconcile_command(
    coord_log: Path,
    node_logs: Sequence[Path],
    *,
    ca: Path | None = None,
    allow_unsigned_tail: bool = False,
    out: TextIO | None = None,
) -> int:
    """``xmatch audit reconcile``: 0 consistent, 1 findings, 2 a log failed verification.

    Raises:
        InputError: a log or the CA file cannot be read.
    """
    stream = out or sys.stdout
    results, ok = _check(
        [coord_log, *node_logs], ca, allow_unsigned_tail=allow_unsigned_tail, out=stream
    )
    if not ok:
        print("FAIL: not reconciling logs that failed verification", file=stream)
        return 2
    result = reconcile(results[0], results[1:])
    for note in result.notes[:_MAX_LINES]:
        print(f"NOTE: {note.describe()}", file=stream)
    for finding in result.findings:
        print(f"FINDING: {finding.describe()}", file=stream)
    if result.ok:
        print(
            f"{_ok(ca)} {result.compared} rounds reconciled across {len(results)} logs",
            file=stream,
        )
        return 0
    print(f"FAIL: {len(result.findings)} findings ({result.compared} rounds compared)", file=stream)
    return 1


def _print_plain(report: AuditReport, out: TextIO, ok: str) -> None:
    print(f"{report.queries} rounds", file=out)
    print(
        "requester\tpurpose\tmatch set\trounds\tquery total\trefused\tfailed\tfirst\tlast", file=out
    )
    for r in report.rows:
        print(
            f"{r.requester}\t{r.purpose}\t{r.match_set}\t{r.rounds}\t{r.total_query_size}\t"
            f"{r.refusals}\t{r.failures}\t{r.first.isoformat()}\t{r.last.isoformat()}",
            file=out,
        )
    for f in report.flags:
        print(f"FLAG: {f.kind}: {f.requester} / {f.purpose} / {f.match_set}: {f.message}", file=out)
    if not report.flags:
        print(f"{ok} no probing patterns", file=out)


def _print_rich(report: AuditReport, out: TextIO, ok: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out)
    table = Table(title=f"Protocol-log usage ({report.queries} rounds)")
    for column in (
        "requester",
        "purpose",
        "match set",
        "rounds",
        "query total",
        "refused",
        "failed",
    ):
        table.add_column(column, justify="right" if column in ("rounds", "query total") else "left")
    table.add_column("first")
    table.add_column("last")
    for r in report.rows:
        table.add_row(
            r.requester,
            r.purpose,
            r.match_set,
            str(r.rounds),
            str(r.total_query_size),
            str(r.refusals),
            str(r.failures),
            r.first.strftime("%Y-%m-%d %H:%M"),
            r.last.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    if report.flags:
        flags = Table(title="Probing flags", style="red")
        for column in ("kind", "requester", "purpose", "match set", "what", "rounds"):
            flags.add_column(column)
        for f in report.flags:
            flags.add_row(
                f.kind, f.requester, f.purpose, f.match_set, f.message, str(len(f.round_ids))
            )
        console.print(flags)
    else:
        console.print(f"{ok} no probing patterns", markup=False)


def report_command(
    logs: Sequence[Path],
    *,
    json_out: Path | None = None,
    ca: Path | None = None,
    allow_unsigned_tail: bool = False,
    out: TextIO | None = None,
) -> int:
    """``xmatch audit report``: 0 nothing flagged, 1 flags, 2 a log failed verification.

    Raises:
        InputError: a log or the CA file cannot be read, or ``json_out`` exists already
            or cannot be written.
    """
    stream = out or sys.stdout
    if json_out is not None and (json_out.exists() or json_out.is_symlink()):
        # never over a log given by mistake (``--json a.jsonl a.jsonl``) or an earlier report
        raise InputError(f"--json {json_out}: exists already; give the name of a new file")
    results, ok = _check(logs, ca, allow_unsigned_tail=allow_unsigned_tail, out=stream)
    if not ok:
        print("FAIL: not reporting on logs that failed verification", file=stream)
        return 2
    report = build_report(results)
    if stream.isatty():
        _print_rich(report, stream, _ok(ca))
    else:
        _print_plain(report, stream, _ok(ca))
    if json_out is not None:
        text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
        try:
            # "x": never over a file; closed below, where a failed write is undone
            target = Path(json_out).open("x", encoding="utf-8")  # noqa: SIM115
        except FileExistsError:
            raise InputError(
                f"--json {json_out}: exists already; give the name of a new file"
            ) from None
        except OSError as exc:
            raise InputError(f"{json_out}: cannot write ({exc.strerror})") from exc
        try:
            with target:
                target.write(text)
        except BaseException as exc:
            Path(json_out).unlink(missing_ok=True)  # no half report (a full disk, a Ctrl-C)
            if isinstance(exc, OSError):
                raise InputError(f"{json_out}: cannot write ({exc.strerror})") from exc
            raise
    return 1 if report.flags else 0
