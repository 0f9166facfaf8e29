"""``xmatch round share``: each service department's work lists after a round (notice 四(一)).

For each ``[[shares]]`` entry of coordinator.toml (or the one ``--department``
names) and each list configured for it:

- ``enrolled``: the children the round enrols (``ENROL``), so that 医保, 教育
  and 妇联 start their services;
- ``gaps``: the covered children the department's own service set did not
  match (the round's ``coverage_gaps`` of ``DEPT/SET``; 应保尽保, 控辍保学);
- ``exits``: the children whose support stops (``EXIT``), so that a service
  tied to the status can stop.

Rows come from the round's ``decisions.json`` (and the roster, for
``region_code``), with only the columns configured for the department; the
list travels over the node's ``ShareList`` RPC in parts of at most
:data:`PART_BYTES`. Both protocol logs get one ``list_shared`` entry per list
(who, which list, purpose, rows, columns), never a cell. A department without
a ``[[shares]]`` entry, or a list not configured for it, is refused before
anything is sent.

An offline department (``transport = "offline"``) gets each list whole, as one
:class:`proto.xmatch_pb2.WorkList` in a sealed inbox file (``--offline-dir``;
:mod:`coordinator.dispute_offline`), and ``list_shared`` is logged when it is written.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

from coordinator import exit_codes
from coordinator.config import CoordinatorConfig, load_coordinator_config
from coordinator.dispute_offline import write_inbox
from coordinator.node_link import call, coordinator_log, coordinator_tls, node_entry, stub
from coordinator.records import read_roster_source
from coordinator.share_config import SHARE_LISTS, ShareEntry
from coordinator.state import RoundState
from proto import xmatch_pb2 as pb
from psi.errors import InputError, PeerError, Refused

__all__ = ["PART_BYTES", "WorkListData", "build_lists", "share_command"]

#: largest serialized part of a list on the wire (far below gRPC's 4 MiB)
PART_BYTES = 512 * 1024


@dataclass(frozen=True)
class WorkListData:
    """One list for one department, before it is framed."""

    department: str
    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    #: gaps: the ``node/set``; empty otherwise
    source: str = ""


def _sex(child_id: str | None) -> str:
    if not child_id or len(child_id) != 18:
        return ""
    return "M" if int(child_id[16]) % 2 else "F"


def _cell(entry: dict[str, object], column: str, regions: dict[str, str]) -> str:
    child_id = entry.get("child_id")
    cid = child_id if isinstance(child_id, str) else None
    if column == "child_birth_date":
        given = entry.get("child_birth_date")
        if isinstance(given, str):
            return given
        if cid and len(cid) == 18:  # canonical: YYYYMMDD at positions 7-14
            return f"{cid[6:10]}-{cid[10:12]}-{cid[12:14]}"
        return ""
    if column == "child_sex":
        return _sex(cid)
    if column == "region_code":
        return regions.get(cid or "", "")
    value = entry.get(column)
    return "" if value is None else str(value)


def _gap_sources(share: ShareEntry, document: dict[str, object]) -> list[str]:
    gaps = document.get("coverage_gaps")
    known = sorted(gaps) if isinstance(gaps, dict) else []
    if share.gap_sets is None:
        return [s for s in known if s.startswith(f"{share.department}/")]
    return [f"{share.department}/{name}" for name in share.gap_sets]


def build_lists(
    share: ShareEntry,
    document: dict[str, object],
    *,
    regions: dict[str, str],
    lists: Sequence[str] | None = None,
) -> list[WorkListData]:
    """The department's lists from a round's decisions.json ``document``.

    Raises:
        Refused: a list is asked for that is not configured for the department.
        InputError: a configured gap set has no gap list in the round (it failed,
            or is not a coverage set of this department).
    """
    wanted = list(lists) if lists else list(share.lists)
    for name in wanted:
        if name not in share.lists:
            raise Refused(share.department, f"list {name!r} is not configured for it")
    raw = document.get("decisions")
    entries = [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []
    by_id = {e["child_id"]: e for e in entries if isinstance(e.get("child_id"), str)}
    columns = tuple(share.columns)

    def rows(chosen: list[dict[str, object]]) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(_cell(e, c, regions) for c in columns) for e in chosen)

    out: list[WorkListData] = []
    for name in (n for n in SHARE_LISTS if n in wanted):
        if name == "gaps":
            gaps = document.get("coverage_gaps")
            table = gaps if isinstance(gaps, dict) else {}
            for source in _gap_sources(share, document):
                if source not in table:
                    raise InputError(f"shares: the round has no coverage-gap list of {source}")
                chosen = [by_id[c] for c in table[source] if c in by_id]
                out.append(WorkListData(share.department, name, columns, rows(chosen), source))
            continue
        decision = "ENROL" if name == "enrolled" else "EXIT"
        chosen = [e for e in entries if e.get("decision") == decision]
        out.append(WorkListData(share.department, name, columns, rows(chosen)))
    return out


def parts(
    data: WorkListData, *, share_id: str, round_id: str, as_of: str, purpose: str
) -> Iterator[pb.WorkList]:
    """The list as WorkList messages of at most about :data:`PART_BYTES` each."""

    def head() -> pb.WorkList:
        return pb.WorkList(
            share_id=share_id,
            round_id=round_id,
            list=data.name,
            purpose=purpose,
            columns=list(data.columns),
            as_of=as_of,
            source=data.source,
            total_rows=len(data.rows),
        )

    part, size = head(), 0
    for row in data.rows:
        message = pb.WorkListRow(values=list(row))
        part.rows.append(message)
        size += message.ByteSize() + 4
        if size >= PART_BYTES:
            yield part
            part, size = head(), 0
    if part.rows or not data.rows:
        yield part


def _round_document(config: CoordinatorConfig, round_id: str) -> tuple[str, str, dict[str, object]]:
    """(round id, as_of, decisions.json) of a completed round.

    Raises:
        InputError: no such round, not completed, or its decisions.json is unreadable.
    """
    with RoundState.open(config.coordinator.state) as state:
        record = state.get_round(round_id.strip().lower())
    if record is None:
        raise InputError(f"round {round_id}: not in {config.coordinator.state}")
    if record.status != "completed":
        raise InputError(f"round {record.round_id} is {record.status}, not completed")
    path = Path(record.out_dir) / "decisions.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"round {record.round_id}: cannot read {path}") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: not a decisions.json document")
    return record.round_id, record.as_of, document


def _regions(config: CoordinatorConfig, shares: Sequence[ShareEntry], as_of: str) -> dict[str, str]:
    """child_id -> region_code from the roster, only when a share asks for the column."""
    if not any("region_code" in s.columns for s in shares):
        return {}
    section = config.coordinator
    roster = read_roster_source(
        section.roster, encoding=section.roster_encoding, as_of=_dt.date.fromisoformat(as_of)
    )
    return {r.child_id: r.region_code for r in roster.rows if r.child_id and r.region_code}


def _chosen(config: CoordinatorConfig, department: str | None) -> list[ShareEntry]:
    if department is None:
        if not config.shares:
            raise InputError(f"{config.path}: no [[shares]] entry: no department to share with")
        return list(config.shares)
    for share in config.shares:
        if share.department == department:
            return [share]
    raise Refused(department, "no [[shares]] entry in coordinator.toml: nothing is shared with it")


def share_command(
    *,
    config: Path,
    round_id: str,
    department: str | None = None,
    lists: Sequence[str] = (),
    offline_dir: Path | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``xmatch round share --round R [--department NODE] [--list NAME]…``.

    Returns 0 when every list was delivered (or, for an offline department,
    written into ``offline_dir``), 3 (PARTIAL) when a department could not be
    reached (each is a ``warning:`` line).

    Raises:
        Refused: the department has no ``[[shares]]`` entry, or a list is not
            configured for it; nothing is sent then.
        InputError: the round is unknown or incomplete, or its outputs are unreadable.
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    cfg = load_coordinator_config(config)
    chosen = _chosen(cfg, department)
    rid, as_of, document = _round_document(cfg, round_id)
    regions = _regions(cfg, chosen, as_of)
    planned = [(s, build_lists(s, document, regions=regions, lists=lists)) for s in chosen]
    tls = coordinator_tls(cfg)
    failed = 0
    with coordinator_log(cfg) as audit:
        for share, datas in planned:
            entry = node_entry(cfg, share.department)
            for data in datas:
                share_id = os.urandom(16).hex()
                framed = parts(
                    data, share_id=share_id, round_id=rid, as_of=as_of, purpose=share.purpose
                )
                extra: dict[str, object] = {"source": data.source} if data.source else {}
                if entry.offline:  # one sealed inbox per list (coordinator.dispute_offline)
                    if offline_dir is None:
                        raise InputError(
                            f"{entry.name} is an offline node: give --offline-dir DIR for its "
                            "sealed work lists"
                        )
                    whole = pb.WorkList()
                    for part in framed:  # the parts of the list, as one message
                        if whole.share_id:
                            whole.rows.extend(part.rows)
                        else:
                            whole.CopyFrom(part)
                    bundle = pb.InboxBundle(work_lists=[whole])
                    name = f"{entry.name}.{data.name}-{share_id[:8]}.inbox"
                    path = write_inbox(cfg, audit, entry, bundle, out_dir=offline_dir, name=name)
                    print(f"{entry.name}: written {path}; carry it to {entry.name}", file=out)
                    receipt = pb.ShareReceipt(share_id=share_id, rows=len(data.rows))
                    extra["transport"] = "offline"
                else:
                    try:
                        with stub(entry, tls) as node:
                            receipt = call(entry, partial(node.ShareList, framed, timeout=60))
                    except PeerError as exc:
                        failed += 1
                        print(f"warning: {share.department} {data.name}: {exc.reason}", file=err)
                        continue
                audit.append(
                    "list_shared",
                    share_id=share_id,
                    round_id=rid,
                    requester=cfg.coordinator.name,
                    responder=share.department,
                    list=data.name,
                    purpose=share.purpose,
                    rows=int(receipt.rows),
                    columns=list(data.columns),
                    **extra,
                )
                what = f"{data.name} ({data.source})" if data.source else data.name
                print(f"{share.department}: {what}: {receipt.rows} row(s) shared", file=out)
    return exit_codes.PARTIAL if failed else exit_codes.COMPLETE
