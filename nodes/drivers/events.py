"""What a round driver's event queue carries: typed events, no string tags.

The pump thread turns the request stream into :class:`Request`, :class:`Failed`
(a request that could not be converted) and :class:`Closed` events; an ecdh
set producer adds :class:`Woken` (output is waiting) and :class:`Failed`;
:meth:`nodes.drivers.base.RoundDriver.cancel` adds :data:`CANCELLED`; a read
that waited too long returns :data:`TIMED_OUT`.
"""

from __future__ import annotations

from dataclasses import dataclass

from psi.session import RequesterMessage

__all__ = [
    "CANCELLED",
    "TIMED_OUT",
    "WOKEN",
    "Cancelled",
    "Closed",
    "DriverEvent",
    "Failed",
    "Request",
    "TimedOut",
    "Woken",
]


@dataclass(frozen=True)
class Request:
    """A requester message, converted from the transport's form."""

    message: RequesterMessage


@dataclass(frozen=True)
class Failed:
    """A request that could not be converted, or a producer thread's failure."""

    error: BaseException


@dataclass(frozen=True)
class Closed:
    """The request stream ended; ``broken``: the transport broke off (cancelled stream)."""

    broken: bool = False


@dataclass(frozen=True)
class Woken:
    """Output is waiting in the outbox (the ecdh set producer made a chunk)."""


@dataclass(frozen=True)
class Cancelled:
    """The round was cancelled (the requester went away, or the node stops)."""


@dataclass(frozen=True)
class TimedOut:
    """No event came within the wait."""


WOKEN = Woken()
CANCELLED = Cancelled()
TIMED_OUT = TimedOut()

DriverEvent = Request | Failed | Closed | Woken | Cancelled | TimedOut
