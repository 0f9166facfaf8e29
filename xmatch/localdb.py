"""Throwaway PostgreSQL and MariaDB servers for the demo, the tests and the benchmarks.

Each server is Debian's own binary (packages ``postgresql`` and ``mariadb-server``),
run in a private folder on a free loopback port as an unprivileged user (``nobody``
when we are root: neither server may run as root), and stopped with its folder
removed afterwards. Nothing here is used by a node or the coordinator: they reach
real department databases through :mod:`databases`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from psi.errors import XmatchError

__all__ = [
    "LocalServer",
    "LocalServerError",
    "free_port",
    "local_mariadb",
    "local_postgresql",
    "mariadb_available",
    "postgresql_available",
    "start_mariadb",
    "start_postgresql",
]

#: The administrator account each server is created with (password in ``LocalServer``).
ADMIN = "xmatch_admin"


class LocalServerError(XmatchError):
    """A local database server could not be started."""


@dataclass
class LocalServer:
    """A running local server: its engine, port, admin password and process."""

    engine: str  # "postgresql" or "mysql"
    port: int
    password: str
    folder: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    user: str = ADMIN
    host: str = "127.0.0.1"
    database: str = "xmatch"

    def dsn(self, *, user: str | None = None, password: str | None = None) -> str:
        """The connection URL for ``user`` (default: the administrator)."""
        scheme = "postgresql" if self.engine == "postgresql" else "mysql"
        who = user or self.user
        pw = self.password if password is None else password
        return f"{scheme}://{who}:{pw}@{self.host}:{self.port}/{self.database}"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder."""
        if self.process.poll() is None:
            # postgres: SIGINT = fast shutdown; mariadbd: SIGTERM = normal shutdown
            self.process.send_signal(
                signal.SIGINT if self.engine == "postgresql" else signal.SIGTERM
            )
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def postgresql_available() -> bool:
    """Whether Debian's PostgreSQL server binaries are installed."""
    return _pg_bin() is not None


def mariadb_available() -> bool:
    """Whether Debian's MariaDB server binaries are installed."""
    return shutil.which("mariadbd") is not None and shutil.which("mariadb-install-db") is not None


def _run_as() -> tuple[str | None, int, int]:
    """(user name, uid, gid) to run servers as: ``nobody`` when root, else ourselves."""
    if os.geteuid() != 0:
        return None, os.getuid(), os.getgid()
    entry = pwd.getpwnam("nobody")
    return "nobody", entry.pw_uid, entry.pw_gid


def _folder(prefix: str, parent: Path | None) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    _, uid, gid = _run_as()
    if os.geteuid() == 0:
        # the unprivileged server must reach its folder: open the path to it for traversal
        for p in [folder, *folder.parents]:
            if p == Path("/"):
                break
            mode = p.stat().st_mode
            if not mode & 0o001:
                os.chmod(p, mode | 0o001)
        os.chown(folder, uid, gid)
    folder.chmod(0o700)
    return folder


def _spawn(args: list[str], log: Path, **kw: object) -> subprocess.Popen[bytes]:
    user, uid, gid = _run_as()
    out = log.open("ab")
    try:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=uid if user else None,
            group=gid if user else None,
            extra_groups=[] if user else None,
            start_new_session=True,
            **kw,
        )
    finally:
        out.close()


def _check(args: list[str], log: Path, what: str, **kw: object) -> None:
    proc = _spawn(args, log, **kw)
    if proc.wait(timeout=120) != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise LocalServerError(f"{what} failed: {' / '.join(tail)}")


