"""The process pool for EC batches, outside psi/ (psi starts no processes).

:mod:`psi.ecdh` takes any ``concurrent.futures.Executor`` for its EC work; the
coordinator and the node make one here. Its workers exit when the process that
made the pool dies, and use the X25519 backend that process resolved.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
from collections.abc import Callable
from typing import Literal

from psi.ecdh import ec_ready, use_owner_backend, use_x25519_backend

__all__ = ["OWNER_CHECK_SECONDS", "prepare_executor", "worker_pool"]


#: Seconds between a pool worker's checks that the process owning the pool is alive.
OWNER_CHECK_SECONDS = 1.0


def worker_pool(
    workers: int,
    *,
    start_method: Literal["spawn", "forkserver"] = "spawn",
    x25519_backend: str | None = None,
    on_fallback: Callable[[str], None] | None = None,
) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool for EC batches whose workers exit when the process that made it dies.

    ``x25519_backend`` (``auto``, ``crypto-mb`` or ``openssl``; the
    ``XMATCH_X25519_BACKEND`` environment variable wins over it) is resolved
    here, for this process, by :func:`psi.ecdh.use_x25519_backend` (``on_fallback``
    gets its one warning line), and the result is given to every worker.

    Raises:
        ValueError: an unknown backend name.

    A plain ``ProcessPoolExecutor``'s workers outlive an owner killed with SIGKILL:
    they wait on a queue nobody writes to again, for ever. Each worker here checks
    every :data:`OWNER_CHECK_SECONDS` that its owner is alive and exits once it is
    gone. Use ``spawn`` or ``forkserver``, never ``fork``: the owner runs gRPC threads.
    """
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(start_method),
        initializer=_start_worker,
        initargs=(os.getpid(), use_x25519_backend(x25519_backend, on_fallback=on_fallback)),
    )


def _start_worker(owner: int, backend: str) -> None:
    """Runs in a worker: use the owner's X25519 backend; exit when the owner is gone."""
    use_owner_backend(backend)
    _exit_with_owner(owner)


def _exit_with_owner(owner: int) -> None:
    """A daemon thread that ends this worker when ``owner`` is gone."""

    def watch() -> None:
        never = threading.Event()
        while not never.wait(OWNER_CHECK_SECONDS):
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                continue  # alive, owned by someone else (cannot happen for our own owner)

    threading.Thread(target=watch, name="exit-with-owner", daemon=True).start()


def prepare_executor(executor: concurrent.futures.Executor, workers: int) -> None:
    """Start ``workers`` worker processes of ``executor`` now and import the EC code in them.

    A process pool starts its workers on demand; a "spawn" worker takes about
    half a second to import numpy and ``cryptography``, which the first
    round would otherwise pay (measured: 10k x 10k ecdh 1.6 s cold, 0.9 s warm).
    """
    futures = [executor.submit(ec_ready) for _ in range(max(1, workers))]
    for future in futures:
        future.result()
