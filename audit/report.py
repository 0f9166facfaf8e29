"""Who queried what, when and for which purpose; and the patterns of a probe.

Built from the round events of verified logs. A round that appears in several logs
(the coordinator's and the node's) counts once; the responder's own entry wins,
since the node is the party that enforces minimum sizes and budgets.

Probing flags (``docs/threat-model.md``, "Probing"):

- **tiny**: a query smaller than ``min_query_size`` (default 100 identities).
  One flag per requester × purpose × match set, listing the rounds.
- **repeated**: at least ``repeat_count`` (default 4) queries from one requester to
  one match set within ``repeat_window`` (default 24 hours) whose sizes are within
  ``repeat_tolerance`` (default 1%) of each other: the signature of a padded roster
  re-sent with one identity swapped each time.
- **burst**: more than ``hourly_budget`` (default 30) rounds by one requester for
  one purpose within any 60 minutes.
"""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from audit import format as fmt
from audit.verify import Entry, LogVerification

MIN_QUERY_SIZE = 100
REPEAT_COUNT = 4
REPEAT_TOLERANCE = 0.01
REPEAT_WINDOW = _dt.timedelta(hours=24)
HOURLY_BUDGET = 30
_HOUR = _dt.timedelta(hours=1)


@dataclass(frozen=True)
class Query:
    """One round as a query: who asked whom, about which set, how big, with what result."""

    round_id: str
    ts: _dt.datetime
    requester: str
    responder: str
    purpose: str
    match_set: str
    protocol: str
    query_size: int | None
    outcome: str
    reason: str | None


@dataclass(frozen=True)
class UsageRow:
    """Totals per requester × purpose × match set (``responder/match_set``)."""

    requester: str
    purpose: str
    match_set: str
    rounds: int
    total_query_size: int
    refusals: int
    failures: int
    first: _dt.datetime
    last: _dt.datetime


@dataclass(frozen=True)
class Flag:
    """A probing pattern, with the rounds that show it."""

    kind: str
    requester: str
    purpose: str
    match_set: str
    message: str
    round_ids: tuple[str, ...]


