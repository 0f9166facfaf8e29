"""Protocol cores: identifiers, keyed-hash and ECDH PSI, transcripts. Pure: no I/O, no gRPC.

This package exports only the safe round API. Group operations and
hash-to-curve live in :mod:`psi.hazmat` and are not re-exported.
"""

from psi.context import RoundContext
from psi.ecdh import EcdhRequester, EcdhResponder, EcdhResult, size_class
from psi.errors import (
    AlreadyUsed,
    InvalidIdentifier,
    InvalidKey,
    ProtocolError,
    VerificationError,
    XmatchError,
)
from psi.identifiers import (
    IdColumn,
    check_character,
    composite_key,
    encode_identities,
    normalize_id,
    normalize_id_column,
    normalize_name,
)
from psi.keyed_hash import KeyedHashRequester, KeyedHashResponder
from psi.messages import (
    DEFAULT_CHUNK_ITEMS,
    MAX_MESSAGE_BYTES,
    MAX_POINTS_PER_CHUNK,
    MAX_TAGS_PER_CHUNK,
    KeyShare,
    MatchChunk,
    PointChunk,
    TagChunk,
)
from psi.transcript import Transcript

__all__ = [
    "DEFAULT_CHUNK_ITEMS",
    "MAX_MESSAGE_BYTES",
    "MAX_POINTS_PER_CHUNK",
    "MAX_TAGS_PER_CHUNK",
    "AlreadyUsed",
    "EcdhRequester",
    "EcdhResponder",
    "EcdhResult",
    "IdColumn",
    "InvalidIdentifier",
    "InvalidKey",
    "KeyShare",
    "KeyedHashRequester",
    "KeyedHashResponder",
    "MatchChunk",
    "PointChunk",
    "ProtocolError",
    "RoundContext",
    "TagChunk",
    "Transcript",
    "VerificationError",
    "XmatchError",
    "check_character",
    "composite_key",
    "encode_identities",
    "normalize_id",
    "normalize_id_column",
    "normalize_name",
    "size_class",
]
