"""Wire messages of both protocols: frozen dataclasses with a byte format.

Every message has the same 28-byte header, then ``count`` fixed-size items:

``"XM" | version (1) | type (1) | round_id (16) | seq (u32 BE) | count (u32 BE)``

=====  ===================  ==========  =====================================
type   class                item bytes  meaning
=====  ===================  ==========  =====================================
0x01   KeyShare             32          X25519 public key (keyed-hash)
0x02   TagChunk             16          PRF tags, requester -> responder
0x03   MatchChunk           16          matched tags, responder -> requester
0x04   PointChunk blinded   32          a*H(x), requester -> responder
0x05   PointChunk reblinded 32          b*a*H(x), responder -> requester
0x06   PointChunk set       32          b*H(y), responder -> requester
0x14   PointChunk blinded   33          the same three stages for the SM2 suite
0x15   PointChunk reblinded 33          (SEC 1 compressed points, prefix 0x02
0x16   PointChunk set       33          or 0x03; see psi.hazmat.sm2)
0x07   KeyShare (SM2)       33          SM2 public key, compressed (sm4-ecb-v1)
=====  ===================  ==========  =====================================

``from_bytes`` checks structure (magic, version, type, length, item count)
and, when told the expected round id and sequence number, those too; any
failure is a :class:`~psi.errors.ProtocolError`. No message may exceed
:data:`MAX_MESSAGE_BYTES` (gRPC's default 4 MiB limit, less a margin for the
envelope): split large batches into chunks of at most
:data:`MAX_TAGS_PER_CHUNK` tags or :data:`MAX_POINTS_PER_CHUNK` points.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from psi.errors import ProtocolError

__all__ = [
    "DEFAULT_CHUNK_ITEMS",
    "MAX_MESSAGE_BYTES",
    "MAX_POINTS_PER_CHUNK",
    "MAX_TAGS_PER_CHUNK",
    "KeyShare",
    "MatchChunk",
    "PointChunk",
    "Stage",
    "TagChunk",
]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024 - 1024
_HEADER = struct.Struct(">2sBB16sII")
_MAGIC = b"XM"
_VERSION = 1
MAX_TAGS_PER_CHUNK = (MAX_MESSAGE_BYTES - _HEADER.size) // 16
MAX_POINTS_PER_CHUNK = (MAX_MESSAGE_BYTES - _HEADER.size) // 32
#: A chunk size that fits every message type with room to spare.
DEFAULT_CHUNK_ITEMS = 65536

Stage = Literal["blinded", "reblinded", "set"]
_STAGE_TYPES: dict[str, int] = {"blinded": 0x04, "reblinded": 0x05, "set": 0x06}
_TYPE_STAGES = {v: k for k, v in _STAGE_TYPES.items()}
# SM2 points (33 bytes): the same stages, types 0x10 above.
_SM2_TYPE_OFFSET = 0x10
_TYPE_STAGES.update({v + _SM2_TYPE_OFFSET: k for k, v in _STAGE_TYPES.items()})
#: Widths a point chunk may carry: X25519 u-coordinates and compressed SM2 points.
POINT_WIDTHS = (32, 33)


def _frozen_rows(array: Any, width: int, what: str) -> npt.NDArray[np.uint8]:
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != width:
        raise ProtocolError(f"{what} must be an (n, {width}) uint8 array")
    out = np.array(arr, dtype=np.uint8, copy=True, order="C")
    out.flags.writeable = False
    return out


def _check_header_fields(round_id: bytes, seq: int) -> None:
    if not isinstance(round_id, bytes) or len(round_id) != 16:
        raise ProtocolError("round id must be 16 bytes")
    if not isinstance(seq, int) or not 0 <= seq < 2**32:
        raise ProtocolError("sequence number out of range")


def _pack(msg_type: int, round_id: bytes, seq: int, items: npt.NDArray[np.uint8]) -> bytes:
    body = items.tobytes()
    if _HEADER.size + len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            f"message of {len(items)} items exceeds the {MAX_MESSAGE_BYTES}-byte limit; "
            "split it into smaller chunks"
        )
    return _HEADER.pack(_MAGIC, _VERSION, msg_type, round_id, seq, len(items)) + body


def _unpack(
    data: bytes,
    expected_types: tuple[int, ...],
    width: int,
    round_id: bytes | None,
    seq: int | None,
    what: str,
) -> tuple[int, bytes, int, npt.NDArray[np.uint8]]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what}: expected bytes")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{what}: {len(data)} bytes exceeds the message limit")
    if len(data) < _HEADER.size:
        raise ProtocolError(f"{what}: {len(data)} bytes is shorter than the header")
    magic, version, msg_type, rid, got_seq, count = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ProtocolError(f"{what}: not an xmatch message (bad magic)")
    if version != _VERSION:
        raise ProtocolError(f"{what}: message version {version} is not supported")
    if msg_type not in expected_types:
        raise ProtocolError(f"{what}: unexpected message type 0x{msg_type:02x}")
    payload = len(data) - _HEADER.size
    if payload % width:
        raise ProtocolError(f"{what}: payload of {payload} bytes is not a multiple of {width}")
    if payload // width != count:
        raise ProtocolError(f"{what}: header says {count} items, payload holds {payload // width}")
    if round_id is not None and not hmac.compare_digest(rid, round_id):
        raise ProtocolError(f"{what}: message belongs to another round")
    if seq is not None and got_seq != seq:
        raise ProtocolError(f"{what}: sequence number {got_seq}, expected {seq}")
    items = np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size).reshape(count, width)
    return msg_type, rid, got_seq, items


@dataclass(frozen=True)
class KeyShare:
    """An ephemeral public key for one round (keyed-hash step 1): X25519 (32 bytes) or,
    for the ``sm4-ecb-v1`` PRF, a compressed SM2 point (33 bytes)."""

    round_id: bytes
    public_key: bytes

    TYPE: ClassVar[int] = 0x01
    SM2_TYPE: ClassVar[int] = 0x07

    def __post_init__(self) -> None:
        _check_header_fields(self.round_id, 0)
        if not isinstance(self.public_key, bytes) or len(self.public_key) not in (32, 33):
            raise ProtocolError("key share must hold a 32-byte X25519 or a 33-byte SM2 public key")

    def to_bytes(self) -> bytes:
        """Wire form (one 32- or 33-byte item)."""
        width = len(self.public_key)
        items = np.frombuffer(self.public_key, dtype=np.uint8).reshape(1, width)
        return _pack(self.TYPE if width == 32 else self.SM2_TYPE, self.round_id, 0, items)

    @classmethod
    def from_bytes(cls, data: bytes, *, round_id: bytes | None = None) -> KeyShare:
        """Parse a key share.

        Raises:
            ProtocolError: malformed, not exactly one key, or another round.
        """
        sm2 = len(data) > 3 and bytes(data[3:4])[0] == cls.SM2_TYPE
        types = (cls.TYPE, cls.SM2_TYPE)
        _, rid, _, items = _unpack(data, types, 33 if sm2 else 32, round_id, 0, "key share")
        if len(items) != 1:
            raise ProtocolError("key share: expected exactly one key")
        return cls(round_id=rid, public_key=items[0].tobytes())


@dataclass(frozen=True, eq=False)
class TagChunk:
    """PRF tags of roster identities, in the requester's order (keyed-hash step 2)."""

    round_id: bytes
    seq: int
    tags: npt.NDArray[np.uint8]

    TYPE: ClassVar[int] = 0x02

    def __post_init__(self) -> None:
        _check_header_fields(self.round_id, self.seq)
        object.__setattr__(self, "tags", _frozen_rows(self.tags, 16, "tags"))

    def __len__(self) -> int:
        return len(self.tags)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TagChunk):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def to_bytes(self) -> bytes:
        """Wire form.

        Raises:
            ProtocolError: the chunk exceeds :data:`MAX_MESSAGE_BYTES`.
        """
        return _pack(self.TYPE, self.round_id, self.seq, self.tags)

    @classmethod
    def from_bytes(
        cls, data: bytes, *, round_id: bytes | None = None, seq: int | None = None
    ) -> TagChunk:
        """Parse a tag chunk, optionally checking its round id and sequence number.

        Raises:
            ProtocolError: malformed (e.g. payload not a multiple of 16),
                another round, or an unexpected sequence number.
        """
        _, rid, got_seq, items = _unpack(data, (cls.TYPE,), 16, round_id, seq, "tag chunk")
        return cls(round_id=rid, seq=got_seq, tags=items)


