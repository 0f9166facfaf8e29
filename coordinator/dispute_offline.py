"""Disputes and work lists for an offline department: sealed inbox files (docs/offline.md).

A department with ``transport = "offline"`` gets what the online calls carry
(``FileDispute``, ``WithdrawDispute``, ``DisputeAnswers``, ``ShareList``) as one
:class:`proto.xmatch_pb2.InboxBundle` in a sealed file of kind ``inbox``
(:mod:`keys.sealed`: HPKE to the department's sealing key, signed by us),
``DIR/NODE.inbox``. The department runs ``xmatch node inbox`` on it, which applies
the same handlers as the online node and writes a sealed ``inbox-reply``
(:class:`proto.xmatch_pb2.InboxReply`); ``xmatch dispute import`` reads that
back: disputes the node received are ``delivered``, answers are recorded and
logged as online. The file header's ``round_id`` is a fresh random exchange id.

Both files hold the disputed identity numbers (encrypted); the headers name
only members. Our protocol log gets ``offline_file`` for each file written or
opened, and the dispute and ``list_shared`` entries as online.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import TextIO

from coordinator.config import CoordinatorConfig, NodeEntry
from coordinator.disputes import AuditSink, DisputeBook, record_answers
from coordinator.node_link import coordinator_log, node_entry
from coordinator.offline import keys_of, seal_cert_of, write_atomic
from keys.sealed import SealedFileError, open_sealed, read_sealed, seal
from proto import xmatch_pb2 as pb
from psi.errors import InputError, ProtocolError
from runtime.files import private_folders
from runtime.text import printable

__all__ = ["bundle_for", "import_reply", "write_inbox"]


def bundle_for(book: DisputeBook, node: str) -> pb.InboxBundle:
    """Every open dispute of ``node`` (delivered or not: the node ignores a repeat), the
    withdrawals it has not heard of, and the request for the answers (to both)."""
    bundle = pb.InboxBundle()
    pending = book.of_node(node)
    for item in pending:
        if item.status == "open":
            bundle.disputes.append(item.to_proto())
        elif item.withdraw_reason:
            bundle.withdrawals.append(
                pb.DisputeWithdrawal(dispute_id=item.dispute_id, reason=item.withdraw_reason)
            )
    # a withdrawal's id too: if the node answered before it, the answer comes home
    bundle.answers_request.dispute_ids.extend(
        d.dispute_id for d in pending if d.status == "open" or d.withdraw_reason
    )
    return bundle


def write_inbox(
    config: CoordinatorConfig,
    audit: AuditSink,
    entry: NodeEntry,
    bundle: pb.InboxBundle,
    *,
    out_dir: Path,
    name: str | None = None,
) -> Path:
    """Seal ``bundle`` for the offline node ``entry`` into ``out_dir/NAME`` (mode 0600).

    Raises:
        InputError: our keys or the node's sealing certificate cannot be read, or the
            file cannot be written.
        VerificationError: the node's sealing certificate is not the CA's for it.
    """
    keys = keys_of(config)
    cert_path = seal_cert_of(config, entry)
    try:
        cert = cert_path.read_bytes()
    except OSError as exc:
        raise InputError(f"{cert_path}: cannot read ({exc.strerror})") from None
    now = _dt.datetime.now(_dt.UTC)
    data = seal(
        bundle.SerializeToString(),
        kind="inbox",
        sender=keys.sender,
        recipient=entry.name,
        recipient_seal_cert_pem=cert,
        ca_pem=keys.ca_pem,
        round_id=os.urandom(16).hex(),
        expires=now + _dt.timedelta(days=entry.offline_days),
        now=now,
    )
    path = out_dir / (name or f"{entry.name}.inbox")
    try:
        private_folders(out_dir)
        write_atomic(path, data)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror})") from None
    audit.append(
        "offline_file",
        kind="inbox",
        action="written",
        peer=entry.name,
        file_sha256=hashlib.sha256(data).hexdigest(),
        disputes=len(bundle.disputes),
        withdrawals=len(bundle.withdrawals),
        work_lists=len(bundle.work_lists),
    )
    return path


def import_reply(config: CoordinatorConfig, reply: Path, *, out: TextIO, err: TextIO) -> int:
    """``xmatch dispute import --reply FILE``: record what an offline node's reply says.

    Raises:
        SealedFileError: the reply is refused (altered, not ours, expired, …).
        InputError: unreadable, from a node that is not an offline node of ours.
    """
    keys = keys_of(config)
    try:
        data = read_sealed(reply)
    except OSError as exc:
        raise InputError(f"{reply}: cannot read ({exc.strerror})") from None
    try:
        opened = open_sealed(data, kind="inbox-reply", recipient=keys.sealing, ca_pem=keys.ca_pem)
        entry = node_entry(config, opened.sender)
        if not entry.offline:
            raise SealedFileError(f"{entry.name} is not an offline node of ours")
        message = pb.InboxReply.FromString(opened.payload)
    except SealedFileError as exc:
        raise SealedFileError(f"{reply}: refused: {exc.diagnostics()}") from None
    except Exception as exc:  # protobuf's DecodeError: the content, never quoted
        if isinstance(exc, InputError):
            raise
        raise ProtocolError(f"{reply}: refused: unreadable content") from None
    us = config.coordinator.name
    with coordinator_log(config) as audit, DisputeBook.open(config) as book:
        audit.append(
            "offline_file",
            kind="inbox-reply",
            action="opened",
            peer=entry.name,
            file_sha256=opened.sha256,
            file_id=opened.file_id,
        )
        delivered = 0
        for receipt in message.receipts:
            known = book.get(receipt.dispute_id)
            if known is not None and known.node == entry.name:
                if not known.delivered:
                    book.set_delivered(known.dispute_id)
                    delivered += 1
                if known.withdraw_reason and receipt.status == "withdrawn":
                    book.withdrawal_sent(known.dispute_id)
        answered = record_answers(book, audit, message.answers, us=us, node=entry.name)
    for line in message.refusals:  # the node's words: never trusted to be printable
        print(f"warning: {entry.name}: refused {printable(' '.join(line.split()))[:200]}", file=err)
    print(f"{entry.name}: {delivered} delivered, {len(answered)} answered", file=out)
    for item in answered:
        print(f"  {item.dispute_id} {item.status}: {printable(item.note)}", file=out)
    for share in message.shares:
        print(f"{entry.name}: work list {share.share_id}: {share.rows} row(s) received", file=out)
    return 0
