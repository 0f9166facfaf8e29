"""Real PostgreSQL and MariaDB servers for the tests, one of each per pytest worker.

Each is Debian's own server (``make pytest`` installs ``postgresql`` and
``mariadb-server`` when missing), started by :mod:`xmatch.localdb` as an
unprivileged user in a private temporary folder on a free port, on first use in
a worker process, and stopped at the end of the session. Under ``pytest -n 2``
each xdist worker has its own servers (own folders, own ports), so the workers
never share state. Tests create their own tables (names from :func:`table_name`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from xmatch.localdb import (
    LocalServer,
    LocalServerError,
    mariadb_available,
    postgresql_available,
    start_mariadb,
    start_postgresql,
)

_names = itertools.count(1)


def table_name(prefix: str) -> str:
    """A table name no other test of this worker uses."""
    return f"{prefix}_{os.getpid()}_{next(_names)}"


def _start(kind: str) -> LocalServer:
    available = postgresql_available() if kind == "postgresql" else mariadb_available()
    if not available:
        pytest.fail(
            f"{kind} server binaries are missing: run `make pytest` (it installs Debian's "
            "postgresql and mariadb-server)"
        )
    try:
        return start_postgresql() if kind == "postgresql" else start_mariadb()
    except LocalServerError as exc:
        pytest.fail(f"could not start {kind}: {exc}")


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[LocalServer]:
    """This worker's PostgreSQL server."""
    server = _start("postgresql")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[LocalServer]:
    """This worker's MariaDB server."""
    server = _start("mariadb")
    try:
        yield server
    finally:
        server.stop()
