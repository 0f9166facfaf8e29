"""``xmatch round import`` and ``xmatch round close``: offline sub-rounds come home.

See :mod:`coordinator.offline` (the round's offline side) and docs/offline.md.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from audit.format import SHUTDOWN
from audit.log import AuditLog
from coordinator import exit_codes
from coordinator.config import CoordinatorConfig, load_coordinator_config
from coordinator.disputes import hold_without_contact
from coordinator.node_link import coordinator_signer
from coordinator.offline import OFFLINE_DIR, Keys, keys_of, load_pending, save_pending
from coordinator.offline_runner import (
    PendingSubRound,
    import_sub_round,
    sub_from_json,
    sub_to_json,
)
from coordinator.output import OutputFolder
from coordinator.progress import Progress
from coordinator.reasons import Lang
from coordinator.records import read_roster_source
from coordinator.round import query_identities
from coordinator.round_outputs import Decided, decide_round, write_round
from coordinator.state import RoundState
from coordinator.sub_round import SubRound, SubRoundStatus, record_sub_round
from keys.sealed import SealedFileError, open_sealed, peek_header, read_sealed
from psi.bundle import Bundle
from psi.errors import InputError, ProtocolError, XmatchError
from psi.identifiers import encode_identities
from runtime.files import private_folders
from runtime.signals import CommitGuard

__all__ = ["close_command", "import_command"]


# ---------------------------------------------------------------------------
# round import / close


@dataclass
class _Session:
    config: CoordinatorConfig
    keys: Keys
    audit: AuditLog
    state: RoundState


@dataclass
class _Opened:
    session: _Session
    rid: str
    pending: Path
    doc: dict[str, Any]


class _NotWaiting(InputError):
    """The round of a response or a ``--round`` waits for nothing in this state database."""


def _no_state(cfg: CoordinatorConfig, rid: str) -> _NotWaiting | None:
    """The refusal for a state database that does not exist (None if it does).

    Opening it would create an empty one (and a log) as a side effect of a
    configuration that names another state: say so, and create nothing.
    """
    state = cfg.coordinator.state
    if state.exists():
        return None
    return _NotWaiting(
        f"round {rid} has no offline sub-rounds: the state database {state} does not exist "
        "(use the coordinator.toml that ran the round)"
    )


@contextmanager
def _session(cfg: CoordinatorConfig) -> Iterator[_Session]:
    keys = keys_of(cfg)
    section = cfg.coordinator
    log_signer = coordinator_signer(cfg)  # SM2 under the GM log profile
    private_folders(section.audit_log.parent)
    audit = AuditLog.open(section.audit_log, party=section.name, signer=log_signer)
    state = RoundState.open(section.state)
    try:
        yield _Session(cfg, keys, audit, state)
    finally:
        try:
            state.close()
        finally:
            audit.append(SHUTDOWN, reason="done")
            audit.close()


def _waiting_round(session: _Session, rid: str) -> _Opened:
    found = session.state.offline_round(rid)
    if found is None:
        raise _NotWaiting(
            f"round {rid} has no offline sub-rounds in {session.config.coordinator.state} "
            "(use the coordinator.toml that ran the round)"
        )
    status, pending = found
    if status != "waiting":
        raise _NotWaiting(f"round {rid} is {status}: it waits for no response any more")
    return _Opened(session, rid, pending, load_pending(session.keys, pending))


def _commit(
    opened: _Opened,
    decided: Decided,
    results: list[SubRound],
    as_of: _dt.date,
    guard: CommitGuard,
    *,
    closed: bool,
    imported: Callable[[], None] | None,
) -> None:
    """Write the output folder, then mark the round finished; ``guard`` holds from the rename.

    ``imported`` records the last response as imported, once the folder is in place:
    a round that fails before (a changed roster) can take the same response again.
    """
    doc = opened.doc
    session = opened.session
    out = Path(doc["out"])
    aside = out.parent / f".{out.name}.offline-{opened.rid}"
    requests = out / OFFLINE_DIR
    if requests.is_dir():
        os.rename(requests, aside)  # the output folder is written whole, then put back
    try:
        with OutputFolder(out, opened.rid, on_commit=guard.hold) as folder:
            write_round(
                folder,
                decided,
                results,
                rid=opened.rid,
                as_of=as_of,
                seconds=float(doc.get("seconds", 0.0)),
                state=session.state,
                display=Progress(False),
            )
    except BaseException:
        if aside.is_dir() and not requests.exists():
            os.rename(aside, requests)
        raise
    if aside.is_dir():
        os.rename(aside, requests)
    if imported is not None:
        imported()
    failed = decided.failed
    session.state.finish_round(
        opened.rid,
        status="completed",
        detail=f"{len(failed)} failed source(s)" if failed else None,
    )
    session.state.end_offline(opened.rid, "closed" if closed else "completed")
    opened.pending.unlink(missing_ok=True)


def _finish(
    opened: _Opened,
    out_stream: TextIO,
    err: TextIO,
    guard: CommitGuard,
    *,
    closed: bool,
    imported: Callable[[], None] | None = None,
) -> int:
    """Decide and write the round once nothing waits; the exit code of the round.

    ``guard`` holds Ctrl-C from the folder's rename on; the caller's block around the
    session keeps it held until the state and the log are closed too.
    """
    doc = opened.doc
    session = opened.session
    cfg = session.config
    results = [sub_from_json(s) for s in doc["online"]]
    results += [sub_from_json(s["result"]) for s in doc["offline"]]
    plan = [(n.name, ms) for n in cfg.nodes for ms in n.match_sets]
    order = {key: i for i, key in enumerate(plan)}
    results.sort(key=lambda s: order.get((s.node, s.match_set), len(order)))
    as_of = _dt.date.fromisoformat(doc["as_of"])
    section = cfg.coordinator
    roster = read_roster_source(
        section.roster,
        encoding=section.roster_encoding,
        as_of=as_of,
        label=f"{cfg.path or 'coordinator.toml'}: roster",
    )
    if query_identities(roster) != sorted(doc["identities"]):
        raise InputError(
            f"{roster.path}: the roster changed since round {opened.rid} was run; "
            "restore it, or close the round and run a new one"
        )
    lang: Lang = "en" if doc.get("lang") == "en" else "zh"
    decided = decide_round(roster, results, as_of=as_of, lang=lang)
    held = hold_without_contact(decided.decisions, cfg)  # support continues (疑义校核)
    decided = dataclasses.replace(decided, decisions=held[0], disputes=held[1])
    counts = decided.decisions.counts()
    session.state.record_decisions(opened.rid, {d.value: n for d, n in counts.items()})
    # From the folder's rename on, a Ctrl-C is only noted: the folder, the state and
    # the pending file must agree (a round written whole, or one still waiting).
    _commit(opened, decided, results, as_of, guard, closed=closed, imported=imported)
    for outcome in results:
        if outcome.status is not SubRoundStatus.OK:
            print(
                f"warning: {outcome.source} {outcome.status}: {outcome.detail} "
                "(children without a category get REVIEW, not EXIT)",
                file=err,
            )
    out = Path(doc["out"])
    summary = ", ".join(f"{d.value} {n}" for d, n in sorted(counts.items()))
    print(f"round {opened.rid} complete: decisions: {summary}", file=out_stream)
    print(
        f"written: {out}/evidence.csv, decisions.json, report.html, decisions.xlsx, names.csv",
        file=out_stream,
    )
    return exit_codes.round_status([s.status.value for s in results])


def _log_refusal(audit: AuditLog, data: bytes, reason: str) -> None:
    try:
        header = peek_header(data)
        peer, file_id = header["sender"], header["file_id"]
    except XmatchError:
        peer, file_id = "-", None
    fields: dict[str, object] = {
        "kind": "response",
        "action": "refused",
        "peer": peer if peer and peer.replace("-", "").isalnum() else "-",
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "reason": reason,
    }
    if file_id is not None and len(file_id) == 32:
        fields["file_id"] = file_id
    try:
        audit.append("offline_file", **fields)
    except XmatchError:
        audit.append("offline_file", **{**fields, "reason": "withheld"})


def _imported(opened: _Opened, sub: dict[str, Any], outcome: SubRound) -> None:
    session = opened.session
    section = session.config.coordinator
    common: dict[str, object] = {
        "round_id": opened.rid,
        "requester": section.name,
        "responder": outcome.node,
        "purpose": section.purpose,
        "match_set": outcome.match_set,
        "transport": "offline",
        **dict(PendingSubRound.from_json(sub).context_params()),
    }
    record_sub_round(
        session.audit,
        session.state,
        outcome,
        round_id=opened.rid,
        common=common,
        query_size=len(opened.doc["identities"]),
    )
    sub["result"] = sub_to_json(outcome)


def import_command(
    *, config: Path, response: Path, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``xmatch round import``: verify a sealed response and complete its sub-rounds.

    Returns :data:`~coordinator.exit_codes.WAITING` while other offline
    sub-rounds of the round still wait, else the round's exit code.

    Raises:
        SealedFileError: the file is refused (one line: truncated, altered, for
            someone else, expired, from an unknown sender, imported before).
        XmatchError: other input problems.
    """
    out_stream = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        data = read_sealed(response)
    except OSError as exc:
        raise InputError(f"{response}: cannot read ({exc.strerror})") from None
    cfg = load_coordinator_config(config)
    if not cfg.coordinator.state.exists():
        _refuse_without_state(cfg, data, response)
    with CommitGuard() as guard:
        with _session(cfg) as session:
            code = _import(session, data, response, out_stream, err, guard)
        _note_late_interrupt(guard, err)
        return code


