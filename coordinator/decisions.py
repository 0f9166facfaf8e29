"""A round's decisions: evidence indexed once, every child decided, the service lists, JSON.

The rules themselves live in :mod:`coordinator.eligibility` (one function per
step of eligibility.md); this module applies them to a whole roster and holds
what a round reports beside the decisions: service coverage gaps and needs
(section 四(一)), overdue checks and the decisions.json document.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from coordinator.eligibility import COVERED, ChildDecision
from coordinator.judgements import decide_children
from coordinator.reasons import Lang, Renderer
from coordinator.records import (
    Circumstance,
    Decision,
    EvidenceRow,
    Roster,
    RosterRow,
    Status,
    gc_paused,
)

C = Circumstance

#: JSON text of a string, as ``json.dumps(value, ensure_ascii=False)`` writes it (C speed)
_string: Callable[[str], str] = json.encoder.encode_basestring
#: one encoder for every entry (``json.dumps`` with an option builds a new one per call)
_ENTRY = json.JSONEncoder(ensure_ascii=False).encode


def _nullable(value: str | None) -> str:
    return "null" if value is None else _string(value)


@dataclass(frozen=True)
class EncodedEntries:
    """decisions.json's ``decisions``, each entry already JSON text (one line each)."""

    lines: list[str]


