"""Support continues while a record is checked (疑义校核; notice 四(五)), and which
records conflict.

The rule, one step applied to a round's decisions after the steps of
eligibility.md (:func:`hold_for_disputes`):

    While a dispute about a parent's record is open, a child whose decision
    would be ``EXIT`` (or a downgrade) because of that record gets ``REVIEW``
    instead, with the reason "疑义校核中" and the dispute id. Once the dispute
    is answered, the next round decides as usual.

    -- issue 15; eligibility.md, "Missing evidence never causes an exit":
       "While the data are being checked, support continues (section 四(五):
       校核期间...应照常办理)."

"Because of that record": the dispute names the child or one of its parents
(the record is one of theirs) and the decision is an ``EXIT`` that rests on
records, that is every ``EXIT`` but the one for turning 18 (which rests on
the birth date alone), or a downgrade: a supported orphan now judged de facto
unsupported. Nothing else changes: a candidate's ``NOT_ELIGIBLE`` withholds
no support, and ``CONTINUE``, ``ENROL`` and ``REVIEW`` stand.

:func:`conflicting_records` finds the records of eligibility.md's conflicts
(a current G record and a custody record in force for the same person), for
``xmatch dispute file --conflicts``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from coordinator.eligibility import ChildDecision
from coordinator.reasons import reason
from coordinator.records import Category, Circumstance, Decision, EvidenceRow, Status

__all__ = [
    "CUSTODY",
    "GONE",
    "OpenDispute",
    "conflicting_records",
    "hold_for_disputes",
    "is_downgrade",
    "rests_on_records",
]

GONE = frozenset({Circumstance.DEAD, Circumstance.MISSING})
CUSTODY = frozenset(
    {Circumstance.IMPRISONED, Circumstance.DRUG_REHAB, Circumstance.OTHER_RESTRICTION}
)


@dataclass(frozen=True)
class OpenDispute:
    """An open dispute, as the rule and the report need it."""

    dispute_id: str
    person_id: str
    #: ``node/match_set`` of the disputed record
    source: str
    #: the day it was filed
    filed_on: date
    reason: str

    def age_days(self, today: date) -> int:
        """Days since filing (0 on the day itself)."""
        return max(0, (today - self.filed_on).days)


def rests_on_records(item: ChildDecision) -> bool:
    """An ``EXIT`` other than the one for turning 18 (step 1 rests on the birth date)."""
    return item.decision is Decision.EXIT and all(r.key != "adult" for r in item.reasons)


def is_downgrade(item: ChildDecision) -> bool:
    """A supported orphan now de facto unsupported (``RECLASSIFY`` orphan -> de_facto)."""
    return (
        item.decision is Decision.RECLASSIFY
        and item.child.status is Status.SUPPORTED
        and item.child.category is Category.ORPHAN
        and item.category is Category.DE_FACTO
    )


def _held(item: ChildDecision, dispute: OpenDispute) -> ChildDecision:
    """``item`` as ``REVIEW`` "疑义校核中": support continues, its own reasons kept."""
    kept = tuple(r for r in item.reasons if r.key != "stops_from")
    why = reason("dispute_open", dispute=dispute.dispute_id, source=dispute.source)
    return item._replace(
        decision=Decision.REVIEW, category=None, reasons=(why, *kept), stops_from=None
    )


def hold_for_disputes(
    decisions: Sequence[ChildDecision], disputes: Iterable[OpenDispute]
) -> list[ChildDecision]:
    """The decisions with every exit or downgrade held while a dispute on it is open.

    A decision is held when it is an ``EXIT`` that rests on records
    (:func:`rests_on_records`) or a downgrade (:func:`is_downgrade`), and an
    open dispute names the child or a parent; the oldest such dispute is the
    one named. Every other decision is returned as it is.
    """
    by_person: dict[str, OpenDispute] = {}
    for dispute in sorted(disputes, key=lambda d: (d.filed_on, d.dispute_id)):
        by_person.setdefault(dispute.person_id, dispute)
    if not by_person:
        return list(decisions)
    out: list[ChildDecision] = []
    for item in decisions:
        if rests_on_records(item) or is_downgrade(item):
            child = item.child
            people = (child.child_id, child.father_id, child.mother_id)
            found = [by_person[p] for p in people if p is not None and p in by_person]
            if found:
                oldest = min(found, key=lambda d: (d.filed_on, d.dispute_id))
                out.append(_held(item, oldest))
                continue
        out.append(item)
    return out


def _gone_current(row: EvidenceRow, on: date) -> bool:
    """A G record that counts on ``on``: from its start, until an end on or before it."""
    if row.circumstance not in GONE:
        return False
    if row.start_date is not None and row.start_date > on:
        return False
    return row.end_date is None or row.end_date > on


def _custody_in_force(row: EvidenceRow, on: date) -> bool:
    """eligibility.md, "Conflicts": start empty or on or before ``on``, end empty or after."""
    if row.circumstance not in CUSTODY:
        return False
    started = row.start_date is None or row.start_date <= on
    return started and (row.end_date is None or row.end_date > on)


def conflicting_records(
    evidence: Mapping[str, Sequence[EvidenceRow]], people: Iterable[str], *, on: date
) -> dict[str, tuple[EvidenceRow, ...]]:
    """For each of ``people`` (the roster's parents) with a conflict on ``on``: the
    records in it, a current G record and a custody record in force (eligibility.md,
    "Conflicts"), each a record some provider should check."""
    found: dict[str, tuple[EvidenceRow, ...]] = {}
    for person in people:
        rows = evidence.get(person, ())
        gone = [r for r in rows if _gone_current(r, on)]
        custody = [r for r in rows if _custody_in_force(r, on)]
        if gone and custody:
            found[person] = (*gone, *custody)
    return found