def _refuse_without_state(cfg: CoordinatorConfig, data: bytes, response: Path) -> NoReturn:
    """Refuse ``response`` when the configuration's state database does not exist.

    The file is still opened first (an altered or foreign file says so); the refusal
    goes into the protocol log only if that log exists already: nothing is created.
    """
    reason = "unreadable content"
    try:
        keys = keys_of(cfg)
        opened = open_sealed(data, kind="response", recipient=keys.sealing, ca_pem=keys.ca_pem)
        refusal = _no_state(cfg, opened.header["round_id"])
        reason = refusal.diagnostics() if refusal is not None else reason
    except SealedFileError as exc:
        reason = exc.diagnostics()
    except ProtocolError:
        pass
    section = cfg.coordinator
    if section.audit_log.exists():
        audit = AuditLog.open(section.audit_log, party=section.name, signer=coordinator_signer(cfg))
        try:
            _log_refusal(audit, data, reason)
        finally:
            audit.append(SHUTDOWN, reason="done")
            audit.close()
    raise SealedFileError(f"{response}: refused: {reason}")


def _note_late_interrupt(guard: CommitGuard, err: TextIO) -> None:
    if guard.interrupted:
        print("note: Ctrl-C came after the round was written; the round is complete", file=err)


def _import(
    session: _Session,
    data: bytes,
    response: Path,
    out_stream: TextIO,
    err: TextIO,
    guard: CommitGuard,
) -> int:
    """The body of :func:`import_command`, in an open session."""
    try:
        opened_file = open_sealed(
            data, kind="response", recipient=session.keys.sealing, ca_pem=session.keys.ca_pem
        )
        entry = next(
            (n for n in session.config.nodes if n.name == opened_file.sender and n.offline),
            None,
        )
        if entry is None:
            raise SealedFileError(
                f"{opened_file.sender!r} is not an offline node of this coordinator.toml"
            )
        earlier = session.state.response_imported(opened_file.file_id)
        if earlier is not None:
            raise SealedFileError(f"imported before (round {earlier}): nothing to do")
        rid = opened_file.header["round_id"]
        try:
            opened = _waiting_round(session, rid)
        except _NotWaiting as exc:  # closed, completed, or a round of another state database
            raise SealedFileError(exc.diagnostics()) from None
        bundle = Bundle.from_bytes(opened_file.payload)
        mine = [s for s in opened.doc["offline"] if s["node"] == entry.name]
        if not mine or all("result" in s for s in mine):
            raise SealedFileError(f"round {rid} waits for no response from {entry.name!r}")
        if bundle.manifest.get("request_id") != mine[0]["request_id"]:
            raise SealedFileError("answers another request of this round (an older copy?)")
    except SealedFileError as exc:
        _log_refusal(session.audit, data, exc.diagnostics())
        raise SealedFileError(f"{response}: refused: {exc.diagnostics()}") from None
    except ProtocolError as exc:
        _log_refusal(session.audit, data, "unreadable content")
        raise InputError(f"{response}: refused: unreadable content ({exc})") from None
    session.audit.append(
        "offline_file",
        kind="response",
        action="opened",
        peer=entry.name,
        file_sha256=opened_file.sha256,
        file_id=opened_file.file_id,
        round_id=rid,
    )
    identities = list(opened.doc["identities"])
    encoded = encode_identities(identities)
    listed = bundle.manifest.get("sub_rounds")
    subs = [s for s in listed if isinstance(s, dict)] if isinstance(listed, list) else []
    answers = {str(s.get("match_set")): s for s in subs}
    for sub in mine:
        pending = PendingSubRound.from_json(sub)
        outcome = import_sub_round(
            pending,
            entry,
            answer=answers.get(pending.match_set),
            parts=bundle.parts,
            encoded=encoded,
            identities=identities,
            node_display_name=str(bundle.manifest.get("display_name", "")),
            chunk_items=session.config.coordinator.chunk_items,
        )
        _imported(opened, sub, outcome)
        print(f"{outcome.source}: {outcome.status.value}: {outcome.detail}", file=out_stream)

    def imported() -> None:
        session.state.import_offline(
            rid, entry.name, response_id=opened_file.file_id, response_sha256=opened_file.sha256
        )

    left = [s for s in opened.doc["offline"] if "result" not in s]
    if left:
        # the results first: a response marked imported must not lose them
        save_pending(
            session.keys,
            opened.pending,
            opened.doc,
            expires=_dt.datetime.now(_dt.UTC) + _dt.timedelta(days=366),
        )
        imported()
        nodes = sorted({s["node"] for s in left})
        print(f"round {rid} still waits for: {', '.join(nodes)}", file=out_stream)
        return exit_codes.WAITING
    return _finish(opened, out_stream, err, guard, closed=False, imported=imported)


