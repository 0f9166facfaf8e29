"""Limits of a node: query budgets per requester and purpose, the replay guard, and
the per-requester gate on concurrent rounds.

Budgets and the replay guard are rebuilt from the protocol log at startup
(:mod:`nodes.history`).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from nodes.config import Budget
from psi.errors import PeerError, Refused


class NodeBusy(PeerError):
    """Every round slot stayed busy for ``queue_seconds`` (UNAVAILABLE: retry later)."""


class RequesterBusy(NodeBusy):
    """This requester has as many rounds open as the node grants one requester."""


class BudgetExhausted(Refused):
    """The requester+purpose has used its rounds for the period (RESOURCE_EXHAUSTED)."""


class QueryBudget:
    """Rounds per (match set, requester, purpose) in a sliding period. Thread-safe.

    ``clock`` returns seconds (monotonic); injected for tests.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[tuple[str, str, str], collections.deque[float]] = {}

    def _window(
        self, key: tuple[str, str, str], budget: Budget, now: float
    ) -> collections.deque[float]:
        used = self._used.setdefault(key, collections.deque())
        while used and used[0] <= now - budget.seconds:
            used.popleft()
        return used

    def consume(self, *, match_set: str, requester: str, purpose: str, budget: Budget) -> int:
        """Take one round from the budget; returns the rounds left in the period.

        Raises:
            BudgetExhausted: no round left.
        """
        key = (match_set, requester, purpose)
        with self._lock:
            now = self._clock()
            used = self._window(key, budget, now)
            if len(used) >= budget.rounds:
                raise BudgetExhausted(
                    requester, f"budget exhausted ({budget.rounds} rounds per {budget.period})"
                )
            used.append(now)
            return budget.rounds - len(used)

    def remaining(self, *, match_set: str, requester: str, purpose: str, budget: Budget) -> int:
        """Rounds left in the current period."""
        with self._lock:
            used = self._window((match_set, requester, purpose), budget, self._clock())
            return max(0, budget.rounds - len(used))

    def restore(
        self,
        *,
        match_set: str,
        requester: str,
        purpose: str,
        budget: Budget,
        ages: Iterable[float],
    ) -> None:
        """Count rounds used before this process started, ``ages`` seconds ago.

        Used at startup with the rounds of the node's own protocol log, so that
        a restart does not reset the budget. Ages outside the period are
        ignored; negative ages (a clock set back) count as now.
        """
        key = (match_set, requester, purpose)
        with self._lock:
            now = self._clock()
            kept = [now - max(0.0, a) for a in ages if a < budget.seconds]
            used = self._used.setdefault(key, collections.deque())
            used.extend(kept)
            self._used[key] = collections.deque(sorted(used))


class ReplayGuard:
    """Remembers the last ``capacity`` (round id, match set) pairs. Thread-safe."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[tuple[bytes, str], None] = collections.OrderedDict()

    def remember(self, round_id: bytes, match_set: str) -> bool:
        """Record the pair; False if it was already there (a replay)."""
        key = (bytes(round_id), match_set)
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True


class RequesterGate:
    """How many rounds one requester may have at once. Thread-safe.

    At most ``running`` rounds of one requester go on to take a round slot; up
    to ``waiting`` more wait (at most ``timeout`` seconds) for one of those to
    end; any beyond are refused at once. With ``running`` below the node's
    ``max_concurrent_rounds``, one requester, even one holding silent streams,
    always leaves a slot to the others, and its waiting calls are bounded too.
    """

    def __init__(self, *, running: int, waiting: int) -> None:
        self.running = max(1, running)
        self.waiting = max(0, waiting)
        self._cond = threading.Condition()
        self._open: collections.Counter[str] = collections.Counter()
        self._active: collections.Counter[str] = collections.Counter()

    @classmethod
    def for_node(cls, max_concurrent_rounds: int) -> RequesterGate:
        """The node's gate: one slot fewer than the node has (at least one), as many waiting."""
        running = max(1, max_concurrent_rounds - 1)
        return cls(running=running, waiting=max_concurrent_rounds)

    @contextlib.contextmanager
    def hold(self, peer: str, *, timeout: float) -> Iterator[None]:
        """Count one round of ``peer`` for the block.

        Raises:
            RequesterBusy: ``peer`` already has ``running + waiting`` rounds open,
                or none of its ``running`` ended within ``timeout`` seconds.
        """
        limit = self.running + self.waiting
        with self._cond:
            if self._open[peer] >= limit:
                raise RequesterBusy(
                    peer, f"too many rounds open for this requester (at most {limit}); retry later"
                )
            self._open[peer] += 1
        try:
            deadline = time.monotonic() + timeout
            with self._cond:
                while self._active[peer] >= self.running:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RequesterBusy(
                            peer,
                            f"this requester's {self.running} round(s) at once are all in use; "
                            "retry later",
                        )
                    self._cond.wait(left)
                self._active[peer] += 1
            try:
                yield
            finally:
                with self._cond:
                    self._active[peer] -= 1
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._open[peer] -= 1
                if not self._open[peer]:
                    del self._open[peer]
                    self._active.pop(peer, None)
