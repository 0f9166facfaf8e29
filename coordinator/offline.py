"""Offline sub-rounds, coordinator side (notice 四(二)4; docs/offline.md).

``xmatch round run`` with ``transport = "offline"`` nodes runs the online nodes
as usual (:func:`coordinator.round.fan_out`), then writes one sealed request per
offline node, ``DIR/offline/NODE.request``: the round context and, for each of
the node's match sets, the requester's protocol messages exactly as they travel
online (serialized ``KeyedHashRequest`` / ``EcdhRequest``). The round then
waits (exit code 4). Its secrets (the requester's key draws), the query order
and the online sub-rounds' results are kept in a *pending* file sealed to our
own sealing key (``state/offline/ROUND.pending``, mode 0600).

``xmatch round import`` opens a sealed response, rebuilds each sub-round's
requester from its recorded key draws, replays the request (checking that it
gives the same bytes as the request that was carried), and feeds the node's
answers through the same response loop as online
(:func:`coordinator.streams.run_stream`). When the last sub-round is in, the
round is decided and written exactly as an online round
(:func:`coordinator.round.decide_round`, :func:`coordinator.round.write_round`).
``xmatch round close`` gives up waiting: what is missing is a failed source.

keyed-hash in one message: the coordinator also draws the node's ephemeral key
share for the round and hands its key draw to the node inside the request, which
is sealed to the node's certified sealing key (HPKE's DHKEM is the ephemeral-static
key agreement). The node still never sends a tag of its own
(docs/threat-model.md, "Offline exchange").
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from audit.format import SHUTDOWN
from audit.log import AuditLog
from coordinator import exit_codes
from coordinator.config import CoordinatorConfig, NodeEntry, load_coordinator_config
from coordinator.offline_runner import (
    PendingSubRound,
    import_sub_round,
    outgoing,
    responder_share,
    sub_from_json,
    sub_to_json,
)
from coordinator.progress import Progress
from coordinator.reasons import Lang
from coordinator.records import read_roster_source
from coordinator.round import (
    _context,
    _open_round,
    decide_round,
    entry_params,
    fan_out,
    prepare,
    query_identities,
    write_round,
)
from coordinator.state import RoundState
from coordinator.sub_round import SubRound, SubRoundStatus, record_sub_round
from keys.handles import AuditSigner
from keys.sealed import (
    SealingKey,
    SenderKey,
    load_sealing_key,
    load_sender_key,
    open_sealed,
    peek_header,
    seal,
)
from psi.bundle import Bundle
from psi.errors import InputError, ProtocolError, XmatchError
from psi.identifiers import encode_identities

__all__ = [
    "close_command",
    "has_offline_nodes",
    "import_command",
    "run_offline_command",
    "seal_cert_of",
    "write_atomic",
]

OFFLINE_DIR = "offline"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``path`` through a temporary sibling, fsynced, renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Keys


def seal_cert_of(config: CoordinatorConfig, entry: NodeEntry) -> Path:
    """The node's sealing certificate: ``seal_cert``, or NAME.seal.crt beside ``ca``."""
    return entry.seal_cert or config.coordinator.ca.parent / f"{entry.name}.seal.crt"


@dataclass(frozen=True)
class _Keys:
    ca_pem: bytes
    sender: SenderKey
    sealing: SealingKey


def _keys(config: CoordinatorConfig) -> _Keys:
    section = config.coordinator
    folder = section.key.parent
    try:
        ca_pem = section.ca.read_bytes()
    except OSError as exc:
        raise InputError(f"{section.ca}: cannot read ({exc.strerror})") from None
    sender = load_sender_key(
        name=section.name,
        key=section.key,
        cert=section.cert,
        seal_cert=folder / f"{section.name}.seal.crt",
        passphrase=None,
    )
    sealing = load_sealing_key(
        folder / f"{section.name}.seal.key", name=section.name, passphrase=None
    )
    return _Keys(ca_pem, sender, sealing)


# ---------------------------------------------------------------------------
# The pending state (sealed to ourselves)


def _pending_path(config: CoordinatorConfig, rid: str) -> Path:
    return config.coordinator.state.parent / OFFLINE_DIR / f"{rid}.pending"


