"""The coordinator's round state in SQLite.

One row per round (``rounds``) and one per (node, match set) query of that
round (``sub_rounds``). The database runs in WAL mode and every state change
is one transaction, so a coordinator killed at any point leaves a consistent
file: the round it was running stays ``running`` with the killer's pid, and
the next :meth:`RoundState.open` marks it ``interrupted``.

Nothing here holds an identity number or a payload value: names, counts,
timings, transcript hashes, the nodes' log anchors (a sequence number and a
line hash) and one-line reasons only.
"""

from __future__ import annotations

import datetime as _dt
import os
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from psi.errors import InputError
from runtime.files import private_folders

__all__ = [
    "RoundDecisionCounts",
    "RoundRecord",
    "RoundState",
    "RoundStatus",
    "SubRoundRecord",
    "SubRoundStatus",
    "pid_alive",
]

RoundStatus = Literal["running", "completed", "failed", "interrupted"]
SubRoundStatus = Literal["pending", "running", "completed", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    round_id    TEXT PRIMARY KEY,
    as_of       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL
                CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
    out_dir     TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    detail      TEXT
);
CREATE TABLE IF NOT EXISTS sub_rounds (
    round_id   TEXT NOT NULL REFERENCES rounds(round_id),
    node       TEXT NOT NULL,
    match_set  TEXT NOT NULL,
    protocol   TEXT NOT NULL,
    status     TEXT NOT NULL
               CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    matches    INTEGER,
    seconds    REAL,
    transcript TEXT,
    detail     TEXT,
    node_log_seq  INTEGER,
    node_log_head TEXT,
    PRIMARY KEY (round_id, node, match_set)
);
CREATE INDEX IF NOT EXISTS rounds_status ON rounds(status);
CREATE TABLE IF NOT EXISTS offline_rounds (
    round_id  TEXT PRIMARY KEY REFERENCES rounds(round_id),
    status    TEXT NOT NULL CHECK (status IN ('waiting', 'completed', 'closed')),
    pending   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS offline_sub_rounds (
    round_id        TEXT NOT NULL REFERENCES rounds(round_id),
    node            TEXT NOT NULL,
    match_set       TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('waiting', 'imported', 'closed')),
    request_file    TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    expires         TEXT NOT NULL,
    response_id     TEXT UNIQUE,
    response_sha256 TEXT,
    PRIMARY KEY (round_id, node, match_set)
);
CREATE TABLE IF NOT EXISTS round_decisions (
    round_id  TEXT NOT NULL REFERENCES rounds(round_id),
    decision  TEXT NOT NULL,
    children  INTEGER NOT NULL,
    PRIMARY KEY (round_id, decision)
);
"""

#: Columns added to ``sub_rounds`` after its first version; :meth:`RoundState.open`
#: adds them to an older database.
_ADDED_COLUMNS = (("node_log_seq", "INTEGER"), ("node_log_head", "TEXT"))


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RoundRecord:
    """One row of ``rounds``."""

    round_id: str
    as_of: str
    started_at: str
    finished_at: str | None
    status: RoundStatus
    out_dir: str
    pid: int
    detail: str | None


@dataclass(frozen=True)
class SubRoundRecord:
    """One row of ``sub_rounds``; ``transcript`` is hex.

    ``node_log_seq``/``node_log_head``: the node's log anchor from its
    ``RoundDone`` (the seq and hex SHA-256 of its ``round_finished`` line),
    ``None`` when the node sent none or the sub-round did not complete.
    """

    round_id: str
    node: str
    match_set: str
    protocol: str
    status: SubRoundStatus
    matches: int | None
    seconds: float | None
    transcript: str | None
    detail: str | None
    node_log_seq: int | None = None
    node_log_head: str | None = None


@dataclass(frozen=True)
class RoundDecisionCounts:
    """How many children got each decision in one round."""

    round_id: str
    as_of: str
    counts: dict[str, int]


class RoundState:
    """Round state of one coordinator; safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        #: Round ids that :meth:`open` marked ``interrupted``.
        self.recovered: list[str] = []

    @classmethod
    def open(cls, path: Path) -> RoundState:
        """Open (creating if needed) the state database at ``path``.

        Rounds left ``running`` by a coordinator process that no longer
        exists are marked ``interrupted`` (listed in :attr:`recovered`).

        Raises:
            InputError: the file cannot be created or is not a state database.
        """
        try:
            private_folders(path.parent)
            # 0600 before SQLite opens it: its -wal and -shm files take the database's mode
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(sub_rounds)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE sub_rounds ADD COLUMN {name} {kind}")
        except (OSError, sqlite3.DatabaseError) as exc:
            raise InputError(f"{path}: cannot open the coordinator state ({exc})") from None
        state = cls(conn, path)
        state.recovered = state.mark_interrupted()
        return state

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RoundState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, params: tuple[object, ...]) -> int:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(sql, params)
                count = cur.rowcount
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            return count

    def mark_interrupted(self) -> list[str]:
        """Mark ``running`` rounds of dead coordinator processes ``interrupted``.

        Their sub-rounds still ``pending`` or ``running`` become ``failed``
        with the detail ``interrupted: coordinator stopped``.
        """
        with self._lock:  # a round waiting for offline responses has no process to lose
            rows = self._conn.execute(
                "SELECT round_id, pid FROM rounds WHERE status = 'running' AND round_id NOT IN "
                "(SELECT round_id FROM offline_rounds WHERE status = 'waiting')"
            ).fetchall()
        stale = [rid for rid, pid in rows if pid != os.getpid() and not pid_alive(int(pid))]
        for rid in stale:
            with self._lock:
                cur = self._conn.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    cur.execute(
                        "UPDATE rounds SET status = 'interrupted', finished_at = ?, "
                        "detail = 'coordinator stopped while the round was running' "
                        "WHERE round_id = ? AND status = 'running'",
                        (_now(), rid),
                    )
                    cur.execute(
                        "UPDATE sub_rounds SET status = 'failed', "
                        "detail = 'interrupted: coordinator stopped' "
                        "WHERE round_id = ? AND status IN ('pending', 'running')",
                        (rid,),
                    )
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
        return stale

    def start_round(
        self,
        round_id: str,
        *,
        as_of: _dt.date,
        out_dir: Path,
        sub_rounds: list[tuple[str, str, str]],
    ) -> None:
        """Record a new ``running`` round and its ``pending`` sub-rounds
        ``(node, match_set, protocol)``, in one transaction."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "INSERT INTO rounds (round_id, as_of, started_at, status, out_dir, pid) "
                    "VALUES (?, ?, ?, 'running', ?, ?)",
                    (round_id, as_of.isoformat(), _now(), str(out_dir), os.getpid()),
                )
                cur.executemany(
                    "INSERT INTO sub_rounds (round_id, node, match_set, protocol, status) "
                    "VALUES (?, ?, ?, ?, 'pending')",
                    [(round_id, n, s, p) for n, s, p in sub_rounds],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def sub_round_running(self, round_id: str, node: str, match_set: str) -> None:
        """Mark a sub-round ``running``."""
        self._write(
            "UPDATE sub_rounds SET status = 'running' "
            "WHERE round_id = ? AND node = ? AND match_set = ?",
            (round_id, node, match_set),
        )

    def finish_sub_round(
        self,
        round_id: str,
        node: str,
        match_set: str,
        *,
        status: Literal["completed", "failed"],
        matches: int | None,
        seconds: float,
        transcript: bytes | None,
        detail: str | None,
        node_log_seq: int | None = None,
        node_log_head: str | None = None,
    ) -> None:
        """Record the end of a sub-round (with the node's log anchor, if it sent one)."""
        self._write(
            "UPDATE sub_rounds SET status = ?, matches = ?, seconds = ?, transcript = ?, "
            "detail = ?, node_log_seq = ?, node_log_head = ? "
            "WHERE round_id = ? AND node = ? AND match_set = ?",
            (
                status,
                matches,
                round(seconds, 3),
                transcript.hex() if transcript is not None else None,
                detail,
                node_log_seq,
                node_log_head,
                round_id,
                node,
                match_set,
            ),
        )

    def fail_open_sub_rounds(self, round_id: str, *, detail: str) -> int:
        """Mark the round's sub-rounds still ``pending`` or ``running`` ``failed``
        (a round stopped by Ctrl-C or a fatal error); returns how many."""
        return self._write(
            "UPDATE sub_rounds SET status = 'failed', detail = ? "
            "WHERE round_id = ? AND status IN ('pending', 'running')",
            (detail, round_id),
        )

    def finish_round(
        self,
        round_id: str,
        *,
        status: Literal["completed", "failed", "interrupted"],
        detail: str | None = None,
    ) -> None:
        """Record the end of a round."""
        self._write(
            "UPDATE rounds SET status = ?, finished_at = ?, detail = ? WHERE round_id = ?",
            (status, _now(), detail, round_id),
        )

    def record_decisions(self, round_id: str, counts: Mapping[str, int]) -> None:
        """Record how many children got each decision in a round (for the report's history)."""
        rows = [(round_id, str(d), int(n)) for d, n in sorted(counts.items())]
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(
                    "INSERT OR REPLACE INTO round_decisions (round_id, decision, children) "
                    "VALUES (?, ?, ?)",
                    rows,
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def decision_history(
        self, *, current: str | None = None, limit: int = 12
    ) -> list[RoundDecisionCounts]:
        """Decision counts of the last ``limit`` completed rounds, and of ``current``.

        Oldest first; rounds without recorded counts (older versions) are left out.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT r.round_id, r.as_of, d.decision, d.children FROM rounds r "
                "JOIN round_decisions d ON d.round_id = r.round_id "
                "WHERE r.status = 'completed' OR r.round_id = ? "
                "ORDER BY r.started_at, r.rowid",
                (current,),
            ).fetchall()
        found: dict[str, RoundDecisionCounts] = {}
        for round_id, as_of, decision, children in rows:
            entry = found.setdefault(round_id, RoundDecisionCounts(round_id, as_of, {}))
            entry.counts[decision] = children
        return list(found.values())[-limit:]

    def get_round(self, round_id: str) -> RoundRecord | None:
        """The round with this id, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT round_id, as_of, started_at, finished_at, status, out_dir, pid, detail "
                "FROM rounds WHERE round_id = ?",
                (round_id,),
            ).fetchone()
        return RoundRecord(*row) if row else None

    def rounds(self) -> list[RoundRecord]:
        """Every round, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT round_id, as_of, started_at, finished_at, status, out_dir, pid, detail "
                "FROM rounds ORDER BY started_at, rowid"
            ).fetchall()
        return [RoundRecord(*r) for r in rows]

    def sub_rounds(self, round_id: str) -> list[SubRoundRecord]:
        """The sub-rounds of a round, in configuration order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT round_id, node, match_set, protocol, status, matches, seconds, "
                "transcript, detail, node_log_seq, node_log_head "
                "FROM sub_rounds WHERE round_id = ? ORDER BY rowid",
                (round_id,),
            ).fetchall()
        return [SubRoundRecord(*r) for r in rows]

    # -- offline sub-rounds (coordinator/offline.py, docs/offline.md) ----------------------

    def wait_offline(
        self, round_id: str, *, pending: Path, requests: list[tuple[str, str, str, str, str]]
    ) -> None:
        """Record that a round waits for offline responses: its sealed pending state,
        and each ``(node, match_set, request_file, request_sha256, expires)``."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "INSERT INTO offline_rounds (round_id, status, pending) "
                    "VALUES (?, 'waiting', ?)",
                    (round_id, str(pending)),
                )
                cur.executemany(
                    "INSERT INTO offline_sub_rounds (round_id, node, match_set, status, "
                    "request_file, request_sha256, expires) VALUES (?, ?, ?, 'waiting', ?, ?, ?)",
                    [(round_id, *r) for r in requests],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def offline_round(self, round_id: str) -> tuple[str, Path] | None:
        """``(status, pending file)`` of an offline round, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT status, pending FROM offline_rounds WHERE round_id = ?", (round_id,)
            ).fetchone()
        return (str(row[0]), Path(row[1])) if row else None

    def offline_sub_rounds(self, round_id: str) -> list[tuple[str, str, str, str | None]]:
        """``(node, match_set, status, response_sha256)`` of a round's offline sub-rounds."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT node, match_set, status, response_sha256 FROM offline_sub_rounds "
                "WHERE round_id = ? ORDER BY rowid",
                (round_id,),
            ).fetchall()
        return [(str(a), str(b), str(c), d) for a, b, c, d in rows]

    def response_imported(self, response_id: str) -> str | None:
        """The round a response file (by its id) was imported into, or ``None`` (replay)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT round_id FROM offline_sub_rounds WHERE response_id = ?", (response_id,)
            ).fetchone()
        return str(row[0]) if row else None

    def import_offline(
        self, round_id: str, node: str, *, response_id: str, response_sha256: str
    ) -> None:
        """Mark the node's waiting sub-rounds of a round imported from one response file."""
        self._write(
            "UPDATE offline_sub_rounds SET status = 'imported', response_id = ?, "
            "response_sha256 = ? WHERE round_id = ? AND node = ? AND status = 'waiting' "
            "AND match_set = (SELECT match_set FROM offline_sub_rounds WHERE round_id = ? "
            "AND node = ? AND status = 'waiting' ORDER BY rowid LIMIT 1)",
            (response_id, response_sha256, round_id, node, round_id, node),
        )
        self._write(
            "UPDATE offline_sub_rounds SET status = 'imported', response_sha256 = ? "
            "WHERE round_id = ? AND node = ? AND status = 'waiting'",
            (response_sha256, round_id, node),
        )

    def end_offline(self, round_id: str, status: Literal["completed", "closed"]) -> None:
        """The offline round stops waiting; sub-rounds still waiting become ``closed``."""
        self._write(
            "UPDATE offline_sub_rounds SET status = 'closed' "
            "WHERE round_id = ? AND status = 'waiting'",
            (round_id,),
        )
        self._write("UPDATE offline_rounds SET status = ? WHERE round_id = ?", (status, round_id))
