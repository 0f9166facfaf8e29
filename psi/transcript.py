"""Round transcript: one hash both parties compute over the same messages.

Each party feeds every protocol message it sends or receives, labelled with
the direction it travelled. There is one running SHA-256 per direction, so
the interleaving of the two directions of a bidirectional gRPC stream (which
differs between the two ends) does not change the result; within a direction
order matters, as it should.

``digest = SHA-256("xmatch-v1 transcript" || len || context ||
"requester" || count_req || H_req || "responder" || count_resp || H_resp)``

where each direction hash absorbs ``len(label) || label || len(data) || data``
per message (64-bit big-endian lengths). Under the GM suites (round parameter
``suite = SM2_XMD:SM3_SSWU_RO_`` or ``prf = sm4-ecb-v1``) every SHA-256 here is SM3
(GB/T 32905), with the same layout. Both parties log the digest; the
reviewer compares them (protocols.md, "Protocol logs"). The parties never
exchange digests in band, so there is no ``verify`` here: the comparison is
``audit reconcile``'s, over the logged hex.
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import Literal

from cryptography.hazmat.primitives import hashes

from psi.context import RoundContext

__all__ = ["GM_PARAMS", "Direction", "Transcript", "uses_sm3"]

Direction = Literal["requester", "responder"]
_DOMAIN = b"xmatch-v1 transcript\x00"
_LABEL = re.compile(r"[a-z0-9_.-]{1,64}")
_U64 = struct.Struct(">Q")
#: Round parameters that make a round a GM one (suite ``SM2_XMD:SM3_SSWU_RO_``, PRF
#: ``sm4-ecb-v1``): its transcript uses SM3 (GB/T 32905) in place of SHA-256, same layout.
GM_PARAMS: frozenset[tuple[str, str]] = frozenset(
    {("suite", "SM2_XMD:SM3_SSWU_RO_"), ("prf", "sm4-ecb-v1")}
)


class _Sm3:
    """SM3 from ``cryptography`` with the hashlib methods the transcript uses."""

    def __init__(self, data: bytes = b"") -> None:
        self._h = hashes.Hash(hashes.SM3())
        self._h.update(data)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.copy().finalize()


def uses_sm3(context: RoundContext) -> bool:
    """Whether the round's transcript hash is SM3 (a GM suite or PRF), else SHA-256."""
    return any((name, value) in GM_PARAMS for name, value in context.params)


def _new_hash(sm3: bool, data: bytes = b"") -> _Sm3 | hashlib._Hash:
    return _Sm3(data) if sm3 else hashlib.sha256(data)


class Transcript:
    """Running transcript of one round, bound to its :class:`RoundContext`."""

    def __init__(self, context: RoundContext) -> None:
        self._context = context
        self._context_bytes = context.to_bytes()
        self._sm3 = uses_sm3(context)
        self._hashes = {"requester": _new_hash(self._sm3), "responder": _new_hash(self._sm3)}
        self._counts = {"requester": 0, "responder": 0}

    @property
    def context(self) -> RoundContext:
        """The round this transcript belongs to."""
        return self._context

    def absorb(self, direction: Direction, label: str, data: bytes) -> None:
        """Add one message that travelled in ``direction`` (its sender's role).

        Raises:
            ValueError: unknown direction, or a label outside ``[a-z0-9_.-]{1,64}``.
        """
        if direction not in self._hashes:
            raise ValueError("direction must be 'requester' or 'responder'")
        if not _LABEL.fullmatch(label):
            raise ValueError("label must be 1-64 characters of [a-z0-9_.-]")
        raw_label = label.encode("ascii")
        h = self._hashes[direction]
        h.update(_U64.pack(len(raw_label)) + raw_label + _U64.pack(len(data)))
        h.update(data)
        self._counts[direction] += 1

    def count(self, direction: Direction) -> int:
        """Number of messages absorbed in ``direction``."""
        return self._counts[direction]

    def digest(self) -> bytes:
        """The 32-byte transcript hash so far (absorbing may continue)."""
        out = _new_hash(self._sm3, _DOMAIN)
        out.update(_U64.pack(len(self._context_bytes)) + self._context_bytes)
        for direction in ("requester", "responder"):
            out.update(direction.encode("ascii"))
            out.update(_U64.pack(self._counts[direction]))
            out.update(self._hashes[direction].digest())
        return out.digest()
