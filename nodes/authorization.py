"""Authorization of a round and what each requester may see of the node's sets."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from nodes.config import MatchSetConfig, NodeConfig
from nodes.limits import QueryBudget, ReplayGuard
from psi.context import DEFAULT_PARAMS, RoundContext
from psi.errors import Refused

#: The only role that may run rounds (keys.certs puts it in the certificate).
REQUESTER_ROLE = "coordinator"


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
    # (4)
    ms = config.match_set(context.match_set)
    if ms is None:
        raise Refused(peer, "unknown match set")
    # (5)
    if context.protocol not in ms.protocols:
        raise Refused(peer, f"protocol {context.protocol} not offered for this match set")
    # (6) the effective parameter: psi applies the same default when it is absent
    name, allowed = ("suite", ms.suites) if context.protocol == "ecdh" else ("prf", ms.prfs)
    if context.param(name, dict(DEFAULT_PARAMS[context.protocol])[name]) not in allowed:
        raise Refused(peer, f"{context.protocol} {name} not allowed for this match set")
    # (7), (8)
    purposes = ms.purposes_for(peer)
    if not purposes:
        raise Refused(peer, "requester not allowed for this match set")
    if context.purpose not in purposes:
        raise Refused(peer, "purpose not allowed")
    # (9)
    if query_size < ms.min_query_size:
        raise Refused(peer, f"query below minimum size ({ms.min_query_size})")
    if query_size > node.max_query_size:
        raise Refused(peer, f"query above maximum size ({node.max_query_size})")
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