def _save_pending(keys: _Keys, path: Path, doc: dict[str, Any], *, expires: _dt.datetime) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = seal(
        Bundle(doc).to_bytes(),
        kind="request",
        sender=keys.sender,
        recipient=keys.sender.name,
        recipient_seal_cert_pem=keys.sender.seal_cert_pem,
        ca_pem=keys.ca_pem,
        round_id=str(doc["round_id"]),
        expires=expires,
    )
    write_atomic(path, data)


def _load_pending(keys: _Keys, path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: the round's pending state is missing ({exc.strerror})") from None
    # the pending file never expires by itself: it lives as long as the round waits
    far = _dt.datetime.fromisoformat(peek_header(data)["created"])
    opened = open_sealed(data, kind="request", recipient=keys.sealing, ca_pem=keys.ca_pem, now=far)
    if opened.sender != keys.sender.name:
        raise InputError(f"{path}: the pending state was not written by us")
    return Bundle.from_bytes(opened.payload).manifest


# ---------------------------------------------------------------------------
# round run


def _request_for(
    config: CoordinatorConfig,
    entry: NodeEntry,
    *,
    round_id: bytes,
    as_of: _dt.date,
    encoded: np.ndarray[Any, np.dtype[np.uint8]],
) -> tuple[Bundle, list[PendingSubRound]]:
    """The node's request bundle and what the coordinator keeps of each sub-round."""
    manifest_subs: list[dict[str, Any]] = []
    parts: list[bytes] = []
    kept: list[PendingSubRound] = []
    for match_set in entry.match_sets:
        ctx = _context(
            config, round_id, as_of, entry.name, match_set, entry.protocol, entry_params(entry)
        )
        share, node_draw = responder_share(ctx)
        messages, draws = outgoing(ctx, encoded, share, chunk_items=config.coordinator.chunk_items)
        first = len(parts)
        parts.extend(messages)
        sub: dict[str, Any] = {"match_set": match_set, "parts": [first, len(parts)]}
        if node_draw:
            sub["responder_draw"] = _b64(node_draw)
        manifest_subs.append(sub)
        kept.append(
            PendingSubRound(
                node=entry.name,
                match_set=match_set,
                protocol=entry.protocol,
                context=ctx.to_bytes(),
                draws=draws,
                share=share,
                request_sha256=hashlib.sha256(b"".join(messages)).hexdigest(),
            )
        )
    manifest = {
        "kind": "xmatch-offline-request",
        "coordinator": config.coordinator.name,
        "node": entry.name,
        "round_id": round_id.hex(),
        "protocol": entry.protocol,
        "sub_rounds": manifest_subs,
    }
    return Bundle(manifest, tuple(parts)), kept


def has_offline_nodes(config: Path) -> bool:
    """Whether ``coordinator.toml`` names a ``transport = "offline"`` node.

    Raises:
        ConfigError: the file is not a valid coordinator.toml.
    """
    return any(n.offline for n in load_coordinator_config(config).nodes)


def run_offline_command(
    *,
    config: Path,
    as_of: _dt.date | None,
    out: Path,
    lang: Lang = "zh",
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> int:
    """``xmatch round run`` for a configuration with offline nodes (module docstring).

    Returns :data:`~coordinator.exit_codes.WAITING`.

    Raises:
        XmatchError: a fatal input problem; nothing is written then.
    """
    cfg = load_coordinator_config(config)
    out_stream = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    day = as_of or _dt.date.today()
    keys = _keys(cfg)
    display = Progress(False)
    prepared = prepare(
        cfg, as_of=day, out=out, display=display, err=err, rng=rng, problem_prefix=""
    )
    section = cfg.coordinator
    section.audit_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    audit = AuditLog.open(section.audit_log, party=section.name, signer=prepared.log_signer)
    state = RoundState.open(section.state)
    round_id = rng(16)
    rid = round_id.hex()
    started = time.monotonic()
    try:
        _open_round(cfg, audit, state, rid=rid, as_of=day, out=out)
        online = [n for n in cfg.nodes if not n.offline]
        results: list[SubRound] = []
        if online:
            online_cfg = cfg.model_copy(update={"nodes": online})
            results = fan_out(
                online_cfg,
                prepared,
                round_id=round_id,
                as_of=day,
                audit=audit,
                state=state,
                display=display,
            )
        folder = out / OFFLINE_DIR
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = _dt.datetime.now(_dt.UTC)
        waiting: list[dict[str, Any]] = []
        rows: list[tuple[str, str, str, str, str]] = []
        latest = now
        for entry in (n for n in cfg.nodes if n.offline):
            bundle, kept = _request_for(
                cfg, entry, round_id=round_id, as_of=day, encoded=prepared.encoded
            )
            expires = now + _dt.timedelta(days=entry.offline_days)
            latest = max(latest, expires)
            try:
                cert = seal_cert_of(cfg, entry).read_bytes()
            except OSError as exc:
                raise InputError(
                    f"{seal_cert_of(cfg, entry)}: the sealing certificate of {entry.name!r} "
                    f"cannot be read ({exc.strerror}); set seal_cert in its [[nodes]] entry"
                ) from None
            data = seal(
                bundle.to_bytes(),
                kind="request",
                sender=keys.sender,
                recipient=entry.name,
                recipient_seal_cert_pem=cert,
                ca_pem=keys.ca_pem,
                round_id=rid,
                expires=expires,
                now=now,
            )
            path = folder / f"{entry.name}.request"
            write_atomic(path, data, mode=0o644)
            digest = hashlib.sha256(data).hexdigest()
            header = peek_header(data)
            audit.append(
                "offline_file",
                kind="request",
                action="written",
                peer=entry.name,
                file_sha256=digest,
                file_id=header["file_id"],
                round_id=rid,
                file=path.name,
            )
            for sub in kept:
                state.sub_round_running(rid, sub.node, sub.match_set)
                audit.append(
                    "round_started",
                    round_id=rid,
                    requester=section.name,
                    responder=entry.name,
                    purpose=section.purpose,
                    match_set=sub.match_set,
                    protocol=entry.protocol,
                    query_size=len(prepared.identities),
                    transport="offline",
                    **dict(entry_params(entry)),
                )
                waiting.append({**sub.to_json(), "request_id": header["file_id"]})
                rows.append((sub.node, sub.match_set, str(path), digest, header["expires"]))
            print(
                f"carry {path} to {entry.name} (match sets: {', '.join(entry.match_sets)}; "
                f"expires {header['expires']})",
                file=out_stream,
            )
        doc = {
            "round_id": rid,
            "as_of": day.isoformat(),
            "out": str(out.resolve()),
            "lang": lang,
            "identities": prepared.identities,
            "online": [sub_to_json(s) for s in results],
            "offline": waiting,
            "seconds": time.monotonic() - started,
        }
        pending = _pending_path(cfg, rid)
        _save_pending(keys, pending, doc, expires=latest)
        state.wait_offline(rid, pending=pending, requests=rows)
    except BaseException:
        state.fail_open_sub_rounds(rid, detail="failed: coordinator stopped")
        state.finish_round(rid, status="failed", detail="offline requests not written")
        raise
    finally:
        try:
            state.close()
        finally:
            audit.append(SHUTDOWN, reason="waiting")
            audit.close()
    ok = sum(1 for s in results if s.status is SubRoundStatus.OK)
    for online_sub in results:
        if online_sub.status is not SubRoundStatus.OK:
            print(
                f"warning: {online_sub.source} {online_sub.status}: {online_sub.detail}", file=err
            )
    print(
        f"round {rid} as of {day}: {ok}/{len(results)} online match sets answered; "
        f"waiting for {len(rows)} offline match set(s)",
        file=out_stream,
    )
    print(
        "there: xmatch node answer --config node.toml --request NODE.request --out NODE.response",
        file=out_stream,
    )
    print(
        f"back here: xmatch round import --config {config} --response NODE.response "
        f"(or: xmatch round close --config {config} --round {rid})",
        file=out_stream,
    )
    return exit_codes.WAITING


# ---------------------------------------------------------------------------
# round import / close


@dataclass
class _Session:
    config: CoordinatorConfig
    keys: _Keys
    audit: AuditLog
    state: RoundState


@dataclass
class _Opened:
    session: _Session
    rid: str
    pending: Path
    doc: dict[str, Any]


@contextmanager
def _session(config: Path) -> Iterator[_Session]:
    cfg = load_coordinator_config(config)
    keys = _keys(cfg)
    section = cfg.coordinator
    signer = AuditSigner.load(
        key=section.audit_key_path, cert=section.audit_cert_path, ca=section.ca
    )
    log_signer: Any = signer
    if section.audit_profile == "gm":
        from audit.gm import gm_signer

        log_signer = gm_signer(signer, section.audit_sm2_key_path)
    section.audit_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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
        raise InputError(f"round {rid} has no offline sub-rounds (see xmatch round run)")
    status, pending = found
    if status != "waiting":
        raise InputError(f"round {rid} is {status}: it waits for no response any more")
    return _Opened(session, rid, pending, _load_pending(session.keys, pending))


def _finish(opened: _Opened, out_stream: TextIO, err: TextIO, *, closed: bool) -> int:
    """Decide and write the round once nothing waits; the exit code of the round."""
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
    counts = decided.decisions.counts()
    session.state.record_decisions(opened.rid, {d.value: n for d, n in counts.items()})
    out = Path(doc["out"])
    aside = out.parent / f".{out.name}.offline-{opened.rid}"
    requests = out / OFFLINE_DIR
    if requests.is_dir():
        os.rename(requests, aside)  # the output folder is written whole, then put back
    try:
        write_round(
            out,
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
    failed = decided.failed
    session.state.finish_round(
        opened.rid,
        status="completed",
        detail=f"{len(failed)} failed source(s)" if failed else None,
    )
    session.state.end_offline(opened.rid, "closed" if closed else "completed")
    opened.pending.unlink(missing_ok=True)
    for outcome in results:
        if outcome.status is not SubRoundStatus.OK:
            print(
                f"warning: {outcome.source} {outcome.status}: {outcome.detail} "
                "(children without a category get REVIEW, not EXIT)",
                file=err,
            )
    summary = ", ".join(f"{d.value} {n}" for d, n in sorted(counts.items()))
    print(f"round {opened.rid} complete: decisions: {summary}", file=out_stream)
    print(f"written: {out}/evidence.csv, decisions.json, report.html", file=out_stream)
    return exit_codes.round_status([s.status.value for s in results])


def _log_refusal(session: _Session, data: bytes, reason: str) -> None:
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
        session.audit.append("offline_file", **fields)
    except XmatchError:
        session.audit.append("offline_file", **{**fields, "reason": "withheld"})


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
        data = response.read_bytes()
    except OSError as exc:
        raise InputError(f"{response}: cannot read ({exc.strerror})") from None
    from keys.sealed import SealedFileError

    with _session(config) as session:
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
            opened = _waiting_round(session, rid)
            bundle = Bundle.from_bytes(opened_file.payload)
            mine = [s for s in opened.doc["offline"] if s["node"] == entry.name]
            if not mine or all("result" in s for s in mine):
                raise SealedFileError(f"round {rid} waits for no response from {entry.name!r}")
            if bundle.manifest.get("request_id") != mine[0]["request_id"]:
                raise SealedFileError("answers another request of this round (an older copy?)")
        except SealedFileError as exc:
            _log_refusal(session, data, exc.diagnostics())
            raise SealedFileError(f"{response}: refused: {exc.diagnostics()}") from None
        except ProtocolError as exc:
            _log_refusal(session, data, "unreadable content")
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
        answers = {str(s.get("match_set")): s for s in bundle.manifest.get("sub_rounds", [])}
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
        session.state.import_offline(
            rid, entry.name, response_id=opened_file.file_id, response_sha256=opened_file.sha256
        )
        left = [s for s in opened.doc["offline"] if "result" not in s]
        if left:
            _save_pending(
                session.keys,
                opened.pending,
                opened.doc,
                expires=_dt.datetime.now(_dt.UTC) + _dt.timedelta(days=366),
            )
            nodes = sorted({s["node"] for s in left})
            print(f"round {rid} still waits for: {', '.join(nodes)}", file=out_stream)
            return exit_codes.WAITING
        return _finish(opened, out_stream, err, closed=False)


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
    with _session(config) as session:
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
        return _finish(opened, out_stream, err, closed=True)
