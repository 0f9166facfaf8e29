"""Work lists received from the coordinator (notice 四(一)): the store and the RPC handler.

After a round, civil affairs sends each service department the list it must
act on (``ShareList``: newly enrolled children, the coverage gaps of the
department's own set, exits). The node keeps each list for its operator as
``INBOX/lists/SHARE_ID.csv`` (mode 0600, UTF-8 with BOM so spreadsheet software
opens it, identity numbers as text) beside ``SHARE_ID.json`` (what the list is:
round, list, purpose, sender, columns, row count, when it arrived). Both are
written atomically. ``xmatch node lists`` shows them.

The protocol log gets one ``list_shared`` entry per list: who sent it, which
list, for which purpose, how many rows and which columns; never a cell.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from nodes.auth import Peer
from nodes.authorization import REQUESTER_ROLE
from nodes.config import NodeConfig
from nodes.disputes import check_text, inbox_dir
from proto import xmatch_pb2 as pb
from psi.errors import InputError, ProtocolError, Refused
from runtime.files import private_folders, write_atomic

__all__ = ["LISTS", "MAX_ROWS", "ReceivedList", "read_lists", "receive_work_list"]

#: the lists a department can receive
LISTS = ("enrolled", "gaps", "exits")
#: largest list accepted, in rows
MAX_ROWS = 2_000_000
_HEX32 = re.compile(r"[0-9a-f]{32}")
_COLUMN = re.compile(r"[a-z][a-z0-9_]{0,63}")


class AuditSink(Protocol):
    """What the handler needs of :class:`audit.log.AuditLog`."""

    def append(self, event: str, **fields: object) -> int: ...


@dataclass(frozen=True)
class ReceivedList:
    """The description of one stored list (``SHARE_ID.json``)."""

    share_id: str
    round_id: str
    list: str
    purpose: str
    requester: str
    columns: tuple[str, ...]
    rows: int
    as_of: str
    source: str
    received_at: str
    file: str


def _header(part: pb.WorkList) -> tuple[object, ...]:
    return (
        part.share_id,
        part.round_id,
        part.list,
        part.purpose,
        tuple(part.columns),
        part.as_of,
        part.source,
        part.total_rows,
    )


def _check_header(part: pb.WorkList) -> None:
    """Raises ProtocolError on a malformed header field (never quoting a cell)."""
    if _HEX32.fullmatch(part.share_id) is None:
        raise ProtocolError("share_id is not 32 lower-case hex digits")
    if _HEX32.fullmatch(part.round_id) is None:
        raise ProtocolError("round_id is not 32 lower-case hex digits")
    if part.list not in LISTS:
        raise ProtocolError(f"list must be one of {', '.join(LISTS)}")
    check_text(part.purpose, "purpose")
    if not part.columns or any(_COLUMN.fullmatch(c) is None for c in part.columns):
        raise ProtocolError("columns must be names of [a-z][a-z0-9_]*")
    if len(set(part.columns)) != len(part.columns):
        raise ProtocolError("a column is named twice")
    if part.total_rows > MAX_ROWS:
        raise ProtocolError(f"a list has at most {MAX_ROWS} rows")
    try:
        _dt.date.fromisoformat(part.as_of)
    except ValueError:
        raise ProtocolError("as_of is not a YYYY-MM-DD date") from None


def _collect(parts: Iterable[pb.WorkList]) -> tuple[pb.WorkList, list[list[str]]]:
    """The first part (the header) and every row, checked against the header."""
    first: pb.WorkList | None = None
    rows: list[list[str]] = []
    for part in parts:
        if first is None:
            _check_header(part)
            first = part
        elif _header(part) != _header(first):
            raise ProtocolError("a part of the list has another header than the first")
        width = len(first.columns)
        for row in part.rows:
            if len(row.values) != width:
                raise ProtocolError(f"a row has {len(row.values)} cells, not {width}")
            rows.append(list(row.values))
        if len(rows) > first.total_rows:
            raise ProtocolError("more rows than total_rows")
    if first is None:
        raise ProtocolError("empty work-list stream")
    if len(rows) != first.total_rows:
        raise ProtocolError(f"{len(rows)} rows received, total_rows says {first.total_rows}")
    return first, rows


def _csv_bytes(columns: list[str], rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return ("\ufeff" + text.getvalue()).encode("utf-8")


def receive_work_list(
    config: NodeConfig, audit: AuditSink, peer: Peer, parts: Iterable[pb.WorkList]
) -> pb.ShareReceipt:
    """``ShareList``: store one list for the operator and log ``list_shared``.

    A list sent again with the same share id replaces nothing and is logged once.

    Raises:
        Refused: the peer is not a coordinator.
        ProtocolError: a malformed or inconsistent stream.
        InputError: the list cannot be written.
    """
    if peer.role != REQUESTER_ROLE:
        raise Refused(peer.name, "not a coordinator certificate")
    first, rows = _collect(parts)
    folder = inbox_dir(config) / "lists"
    described = folder / f"{first.share_id}.json"
    if described.exists():
        return pb.ShareReceipt(share_id=first.share_id, rows=len(rows))
    meta = ReceivedList(
        share_id=first.share_id,
        round_id=first.round_id,
        list=first.list,
        purpose=" ".join(first.purpose.split()),
        requester=peer.name,
        columns=tuple(first.columns),
        rows=len(rows),
        as_of=first.as_of,
        source=first.source,
        received_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        file=f"{first.share_id}.csv",
    )
    try:
        private_folders(folder)
        write_atomic(folder / meta.file, _csv_bytes(list(meta.columns), rows))
        audit.append(
            "list_shared",
            share_id=meta.share_id,
            round_id=meta.round_id,
            requester=peer.name,
            responder=config.node.name,
            list=meta.list,
            purpose=meta.purpose,
            rows=meta.rows,
            columns=list(meta.columns),
        )
        write_atomic(described, json.dumps(asdict(meta), ensure_ascii=False).encode())
    except OSError as exc:
        raise InputError(f"{folder}: cannot store the work list ({exc.strerror})") from None
    return pb.ShareReceipt(share_id=meta.share_id, rows=meta.rows)


def read_lists(config: NodeConfig) -> list[tuple[ReceivedList, Path]]:
    """Every stored list (its description and its CSV file), oldest first.

    Raises:
        InputError: a description file is unreadable (named).
    """
    folder = inbox_dir(config) / "lists"
    found: list[tuple[ReceivedList, Path]] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            meta = ReceivedList(**{**raw, "columns": tuple(raw["columns"])})
        except (OSError, ValueError, TypeError, KeyError):
            raise InputError(f"{path}: not a work-list description") from None
        found.append((meta, folder / meta.file))
    found.sort(key=lambda item: item[0].received_at)
    return found
