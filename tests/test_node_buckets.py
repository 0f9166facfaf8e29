"""Bucket files of an ecdh set larger than memory (nodes.buckets): content, secrecy, faults."""

from __future__ import annotations

import os
import random
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from nodes.buckets import MAX_BUCKETS, SPILL_PREFIX, SpilledSet, bucket_count, remove_stale
from psi.ecdh import distinct_identities
from psi.errors import ConfigError
from psi.identifiers import encode_identities
from tests.test_node_handlers import make_ids

IDS = make_ids(7, 3000)


def batches(ids: list[str], size: int = 700, repeat: int = 2) -> Iterator[npt.NDArray[np.uint8]]:
    """The identities in batches, every one ``repeat`` times (duplicates across batches)."""
    enc = encode_identities(ids * repeat)
    order = np.random.default_rng(1).permutation(len(enc))
    for start in range(0, len(enc), size):
        yield enc[order[start : start + size]]


def spill(tmp_path: Path, buckets: int = 5, ids: list[str] = IDS) -> SpilledSet:
    return SpilledSet.create(
        batches(ids), buckets=buckets, spill_dir=tmp_path / "spill", rng=random.Random(3).randbytes
    )


def test_buckets_partition_the_distinct_identities(tmp_path: Path) -> None:
    with spill(tmp_path) as spilled:
        assert spilled.buckets == 5 and spilled.total == len(IDS)
        parts = [spilled.read(j) for j in range(5)]
        assert [len(p) for p in parts] == spilled.sizes
        assert all(400 < n < 800 for n in spilled.sizes)  # about 600 each
        together = np.concatenate(parts)
        assert len(distinct_identities(together)) == len(IDS)  # no identity in two buckets
        expected = distinct_identities(encode_identities(IDS))
        assert (distinct_identities(together) == expected).all()
        assert (parts[2] == spilled.read(2)).all()  # read again: the same


def test_files_are_ciphertext_in_a_private_folder(tmp_path: Path) -> None:
    with spill(tmp_path) as spilled:
        folder = spilled.directory
        assert folder.parent == tmp_path / "spill" and folder.name.startswith(SPILL_PREFIX)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        raw = b"".join(f.read_bytes() for f in sorted(folder.iterdir()))
        assert len(raw) > 16 * len(IDS)
        plain = encode_identities(IDS)
        # no encoded identity (nor its first 8 bytes) is on disk
        assert not any(row.tobytes()[:8] in raw for row in plain[:500])
        assert not any(i.encode() in raw for i in IDS[:500])
    assert not folder.exists()  # removed on close


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap", "drop"])
def test_a_changed_bucket_file_fails_authentication(tmp_path: Path, damage: str) -> None:
    with spill(tmp_path) as spilled:
        files = sorted(spilled.directory.glob("*.bin"))
        assert len(files) == 5
        one, two = files[1], files[2]
        data = bytearray(one.read_bytes())
        if damage == "flip":
            data[100] ^= 1
            one.write_bytes(bytes(data))
        elif damage == "truncate":
            one.write_bytes(bytes(data[:-20]))
        elif damage == "swap":  # the bucket index is bound to each record
            one.write_bytes(two.read_bytes())
        else:
            one.write_bytes(b"")
        with pytest.raises(ConfigError) as info:
            spilled.read(1)
        line = str(info.value)
        assert "spill_dir" in line and "\n" not in line
        assert line.endswith("bucket file 1 failed authentication (changed during the round)")
        spilled.read(0)  # the others are intact


def test_failure_while_splitting_leaves_nothing(tmp_path: Path) -> None:
    def broken() -> Iterator[npt.NDArray[np.uint8]]:
        yield encode_identities(IDS[:100])
        raise ConfigError("node.toml: match_sets[0]: where: conversion failed")

    with pytest.raises(ConfigError, match="conversion failed"):
        SpilledSet.create(broken(), buckets=3, spill_dir=tmp_path / "spill")
    assert list((tmp_path / "spill").iterdir()) == []


def test_unwritable_spill_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as info:
        SpilledSet.create(batches(IDS[:10]), buckets=2, spill_dir=blocker, what="n.toml: spill")
    line = str(info.value)
    assert line.startswith("n.toml: spill: cannot create the bucket folder (")
    assert "\n" not in line and str(tmp_path) not in line


