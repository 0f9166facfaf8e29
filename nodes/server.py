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

On SIGTERM/SIGINT: ``server.stop(grace)``, audit ``shutdown``, exit 0.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import hashlib
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from nodes.config import NodeConfig, load_node_config
from psi.ecdh import worker_pool
from psi.errors import ConfigError

if TYPE_CHECKING:
    import grpc

    from audit.gm import GmAuditSigner
    from audit.log import AuditLog
    from keys.handles import AuditSigner
    from nodes.handlers import NodeState

__all__ = ["build_server", "serve_from_config"]

#: Headroom above max_chunk_bytes for the proto envelope.
ENVELOPE_BYTES = 64 * 1024
#: Send limit: gRPC's default 4 MiB, which the spec says no message may need.
#: keyed-hash match chunks carry payload maps, so they may exceed max_chunk_bytes.
SEND_LIMIT = 4 * 1024 * 1024


def _passphrase(config: NodeConfig) -> bytes | None:
    env = config.node.passphrase_env
    if env is None:
        return None
    value = os.environ.get(env)
    if value is None:
        raise ConfigError(f"{config.path}: node.passphrase_env: {env} is not set")
    return value.encode()


def build_server(
    config: NodeConfig,
    state: NodeState,
    audit: AuditLog,
    *,
    credentials: grpc.ServerCredentials,
    ca_pem: bytes,
) -> grpc.Server:
    """A gRPC server with the interceptor, the servicer and the mTLS port bound (not started).

    Raises:
        ConfigError: the listen address cannot be bound.
    """
    import grpc

    from nodes.auth import PeerIdentityInterceptor
    from nodes.servicer import NodeServicer
    from proto import xmatch_pb2_grpc

    node = config.node
    rounds = node.max_concurrent_rounds
    limit = node.max_chunk_bytes + ENVELOPE_BYTES
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(
            max_workers=2 * rounds + 4, thread_name_prefix="xmatch-node"
        ),
        interceptors=[PeerIdentityInterceptor(ca_pem=ca_pem, audit=audit, node=node.name)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(SEND_LIMIT, limit)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=2 * rounds + 4,
    )
    xmatch_pb2_grpc.add_NodeServicer_to_server(NodeServicer(state, audit), server)
    try:
        port = server.add_secure_port(node.listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"{config.path}: node.listen: cannot listen on {node.listen}")
    return server


def serve_from_config(path: Path | str) -> int:
    """Run the node configured in ``path`` until SIGTERM/SIGINT; returns the exit code 0.

    Raises:
        ConfigError: bad configuration, unreadable or misconfigured match set,
            or the address cannot be bound.
        InputError, VerificationError, InvalidKey: TLS or audit key problems.
        ProtocolError: a round entry of the protocol log is malformed (startup
            refuses to run with budgets it cannot rebuild).
    """
    path = Path(path)
    # (1) before anything heavy is imported, so a bad file fails fast
    config = load_node_config(path)
    node = config.node
    from audit.log import AuditLog
    from keys.handles import AuditSigner, load_tls_credentials
    from nodes.handlers import NodeState
    from nodes.history import read_round_entries, restore_limits
    from nodes.matchsets import MatchSetStore

    # (2)
    passphrase = _passphrase(config)
    tls = load_tls_credentials(
        ca=node.ca, cert=node.cert, key=node.key, name=node.name, passphrase=passphrase
    )
    signer = AuditSigner.load(
        key=node.audit_key_path, cert=node.audit_cert_path, passphrase=passphrase, ca=node.ca
    )
    log_signer: AuditSigner | GmAuditSigner = signer
    if node.audit_profile == "gm":  # GM log profile: SM2 checkpoints, bound by the audit key
        from audit.gm import gm_signer
        from psi.errors import InputError

        try:
            log_signer = gm_signer(signer, node.audit_sm2_key_path)
        except OSError as exc:
            raise InputError(f'audit_profile = "gm": {exc}') from None
    # (3) spill folders of an earlier node process killed mid-round: unreadable
    # ciphertext (its key died with it), removed so they do not fill the disk
    from nodes.buckets import remove_stale

    stale = remove_stale(config.spill_dir)
    if stale:
        print(
            f"{node.name}: removed {stale} spill folder(s) left by a stopped node process",
            file=sys.stderr,
            flush=True,
        )
    store = MatchSetStore(config)
    loaded = store.validate_all(_dt.date.today())
    for ms in loaded:
        if ms.rejected:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(ms.rejected.items()))
            print(
                f"{node.name}: warning: match set {ms.name!r}: {ms.rejected_total} row(s) "
                f"dropped ({detail})",
                file=sys.stderr,
                flush=True,
            )
    # (4)
    audit = AuditLog.open(node.audit_log, party=node.name, signer=log_signer)
    executor: concurrent.futures.ProcessPoolExecutor | None = None
    try:
        audit.append(
            "config_loaded",
            config=path.name,
            config_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            role="node",
            match_sets=[ms.name for ms in config.match_sets],
        )
        # EC work runs in worker processes, started by "spawn" (never fork a
        # process that runs gRPC threads).
        executor = worker_pool(
            node.ec_workers,
            start_method="spawn",
            x25519_backend=node.x25519_backend,
            on_fallback=lambda line: print(
                f"{node.name}: warning: {line}", file=sys.stderr, flush=True
            ),
        )
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
        server = build_server(
            config, state, audit, credentials=tls.server_credentials(), ca_pem=tls.ca_pem
        )
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
        server.stop(node.shutdown_grace_seconds).wait()
        audit.append("shutdown", reason=received[0] if received else "done")
        return 0
    finally:
        audit.close()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
