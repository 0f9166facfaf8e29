"""The round context: what every key derivation and transcript is bound to.

A round is identified by a random 128-bit id and described by the evaluation
date, the purpose, both parties' names, the match set and the protocol with
its parameters (protocols.md, "Round context"). :meth:`RoundContext.to_bytes`
is the canonical encoding used as HKDF ``info`` and as the transcript prefix:
versioned and length-prefixed, so two different contexts never encode alike.

Field rules (checked on construction, so a context that exists is valid):

* ``round_id``: exactly 16 bytes, not all zero (the all-zero id is the audit
  log's placeholder for a call that has no round, ``audit.format.UNKNOWN_ROUND_ID``);
* ``as_of``: a ``datetime.date`` (not a ``datetime``);
* ``purpose``, ``requester``, ``responder``, ``match_set``: 1..64 characters
  of ``[a-z0-9_.-]``, starting with a letter or digit, and without a run of 15
  digits once ``.``, ``_`` and ``-`` are dropped: such a name could be an
  identity number, and both parties log these names (the audit log's identity
  guard would refuse the entry);
* ``protocol``: ``"ecdh"`` or ``"keyed-hash"``;
* ``params``: sorted by name, names unique, names 1..32 of ``[a-z0-9_]``,
  values 1..128 of ``[A-Za-z0-9_.:+-]`` (RFC 9380 suite names fit).
"""

from __future__ import annotations

import datetime
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from psi.errors import ProtocolError

__all__ = ["DEFAULT_PARAMS", "PROTOCOLS", "Protocol", "RoundContext", "context_name_problem"]

Protocol = Literal["ecdh", "keyed-hash"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)

#: Parameters filled in by :meth:`RoundContext.new` when not given.
DEFAULT_PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "ecdh": (("suite", "x25519-sha256-u"),),
    "keyed-hash": (("prf", "aes128-ecb-v1"),),
}

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: 15 digits in a row (every identity number holds such a run), checked on a name
#: without its separators, as the audit log's identity guard reads it.
_ID_RUN = re.compile(r"\d{15}")
_NAME_SEPARATORS = re.compile(r"[_.-]")
_ZERO_ID = bytes(16)
_PARAM_NAME = re.compile(r"[a-z0-9_]{1,32}")
_PARAM_VALUE = re.compile(r"[A-Za-z0-9_.:+-]{1,128}")
_TEXT_FIELDS = ("purpose", "requester", "responder", "match_set", "protocol")
_MAGIC = b"XMCTX"
_VERSION = 1
_U16 = struct.Struct(">H")


#: the rules of a purpose, party or match set name, as :func:`context_name_problem` words them
_NAME_RULE = "must be 1-64 characters of [a-z0-9_.-]"
_ID_RULE = "must not hold 15 or more digits in a row"


