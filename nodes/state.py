"""What a node's round handlers share: config, match sets, limits, clocks, round slots."""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as _dt
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nodes.config import NodeConfig
from nodes.limits import QueryBudget, ReplayGuard
from nodes.matchsets import MatchSetStore
from psi.errors import PeerError
from workers import prepare_executor

__all__ = ["NodeBusy", "NodeState"]


class NodeBusy(PeerError):
    """Every round slot stayed busy for ``queue_seconds`` (UNAVAILABLE: retry later)."""


@dataclass
class NodeState:
    """Everything a node's handlers share: config, match sets, limits, clocks.

    ``executor`` runs the ecdh group operations: a pool made by the caller
    (:mod:`nodes.server` with :func:`workers.worker_pool`), injected here; this
    module starts no process.
    """

    config: NodeConfig
    store: MatchSetStore
    budget: QueryBudget
    replay: ReplayGuard
    today: Callable[[], _dt.date] = _dt.date.today
    rng: Callable[[int], bytes] = os.urandom
    executor: concurrent.futures.Executor | None = None
    slots: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(self.config.node.max_concurrent_rounds)

    @classmethod
    def create(
        cls,
        config: NodeConfig,
        *,
        store: MatchSetStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], _dt.date] = _dt.date.today,
        rng: Callable[[int], bytes] = os.urandom,
        executor: concurrent.futures.Executor | None = None,
    ) -> NodeState:
        """A fresh state for ``config`` (new budget and replay memory).

        The ``executor``'s worker processes are started here, so that the
        first ecdh round does not pay for them.
        """
        if executor is not None:
            prepare_executor(executor, config.node.ec_workers)
        return cls(
            config=config,
            store=store or MatchSetStore(config),
            budget=QueryBudget(clock=clock),
            replay=ReplayGuard(config.node.replay_memory),
            today=today,
            rng=rng,
            executor=executor,
        )

    @contextlib.contextmanager
    def round_slot(self, peer: str) -> Iterator[None]:
        """Hold one of ``max_concurrent_rounds`` slots for a round.

        Raises:
            NodeBusy: no slot became free within ``queue_seconds``.
        """
        if not self.slots.acquire(timeout=self.config.node.queue_seconds):
            raise NodeBusy(peer, "node busy: every round slot is in use; retry later")
        try:
            yield
        finally:
            self.slots.release()
