"""keyed-hash (docs/architecture.md, "Streams"), node side: the runner of
:class:`psi.session.KeyedHashResponderSession`.

Each matched record gives one payload entry: the allowed payload columns
with a value, and the index of its tag in the psi MatchChunk (a person
with two records gives two entries for one tag).

A set held in memory answers each tag chunk as it arrives. A set larger
than ``stream_rows`` is streamed instead: the tag chunks are kept (16
bytes per roster identity), and after ``end`` the set is read from the
source in record batches, each tagged and matched against all the
chunks' tags; then the same match chunks are sent, in order. Memory is
bounded by one batch plus the roster's tags and the matches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from nodes.drivers.base import HeldSet, RoundDriver
from nodes.matchsets import StreamSummary
from psi.errors import ProtocolError
from psi.messages import MatchChunk
from psi.session import (
    Chunk,
    Done,
    KeyedHashResponderSession,
    PayloadColumns,
    ResponderMessage,
    Start,
)

__all__ = ["KeyedHashDriver"]


class KeyedHashDriver(RoundDriver):
    """keyed-hash, node side (see the module)."""

    protocol = "keyed-hash"
    _session: KeyedHashResponderSession

    def _new_session(self) -> KeyedHashResponderSession:
        return KeyedHashResponderSession(rng=self.state.rng, on_rows=self._distinct.add)

    @property
    def match_count(self) -> int | None:
        return self._session.match_count

    def _start(self, start: Start) -> None:
        _, source = self._authorized(start)
        if isinstance(source, HeldSet):
            self.loaded = source.loaded
            accept = self._session.accept(source.loaded.identities, source.loaded.payload_rows)
            self.set_size = len(source.loaded)
        else:
            accept = self._session.accept(None)
            self.set_size = None  # known after the set is read, at end
        self._emit(accept)

    def _chunk(self, data: bytes) -> None:
        answer = self._session.receive(Chunk(data))
        if answer is not None:
            self._answer(answer)

    def _before_end(self) -> Iterator[ResponderMessage]:
        if not self._session.streamed:
            return
        ctx = self.context
        assert ctx is not None and self.match_set is not None
        started = time.perf_counter()
        summary = StreamSummary()
        # Only the matched rows' payload is kept, by row number.
        rows: list[npt.NDArray[np.int64]] = []
        values: dict[str, list[npt.NDArray[np.str_]]] = {col: [] for col in self.match_set.payload}
        for batch in self.state.store.stream(self.match_set.name, ctx.as_of, summary=summary):
            if self._cancel.is_set():
                raise ProtocolError("round cancelled")
            hit = self._session.match_batch(batch.identities)
            rows.append(hit + batch.offset)
            for col in values:
                values[col].append(batch.payload[col][hit])
        matched = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        columns = {
            col: np.concatenate(parts) if parts else np.zeros(0, dtype="<U1")
            for col, parts in values.items()
        }
        self.loaded = summary.as_loaded(
            self.match_set.name, ctx.as_of, time.perf_counter() - started
        )
        self.set_size = summary.kept

        def payload(result: MatchChunk) -> PayloadColumns:
            assert result.rows is not None
            where = np.searchsorted(matched, result.rows)
            return PayloadColumns(
                len(result.rows), {col: v[where].tolist() for col, v in columns.items()}
            )

        for answer in self._session.streamed_matches(payload):
            self._emit(answer)
            yield from self._flush()

    def _finish(self) -> Done:
        return self._session.done()

    def _cleanup(self) -> None:
        self._session.close()
