"""The EC worker pool: the one place that starts worker processes for psi's group operations.

psi/ is pure: it starts no process and only uses the
:class:`concurrent.futures.Executor` it is given, submitting top-level,
picklable functions (``psi.hazmat`` multiplications, dispatched on the round's
suite: X25519 or ``SM2_XMD:SM3_SSWU_RO_``). The node (:mod:`nodes.server`), the
coordinator (:mod:`coordinator.round`) and the benchmark make their pool here
with :func:`worker_pool` and pass it in. This package imports only psi.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.resource_tracker
import os
import signal
import threading
from collections.abc import Callable
from typing import Literal

from psi.ecdh import X25519_BACKEND_ENV, ec_ready, use_x25519_backend

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
    here, for this process, by :func:`psi.ecdh.use_x25519_backend`
    (``on_fallback`` gets its one warning line), and the result is given to
    every worker.

    Raises:
        ValueError: an unknown backend name.

    A plain ``ProcessPoolExecutor``'s workers outlive an owner killed with SIGKILL:
    they wait on a queue nobody writes to again, for ever. Each worker here checks
    every :data:`OWNER_CHECK_SECONDS` that its owner is alive and exits once it is
    gone. Use ``spawn`` or ``forkserver``, never ``fork``: the owner runs gRPC threads.

    Call it before ``runtime.signals.sigint_blocked``, and start the workers inside
    that block: this starts multiprocessing's resource tracker, whose start unblocks
    SIGINT in the calling thread (and so would end the block early, for the workers
    started after it).
    """
    multiprocessing.resource_tracker.ensure_running()
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(start_method),
        initializer=_start_worker,
        initargs=(os.getpid(), use_x25519_backend(x25519_backend, on_fallback=on_fallback)),
    )


def _start_worker(owner: int, backend: str) -> None:
    """Runs in a worker: ignore SIGINT, use the owner's X25519 backend, exit with the owner."""
    # Started with SIGINT blocked (runtime.signals.sigint_blocked): ignored first, so that
    # a Ctrl-C during the start is discarded, then unblocked. The owner stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # The owner named the backend it resolved; the environment must not override it here.
    os.environ.pop(X25519_BACKEND_ENV, None)
    use_x25519_backend(backend, quiet=True)
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
