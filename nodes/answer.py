"""``xmatch node answer``: answer a sealed offline request inside the department.

Steps (docs/offline.md); each refusal is one line, and the protocol log says why:

1. read ``node.toml``; load our TLS key (it signs the response) and our sealing
   key ``NAME.seal.key`` (beside the TLS key; it opens the request);
2. open the request (:func:`keys.sealed.open_sealed`): layout, recipient,
   sender certified by the federation CA, signature, expiry, HPKE;
3. refuse a request answered before (replay: an ``offline_file`` entry
   ``opened`` *and* a response ``written`` for its id in our log);
4. rebuild budgets and replay memory from the log as ``node serve`` does
   (an attempt at this same request that was killed before its response was
   written does not count against it);
5. run every sub-round through :class:`nodes.servicer.NodeServicer` itself, with
   the request's messages as the stream: the same authorization (allow list,
   purpose, sizes, budgets, suites), drivers, log entries and transcript as online;
6. write the sealed response atomically (temporary file + rename) and log its digest.

A match set whose source failed (its database unreachable) writes no response: the
request stays unused, for a retry once the source is back. An attempt that ends
without a response (that, a Ctrl-C, a response that cannot be written) is logged as
``offline_file`` ``failed`` with its reason; ``audit reconcile`` then accepts the retry.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import json
import os
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TextIO

import grpc

from audit.format import SHUTDOWN
from audit.log import AuditLog
from keys.certs import inspect_member_certificate
from keys.sealed import (
    Opened,
    SealedFileError,
    SenderKey,
    load_sealing_key,
    load_sender_key,
    open_sealed,
    peek_header,
    read_sealed,
    seal,
)
from nodes.auth import Peer, peer_scope
from nodes.authorization import capabilities
from nodes.config import NodeConfig, load_node_config
from nodes.handlers import NodeState
from nodes.history import read_round_entries, restore_limits
from nodes.limits import QueryBudget, ReplayGuard
from nodes.matchsets import MatchSetStore
from nodes.servicer import NodeServicer
from proto import xmatch_pb2 as pb
from psi.bundle import Bundle
from psi.errors import InputError, ProtocolError, XmatchError
from runtime.files import write_atomic

__all__ = ["answer_command"]

#: Refused and failed sub-rounds: the gRPC codes the servicer ends them with.
_REFUSED_CODES = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _NotAnswered(Exception):
    """A match set this node could not read (its database or file failed): no response.

    A response with that set failed would use the request up for a failure that a
    retry, once the source is back, does not have (docs/offline.md).
    """

    def __init__(self, failed: list[tuple[str, str]]) -> None:
        super().__init__("source failed")
        self.failed = failed


class _Reasons:
    """The protocol log as the servicer sees it, keeping the last ``round_failed`` reason.

    The requester is told only that the node failed; the node's own operator, who runs
    ``node answer``, is shown why (the same reason as in the log).
    """

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit
        self.last_failure = ""

    def append(self, event: str, **fields: object) -> int:
        if event == "round_failed":
            self.last_failure = str(fields.get("reason", ""))
        return self._audit.append(event, **fields)

    def append_anchored(self, event: str, **fields: object) -> tuple[int, str]:
        return self._audit.append_anchored(event, **fields)


class _FileCall:
    """The stand-in for a gRPC call context: the stream is a file, nothing to cancel."""

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code, details)


@dataclass(frozen=True)
class DepartmentFile:
    """A sealed file read in the department, with what opening and answering it needs."""

    cfg: NodeConfig
    passphrase: bytes | None
    sender: SenderKey
    data: bytes
    audit: AuditLog


def read_department_file(config: Path, file: Path, out: Path) -> DepartmentFile:
    """Load node.toml and our keys, read ``file``, check ``out`` is new, open the log
    (``xmatch node answer`` and ``xmatch node inbox`` alike).

    Raises:
        InputError: unreadable file, ``out`` exists, keys or the log unusable.
        ConfigError: bad node.toml.
    """
    cfg = load_node_config(config)
    node = cfg.node
    from nodes.server import _log_folder, _log_signer

    passphrase = cfg.node.key_passphrase()
    sender = load_sender_key(
        name=node.name,
        key=node.key,
        cert=node.cert,
        seal_cert=node.key.with_name(f"{node.name}.seal.crt"),
        passphrase=passphrase,
    )
    try:
        data = read_sealed(file)
    except OSError as exc:
        raise InputError(f"{file}: cannot read ({exc.strerror})") from None
    if out.exists():
        raise InputError(f"{out}: exists already; choose another --out")
    # before the request is answered: a response that cannot be written would leave the
    # request used up in the log, with nothing to carry back
    folder = out.parent
    if not folder.is_dir():
        raise InputError(f"{out}: its folder {folder} does not exist; choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{out}: its folder {folder} is not writable; choose another --out")
    _log_folder(config, cfg)
    audit = AuditLog.open(node.audit_log, party=node.name, signer=_log_signer(cfg, passphrase))
    return DepartmentFile(cfg=cfg, passphrase=passphrase, sender=sender, data=data, audit=audit)


#: the bytes a keyed-hash responder draws for its key (X25519, or one SM2 scalar try)
KEY_DRAW_BYTES = 32


def _key_draw(protocol: str, text: object) -> bytes:
    """The request's draw for this sub-round's key share, checked before anything uses it.

    Only a keyed-hash sub-round carries one, of exactly :data:`KEY_DRAW_BYTES`: the
    node's key share for that round, which the requester knows in any case (it shares
    the round key). Anything else would let the requester choose the node's secrets:
    the ecdh scalar ``b`` (then it could test any identity against the node's set), or,
    with a longer draw, the padding and the order of the answer.

    Raises:
        SealedFileError: a draw where none belongs, or of another length.
    """
    if not text:
        return b""
    if protocol != "keyed-hash":
        raise SealedFileError(
            f"malformed request content: a {protocol} sub-round carries a key draw; "
            "the node draws its own secrets"
        )
    try:
        draw = base64.b64decode(str(text), validate=True)
    except ValueError:
        raise SealedFileError("malformed request content: the key draw is not base64") from None
    if len(draw) != KEY_DRAW_BYTES:
        raise SealedFileError(
            f"malformed request content: the key draw is {len(draw)} bytes, not {KEY_DRAW_BYTES}"
        )
    return draw


def _seeded(draw: bytes) -> Callable[[int], bytes]:
    """``os.urandom`` whose first bytes are the request's draw (the keyed-hash key share)."""
    left = bytearray(draw)

    def rng(n: int) -> bytes:
        if left:
            take = bytes(left[:n])
            del left[:n]
            return take + os.urandom(n - len(take))
        return os.urandom(n)

    return rng


def _answered_before(path: Path, file_id: str) -> bool:
    """Whether our log holds a response written for the request ``file_id``."""
    if not path.exists():
        return False
    with path.open("rb") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(entry, dict)
                and entry.get("event") == "offline_file"
                and entry.get("kind") == "response"
                and entry.get("action") == "written"
                and entry.get("request_id") == file_id
            ):
                return True
    return False


