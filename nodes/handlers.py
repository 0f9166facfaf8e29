"""What a node does with a request, by concern (the names callers import from here).

Authorization (:func:`authorize`, its numbered steps) is in
:mod:`nodes.authorization`; probing limits (:class:`QueryBudget`,
:class:`ReplayGuard`, :class:`BudgetExhausted`) in :mod:`nodes.limits`;
distinct-row counting (:class:`DistinctRows`) in :mod:`nodes.distinct`; node
state and round slots (:class:`NodeState`, :class:`NodeBusy`) in
:mod:`nodes.state`; the round drivers, one per protocol, in
:mod:`nodes.drivers`. The messages a driver consumes (:class:`Start`,
:class:`Chunk`, :class:`End`) and produces (:class:`Accept`, :class:`Matches`,
:class:`Points`, :class:`Done`) are the psi sessions' (:mod:`psi.session`),
whose transition tables refuse anything out of order with
:class:`psi.errors.ProtocolError`.
"""

from __future__ import annotations

from nodes.authorization import CapabilityView, authorize, capabilities
from nodes.distinct import DistinctRows
from nodes.drivers import (
    IDLE_SECONDS,
    READ_AHEAD,
    SET_CHUNK_POINTS,
    TRAILING_SECONDS,
    EcdhDriver,
    KeyedHashDriver,
    RoundDriver,
    keep_distinct,
)
from nodes.limits import BudgetExhausted, QueryBudget, ReplayGuard
from nodes.state import NodeBusy, NodeState
from psi.session import (
    Accept,
    Chunk,
    Done,
    End,
    Matches,
    Points,
    RequesterMessage,
    ResponderMessage,
    Start,
)

#: What a driver consumes and produces (the psi session messages).
Event = RequesterMessage
Output = ResponderMessage

__all__ = [
    "IDLE_SECONDS",
    "READ_AHEAD",
    "SET_CHUNK_POINTS",
    "TRAILING_SECONDS",
    "Accept",
    "BudgetExhausted",
    "CapabilityView",
    "Chunk",
    "DistinctRows",
    "Done",
    "EcdhDriver",
    "End",
    "Event",
    "KeyedHashDriver",
    "Matches",
    "NodeBusy",
    "NodeState",
    "Output",
    "Points",
    "QueryBudget",
    "ReplayGuard",
    "RoundDriver",
    "Start",
    "authorize",
    "capabilities",
    "keep_distinct",
]
