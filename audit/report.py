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
- **oversized**: a query more than ``oversize_factor`` (default 3) times the
  requester's usual size for that set (the median of its earlier completed
  rounds there), or, without such rounds, above ``large_query_size`` (default
  100,000, the node's default ``max_query_size``); and every round a node
  refused as above its maximum size.
- **creeping**: at least ``creep_rounds`` (default 5) consecutive queries to one
  set, each larger than the one before, within ``creep_window`` (default 7
  days), growing by at least ``creep_total`` (default 10%) in all.
- **drip**: more than ``drip_count`` (default 14) queries of at most
  ``small_size`` (default 1,000) identities from one requester to one set within
  any ``drip_window`` (default 7 days): small probes spread over days.
- **refused-without-round**: the refusals a node logged before any round
  existed (placeholder round id), grouped by certificate name, role and reason;
  **impersonation** for the groups whose certificate is not a coordinator's
  (a node certificate posing as a coordinator).

``docs/audit.md`` gives each rule and threshold in words.
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
OVERSIZE_FACTOR = 3.0
LARGE_QUERY_SIZE = 100_000
CREEP_ROUNDS = 5
CREEP_TOTAL = 0.10
CREEP_WINDOW = _dt.timedelta(days=7)
SMALL_SIZE = 1_000
DRIP_COUNT = 14
DRIP_WINDOW = _dt.timedelta(days=7)
_HOUR = _dt.timedelta(hours=1)
_COORDINATOR = "coordinator"


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
    #: the certificate's role where the node logged it (refusals); "" otherwise
    role: str = ""
    #: identities the requester sent, where the node logged them (a round that ended
    #: early); ``None`` otherwise
    sent: int | None = None

    @property
    def smallest_size(self) -> int | None:
        """The size the node saw: the announced one, or fewer if fewer were sent.

        A node answers the first chunks before the round ends, so a round announced
        at 100 that sends one identity and cancels was a query of one.
        """
        if self.sent is not None and self.query_size is not None:
            return min(self.sent, self.query_size)
        return self.query_size

    @property
    def without_round(self) -> bool:
        """A node's refusal before any round existed (placeholder round id)."""
        return self.round_id == fmt.UNKNOWN_ROUND_ID


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
            sent = entry.fields.get("items")
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
                role=_text(entry, "role"),
                sent=sent if isinstance(sent, int) and not isinstance(sent, bool) else None,
            )
            key = (query.round_id, query.responder, query.match_set)
            if query.without_round:  # each such refusal is its own event
                key = (f"{entry.party}:{entry.line}", query.responder, query.match_set)
            own = entry.party == query.responder
            # the responder's own entry wins, and its last one: an offline request
            # answered again after a failed attempt ends its rounds twice (docs/offline.md)
            if key not in chosen or own:
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
        if q.without_round:
            continue  # no query was made: refused_without_round lists these
        size = q.smallest_size
        if size is not None and size < min_query_size:
            groups[(q.requester, q.purpose, f"{q.responder}/{q.match_set}")].append(q)
    return [
        Flag(
            kind="tiny",
            requester=requester,
            purpose=purpose,
            match_set=match_set,
            message=(
                f"{len(qs)} quer{'y' if len(qs) == 1 else 'ies'} below {min_query_size} identities "
                f"(smallest {min(q.smallest_size or 0 for q in qs)})"
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
    flags: list[Flag] = []
    for (requester, responder, match_set), qs in sorted(_series(queries).items()):
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
        if not q.without_round:
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


def _series(queries: Sequence[Query]) -> dict[tuple[str, str, str], list[Query]]:
    """The queries of real rounds with a known size, per (requester, responder, match set)."""
    groups: dict[tuple[str, str, str], list[Query]] = defaultdict(list)
    for q in queries:
        if q.query_size is not None and not q.without_round:
            groups[(q.requester, q.responder, q.match_set)].append(q)
    return groups


def _median(values: Sequence[int]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _flag(kind: str, qs: Sequence[Query], message: str, *, requester: str | None = None) -> Flag:
    return Flag(
        kind=kind,
        requester=requester if requester is not None else qs[0].requester,
        purpose=", ".join(sorted({q.purpose for q in qs})),
        match_set=", ".join(sorted({f"{q.responder}/{q.match_set}" for q in qs})),
        message=message,
        round_ids=tuple(q.round_id for q in qs),
    )


def oversized_queries(
    queries: Sequence[Query],
    *,
    oversize_factor: float = OVERSIZE_FACTOR,
    large_query_size: int = LARGE_QUERY_SIZE,
) -> list[Flag]:
    """Flag queries far above the requester's usual size for the set (see module doc)."""
    flags: list[Flag] = []
    for qs in _series(queries).values():
        usual: list[int] = []  # sizes of the completed rounds so far
        for q in qs:
            size = q.query_size or 0
            above_max = q.outcome == "refused" and (q.reason or "").startswith(
                "query above maximum"
            )
            if above_max:
                why = f"refused by the node: {q.reason}"
            elif usual and size > oversize_factor * _median(usual):
                why = f"{oversize_factor:g}x above the usual {_median(usual):,.0f}"
            elif not usual and size > large_query_size:
                why = f"above {large_query_size:,} with no earlier round to compare"
            else:
                why = ""
            if why:
                flags.append(_flag("oversized", [q], f"query of {size:,} identities: {why}"))
            elif q.outcome == "ok":
                usual = [*usual[-9:], size]  # the last ten completed rounds
    return flags


def creeping_sizes(
    queries: Sequence[Query],
    *,
    creep_rounds: int = CREEP_ROUNDS,
    creep_total: float = CREEP_TOTAL,
    creep_window: _dt.timedelta = CREEP_WINDOW,
) -> list[Flag]:
    """Flag runs of steadily growing queries to one set (see module doc)."""
    flags: list[Flag] = []
    for qs in _series(queries).values():
        run: list[Query] = []
        for q in [*qs, None]:
            grows = (
                q is not None
                and bool(run)
                and (q.query_size or 0) > (run[-1].query_size or 0)
                and q.ts - run[0].ts <= creep_window
            )
            if grows:
                assert q is not None
                run.append(q)
                continue
            first, last = (run[0].query_size or 0, run[-1].query_size or 0) if run else (0, 0)
            if len(run) >= creep_rounds and last >= (1 + creep_total) * max(first, 1):
                flags.append(
                    _flag(
                        "creeping",
                        run,
                        f"{len(run)} queries growing from {first:,} to {last:,} identities "
                        f"within {run[-1].ts - run[0].ts}",
                    )
                )
            run = [q] if q is not None else []
    return flags


def drips(
    queries: Sequence[Query],
    *,
    small_size: int = SMALL_SIZE,
    drip_count: int = DRIP_COUNT,
    drip_window: _dt.timedelta = DRIP_WINDOW,
) -> list[Flag]:
    """Flag many small queries to one set spread over days (see module doc)."""
    flags: list[Flag] = []
    for qs in _series(queries).values():
        small = [q for q in qs if (q.query_size or 0) <= small_size]
        start = 0
        best: tuple[int, int] | None = None
        for end in range(len(small)):
            while small[end].ts - small[start].ts > drip_window:
                start += 1
            count = end - start + 1
            if count > drip_count and (best is None or count > best[1] - best[0] + 1):
                best = (start, end)
        if best is not None:
            window = small[best[0] : best[1] + 1]
            flags.append(
                _flag(
                    "drip",
                    window,
                    f"{len(window)} queries of at most {small_size:,} identities within "
                    f"{drip_window} (at most {drip_count})",
                )
            )
    return flags


def refused_without_round(queries: Sequence[Query]) -> list[Flag]:
    """Refusals before any round, per certificate name, role and reason (see module doc)."""
    groups: dict[tuple[str, str, str], list[Query]] = defaultdict(list)
    for q in queries:
        if q.without_round:
            groups[(q.requester, q.role, q.reason or "-")].append(q)
    flags: list[Flag] = []
    for (requester, role, reason), qs in sorted(groups.items()):
        posing = bool(role) and role != _COORDINATOR
        who = f"{role} certificate" if role else "caller"
        message = (
            f"{len(qs)} refusal{'' if len(qs) == 1 else 's'} before any round "
            f"({who}, {', '.join(sorted({q.responder for q in qs}))}): {reason}"
        )
        if posing:
            message = f"a {role} certificate tried to run rounds as a coordinator; " + message
        flags.append(
            _flag(
                "impersonation" if posing else "refused-without-round",
                qs,
                message,
                requester=requester or "-",
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
    oversize_factor: float = OVERSIZE_FACTOR,
    large_query_size: int = LARGE_QUERY_SIZE,
    creep_rounds: int = CREEP_ROUNDS,
    creep_total: float = CREEP_TOTAL,
    creep_window: _dt.timedelta = CREEP_WINDOW,
    small_size: int = SMALL_SIZE,
    drip_count: int = DRIP_COUNT,
    drip_window: _dt.timedelta = DRIP_WINDOW,
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
        *oversized_queries(
            queries, oversize_factor=oversize_factor, large_query_size=large_query_size
        ),
        *creeping_sizes(
            queries, creep_rounds=creep_rounds, creep_total=creep_total, creep_window=creep_window
        ),
        *drips(queries, small_size=small_size, drip_count=drip_count, drip_window=drip_window),
        *refused_without_round(queries),
    ]
    return AuditReport(rows=_usage(queries), flags=tuple(flags), queries=len(queries))