def _state(config: NodeConfig, audit: AuditLog, round_id: str, draw: bytes) -> NodeState:
    """A node state as ``node serve`` rebuilds it; this request's unfinished attempts left out."""
    budget = QueryBudget()
    replay = ReplayGuard(config.node.replay_memory)
    entries = [e for e in read_round_entries(audit.path) if e.round_id != round_id]
    restore_limits(config, entries, budget=budget, replay=replay, now=_dt.datetime.now(_dt.UTC))
    return NodeState(
        config=config,
        store=MatchSetStore(config),
        budget=budget,
        replay=replay,
        rng=_seeded(draw),
    )


def _run_sub_round(
    servicer: NodeServicer, protocol: str, requests: list[bytes]
) -> tuple[str, str, list[bytes]]:
    """Drive the servicer with the request's messages; ``(status, reason, answers)``.

    ``status`` is ``ok``, ``refused``, ``failed`` (the request's fault: the same answer
    on a retry) or ``source failed`` (the node's own: its database or file).
    """
    out: list[bytes] = []
    responses: Iterator[Any]
    if protocol == "keyed-hash":
        kh = iter([pb.KeyedHashRequest.FromString(r) for r in requests])
        responses = servicer.KeyedHash(kh, _FileCall())  # type: ignore[arg-type]
    else:
        ec = iter([pb.EcdhRequest.FromString(r) for r in requests])
        responses = servicer.Ecdh(ec, _FileCall())  # type: ignore[arg-type]
    try:
        for response in responses:
            out.append(response.SerializeToString())
    except _Aborted as exc:
        if exc.code == grpc.StatusCode.INTERNAL:
            return "source failed", exc.details, []
        status = "refused" if exc.code in _REFUSED_CODES else "failed"
        return status, exc.details, []
    except KeyboardInterrupt:
        # A Ctrl-C between two messages lands here, outside the servicer: hand it in,
        # so that its end entry says "interrupted", not "cancelled by the requester"
        # (as a plain close of the generator would)
        if isinstance(responses, Generator):
            with contextlib.suppress(KeyboardInterrupt, StopIteration):
                responses.throw(KeyboardInterrupt())
        raise
    return "ok", "", out