def decisions_text(document: Mapping[str, object]) -> str:
    """decisions.json as text: one decision per line (readable, and C-speed ``json.dumps``).

    ``decisions`` may be a list of entries or :class:`EncodedEntries`; both give the
    same text.
    """
    fields = []
    for key, value in document.items():
        if key == "decisions" and isinstance(value, list | EncodedEntries):
            lines = value.lines if isinstance(value, EncodedEntries) else [_ENTRY(e) for e in value]
            rows = ",\n  ".join(lines)
            body = f"[\n  {rows}\n ]" if lines else "[]"
        else:
            body = json.dumps(value, ensure_ascii=False)
        fields.append(f" {json.dumps(key)}: {body}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def _order(row: EvidenceRow) -> tuple[str, date, date, str, int, int]:
    return (
        row.circumstance.value,
        row.start_date or date.min,
        row.end_date or date.max,
        row.source,
        row.disability_category or 0,
        row.disability_grade or 0,
    )


def index_evidence(
    rows: Iterable[EvidenceRow],
) -> tuple[dict[str, tuple[EvidenceRow, ...]], dict[str, set[str]]]:
    """Index evidence once: circumstance records by person, and ``SERVICE`` matches by source.

    Each person's records are sorted, so that nothing depends on the file's row order.
    """
    people: dict[str, list[EvidenceRow]] = {}
    services: dict[str, set[str]] = {}
    for row in rows:
        if row.circumstance is C.SERVICE:
            services.setdefault(row.source, set()).add(row.person_id)
        else:
            people.setdefault(row.person_id, []).append(row)
    index = {
        person: tuple(sorted(found, key=_order)) if len(found) > 1 else (found[0],)
        for person, found in people.items()
    }
    return index, services


def child_label(child: RosterRow) -> str:
    """How lists name a child: the ID, or name and birth date for a child without one."""
    if child.child_id is not None:
        return child.child_id
    birth = child.child_birth_date.isoformat() if child.child_birth_date else "?"
    return f"{child.child_name} {birth}"


@dataclass(frozen=True)
class RoundDecisions:
    """Every roster row's decision for one evaluation date, plus the round's lists."""

    as_of: date
    failed_sources: tuple[str, ...]
    decisions: list[ChildDecision]
    #: service-coverage set -> IDs of covered children it did not match
    coverage_gaps: dict[str, list[str]] = field(default_factory=dict)
    #: every service-coverage set of the round (declared or seen), failed ones included
    service_sources: tuple[str, ...] = ()
    lang: Lang = "zh"
    #: service-needs set -> IDs of covered children it matched (our extension of decisions.json)
    service_needs: dict[str, list[str]] = field(default_factory=dict)
    #: every service-needs set of the round (declared), failed ones included
    service_need_sources: tuple[str, ...] = ()
    #: ``node/set`` -> the name people know it by (coordinator.names); Chinese text only
    source_names: Mapping[str, str] = field(default_factory=dict)
    #: id of a decision -> (the decision, its reason texts in :attr:`lang`)
    _texts: dict[int, tuple[ChildDecision, list[str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: renders each distinct reason of the round once
    _renderer: list[Renderer] = field(default_factory=list, init=False, repr=False, compare=False)

    def reason_texts(self, item: ChildDecision) -> list[str]:
        """The written reasons of ``item`` in :attr:`lang`, rendered once for the round.

        decisions.json and the report show the same texts; do not modify the list.
        """
        cached = self._texts.get(id(item))
        if cached is not None and cached[0] is item:
            return cached[1]
        if not self._renderer:
            self._renderer.append(Renderer(self.lang, self.source_names))
        # the same texts as item.reason_texts(self.lang, self.source_names)
        texts = self._renderer[0].texts(item.reasons)
        self._texts[id(item)] = (item, texts)
        return texts

    def render_texts(self) -> None:
        """Render every decision's reasons now (decisions.json, the report and the
        spreadsheet then find them ready)."""
        for item in self.decisions:
            self.reason_texts(item)

    @property
    def overdue_checks(self) -> list[str]:
        """Children whose periodic check is overdue (or never recorded), in roster order."""
        return [child_label(d.child) for d in self.decisions if d.overdue]

    def counts(self) -> Counter[Decision]:
        """How many children got each decision."""
        return Counter(d.decision for d in self.decisions)

    def _entries(self) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        for item in self.decisions:
            child = item.child
            entry: dict[str, object] = {"child_id": child.child_id, "child_name": child.child_name}
            if child.child_id is None:
                birth = child.child_birth_date
                entry["child_birth_date"] = birth.isoformat() if birth else None
            entry["decision"] = item.decision.value
            entry["category"] = item.category.value if item.category else None
            entry["reasons"] = self.reason_texts(item)
            due = item.next_check_due
            entry["next_check_due"] = due.isoformat() if due else None
            entries.append(entry)
        return entries

    def _entry_lines(self) -> list[str]:
        """The entries of :meth:`_entries`, each as the JSON text ``_ENTRY`` makes of it."""
        #: id of a tuple of reasons -> (the tuple, kept alive; its texts as a JSON list)
        lists: dict[int, tuple[object, str]] = {}
        days: dict[date, str] = {}

        def day(value: date | None) -> str:
            if value is None:
                return "null"
            found = days.get(value)
            if found is None:
                found = days[value] = f'"{value.isoformat()}"'
            return found

        lines: list[str] = []
        for item in self.decisions:
            child = item.child
            found = lists.get(id(item.reasons))
            if found is None or found[0] is not item.reasons:
                texts = ", ".join([_string(t) for t in self.reason_texts(item)])
                found = lists[id(item.reasons)] = (item.reasons, f"[{texts}]")
            birth = ""
            if child.child_id is None:
                birth = f'"child_birth_date": {day(child.child_birth_date)}, '
            lines.append(
                f'{{"child_id": {_nullable(child.child_id)}, '
                f'"child_name": {_nullable(child.child_name)}, {birth}'
                f'"decision": "{item.decision.value}", '
                f'"category": {_nullable(item.category.value if item.category else None)}, '
                f'"reasons": {found[1]}, "next_check_due": {day(item.next_check_due)}}}'
            )
        return lines

    def to_json(self, round_id: str | None = None, *, encoded: bool = False) -> dict[str, object]:
        """The decisions.json document (data-contracts.md), reasons in :attr:`lang`.

        ``encoded``: the ``decisions`` entries come as :class:`EncodedEntries`, each
        already JSON text (what :func:`decisions_text` would make of the dict), with
        every distinct list of reasons encoded once: the round's fast path.
        """
        entries: list[dict[str, object]] | EncodedEntries
        entries = EncodedEntries(self._entry_lines()) if encoded else self._entries()
        return {
            "as_of": self.as_of.isoformat(),
            "round_id": round_id,
            "failed_sources": list(self.failed_sources),
            "decisions": entries,
            "overdue_checks": self.overdue_checks,
            "coverage_gaps": {source: list(ids) for source, ids in self.coverage_gaps.items()},
            "service_needs": {source: list(ids) for source, ids in self.service_needs.items()},
        }


def covered_children(decisions: Sequence[ChildDecision]) -> list[str]:
    """IDs of the covered children, in roster order (section 四(一)).

    Covered: a supported child whose decision keeps support (CONTINUE,
    RECLASSIFY, or REVIEW, during which support continues) and who has an ID
    (a set can only match identity numbers).
    """
    return [
        d.child.child_id
        for d in decisions
        if d.child.status is Status.SUPPORTED
        and d.decision in COVERED
        and d.child.child_id is not None
    ]


def coverage_gaps(
    decisions: Sequence[ChildDecision],
    services: Mapping[str, set[str]],
    *,
    sources: Iterable[str],
    failed_sources: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Covered children that a service-coverage set did not match (section 四(一)).

    Covered: see :func:`covered_children`. A failed set gives no list: the
    absence of a match from it proves nothing. Gaps never change a decision.
    """
    failed = set(failed_sources)
    covered = covered_children(decisions)
    gaps: dict[str, list[str]] = {}
    for source in sorted(set(sources)):
        if source in failed:
            continue
        matched = services.get(source, set())
        gaps[source] = [child_id for child_id in covered if child_id not in matched]
    return gaps


def service_needs(
    decisions: Sequence[ChildDecision],
    services: Mapping[str, set[str]],
    *,
    sources: Iterable[str],
    failed_sources: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Covered children that a service-needs set matched (section 四(一)).

    A needs set (e.g. rehabilitation needs of children with disabilities) is
    the reverse of a coverage set: its match is the finding. Covered: as for
    gaps (:func:`covered_children`). A failed set gives no list, even when it
    delivered some matches before failing: the list would be incomplete.
    Needs never change a decision.
    """
    failed = set(failed_sources)
    covered = covered_children(decisions)
    needs: dict[str, list[str]] = {}
    for source in sorted(set(sources)):
        if source in failed:
            continue
        matched = services.get(source, set())
        needs[source] = [child_id for child_id in covered if child_id in matched]
    return needs


def evidence_failures(failed: Iterable[str], *, services: Iterable[str]) -> tuple[str, ...]:
    """The failed sources that are evidence datasets: ``failed`` less the service sets.

    Only these turn a missing category into ``REVIEW`` ("evidence unavailable").
    A set whose kind is unknown (the node never answered, so its capabilities
    were not read) counts as evidence: that is the cautious side.
    """
    known = set(services)
    return tuple(source for source in failed if source not in known)


@gc_paused()
def decide_all(
    roster: Roster | Sequence[RosterRow],
    evidence: Iterable[EvidenceRow],
    *,
    as_of: date,
    failed_sources: Iterable[str] = (),
    service_sources: Iterable[str] = (),
    service_need_sources: Iterable[str] = (),
    lang: Lang = "zh",
    source_names: Mapping[str, str] | None = None,
) -> RoundDecisions:
    """Decide every roster row (in roster order) from the round's evidence.

    ``service_sources`` declares service-coverage sets; a declared set with no
    match at all still yields gaps (every covered child). Sets seen in
    ``SERVICE`` evidence are included anyway, unless ``service_need_sources``
    names them: those report the covered children they matched (service
    needs) instead of the ones they did not. A failed service set only loses
    its own list: the decisions see only the failed evidence sets
    (:func:`evidence_failures`); ``failed_sources`` of the result keeps all.

    ``source_names`` (``node/set`` -> display name) names the sets in
    Chinese reasons; machine-readable fields keep ``node/set``.

    Raises:
        ValueError: a set is declared both as a coverage and as a needs set.
    """
    needs_declared = set(service_need_sources)
    both = needs_declared & set(service_sources)
    if both:
        raise ValueError(
            f"declared both as service coverage and service needs: {', '.join(sorted(both))}"
        )
    rows = roster.rows if isinstance(roster, Roster) else roster
    failed = tuple(sorted(set(failed_sources)))
    index, services = index_evidence(evidence)
    all_services = tuple(sorted((set(service_sources) | set(services)) - needs_declared))
    all_needs = tuple(sorted(needs_declared))
    # a service dataset is not an evidence dataset: its failure removes only its own list
    # (eligibility.md, "Service coverage checks"), so only failed evidence sets reach decide
    evidence_failed = evidence_failures(failed, services=(*all_services, *all_needs))
    # coordinator.judgements gives the decisions of eligibility.decide, child by child
    decisions = decide_children(rows, index, as_of=as_of, failed_sources=evidence_failed)
    gaps = coverage_gaps(decisions, services, sources=all_services, failed_sources=failed)
    needs = service_needs(decisions, services, sources=all_needs, failed_sources=failed)
    return RoundDecisions(
        as_of,
        failed,
        decisions,
        gaps,
        all_services,
        lang,
        service_needs=needs,
        service_need_sources=all_needs,
        source_names=dict(source_names or {}),
    )
