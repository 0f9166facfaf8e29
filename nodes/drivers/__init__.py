"""The node's round drivers: one per protocol, each the runner of a psi responder session.

:mod:`nodes.drivers.base` (event queue, authorization, run loop),
:mod:`nodes.drivers.events` (the queue's typed events),
:mod:`nodes.drivers.keyed_hash`, :mod:`nodes.drivers.ecdh`.
"""

from nodes.drivers.base import IDLE_SECONDS, READ_AHEAD, TRAILING_SECONDS, RoundDriver
from nodes.drivers.ecdh import SET_CHUNK_POINTS, EcdhDriver, keep_distinct
from nodes.drivers.keyed_hash import KeyedHashDriver

__all__ = [
    "IDLE_SECONDS",
    "READ_AHEAD",
    "SET_CHUNK_POINTS",
    "TRAILING_SECONDS",
    "EcdhDriver",
    "KeyedHashDriver",
    "RoundDriver",
    "keep_distinct",
]
