"""ecdh (docs/architecture.md, "Streams"), node side: the runner of
:class:`psi.session.EcdhResponderSession`.

b·H(y) set chunks are computed on a helper thread and interleaved with
the reblinded chunks; the driver's lock keeps the send order equal to the
transcript order. A set held in memory starts at accept, to overlap with
the requester's roster.

A set larger than ``stream_rows`` is bucketed (:mod:`nodes.buckets`)
when its source has more than ``bucket_rows`` rows: before accept, one
pass over the source splits it into about ``source rows / bucket_rows``
(:func:`nodes.buckets.bucket_count`) encrypted bucket files, each
deduplicated; the set is then sent bucket by bucket, and only after the
requester's ``end``, so that the requester has its whole reblinded
roster before the first set point and can intersect on arrival. Node
memory is two buckets; the requester's is its roster.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from nodes.authorization import REQUESTER_ROLE
from nodes.buckets import SpilledSet, bucket_count
from nodes.config import NodeConfig
from nodes.drivers.base import HeldSet, RoundDriver
from nodes.drivers.events import WOKEN, Cancelled, Failed, Request, TimedOut
from nodes.matchsets import LoadedMatchSet, StreamSummary
from nodes.state import NodeState
from psi.context import RoundContext
from psi.ecdh import EcdhResponder, distinct_identities
from psi.errors import ProtocolError
from psi.messages import MAX_POINTS_PER_CHUNK
from psi.session import Chunk, Done, EcdhResponderSession, ResponderMessage, Start

__all__ = ["SET_CHUNK_POINTS", "EcdhDriver", "keep_distinct"]

#: Points per ecdh set chunk the node sends (also bounded by max_chunk_bytes).
SET_CHUNK_POINTS = min(16384, MAX_POINTS_PER_CHUNK)

# The distinct identities of each cached match set, computed once (a 1M set: about 0.4 s
# of one core before the accept of every ecdh round, while the requester can only wait).
# Weak keys: an entry goes when the store drops the loaded set.
_DISTINCT: weakref.WeakKeyDictionary[LoadedMatchSet, npt.NDArray[np.uint8]] = (
    weakref.WeakKeyDictionary()
)
_DISTINCT_LOCK = threading.Lock()


def keep_distinct(config: NodeConfig, loaded: Iterable[LoadedMatchSet]) -> None:
    """Deduplicate now the sets held in memory that ecdh rounds may query (node startup).

    Their first ecdh round then starts as fast as the later ones.
    """
    ecdh = {ms.name for ms in config.match_sets if "ecdh" in ms.protocols}
    for ms in loaded:
        if ms.name in ecdh and not ms.streamed:
            _distinct_of(ms)


def _distinct_of(loaded: LoadedMatchSet) -> npt.NDArray[np.uint8]:
    with _DISTINCT_LOCK:
        unique = _DISTINCT.get(loaded)
    if unique is None:
        unique = distinct_identities(loaded.identities)
        with _DISTINCT_LOCK:
            _DISTINCT[loaded] = unique
    return unique


class EcdhDriver(RoundDriver):
    """ecdh, node side (see the module)."""

    protocol = "ecdh"
    _session: EcdhResponderSession

    def __init__(self, state: NodeState, peer: str, *, role: str = REQUESTER_ROLE) -> None:
        super().__init__(state, peer, role=role)
        self._producer: threading.Thread | None = None
        self._spilled: SpilledSet | None = None
        self._set_done = threading.Event()

    def _new_session(self) -> EcdhResponderSession:
        return EcdhResponderSession(
            rng=self.state.rng,
            executor=self.state.executor,
            size_classes=self.state.config.node.padded_size,
            on_rows=self._distinct.add,
        )

    def _start(self, start: Start) -> None:
        ctx, source = self._authorized(start)
        responder = self._session.open()  # refuses a start with a key share
        if isinstance(source, HeldSet):
            self.loaded = source.loaded
            responder.load_set(_distinct_of(source.loaded), distinct=True)
        else:
            self.loaded = self._load_streamed(ctx, responder)
        self.set_size = len(self.loaded)
        self.padded_set_size = self._session.set_size
        # At most 16,384 points (the coordinator's chunk): the requester multiplies the
        # last set chunk after the node is done, so a smaller one shortens that tail.
        node = self.state.config.node
        per_chunk = max(1, min(SET_CHUNK_POINTS, (node.max_chunk_bytes - 64) // 32))
        self._emit(self._session.accept(per_chunk))
        if self._spilled is None:
            self._start_producer()

    def _load_streamed(self, ctx: RoundContext, responder: EcdhResponder) -> LoadedMatchSet:
        """A set above ``stream_rows``: read batch by batch; bucketed above ``bucket_rows``.

        Returns the summary of what was read (the set itself went into ``responder``).
        """
        assert self.match_set is not None
        store, node = self.state.store, self.state.config.node
        name = self.match_set.name
        buckets = self.buckets = bucket_count(store.source_rows(name), node.bucket_rows)
        summary = StreamSummary()

        def batches() -> Iterator[npt.NDArray[np.uint8]]:
            for batch in store.stream(name, ctx.as_of, summary=summary):
                if self._cancel.is_set():  # the requester went away: stop reading
                    raise ProtocolError("round cancelled while the set was being read")
                yield batch.identities

        if buckets == 1:
            parts = list(batches())  # 16 bytes per identity, no payload
            responder.load_set(
                np.concatenate(parts) if parts else np.zeros((0, 16), dtype=np.uint8)
            )
        else:
            self._spilled = SpilledSet.create(
                batches(),
                buckets=buckets,
                spill_dir=self.state.config.spill_dir,
                rng=self.state.rng,
                what=f"{self.state.config.path.name}: node.spill_dir",
            )
            responder.load_buckets(self._spilled.sizes, self._spilled.read)
        return summary.as_loaded(name, ctx.as_of, 0.0)

    def _start_producer(self) -> None:
        self._producer = threading.Thread(target=self._produce, daemon=True)
        self._producer.start()

    def _produce(self) -> None:
        try:
            while not self._cancel.is_set():
                with self._lock:
                    chunk = self._session.next_set_chunk()
                    if chunk is None:
                        break
                    self._emit(chunk)
                self._put(WOKEN)
        except Exception as exc:  # surfaced by run()
            self._put(Failed(exc))
        finally:
            self._set_done.set()
            self._put(WOKEN)

    def _chunk(self, data: bytes) -> None:
        with self._lock:
            answer = self._session.receive(Chunk(data))
            assert answer is not None
            self._answer(answer)

    def _before_end(self) -> Iterator[ResponderMessage]:
        if self._producer is None:  # bucketed: the set goes after the whole roster
            self._start_producer()
        while not self._set_done.is_set():
            event = self._next()
            yield from self._flush()
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Request):
                raise ProtocolError("message after end")
            if isinstance(event, Cancelled | TimedOut):
                raise ProtocolError("round cancelled while sending the set")
        yield from self._flush()

    def _finish(self) -> Done:
        with self._lock:
            return self._session.done()

    def _cleanup(self) -> None:
        if self._producer is not None:
            self._producer.join(timeout=30)
        self._session.close()
        if self._spilled is not None:
            self._spilled.close()
            self._spilled = None
