"""Verifying protocol logs: small pure functions over bytes.

The construction (:mod:`audit.format`) is a hash chain over the logged line bytes
with signed checkpoints, the linear special case of an RFC 6962 log: ``prev`` of
entry n is SHA-256 of line n-1, and a checkpoint signs the chain head together with
its own fields, so one valid signature authenticates every entry before it.

:func:`check_log` collects *findings* (each naming a line, which is also the
entry's seq in an intact log) so that a reviewer sees every problem;
:func:`verify_log` raises on the first one. Findings are errors (tampering,
damage, an unsigned tail), warnings (a key change without a CA; an unsigned
tail when the caller allows one, for a log still being written) or notes (the
log does not end with a clean shutdown): only errors make a log FAIL.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from audit import format as fmt
from audit import gm
from keys.certs import NAME_PATTERN, inspect_member_certificate
from keys.handles import key_id as compute_key_id
from psi.errors import ProtocolError, VerificationError
from psi.sm2_signature import verify as sm2_verify

_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


@dataclass(frozen=True)
class Entry:
    """One parsed log line. ``fields`` holds everything but the header keys."""

    line: int
    seq: int
    ts: _dt.datetime
    party: str
    event: str
    prev: str
    fields: Mapping[str, fmt.Value]
    raw: bytes = field(repr=False)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate key")
        out[key] = value
    return out


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _reject_constant(text: str) -> object:
    raise ValueError("NaN and Infinity are not JSON")


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _hex(obj: Mapping[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    length = fmt.HEX_FIELDS[key]
    if not isinstance(value, str) or len(value) != length or fmt.HEX.fullmatch(value) is None:
        raise ProtocolError(f"{where}: {key!r} is not {length} lower-case hex digits")
    return value


def parse_line(raw: bytes, *, line: int) -> Entry:
    """Parse one log line (without its newline) into an :class:`Entry`.

    Raises:
        ProtocolError: not UTF-8, not a JSON object, duplicate keys, a missing or
            ill-typed header key, an unknown event, a field that is not a scalar or
            a flat list of scalars, or a malformed checkpoint.
    """
    where = f"entry {line}"
    if len(raw) >= fmt.MAX_LINE:
        raise ProtocolError(f"{where}: line longer than {fmt.MAX_LINE} bytes")
    try:
        obj = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=_finite,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{where}: not UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"{where}: not valid JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: not a JSON object")
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ProtocolError(f"{where}: 'seq' is not a positive integer")
    ts_text = obj.get("ts")
    if not isinstance(ts_text, str) or _TS.fullmatch(ts_text) is None:
        raise ProtocolError(f"{where}: 'ts' is not an RFC 3339 UTC timestamp")
    try:
        ts = _dt.datetime.fromisoformat(ts_text)
    except ValueError as exc:
        raise ProtocolError(f"{where}: 'ts' is not a valid date and time") from exc
    party = obj.get("party")
    if not isinstance(party, str) or NAME_PATTERN.fullmatch(party) is None:
        raise ProtocolError(f"{where}: 'party' is not a member name")
    event = obj.get("event")
    if not isinstance(event, str) or event not in fmt.EVENTS:
        raise ProtocolError(f"{where}: 'event' is not one of the logged events")
    prev = _hex(obj, "prev", where)
    fields: dict[str, fmt.Value] = {}
    for key, value in obj.items():
        if key in fmt.HEADER:
            continue
        if fmt.FIELD_NAME.fullmatch(key) is None or fmt.looks_like_identity_number(key):
            raise ProtocolError(f"{where}: invalid field name")
        texts = value if isinstance(value, list) else [value]
        if key in fmt.HEX_FIELDS:
            # exempt from the identity guard only as exact-length lower-case hex
            for text in texts:
                if not isinstance(text, str) or not fmt.is_hex_field(key, text):
                    raise ProtocolError(
                        f"{where}: {key!r} is not {fmt.HEX_FIELDS[key]} lower-case hex digits"
                    )
        elif key not in ("cert", "sig", "sm2_binding"):
            for text in texts:
                if isinstance(text, bool) or text is None:
                    continue
                if isinstance(text, str) and fmt.looks_like_identity_number(text):
                    raise ProtocolError(f"{where}: field {key!r} looks like an identity number")
                if isinstance(text, (int, float)) and fmt.number_looks_like_identity_number(text):
                    raise ProtocolError(f"{where}: field {key!r} looks like an identity number")
        flat_list = isinstance(value, list) and all(_is_scalar(item) for item in value)
        if flat_list or _is_scalar(value):
            fields[key] = value
        else:
            raise ProtocolError(f"{where}: field {key!r} is not a scalar or a flat list")
    if event == fmt.CHECKPOINT:
        _parse_checkpoint(obj, raw, where)
    elif fmt.RESERVED & fields.keys():
        raise ProtocolError(f"{where}: checkpoint fields in a {event} entry")
    problem = fmt.anchor_problem(event, fields)
    if problem is not None:
        raise ProtocolError(f"{where}: {problem}")
    return Entry(
        line=line, seq=seq, ts=ts, party=party, event=event, prev=prev, fields=fields, raw=raw
    )


def _parse_checkpoint(obj: Mapping[str, object], raw: bytes, where: str) -> None:
    covers = obj.get("covers")
    if not isinstance(covers, int) or isinstance(covers, bool) or covers < 0:
        raise ProtocolError(f"{where}: checkpoint 'covers' is not a non-negative integer")
    _hex(obj, "head", where)
    _hex(obj, "key_id", where)
    for key in ("cert", "sig"):
        value = obj.get(key)
        if not isinstance(value, str) or _B64.fullmatch(value) is None:
            raise ProtocolError(f"{where}: checkpoint {key!r} is not base64")
    if list(obj)[-1] != "sig" or fmt.split_signature(raw) is None:
        raise ProtocolError(f"{where}: checkpoint 'sig' is not the last key")


def _b64(text: str, what: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(f"{what} is not valid base64") from exc
    if base64.b64encode(data).decode() != text:
        raise VerificationError(f"{what} is not canonical base64")
    return data


def verify_link(entry: Entry, *, expected_prev: str) -> None:
    """Check ``entry.prev`` against the hash of the line before (or the genesis value).

    Raises:
        VerificationError: they differ (stating both).
    """
    if not hmac.compare_digest(entry.prev.encode(), expected_prev.encode()):
        raise VerificationError(f"prev is {entry.prev[:16]}…, expected {expected_prev[:16]}…")


def verify_checkpoint_signature(entry: Entry, *, ca_pem: bytes | None) -> None:
    """Check one checkpoint entry.

    Steps:
      1. Split ``sig`` off the line as written; decode it (canonical base64, 64 bytes).
      2. ``covers`` is seq − 1 and ``head`` equals ``prev``.
      3. ``cert`` is an audit certificate valid at the checkpoint's time; with
         ``ca_pem`` it was issued by that federation CA.
      4. The certificate names the log's party, and ``key_id`` is its key's hash.
      5. The Ed25519 signature over ``CHECKPOINT_DOMAIN || line-without-sig`` verifies.

    Raises:
        VerificationError: any step fails.
    """
    # (1)
    split = fmt.split_signature(entry.raw)
    if split is None or entry.event != fmt.CHECKPOINT:
        raise VerificationError("not a checkpoint line")
    unsigned, sig_text = split
    sig = _b64(sig_text, "signature")
    if len(sig) != 64:
        raise VerificationError(f"signature is {len(sig)} bytes, expected 64")
    # (2)
    covers, head = entry.fields.get("covers"), entry.fields.get("head")
    if covers != entry.seq - 1:
        raise VerificationError(f"checkpoint covers {covers}, expected {entry.seq - 1}")
    if not isinstance(head, str) or not hmac.compare_digest(head.encode(), entry.prev.encode()):
        raise VerificationError("checkpoint head differs from its prev")
    # (3)
    cert_text = entry.fields.get("cert")
    der = _b64(cert_text if isinstance(cert_text, str) else "", "certificate")
    info = inspect_member_certificate(der, ca_pem=ca_pem, usage="audit", at=entry.ts)
    # (4)
    if info.name != entry.party:
        raise VerificationError(
            f"checkpoint signed by {info.name!r}, but the log is {entry.party!r}'s"
        )
    if "sm2_key" in entry.fields:
        _verify_gm_checkpoint(entry, info.public_key_raw, unsigned, sig)
        return
    claimed = entry.fields.get("key_id")
    computed = compute_key_id(info.public_key_raw)
    if not isinstance(claimed, str) or not hmac.compare_digest(claimed.encode(), computed.encode()):
        raise VerificationError(
            f"key_id {claimed!s:.16}… does not match the certificate's key {computed[:16]}…"
        )
    # (5)
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(info.public_key_raw).verify(
            sig, fmt.checkpoint_message(unsigned)
        )
    except InvalidSignature as exc:
        raise VerificationError("checkpoint signature does not verify") from exc


def _verify_gm_checkpoint(entry: Entry, audit_key: bytes, unsigned: bytes, sig: bytes) -> None:
    """Steps 4-5 under the GM profile (audit/gm.py): ``key_id`` is the SM3 of ``sm2_key``,
    ``sm2_binding`` is the certified audit key's Ed25519 signature vouching for it, and
    ``sig`` is its SM2 signature (default user ID) over the same message."""
    sm2_hex, binding_text = entry.fields.get("sm2_key"), entry.fields.get("sm2_binding")
    if not isinstance(sm2_hex, str) or not fmt.is_hex_field("sm2_key", sm2_hex):
        raise VerificationError("checkpoint sm2_key is not 130 hex digits")
    sm2_public = bytes.fromhex(sm2_hex)
    claimed = entry.fields.get("key_id")
    computed = gm.sm2_key_id(sm2_public)
    if not isinstance(claimed, str) or not hmac.compare_digest(claimed.encode(), computed.encode()):
        raise VerificationError(
            f"key_id {claimed!s:.16}… does not match the SM2 key {computed[:16]}…"
        )
    binding = _b64(binding_text if isinstance(binding_text, str) else "", "SM2 key binding")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(audit_key).verify(
            binding, gm.binding_message(entry.party, sm2_public)
        )
    except InvalidSignature as exc:
        raise VerificationError("the SM2 key is not bound to the audit certificate") from exc
    try:
        valid = sm2_verify(sm2_public, fmt.checkpoint_message(unsigned), sig)
    except OSError as exc:
        raise VerificationError(f"SM2 checkpoint cannot be checked here ({exc})") from exc
    if not valid:
        raise VerificationError("checkpoint SM2 signature does not verify")


Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Finding:
    """One problem in one log. ``line`` is 1-based (None: the log as a whole)."""

    line: int | None
    message: str
    severity: Severity = "error"

    def describe(self) -> str:
        """``entry N: message`` (or just the message)."""
        return f"entry {self.line}: {self.message}" if self.line is not None else self.message


@dataclass(frozen=True)
class LogVerification:
    """The result of checking one log."""

    name: str
    party: str | None
    entries: tuple[Entry, ...]
    findings: tuple[Finding, ...]
    closed_cleanly: bool = False
    """The last entry is a valid checkpoint right after a ``shutdown`` entry."""

    @property
    def errors(self) -> tuple[Finding, ...]:
        """Findings that make the log FAIL."""
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """Findings that do not make the log fail, but need a look."""
        return tuple(f for f in self.findings if f.severity == "warning")

    @property
    def notes(self) -> tuple[Finding, ...]:
        """Remarks (how the log ends)."""
        return tuple(f for f in self.findings if f.severity == "note")

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors


@dataclass(frozen=True)
class VerifyResult:
    """Per-log results, in the order given."""

    logs: tuple[LogVerification, ...]

    @property
    def ok(self) -> bool:
        """Every log is intact."""
        return all(log.ok for log in self.logs)


def check_log(
    data: bytes,
    *,
    name: str,
    ca_pem: bytes | None = None,
    allow_unsigned_tail: bool = False,
) -> LogVerification:
    """Check a whole log and collect every finding. Never raises on any input.

    Steps:
      1. Split into lines; a last line without a newline is a truncation.
      2. Parse each line (a malformed line is a finding, its bytes still hashed).
      3. Seq starts at 1 and increases by one per line.
      4. All entries name the same party.
      5. Each ``prev`` is the hash of the line before (the genesis value for line 1).
         A broken link is blamed on the entry whose bytes changed: if the link after
         it is broken too, this entry's own ``prev`` changed, otherwise the entry
         before it did.
      6. Each checkpoint verifies (see :func:`verify_checkpoint_signature`).
      7. The last entry is covered by a valid checkpoint. An unsigned tail (or an
         empty log) is an error: a log cut short looks exactly like it. With
         ``allow_unsigned_tail`` (a log still being written) it is a warning.
      8. The log was closed cleanly: its last two entries are a ``shutdown`` and
         the checkpoint that signs it. Otherwise a note: a live log, a killed
         writer and a log cut right after an earlier checkpoint all end so.
    """
    findings: list[Finding] = []
    tail_severity: Severity = "warning" if allow_unsigned_tail else "error"
    # (1)
    pieces = data.split(b"\n")
    truncated = pieces[-1] != b""
    lines = pieces if truncated else pieces[:-1]
    if not lines:
        return LogVerification(name, None, (), (Finding(None, "empty log", tail_severity),))
    profile = fmt.profile_of(lines[0])
    hashes = [fmt.line_hash(raw, profile) for raw in lines]
    # (2)
    parsed: dict[int, Entry] = {}
    for number, raw in enumerate(lines, start=1):
        if truncated and number == len(lines):
            findings.append(
                Finding(number, "last line is incomplete (no newline): the log was truncated")
            )
            continue
        try:
            parsed[number] = parse_line(raw, line=number)
        except ProtocolError as exc:
            findings.append(
                Finding(number, f"malformed entry: {exc.diagnostics().split(': ', 1)[-1]}")
            )
    # (3)
    out_of_order: set[int] = set()
    for number, entry in parsed.items():
        before = parsed.get(number - 1)
        expected = 1 if number == 1 else (before.seq + 1 if before is not None else number)
        if entry.seq != expected:
            out_of_order.add(number)
            findings.append(
                Finding(
                    number,
                    f"seq {entry.seq}, expected {expected}: "
                    "entries were deleted, inserted or reordered",
                )
            )
    # (4)
    party = next((e.party for e in parsed.values()), None)
    for number, entry in parsed.items():
        if entry.party != party:
            findings.append(
                Finding(number, f"written by {entry.party!r}, but the log is {party!r}'s")
            )
    # (5)
    broken: dict[int, str] = {}
    for number, entry in parsed.items():
        expected_prev = fmt.genesis(profile) if number == 1 else hashes[number - 2]
        try:
            verify_link(entry, expected_prev=expected_prev)
        except VerificationError as exc:
            broken[number] = str(exc)
    explained: set[int] = set()
    for number in sorted(broken):
        if number in explained:
            continue
        if number == 1:
            findings.append(Finding(1, f"first entry does not start the chain ({broken[1]})"))
        elif number in out_of_order:
            findings.append(
                Finding(number, f"does not follow entry {number - 1} ({broken[number]})")
            )
        elif number + 1 in broken:
            explained.add(number + 1)
            findings.append(
                Finding(number, f"entry was altered: its prev changed ({broken[number]})")
            )
        else:
            findings.append(
                Finding(
                    number - 1,
                    f"entry was altered: its hash no longer matches the prev of entry {number} "
                    f"({broken[number]})",
                )
            )
    # (6)
    last_signed = 0
    key_ids: list[tuple[int, str]] = []
    for number, entry in parsed.items():
        if entry.event != fmt.CHECKPOINT:
            continue
        try:
            verify_checkpoint_signature(entry, ca_pem=ca_pem)
        except VerificationError as exc:
            findings.append(
                Finding(
                    number,
                    f"checkpoint does not verify ({exc}): entries {last_signed + 1}-{number} "
                    "are not authenticated",
                )
            )
            continue
        last_signed = number
        kid = entry.fields.get("key_id")
        if isinstance(kid, str) and (not key_ids or key_ids[-1][1] != kid):
            key_ids.append((number, kid))
    if ca_pem is None:
        for number, _ in key_ids[1:]:
            findings.append(
                Finding(
                    number,
                    "signing key changed (give --ca to check both keys against the CA)",
                    "warning",
                )
            )
    # (7) entries before a checkpoint that failed are already reported with it
    last_checkpoint = max(
        (n for n, e in parsed.items() if e.event == fmt.CHECKPOINT), default=last_signed
    )
    tail_start = max(last_signed, last_checkpoint) + 1
    if tail_start <= len(lines):
        findings.append(
            Finding(
                tail_start,
                f"unsigned tail of {len(lines) - tail_start + 1} entries "
                f"(entries {tail_start}-{len(lines)} are not covered by a checkpoint: "
                "the log was cut short, or its writer stopped without closing it; "
                "--allow-unsigned-tail accepts a log that is still being written)",
                tail_severity,
            )
        )
    # (8)
    last, before_last = parsed.get(len(lines)), parsed.get(len(lines) - 1)
    closed_cleanly = (
        last is not None
        and before_last is not None
        and last_signed == len(lines)
        and last.event == fmt.CHECKPOINT
        and before_last.event == fmt.SHUTDOWN
    )
    if not closed_cleanly:
        findings.append(
            Finding(
                len(lines),
                "the log does not end with a shutdown entry and its checkpoint: it is still "
                "being written, its writer was killed, or it was cut short",
                "note",
            )
        )
    order = {"error": 0, "warning": 1, "note": 2}
    findings.sort(key=lambda f: (f.line or 0, order[f.severity]))
    return LogVerification(
        name, party, tuple(parsed.values()), tuple(findings), closed_cleanly=closed_cleanly
    )


def verify_log(
    data: bytes, *, name: str, ca_pem: bytes | None = None, allow_unsigned_tail: bool = False
) -> None:
    """Raise on the first error in a log (warnings and notes pass).

    Raises:
        VerificationError: ``entry N: what`` for the first error :func:`check_log` finds.
    """
    result = check_log(data, name=name, ca_pem=ca_pem, allow_unsigned_tail=allow_unsigned_tail)
    if result.errors:
        raise VerificationError(f"{name}: {result.errors[0].describe()}")


def check_logs(
    logs: Sequence[tuple[str, bytes]],
    *,
    ca_pem: bytes | None = None,
    allow_unsigned_tail: bool = False,
) -> VerifyResult:
    """:func:`check_log` over ``(name, data)`` pairs."""
    return VerifyResult(
        tuple(
            check_log(data, name=name, ca_pem=ca_pem, allow_unsigned_tail=allow_unsigned_tail)
            for name, data in logs
        )
    )