def context_name_problem(value: object) -> str | None:
    """The rule ``value`` breaks as a purpose, party or match set name, or None.

    The rule text never holds the value: a name that breaks the digit rule may be
    an identity number. Config loaders check their names with it, so a bad name
    is a configuration error when the file is read, not when a round starts.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        return _NAME_RULE
    if _ID_RUN.search(_NAME_SEPARATORS.sub("", value)):
        return _ID_RULE
    return None


class _FieldError(ValueError):
    """A field breaks a rule; ``field`` and ``rule`` are fixed texts, never the value."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field} {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class RoundContext:
    """Immutable description of one match round; see the module docstring.

    Construct with :meth:`new` (fresh random round id) or :meth:`from_bytes`.

    Raises (on construction):
        ValueError: a field breaks the rules in the module docstring.
    """

    round_id: bytes
    as_of: datetime.date
    purpose: str
    requester: str
    responder: str
    match_set: str
    protocol: Protocol
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, bytes) or len(self.round_id) != 16:
            raise _FieldError("round_id", "must be 16 bytes")
        if self.round_id == _ZERO_ID:
            raise _FieldError("round_id", "must not be all zero")
        if not isinstance(self.as_of, datetime.date) or isinstance(self.as_of, datetime.datetime):
            raise _FieldError("as_of", "must be a datetime.date")
        for field in ("purpose", "requester", "responder", "match_set"):
            problem = context_name_problem(getattr(self, field))
            if problem is not None:
                raise _FieldError(field, problem)
        if self.protocol not in PROTOCOLS:
            raise _FieldError("protocol", f"must be one of {', '.join(PROTOCOLS)}")
        if not isinstance(self.params, tuple):
            raise _FieldError("params", "must be a tuple of (name, value) pairs")
        names: list[str] = []
        for pair in self.params:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise _FieldError("params", "must be (name, value) pairs")
            name, value = pair
            if not (isinstance(name, str) and _PARAM_NAME.fullmatch(name)):
                raise _FieldError("params", "names must be 1-32 characters of [a-z0-9_]")
            if not (isinstance(value, str) and _PARAM_VALUE.fullmatch(value)):
                raise _FieldError("params", "values must be 1-128 characters of [A-Za-z0-9_.:+-]")
            names.append(name)
        if names != sorted(set(names)):
            raise _FieldError("params", "must be sorted by name, without repeats")

    @classmethod
    def new(
        cls,
        *,
        as_of: datetime.date,
        purpose: str,
        requester: str,
        responder: str,
        match_set: str,
        protocol: Protocol,
        params: Iterable[tuple[str, str]] = (),
        rng: Callable[[int], bytes] = os.urandom,
    ) -> RoundContext:
        """A context with a fresh random round id.

        ``params`` may be in any order; they are sorted. Defaults from
        :data:`DEFAULT_PARAMS` fill in any parameter that is not given, so the
        context states every choice explicitly.

        Raises:
            ValueError: a field is invalid, or a parameter name repeats.
        """
        pairs = list(params)
        given = dict(pairs)
        if len(given) != len(pairs):
            raise ValueError("repeated parameter name")
        merged = dict(DEFAULT_PARAMS.get(protocol, ()))
        merged.update(given)
        round_id = rng(16)
        return cls(
            round_id=round_id,
            as_of=as_of,
            purpose=purpose,
            requester=requester,
            responder=responder,
            match_set=match_set,
            protocol=protocol,
            params=tuple(sorted(merged.items())),
        )

    @property
    def round_id_hex(self) -> str:
        """The round id as 32 lower-case hex digits (for logs)."""
        return self.round_id.hex()

    def param(self, name: str, default: str | None = None) -> str:
        """The value of parameter ``name``, or ``default`` if given.

        Raises:
            ProtocolError: the parameter is absent and there is no default.
        """
        for key, value in self.params:
            if key == name:
                return value
        if default is None:
            raise ProtocolError(f"round parameter {name!r} is missing")
        return default

    def to_bytes(self) -> bytes:
        """Canonical encoding: magic, version, then length-prefixed fields."""
        parts = [
            self.round_id,
            self.as_of.isoformat().encode("ascii"),
            self.purpose.encode("ascii"),
            self.requester.encode("ascii"),
            self.responder.encode("ascii"),
            self.match_set.encode("ascii"),
            self.protocol.encode("ascii"),
        ]
        out = bytearray(_MAGIC)
        out.append(_VERSION)
        for part in parts:
            out += _U16.pack(len(part)) + part
        out += _U16.pack(len(self.params))
        for name, value in self.params:
            for part in (name.encode("ascii"), value.encode("ascii")):
                out += _U16.pack(len(part)) + part
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundContext:
        """Parse :meth:`to_bytes` output.

        Raises:
            ProtocolError: wrong magic or version, truncated or trailing
                bytes, or a field that breaks the rules.
        """
        view = memoryview(bytes(data))
        if bytes(view[: len(_MAGIC)]) != _MAGIC or len(view) < len(_MAGIC) + 1:
            raise ProtocolError("not a round context (bad magic)")
        if view[len(_MAGIC)] != _VERSION:
            raise ProtocolError(f"round context version {view[len(_MAGIC)]} is not supported")
        pos = len(_MAGIC) + 1

        def take() -> bytes:
            nonlocal pos
            if pos + 2 > len(view):
                raise ProtocolError("round context is truncated")
            (length,) = _U16.unpack_from(view, pos)
            pos += 2
            if pos + length > len(view):
                raise ProtocolError("round context is truncated")
            part = bytes(view[pos : pos + length])
            pos += length
            return part

        # Messages are fixed per field: the peer's bytes, and the parsers' own
        # messages that quote them (date.fromisoformat), never reach the peer or
        # the node's log; hence ``from None``, which drops the quoting cause.
        field = "round_id"
        try:
            round_id = take()
            field = "as_of"
            as_of_text = take().decode("ascii")
            texts: list[str] = []
            for name in _TEXT_FIELDS:
                field = name
                texts.append(take().decode("ascii"))
            field = "params"
            if pos + 2 > len(view):
                raise ProtocolError("round context is truncated")
            (count,) = _U16.unpack_from(view, pos)
            pos += 2
            params = tuple((take().decode("ascii"), take().decode("ascii")) for _ in range(count))
            if pos != len(view):
                raise ProtocolError("round context has trailing bytes")
            field = "as_of"
            as_of = datetime.date.fromisoformat(as_of_text)
            if as_of.isoformat() != as_of_text:
                raise ProtocolError("round context date is not canonical")
            protocol = texts[4]
            if protocol not in PROTOCOLS:
                raise ProtocolError("round context names an unknown protocol")
            return cls(
                round_id=round_id,
                as_of=as_of,
                purpose=texts[0],
                requester=texts[1],
                responder=texts[2],
                match_set=texts[3],
                protocol=protocol,  # type: ignore[arg-type]  # checked above
                params=params,
            )
        except _FieldError as exc:
            raise ProtocolError(f"invalid round context: {exc.field} {exc.rule}") from None
        except UnicodeDecodeError:
            raise ProtocolError(f"invalid round context: {field} is not ASCII") from None
        except ValueError:
            raise ProtocolError(f"invalid round context: {field} is not a valid value") from None
