"""Match sets for a round: loading, streaming and the node's cache.

For a match set of ``node.toml`` and a round's ``as_of`` the node selects the
id column and the payload the set allows, keeps the rows ``where`` keeps, and
normalizes and encodes the identity numbers, counting dropped rows by reason.
The work is split by concern:

- :mod:`nodes.matchset_rows`: the set in memory (:class:`LoadedMatchSet`), its
  batches, and the conversion of rows, whatever the source;
- :mod:`nodes.matchset_files`: CSV and Parquet files, read with DuckDB;
- :mod:`nodes.matchset_prepared`: a file parsed once per version, filtered per ``as_of``;
- :mod:`nodes.matchset_db`: database tables and queries;
- this module: the entry points (:func:`load_match_set`, :func:`stream_match_set`,
  :func:`count_source_rows`) and :class:`MatchSetStore`, the cache a node serves from.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

from nodes.config import MatchSetConfig, NodeConfig
from nodes.matchset_db import database_stamp, stream_database
from nodes.matchset_files import count_file_rows, detect_encoding, readable_file, stream_file
from nodes.matchset_prepared import PreparedFile, load_prepared, prepare_file
from nodes.matchset_rows import (
    STREAM_BATCH_ROWS,
    LoadedMatchSet,
    MatchSetBatch,
    Reporter,
    StreamSummary,
    collect,
    configured,
)

__all__ = [
    "STREAM_BATCH_ROWS",
    "LoadedMatchSet",
    "MatchSetBatch",
    "MatchSetStore",
    "StreamSummary",
    "count_source_rows",
    "detect_encoding",
    "load_match_set",
    "prepare_file",
    "stream_match_set",
]


def load_match_set(config: NodeConfig, name: str, as_of: _dt.date) -> LoadedMatchSet:
    """Load match set ``name`` of ``config`` for the evaluation date ``as_of``.

    Raises:
        ConfigError: unknown match set; the source cannot be read or decoded; the
            id column or a payload column is missing; ``where`` is not valid SQL
            for the source; a Parquet id column is not text. One line naming the
            node.toml match set and the problem, never a record value.
    """
    ms, _ = configured(config, name)
    started = time.perf_counter()
    summary = StreamSummary()
    # Read in record batches and keep only the encoded rows (:func:`collect`).
    batches = stream_match_set(config, name, as_of, summary=summary)
    return collect(ms, as_of, batches, summary, started)


def stream_match_set(
    config: NodeConfig,
    name: str,
    as_of: _dt.date,
    *,
    batch_rows: int = STREAM_BATCH_ROWS,
    summary: StreamSummary | None = None,
) -> Iterator[MatchSetBatch]:
    """Read match set ``name`` in record batches of at most ``batch_rows`` rows.

    The whole set is never in memory: DuckDB streams Arrow record batches and
    each is normalized and encoded on its own. ``summary`` (if given) collects
    the counts a full load would report.

    Raises:
        ConfigError: as :func:`load_match_set` (a conversion error may surface
            in the middle of the stream).
    """
    ms, rep = configured(config, name)
    summary = summary if summary is not None else StreamSummary()
    if ms.database is not None:
        yield from stream_database(ms, rep, as_of, summary=summary, batch_rows=batch_rows)
        return
    with readable_file(ms, rep) as (path, parquet):
        yield from stream_file(
            ms, rep, path, as_of, parquet=parquet, summary=summary, batch_rows=batch_rows
        )


def count_source_rows(config: NodeConfig, name: str) -> int:
    """Rows in the source of match set ``name``, before ``where`` (Parquet: from metadata).

    Raises:
        ConfigError: as :func:`load_match_set`.
    """
    ms, rep = configured(config, name)
    if ms.database is not None:
        return database_stamp(ms, rep)[0]
    return count_file_rows(ms, rep)


#: (match set, as_of, source version): a file's (mtime, size), or a table's stamp
_Key = tuple[str, _dt.date, tuple[object, ...]]


class MatchSetStore:
    """Loads match sets on demand and keeps the last few in a small LRU cache.

    The cache key is (match set, as_of, the source's version), so an updated
    source is read again. A file's version is its mtime and size; a database
    table's is its row count and the maximum of ``change_column``, and a
    database source without ``change_column`` is never cached (every round
    reads it). Concurrent rounds asking for the same key wait for one load
    instead of each running it.

    A file source is also kept *prepared* (parsed and normalized once, a
    :class:`PreparedFile`, one per set) while its version is unchanged, so a
    round with a new ``as_of`` only runs ``where`` over the rows in memory
    instead of reparsing the file.
    """

    def __init__(self, config: NodeConfig, *, capacity: int | None = None) -> None:
        self._config = config
        self._capacity = config.node.cache_sets if capacity is None else capacity
        self._lock = threading.Lock()
        self._cache: OrderedDict[_Key, LoadedMatchSet] = OrderedDict()
        self._loading: dict[_Key, threading.Lock] = {}
        self._counts: dict[tuple[str, tuple[object, ...]], int] = {}
        self._prepared: dict[str, PreparedFile] = {}
        self._preparing: dict[str, threading.Lock] = {}

    def _ms(self, name: str) -> MatchSetConfig:
        return configured(self._config, name)[0]

    def _version(self, ms: MatchSetConfig) -> tuple[object, ...] | None:
        """The source's version, or None when it cannot be told (uncached database)."""
        if ms.database is not None:
            if ms.database.change_column is None:
                return None
            return ("table", *database_stamp(ms, Reporter(self._config, ms)))
        return self._stat_key(ms)

    def get(self, name: str, as_of: _dt.date) -> LoadedMatchSet:
        """Match set ``name`` as of ``as_of`` (cached).

        Raises:
            ConfigError: as :func:`load_match_set`.
        """
        ms = self._ms(name)
        version = self._version(ms)
        if version is None or self._capacity <= 0:
            return load_match_set(self._config, name, as_of)
        key: _Key = (name, as_of, version)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit
            try:
                if ms.database is None:
                    assert len(version) == 2
                    file_version = (int(str(version[0])), int(str(version[1])))
                    prepared = self._prepare(name, file_version)
                    loaded = load_prepared(self._config, prepared, name, as_of)
                else:
                    loaded = load_match_set(self._config, name, as_of)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._cache[key] = loaded
                while len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)
        return loaded

    def _prepare(self, name: str, version: tuple[int, int]) -> PreparedFile:
        """The prepared file of set ``name`` at ``version`` (parsed once per version)."""
        with self._lock:
            hit = self._prepared.get(name)
            if hit is not None and hit.version == version:
                return hit
            gate = self._preparing.setdefault(name, threading.Lock())
        with gate:
            with self._lock:
                hit = self._prepared.get(name)
                if hit is not None and hit.version == version:
                    return hit
                self._prepared.pop(name, None)  # an older version: let it go first
            prepared = prepare_file(self._config, name, version)
            with self._lock:
                self._prepared[name] = prepared
        return prepared

    def _stat_key(self, ms: MatchSetConfig) -> tuple[int, int]:
        try:
            st = ms.source_file.stat()
        except OSError as exc:
            raise Reporter(self._config, ms).error(f"source: cannot read ({exc.strerror})") from exc
        return st.st_mtime_ns, st.st_size

    def is_streamed(self, name: str) -> bool:
        """Whether match set ``name`` has more source rows than ``stream_rows``.

        The count (Parquet metadata, or one scan of a CSV) is cached per
        source version; a database is asked each time (``count(*)``) unless
        its ``change_column`` gives a version.

        Raises:
            ConfigError: unknown set, unreadable source.
        """
        threshold = self._config.node.stream_rows
        if threshold <= 0:
            return False
        return self.source_rows(name) > threshold

    def source_rows(self, name: str) -> int:
        """Rows in the source of match set ``name``, before ``where`` (cached per version).

        Raises:
            ConfigError: unknown set, unreadable source.
        """
        ms = self._ms(name)
        if ms.database is not None:
            return count_source_rows(self._config, name)
        key = (name, self._stat_key(ms))
        with self._lock:
            rows = self._counts.get(key)
        if rows is None:
            rows = count_source_rows(self._config, name)
            with self._lock:
                self._counts[key] = rows
        return rows

    def stream(
        self,
        name: str,
        as_of: _dt.date,
        *,
        summary: StreamSummary | None = None,
        batch_rows: int = STREAM_BATCH_ROWS,
    ) -> Iterator[MatchSetBatch]:
        """Read match set ``name`` as of ``as_of`` in record batches (never cached).

        Raises:
            ConfigError: as :func:`stream_match_set`.
        """
        return stream_match_set(self._config, name, as_of, batch_rows=batch_rows, summary=summary)

    def validate_all(self, today: _dt.date) -> list[LoadedMatchSet]:
        """Load every match set once as of ``today`` (startup check; fails fast).

        A streamed set is read through once (bounded memory) and returned
        with its counts only (``streamed=True``).

        Raises:
            ConfigError: as :func:`load_match_set`, for the first bad match set.
        """
        out: list[LoadedMatchSet] = []
        for ms in self._config.match_sets:
            if self.is_streamed(ms.name):
                started = time.perf_counter()
                summary = StreamSummary()
                for _ in self.stream(ms.name, today, summary=summary):
                    pass
                out.append(summary.as_loaded(ms.name, today, time.perf_counter() - started))
            else:
                out.append(self.get(ms.name, today))
        return out