@dataclass(frozen=True, eq=False)
class MatchChunk:
    """Matched tags answering the :class:`TagChunk` with the same ``seq``.

    ``tags`` lists, in query order, each queried tag found in the match set.
    On the node, ``rows``/``row_offsets`` (CSR form) give the responder's row
    indices for each matched tag: ``rows[row_offsets[i]:row_offsets[i+1]]``
    (a person may have several records). They are for the node only: the wire
    form (:meth:`to_bytes`) never contains them, and :meth:`without_rows`
    returns the copy to hand to anything else.
    """

    round_id: bytes
    seq: int
    tags: npt.NDArray[np.uint8]
    rows: npt.NDArray[np.int64] | None = None
    row_offsets: npt.NDArray[np.int64] | None = None

    TYPE: ClassVar[int] = 0x03

    def __post_init__(self) -> None:
        _check_header_fields(self.round_id, self.seq)
        object.__setattr__(self, "tags", _frozen_rows(self.tags, 16, "tags"))
        if (self.rows is None) != (self.row_offsets is None):
            raise ProtocolError("rows and row_offsets go together")
        if self.rows is not None and self.row_offsets is not None:
            rows = np.array(self.rows, dtype=np.int64, copy=True)
            offsets = np.array(self.row_offsets, dtype=np.int64, copy=True)
            if (
                rows.ndim != 1
                or offsets.shape != (len(self.tags) + 1,)
                or offsets[0] != 0
                or offsets[-1] != len(rows)
                or np.any(np.diff(offsets) < 1)
            ):
                raise ProtocolError("row_offsets do not describe rows for every tag")
            rows.flags.writeable = False
            offsets.flags.writeable = False
            object.__setattr__(self, "rows", rows)
            object.__setattr__(self, "row_offsets", offsets)

    def __len__(self) -> int:
        return len(self.tags)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MatchChunk):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def without_rows(self) -> MatchChunk:
        """The same chunk with the node-only row indices removed."""
        return MatchChunk(round_id=self.round_id, seq=self.seq, tags=self.tags)

    def rows_for(self, i: int) -> npt.NDArray[np.int64]:
        """Responder row indices of matched tag ``i``.

        Raises:
            ProtocolError: this chunk carries no row indices (it came off the wire).
        """
        if self.rows is None or self.row_offsets is None:
            raise ProtocolError("this match chunk carries no row indices")
        return self.rows[self.row_offsets[i] : self.row_offsets[i + 1]]

    def to_bytes(self) -> bytes:
        """Wire form: the matched tags only, never the row indices.

        Raises:
            ProtocolError: the chunk exceeds :data:`MAX_MESSAGE_BYTES`.
        """
        return _pack(self.TYPE, self.round_id, self.seq, self.tags)

    @classmethod
    def from_bytes(
        cls, data: bytes, *, round_id: bytes | None = None, seq: int | None = None
    ) -> MatchChunk:
        """Parse a match chunk (without row indices).

        Raises:
            ProtocolError: malformed, another round, or unexpected sequence number.
        """
        _, rid, got_seq, items = _unpack(data, (cls.TYPE,), 16, round_id, seq, "match chunk")
        return cls(round_id=rid, seq=got_seq, tags=items)