def test_closed_set_cannot_be_read(tmp_path: Path) -> None:
    spilled = spill(tmp_path, buckets=2)
    spilled.close()
    spilled.close()  # idempotent
    with pytest.raises(ConfigError, match="already removed"):
        spilled.read(0)
    with SpilledSet.create(iter([]), buckets=2, spill_dir=tmp_path) as empty:
        assert empty.sizes == [0, 0] and len(empty.read(1)) == 0
        with pytest.raises(IndexError):
            empty.read(2)


def test_remove_stale_keeps_folders_a_live_process_holds(tmp_path: Path) -> None:
    def folder(name: str, *, lock: bool = True) -> Path:
        path = tmp_path / f"{SPILL_PREFIX}{name}"
        path.mkdir()
        (path / "0-00000.bin").write_bytes(b"ciphertext")
        if lock:
            (path / ".lock").touch()
        return path

    stale = folder("123-abandoned")  # a lock file nobody holds: its process is gone
    unlocked = folder("124-nolock", lock=False)  # named folders always had a lock
    being_made = tmp_path / f".{SPILL_PREFIX}125-new"  # hidden, not locked yet: in creation
    being_made.mkdir()
    dead_in_creation = tmp_path / f".{SPILL_PREFIX}126-old"
    dead_in_creation.mkdir()
    os.utime(dead_in_creation, (time.time() - 600, time.time() - 600))
    other = tmp_path / "xmatch-something-else"
    other.mkdir()
    # a folder held by another live process (a second node on this machine)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; d = sys.argv[1]; os.mkdir(d); "
            "fd = os.open(d + '/.lock', os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(tmp_path / f"{SPILL_PREFIX}999999-othernode"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with spill(tmp_path, buckets=2) as ours:  # held by this process
            assert ours.directory.parent == tmp_path / "spill"
            assert remove_stale(tmp_path / "spill") == 0
            assert remove_stale(tmp_path) == 3
            assert not stale.exists() and not unlocked.exists()
            assert not dead_in_creation.exists()
            assert being_made.exists() and other.exists()
            assert (tmp_path / f"{SPILL_PREFIX}999999-othernode").exists()
            assert ours.directory.exists()
        holder.kill()  # the kernel drops its lock with it
        holder.wait(timeout=10)
        assert remove_stale(tmp_path) == 1
        assert not (tmp_path / f"{SPILL_PREFIX}999999-othernode").exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
    assert remove_stale(tmp_path / "missing") == 0


def test_bucket_count() -> None:
    # a power of two: the count tells the source's size only within a factor of two
    assert bucket_count(0, 1_000_000) == 1
    assert bucket_count(1_000_000, 1_000_000) == 1
    assert bucket_count(1_000_001, 1_000_000) == 2
    assert bucket_count(3_000_000, 1_000_000) == 4
    assert bucket_count(20_000_000, 1_000_000) == 32
    assert bucket_count(10**12, 1) == MAX_BUCKETS == 128  # one open file per bucket
    with pytest.raises(ValueError, match="buckets"):
        SpilledSet.create(iter([]), buckets=MAX_BUCKETS + 1, spill_dir=None)


def test_records_cut_off_while_splitting_fail_the_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket file cut at a record boundary between the split and its deduplication."""
    real = SpilledSet._deduplicate

    def cut_then_deduplicate(self: SpilledSet) -> None:
        first = sorted(self.directory.glob("0-*.bin"))[0]
        data = first.read_bytes()
        (length,) = struct.unpack(">I", data[:4])
        first.write_bytes(data[: 4 + 12 + length])  # keep only its first record
        real(self)

    monkeypatch.setattr(SpilledSet, "_deduplicate", cut_then_deduplicate)
    with pytest.raises(ConfigError, match="bucket file 0 failed authentication"):
        spill(tmp_path, buckets=2)
    assert list((tmp_path / "spill").iterdir()) == []


def test_default_spill_dir_is_beside_the_config(tmp_path: Path) -> None:
    from tests.test_node_handlers import make_cfg

    cfg = make_cfg(tmp_path)
    assert cfg.node.spill_dir is None
    assert cfg.spill_dir == cfg.path.absolute().parent / "spill"
