"""An ecdh match set larger than memory, split into buckets on disk for one round.

ecdh sends every identity of the set once per round, deduplicated, padded
and shuffled. A set of tens of millions of records does not fit that in
memory, so the node splits it, as SecretFlow's bucketed PSI does: one pass
over the source puts each encoded identity in bucket ``bucket_of(id)``
(:func:`psi.ecdh.bucket_of`, under a key drawn for the round), then each
bucket is deduplicated on its own (equal identities share a bucket), and
:meth:`psi.ecdh.EcdhResponder.load_buckets` reads them one after the other
while the set is sent. Memory is one source batch while splitting, then two
buckets (the one being sent, the next being prepared); disk is 16 bytes per
source row plus AEAD framing.

The bucket files hold encoded identity numbers, so they are encrypted:
AES-256-GCM records under a key drawn for the round that only the node
process holds. A node killed mid-round leaves ciphertext under a key that
died with it; :func:`remove_stale` (run at node start) deletes folders whose
owner is gone: the owner holds an exclusive ``flock`` on ``.lock`` in the
folder for its lifetime, which the kernel releases when the process dies
(no PID check, so a reused PID cannot keep a folder alive). The folder is
created with mode 0700 under a hidden name and renamed once locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from psi.ecdh import BUCKET_KEY_SIZE, bucket_of, distinct_identities
from psi.errors import ConfigError

__all__ = ["MAX_BUCKETS", "SPILL_PREFIX", "SpilledSet", "bucket_count", "remove_stale"]

#: At most this many buckets (one open file each while splitting, and a node may
#: split for several rounds at once): a set of more than ``MAX_BUCKETS *
#: bucket_rows`` rows gets larger buckets instead.
MAX_BUCKETS = 128

#: Name prefix of a round's spill folder: ``xmatch-ecdh-<pid>-<random>`` (the pid
#: tells an operator whose it is; whether it is in use is the lock's to say).
SPILL_PREFIX = "xmatch-ecdh-"
_FOLDER = re.compile(r"\.?" + re.escape(SPILL_PREFIX) + r"(\d+)-[A-Za-z0-9_]+")
_HEADER = struct.Struct(">I")  # ciphertext length of one record
_NONCE = 12
_AAD = struct.Struct(">8sIII")  # label, bucket, generation, record number
_LOCK = ".lock"


def bucket_count(source_rows: int, bucket_rows: int) -> int:
    """Buckets for ``source_rows`` rows: the power of two >= ``source_rows / bucket_rows``.

    A power of two, not the exact quotient: if the count showed (say, in the
    timing of the set), it would tell the source's size only within a factor
    of two. At most :data:`MAX_BUCKETS`.
    """
    needed = -(-source_rows // max(1, bucket_rows))
    count = 1
    while count < needed and count < MAX_BUCKETS:
        count *= 2
    return count


def _create(path: Path) -> BinaryIO:
    """A new spill file, mode 0600 whatever the umask (exclusive: never an existing one)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class SpilledSet:
    """The buckets of one round's match set, in encrypted files (one per bucket).

    Build it with :meth:`create`; :attr:`sizes` are the distinct identities
    per bucket; :meth:`read` returns one bucket; :meth:`close` (or leaving
    the ``with`` block) deletes the folder.
    """

    def __init__(
        self, directory: Path, key: bytes, sizes: list[int], *, what: str, generation: int
    ) -> None:
        self.directory = directory
        self.sizes = sizes
        self._lock: int | None = None
        self._written: list[int] = []  # records written per bucket while splitting
        self._aead: AESGCM | None = AESGCM(key)
        self._what = what
        self._generation = generation

    @classmethod
    def create(
        cls,
        batches: Iterable[npt.NDArray[np.uint8]],
        *,
        buckets: int,
        spill_dir: Path | None,
        rng: Callable[[int], bytes] = os.urandom,
        what: str = "spill_dir",
    ) -> SpilledSet:
        """Split the encoded identities of ``batches`` into ``buckets`` deduplicated buckets.

        ``spill_dir`` is where the round's folder goes (None: the system's
        temporary folder); ``what`` names it in errors (the config key).

        Raises:
            ConfigError: the folder cannot be created or written (one line,
                naming ``what`` and the OS reason; no path content, no data).
        """
        if not 1 <= buckets <= MAX_BUCKETS:
            raise ValueError(f"buckets must be 1..{MAX_BUCKETS}")
        try:
            if spill_dir is not None:
                spill_dir.mkdir(parents=True, exist_ok=True)
            # Made under a hidden name, locked, then renamed: remove_stale never
            # sees one of ours without its lock held.
            hidden = Path(tempfile.mkdtemp(prefix=f".{SPILL_PREFIX}{os.getpid()}-", dir=spill_dir))
        except OSError as exc:
            raise ConfigError(f"{what}: cannot create the bucket folder ({exc.strerror})") from None
        directory = hidden.with_name(hidden.name[1:])
        try:
            lock = _hold_lock(hidden)
            try:
                hidden.rename(directory)
            except OSError:
                os.close(lock)
                raise
        except OSError as exc:
            shutil.rmtree(hidden, ignore_errors=True)
            raise ConfigError(f"{what}: cannot create the bucket folder ({exc.strerror})") from None
        spilled = cls(directory, rng(32), [0] * buckets, what=what, generation=0)
        spilled._lock = lock
        try:
            spilled._split(batches, rng(BUCKET_KEY_SIZE))
            spilled._deduplicate()
        except BaseException:
            spilled.close()
            raise
        return spilled

    def __enter__(self) -> SpilledSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> NoReturn:
        raise TypeError("SpilledSet holds a round key and cannot be pickled")

    @property
    def buckets(self) -> int:
        """The number of buckets."""
        return len(self.sizes)

    @property
    def total(self) -> int:
        """Distinct identities in all buckets."""
        return sum(self.sizes)

    def _path(self, bucket: int, generation: int) -> Path:
        return self.directory / f"{generation}-{bucket:05d}.bin"

    def _fail(self, action: str, exc: OSError) -> ConfigError:
        return ConfigError(f"{self._what}: cannot {action} a bucket file ({exc.strerror})")

    def _split(self, batches: Iterable[npt.NDArray[np.uint8]], bucket_key: bytes) -> None:
        try:
            self._split_files(batches, bucket_key)
        except OSError as exc:  # closing a file flushes its buffer
            raise self._fail("write", exc) from None

    def _split_files(self, batches: Iterable[npt.NDArray[np.uint8]], bucket_key: bytes) -> None:
        n = self.buckets
        records = self._written = [0] * n
        with contextlib.ExitStack() as stack:
            try:
                files = [stack.enter_context(_create(self._path(j, 0))) for j in range(n)]
            except OSError as exc:
                raise self._fail("create", exc) from None
            for batch in batches:
                if len(batch) == 0:
                    continue
                which = bucket_of(batch, bucket_key, n)
                order = np.argsort(which, kind="stable")
                ordered = batch[order]
                counts = np.bincount(which, minlength=n)
                ends = np.cumsum(counts)
                for j in np.flatnonzero(counts):
                    part = ordered[ends[j] - counts[j] : ends[j]]
                    self._write_record(files[j], int(j), 0, records[j], part)
                    records[j] += 1

    def _deduplicate(self) -> None:
        """Rewrite each bucket once, deduplicated, as one record of generation 1."""
        for j in range(self.buckets):
            unique = distinct_identities(self._read(j, 0, records=self._written[j]))
            path = self._path(j, 1)
            try:
                with _create(path) as f:
                    self._write_record(f, j, 1, 0, unique)
                self._path(j, 0).unlink()
            except OSError as exc:
                raise self._fail("write", exc) from None
            self.sizes[j] = len(unique)
        self._generation = 1

    def _write_record(
        self, f: BinaryIO, bucket: int, generation: int, number: int, rows: npt.NDArray[np.uint8]
    ) -> None:
        assert self._aead is not None
        nonce = os.urandom(_NONCE)
        aad = _AAD.pack(b"xm-spill", bucket, generation, number)
        sealed = self._aead.encrypt(nonce, np.ascontiguousarray(rows).tobytes(), aad)
        try:
            f.write(_HEADER.pack(len(sealed)) + nonce + sealed)
        except OSError as exc:
            raise self._fail("write", exc) from None

    def _records(self, bucket: int, generation: int) -> Iterator[bytes]:
        if self._aead is None:
            raise ConfigError(f"{self._what}: the bucket files were already removed")
        try:
            data = self._path(bucket, generation).read_bytes()
        except OSError as exc:
            raise self._fail("read", exc) from None
        pos, number = 0, 0
        while pos < len(data):
            if pos + _HEADER.size + _NONCE > len(data):
                raise self._altered(bucket)
            (length,) = _HEADER.unpack_from(data, pos)
            start = pos + _HEADER.size + _NONCE
            if start + length > len(data):
                raise self._altered(bucket)
            nonce = data[pos + _HEADER.size : start]
            aad = _AAD.pack(b"xm-spill", bucket, generation, number)
            try:
                yield self._aead.decrypt(nonce, data[start : start + length], aad)
            except InvalidTag:
                raise self._altered(bucket) from None
            pos, number = start + length, number + 1

    def _altered(self, bucket: int) -> ConfigError:
        return ConfigError(
            f"{self._what}: bucket file {bucket} failed authentication (changed during the round)"
        )

    def _read(
        self, bucket: int, generation: int, *, records: int | None = None
    ) -> npt.NDArray[np.uint8]:
        parts = [np.frombuffer(r, dtype=np.uint8) for r in self._records(bucket, generation)]
        if records is not None and len(parts) != records:
            raise self._altered(bucket)  # records cut off at a record boundary
        if not parts:
            return np.zeros((0, 16), dtype=np.uint8)
        return np.concatenate(parts).reshape(-1, 16)

    def read(self, bucket: int) -> npt.NDArray[np.uint8]:
        """The distinct encoded identities of ``bucket`` (sorted).

        Raises:
            ConfigError: the file cannot be read, or fails authentication.
            IndexError: no such bucket.
        """
        if not 0 <= bucket < self.buckets:
            raise IndexError(f"no bucket {bucket}")
        rows = self._read(bucket, self._generation)
        if len(rows) != self.sizes[bucket]:
            raise self._altered(bucket)
        return rows

    def close(self) -> None:
        """Delete the folder and forget the key (idempotent)."""
        self._aead = None
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None


def _hold_lock(directory: Path) -> int:
    """Create ``directory/.lock`` and hold an exclusive flock on it; returns the fd."""
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _in_use(directory: Path) -> bool:
    """Whether a live process holds the folder's lock.

    A named folder always got its lock before its name (see
    :meth:`SpilledSet.create`); a hidden one without a lock is being created,
    unless it is older than a minute (its process died in between).
    """
    try:
        fd = os.open(directory / _LOCK, os.O_RDWR)
    except FileNotFoundError:
        if not directory.name.startswith("."):
            return False
        try:
            return directory.stat().st_mtime > time.time() - 60
        except OSError:
            return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove_stale(spill_dir: Path | None) -> int:
    """Delete spill folders in ``spill_dir`` (None: the temp folder) no live process holds.

    Returns the number removed. Folders that a live process holds (a round in
    progress here, or in another node on this machine) are left alone.
    """
    base = spill_dir if spill_dir is not None else Path(tempfile.gettempdir())
    removed = 0
    try:
        entries = list(base.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if _FOLDER.fullmatch(entry.name) is None or not entry.is_dir() or _in_use(entry):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed
