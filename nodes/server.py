"""``xmatch node serve``: run one department node until SIGTERM or SIGINT.

Startup, in order; any failure is one :class:`psi.errors.XmatchError` line and
nothing is served:

1. read ``node.toml`` (:func:`nodes.config.load_node_config`);
2. load and check the TLS identity and the audit key (``keys``);
3. load every match set once as of today (misconfiguration fails fast);
4. open the audit log and record ``config_loaded``;
5. rebuild the query budgets and the replay memory from the rounds in that
   log (:mod:`nodes.history`), so that a restart resets neither;
6. bind the mTLS port and print ``NAME: serving N match set(s) on ADDRESS``.

On SIGTERM/SIGINT: ``server.stop(grace)``, an end entry for every round still
open, audit ``shutdown``; exit 0 after SIGTERM, 130 after SIGINT (Ctrl-C).
A failure after step 4 (say, the port cannot be bound) logs ``shutdown`` with
reason ``startup failed`` before the log is closed.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import errno
import hashlib
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from nodes.config import MatchSetConfig, NodeConfig, load_node_config
from psi.errors import ConfigError, XmatchError
from runtime.files import private_folders
from runtime.signals import sigint_blocked
from workers import worker_pool

if TYPE_CHECKING:
    import grpc

    from audit.gm import GmAuditSigner
    from audit.log import AuditLog
    from keys.handles import AuditSigner
    from nodes.matchsets import LoadedMatchSet, MatchSetStore
    from nodes.servicer import NodeServicer
    from nodes.state import NodeState

#: Exit codes of ``xmatch node serve`` after a signal: SIGTERM is the service manager's
#: normal stop (0); SIGINT (Ctrl-C) exits as shells expect of an interrupted program.
EXIT_ON_SIGNAL = {"SIGTERM": 0, "SIGINT": 130}


__all__ = ["build_server", "serve_from_config"]

#: Headroom above max_chunk_bytes for the proto envelope.
ENVELOPE_BYTES = 64 * 1024
#: Send limit: gRPC's default 4 MiB, which the spec says no message may need.
#: keyed-hash match chunks carry payload maps, so they may exceed max_chunk_bytes.
SEND_LIMIT = 4 * 1024 * 1024


def _address_in_use(listen: str) -> str | None:
    """Why ``listen`` cannot be bound, tried with a plain socket first, or ``None``.

    gRPC's C core prints its own raw log line when a bind fails; a failure found
    here gives only our one line. The socket is closed at once (SO_REUSEADDR, as
    gRPC binds), so the port is free again for the server.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError):
        return None  # let gRPC decide and word it
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return exc.strerror or "address in use"
    return None


def build_server(
    config: NodeConfig,
    state: NodeState,
    audit: AuditLog,
    *,
    credentials: grpc.ServerCredentials,
    ca_pem: bytes,
    servicer: NodeServicer | None = None,
) -> grpc.Server:
    """A gRPC server with the interceptor, the servicer and the mTLS port bound (not started).

    ``servicer`` (default: a new one) is the caller's to end open rounds with at shutdown.

    Raises:
        ConfigError: the listen address cannot be bound.
    """
    import grpc

    from nodes.auth import PeerIdentityInterceptor
    from nodes.servicer import NodeServicer
    from proto import xmatch_pb2_grpc

    node = config.node
    limit = node.max_chunk_bytes + ENVELOPE_BYTES
    # Calls past this limit get RESOURCE_EXHAUSTED from gRPC itself, before any of
    # our code (so unlogged): room for every requester's gated rounds, with refusals
    # (which end at once) and capability calls on top; one thread per call.
    calls = 4 * node.max_concurrent_rounds + 16
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=calls, thread_name_prefix="xmatch-node"),
        interceptors=[PeerIdentityInterceptor(ca_pem=ca_pem, audit=audit, node=node.name)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(SEND_LIMIT, limit)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=calls,
    )
    xmatch_pb2_grpc.add_NodeServicer_to_server(servicer or NodeServicer(state, audit), server)
    busy = _address_in_use(node.listen)
    if busy:
        raise ConfigError(f"{config.path}: node.listen: cannot listen on {node.listen} ({busy})")
    try:
        port = server.add_secure_port(node.listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"{config.path}: node.listen: cannot listen on {node.listen}")
    return server