@dataclass(frozen=True)
class AuditReport:
    """Usage rows and probing flags."""

    rows: tuple[UsageRow, ...]
    flags: tuple[Flag, ...]
    queries: int

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (datetimes as RFC 3339 strings)."""

        def clean(obj: object) -> object:
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return [clean(v) for v in obj]
            if isinstance(obj, _dt.datetime):
                return obj.isoformat().replace("+00:00", "Z")
            return obj

        return {
            "queries": self.queries,
            "usage": [clean(asdict(row)) for row in self.rows],
            "flags": [clean(asdict(flag)) for flag in self.flags],
        }


def _text(entry: Entry, key: str) -> str:
    value = entry.fields.get(key)
    return value if isinstance(value, str) else ""


def collect_queries(logs: Sequence[LogVerification]) -> list[Query]:
    """The terminal round events of all logs, one per round, oldest first."""
    chosen: dict[tuple[str, str, str], tuple[bool, Query]] = {}
    for log in logs:
        for entry in log.entries:
            if entry.event not in fmt.TERMINAL_EVENTS:
                continue
            size = entry.fields.get("query_size")
            outcome = {fmt.ROUND_FAILED: "failed", fmt.ROUND_REFUSED: "refused"}.get(
                entry.event, "ok"
            )
            query = Query(
                round_id=_text(entry, "round_id"),
                ts=entry.ts,
                requester=_text(entry, "requester"),
                responder=_text(entry, "responder"),
                purpose=_text(entry, "purpose"),
                match_set=_text(entry, "match_set"),
                protocol=_text(entry, "protocol"),
                query_size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                outcome=outcome,
                reason=_text(entry, "reason") or None,
            )
            key = (query.round_id, query.responder, query.match_set)
            own = entry.party == query.responder
            if key not in chosen or (own and not chosen[key][0]):
                chosen[key] = (own, query)
    return sorted((q for _, q in chosen.values()), key=lambda q: q.ts)


def _usage(queries: Sequence[Query]) -> tuple[UsageRow, ...]:
    groups: dict[tuple[str, str, str], list[Query]] = defaultdict(list)
    for q in queries:
        groups[(q.requester, q.purpose, f"{q.responder}/{q.match_set}")].append(q)
    return tuple(
        UsageRow(
            requester=requester,
            purpose=purpose,
            match_set=match_set,
            rounds=len(qs),
            total_query_size=sum(q.query_size or 0 for q in qs),
            refusals=sum(q.outcome == "refused" for q in qs),
            failures=sum(q.outcome == "failed" for q in qs),
            first=qs[0].ts,
            last=qs[-1].ts,
        )
        for (requester, purpose, match_set), qs in sorted(groups.items())
    )


def tiny_queries(queries: Sequence[Query], *, min_query_size: int = MIN_QUERY_SIZE) -> list[Flag]:
    """Flag queries smaller than ``min_query_size``, one flag per requester/purpose/set."""
    groups: dict[tuple[str, str, str], list[Query]] = defaultdict(list)
    for q in queries:
        if q.query_size is not None and q.query_size < min_query_size:
            groups[(q.requester, q.purpose, f"{q.responder}/{q.match_set}")].append(q)
    return [
        Flag(
            kind="tiny",
            requester=requester,
            purpose=purpose,
            match_set=match_set,
            message=(
                f"{len(qs)} quer{'y' if len(qs) == 1 else 'ies'} below {min_query_size} identities "
                f"(smallest {min(q.query_size or 0 for q in qs)})"
            ),
            round_ids=tuple(q.round_id for q in qs),
        )
        for (requester, purpose, match_set), qs in sorted(groups.items())
    ]


def repeated_queries(
    queries: Sequence[Query],
    *,
    repeat_count: int = REPEAT_COUNT,
    repeat_tolerance: float = REPEAT_TOLERANCE,
    repeat_window: _dt.timedelta = REPEAT_WINDOW,
) -> list[Flag]:
    """Flag ``repeat_count``+ near-identical-size queries to one set within ``repeat_window``."""
    groups: dict[tuple[str, str, str], list[Query]] = defaultdict(list)
    for q in queries:
        if q.query_size is not None:
            groups[(q.requester, q.responder, q.match_set)].append(q)
    flags: list[Flag] = []
    for (requester, responder, match_set), qs in sorted(groups.items()):
        used: set[int] = set()
        for i, first in enumerate(qs):
            if i in used:
                continue
            size = first.query_size or 0
            cluster = [
                j
                for j in range(i, len(qs))
                if j not in used
                and qs[j].ts - first.ts <= repeat_window
                and abs((qs[j].query_size or 0) - size) <= repeat_tolerance * max(size, 1)
            ]
            if len(cluster) >= repeat_count:
                used.update(cluster)
                flags.append(
                    Flag(
                        kind="repeated",
                        requester=requester,
                        purpose=", ".join(sorted({qs[j].purpose for j in cluster})),
                        match_set=f"{responder}/{match_set}",
                        message=(
                            f"{len(cluster)} queries of about {size} identities within "
                            f"{repeat_window} (sizes within {repeat_tolerance:.0%})"
                        ),
                        round_ids=tuple(qs[j].round_id for j in cluster),
                    )
                )
    return flags


def bursts(queries: Sequence[Query], *, hourly_budget: int = HOURLY_BUDGET) -> list[Flag]:
    """Flag more than ``hourly_budget`` rounds per requester and purpose within 60 minutes."""
    groups: dict[tuple[str, str], list[Query]] = defaultdict(list)
    for q in queries:
        groups[(q.requester, q.purpose)].append(q)
    flags: list[Flag] = []
    for (requester, purpose), qs in sorted(groups.items()):
        start = 0
        best: tuple[int, int] | None = None
        for end in range(len(qs)):
            while qs[end].ts - qs[start].ts >= _HOUR:
                start += 1
            count = end - start + 1
            if count > hourly_budget and (best is None or count > best[1] - best[0] + 1):
                best = (start, end)
        if best is not None:
            window = qs[best[0] : best[1] + 1]
            flags.append(
                Flag(
                    kind="burst",
                    requester=requester,
                    purpose=purpose,
                    match_set=", ".join(sorted({f"{q.responder}/{q.match_set}" for q in window})),
                    message=(
                        f"{len(window)} rounds within one hour from {window[0].ts.isoformat()} "
                        f"(budget {hourly_budget})"
                    ),
                    round_ids=tuple(q.round_id for q in window),
                )
            )
    return flags


def build_report(
    logs: Sequence[LogVerification],
    *,
    min_query_size: int = MIN_QUERY_SIZE,
    repeat_count: int = REPEAT_COUNT,
    repeat_tolerance: float = REPEAT_TOLERANCE,
    repeat_window: _dt.timedelta = REPEAT_WINDOW,
    hourly_budget: int = HOURLY_BUDGET,
) -> AuditReport:
    """Usage per requester × purpose × match set, and every probing flag (see module doc)."""
    queries = collect_queries(logs)
    flags = [
        *tiny_queries(queries, min_query_size=min_query_size),
        *repeated_queries(
            queries,
            repeat_count=repeat_count,
            repeat_tolerance=repeat_tolerance,
            repeat_window=repeat_window,
        ),
        *bursts(queries, hourly_budget=hourly_budget),
    ]
    return AuditReport(rows=_usage(queries), flags=tuple(flags), queries=len(queries))
