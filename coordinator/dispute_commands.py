"""``xmatch dispute file | sync | import | list | withdraw``: the caseworker's side of 疑义校核.

See :mod:`coordinator.disputes` for the book and the rules of filing, and
docs/coordinator.md ("Disputes") for the caseworker's steps. Nothing printed
to stderr or logged holds an identity number; ``dispute list`` prints the
disputed person's number on stdout, for the caseworker (as the spreadsheet does).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from audit.format import looks_like_identity_number
from coordinator import exit_codes
from coordinator.config import CoordinatorConfig, load_coordinator_config
from coordinator.dispute_offline import bundle_for, import_reply, write_inbox
from coordinator.dispute_rule import conflicting_records
from coordinator.disputes import (
    AuditSink,
    CoordinatorDispute,
    DisputeBook,
    SyncResult,
    deliver,
    log_filed,
    now_rfc3339,
    refusal_line,
    refusal_lines,
    refusal_reason,
    sync_all,
    withdraw,
)
from coordinator.node_link import coordinator_log, coordinator_tls, node_entry
from coordinator.records import EvidenceRow, read_evidence, read_roster_source
from coordinator.state import RoundState
from psi.errors import InputError, InvalidIdentifier, PeerError, Refused
from psi.identifiers import normalize_id
from runtime.text import control_character, printable

__all__ = [
    "file_command",
    "file_conflicts_command",
    "import_command",
    "list_command",
    "sync_command",
    "withdraw_command",
]


@dataclass(frozen=True)
class _Round:
    round_id: str
    as_of: _dt.date
    evidence: dict[str, list[EvidenceRow]]


def _round(config: CoordinatorConfig, round_id: str) -> _Round:
    """A completed round of ours and its evidence, by person.

    Raises:
        InputError: no such round, not completed, or its evidence.csv is gone.
    """
    with RoundState.open(config.coordinator.state) as state:
        record = state.get_round(round_id.strip().lower())
    if record is None:
        raise InputError(f"round {round_id}: not in {config.coordinator.state}")
    if record.status != "completed":
        raise InputError(f"round {record.round_id} is {record.status}, not completed")
    path = Path(record.out_dir) / "evidence.csv"
    if not path.is_file():
        raise InputError(f"round {record.round_id}: {path} is missing (its output folder moved?)")
    by_person: dict[str, list[EvidenceRow]] = {}
    for row in read_evidence(path):
        by_person.setdefault(row.person_id, []).append(row)
    return _Round(record.round_id, _dt.date.fromisoformat(record.as_of), by_person)


def _reason(text: str, option: str) -> str:
    """The caseworker's reason, checked: one line, no identity number.

    Raises:
        InputError: empty, too long, a control or format character, or it looks
            like an identity number.
    """
    line = " ".join(text.split())
    if not line:
        raise InputError(f"{option}: empty; say what is doubtful about the record")
    if len(line) > 500:
        raise InputError(f"{option}: longer than 500 characters")
    bad = control_character(line)
    if bad is not None:  # the department's terminal prints it
        raise InputError(f"{option}: holds the control or format character {bad}; plain text only")
    if looks_like_identity_number(line):
        raise InputError(
            f"{option}: looks like it holds an identity number; describe the doubt without it "
            "(the reason is written to both protocol logs)"
        )
    return line


def _new_dispute(
    config: CoordinatorConfig, found: _Round, person: str, source: str, reason: str
) -> CoordinatorDispute:
    node, _, match_set = source.partition("/")
    return CoordinatorDispute(
        dispute_id=os.urandom(16).hex(),
        round_id=found.round_id,
        node=node,
        match_set=match_set,
        person_id=person,
        reason=reason,
        filed_at=now_rfc3339(),
        as_of=found.as_of.isoformat(),
        purpose=config.coordinator.purpose,
    )


def _check_source(config: CoordinatorConfig, source: str) -> None:
    node, sep, match_set = source.partition("/")
    if not sep or not node or not match_set:
        raise InputError(f"--source {source!r}: expected NODE/SET, e.g. justice/custody")
    if match_set not in node_entry(config, node).match_sets:
        raise InputError(f"--source {source}: {node} has no match set {match_set!r} configured")


def _file(
    config: CoordinatorConfig,
    book: DisputeBook,
    disputes: list[CoordinatorDispute],
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    """Record and log each dispute, then try to deliver each at once; returns how many went."""
    tls = coordinator_tls(config)
    us = config.coordinator.name
    with coordinator_log(config) as audit:
        for dispute in disputes:
            log_filed(audit, dispute, us=us)
            book.add(dispute)
    sent = 0
    unreachable: dict[str, str] = {}
    refused: dict[str, str] = {}  # dispute id -> the node's reason
    for dispute in disputes:
        if dispute.node in unreachable:
            continue
        if node_entry(config, dispute.node).offline:
            unreachable[dispute.node] = (
                "an offline node: `xmatch dispute sync --offline-dir DIR` writes its sealed inbox"
            )
            continue
        try:
            deliver(node_entry(config, dispute.node), tls, dispute)
        except Refused as exc:  # this dispute only: the node is there, the others go on
            refused[dispute.dispute_id] = refusal_reason(exc)
            book.set_refused(dispute.dispute_id, refused[dispute.dispute_id])
            continue
        except PeerError as exc:
            unreachable[dispute.node] = exc.reason
            continue
        book.set_delivered(dispute.dispute_id)
        sent += 1
    for node, why in unreachable.items():
        if node_entry(config, node).offline:
            print(f"note: {node}: {why}", file=err)
            continue
        print(
            f"warning: {node}: not delivered now ({printable(why)}); `xmatch dispute sync` or "
            "the next round delivers it",
            file=err,
        )
    for dispute in disputes:
        if dispute.dispute_id in refused:
            line = refusal_line(dispute.node, dispute.dispute_id, refused[dispute.dispute_id])
            print(f"warning: {line}", file=err)
    for dispute in disputes:
        if dispute.dispute_id in refused:
            state = "refused by the node"
        elif dispute.node in unreachable:
            state = "waiting for delivery"
        else:
            state = "delivered"
        print(f"{dispute.source}: {state}: dispute {dispute.dispute_id}", file=out)
    return sent


def file_command(
    *,
    config: Path,
    round_id: str,
    person: str,
    source: str,
    reason: str,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``xmatch dispute file --round R --person ID --source NODE/SET --reason TEXT``.

    The last word of the last line printed is the dispute id.

    Raises:
        InputError: a bad option, a round that is not ours or not complete, no
            record of the person from that source in that round, or an open
            dispute about it already (its id is named).
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    cfg = load_coordinator_config(config)
    _check_source(cfg, source)
    text = _reason(reason, "--reason")
    try:
        canonical = normalize_id(person)
    except InvalidIdentifier as exc:
        raise InputError(f"--person: not a valid identity number ({exc.reason})") from None
    found = _round(cfg, round_id)
    if not any(r.source == source for r in found.evidence.get(canonical, ())):
        raise InputError(
            f"--person: round {found.round_id} has no record of this person from {source}; "
            "a dispute is about a record the round received"
        )
    with DisputeBook.open(cfg) as book:
        known = book.open_for(canonical, source)
        if known is not None:
            raise InputError(f"an open dispute about this record exists: {known.dispute_id}")
        _file(cfg, book, [_new_dispute(cfg, found, canonical, source, text)], out=out, err=err)
    return exit_codes.COMPLETE


def file_conflicts_command(
    *,
    config: Path,
    round_id: str,
    reason: str | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``xmatch dispute file --from-round R --conflicts``: one dispute per record of each
    conflict of the round's parents (eligibility.md, "Conflicts"), skipping records
    that already have an open dispute.

    Raises:
        InputError: as :func:`file_command`; the roster cannot be read.
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    cfg = load_coordinator_config(config)
    extra = _reason(reason, "--reason") if reason else None
    found = _round(cfg, round_id)
    roster = read_roster_source(
        cfg.coordinator.roster, encoding=cfg.coordinator.roster_encoding, as_of=found.as_of
    )
    parents = {p for row in roster.rows for p in (row.father_id, row.mother_id) if p is not None}
    conflicts = conflicting_records(found.evidence, sorted(parents), on=found.as_of)
    with DisputeBook.open(cfg) as book:
        new: list[CoordinatorDispute] = []
        for person, rows in conflicts.items():
            codes = "、".join(sorted({f"{r.circumstance.value}({r.source})" for r in rows}))
            text = f"数据相互矛盾:{codes} 同时有效,请核查"
            if extra:
                text = f"{text};{extra}"
            for source in sorted({r.source for r in rows}):
                if book.open_for(person, source) is None:
                    new.append(_new_dispute(cfg, found, person, source, text[:500]))
        if not new:
            print(f"round {found.round_id}: no conflict without an open dispute", file=out)
            return exit_codes.COMPLETE
        sent = _file(cfg, book, new, out=out, err=err)
    print(f"{len(new)} dispute(s) filed, {sent} delivered", file=out)
    return exit_codes.COMPLETE


def _print_sync(result: SyncResult, out: TextIO, err: TextIO) -> None:
    if result.error:
        print(f"warning: {result.node}: {printable(result.error)}", file=err)
    for line in refusal_lines(result):
        print(f"warning: {line}", file=err)
    answered = result.answered or []
    print(
        f"{result.node}: {result.delivered} delivered, {result.withdrawn} withdrawn, "
        f"{len(answered)} answered",
        file=out,
    )
    for item in answered:
        print(f"  {item.dispute_id} {item.status}: {printable(item.note)}", file=out)


def _offline_inboxes(
    cfg: CoordinatorConfig,
    audit: AuditSink,
    offline_dir: Path | None,
    out: TextIO,
    err: TextIO,
) -> tuple[int, int]:
    """Write a sealed inbox for each offline node with something pending:
    (how many written, how many nodes wait for ``--offline-dir``)."""
    written = waiting = 0
    with DisputeBook.open(cfg) as book:
        for entry in (e for e in cfg.nodes if e.offline):
            bundle = bundle_for(book, entry.name)
            if not bundle.disputes and not bundle.withdrawals:
                continue
            if offline_dir is None:
                print(
                    f"warning: {entry.name}: an offline node with disputes waiting: "
                    "give --offline-dir DIR to write its sealed inbox",
                    file=err,
                )
                waiting += 1
                continue
            path = write_inbox(cfg, audit, entry, bundle, out_dir=offline_dir)
            print(
                f"{entry.name}: written {path} ({len(bundle.disputes)} dispute(s), "
                f"{len(bundle.withdrawals)} withdrawal(s)); carry it to {entry.name}, "
                "then `xmatch dispute import` its reply",
                file=out,
            )
            written += 1
    return written, waiting


def sync_command(
    *,
    config: Path,
    offline_dir: Path | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``xmatch dispute sync [--offline-dir DIR]``: deliver, withdraw and fetch answers
    with every online node; write a sealed inbox for each offline node with disputes.

    Returns 0, or 3 (:data:`coordinator.exit_codes.PARTIAL`) when something was
    left undone: a node could not be reached (its disputes wait for the next sync
    or round), refused a dispute or withdrawal, or is offline with disputes waiting
    and no ``--offline-dir`` was given.
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    cfg = load_coordinator_config(config)
    tls = coordinator_tls(cfg)
    with coordinator_log(cfg) as audit:
        results = sync_all(cfg, audit, tls, on_result=lambda r: _print_sync(r, out, err))
        written, waiting = _offline_inboxes(cfg, audit, offline_dir, out, err)
    if not results and not written and not waiting:
        print("nothing to sync", file=out)
    if waiting or any(r.error or r.refused for r in results):
        return exit_codes.PARTIAL
    return exit_codes.COMPLETE


def import_command(
    *, config: Path, reply: Path, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``xmatch dispute import --reply FILE``: an offline node's sealed inbox reply.

    Raises:
        SealedFileError: the reply is refused (one line).
        InputError: unreadable, or from a node that is not an offline node of ours.
    """
    cfg = load_coordinator_config(config)
    return import_reply(cfg, reply, out=stdout or sys.stdout, err=stderr or sys.stderr)


