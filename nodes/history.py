"""Rebuilding a node's probing limits from its own protocol log at startup.

:class:`nodes.limits.QueryBudget` and :class:`nodes.limits.ReplayGuard` live
in memory. Without this module a restart would give every requester a fresh
budget and forget every round id served. At startup the node therefore reads
its protocol log (the file it has just opened for appending, whose tail
:meth:`audit.log.AuditLog.open` has verified) with the audit package's parser
(:func:`audit.verify.parse_line`) and restores both from the entries of rounds
that passed authorization (:func:`passed_authorization`): ``round_started``,
``round_finished``, and ``round_failed`` with ``authorized`` true. A
``round_failed`` without the field (older logs) counts only through the
``round_started`` of its pair, and a refusal never counts: refusals and
failures before authorization carry what the peer *claimed*, so counting them
would let any member burn another's budget or flush the replay memory.

1. **Replay memory**: the (round id, match set) pair of each such entry, in log
   order (the last ``replay_memory`` pairs stay), as the live
   :func:`nodes.authorization.authorize` remembers a pair only once it has got that
   far.
2. **Budgets**: one round used, at the time of its first such entry, for each
   pair. Only entries within the match set's budget period count; sets no
   longer configured are skipped.

A ``round_refused`` entry with the placeholder round id
(:data:`audit.format.UNKNOWN_ROUND_ID`) and match set ``-`` is a call refused
before it had a round; any other entry under that id is counted like the rest
(:class:`psi.context.RoundContext` refuses the all-zero id, so only an older or
forged log has one, and ``audit reconcile`` reports it).

Wall-clock timestamps of the log are turned into ages relative to ``now``; a
timestamp in the future (a clock set back) counts as now.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from audit.format import UNKNOWN_ROUND_ID
from audit.verify import parse_line
from nodes.config import NodeConfig
from nodes.limits import QueryBudget, ReplayGuard
from psi.errors import InputError, ProtocolError

__all__ = ["Restored", "RoundEntry", "passed_authorization", "read_round_entries", "restore_limits"]

_ROUND_EVENTS = frozenset({"round_started", "round_finished", "round_failed", "round_refused"})
# Cheap pre-filter: only these lines are parsed.
_MARKER = b'"event":"round_'


@dataclass(frozen=True)
class RoundEntry:
    """The fields of one round entry that the limits need."""

    event: str
    ts: _dt.datetime
    round_id: str
    match_set: str
    requester: str
    purpose: str
    authorized: bool | None


@dataclass(frozen=True)
class Restored:
    """What :func:`restore_limits` put back (for the startup line and tests)."""

    replay_pairs: int
    budget_rounds: int


def read_round_entries(path: Path) -> Iterator[RoundEntry]:
    """The round entries of the protocol log at ``path``, in log order.

    Raises:
        InputError: the log cannot be read.
        ProtocolError: a round entry is malformed (the message names its line;
            run ``xmatch audit verify`` on the log).
    """
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"protocol log {path}: cannot read ({exc.strerror})") from exc
    with fh:
        for number, raw in enumerate(fh, start=1):
            if _MARKER not in raw or not raw.endswith(b"\n"):
                continue
            try:
                entry = parse_line(raw[:-1], line=number)
            except ProtocolError as exc:
                raise ProtocolError(
                    f"protocol log {path}: {exc}; run `xmatch audit verify` on it"
                ) from None
            if entry.event not in _ROUND_EVENTS:
                continue
            f = entry.fields
            authorized = f.get("authorized")
            yield RoundEntry(
                event=entry.event,
                ts=entry.ts,
                round_id=str(f.get("round_id", UNKNOWN_ROUND_ID)),
                match_set=str(f.get("match_set", "-")),
                requester=str(f.get("requester", "-")),
                purpose=str(f.get("purpose", "-")),
                authorized=authorized if isinstance(authorized, bool) else None,
            )


def passed_authorization(entry: RoundEntry) -> bool:
    """Whether ``entry`` records a round that passed authorization (module docstring)."""
    if entry.event in ("round_started", "round_finished"):
        return True
    return entry.event == "round_failed" and entry.authorized is True


def restore_limits(
    config: NodeConfig,
    entries: Iterable[RoundEntry],
    *,
    budget: QueryBudget,
    replay: ReplayGuard,
    now: _dt.datetime,
) -> Restored:
    """Put the rounds of ``entries`` back into ``budget`` and ``replay`` (module docstring).

    ``now`` is an aware datetime (the node's wall clock).
    """
    pairs = 0
    used: dict[tuple[str, str], RoundEntry] = {}  # (round id, match set) -> first use
    for e in entries:
        # Refusals (the placeholder ones too) never pass; a round id, even the
        # placeholder, that did pass is counted.
        if not passed_authorization(e) or e.match_set == "-":
            continue
        try:
            round_id = bytes.fromhex(e.round_id)
        except ValueError:
            continue
        # (1)
        replay.remember(round_id, e.match_set)
        pairs += 1
        # (2)
        used.setdefault((e.round_id, e.match_set), e)
    ages: dict[tuple[str, str, str], list[float]] = {}
    for e in used.values():
        ages.setdefault((e.match_set, e.requester, e.purpose), []).append(
            (now - e.ts).total_seconds()
        )
    rounds = 0
    for (match_set, requester, purpose), values in ages.items():
        ms = config.match_set(match_set)
        if ms is None:
            continue
        recent = [a for a in values if a < ms.budget.seconds]
        budget.restore(
            match_set=match_set,
            requester=requester,
            purpose=purpose,
            budget=ms.budget,
            ages=recent,
        )
        rounds += len(recent)
    return Restored(replay_pairs=pairs, budget_rounds=rounds)
