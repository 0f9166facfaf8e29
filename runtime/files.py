"""Atomic file writes and private folders, shared by the node and the coordinator."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["private_folders", "write_atomic"]


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
