"""What the coordinator's commands beside a round share: keys, the protocol log, a node stub.

``xmatch dispute …`` and ``xmatch round share`` talk to one node at a time with
small unary calls (or one short client stream), over the same mutual TLS as a
round (:mod:`coordinator.client`): the federation CA, our certificate, and
``ssl_target_name_override`` = the node's configured name. Every failure is a
:class:`psi.errors.PeerError` (``Refused`` for a refusal) with one
privacy-safe line (:func:`coordinator.client.describe_rpc_error`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc

from audit.format import SHUTDOWN
from audit.gm import GmAuditSigner, log_signer
from audit.log import AuditLog
from coordinator.client import MAX_MESSAGE_BYTES, describe_rpc_error
from coordinator.config import CoordinatorConfig, NodeEntry
from keys.handles import AuditSigner, TlsMaterial, load_tls_credentials, own_credentials
from proto import xmatch_pb2_grpc as pb_grpc
from psi.errors import InputError, PeerError, Refused
from runtime.files import private_folders

__all__ = [
    "DEFAULT_TIMEOUT",
    "call",
    "coordinator_log",
    "coordinator_signer",
    "coordinator_tls",
    "node_entry",
    "stub",
]

#: seconds for one dispute or share call
DEFAULT_TIMEOUT = 30.0
_T = TypeVar("_T")


def coordinator_tls(config: CoordinatorConfig) -> TlsMaterial:
    """Our TLS identity (``[coordinator]`` ca, cert, key).

    Raises:
        ConfigError: a file is unusable (any failure of
            :func:`keys.handles.load_tls_credentials`: our own files).
    """
    section = config.coordinator
    with own_credentials():
        return load_tls_credentials(
            ca=section.ca,
            cert=section.cert,
            key=section.key,
            name=section.name,
            passphrase=section.key_passphrase(),
        )


def coordinator_signer(config: CoordinatorConfig) -> AuditSigner | GmAuditSigner:
    """The signer of our protocol log's checkpoints: the audit key, or SM2 (GM profile).

    Raises:
        ConfigError: the audit key, its certificate or the SM2 key is unusable (our own files).
    """
    section = config.coordinator
    return log_signer(
        key=section.audit_key_path,
        cert=section.audit_cert_path,
        passphrase=section.key_passphrase(),
        ca=section.ca,
        profile=section.audit_profile,
        sm2_key=section.audit_sm2_key_path,
    )


@contextmanager
def coordinator_log(config: CoordinatorConfig) -> Iterator[AuditLog]:
    """Our protocol log, opened for appending (as a round opens it) and closed after.

    Raises:
        InputError: the audit key is unusable, or a round holds the log open.
        VerificationError: the log's tail does not verify.
    """
    section = config.coordinator
    log_signer = coordinator_signer(config)
    private_folders(section.audit_log.parent)
    audit = AuditLog.open(section.audit_log, party=section.name, signer=log_signer)
    outcome = "done"
    try:
        yield audit
    except BaseException:
        outcome = "failed"
        raise
    finally:
        try:  # as a round's: a log that ends "shutdown, checkpoint" was closed cleanly
            audit.append(SHUTDOWN, reason=outcome)
        finally:
            audit.close()


def node_entry(config: CoordinatorConfig, name: str) -> NodeEntry:
    """The ``[[nodes]]`` entry named ``name``.

    Raises:
        InputError: no such node in coordinator.toml.
    """
    for entry in config.nodes:
        if entry.name == name:
            return entry
    raise InputError(f"{config.path or 'coordinator.toml'}: no [[nodes]] entry named {name!r}")


@contextmanager
def stub(entry: NodeEntry, tls: TlsMaterial) -> Iterator[pb_grpc.NodeStub]:
    """A Node stub over a new mutual-TLS channel to ``entry``, closed after use."""
    channel = grpc.secure_channel(
        entry.address,
        tls.channel_credentials(),
        options=[
            ("grpc.ssl_target_name_override", entry.name),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0),
        ],
    )
    try:
        yield pb_grpc.NodeStub(channel)
    finally:
        channel.close()


def call(entry: NodeEntry, what: Callable[[], _T], *, timeout: float = DEFAULT_TIMEOUT) -> _T:
    """Run one call to ``entry``; a gRPC error becomes one privacy-safe line.

    Raises:
        Refused: the node refused (its reason, made safe).
        PeerError: unreachable, TLS failure, deadline, anything else.
    """
    try:
        return what()
    except grpc.RpcError as exc:
        reason, refused, _ = describe_rpc_error(
            exc, address=entry.address, deadline_seconds=timeout
        )
        raise (Refused if refused else PeerError)(entry.name, reason) from None
