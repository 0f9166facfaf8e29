"""EC worker processes die with the process that owns them (workers.worker_pool).

A node or coordinator killed with SIGKILL must not leave its pool's workers
running: they hold no purpose any more, keep memory, and ran the round's
scalar multiplications. The control shows that a plain ProcessPoolExecutor's
workers do outlive such an owner, so the test can fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]

OWNER = textwrap.dedent(
    """
    import concurrent.futures, multiprocessing, sys, time
    from workers import prepare_executor, worker_pool

    method, kind = sys.argv[1], sys.argv[2]
    if kind == "xmatch":
        pool = worker_pool(2, start_method=method)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=2, mp_context=multiprocessing.get_context(method)
        )
    prepare_executor(pool, 2)
    print("ready", flush=True)
    time.sleep(120)
    """
)


def _workers_after_owner_killed(method: str, kind: str) -> list[psutil.Process]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, method, kind],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        workers = psutil.Process(owner.pid).children(recursive=True)
        assert len(workers) >= 2  # the pool's workers (and forkserver's server)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [w for w in alive if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    return alive


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_exit_when_their_owner_is_killed(method: str) -> None:
    survivors = _workers_after_owner_killed(method, "xmatch")
    _kill(survivors)
    assert not survivors, f"{len(survivors)} worker process(es) outlived their owner"


def test_control_a_plain_pool_leaves_its_workers_behind() -> None:
    survivors = _workers_after_owner_killed("spawn", "plain")
    _kill(survivors)
    assert survivors, "a plain pool's workers died with their owner: the test above proves nothing"


# -- the pool is made outside psi; psi's work in it keeps the suite and the backend


@pytest.mark.parametrize("suite", ["x25519-sha256-u", "SM2_XMD:SM3_SSWU_RO_"])
def test_sessions_over_the_pool_give_the_in_process_result(suite: str) -> None:
    """Suite dispatch survives the move of the pool: X25519 and SM2 rounds in workers."""
    from tests.test_psi_keyed_hash import ids_from_ints
    from tests.test_psi_session import ecdh_context, ecdh_round
    from workers import prepare_executor, worker_pool

    # chunks of 100 points: split_submit sends batches of 64 or more to the executor
    roster, members = ids_from_ints(list(range(200))), ids_from_ints(list(range(150, 400)))
    ctx = ecdh_context(suite)
    alone, _ = ecdh_round(ctx, roster, members, chunk=100)
    with worker_pool(2, x25519_backend="openssl") as pool:
        prepare_executor(pool, 2)
        pooled, done = ecdh_round(ctx, roster, members, chunk=100, executor=pool)
    assert pooled.indices.tolist() == alone.indices.tolist() == list(range(150, 200))
    assert pooled.transcript == alone.transcript == done.transcript


@pytest.mark.parametrize(("env", "requested"), [(None, "openssl"), ("openssl", "crypto-mb")])
def test_workers_use_the_backend_their_owner_resolved(
    monkeypatch: pytest.MonkeyPatch, env: str | None, requested: str
) -> None:
    """x25519_backend (and XMATCH_X25519_BACKEND, which wins) reach every worker."""
    from psi.ecdh import X25519_BACKEND_ENV
    from psi.hazmat import x25519
    from workers import worker_pool

    if env is None:
        monkeypatch.delenv(X25519_BACKEND_ENV, raising=False)
    else:
        monkeypatch.setenv(X25519_BACKEND_ENV, env)
    try:
        with worker_pool(2, x25519_backend=requested) as pool:
            seen = {pool.submit(x25519.backend).result() for _ in range(4)}
    finally:
        monkeypatch.delenv(X25519_BACKEND_ENV, raising=False)
        x25519.configure(None, quiet=True)  # this process back to its default
    assert seen == {"openssl"}
