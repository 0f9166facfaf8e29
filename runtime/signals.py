"""Signal handling shared by ``xmatch node serve`` and ``xmatch round run``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["CommitGuard", "sigint_blocked"]


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (and a SIGINT meanwhile held for us).

    Ctrl-C in a terminal goes to the whole process group: workers that inherit
    the ignored SIGINT never print a KeyboardInterrupt traceback each; the
    parent stops them itself. A SIGINT that arrives meanwhile reaches the
    parent after. Outside the main thread (where signals cannot be set) this
    does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Ignored, for the children: a spawned process starts with an empty signal mask
    # but keeps an ignored signal ignored. Blocked, for us: Linux keeps a blocked
    # signal pending even while it is ignored, so it reaches our handler afterwards.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
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
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None
        self._holding = False

    def __enter__(self) -> CommitGuard:
        return self

    def __exit__(self, *_: object) -> None:
        if self._holding:
            previous = self._previous
            signal.signal(
                signal.SIGINT, signal.default_int_handler if previous is None else previous
            )
            self._holding = False

    def hold(self) -> None:
        """From now on a Ctrl-C is remembered, not raised."""
        if self._holding or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGINT, self._remember)
        self._holding = True

    def _remember(self, _signum: int, _frame: FrameType | None) -> None:
        self.interrupted = True
