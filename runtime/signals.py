"""Signal handling shared by ``xmatch node serve`` and ``xmatch round run``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["sigint_blocked"]


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