@dataclass(frozen=True, eq=False)
class PointChunk:
    """X25519 u-coordinates (32 bytes each) or compressed SM2 points (33) of one ECDH stage.

    ``stage`` is ``"blinded"`` (a*H(x), requester to responder),
    ``"reblinded"`` (b*a*H(x), answering the blinded chunk with the same
    ``seq``) or ``"set"`` (b*H(y), the responder's shuffled, padded set).
    """

    round_id: bytes
    seq: int
    stage: Stage
    points: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        _check_header_fields(self.round_id, self.seq)
        if self.stage not in _STAGE_TYPES:
            raise ProtocolError("unknown point chunk stage")
        width = np.asarray(self.points).shape[-1] if np.ndim(self.points) == 2 else 32
        width = width if width in POINT_WIDTHS else 32
        object.__setattr__(self, "points", _frozen_rows(self.points, width, "points"))

    def __len__(self) -> int:
        return len(self.points)

    @property
    def width(self) -> int:
        """Bytes per point: 32 (X25519) or 33 (SM2, compressed)."""
        return int(self.points.shape[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PointChunk):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def to_bytes(self) -> bytes:
        """Wire form.

        Raises:
            ProtocolError: the chunk exceeds :data:`MAX_MESSAGE_BYTES`.
        """
        offset = _SM2_TYPE_OFFSET if self.width == 33 else 0
        return _pack(_STAGE_TYPES[self.stage] + offset, self.round_id, self.seq, self.points)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        stage: Stage | None = None,
        round_id: bytes | None = None,
        seq: int | None = None,
    ) -> PointChunk:
        """Parse a point chunk, optionally checking stage, round id and sequence number.

        Raises:
            ProtocolError: malformed (payload not a multiple of 32), wrong
                stage, another round, or unexpected sequence number.
        """
        if stage is not None:
            types: tuple[int, ...] = (_STAGE_TYPES[stage], _STAGE_TYPES[stage] + _SM2_TYPE_OFFSET)
        else:
            types = tuple(_TYPE_STAGES)
        # The type byte (offset 3) says the width; _unpack checks the type itself.
        sm2 = len(data) > 3 and bytes(data[3:4])[0] >= _SM2_TYPE_OFFSET + 0x04
        width = 33 if sm2 else 32
        msg_type, rid, got_seq, items = _unpack(data, types, width, round_id, seq, "point chunk")
        return cls(round_id=rid, seq=got_seq, stage=_TYPE_STAGES[msg_type], points=items)  # type: ignore[arg-type]
