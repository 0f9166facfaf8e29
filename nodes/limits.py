"""Probing limits of a node: query budgets per requester and purpose, the replay guard.

Both are rebuilt from the protocol log at startup (:mod:`nodes.history`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable

from nodes.config import Budget
from psi.errors import Refused


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
