"""TEST ONLY: ``xmatch node serve`` whose rounds stall mid-stream.

Run as ``python -m tests.stalling_node --config node.toml`` (see
:func:`tests.federation.start_stalling_node`). It wraps the product's
:class:`nodes.handlers.KeyedHashDriver` and :class:`nodes.handlers.EcdhDriver`
so that a round answers a fixed number of tag (or blinded) chunks and then
stops answering, which makes "the node died (or froze)
after delivering some matches" deterministic instead of a timing race. The
product never reads these variables; only this wrapper does:

``XMATCH_TEST_STALL_AFTER``
    request chunks answered normally per round before the stall (N).
``XMATCH_TEST_STALL_SECONDS``
    how long chunk N waits before it is processed (default 3600); a cancelled
    round (the requester went away) stops waiting at once.
``XMATCH_TEST_STALL_ROUNDS``
    how many rounds of each match set stall (default 1); later rounds run
    normally, so the same process can then serve a complete round.
``XMATCH_TEST_MARKER_DIR``
    when a round's stall begins, the file ``MATCH_SET.ROUND_ID`` is created
    there: by then the answers to chunks 0..N-1 were handed to gRPC.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from pathlib import Path

from nodes.handlers import EcdhDriver, KeyedHashDriver, RoundDriver
from xmatch.cli import main

_AFTER = int(os.environ["XMATCH_TEST_STALL_AFTER"])
_SECONDS = float(os.environ.get("XMATCH_TEST_STALL_SECONDS", "3600"))
_ROUNDS = int(os.environ.get("XMATCH_TEST_STALL_ROUNDS", "1"))
_MARKERS = Path(os.environ["XMATCH_TEST_MARKER_DIR"])
_stalled: Counter[str] = Counter()
_lock = threading.Lock()
_keyed_hash_chunk = KeyedHashDriver._chunk
_ecdh_chunk = EcdhDriver._chunk


def _stall(self: RoundDriver) -> None:
    if self.chunks == _AFTER and self.context is not None:
        name = self.context.match_set
        with _lock:
            stall = _stalled[name] < _ROUNDS
            _stalled[name] += 1
        if stall:
            (_MARKERS / f"{name}.{self.context.round_id_hex}").touch()
            self._cancel.wait(_SECONDS)


def _stalling_keyed_hash_chunk(self: KeyedHashDriver, data: bytes) -> None:
    _stall(self)
    _keyed_hash_chunk(self, data)


def _stalling_ecdh_chunk(self: EcdhDriver, data: bytes) -> None:
    _stall(self)
    _ecdh_chunk(self, data)


KeyedHashDriver._chunk = _stalling_keyed_hash_chunk  # type: ignore[method-assign]
EcdhDriver._chunk = _stalling_ecdh_chunk  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(["node", "serve", *sys.argv[1:]]))