def close_command(
    *, config: Path, round_id: str, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``xmatch round close``: stop waiting; missing responses become failed sources.

    Returns the round's exit code (3 when anything was missing: ``REVIEW``, never ``EXIT``).

    Raises:
        XmatchError: no such waiting round, or the outputs cannot be written.
    """
    out_stream = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    cfg = load_coordinator_config(config)
    missing = _no_state(cfg, round_id)
    if missing is not None:  # nothing to close, and nothing to create
        raise missing
    with CommitGuard() as guard:
        with _session(cfg) as session:
            code = _close(session, round_id, out_stream, err, guard)
        _note_late_interrupt(guard, err)
        return code


def _close(
    session: _Session, round_id: str, out_stream: TextIO, err: TextIO, guard: CommitGuard
) -> int:
    """The body of :func:`close_command`, in an open session."""
    opened = _waiting_round(session, round_id)
    for sub in opened.doc["offline"]:
        if "result" in sub:
            continue
        pending = PendingSubRound.from_json(sub)
        reason = "no offline response (round closed)"
        outcome = SubRound(
            node=pending.node,
            match_set=pending.match_set,
            protocol=pending.protocol,
            circumstance=None,
            status=SubRoundStatus.FAILED,
            matches=0,
            seconds=0.0,
            detail=reason,
            reason=reason,
        )
        _imported(opened, sub, outcome)
    return _finish(opened, out_stream, err, guard, closed=True)
