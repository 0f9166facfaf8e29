"""A department node's 疑义校核 disputes (notice 四(五)): the store and the RPC handlers.

The coordinator files a dispute about one person's record in one of this
node's match sets (``FileDispute``); the department's operator lists the open
ones (``xmatch node disputes``) and answers each ``confirmed`` or ``corrected``
with a note (``xmatch node resolve``); the coordinator fetches the answers
(``DisputeAnswers``) or withdraws a dispute (``WithdrawDispute``).

The store is one SQLite file, ``INBOX/disputes.sqlite`` (mode 0600, its folder
0700): it holds the one identity number each dispute reveals, for the operator
to find the record. The protocol log gets ``dispute_filed``,
``dispute_answered`` and ``dispute_withdrawn`` with ids and reasons, never the
identity. ``xmatch node resolve`` runs beside the serving node, which holds
the log open, so it only records the answer; the node writes its
``dispute_answered`` entry before it hands the answer to the coordinator
(:func:`log_pending_answers`, also at startup).

Handlers are plain functions (house style 9): the servicer passes the verified
peer and the request and maps the :class:`psi.errors.XmatchError` they raise.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from audit.format import check_fields, looks_like_identity_number
from nodes.auth import Peer
from nodes.authorization import REQUESTER_ROLE
from nodes.config import NodeConfig
from proto import xmatch_pb2 as pb
from psi.errors import InputError, InvalidIdentifier, ProtocolError, Refused, XmatchError
from psi.identifiers import normalize_id
from runtime.files import private_folders
from runtime.text import control_character

__all__ = [
    "STATUSES",
    "VERDICTS",
    "DisputeStore",
    "NodeDispute",
    "check_text",
    "dispute_answers",
    "file_dispute",
    "inbox_dir",
    "log_answers_at_start",
    "log_pending_answers",
    "private_file",
    "withdraw_dispute",
]

Verdict = Literal["confirmed", "corrected"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "corrected")
STATUSES = ("open", "confirmed", "corrected", "withdrawn")
#: longest reason or note, in characters
MAX_TEXT = 500
_HEX32 = re.compile(r"[0-9a-f]{32}")


class AuditSink(Protocol):
    """What the handlers need of :class:`audit.log.AuditLog`."""

    def append(self, event: str, **fields: object) -> int: ...


def inbox_dir(config: NodeConfig) -> Path:
    """``node.inbox``, or ``inbox/NAME`` beside node.toml (one folder per node, even
    where several nodes' configs share a folder)."""
    return config.node.inbox or config.path.absolute().parent / "inbox" / config.node.name


def private_file(path: Path) -> None:
    """Create ``path`` (mode 0600) and its folder (0700) if missing; tighten an existing file."""
    private_folders(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def check_text(value: str, what: str) -> str:
    """``value`` as one trimmed line fit for a protocol log.

    Raises:
        ProtocolError: empty, longer than :data:`MAX_TEXT`, a control or format
            character, or it looks like it holds an identity number (the message
            never quotes it).
    """
    line = " ".join(value.split())
    if not line:
        raise ProtocolError(f"{what} is empty")
    if len(line) > MAX_TEXT:
        raise ProtocolError(f"{what} is longer than {MAX_TEXT} characters")
    bad = control_character(line)
    if bad is not None:  # the other member's terminal prints it
        raise ProtocolError(f"{what} holds the control or format character {bad}; plain text only")
    if looks_like_identity_number(line):
        raise ProtocolError(f"{what} looks like it holds an identity number; leave it out")
    return line


def _hex32(value: str, what: str) -> str:
    if _HEX32.fullmatch(value) is None:
        raise ProtocolError(f"{what} is not 32 lower-case hex digits")
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class NodeDispute:
    """One dispute as the node keeps it."""

    dispute_id: str
    requester: str
    round_id: str
    match_set: str
    person_id: str
    reason: str
    filed_at: str
    as_of: str
    purpose: str
    received_at: str
    status: str = "open"
    note: str = ""
    answered_at: str = ""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS disputes (
    dispute_id  TEXT PRIMARY KEY,
    requester   TEXT NOT NULL,
    round_id    TEXT NOT NULL,
    match_set   TEXT NOT NULL,
    person_id   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    filed_at    TEXT NOT NULL,
    as_of       TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    received_at TEXT NOT NULL,
    status      TEXT NOT NULL
                CHECK (status IN ('open', 'confirmed', 'corrected', 'withdrawn')),
    note        TEXT NOT NULL DEFAULT '',
    answered_at TEXT NOT NULL DEFAULT '',
    -- 1 once the node's protocol log has the dispute_answered entry
    logged      INTEGER NOT NULL DEFAULT 0
);
"""
_COLUMNS = (
    "dispute_id, requester, round_id, match_set, person_id, reason, filed_at, as_of, "
    "purpose, received_at, status, note, answered_at"
)


class DisputeStore:
    """The node's disputes in ``INBOX/disputes.sqlite``; one connection per use."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    @contextmanager
    def open(cls, config: NodeConfig) -> Iterator[DisputeStore]:
        """Open (creating it, 0600) the store of ``config``'s node.

        Raises:
            InputError: the file cannot be created or is not a dispute store.
        """
        path = inbox_dir(config) / "disputes.sqlite"
        try:
            private_file(path)
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise InputError(f"{path}: cannot open the dispute store ({exc})") from None
        try:
            conn.executescript(_SCHEMA)
            yield cls(conn, path)
        except sqlite3.DatabaseError as exc:
            # SQLite's own reason ("file is not a database"): it names no value
            reason = " ".join(str(exc).split()) or "unreadable"
            raise InputError(f"{path}: not a dispute store (SQLite says: {reason})") from None
        finally:
            conn.close()

    def get(self, dispute_id: str) -> NodeDispute | None:
        """The dispute ``dispute_id``, or ``None``."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM disputes WHERE dispute_id = ?", (dispute_id,)
        ).fetchone()
        return NodeDispute(*row) if row else None

    def add(self, dispute: NodeDispute) -> bool:
        """Record a new dispute; ``False`` if its id is already there (a retry)."""
        values = [getattr(dispute, name.strip()) for name in _COLUMNS.split(",")]
        cur = self._conn.execute(
            f"INSERT OR IGNORE INTO disputes ({_COLUMNS}) VALUES ({', '.join('?' * 13)})",
            values,
        )
        return cur.rowcount == 1

    def listing(self, *, status: str | None = "open") -> list[NodeDispute]:
        """Disputes with ``status`` (``None``: all), oldest first."""
        sql = f"SELECT {_COLUMNS} FROM disputes"
        params: tuple[str, ...] = ()
        if status is not None:
            sql, params = sql + " WHERE status = ?", (status,)
        rows = self._conn.execute(sql + " ORDER BY received_at, dispute_id", params).fetchall()
        return [NodeDispute(*row) for row in rows]

    def resolve(self, dispute_id: str, verdict: Verdict, note: str) -> NodeDispute:
        """Answer an open dispute.

        Raises:
            InputError: no such dispute, or it is not open any more.
        """
        found = self.get(dispute_id)
        if found is None:
            raise InputError(f"dispute {dispute_id}: not in {self.path}")
        if found.status != "open":
            raise InputError(f"dispute {dispute_id} is {found.status}, not open")
        self._conn.execute(
            "UPDATE disputes SET status = ?, note = ?, answered_at = ?, logged = 0 "
            "WHERE dispute_id = ? AND status = 'open'",
            (verdict, note, _now(), dispute_id),
        )
        answered = self.get(dispute_id)
        assert answered is not None
        return answered

    def withdraw(self, dispute_id: str) -> None:
        """Mark an open dispute withdrawn (answered ones keep their answer)."""
        self._conn.execute(
            "UPDATE disputes SET status = 'withdrawn', logged = 1 "
            "WHERE dispute_id = ? AND status = 'open'",
            (dispute_id,),
        )

    def unlogged_answers(self) -> list[NodeDispute]:
        """Answered disputes whose ``dispute_answered`` entry is not in the log yet."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM disputes WHERE logged = 0 "
            "AND status IN ('confirmed', 'corrected') ORDER BY answered_at"
        ).fetchall()
        return [NodeDispute(*row) for row in rows]

    def mark_logged(self, dispute_id: str) -> None:
        """The log has this dispute's answer."""
        self._conn.execute("UPDATE disputes SET logged = 1 WHERE dispute_id = ?", (dispute_id,))


def log_pending_answers(store: DisputeStore, audit: AuditSink, *, node: str) -> set[str]:
    """Write ``dispute_answered`` for each answer not yet logged.

    An answer whose entry the log refuses (a row changed outside ``xmatch node
    resolve``, say a note holding an identity number) is skipped with one line on
    stderr, so that it blocks none of the others; it stays unlogged and is never
    handed over. Returns the ids of the skipped ones.
    """
    skipped: set[str] = set()
    for item in store.unlogged_answers():
        fields: dict[str, object] = {
            "dispute_id": item.dispute_id,
            "requester": item.requester,
            "responder": node,
            "match_set": item.match_set,
            "verdict": item.status,
            "note": item.note,
        }
        try:
            check_fields("dispute_answered", fields)  # the log's own check, before writing
        except XmatchError as exc:  # its message names the field, never the value
            skipped.add(item.dispute_id)
            shown = item.dispute_id if _HEX32.fullmatch(item.dispute_id) else "(malformed id)"
            print(
                f"{node}: warning: dispute {shown}: the answer is not "
                f"handed over: {exc.diagnostics()} (the row in {store.path} was changed "
                "outside `xmatch node resolve`)",
                file=sys.stderr,
                flush=True,
            )
            continue
        audit.append("dispute_answered", **fields)
        store.mark_logged(item.dispute_id)
    return skipped


def _coordinator(peer: Peer) -> None:
    if peer.role != REQUESTER_ROLE:
        raise Refused(peer.name, "not a coordinator certificate")


def _dispute_from(config: NodeConfig, peer: Peer, request: pb.Dispute) -> NodeDispute:
    """Parse, then authorize one filing (the same checks as a round's for its set).

    Raises:
        ProtocolError: a malformed field (never quoting the identity number).
        Refused: the peer may not use the match set for the purpose.
    """
    _hex32(request.dispute_id, "dispute_id")
    _hex32(request.round_id, "round_id")
    try:
        person = normalize_id(request.person_id)
    except InvalidIdentifier as exc:
        raise ProtocolError(f"person_id is not a valid identity number ({exc.reason})") from None
    try:
        _dt.date.fromisoformat(request.as_of)
    except ValueError:
        raise ProtocolError("as_of is not a YYYY-MM-DD date") from None
    match_set = config.match_set(request.match_set)
    if match_set is None:
        raise Refused(peer.name, "no such match set")
    if request.purpose not in match_set.purposes_for(peer.name):
        raise Refused(peer.name, "purpose not allowed")
    return NodeDispute(
        dispute_id=request.dispute_id,
        requester=peer.name,
        round_id=request.round_id,
        match_set=match_set.name,
        person_id=person,
        reason=check_text(request.reason, "reason"),
        filed_at=check_text(request.filed_at, "filed_at"),
        as_of=request.as_of,
        purpose=request.purpose,
        received_at=_now(),
    )


def file_dispute(
    config: NodeConfig, audit: AuditSink, peer: Peer, request: pb.Dispute
) -> pb.DisputeReceipt:
    """``FileDispute``: store a new dispute and log ``dispute_filed``; a retry is a no-op.

    Raises:
        ProtocolError, Refused: see :func:`_dispute_from`; also a known id filed
            by another member.
        InputError: the store cannot be written.
    """
    _coordinator(peer)
    dispute = _dispute_from(config, peer, request)
    with DisputeStore.open(config) as store:
        known = store.get(dispute.dispute_id)
        if known is not None:
            if known.requester != peer.name:
                raise Refused(peer.name, "dispute id already used")
            return pb.DisputeReceipt(dispute_id=known.dispute_id, status=known.status)
        audit.append(
            "dispute_filed",
            dispute_id=dispute.dispute_id,
            round_id=dispute.round_id,
            requester=peer.name,
            responder=config.node.name,
            match_set=dispute.match_set,
            purpose=dispute.purpose,
            reason=dispute.reason,
        )
        store.add(dispute)
    return pb.DisputeReceipt(dispute_id=dispute.dispute_id, status="open")


def withdraw_dispute(
    config: NodeConfig, audit: AuditSink, peer: Peer, request: pb.DisputeWithdrawal
) -> pb.DisputeReceipt:
    """``WithdrawDispute``: an open dispute of the caller's becomes ``withdrawn``.

    Raises:
        ProtocolError: a malformed id or reason.
        Refused: not the caller's dispute (or none such).
    """
    _coordinator(peer)
    dispute_id = _hex32(request.dispute_id, "dispute_id")
    reason = check_text(request.reason or "withdrawn", "reason")
    with DisputeStore.open(config) as store:
        known = store.get(dispute_id)
        if known is None or known.requester != peer.name:
            raise Refused(peer.name, "no such dispute")
        if known.status == "open":
            audit.append(
                "dispute_withdrawn",
                dispute_id=dispute_id,
                requester=peer.name,
                responder=config.node.name,
                match_set=known.match_set,
                reason=reason,
            )
            store.withdraw(dispute_id)
            known = store.get(dispute_id) or known
    return pb.DisputeReceipt(dispute_id=dispute_id, status=known.status)


def dispute_answers(
    config: NodeConfig, audit: AuditSink, peer: Peer, request: pb.DisputeAnswersRequest
) -> pb.DisputeAnswerList:
    """``DisputeAnswers``: the answers to the caller's disputes named (open ones left out).

    Every answer is in the protocol log before it is returned.

    Raises:
        ProtocolError: a malformed id, or more than 10,000 of them.
    """
    _coordinator(peer)
    ids: Sequence[str] = request.dispute_ids
    if len(ids) > 10_000:
        raise ProtocolError("more than 10000 dispute ids in one request")
    for value in ids:
        _hex32(value, "dispute_ids")
    answers: list[pb.DisputeAnswer] = []
    with DisputeStore.open(config) as store:
        unlogged = log_pending_answers(store, audit, node=config.node.name)
        for value in ids:
            known = store.get(value)
            if known is None or known.requester != peer.name or known.status not in VERDICTS:
                continue
            if value in unlogged:  # never hand over an answer the log does not have
                continue
            answers.append(
                pb.DisputeAnswer(
                    dispute_id=known.dispute_id,
                    verdict=known.status,
                    note=known.note,
                    answered_at=known.answered_at,
                )
            )
    return pb.DisputeAnswerList(answers=answers)


def log_answers_at_start(config: NodeConfig, audit: AuditSink) -> None:
    """At node startup: log the answers given while the node was stopped (if any store)."""
    if not (inbox_dir(config) / "disputes.sqlite").exists():
        return
    with DisputeStore.open(config) as store:
        log_pending_answers(store, audit, node=config.node.name)
