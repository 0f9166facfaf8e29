"""Authorization of a round and what each requester may see of the node's sets.

:func:`admit` runs when a round stream opens, before the caller may hold a
round slot: a caller that is not a coordinator, or that no ``allow`` list names,
is refused there with one uniform answer (:data:`NOT_ALLOWED`), whatever match
set, protocol or suite it would have named. :func:`authorize` then checks the
round itself, the allow list before the protocol and suite, so that a listed
requester learns nothing of the sets it may not query either.

:func:`authorize`, in order; the first failure is a :class:`psi.errors.Refused`
whose ``reason`` goes into the audit log:

1. the TLS peer's certificate has the ``coordinator`` role;
2. the context's requester is the TLS peer;
3. the context's responder is this node;
4. the match set exists and its ``allow`` list names the requester (one
   answer for both: :data:`NOT_ALLOWED`), (5) for this purpose;
6. it offers the round's protocol, (7) with the round's ``suite`` (ecdh) or
   ``prf`` (keyed-hash) in its ``suites`` / ``prfs``;
8. the announced query size is at least ``min_query_size`` and (9) at most
   the allow entry's ``max_query_size`` (default
   :data:`nodes.allow.DEFAULT_ALLOW_MAX_QUERY_SIZE`) and the node's;
10. ``as_of`` is at most ``max_future_days`` after and ``max_past_days``
    before today;
11. the (round id, match set) pair was not seen before (replay);
12. the requester+purpose still has budget on this match set
    (:class:`nodes.limits.BudgetExhausted`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from nodes.allow import max_query_size_for
from nodes.config import MatchSetConfig, NodeConfig
from nodes.limits import QueryBudget, ReplayGuard
from psi.context import DEFAULT_PARAMS, RoundContext
from psi.errors import Refused

#: The only role that may run rounds (keys.certs puts it in the certificate).
REQUESTER_ROLE = "coordinator"

#: What every caller that may not query a match set is told: unlisted callers,
#: callers with another role, sets that do not exist or are not theirs.
NOT_ALLOWED = "requester not allowed for this match set"


class NotAdmitted(Refused):
    """Refused before a round slot (:func:`admit`).

    ``reason`` (for the node's audit log) says why; the peer is told only
    :data:`NOT_ALLOWED`.
    """


def is_listed(config: NodeConfig, peer: str) -> bool:
    """Whether any match set's ``allow`` list names ``peer``."""
    return any(ms.purposes_for(peer) for ms in config.match_sets)


def admit(config: NodeConfig, peer: str, *, role: str) -> None:
    """Let a caller open a round at all; runs before a round slot is taken.

    Raises:
        NotAdmitted: the certificate is not a coordinator's (reason ``not a
            coordinator certificate``), or no allow list names ``peer``
            (reason ``requester in no allow list``).
    """
    if role != REQUESTER_ROLE:
        raise NotAdmitted(peer, "not a coordinator certificate")
    if not is_listed(config, peer):
        raise NotAdmitted(peer, "requester in no allow list")


def authorize(
    config: NodeConfig,
    peer: str,
    context: RoundContext,
    query_size: int,
    *,
    role: str,
    budget: QueryBudget,
    replay: ReplayGuard,
    today: _dt.date,
) -> MatchSetConfig:
    """Decide whether ``peer`` (certificate ``role``) may run the round ``context``.

    The steps are in the module docstring.

    Raises:
        Refused: steps 1-11, ``reason`` saying which (never quoting a value the
            requester chose).
        BudgetExhausted: step 12.
    """
    node = config.node
    # (1)
    if role != REQUESTER_ROLE:
        raise Refused(peer, f"peer certificate has role {role}, not {REQUESTER_ROLE}")
    # (2)
    if context.requester != peer:
        raise Refused(peer, "requester in the round context is not the TLS peer")
    # (3)
    if context.responder != node.name:
        raise Refused(peer, "round is addressed to another node")
    # (4), (5): one answer for a set that does not exist and one not open to the peer
    ms = config.match_set(context.match_set)
    purposes = ms.purposes_for(peer) if ms is not None else []
    if ms is None or not purposes:
        raise Refused(peer, NOT_ALLOWED)
    if context.purpose not in purposes:
        raise Refused(peer, "purpose not allowed")
    # (6)
    if context.protocol not in ms.protocols:
        raise Refused(peer, f"protocol {context.protocol} not offered for this match set")
    # (7) the effective parameter: psi applies the same default when it is absent
    name, allowed = ("suite", ms.suites) if context.protocol == "ecdh" else ("prf", ms.prfs)
    if context.param(name, dict(DEFAULT_PARAMS[context.protocol])[name]) not in allowed:
        raise Refused(peer, f"{context.protocol} {name} not allowed for this match set")
    # (8), (9)
    if query_size < ms.min_query_size:
        raise Refused(peer, f"query below minimum size ({ms.min_query_size})")
    limit = min(node.max_query_size, max_query_size_for(ms.allow, peer))
    if query_size > limit:
        raise Refused(peer, f"query above maximum size ({limit})")
    # (10)
    if context.as_of > node.max_as_of(today):
        raise Refused(peer, f"as_of more than {node.max_future_days} day(s) in the future")
    if context.as_of < node.min_as_of(today):
        raise Refused(peer, f"as_of more than {node.max_past_days} day(s) in the past")
    # (11)
    if not replay.remember(context.round_id, ms.name):
        raise Refused(peer, "replayed round id")
    # (12)
    budget.consume(match_set=ms.name, requester=peer, purpose=context.purpose, budget=ms.budget)
    return ms


@dataclass(frozen=True)
class CapabilityView:
    """One match set as the calling requester may see it."""

    name: str
    circumstance: str
    protocols: list[str]
    payload: list[str]
    purposes: list[str]
    min_query_size: int
    #: SERVICE sets: "gaps" or "needs" (node.toml ``service_report``); empty otherwise
    service_report: str = ""
    #: node.toml ``display_name`` of the set; empty when not set
    display_name: str = ""


def capabilities(config: NodeConfig, peer: str, *, role: str) -> list[CapabilityView]:
    """The match sets ``peer`` may query (others are not listed; none for a non-coordinator)."""
    out: list[CapabilityView] = []
    if role != REQUESTER_ROLE:
        return out
    for ms in config.match_sets:
        purposes = ms.purposes_for(peer)
        if purposes:
            out.append(
                CapabilityView(
                    name=ms.name,
                    circumstance=ms.circumstance,
                    protocols=list(ms.protocols),
                    payload=list(ms.payload),
                    purposes=purposes,
                    min_query_size=ms.min_query_size,
                    service_report=ms.report or "",
                    display_name=ms.display_name or "",
                )
            )
    return out