def list_command(*, config: Path, status: str | None = None, stdout: TextIO | None = None) -> int:
    """``xmatch dispute list``: every dispute (or those with ``status``), oldest first."""
    out = stdout or sys.stdout
    cfg = load_coordinator_config(config)
    today = _dt.date.today()
    with DisputeBook.open(cfg) as book:
        items = book.listing(status=status)
    print("dispute_id\tstatus\tfiled\tage_days\tround\tsource\tperson_id\treason\tanswer", file=out)
    for d in items:
        shown = d.status
        if d.status == "open" and not d.delivered:
            refused = printable(d.refused)
            shown = f"open (refused: {refused})" if d.refused else "open (not delivered)"
        age = d.as_open().age_days(today)
        # the note is the department's words; a book written before control
        # characters were refused may hold them in a reason too
        answer = printable(f"{d.answered_at[:10]} {d.note}".strip())
        print(
            f"{d.dispute_id}\t{shown}\t{d.filed_at[:10]}\t{age}\t{d.round_id}\t{d.source}\t"
            f"{d.person_id}\t{printable(d.reason)}\t{answer}",
            file=out,
        )
    return exit_codes.COMPLETE


def withdraw_command(
    *,
    config: Path,
    dispute_id: str,
    reason: str,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``xmatch dispute withdraw --dispute ID --reason TEXT``: withdraw an open dispute,
    and tell its node now if it can be reached (else at the next sync or round).

    A delivered dispute's node is asked for its answer first: one it has answered
    is not withdrawn (the answer stands on both sides).

    Raises:
        InputError: no such dispute, or it is not open (answered, perhaps just now).
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    cfg = load_coordinator_config(config)
    text = _reason(reason, "--reason")
    with DisputeBook.open(cfg) as book:
        known = book.get(dispute_id.strip().lower())
        if known is None:
            raise InputError(f"dispute {dispute_id}: not in {book.path}")
        online = known.delivered and not node_entry(cfg, known.node).offline
        with coordinator_log(cfg) as audit:
            reached = True
            if known.status == "open" and online:
                # the node may have answered already: fetch that first, so that a
                # withdrawal never hides an answer and both sides keep the same one
                reached = _sync_one(cfg, audit, known.node, err)
                known = book.get(known.dispute_id) or known
                _refuse_answered(known)
            withdraw(book, audit, known, text, us=cfg.coordinator.name)
            if online and reached:
                _sync_one(cfg, audit, known.node, err)
                # the answer and the withdrawal crossed on the way: the answer stands
                _refuse_answered(book.get(known.dispute_id) or known)
    print(f"withdrawn: dispute {known.dispute_id}", file=out)
    return exit_codes.COMPLETE


def _sync_one(cfg: CoordinatorConfig, audit: AuditSink, node: str, err: TextIO) -> bool:
    """Sync with ``node`` for a withdrawal; ``False`` (and a warning) if it was not reached."""
    for item in sync_all(cfg, audit, coordinator_tls(cfg), nodes=[node]):
        for line in refusal_lines(item):
            print(f"warning: {line}", file=err)
        if item.error:
            print(f"warning: {item.node}: not told now ({printable(item.error)})", file=err)
            return False
    return True


def _refuse_answered(dispute: CoordinatorDispute) -> None:
    """Raises InputError if the node has answered ``dispute``: it cannot be withdrawn."""
    if dispute.status in ("confirmed", "corrected"):
        raise InputError(
            f"dispute {dispute.dispute_id} is {dispute.status}, not withdrawn: the department "
            f"had answered it ({printable(dispute.note)})"
        )
