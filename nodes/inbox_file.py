"""``xmatch node inbox --file NODE.inbox --out NODE.reply``: an offline department's inbox.

The sealed ``inbox`` file (:mod:`coordinator.dispute_offline`) carries what the
online calls would: disputes, withdrawals, the request for answers, work lists.
Steps:

1. open the file (:func:`keys.sealed.open_sealed`: layout, recipient, the
   sender's certificates against the CA, signature, expiry, decryption);
2. the sender's role comes from its certificate, as the interceptor would say;
3. each item goes through the same handler as online (:mod:`nodes.disputes`,
   :mod:`nodes.shares`), with the same authorization and the same log entries;
   an item refused is one line of the reply (its id and the reason);
4. the reply (receipts, answers, work-list receipts) is sealed to the sender
   and written atomically; ``offline_file`` entries record both files' digests.

The node must not be serving (the command opens the node's protocol log).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import sys
from pathlib import Path
from typing import TextIO

from audit.format import SHUTDOWN
from audit.log import AuditLog
from keys.sealed import (
    Opened,
    SealedFileError,
    seal,
)
from nodes.answer import open_for_node, read_department_file
from nodes.auth import Peer
from nodes.config import NodeConfig
from nodes.disputes import dispute_answers, file_dispute, withdraw_dispute
from nodes.shares import receive_work_list
from proto import xmatch_pb2 as pb
from psi.errors import InputError, ProtocolError, Refused, XmatchError
from runtime.files import write_atomic
from runtime.text import printable

__all__ = ["apply_bundle", "inbox_command"]


def _why(exc: XmatchError) -> str:
    return exc.reason if isinstance(exc, Refused) else exc.diagnostics()


def apply_bundle(
    config: NodeConfig, audit: AuditLog, peer: Peer, bundle: pb.InboxBundle
) -> pb.InboxReply:
    """(3) Every item through its online handler; refusals become lines of the reply."""
    reply = pb.InboxReply()
    for dispute in bundle.disputes:
        try:
            reply.receipts.append(file_dispute(config, audit, peer, dispute))
        except (Refused, ProtocolError) as exc:
            reply.refusals.append(f"dispute {dispute.dispute_id[:32]}: {_why(exc)}")
    for withdrawal in bundle.withdrawals:
        try:
            reply.receipts.append(withdraw_dispute(config, audit, peer, withdrawal))
        except (Refused, ProtocolError) as exc:
            reply.refusals.append(f"withdrawal {withdrawal.dispute_id[:32]}: {_why(exc)}")
    if bundle.answers_request.dispute_ids:
        reply.answers.CopyFrom(dispute_answers(config, audit, peer, bundle.answers_request))
    for work_list in bundle.work_lists:
        try:
            reply.shares.append(receive_work_list(config, audit, peer, iter([work_list])))
        except (Refused, ProtocolError) as exc:
            reply.refusals.append(f"work list {work_list.share_id[:32]}: {_why(exc)}")
    return reply


def _open(config: NodeConfig, data: bytes, passphrase: bytes | None) -> tuple[Opened, Peer]:
    """(1)-(2) Raises SealedFileError."""
    opened, role = open_for_node(config, data, passphrase, kind="inbox")
    return opened, Peer(name=opened.sender, role=role)


def _logged(
    audit: AuditLog, data: bytes, action: str, kind: str, peer: str, **extra: object
) -> None:
    audit.append(
        "offline_file",
        kind=kind,
        action=action,
        peer=peer,
        file_sha256=hashlib.sha256(data).hexdigest(),
        **extra,
    )


def inbox_command(*, config: Path, file: Path, out: Path, stdout: TextIO | None = None) -> int:
    """``xmatch node inbox``: apply a sealed inbox and write the sealed reply.

    Raises:
        SealedFileError: the file is refused (one line).
        InputError: unreadable input, ``--out`` exists, the log is in use (the node
            is serving), or keys are unusable.
    """
    out_stream = stdout or sys.stdout
    read = read_department_file(config, file, out)
    cfg, passphrase, sender, data, audit = (
        read.cfg,
        read.passphrase,
        read.sender,
        read.data,
        read.audit,
    )
    node = cfg.node
    try:
        try:
            opened, peer = _open(cfg, data, passphrase)
            bundle = pb.InboxBundle.FromString(opened.payload)
        except SealedFileError as exc:
            _logged(audit, data, "refused", "inbox", "-", reason=exc.diagnostics())
            raise SealedFileError(f"{file}: refused: {exc.diagnostics()}") from None
        except Exception as exc:  # protobuf's DecodeError: never quote the content
            if isinstance(exc, XmatchError):
                raise
            _logged(audit, data, "refused", "inbox", "-", reason="unreadable content")
            raise InputError(f"{file}: refused: unreadable content") from None
        _logged(audit, data, "opened", "inbox", peer.name, file_id=opened.file_id)
        reply = apply_bundle(cfg, audit, peer, bundle)
        sealed = seal(
            reply.SerializeToString(),
            kind="inbox-reply",
            sender=sender,
            recipient=opened.sender,
            recipient_seal_cert_pem=opened.sender_seal_cert_pem,
            ca_pem=node.ca.read_bytes(),
            round_id=opened.header["round_id"],
            expires=_dt.datetime.fromisoformat(opened.header["expires"]),
        )
        write_atomic(out, sealed)
        _logged(audit, sealed, "written", "inbox-reply", opened.sender, request_id=opened.file_id)
        print(
            f"{len(bundle.disputes)} dispute(s), {len(bundle.withdrawals)} withdrawal(s), "
            f"{len(bundle.work_lists)} work list(s) received; {len(reply.answers.answers)} "
            f"answer(s) and {len(reply.refusals)} refusal(s) in the reply",
            file=out_stream,
        )
        for line in reply.refusals:
            print(f"refused: {printable(line)}", file=out_stream)  # may quote a bad id
        print(f"written: {out} (carry it back to {opened.sender})", file=out_stream)
        return 0
    finally:
        audit.append(SHUTDOWN, reason="done")
        audit.close()
