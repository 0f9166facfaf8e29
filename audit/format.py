"""The protocol-log format (version 1): events, fields, line encoding, chain hashing.

A log is UTF-8 text, one JSON object per line, each line ending in ``\\n``. Entry
``n`` (1-based, equal to its line number) is::

    {"seq": n, "ts": "2025-01-31T08:00:00.123456Z", "party": "justice",
     "event": "round_finished", "prev": "<hex>", ...fields}

Chain: ``prev`` of entry 1 is :data:`GENESIS`; ``prev`` of entry ``n`` is
``SHA-256(line n-1)``, hashing the line's bytes without its newline. A line is
serialized once, by :func:`encode_entry`, and is never re-serialized: every check
works on the bytes as written (like the leaf hashes of RFC 6962 section 2.1, which
hash the entry bytes as logged).

Checkpoints: an entry with ``"event": "checkpoint"`` carries ``covers`` (= its
seq − 1), ``head`` (= its ``prev``), ``key_id`` (hex SHA-256 of the Ed25519 public
key), ``cert`` (the CA-issued audit certificate, base64 DER) and, last, ``sig``:
the base64 Ed25519 signature of :data:`CHECKPOINT_DOMAIN` followed by the line up
to ``,"sig":`` with ``}`` appended. A checkpoint so authenticates every entry
before it (through ``head``) and its own fields.

What is never logged: identity numbers, names of persons, payload values, keys.
Field values are restricted to strings, numbers, booleans, null and flat lists of
those, and :func:`check_fields` refuses any string that looks like an identity
number.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import operator
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Final

from cryptography.hazmat.primitives import hashes

from psi.errors import XmatchError


def _sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


FORMAT_VERSION: Final = 1
GENESIS: Final = hashlib.sha256(b"xmatch protocol log v1 genesis").hexdigest()
"""The ``prev`` of entry 1."""
#: Log profiles: ``international`` (SHA-256 chain, Ed25519 checkpoints) and ``gm`` (SM3 chain,
#: SM2 checkpoints; see audit/gm.py). A log's profile is told by the ``prev`` of its entry 1.
PROFILES: Final = ("international", "gm")
GENESIS_GM: Final = _sm3(b"xmatch protocol log v1 genesis gm").hex()
"""The ``prev`` of entry 1 of a GM-profile log: SM3 of its own domain string."""
CHECKPOINT_DOMAIN: Final = b"xmatch protocol log v1 checkpoint\n"
"""Prefix of every signed checkpoint message (domain separation)."""
MAX_LINE: Final = 65536
"""Longest accepted line in bytes; longer lines are malformed."""

# The event vocabulary.
CONFIG_LOADED: Final = "config_loaded"
"""A party loaded its configuration. Fields: ``config`` (file name), ``config_sha256``
(hex), ``role``, ``match_sets`` (list, nodes), ``nodes`` (list, coordinator)."""
ROUND_STARTED: Final = "round_started"
"""A round began. Fields: the round fields below; ``query_size`` when known."""
ROUND_FINISHED: Final = "round_finished"
"""A round completed. Fields: the round fields plus ``query_size``, ``set_size`` (the
padded size class the coordinator saw, or the node's actual size), ``match_count``
(where the party learns it: not the node in ``ecdh``), ``seconds``, ``outcome``
(``"ok"``) and ``transcript`` (hex SHA-256 transcript hash, required). The requester
may add the responder's *anchor* (:data:`ANCHOR_FIELDS`): ``node_log_seq`` and
``node_log_head``, the seq and line hash of the node's own ``round_finished`` entry
(:meth:`audit.log.AuditLog.append_anchored`), both or neither."""
ROUND_FAILED: Final = "round_failed"
"""A round broke off. Fields: the round fields plus ``reason`` (a short code or
sentence, never data), ``seconds``, ``outcome`` (``"failed"``)."""
ROUND_REFUSED: Final = "round_refused"
"""A node refused a request. Fields: the round fields plus ``reason`` (for example
``"purpose not allowed"``, ``"query below minimum size"``, ``"budget exhausted"``),
``query_size``, ``outcome`` (``"refused"``)."""
KEY_USED: Final = "key_used"
"""A long-term key was used. Fields: ``key`` (``"tls"``, ``"audit"``), ``use``,
``round_id`` when it concerns a round."""
CHECKPOINT: Final = "checkpoint"
"""Written by the log itself. Fields: ``covers``, ``head``, ``key_id``, ``cert``, ``sig``."""
SHUTDOWN: Final = "shutdown"
"""A party stopped. Fields: ``reason`` (``"SIGTERM"``, ``"SIGINT"``, ``"done"``, or
``"startup failed"`` for a node that could not start serving)."""
CAPABILITIES_LISTED: Final = "capabilities_listed"
"""A node answered ``GetCapabilities``. Fields: ``requester`` (the certificate's
name), ``role``, ``responder``, ``match_sets`` (how many sets it was shown)."""
ROSTER_COMMITTED: Final = "roster_committed"
"""The coordinator's roster for a round. Fields: ``round_id``, ``roster_size``
(distinct identities queried), ``roster_sha256`` (:func:`roster_commitment`)."""
DISPUTE_FILED: Final = "dispute_filed"
"""A 疑义校核 dispute was filed (coordinator) or received (node). Fields: ``dispute_id``
(32 hex), ``round_id``, ``requester``, ``responder``, ``match_set``, ``reason`` (the
caseworker's words). Never the disputed person's identity."""
DISPUTE_ANSWERED: Final = "dispute_answered"
"""The department answered a dispute (node), or its answer arrived (coordinator). Fields:
``dispute_id``, ``requester``, ``responder``, ``verdict`` (``confirmed``/``corrected``),
``note``."""
DISPUTE_WITHDRAWN: Final = "dispute_withdrawn"
"""The coordinator withdrew a dispute. Fields: ``dispute_id``, ``requester``, ``responder``,
``reason``."""
LIST_SHARED: Final = "list_shared"
"""A work list went to a service department (coordinator) or arrived (node). Fields:
``share_id`` (32 hex), ``round_id``, ``requester``, ``responder``, ``list``
(``enrolled``/``gaps``/``exits``), ``purpose``, ``rows`` (a count), ``columns`` (names).
Never a cell of the list."""
OFFLINE_FILE: Final = "offline_file"
"""A sealed offline file (docs/offline.md) was written, opened or refused, or a request's
answer failed. Fields: ``kind`` (``"request"``/``"response"``), ``action``
(``"written"``, ``"opened"``, ``"refused"``, ``"failed"``: no response written),
``peer`` (the other member), ``file_sha256`` (hex SHA-256 of the whole file),
``file_id`` (its random id) and ``round_id`` when known, ``reason`` for a refusal
or a failure."""

EVENTS: Final = frozenset(
    {
        CONFIG_LOADED,
        ROUND_STARTED,
        ROUND_FINISHED,
        ROUND_FAILED,
        ROUND_REFUSED,
        KEY_USED,
        CHECKPOINT,
        SHUTDOWN,
        CAPABILITIES_LISTED,
        ROSTER_COMMITTED,
        DISPUTE_FILED,
        DISPUTE_ANSWERED,
        DISPUTE_WITHDRAWN,
        LIST_SHARED,
        OFFLINE_FILE,
    }
)
ROUND_EVENTS: Final = frozenset({ROUND_STARTED, ROUND_FINISHED, ROUND_FAILED, ROUND_REFUSED})
TERMINAL_EVENTS: Final = frozenset({ROUND_FINISHED, ROUND_FAILED, ROUND_REFUSED})
UNKNOWN_ROUND_ID: Final = "0" * 32
"""The ``round_id`` of a refusal that has no round yet: a call refused before its
start message could be read (unauthenticated, not a coordinator, no start in time,
unparseable), logged with ``match_set`` ``"-"``. Never a real round id
(:class:`psi.context.RoundContext` refuses it), so reconcile skips exactly such
refusals and reports any other entry under it."""

ROUND_FIELDS: Final = ("round_id", "requester", "responder", "purpose", "match_set", "protocol")
"""Every round event carries these: ``round_id`` (32 hex digits), the ``requester``'s
and ``responder``'s member names, ``purpose``, ``match_set`` and ``protocol``. A node
logs its TLS peer as ``requester``, and adds ``claimed_requester`` when the round
context named someone else."""

REQUIRED: Final[Mapping[str, frozenset[str]]] = {
    ROUND_STARTED: frozenset(ROUND_FIELDS) - {"protocol"},
    ROUND_FINISHED: frozenset(ROUND_FIELDS) | {"transcript"},
    ROUND_FAILED: frozenset(ROUND_FIELDS) - {"protocol"} | {"reason"},
    ROUND_REFUSED: frozenset(ROUND_FIELDS) - {"protocol"} | {"reason"},
    KEY_USED: frozenset({"key"}),
    CAPABILITIES_LISTED: frozenset({"requester", "role", "responder"}),
    ROSTER_COMMITTED: frozenset({"round_id", "roster_size", "roster_sha256"}),
    DISPUTE_FILED: frozenset(
        {"dispute_id", "round_id", "requester", "responder", "match_set", "reason"}
    ),
    DISPUTE_ANSWERED: frozenset({"dispute_id", "requester", "responder", "verdict"}),
    DISPUTE_WITHDRAWN: frozenset({"dispute_id", "requester", "responder"}),
    LIST_SHARED: frozenset(
        {"share_id", "round_id", "requester", "responder", "list", "purpose", "rows"}
    ),
    OFFLINE_FILE: frozenset({"kind", "action", "peer", "file_sha256"}),
}
"""Fields that :meth:`audit.log.AuditLog.append` requires per event."""

HEX_FIELDS: Final[Mapping[str, int]] = {
    "round_id": 32,
    "dispute_id": 32,
    "share_id": 32,
    "transcript": 64,
    "config_sha256": 64,
    "node_log_head": 64,
    "roster_sha256": 64,
    "prev": 64,
    "head": 64,
    "key_id": 64,
    "sm2_key": 130,
    "file_sha256": 64,
    "file_id": 32,
    "request_id": 32,
}
"""Fields that must be lower-case hex of exactly this length."""

ANCHOR_FIELDS: Final = ("node_log_seq", "node_log_head")
"""Optional in ``round_finished``, together: the responder's log position for the round
(a positive seq) and the hex SHA-256 of that line, as the responder reported it."""

HEADER: Final = ("seq", "ts", "party", "event", "prev")
CHECKPOINT_FIELDS: Final = ("covers", "head", "key_id", "cert", "sig")
RESERVED: Final = frozenset(HEADER) | frozenset(CHECKPOINT_FIELDS)

FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
HEX = re.compile(r"[0-9a-f]+")
_SEPARATORS = re.compile(r"[\s\-\u200b-\u200d\u2060\ufeff]+")
_ID_LIKE = re.compile(r"\d{15}")
_TIME = r"\d\d:\d\d(?::\d\d(?:[.,]\d{1,9})?)?(?:Z|[+-]\d\d:?\d\d)?"
_SET_ASIDE = re.compile(
    r"(?<!\d)(?:"
    rf"\d{{4}}([-/])\d\d\1\d\d(?:[T ]{_TIME})?"  # a date, with its time: 2026-11-29T03:14:15Z
    r"|\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?"  # an IPv4 address, with its port
    rf"|{_TIME}"  # a time on its own: 03:14:15.123456789
    r")(?!\d)"
)
"""Dates and times (``2026-11-29 03:14:15.123456Z``, ``2026/11/29 03:14``) and IPv4
addresses (``192.168.100.200:50099``): 15 or more digits once their punctuation is
gone, so pass 3 of :func:`looks_like_identity_number` sets them aside first, unless
digits touch them (:func:`_set_aside`)."""

Scalar = str | int | float | bool | None
Value = Scalar | list[Scalar]


def _without_punctuation(text: str) -> str:
    """``text`` keeping only letters, marks and digits (so ``.``, ``/``, ``_``, ``,``,
    ``:`` and every other separator go; letters such as ``X`` still separate)."""
    return "".join(c for c in text if unicodedata.category(c)[0] in "LMN")


def _is_kept(c: str) -> bool:
    """Whether pass 3 keeps character ``c``: letters, marks and digits."""
    return unicodedata.category(c)[0] in "LMN"


def _set_aside(match: re.Match[str]) -> str:
    """A letter in place of the date, time or address ``match``, unless digits touch it.

    Pass 3 drops punctuation and spaces, so a digit next to the match (through
    punctuation only) would join its digits: ``150802.2015-03-15.0021`` is an
    identity number around a date, and stays as it is.
    """
    text = match.string
    before = match.start() - 1
    while before >= 0 and not _is_kept(text[before]):
        before -= 1
    after = match.end()
    while after < len(text) and not _is_kept(text[after]):
        after += 1
    if (before >= 0 and text[before].isdecimal()) or (
        after < len(text) and text[after].isdecimal()
    ):
        return match.group()
    return " T "


def looks_like_identity_number(text: str) -> bool:
    """True if free text ``text`` contains what could be an identity number (GB 11643).

    That is any run of 15 digits (old 15-digit numbers, and every 18-character
    number, ``\\d{17}[\\dX]``, contains one), in three passes over the NFKC form
    (which folds full-width digits):

    1. as written;
    2. with spaces, hyphens and invisible characters removed (the normalization of
       ``data-contracts.md``: ``150102 2010 0101 1234``);
    3. with every other punctuation and symbol removed too (``150802.201503150021``,
       ``150802/2015/0315/0021``, ``150802_2015...``), after setting aside dates,
       times and IPv4 addresses (:data:`_SET_ASIDE`), which would otherwise read as
       15 to 20 digits. One is set aside only where no digit touches it through
       punctuation or spaces, so ``150802.2015-03-15.0021`` is still caught.

    For strings only; numbers go through :func:`number_looks_like_identity_number`.
    Deliberately broad: a false alarm costs a reworded message, a miss leaks a
    person. The price of pass 3: a decimal of 15 or more digits in free text
    (``123456789.123456``) is refused as well; numbers belong in number fields.
    """
    folded = unicodedata.normalize("NFKC", text)
    if _ID_LIKE.search(folded) or _ID_LIKE.search(_SEPARATORS.sub("", folded)):
        return True
    return bool(_ID_LIKE.search(_without_punctuation(_SET_ASIDE.sub(_set_aside, folded))))


def number_looks_like_identity_number(value: float) -> bool:
    """True if a logged number could be an identity number: 15 digits in a row in its
    decimal form. Its ``.`` is kept (``1234.567890123`` is a duration, not an ID)."""
    return bool(_ID_LIKE.search(repr(value)))


def is_hex_field(name: str, value: str) -> bool:
    """``value`` is lower-case hex of the exact length :data:`HEX_FIELDS` gives ``name``."""
    return len(value) == HEX_FIELDS[name] and HEX.fullmatch(value) is not None


def anchor_problem(event: str, fields: Mapping[str, object]) -> str | None:
    """What is wrong with the anchor fields of one entry, or None.

    The hex form of ``node_log_head`` is checked with the other :data:`HEX_FIELDS`.
    """
    present = [name for name in ANCHOR_FIELDS if name in fields]
    if not present:
        return None
    if event != ROUND_FINISHED:
        return f"{', '.join(present)} only belong in {ROUND_FINISHED} entries"
    if len(present) != len(ANCHOR_FIELDS):
        return "node_log_seq and node_log_head go together"
    seq = fields["node_log_seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "node_log_seq is not a positive integer"
    if not isinstance(fields["node_log_head"], str):
        return "node_log_head is not 64 lower-case hex digits"
    return None


class IdentityLeak(XmatchError):
    """A log field looked like an identity number; the entry was not written."""


def _check_scalar(name: str, value: object) -> Scalar:
    if name in HEX_FIELDS and not isinstance(value, str):
        raise XmatchError(f"log field {name!r}: expected {HEX_FIELDS[name]} lower-case hex digits")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= 10**14:
            raise IdentityLeak(f"log field {name!r}: integer too large to be a size or count")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise XmatchError(f"log field {name!r}: not a finite number")
        value = round(value, 6)
        if number_looks_like_identity_number(value):
            raise IdentityLeak(f"log field {name!r}: number looks like an identity number")
        return value
    if isinstance(value, str):
        if name in HEX_FIELDS:
            if not is_hex_field(name, value):
                raise XmatchError(
                    f"log field {name!r}: expected {HEX_FIELDS[name]} lower-case hex digits"
                )
            return value
        if len(value) > 1024:
            raise XmatchError(f"log field {name!r}: string longer than 1024 characters")
        if looks_like_identity_number(value):
            raise IdentityLeak(
                f"log field {name!r} looks like it holds an identity number; refusing to log it"
            )
        return value
    raise XmatchError(f"log field {name!r}: {type(value).__name__} is not a loggable value")


def check_fields(event: str, fields: Mapping[str, object]) -> dict[str, Value]:
    """Validate an event and its fields for :meth:`audit.log.AuditLog.append`.

    Hex fields (:data:`HEX_FIELDS`) must be exact-length lower-case hex; they are
    hashes or random ids, so they are exempt from the identity-number guard (a
    64-digit hash has a 15-digit decimal run by chance about 5% of the time).
    Every other string is free text and gets all of
    :func:`looks_like_identity_number`; numbers get
    :func:`number_looks_like_identity_number`. The anchor fields
    (:data:`ANCHOR_FIELDS`) are checked by :func:`anchor_problem`.

    Raises:
        IdentityLeak: a value looks like an identity number.
        XmatchError: unknown event, reserved or malformed field name, missing
            required field, or a value of a type that may not be logged.
    """
    if event not in EVENTS or event == CHECKPOINT:
        shown = repr(event) if isinstance(event, str) and event.isidentifier() else "(not shown)"
        raise XmatchError(f"unknown log event {shown}")
    missing = REQUIRED.get(event, frozenset()) - fields.keys()
    if missing:
        raise XmatchError(f"log event {event!r} lacks {', '.join(sorted(missing))}")
    out: dict[str, Value] = {}
    for name, value in fields.items():
        if FIELD_NAME.fullmatch(name) is None or looks_like_identity_number(name):
            raise XmatchError("a log field name is invalid (use [a-z][a-z0-9_]*, at most 64)")
        if name in RESERVED:
            raise XmatchError(f"log field name {name!r} is reserved")
        if isinstance(value, (list, tuple)):
            out[name] = [_check_scalar(name, item) for item in value]
        else:
            out[name] = _check_scalar(name, value)
    problem = anchor_problem(event, out)
    if problem is not None:
        raise XmatchError(f"log event {event!r}: {problem}")
    return out


def encode_entry(entry: Mapping[str, object]) -> bytes:
    """The one serialization of an entry: compact JSON, UTF-8, keys in given order, no newline."""
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


ROSTER_DOMAIN: Final = b"xmatch roster commitment v1\n"


def roster_commitment(round_id: bytes, identities: Sequence[str]) -> str:
    """Hex SHA-256 committing to a round's roster (``roster_sha256``).

    SHA-256 over :data:`ROSTER_DOMAIN`, the 16-byte round id, then each distinct
    canonical identity number (ASCII) in sorted order, each followed by ``\n``.
    Whoever holds the roster recomputes it; the log holds no identity.
    """
    return _commitment(round_id, _sorted_distinct(identities))


def _commitment(round_id: bytes, distinct: list[str]) -> str:
    h = hashlib.sha256(ROSTER_DOMAIN + bytes(round_id))
    if distinct:
        h.update(("\n".join(distinct) + "\n").encode("ascii"))
    return h.hexdigest()


def _sorted_distinct(identities: Sequence[str]) -> list[str]:
    # A round passes them sorted and distinct already: sorting that is linear, and
    # comparing neighbours (in C, through map) is cheaper than building a set.
    ordered = sorted(identities)
    if any(map(operator.eq, ordered, itertools.islice(ordered, 1, None))):
        return sorted(set(ordered))
    return ordered


def roster_fields(round_id: bytes, identities: Sequence[str]) -> dict[str, object]:
    """The fields of a :data:`ROSTER_COMMITTED` entry: what a reviewer compares each
    node's ``query_size`` with (:mod:`audit.reconcile`)."""
    distinct = _sorted_distinct(identities)
    return {
        "round_id": bytes(round_id).hex(),
        "roster_size": len(distinct),
        "roster_sha256": _commitment(round_id, distinct),
    }


def line_hash(line: bytes, profile: str = "international") -> str:
    """Hex SHA-256 (SM3 under the ``gm`` profile) of one line's bytes (without the
    newline): the next entry's ``prev``."""
    return _sm3(line).hex() if profile == "gm" else hashlib.sha256(line).hexdigest()


def genesis(profile: str) -> str:
    """The ``prev`` of entry 1 under ``profile``."""
    return GENESIS_GM if profile == "gm" else GENESIS


def profile_of(first_line: bytes) -> str:
    """The profile of a log from its first line (``gm`` when its prev is :data:`GENESIS_GM`)."""
    return "gm" if b'"prev":"' + GENESIS_GM.encode() + b'"' in first_line else "international"


SIG_MARKER: Final = b',"sig":"'


def checkpoint_message(unsigned_line: bytes) -> bytes:
    """What a checkpoint signs: the domain prefix and the line without its ``sig``."""
    return CHECKPOINT_DOMAIN + unsigned_line


def attach_signature(unsigned_line: bytes, sig_b64: str) -> bytes:
    """The checkpoint line: ``unsigned_line`` with ``"sig"`` appended as the last key."""
    if not unsigned_line.endswith(b"}"):
        raise ValueError("not a JSON object line")
    return unsigned_line[:-1] + SIG_MARKER + sig_b64.encode() + b'"}'


def split_signature(line: bytes) -> tuple[bytes, str] | None:
    """Inverse of :func:`attach_signature`: ``(unsigned_line, sig_b64)``, or None if absent."""
    at = line.rfind(SIG_MARKER)
    if at < 0 or not line.endswith(b'"}'):
        return None
    sig = line[at + len(SIG_MARKER) : -2]
    if b'"' in sig or b"\\" in sig:
        return None
    return line[:at] + b"}", sig.decode("ascii", errors="replace")


def list_fields(fields: Sequence[str]) -> str:
    """Comma-separated, for messages."""
    return ", ".join(fields)