def _wait_port(proc: subprocess.Popen[bytes], port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise LocalServerError(f"{what} exited at start: {' / '.join(tail)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    proc.kill()
    raise LocalServerError(f"{what} did not open port {port} within 60 s")


def start_postgresql(parent: Path | None = None) -> LocalServer:
    """Start a new PostgreSQL cluster (database ``xmatch``, password auth on TCP).

    Raises:
        LocalServerError: the binaries are missing or the server did not start.
    """
    bin_dir = _pg_bin()
    if bin_dir is None:
        raise LocalServerError("PostgreSQL is not installed (Debian package postgresql)")
    folder = _folder("xmatch-pg-", parent)
    log = folder / "server.log"
    password = secrets.token_urlsafe(18)
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    _, uid, gid = _run_as()
    if os.geteuid() == 0:
        os.chown(pwfile, uid, gid)
    pwfile.chmod(0o600)
    data = folder / "data"
    _check(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            ADMIN,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        log,
        "initdb",
    )
    pwfile.unlink()
    port = free_port()
    proc = _spawn(
        [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={folder}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=64MB",
            "-c",
            "max_connections=40",
        ],
        log,
    )
    server = LocalServer("postgresql", port, password, folder, proc)
    try:
        _wait_port(proc, port, log, "postgres")
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                [
                    str(bin_dir / "psql"),
                    "-h",
                    str(folder),
                    "-p",
                    str(port),
                    "-U",
                    ADMIN,
                    "-d",
                    "postgres",
                    "-q",
                    "-c",
                    "CREATE DATABASE xmatch",
                ],
                capture_output=True,
                check=False,
                user=uid if os.geteuid() == 0 else None,
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise LocalServerError(f"createdb failed: {done.stderr.decode(errors='replace')}")
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise
    return server


def start_mariadb(parent: Path | None = None) -> LocalServer:
    """Start a new MariaDB server (database ``xmatch``, password auth on TCP).

    Raises:
        LocalServerError: the binaries are missing or the server did not start.
    """
    if not mariadb_available():
        raise LocalServerError("MariaDB is not installed (Debian package mariadb-server)")
    folder = _folder("xmatch-my-", parent)
    log = folder / "server.log"
    data = folder / "data"
    user, _, _ = _run_as()
    _check(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            *([f"--user={user}"] if user else []),
        ],
        log,
        "mariadb-install-db",
    )
    port = free_port()
    sock = folder / "mysqld.sock"
    proc = _spawn(
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={data}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={sock}",
            f"--pid-file={folder / 'mysqld.pid'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=0",
            "--skip-log-bin",
            "--max-connections=40",
        ],
        log,
    )
    password = secrets.token_urlsafe(18)
    server = LocalServer("mysql", port, password, folder, proc)
    try:
        _wait_port(proc, port, log, "mariadbd")
        import mysql.connector

        con = mysql.connector.connect(unix_socket=str(sock), user="root", password="")
        try:
            cur = con.cursor()
            cur.execute("CREATE DATABASE xmatch CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER '{ADMIN}'@'%' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL ON *.* TO '{ADMIN}'@'%' WITH GRANT OPTION")
            cur.close()
        finally:
            con.close()
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def local_postgresql(parent: Path | None = None) -> Iterator[LocalServer]:
    """A local PostgreSQL server for the duration of the block."""
    server = start_postgresql(parent)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def local_mariadb(parent: Path | None = None) -> Iterator[LocalServer]:
    """A local MariaDB server for the duration of the block."""
    server = start_mariadb(parent)
    try:
        yield server
    finally:
        server.stop()


_SQL_TYPES = {"VARCHAR": "TEXT", "DATE": "DATE", "BIGINT": "BIGINT", "INTEGER": "INTEGER"}


def load_csv(
    server: LocalServer, csv_path: Path, table: str, *, text_columns: Sequence[str]
) -> int:
    """Copy a department CSV into ``table`` (dates as DATE, ``text_columns`` as text).

    Column types are DuckDB's detection, as a node reading the file would see
    them; returns the number of rows. For the demo and the tests.
    """
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        forced = dict.fromkeys(text_columns, "VARCHAR")
        reader = "read_csv($p, header = true, types = $t)"
        described = con.sql(
            f"DESCRIBE SELECT * FROM {reader}", params={"p": str(csv_path), "t": forced}
        ).fetchall()
        # anything but a date or a whole number stays text (yes/no is not a boolean);
        # a *_date column is a date even when every cell is empty
        for r in described:
            if str(r[0]).endswith("_date"):
                forced[str(r[0])] = "DATE"
            elif str(r[1]) not in _SQL_TYPES:
                forced[str(r[0])] = "VARCHAR"
        described = con.sql(
            f"DESCRIBE SELECT * FROM {reader}", params={"p": str(csv_path), "t": forced}
        ).fetchall()
        rows = con.sql(
            f"SELECT * FROM {reader}", params={"p": str(csv_path), "t": forced}
        ).to_arrow_table()
    finally:
        con.close()
    columns = [(str(r[0]), _SQL_TYPES.get(str(r[1]), "TEXT")) for r in described]
    if server.engine == "postgresql":
        import adbc_driver_postgresql.dbapi as adbc

        with adbc.connect(server.dsn()) as pg:
            with pg.cursor() as cur:
                cols = ", ".join(f'"{name}" {kind}' for name, kind in columns)
                cur.execute(f"CREATE TABLE {table} ({cols})")
                cur.adbc_ingest(table, rows, mode="append")
            pg.commit()
    else:
        import mysql.connector

        my = mysql.connector.connect(
            host=server.host,
            port=server.port,
            user=server.user,
            password=server.password,
            database=server.database,
            use_pure=True,
        )
        try:
            cur = my.cursor()
            cols = ", ".join(
                f"`{name}` {'VARCHAR(255)' if kind == 'TEXT' else kind}" for name, kind in columns
            )
            cur.execute(f"CREATE TABLE {table} ({cols}) CHARACTER SET utf8mb4")
            marks = ", ".join(["%s"] * len(columns))
            values = [tuple(r.values()) for r in rows.to_pylist()]
            cur.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
            my.commit()
        finally:
            my.close()
    return int(rows.num_rows)
