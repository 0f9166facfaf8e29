"""Folders the node and the coordinator create are theirs only, however deep (runtime.files)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runtime.files import private_folders


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_new_folder_is_0700_even_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private_folders(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert _mode(folder) == 0o700, folder


def test_an_existing_folder_is_left_as_it_is(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    private_folders(shared / "rounds")
    private_folders(shared / "rounds")  # again: nothing to do
    assert _mode(shared) == 0o755 and _mode(shared / "rounds") == 0o700


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("", encoding="utf-8")
    with pytest.raises(OSError):
        private_folders(tmp_path / "logs" / "x")
    with pytest.raises(NotADirectoryError):
        private_folders(tmp_path / "logs")
