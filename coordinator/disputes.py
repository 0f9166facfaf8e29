"""The coordinator's 疑义校核 disputes (notice 四(五)): the book, filing, sync.

A dispute names one person's record at one provider (``node/match_set``) in
one round, with the caseworker's reason. It is filed only for a record that
round received (the person has a row of that source in the round's
``evidence.csv``), so that a dispute reveals to a provider only the identity
of a record it already holds. It goes to the node at once when the node can be
reached, otherwise at the next ``xmatch dispute sync`` or round.

The book is one SQLite file (``[coordinator] disputes``, default
``disputes.sqlite`` beside the state; mode 0600: it holds identity numbers).
Statuses: ``open`` (``delivered`` says whether the node has it; ``refused``
holds the node's reason when it refused the filing), ``confirmed``,
``corrected``, ``withdrawn``. The protocol log gets
``dispute_filed``, ``dispute_answered`` and ``dispute_withdrawn`` with ids and
reasons, never the identity.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TextIO

from audit.format import looks_like_identity_number
from coordinator.config import CoordinatorConfig, NodeEntry
from coordinator.decisions import RoundDecisions
from coordinator.dispute_rule import OpenDispute, hold_for_disputes
from coordinator.node_link import call, stub
from coordinator.sub_round import SubRound, SubRoundStatus
from keys.handles import TlsMaterial
from proto import xmatch_pb2 as pb
from psi.errors import InputError, PeerError, Refused, XmatchError
from runtime.files import private_folders
from runtime.text import printable

__all__ = [
    "STATUSES",
    "CoordinatorDispute",
    "DisputeBook",
    "OpenDispute",
    "SyncResult",
    "book_path",
    "deliver",
    "disputes_json",
    "hold_for_round",
    "open_disputes",
    "record_answers",
    "refusal_line",
    "refusal_lines",
    "refusal_reason",
    "sync_node",
    "withdraw",
]

STATUSES = ("open", "confirmed", "corrected", "withdrawn")


class AuditSink(Protocol):
    """What filing and sync need of :class:`audit.log.AuditLog`."""

    def append(self, event: str, **fields: object) -> int: ...


def book_path(config: CoordinatorConfig) -> Path:
    """``[coordinator] disputes``, or ``disputes.sqlite`` beside the state database."""
    section = config.coordinator
    return section.disputes or section.state.with_name("disputes.sqlite")


def now_rfc3339() -> str:
    """The time now, UTC, to the second (``2026-11-29T08:00:00Z``)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def safe_line(text: str, *, fallback: str) -> str:
    """Text a node sent, fit for our log and book: one line, at most 500 characters,
    control and format characters replaced (:func:`runtime.text.printable`), and
    ``fallback`` instead if it looks like an identity number."""
    line = printable(" ".join(text.split()))[:500]
    return fallback if looks_like_identity_number(line) else line


