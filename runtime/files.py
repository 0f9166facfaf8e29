"""Atomic file writes and private folders, shared by the node and the coordinator."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["check_replaceable", "private_folders", "write_atomic"]


def check_replaceable(path: Path) -> None:
    """Refuse to write over ``path`` unless it is absent or a regular file.

    An atomic write renames its temporary file onto ``path``: over a device
    (``--out /dev/full``, run as root) or a symbolic link that would replace the
    device or the link itself, not write to them. Checked before anything is written.

    Raises:
        OSError: ``path`` is a folder, a link, a device or another special file.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a link"
            if stat.S_ISLNK(mode)
            else "not a regular file"
        )
        raise OSError(errno.EEXIST, f"exists and is {kind}; not replaced", str(path))


def private_folders(path: Path) -> None:
    """Create the folder ``path`` and every missing folder above it, each mode 0700.

    ``Path.mkdir(mode=0o700, parents=True)`` gives only the last folder that mode;
    the ones above it get the umask's (0777 under ``umask 000``), and they hold
    round folders, logs and state that name children.

    Raises:
        OSError: a folder cannot be created (a file is in the way, no permission).
    """
    missing: list[Path] = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by someone: theirs
            new.mkdir(mode=0o700)
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a folder")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``path`` through a temporary sibling of ``mode``, fsynced, renamed into
    place: a reader sees the old file or the whole new one, never half of it.

    Raises:
        OSError: the folder is not writable (the temporary file is removed).
    """
    check_replaceable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