def dropped_where(ms: MatchSetConfig, loaded: LoadedMatchSet) -> str:
    """Where the first dropped rows of each reason are, for the DBA to look (never a value).

    A CSV read whole: its lines (a header line, then one line per row; a cell
    holding a line break would shift them). A Parquet file: its rows. A
    database, or a set too large to hold (streamed): rows of what the query or
    ``where`` returned, in the order the source gives them.
    """
    rows = loaded.dropped_rows
    database = ms.database
    if loaded.rows_of == "file" and database is None:
        source = ms.source_file
        if source.suffix.lower() in (".parquet", ".pq"):
            unit, shift = f"rows of {source.name}", 0
        else:
            unit, shift = f"lines of {source.name}", 1
    elif database is not None:
        unit, shift = "rows of the query's result", 0
    else:
        unit, shift = f"rows of {ms.source_file.name} that `where` selected", 0
    parts = [
        f"{reason} {', '.join(str(r + shift) for r in rows[reason])}"
        for reason in sorted(rows)
        if rows[reason]
    ]
    if not parts:
        return "no row numbers kept"
    more = " and more" if loaded.rejected_total > sum(len(r) for r in rows.values()) else ""
    return f"first {unit}: {'; '.join(parts)}{more}"


def _validate_match_sets(config: NodeConfig, store: MatchSetStore) -> list[LoadedMatchSet]:
    """Load every match set once at startup; each dropped-rows count goes to stderr.

    Raises:
        ConfigError: a set cannot be loaded (a malformed CSV row is named by its line).
    """
    node = config.node
    # a malformed CSV row is named by the loader (nodes.matchset_files.source_error)
    loaded = store.validate_all(_dt.date.today())
    sets = {ms.name: ms for ms in config.match_sets}
    for ms in loaded:
        if ms.rejected:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(ms.rejected.items()))
            print(
                f"{node.name}: warning: match set {ms.name!r}: {ms.rejected_total} row(s) "
                f"dropped ({detail}); {dropped_where(sets[ms.name], ms)}",
                file=sys.stderr,
                flush=True,
            )
        if ms.rejected.get("cut_digits"):
            print(
                f"{node.name}: warning: match set {ms.name!r}: identity numbers ending in 000 "
                "fail their check: a spreadsheet stored them as numbers and cut them to 15 "
                "digits. About 1 in 11 such numbers passes its check and is kept, naming "
                "another person: store the numbers as text and export the file again",
                file=sys.stderr,
                flush=True,
            )
    return loaded


def _serve_until_signal(config: NodeConfig, server: grpc.Server) -> str:
    """Start ``server`` and wait for SIGTERM or SIGINT; returns the signal's name."""
    node = config.node
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    n = len(config.match_sets)
    print(
        f"{node.name}: serving {n} match set{'' if n == 1 else 's'} on {node.listen}",
        flush=True,
    )
    while not stop.wait(timeout=0.5):
        pass
    return received[0] if received else "done"


def _log_signer(config: NodeConfig, passphrase: bytes | None) -> AuditSigner | GmAuditSigner:
    """The signer of the protocol log's checkpoints: the audit key, or SM2 (GM profile).

    Raises:
        ConfigError: the audit key, its certificate or the SM2 key is unusable (our own files).
    """
    from audit.gm import log_signer

    node = config.node
    return log_signer(
        key=node.audit_key_path,
        cert=node.audit_cert_path,
        passphrase=passphrase,
        ca=node.ca,
        profile=node.audit_profile,
        sm2_key=node.audit_sm2_key_path,
    )


def _log_folder(path: Path, config: NodeConfig) -> None:
    """Create the protocol log's folder (mode 0700) if missing.

    Raises:
        ConfigError: it cannot be created (the line names the key and the folder).
    """
    folder = config.node.audit_log.parent
    try:
        private_folders(folder)
    except OSError as exc:
        raise ConfigError(
            f"{path}: node.audit_log: cannot create the folder {folder} ({exc.strerror})"
        ) from None


def _remove_stale_spill(config: NodeConfig) -> None:
    """Spill folders of an earlier node process killed mid-round: unreadable
    ciphertext (its key died with it), removed so they do not fill the disk."""
    from nodes.buckets import remove_stale

    stale = remove_stale(config.spill_dir)
    if stale:
        print(
            f"{config.node.name}: removed {stale} spill folder(s) left by a stopped node process",
            file=sys.stderr,
            flush=True,
        )


