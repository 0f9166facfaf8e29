"""Appending to a party's protocol log (format: :mod:`audit.format`).

One :class:`AuditLog` per party and file. It is thread-safe (a node serves rounds
concurrently), holds an exclusive ``flock`` on the file so that no second process
appends to it, writes each entry with one ``write`` on an ``O_APPEND`` descriptor and
``fsync``s it before returning. Every ``checkpoint_every`` entries, and on
:meth:`AuditLog.close`, it appends a checkpoint signed with the party's
:class:`keys.handles.AuditSigner`.

Reopening an existing log continues its chain. The tail (from the last checkpoint
on) is verified first, so that a damaged log is never silently extended; its
checkpoint must have been signed by the same audit key the log is reopened with,
so that the party's key never comes to vouch (through the next checkpoint) for
entries someone else signed. After a key is re-issued, start a new log file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import fcntl
import hmac
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from audit import format as fmt
from audit.gm import GmAuditSigner
from audit.verify import parse_line, verify_checkpoint_signature
from keys.certs import check_name
from keys.handles import AuditSigner
from psi.errors import InputError, ProtocolError, VerificationError, XmatchError

Clock = Callable[[], _dt.datetime]


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def rfc3339(when: _dt.datetime) -> str:
    """``when`` as RFC 3339 UTC with microseconds and a ``Z``.

    Raises:
        XmatchError: ``when`` is naive (no time zone).
    """
    if when.tzinfo is None:
        raise XmatchError("log timestamps need an aware datetime")
    return when.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read_tail(fd: int, size: int) -> list[bytes]:
    """The complete lines from the last checkpoint line to the end (all lines if none)."""
    block = 65536
    pos = size
    buf = b""
    while pos > 0:
        step = min(block, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        lines = buf.split(b"\n")
        if pos > 0:
            lines = lines[1:]  # the first piece may be a partial line
        for index in range(len(lines) - 1, -1, -1):
            if b'"event":"checkpoint"' in lines[index]:
                return lines[index:]
    return buf.split(b"\n")


class AuditLog:
    """An open, append-only protocol log. Build it with :meth:`AuditLog.open`."""

    def __init__(
        self,
        token: object,
        *,
        path: Path,
        fd: int,
        party: str,
        signer: AuditSigner | GmAuditSigner,
        checkpoint_every: int,
        next_seq: int,
        prev: str,
        since_checkpoint: int,
        clock: Clock,
    ) -> None:
        if token is not _TOKEN:
            raise TypeError("use AuditLog.open()")
        self.path = path
        self.party = party
        self._fd: int | None = fd
        self._signer = signer
        # the GM profile (audit/gm.py) chains with SM3; its signer says so
        self._profile = _profile(signer)
        self._every = checkpoint_every
        self._seq = next_seq
        self._prev = prev
        self._since = since_checkpoint
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        party: str,
        signer: AuditSigner | GmAuditSigner,
        checkpoint_every: int = 64,
        clock: Clock = _utc_now,
    ) -> AuditLog:
        """Open (creating it, mode 0600) the log at ``path`` for appending as ``party``.

        ``signer`` must be ``party``'s audit key. ``clock`` returns aware datetimes
        (injected for tests).

        Raises:
            InputError: bad arguments, the file cannot be opened, or another process
                holds it open.
            VerificationError: the existing tail does not verify, belongs to
                another party, or its checkpoint was signed by another key than
                ``signer``'s.
            ProtocolError: the existing tail is malformed (for example a partial
                last line after a crash): run ``xmatch audit verify`` on it.
        """
        check_name(party)
        if signer.name != party:
            raise InputError(f"audit key belongs to {signer.name!r}, not to log party {party!r}")
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise InputError("checkpoint_every must be a positive integer")
        path = Path(path)
        existed = path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InputError(f"protocol log {path}: cannot open ({exc.strerror})") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise InputError(f"protocol log {path} is in use by another process") from None
            size = os.fstat(fd).st_size
            next_seq, prev, since = 1, fmt.genesis(_profile(signer)), 0
            if size:
                next_seq, prev, since = cls._resume(path, fd, size, party, signer)
            elif not existed:
                dfd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except BaseException:
            os.close(fd)
            raise
        return cls(
            _TOKEN,
            path=path,
            fd=fd,
            party=party,
            signer=signer,
            checkpoint_every=checkpoint_every,
            next_seq=next_seq,
            prev=prev,
            since_checkpoint=since,
            clock=clock,
        )

    @staticmethod
    def _resume(
        path: Path, fd: int, size: int, party: str, signer: AuditSigner | GmAuditSigner
    ) -> tuple[int, str, int]:
        """Verify the tail and return (next seq, prev hash, entries since the checkpoint).

        The tail's checkpoint is checked without a CA (the writer has none), so it is
        accepted only if ``signer``'s own key made it: any other key, even one with a
        certificate in the party's name, is refused rather than trusted.
        """
        profile = _profile(signer)
        lines = _read_tail(fd, size)
        if lines[-1] != b"":
            raise ProtocolError(
                f"protocol log {path} ends with a partial line: verify and repair it first"
            )
        lines = lines[:-1]
        expected_prev: str | None = None
        expected_seq: int | None = None
        since = 0
        for offset, raw in enumerate(lines):
            try:
                entry = parse_line(raw, line=0)
            except ProtocolError as exc:
                raise ProtocolError(
                    f"protocol log {path}: tail entry {offset + 1} from the end: {exc}"
                ) from exc
            where = f"protocol log {path}, entry {entry.seq}"
            if entry.party != party:
                raise VerificationError(f"{where}: written by {entry.party!r}, not {party!r}")
            if expected_seq is not None and entry.seq != expected_seq:
                raise VerificationError(f"{where}: expected seq {expected_seq}")
            if expected_prev is not None and entry.prev != expected_prev:
                raise VerificationError(
                    f"{where}: prev {entry.prev} != hash of the entry before, {expected_prev}"
                )
            if offset == 0 and entry.event == fmt.CHECKPOINT:
                try:
                    verify_checkpoint_signature(entry, ca_pem=None)
                except VerificationError as exc:
                    raise VerificationError(f"{where}: {exc}") from exc
                key_id = entry.fields.get("key_id")
                if not isinstance(key_id, str) or not hmac.compare_digest(
                    key_id.encode(), signer.key_id.encode()
                ):
                    raise VerificationError(
                        f"{where}: the last checkpoint was signed by key {key_id!s:.16}…, "
                        f"not by this audit key {signer.key_id[:16]}…; if the key was "
                        "re-issued, start a new log file and keep this one for reviewers"
                    )
            elif offset == 0 and (entry.seq != 1 or entry.prev != fmt.genesis(profile)):
                raise VerificationError(f"{where}: the log has no checkpoint and no genesis entry")
            else:
                since += 1
            expected_seq = entry.seq + 1
            expected_prev = fmt.line_hash(raw, profile)
        if expected_seq is None or expected_prev is None:
            raise ProtocolError(f"protocol log {path} has no complete entry")
        return expected_seq, expected_prev, since

    def append(self, event: str, **fields: object) -> int:
        """Append one entry, fsync it, and return its seq.

        Field values: str, int, float (rounded to 6 decimals), bool, None, or a list
        of those. See :mod:`audit.format` for the events and their fields.

        Raises:
            audit.format.IdentityLeak: a value looks like an identity number (nothing
                is written).
            XmatchError: unknown event, missing or malformed field, or the log is closed.
            OSError: the write or fsync failed (the round must not proceed).
        """
        return self.append_anchored(event, **fields)[0]

    def append_anchored(self, event: str, **fields: object) -> tuple[int, str]:
        """:meth:`append`, also returning the hex SHA-256 of the entry's line.

        A node hands this anchor (seq, line hash) of its ``round_finished`` entry to the
        requester, which logs it; a reviewer can then tell when the node's log lost
        entries after its last checkpoint (reconcile), which no signature here can show.

        Raises:
            the same as :meth:`append`.
        """
        checked = fmt.check_fields(event, fields)
        with self._lock:
            seq = self._write(event, checked)
            anchor = self._prev  # hash of the line just written, before any checkpoint
            self._since += 1
            if self._since >= self._every:
                self._checkpoint()
            return seq, anchor

    def checkpoint(self) -> int:
        """Append a signed checkpoint now (if anything is unsigned) and return the last seq.

        Raises:
            XmatchError: the log is closed.
        """
        with self._lock:
            if self._since:
                self._checkpoint()
            return self._seq - 1

    def close(self) -> None:
        """Sign everything written so far with a final checkpoint, and close. Idempotent."""
        with self._lock:
            if self._fd is None:
                return
            try:
                if self._since:
                    self._checkpoint()
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._fd is None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> NoReturn:
        raise TypeError("AuditLog cannot be pickled")

    def _header(self, event: str) -> dict[str, object]:
        return {
            "seq": self._seq,
            "ts": rfc3339(self._clock()),
            "party": self.party,
            "event": event,
            "prev": self._prev,
        }

    def _write(self, event: str, fields: dict[str, fmt.Value]) -> int:
        entry = self._header(event)
        entry.update(fields)
        return self._write_line(fmt.encode_entry(entry))

    def _checkpoint(self) -> None:
        entry = self._header(fmt.CHECKPOINT)
        entry.update(
            covers=self._seq - 1,
            head=self._prev,
            key_id=self._signer.key_id,
            cert=base64.b64encode(self._signer.certificate_der()).decode(),
        )
        # GM profile: the SM2 key and its binding (audit/gm.py), before the signature
        if isinstance(self._signer, GmAuditSigner):
            entry.update(self._signer.checkpoint_fields())
        unsigned = fmt.encode_entry(entry)
        sig = self._signer.sign(fmt.checkpoint_message(unsigned))
        self._write_line(fmt.attach_signature(unsigned, base64.b64encode(sig).decode()))
        self._since = 0

    def _write_line(self, line: bytes) -> int:
        if self._fd is None:
            raise XmatchError(f"protocol log {self.path} is closed")
        if len(line) >= fmt.MAX_LINE:
            raise XmatchError(f"protocol log entry of {len(line)} bytes is too long")
        data = memoryview(line + b"\n")
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)
        seq = self._seq
        self._seq += 1
        self._prev = fmt.line_hash(line, self._profile)
        return seq


_TOKEN = object()


def _profile(signer: AuditSigner | GmAuditSigner) -> str:
    return "gm" if isinstance(signer, GmAuditSigner) else "international"