@dataclass(frozen=True)
class CoordinatorDispute:
    """One dispute as the coordinator keeps it."""

    dispute_id: str
    round_id: str
    node: str
    match_set: str
    person_id: str
    reason: str
    filed_at: str
    as_of: str
    purpose: str
    status: str = "open"
    delivered: int = 0
    withdraw_reason: str = ""
    note: str = ""
    answered_at: str = ""
    refused: str = ""

    @property
    def source(self) -> str:
        """``node/match_set``."""
        return f"{self.node}/{self.match_set}"

    def to_proto(self) -> pb.Dispute:
        """The message that carries it to the node (online, or in a sealed file)."""
        return pb.Dispute(
            dispute_id=self.dispute_id,
            round_id=self.round_id,
            match_set=self.match_set,
            person_id=self.person_id,
            reason=self.reason,
            filed_at=self.filed_at,
            as_of=self.as_of,
            purpose=self.purpose,
        )

    def as_open(self) -> OpenDispute:
        """What the round's rule and report need."""
        return OpenDispute(
            dispute_id=self.dispute_id,
            person_id=self.person_id,
            source=self.source,
            filed_on=_dt.date.fromisoformat(self.filed_at[:10]),
            reason=self.reason,
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS disputes (
    dispute_id      TEXT PRIMARY KEY,
    round_id        TEXT NOT NULL,
    node            TEXT NOT NULL,
    match_set       TEXT NOT NULL,
    person_id       TEXT NOT NULL,
    reason          TEXT NOT NULL,
    filed_at        TEXT NOT NULL,
    as_of           TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('open', 'confirmed', 'corrected', 'withdrawn')),
    delivered       INTEGER NOT NULL DEFAULT 0,
    -- a withdrawal the node has not heard of yet
    withdraw_reason TEXT NOT NULL DEFAULT '',
    note            TEXT NOT NULL DEFAULT '',
    answered_at     TEXT NOT NULL DEFAULT '',
    -- why the node refused to take the dispute (it is offered again at each sync)
    refused         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS disputes_status ON disputes(status, node);
"""
_COLUMNS = (
    "dispute_id, round_id, node, match_set, person_id, reason, filed_at, as_of, purpose, "
    "status, delivered, withdraw_reason, note, answered_at, refused"
)
#: columns added after the first release, for a book created before them
_ADDED_COLUMNS = (("refused", "TEXT NOT NULL DEFAULT ''"),)


class DisputeBook:
    """The coordinator's disputes; one connection per use (:meth:`open`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    @contextmanager
    def open(cls, config: CoordinatorConfig) -> Iterator[DisputeBook]:
        """Open (creating it, mode 0600, folder 0700) the book of ``config``.

        Raises:
            InputError: it cannot be created or is not a dispute book.
        """
        path = book_path(config)
        try:
            private_folders(path.parent)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise InputError(f"{path}: cannot open the dispute book ({exc})") from None
        try:
            conn.executescript(_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(disputes)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE disputes ADD COLUMN {name} {kind}")
            yield cls(conn, path)
        except sqlite3.DatabaseError as exc:
            # SQLite's own reason ("file is not a database"): it names no value
            reason = " ".join(str(exc).split()) or "unreadable"
            raise InputError(f"{path}: not a dispute book (SQLite says: {reason})") from None
        finally:
            conn.close()

    def _select(self, where: str = "", params: tuple[object, ...] = ()) -> list[CoordinatorDispute]:
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM disputes {where} ORDER BY filed_at, dispute_id", params
        ).fetchall()
        return [CoordinatorDispute(*row) for row in rows]

    def get(self, dispute_id: str) -> CoordinatorDispute | None:
        """The dispute ``dispute_id`` (or ``None``)."""
        found = self._select("WHERE dispute_id = ?", (dispute_id,))
        return found[0] if found else None

    def add(self, dispute: CoordinatorDispute) -> None:
        """Record a new dispute."""
        values = [getattr(dispute, name.strip()) for name in _COLUMNS.split(",")]
        self._conn.execute(
            f"INSERT INTO disputes ({_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values
        )

    def listing(self, *, status: str | None = None) -> list[CoordinatorDispute]:
        """Every dispute (or those with ``status``), oldest first."""
        if status is None:
            return self._select()
        return self._select("WHERE status = ?", (status,))

    def open_for(self, person: str, source: str) -> CoordinatorDispute | None:
        """An open dispute about ``person``'s record at ``source``, if any."""
        node, _, match_set = source.partition("/")
        found = self._select(
            "WHERE status = 'open' AND person_id = ? AND node = ? AND match_set = ?",
            (person, node, match_set),
        )
        return found[0] if found else None

    def of_node(self, node: str) -> list[CoordinatorDispute]:
        """The node's disputes that still need a call: open ones, or a withdrawal to send."""
        return self._select(
            "WHERE node = ? AND (status = 'open' OR withdraw_reason != '')", (node,)
        )

    def set_delivered(self, dispute_id: str) -> None:
        """The node has the dispute."""
        self._conn.execute(
            "UPDATE disputes SET delivered = 1, refused = '' WHERE dispute_id = ?", (dispute_id,)
        )

    def set_refused(self, dispute_id: str, reason: str) -> None:
        """The node refused to take the dispute; it stays open (and undelivered)."""
        self._conn.execute(
            "UPDATE disputes SET refused = ? WHERE dispute_id = ? AND delivered = 0",
            (reason or "refused", dispute_id),
        )

    def answer(self, dispute_id: str, verdict: str, note: str, answered_at: str) -> bool:
        """Record the node's answer; ``False`` if the dispute is answered already.

        A dispute withdrawn here takes the answer too: the node answered before the
        withdrawal reached it, so the answer stands on both sides (and nothing is
        left to tell the node).
        """
        cur = self._conn.execute(
            "UPDATE disputes SET status = ?, note = ?, answered_at = ?, withdraw_reason = '' "
            "WHERE dispute_id = ? AND status IN ('open', 'withdrawn')",
            (verdict, note, answered_at, dispute_id),
        )
        return cur.rowcount == 1

    def withdraw(self, dispute_id: str, reason: str) -> None:
        """Mark it withdrawn; the node is told at the next contact."""
        self._conn.execute(
            "UPDATE disputes SET status = 'withdrawn', withdraw_reason = ? "
            "WHERE dispute_id = ? AND status = 'open'",
            (reason, dispute_id),
        )

    def withdrawal_sent(self, dispute_id: str) -> None:
        """The node has heard of the withdrawal."""
        self._conn.execute(
            "UPDATE disputes SET withdraw_reason = '' WHERE dispute_id = ?", (dispute_id,)
        )


def open_disputes(config: CoordinatorConfig) -> list[OpenDispute]:
    """The open disputes, for a round's rule and report (none if there is no book yet)."""
    if not book_path(config).exists():
        return []
    with DisputeBook.open(config) as book:
        return [d.as_open() for d in book.listing(status="open")]


def log_filed(audit: AuditSink, dispute: CoordinatorDispute, *, us: str) -> None:
    """``dispute_filed`` in our protocol log: ids and the reason, never the identity."""
    audit.append(
        "dispute_filed",
        dispute_id=dispute.dispute_id,
        round_id=dispute.round_id,
        requester=us,
        responder=dispute.node,
        match_set=dispute.match_set,
        purpose=dispute.purpose,
        reason=dispute.reason,
    )


def deliver(entry: NodeEntry, tls: TlsMaterial, dispute: CoordinatorDispute) -> str:
    """Send one dispute to its node; returns the status the node reports.

    Raises:
        PeerError, Refused: the node could not be reached or refused it.
    """
    with stub(entry, tls) as node:
        receipt: pb.DisputeReceipt = call(
            entry, lambda: node.FileDispute(dispute.to_proto(), timeout=30.0)
        )
    return receipt.status


def withdraw(
    book: DisputeBook, audit: AuditSink, dispute: CoordinatorDispute, reason: str, *, us: str
) -> None:
    """Withdraw an open dispute here (logged); the node hears of it at the next contact.

    Raises:
        InputError: the dispute is not open.
    """
    if dispute.status != "open":
        raise InputError(f"dispute {dispute.dispute_id} is {dispute.status}, not open")
    audit.append(
        "dispute_withdrawn",
        dispute_id=dispute.dispute_id,
        requester=us,
        responder=dispute.node,
        match_set=dispute.match_set,
        reason=reason,
    )
    book.withdraw(dispute.dispute_id, reason)
    if not dispute.delivered:  # the node never had it: nothing to tell
        book.withdrawal_sent(dispute.dispute_id)


@dataclass
class SyncResult:
    """What one node's sync did."""

    node: str
    delivered: int = 0
    withdrawn: int = 0
    answered: list[CoordinatorDispute] | None = None
    #: the node could not be reached or failed: the rest waits for the next contact
    error: str | None = None
    #: (dispute, the node's reason) for each filing or withdrawal the node refused
    refused: list[tuple[CoordinatorDispute, str]] = dataclasses.field(default_factory=list)


def record_answers(
    book: DisputeBook, audit: AuditSink, reply: pb.DisputeAnswerList, *, us: str, node: str
) -> list[CoordinatorDispute]:
    """Record and log each answer that is well formed; others are skipped."""
    got: list[CoordinatorDispute] = []
    for answer in reply.answers:
        known = book.get(answer.dispute_id)
        if known is None or known.node != node or answer.verdict not in ("confirmed", "corrected"):
            continue
        note = safe_line(answer.note, fallback="(withheld)")
        if book.answer(
            known.dispute_id,
            answer.verdict,
            note,
            safe_line(answer.answered_at, fallback=now_rfc3339()),
        ):
            audit.append(
                "dispute_answered",
                dispute_id=known.dispute_id,
                requester=us,
                responder=node,
                match_set=known.match_set,
                verdict=answer.verdict,
                note=note,
            )
            got.append(book.get(known.dispute_id) or known)
    return got


def sync_node(
    book: DisputeBook,
    audit: AuditSink,
    entry: NodeEntry,
    tls: TlsMaterial,
    *,
    us: str,
    timeout: float = 30.0,
) -> SyncResult:
    """Deliver, withdraw and fetch answers with one node; a failure is a result.

    Undelivered disputes are filed, withdrawals the node has not heard of are
    sent, then the answers to every delivered open dispute are fetched,
    recorded and logged (``dispute_answered``). A filing or withdrawal the node
    refuses is recorded (:meth:`DisputeBook.set_refused`) and the rest goes on:
    the node answered, so it is reachable. A withdrawal the node could not apply
    because it had answered already brings that answer home.
    """
    result = SyncResult(entry.name, answered=[])
    pending = book.of_node(entry.name)
    if not pending:
        return result
    crossed: list[str] = []  # withdrawals that met an answer on the node
    try:
        with stub(entry, tls) as node:
            for item in pending:
                try:
                    if item.status == "open" and not item.delivered:
                        call(entry, partial(node.FileDispute, item.to_proto(), timeout=timeout))
                        book.set_delivered(item.dispute_id)
                        result.delivered += 1
                    elif item.withdraw_reason:
                        message = pb.DisputeWithdrawal(
                            dispute_id=item.dispute_id, reason=item.withdraw_reason
                        )
                        receipt: pb.DisputeReceipt = call(
                            entry, partial(node.WithdrawDispute, message, timeout=timeout)
                        )
                        book.withdrawal_sent(item.dispute_id)
                        if receipt.status == "withdrawn":
                            result.withdrawn += 1
                        else:
                            crossed.append(item.dispute_id)
                except Refused as exc:  # this item only
                    why = refusal_reason(exc)
                    if item.status == "open":
                        book.set_refused(item.dispute_id, why)
                    result.refused.append((item, why))
            ids = [d.dispute_id for d in book.of_node(entry.name) if d.status == "open"]
            ids += crossed
            if ids:
                request = pb.DisputeAnswersRequest(dispute_ids=ids)
                reply = call(entry, lambda: node.DisputeAnswers(request, timeout=timeout))
                result.answered = record_answers(book, audit, reply, us=us, node=entry.name)
    except PeerError as exc:
        result.error = exc.reason
    return result


def refusal_reason(exc: Refused) -> str:
    """The node's reason for a refusal, without the ``refused:`` that
    :func:`coordinator.node_link.call` puts before it."""
    return exc.reason.removeprefix("refused: ") or "no reason given"


def refusal_line(node: str, dispute_id: str, reason: str, *, withdrawal: bool = False) -> str:
    """What the caseworker reads of one refusal (after ``warning: ``): the node's
    reason, what became of the dispute, what to do. Never promises a delivery."""
    if withdrawal:
        return (
            f"{node}: withdrawal of dispute {dispute_id} refused ({printable(reason)}); "
            "the node was not told; it is sent again at each sync"
        )
    return (
        f"{node}: dispute {dispute_id} refused ({printable(reason)}); it stays open here "
        "(its exits held) and is offered again at each sync: ask the department, or "
        "withdraw it (`xmatch dispute withdraw`)"
    )


def refusal_lines(result: SyncResult) -> list[str]:
    """:func:`refusal_line` for each refusal of ``result``."""
    return [
        refusal_line(result.node, item.dispute_id, why, withdrawal=item.status == "withdrawn")
        for item, why in result.refused
    ]


def sync_all(
    config: CoordinatorConfig,
    audit: AuditSink,
    tls: TlsMaterial,
    *,
    nodes: Iterable[str] | None = None,
    timeout: float = 30.0,
    on_result: Callable[[SyncResult], None] | None = None,
) -> list[SyncResult]:
    """:func:`sync_node` for every configured node (or those named) that has disputes.

    Raises:
        InputError: the book cannot be opened.
    """
    if not book_path(config).exists():
        return []
    wanted = set(nodes) if nodes is not None else None
    results: list[SyncResult] = []
    with DisputeBook.open(config) as book:
        for entry in config.nodes:
            if entry.offline or (wanted is not None and entry.name not in wanted):
                continue  # an offline node: sealed inbox files (coordinator.dispute_offline)
            result = sync_node(book, audit, entry, tls, us=config.coordinator.name, timeout=timeout)
            if (
                result.delivered
                or result.withdrawn
                or result.answered
                or result.error
                or result.refused
            ):
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


def sync_at_round(
    config: CoordinatorConfig,
    audit: AuditSink,
    tls: TlsMaterial,
    *,
    reachable: Iterable[str],
    err: TextIO,
) -> list[OpenDispute]:
    """A round's next contact: sync with the nodes that answered, then the open disputes.

    Never fails the round: a problem is one ``warning:`` line on ``err``.
    """
    try:
        for result in sync_all(config, audit, tls, nodes=reachable, timeout=10.0):
            if result.error:
                print(f"warning: disputes: {result.node}: {printable(result.error)}", file=err)
            for line in refusal_lines(result):
                print(f"warning: disputes: {line}", file=err)
        return open_disputes(config)
    except XmatchError as exc:
        print(f"warning: disputes: {exc.diagnostics()}", file=err)
        return []


def hold_for_round(
    decisions: RoundDecisions,
    config: CoordinatorConfig,
    audit: AuditSink,
    tls: TlsMaterial,
    results: Iterable[SubRound],
    err: TextIO,
) -> tuple[RoundDecisions, tuple[OpenDispute, ...]]:
    """A round's hook: sync disputes with the nodes that answered (the "next contact"),
    then hold the decisions for the open ones (:func:`coordinator.dispute_rule.hold_for_disputes`).

    Returns the decisions (unchanged when no dispute is open) and the open disputes.
    """
    reachable = {s.node for s in results if s.status is SubRoundStatus.OK}
    disputes = tuple(sync_at_round(config, audit, tls, reachable=reachable, err=err))
    if not disputes:
        return decisions, ()
    held = hold_for_disputes(decisions.decisions, disputes)
    return dataclasses.replace(decisions, decisions=held), disputes


def disputes_json(disputes: Iterable[OpenDispute], as_of: _dt.date) -> dict[str, object]:
    """decisions.json's ``open_disputes`` (only when there are any): id, source, filing
    date, age in days on the evaluation date, reason; never the person."""
    items = [
        {
            "dispute_id": d.dispute_id,
            "source": d.source,
            "filed_on": d.filed_on.isoformat(),
            "age_days": d.age_days(as_of),
            "reason": d.reason,
        }
        for d in disputes
    ]
    return {"open_disputes": items} if items else {}


def hold_without_contact(
    decisions: RoundDecisions, config: CoordinatorConfig
) -> tuple[RoundDecisions, tuple[OpenDispute, ...]]:
    """:func:`hold_for_round` for a round completed from sealed responses (``round
    import``/``close``): the open disputes as the book has them, no network contact."""
    disputes = tuple(open_disputes(config))
    if not disputes:
        return decisions, ()
    held = hold_for_disputes(decisions.decisions, disputes)
    return dataclasses.replace(decisions, decisions=held), disputes