def open_for_node(
    config: NodeConfig,
    data: bytes,
    passphrase: bytes | None,
    *,
    kind: Literal["request", "inbox"] = "request",
) -> tuple[Opened, str]:
    """Open a sealed file of ``kind`` sent to this node; (it, the sender's role).

    Raises:
        SealedFileError: refused (another recipient, altered, expired, unknown sender).
    """
    node = config.node
    sealing = load_sealing_key(
        node.key.with_name(f"{node.name}.seal.key"), name=node.name, passphrase=passphrase
    )
    ca_pem = node.ca.read_bytes()
    opened = open_sealed(data, kind=kind, recipient=sealing, ca_pem=ca_pem)
    role = inspect_member_certificate(
        opened.header["sender_cert"].encode(), ca_pem=ca_pem, usage="tls"
    ).role
    return opened, role


def _log_file(
    audit: AuditLog,
    opened_or_data: Opened | bytes,
    action: str,
    *,
    kind: str = "request",
    peer: str | None = None,
    **extra: Any,
) -> None:
    """An ``offline_file`` entry: the file's digest and ids, never its content."""
    if isinstance(opened_or_data, Opened):
        header, digest = opened_or_data.header, opened_or_data.sha256
    else:
        digest = hashlib.sha256(opened_or_data).hexdigest()
        try:
            header = peek_header(opened_or_data)
        except XmatchError:
            header = {}
    fields: dict[str, Any] = {
        "kind": kind,
        "action": action,
        "peer": peer or header.get("sender", "-") or "-",
        "file_sha256": digest,
        **extra,
    }
    if len(header.get("file_id", "")) == 32:
        fields["file_id"] = header["file_id"]
    if len(header.get("round_id", "")) == 32:
        fields["round_id"] = header["round_id"]
    try:
        audit.append("offline_file", **fields)
    except XmatchError:
        fields.pop("reason", None)
        fields["peer"] = "-"
        audit.append("offline_file", **fields, reason="withheld")


def _answers(
    config: NodeConfig,
    audit: AuditLog,
    opened: Opened,
    role: str,
    bundle: Bundle,
) -> Bundle:
    manifest = bundle.manifest
    if (
        manifest.get("node") != config.node.name
        or manifest.get("round_id") != opened.header["round_id"]
    ):
        raise SealedFileError("altered: the request's content names another node or round")
    views = {v.name: v for v in capabilities(config, opened.sender, role=role)}
    subs_out: list[dict[str, Any]] = []
    parts: list[bytes] = []
    log = _Reasons(audit)
    unread: list[tuple[str, str]] = []
    for sub in manifest.get("sub_rounds", []):
        lo, hi = sub["parts"]
        draw = _key_draw(str(manifest.get("protocol")), sub.get("responder_draw", ""))
        state = _state(config, audit, opened.header["round_id"], draw)
        servicer = NodeServicer(state, log)
        with peer_scope(Peer(name=opened.sender, role=role)):
            status, reason, answers = _run_sub_round(
                servicer, str(manifest.get("protocol")), list(bundle.parts[lo:hi])
            )
        if status == "source failed":
            unread.append((str(sub["match_set"]), log.last_failure or reason))
            continue
        first = len(parts)
        parts.extend(answers)
        view = views.get(str(sub["match_set"]))
        subs_out.append(
            {
                "match_set": sub["match_set"],
                "status": status,
                "reason": reason,
                "parts": [first, len(parts)],
                "circumstance": view.circumstance if view else "",
                "service_report": view.service_report if view else "",
                "display_name": view.display_name if view else "",
            }
        )
    if unread:
        raise _NotAnswered(unread)
    return Bundle(
        {
            "kind": "xmatch-offline-response",
            "node": config.node.name,
            "round_id": opened.header["round_id"],
            "request_id": opened.file_id,
            "request_sha256": opened.sha256,
            "display_name": config.node.display_name or "",
            "sub_rounds": subs_out,
        },
        tuple(parts),
    )


