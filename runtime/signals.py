"""Signal handling shared by ``xmatch node serve`` and ``xmatch round run``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["CommitGuard", "CtrlC", "ignore_sigint", "sigint_blocked"]


_Handler = Callable[[int, FrameType | None], Any] | int | None


def _restore(previous: _Handler) -> None:
    """Put back the SIGINT handler ``previous`` (``None``: one not set from Python, so
    Python's own, which raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Start child processes that keep SIGINT blocked; a SIGINT meanwhile is held for us.

    Ctrl-C in a terminal goes to the whole process group. A worker or writer
    started in this block inherits SIGINT *blocked* (a signal mask survives
    fork and exec) and ignores it as the first thing it does
    (:func:`ignore_sigint`), so no child prints a KeyboardInterrupt traceback
    and the parent stops them itself.

    The parent's SIGINT is never ignored here: the kernel gives a process-wide
    signal to any thread that does not block it, and threads of libraries
    (OpenBLAS, DuckDB, gRPC) do not. While SIGINT was ignored, a Ctrl-C that
    reached such a thread was dropped, and the node went on serving. Now a
    SIGINT meanwhile is remembered and sent again to us when the block ends,
    to the handler that was in place before; the block itself is never broken
    off half way (a child forked but not yet recorded). Outside the main
    thread (where signals cannot be set) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        # a SIGINT pending for this thread is handled (by hold) as it is unblocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        _restore(previous)
        if held:
            signal.raise_signal(signal.SIGINT)


def ignore_sigint() -> None:
    """In a child started in :func:`sigint_blocked`: ignore SIGINT, then unblock it.

    Setting it ignored first discards a Ctrl-C that came while the child started.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class CommitGuard:
    """Ctrl-C stops the work until :meth:`hold`; from then on it is only remembered.

    A round's output folder is renamed into place in one step. Once that step
    has begun, the round is done: an interrupt must neither leave the state
    saying "interrupted" beside a complete folder nor turn exit 0 into 130.
    :meth:`hold` is called just before the rename; leaving the ``with`` block
    restores the previous handler, and :attr:`interrupted` says whether a
    Ctrl-C came meanwhile. Outside the main thread this does nothing.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: _Handler = None
        self._holding = False

    def __enter__(self) -> CommitGuard:
        return self

    def __exit__(self, *_: object) -> None:
        if self._holding:
            _restore(self._previous)
            self._holding = False

    def hold(self) -> None:
        """From now on a Ctrl-C is remembered, not raised."""
        if self._holding or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGINT, self._remember)
        self._holding = True

    def _remember(self, _signum: int, _frame: FrameType | None) -> None:
        self.interrupted = True


class CtrlC:
    """Ctrl-C raises KeyboardInterrupt, as Python's own handler does, and is remembered.

    Some libraries catch the KeyboardInterrupt raised inside them and raise
    something else: DuckDB, reading a match set at node startup, raises
    ``RuntimeError``, which then read as an internal error. Whatever a command
    raises after a Ctrl-C is the Ctrl-C's doing: :attr:`seen` lets the command
    line say "interrupted" (exit 130) instead. Handlers installed inside the
    block (a node serving, :class:`CommitGuard`) take over until they restore
    this one. Outside the main thread this does nothing.
    """

    def __init__(self) -> None:
        self.seen = False
        self._previous: _Handler = None
        self._installed = False

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._raise)
            self._installed = True
        return self

    def __exit__(self, *_: object) -> None:
        if self._installed:
            _restore(self._previous)
            self._installed = False

    def _raise(self, _signum: int, _frame: FrameType | None) -> None:
        self.seen = True
        raise KeyboardInterrupt
