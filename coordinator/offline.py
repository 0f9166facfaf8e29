"""Offline sub-rounds, coordinator side (notice 四(二)4; docs/offline.md).

``xmatch round run`` with ``transport = "offline"`` nodes runs the online nodes
as usual (:func:`coordinator.round.fan_out`), then writes one sealed request per
offline node, ``DIR/offline/NODE.request``: the round context and, for each of
the node's match sets, the requester's protocol messages exactly as they travel
online (serialized ``KeyedHashRequest`` / ``EcdhRequest``). The round then
waits (exit code 4). Its secrets (the requester's key draws), the query order
and the online sub-rounds' results are kept in a *pending* file sealed to our
own sealing key (``state/offline/ROUND.pending``, mode 0600).

``xmatch round import`` (:mod:`coordinator.offline_import`) opens a sealed
response, rebuilds each sub-round's requester session (:mod:`psi.session`) from
its recorded key draws, replays the request (checking that it gives the same
bytes as the request that was carried), and feeds the session the node's
answers, converted as online (:func:`coordinator.streams.from_response`); the
session checks order, payload tags and transcript. When the last sub-round is in, the
round is decided and written exactly as an online round
(:func:`coordinator.round_outputs.decide_round`, :func:`coordinator.round_outputs.write_round`).
``xmatch round close`` gives up waiting: what is missing is a failed source.

keyed-hash in one message: the coordinator also draws the node's ephemeral key
share for the round and hands its key draw to the node inside the request, which
is sealed to the node's certified sealing key (HPKE's DHKEM is the ephemeral-static
key agreement). The node still never sends a tag of its own
(docs/threat-model.md, "Offline exchange").
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from audit.format import ROSTER_COMMITTED, SHUTDOWN, roster_fields
from audit.log import AuditLog
from coordinator import exit_codes
from coordinator.config import CoordinatorConfig, NodeEntry, load_coordinator_config
from coordinator.offline_runner import (
    PendingSubRound,
    outgoing,
    responder_share,
    sub_to_json,
)
from coordinator.progress import Progress
from coordinator.reasons import Lang
from coordinator.round import (
    Prepared,
    _context,
    _open_round,
    entry_params,
    fan_out,
    prepare,
)
from coordinator.state import RoundState
from coordinator.sub_round import SubRound, SubRoundStatus
from keys.handles import own_credentials
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
from psi.errors import InputError
from runtime.files import private_folders, write_atomic

__all__ = [
    "OFFLINE_DIR",
    "Keys",
    "keys_of",
    "load_pending",
    "run_offline_command",
    "save_pending",
    "seal_cert_of",
    "write_atomic",
]

OFFLINE_DIR = "offline"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------
# Keys


def seal_cert_of(config: CoordinatorConfig, entry: NodeEntry) -> Path:
    """The node's sealing certificate: ``seal_cert``, or NAME.seal.crt beside ``ca``."""
    return entry.seal_cert or config.coordinator.ca.parent / f"{entry.name}.seal.crt"


@dataclass(frozen=True)
class Keys:
    """Our CA, signing and sealing keys for offline files."""

    ca_pem: bytes
    sender: SenderKey
    sealing: SealingKey


def keys_of(config: CoordinatorConfig) -> Keys:
    """Our keys for sealed files, from ``[coordinator]`` ca, cert, key and NAME.seal.*.

    Raises:
        ConfigError: one of these files is unusable (our own files: exit 2).
    """
    section = config.coordinator
    folder = section.key.parent
    with own_credentials():
        try:
            ca_pem = section.ca.read_bytes()
        except OSError as exc:
            raise InputError(f"{section.ca}: cannot read ({exc.strerror})") from None
        passphrase = section.key_passphrase()
        sender = load_sender_key(
            name=section.name,
            key=section.key,
            cert=section.cert,
            seal_cert=folder / f"{section.name}.seal.crt",
            passphrase=passphrase,
        )
        sealing = load_sealing_key(
            folder / f"{section.name}.seal.key", name=section.name, passphrase=passphrase
        )
    return Keys(ca_pem, sender, sealing)


# ---------------------------------------------------------------------------
# The pending state (sealed to ourselves)


def _pending_path(config: CoordinatorConfig, rid: str) -> Path:
    return config.coordinator.state.parent / OFFLINE_DIR / f"{rid}.pending"


def save_pending(keys: Keys, path: Path, doc: dict[str, Any], *, expires: _dt.datetime) -> None:
    private_folders(path.parent)
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


def load_pending(keys: Keys, path: Path) -> dict[str, Any]:
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
        messages, draws = outgoing(
            ctx,
            encoded,
            share,
            chunk_items=config.coordinator.chunk_items,
            max_set_size=entry.max_set_size,
        )
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


def _write_request(
    cfg: CoordinatorConfig,
    entry: NodeEntry,
    keys: Keys,
    audit: AuditLog,
    state: RoundState,
    encoded: np.ndarray[Any, np.dtype[np.uint8]],
    query_size: int,
    *,
    round_id: bytes,
    as_of: _dt.date,
    folder: Path,
    now: _dt.datetime,
    expires: _dt.datetime,
) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, str, str]], str]:
    """Seal and write one node's request; log it; what to keep, record and print."""
    section = cfg.coordinator
    rid = round_id.hex()
    waiting: list[dict[str, Any]] = []
    rows: list[tuple[str, str, str, str, str]] = []
    bundle, kept = _request_for(cfg, entry, round_id=round_id, as_of=as_of, encoded=encoded)
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
            query_size=query_size,
            transport="offline",
            **dict(entry_params(entry)),
        )
        waiting.append({**sub.to_json(), "request_id": header["file_id"]})
        rows.append((sub.node, sub.match_set, str(path), digest, header["expires"]))
    line = (
        f"carry {path} to {entry.name} (match sets: {', '.join(entry.match_sets)}; "
        f"expires {header['expires']})"
    )
    return waiting, rows, line