def answer_command(*, config: Path, request: Path, out: Path, stdout: TextIO | None = None) -> int:
    """``xmatch node answer`` (module docstring); returns 0 once the response is written.

    Raises:
        SealedFileError: the request is refused (one line).
        XmatchError: configuration, keys, or the response cannot be written.
    """
    out_stream = stdout if stdout is not None else sys.stdout
    read = read_department_file(config, request, out)
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
            opened, role = open_for_node(cfg, data, passphrase)
            if _answered_before(node.audit_log, opened.file_id):
                raise SealedFileError(
                    "answered before: carry back the response written then "
                    "(or ask for a new request)"
                )
            bundle = Bundle.from_bytes(opened.payload)
        except SealedFileError as exc:
            _log_file(audit, data, "refused", reason=exc.diagnostics())
            raise SealedFileError(f"{request}: refused: {exc.diagnostics()}") from None
        except ProtocolError:
            _log_file(audit, data, "refused", reason="unreadable content")
            raise InputError(f"{request}: refused: unreadable content") from None
        _log_file(audit, opened, "opened", file=request.name)
        # From here until the response is logged as written, an attempt that ends
        # otherwise is logged as failed, with why: a retry of the same request is
        # then legitimate (and audit reconcile reads it so), not a round id reused.
        try:
            try:
                response = _answers(cfg, audit, opened, role, bundle)
            except SealedFileError as exc:  # its content refused, before any set was read
                _log_file(audit, opened, "refused", reason=exc.diagnostics())
                raise SealedFileError(f"{request}: refused: {exc.diagnostics()}") from None
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                # signed by a coordinator of the federation, and still malformed: refuse it
                reason = f"malformed request content ({type(exc).__name__})"
                _log_file(audit, opened, "refused", reason=reason)
                raise SealedFileError(f"{request}: refused: {reason}") from None
            expires = _dt.datetime.fromisoformat(opened.header["expires"])
            sealed = seal(
                response.to_bytes(),
                kind="response",
                sender=sender,
                recipient=opened.sender,
                recipient_seal_cert_pem=opened.sender_seal_cert_pem,
                ca_pem=node.ca.read_bytes(),
                round_id=opened.header["round_id"],
                expires=expires,
            )
            try:
                write_atomic(out, sealed, mode=0o644)
            except OSError as exc:  # a full medium, a stick pulled out
                _log_file(audit, opened, "failed", reason="response not written", file=request.name)
                raise InputError(
                    f"{out}: cannot write ({exc.strerror}); the request is not used up: "
                    "answer it again with another --out"
                ) from None
        except _NotAnswered as exc:
            _log_file(audit, opened, "failed", reason="source failed", file=request.name)
            for match_set, why in exc.failed:
                print(f"{node.name}/{match_set}: failed ({why})", file=out_stream)
            names = ", ".join(f"{node.name}/{m}" for m, _ in exc.failed)
            raise InputError(
                f"{request}: not answered: {names} could not be read (see above); nothing "
                "was written and the request is not used up: answer it again once the "
                "source is back"
            ) from None
        except KeyboardInterrupt:
            _log_file(audit, opened, "failed", reason="interrupted", file=request.name)
            raise
        _log_file(
            audit,
            sealed,
            "written",
            kind="response",
            peer=opened.sender,
            request_id=opened.file_id,
            file=out.name,
        )
        for sub in response.manifest["sub_rounds"]:
            line = f"{node.name}/{sub['match_set']}: {sub['status']}"
            print(line + (f" ({sub['reason']})" if sub["reason"] else ""), file=out_stream)
        print(f"written: {out} (carry it back to {opened.sender})", file=out_stream)
        return 0
    finally:
        audit.append(SHUTDOWN, reason="done")
        audit.close()