def serve_from_config(path: Path | str) -> int:
    """Run the node configured in ``path`` until SIGTERM/SIGINT; returns the exit code
    (:data:`EXIT_ON_SIGNAL`: 0 after SIGTERM, 130 after SIGINT).

    Raises:
        ConfigError: bad configuration, unreadable or misconfigured match set,
            our own certificate, key or CA unusable, or the address cannot be bound.
        ProtocolError: a round entry of the protocol log is malformed (startup
            refuses to run with budgets it cannot rebuild).
    """
    path = Path(path)
    # (1) before anything heavy is imported, so a bad file fails fast
    config = load_node_config(path)
    node = config.node
    from audit.log import AuditLog
    from keys.handles import load_tls_credentials, own_credentials
    from nodes.drivers import keep_distinct
    from nodes.history import read_round_entries, restore_limits
    from nodes.matchsets import MatchSetStore
    from nodes.state import NodeState

    # (2)
    passphrase = config.node.key_passphrase()
    with own_credentials():  # our own certificate, key or CA: a configuration error (exit 2)
        tls = load_tls_credentials(
            ca=node.ca, cert=node.cert, key=node.key, name=node.name, passphrase=passphrase
        )
    log_signer = _log_signer(config, passphrase)
    # (3)
    _remove_stale_spill(config)
    store = MatchSetStore(config)
    loaded = _validate_match_sets(config, store)
    # (4) the log's folder is created on first start (mode 0700: only the node's account)
    _log_folder(path, config)
    audit = AuditLog.open(node.audit_log, party=node.name, signer=log_signer)
    executor: concurrent.futures.ProcessPoolExecutor | None = None
    try:
        audit.append(
            "config_loaded",
            config=path.name,
            # the bytes that were parsed: the file is not read again (it may be a pipe)
            config_sha256=config.sha256 or hashlib.sha256(path.read_bytes()).hexdigest(),
            role="node",
            match_sets=[ms.name for ms in config.match_sets],
        )
        from nodes.disputes import log_answers_at_start

        log_answers_at_start(config, audit)  # answers given while the node was stopped
        keep_distinct(config, loaded)  # the first ecdh round need not deduplicate
        # EC work runs in worker processes, started by "spawn" (never fork a
        # process that runs gRPC threads). They start with SIGINT blocked and
        # ignore it; a Ctrl-C meanwhile is held until they have started.
        executor = worker_pool(
            node.ec_workers,
            start_method="spawn",
            x25519_backend=node.x25519_backend,
            on_fallback=lambda line: print(
                f"{node.name}: warning: {line}", file=sys.stderr, flush=True
            ),
        )
        with sigint_blocked():
            state = NodeState.create(config, store=store, executor=executor)
        # (5)
        restore_limits(
            config,
            read_round_entries(audit.path),
            budget=state.budget,
            replay=state.replay,
            now=_dt.datetime.now(_dt.UTC),
        )
        # (6)
        from nodes.servicer import NodeServicer

        servicer = NodeServicer(state, audit)
        server = build_server(
            config,
            state,
            audit,
            credentials=tls.server_credentials(),
            ca_pem=tls.ca_pem,
            servicer=servicer,
        )
        reason = _serve_until_signal(config, server)
        server.stop(node.shutdown_grace_seconds).wait()
        # rounds still open after the grace were cancelled: each gets its end entry
        # now, while the log is open (not from a generator finalized after close)
        servicer.end_open_rounds(f"node stopped ({reason}) during the round")
        audit.append("shutdown", reason=reason)
        return EXIT_ON_SIGNAL.get(reason, 0)
    except XmatchError:  # e.g. the port cannot be bound: the log still says the node stopped
        audit.append("shutdown", reason="startup failed")
        raise
    finally:
        audit.close()
        if executor is not None:
            # wait for the pool's manager thread: with wait=False it closes its wakeup
            # pipe while the interpreter's exit hook may still write to it (CPython
            # 3.11 race), printing an "Exception ignored" traceback on Ctrl-C; queued
            # work is cancelled, so this waits at most for the chunks being multiplied
            executor.shutdown(wait=True, cancel_futures=True)