def _print_waiting(
    results: list[SubRound],
    *,
    rid: str,
    day: _dt.date,
    waiting: int,
    config: Path,
    out: TextIO,
    err: TextIO,
) -> None:
    """What the operator does next: carry, answer, import (or close)."""
    out_stream = out
    rows = range(waiting)
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


def _write_requests(
    cfg: CoordinatorConfig,
    keys: Keys,
    audit: AuditLog,
    state: RoundState,
    prepared: Prepared,
    *,
    round_id: bytes,
    as_of: _dt.date,
    folder: Path,
    written: list[Path],
    lines: list[str],
) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, str, str]], _dt.datetime]:
    """Every offline node's request, into ``folder``: the sub-rounds that wait, the rows
    the state records, and the latest expiry. Each file is added to ``written`` before
    it is written, and its "carry" line to ``lines``."""
    private_folders(folder)
    now = _dt.datetime.now(_dt.UTC)
    waiting: list[dict[str, Any]] = []
    rows: list[tuple[str, str, str, str, str]] = []
    latest = now
    for entry in (n for n in cfg.nodes if n.offline):
        expires = now + _dt.timedelta(days=entry.offline_days)
        latest = max(latest, expires)
        written.append(folder / f"{entry.name}.request")
        kept, recorded, line = _write_request(
            cfg,
            entry,
            keys,
            audit,
            state,
            prepared.encoded,
            len(prepared.identities),
            round_id=round_id,
            as_of=as_of,
            folder=folder,
            now=now,
            expires=expires,
        )
        waiting.extend(kept)
        rows.extend(recorded)
        lines.append(line)
    return waiting, rows, latest


def run_offline_command(
    *,
    config: Path | CoordinatorConfig,
    as_of: _dt.date | None,
    out: Path,
    lang: Lang = "zh",
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> int:
    """``xmatch round run`` for a configuration with offline nodes (module docstring).

    ``config`` is the file, or the configuration the caller already loaded from it
    (read once: it may be ``/dev/stdin``).

    Returns :data:`~coordinator.exit_codes.WAITING`.

    Raises:
        XmatchError: a fatal input problem; nothing is written then.
    """
    cfg = config if isinstance(config, CoordinatorConfig) else load_coordinator_config(config)
    config_path = cfg.path or Path("coordinator.toml")
    out_stream = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    day = as_of or _dt.date.today()
    keys = keys_of(cfg)
    display = Progress(False)
    prepared = prepare(
        cfg, as_of=day, out=out, display=display, err=err, rng=rng, problem_prefix=""
    )
    section = cfg.coordinator
    private_folders(section.audit_log.parent)
    audit = AuditLog.open(section.audit_log, party=section.name, signer=prepared.log_signer)
    state = RoundState.open(section.state)
    round_id = rng(16)
    rid = round_id.hex()
    started = time.monotonic()
    #: what this command wrote, removed again if it does not complete (a Ctrl-C, a full disk)
    written_files: list[Path] = []
    made = [path for path in (out, out / OFFLINE_DIR) if not path.exists()]
    lines: list[str] = []
    try:
        _open_round(cfg, audit, state, rid=rid, as_of=day, out=out)
        # the roster's declaration, as online: reconcile checks each node's query size
        audit.append(ROSTER_COMMITTED, **roster_fields(round_id, prepared.ordered))
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
        waiting, rows, latest = _write_requests(
            cfg,
            keys,
            audit,
            state,
            prepared,
            round_id=round_id,
            as_of=day,
            folder=out / OFFLINE_DIR,
            written=written_files,
            lines=lines,
        )
        online_done = [sub_to_json(s) for s in results]
        doc: dict[str, Any] = {"round_id": rid, "as_of": day.isoformat(), "lang": lang}
        doc["out"] = str(out.resolve())
        doc |= {"identities": prepared.identities, "online": online_done, "offline": waiting}
        doc["seconds"] = time.monotonic() - started
        pending = _pending_path(cfg, rid)
        written_files.append(pending)
        save_pending(keys, pending, doc, expires=latest)
        state.wait_offline(rid, pending=pending, requests=rows)
    except BaseException:
        state.fail_open_sub_rounds(rid, detail="failed: coordinator stopped")
        state.finish_round(rid, status="failed", detail="offline requests not written")
        _remove(written_files, made)
        raise
    finally:
        try:
            state.close()
        finally:
            audit.append(SHUTDOWN, reason="waiting")
            audit.close()
    for line in lines:  # only once the round waits: each file named is there to carry
        print(line, file=out_stream)
    _print_waiting(
        results, rid=rid, day=day, waiting=len(rows), config=config_path, out=out_stream, err=err
    )
    return exit_codes.WAITING


def _remove(files: Sequence[Path], folders: Sequence[Path]) -> None:
    """Undo a ``round run`` that did not complete: its requests and pending state, and the
    output folders it created (only when empty: nothing else is ever removed)."""
    for path in files:
        path.unlink(missing_ok=True)
    for folder in reversed(folders):
        with contextlib.suppress(OSError):  # not empty, or never made
            folder.rmdir()
