"""A bundle: a JSON manifest and a list of binary parts, the plaintext of a sealed file.

Layout (integers big-endian)::

    b"XMBNDL1\\n" | u32 manifest length | manifest (canonical JSON) |
    u32 part count | (u64 length | bytes) per part

Offline rounds (docs/offline.md) put each sub-round's protocol messages, as they
travel online, into the parts, and say in the manifest which part is which.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from psi.errors import ProtocolError

__all__ = ["Bundle"]

_MAGIC = b"XMBNDL1\n"
_MAX_MANIFEST = 16 * 1024 * 1024
_MAX_PARTS = 1_000_000


@dataclass(frozen=True)
class Bundle:
    """A manifest (JSON object) and its binary parts."""

    manifest: dict[str, Any]
    parts: tuple[bytes, ...] = ()

    def to_bytes(self) -> bytes:
        """The bundle's bytes."""
        head = json.dumps(self.manifest, sort_keys=True, separators=(",", ":")).encode()
        out = [_MAGIC, struct.pack(">I", len(head)), head, struct.pack(">I", len(self.parts))]
        for part in self.parts:
            out += [struct.pack(">Q", len(part)), part]
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Bundle:
        """Parse a bundle.

        Raises:
            ProtocolError: not a bundle, truncated, or bytes after the last part.
        """
        view = memoryview(data)
        if bytes(view[: len(_MAGIC)]) != _MAGIC:
            raise ProtocolError("not an xmatch bundle")
        at = len(_MAGIC)

        def take(n: int) -> bytes:
            nonlocal at
            if at + n > len(view):
                raise ProtocolError("bundle is truncated")
            piece = bytes(view[at : at + n])
            at += n
            return piece

        (head_len,) = struct.unpack(">I", take(4))
        if head_len > _MAX_MANIFEST:
            raise ProtocolError("bundle manifest too large")
        try:
            manifest = json.loads(take(head_len).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("bundle manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise ProtocolError("bundle manifest is not an object")
        (count,) = struct.unpack(">I", take(4))
        if count > _MAX_PARTS:
            raise ProtocolError("bundle has too many parts")
        parts = []
        for _ in range(count):
            (size,) = struct.unpack(">Q", take(8))
            parts.append(take(size))
        if at != len(view):
            raise ProtocolError("bytes after the bundle's last part")
        return cls(manifest, tuple(parts))
