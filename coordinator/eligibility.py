"""The eligibility rules of ``eligibility.md``, one small function per rule.

Each rule is named in the spec's terms and returns its result together with
the reasons (:class:`coordinator.reasons.Reason`) that justify it, so that a
written reason cannot drift from the logic that produced it. Pure functions
over the typed records of :mod:`coordinator.records`: no I/O, no clock.

The decision for one child on the evaluation date D (:func:`decide`):

0. the child's own identity number is invalid: ``REVIEW`` (naming the column
   and the problem);
1. the child is 18 or older on D: ``EXIT`` (supported) / ``NOT_ELIGIBLE``;
2. the child's own ID has a current ``DEAD`` record: ``EXIT`` / ``NOT_ELIGIBLE``;
3. a conflict, or an unknown parent (unless a foundling): ``REVIEW``;
4. a category from the parents' current circumstances: ``ENROL`` /
   ``CONTINUE`` / ``RECLASSIFY``;
5. no category: ``REVIEW`` ("evidence unavailable") when any source failed,
   else ``EXIT`` (supported, naming what no longer holds) / ``NOT_ELIGIBLE``.
"""

from __future__ import annotations

import calendar
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Generic, NamedTuple, TypeVar

from coordinator.reasons import (
    DisabilityCategory,
    IdProblem,
    Lang,
    Month,
    Reason,
    RosterColumn,
    reason,
    render,
)
from coordinator.records import (
    Category,
    Circumstance,
    Decision,
    EvidenceRow,
    Role,
    Roster,
    RosterRow,
    Status,
    gc_paused,
)

C = Circumstance
T = TypeVar("T")

#: G: a parent who is gone
GONE = frozenset({C.DEAD, C.MISSING})
#: Q: a parent with a qualifying circumstance
QUALIFYING = frozenset(
    {
        C.SEVERE_DISABILITY,
        C.SEVERE_ILLNESS,
        C.IMPRISONED,
        C.DRUG_REHAB,
        C.OTHER_RESTRICTION,
        C.LOST_CONTACT,
        C.GUARDIANSHIP_REVOKED,
        C.DEPORTED,
    }
)
#: circumstances with a term; also the custody records of a conflict
CUSTODY = frozenset({C.IMPRISONED, C.DRUG_REHAB, C.OTHER_RESTRICTION})
#: section 四(三): at least two checks a year
TWICE_A_YEAR = frozenset({C.IMPRISONED, C.DRUG_REHAB, C.OTHER_RESTRICTION, C.LOST_CONTACT})
#: section 四(三): at least one check a year
ONCE_A_YEAR = frozenset({C.SEVERE_ILLNESS, C.SEVERE_DISABILITY, C.MISSING})

TERM_MONTHS = 6
CERTIFICATE_YEARS = 10
ADULT_AGE = 18
#: decisions under which a supported child is still covered (support continues while reviewed)
COVERED = frozenset({Decision.CONTINUE, Decision.RECLASSIFY, Decision.REVIEW})


class Group(StrEnum):
    """The group a parent is judged by (the strongest circumstance)."""

    GONE = "G"
    QUALIFYING = "Q"


class Ruling(NamedTuple, Generic[T]):
    """The result of one rule, with the reasons that justify it."""

    value: T
    reasons: tuple[Reason, ...] = ()


# --- dates -------------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 14)  # a round has few distinct dates and computes them again and again
def add_months(day: date, months: int) -> date:
    """The same day of the month ``months`` later, or that month's last day.

    31 August + 6 months = the last day of February.
    """
    index = day.year * 12 + day.month - 1 + months
    year, month0 = divmod(index, 12)
    last = calendar.monthrange(year, month0 + 1)[1]
    return date(year, month0 + 1, min(day.day, last))


@lru_cache(maxsize=1 << 14)
def add_years(day: date, years: int) -> date:
    """The same date ``years`` later; 29 February falls on 1 March in a common year."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return date(day.year + years, 3, 1)


def eighteenth_birthday(birth: date) -> date:
    """The 18th birthday (29 February → 1 March in a common year)."""
    return add_years(birth, ADULT_AGE)


@lru_cache(maxsize=1 << 14)  # children born on the same day get the same answer
def is_adult(birth: date, on: date) -> Ruling[bool]:
    """18 or older on ``on``: a person is 18 from the day *after* the 18th birthday."""
    birthday = eighteenth_birthday(birth)
    adult_from = birthday + timedelta(days=1)
    if on >= adult_from:
        return Ruling(True, (reason("adult", birthday=birthday, adult_from=adult_from),))
    return Ruling(False)


# --- one evidence record -----------------------------------------------------------------------


def certificate_expiry(row: EvidenceRow) -> date | None:
    """A disability certificate's expiry: its end date, else 10 years after issue.

    The expiry day itself is no longer valid.
    """
    if row.end_date is not None:
        return row.end_date
    if row.start_date is not None:
        return add_years(row.start_date, CERTIFICATE_YEARS)
    return None


def is_severe_disability(row: EvidenceRow) -> bool:
    """Grade 1 or 2 in any category, or grade 3 or 4 in category 5 (智力) or 6 (精神).

    An empty grade or category means the source filtered already: qualifying.
    """
    grade, kind = row.disability_grade, row.disability_category
    if grade is None or kind is None:
        return True
    return grade in (1, 2) or (grade in (3, 4) and kind in (5, 6))


def term_is_long_enough(row: EvidenceRow) -> bool:
    """A term (custody, rehabilitation, other restriction) of 6 months or more.

    An open term counts as long enough; so does one without a start date (the
    source applied the threshold).
    """
    if row.circumstance not in CUSTODY or row.start_date is None or row.end_date is None:
        return True
    return row.end_date >= add_months(row.start_date, TERM_MONTHS)


def counts_from(row: EvidenceRow) -> date | None:
    """The first day a record counts: its start, or 6 months after it.

    ``LOST_CONTACT`` and an ``OTHER_RESTRICTION`` without end date (custody
    before trial) count from the day 6 months after their start.
    """
    if row.start_date is None:
        return None
    if row.circumstance is C.LOST_CONTACT or (
        row.circumstance is C.OTHER_RESTRICTION and row.end_date is None
    ):
        return add_months(row.start_date, TERM_MONTHS)
    return row.start_date


def counts_until(row: EvidenceRow) -> date | None:
    """The first day a record no longer counts: its end date (a certificate: its expiry)."""
    if row.circumstance is C.SEVERE_DISABILITY:
        return certificate_expiry(row)
    return row.end_date


def _grade(row: EvidenceRow) -> Reason:
    if row.disability_grade is None or row.disability_category is None:
        return reason("grade_filtered")
    return reason(
        "grade",
        grade=row.disability_grade,
        category=DisabilityCategory(row.disability_category),
    )


def describe(row: EvidenceRow) -> Reason:
    """The record as a fact: circumstance, source, since and until when."""
    common = {"code": row.circumstance, "source": row.source}
    start, end = row.start_date, row.end_date
    if start is None and end is None:
        return reason("fact_no_dates", **common)
    if row.circumstance is C.SEVERE_DISABILITY and start is not None:
        expiry = certificate_expiry(row)
        assert expiry is not None
        return reason("fact_certificate", grade=_grade(row), start=start, expiry=expiry, **common)
    if start is None:
        assert end is not None
        return reason("fact_until", end=end, **common)
    if end is not None:
        return reason("fact_since_until", start=start, end=end, **common)
    if row.circumstance is C.DEAD:
        return reason("fact_on", start=start, **common)
    return reason("fact_since", start=start, **common)


_LAPSE_KEY = {
    C.IMPRISONED: "lapsed_released",
    C.DRUG_REHAB: "lapsed_released",
    C.OTHER_RESTRICTION: "lapsed_released",
    C.LOST_CONTACT: "lapsed_contact_regained",
    C.DEAD: "lapsed_declaration_revoked",
    C.MISSING: "lapsed_declaration_revoked",
    C.GUARDIANSHIP_REVOKED: "lapsed_guardianship_restored",
}


def is_current(row: EvidenceRow, on: date) -> Ruling[bool]:
    """Whether a record counts on ``on`` (eligibility.md, "Parent circumstances").

    * a severe disability needs a qualifying grade and category (dated or not);
    * no dates at all: current (a membership-only match set applied the thresholds);
    * a severe disability needs a valid certificate;
    * a term needs 6 months or more;
    * it must have started (``LOST_CONTACT`` and an open ``OTHER_RESTRICTION``:
      6 months after the start) and not ended (end date after ``on``).

    The one reason is the fact, or why it does not count.
    """
    common = {"code": row.circumstance, "source": row.source}
    start, end = row.start_date, row.end_date
    # the grade rule holds with or without dates: an undated record may still carry
    # a grade and category (a keyed-hash payload), and grade 3 limb is not 重残
    if row.circumstance is C.SEVERE_DISABILITY and not is_severe_disability(row):
        return Ruling(False, (reason("lapsed_grade", grade=_grade(row), **common),))
    if start is None and end is None:
        return Ruling(True, (describe(row),))
    if not term_is_long_enough(row):
        assert start is not None and end is not None
        return Ruling(False, (reason("lapsed_term_short", start=start, end=end, **common),))
    if start is not None and start > on:
        return Ruling(False, (reason("lapsed_not_started", start=start, **common),))
    first = counts_from(row)
    if first is not None and first > on:
        assert start is not None
        return Ruling(False, (reason("lapsed_not_yet", start=start, counts_from=first, **common),))
    until = counts_until(row)
    if until is not None and until <= on:
        if row.circumstance is C.SEVERE_DISABILITY:
            lapse = reason("lapsed_certificate_expired", grade=_grade(row), end=until, **common)
        else:
            key = _LAPSE_KEY.get(row.circumstance, "lapsed_ended")
            lapse = reason(key, end=until, **common)
        return Ruling(False, (lapse,))
    return Ruling(True, (describe(row),))


def in_force(row: EvidenceRow, on: date) -> bool:
    """A custody record in force: start empty or on/before ``on``, end empty or after it.

    The length of the term does not matter here.
    """
    return (
        row.circumstance in CUSTODY
        and (row.start_date is None or row.start_date <= on)
        and (row.end_date is None or row.end_date > on)
    )


# --- a parent ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParentStatus:
    """How one parent is judged on the evaluation date."""

    role: Role
    #: G, Q, or None when no circumstance counts
    group: Group | None
    #: the codes the group rests on
    basis: frozenset[Circumstance]
    #: the facts of the basis; with no group, what was recorded and why it does not count
    reasons: tuple[Reason, ...]
    #: the records that do not count on the evaluation date
    lapsed: tuple[Reason, ...]


def parent_group(role: Role, rows: Iterable[EvidenceRow], on: date) -> ParentStatus:
    """Judge a parent by the strongest current circumstance: G over Q over nothing."""
    gone: list[tuple[Circumstance, Reason]] = []
    qualifying: list[tuple[Circumstance, Reason]] = []
    lapsed: list[Reason] = []
    for row in rows:
        ruling = is_current(row, on)
        said = reason("parent_fact", role=role, fact=ruling.reasons[0])
        if not ruling.value:
            lapsed.append(said)
        elif row.circumstance in GONE:
            gone.append((row.circumstance, said))
        elif row.circumstance in QUALIFYING:
            qualifying.append((row.circumstance, said))
    for group, found in ((Group.GONE, gone), (Group.QUALIFYING, qualifying)):
        if found:
            codes, facts = zip(*found, strict=True)
            return ParentStatus(role, group, frozenset(codes), facts, tuple(lapsed))
    none = tuple(lapsed) or (reason("parent_no_evidence", role=role),)
    return ParentStatus(role, None, frozenset(), none, tuple(lapsed))


def has_conflict(role: Role, rows: Sequence[EvidenceRow], on: date) -> Ruling[bool]:
    """A current G code and a custody record in force for the same parent.

    A dead or missing person is not in custody: the datasets disagree.
    (``MISSING`` with ``LOST_CONTACT`` is no conflict: ``LOST_CONTACT`` is not custody.)
    """
    gone = [row for row in rows if row.circumstance in GONE and is_current(row, on).value]
    custody = [row for row in rows if in_force(row, on)]
    found = tuple(
        reason("conflict", role=role, gone=describe(g), custody=describe(c), as_of=on)
        for g in gone
        for c in custody
    )
    return Ruling(bool(found), found)


# --- the child ---------------------------------------------------------------------------------


def category(
    father: ParentStatus | None, mother: ParentStatus | None, *, foundling: bool
) -> Ruling[Category | None]:
    """The child's category from the parents' groups.

    * a foundling whose parents cannot be found: orphan;
    * both parents in G: orphan (orphan takes precedence);
    * both in Q, or one in G and the other in Q: de facto unsupported;
    * otherwise none.
    """
    if foundling:
        return Ruling(Category.ORPHAN, (reason("foundling"),))
    assert father is not None and mother is not None
    reasons = father.reasons + mother.reasons
    if father.group is Group.GONE and mother.group is Group.GONE:
        return Ruling(Category.ORPHAN, reasons)
    if father.group is not None and mother.group is not None:
        return Ruling(Category.DE_FACTO, reasons)
    return Ruling(None, reasons)


def next_check_due(
    basis: frozenset[Circumstance],
    *,
    last_check: date | None,
    as_of: date,
    enrolling: bool = False,
) -> Ruling[date]:
    """The next periodic check (section 四(三)).

    6 months after the last check when the basis has ``IMPRISONED``,
    ``DRUG_REHAB``, ``OTHER_RESTRICTION`` or ``LOST_CONTACT``; otherwise 12
    months (the shorter interval wins). A new enrolment counts from the
    evaluation date; a supported child without any check on record is due now.
    """
    months = 6 if basis & TWICE_A_YEAR else 12
    codes = tuple(sorted(code.value for code in basis))
    every = reason("check_every", months=months, codes=codes)
    if enrolling:
        return Ruling(add_months(as_of, months), (reason("check_new", as_of=as_of), every))
    if last_check is None:
        return Ruling(as_of, (reason("check_none_recorded"),))
    return Ruling(add_months(last_check, months), (every,))


def basis_lost_on(
    father: Sequence[EvidenceRow], mother: Sequence[EvidenceRow], on: date
) -> date | None:
    """The day the child last stopped meeting any category, judged from the records.

    A category can only be lost on a day some record stops counting, so only
    those days are tried, latest first. ``None`` when the records never gave
    a category (nothing was recorded, for example).
    """
    days = {counts_until(row) for row in (*father, *mother)}
    for day in sorted((d for d in days if d is not None and d <= on), reverse=True):
        before = day - timedelta(days=1)
        had = category(
            parent_group(Role.FATHER, father, before),
            parent_group(Role.MOTHER, mother, before),
            foundling=False,
        ).value
        if had is not None:
            return day
    return None


@dataclass(frozen=True, slots=True)
class ChildDecision:
    """The decision for one roster row, with its written reasons."""

    child: RosterRow
    decision: Decision
    category: Category | None
    reasons: tuple[Reason, ...]
    next_check_due: date | None = None
    check_reasons: tuple[Reason, ...] = ()
    overdue: bool = False
    conflict: bool = False
    #: for EXIT: the first month without support (次月起)
    stops_from: Month | None = None

    def reason_texts(self, lang: Lang = "zh", names: Mapping[str, str] | None = None) -> list[str]:
        """The written reasons in ``lang``; ``names``: display names of sets (Chinese only)."""
        return [render(item, lang, names) for item in self.reasons]


def _stop(
    child: RosterRow, decision: Decision, reasons: Sequence[Reason], change: date
) -> ChildDecision:
    month = Month.after(change)
    return ChildDecision(
        child, decision, None, (*reasons, reason("stops_from", stop=month)), stops_from=month
    )


def _review(
    child: RosterRow, reasons: Sequence[Reason], *, as_of: date, conflict: bool = False
) -> ChildDecision:
    """REVIEW; a supported child keeps support and is checked on the shortest interval."""
    if child.status is not Status.SUPPORTED:
        return ChildDecision(child, Decision.REVIEW, None, tuple(reasons), conflict=conflict)
    if child.last_check_date is None:
        due, why = as_of, (reason("check_none_recorded"),)
    else:
        due, why = add_months(child.last_check_date, TERM_MONTHS), (reason("check_review"),)
    return ChildDecision(
        child,
        Decision.REVIEW,
        None,
        tuple(reasons),
        next_check_due=due,
        check_reasons=why,
        overdue=child.last_check_date is None or due < as_of,
        conflict=conflict,
    )


def _unknown_parent(role: Role, child: RosterRow, column: str) -> Reason:
    problem = child.problem(column)
    if problem is not None:
        return reason(
            "parent_invalid_id",
            role=role,
            column=RosterColumn(column),
            problem=IdProblem(problem.message),
        )
    return reason("parent_unknown", role=role)


def is_foundling(child: RosterRow) -> bool:
    """A foundling: marked ``foundling = yes`` with both parent ID cells empty.

    A foundling mark next to a parent ID (even an invalid one) is ignored.
    """
    return (
        child.foundling
        and child.father_id is None
        and child.mother_id is None
        and child.problem("father_id") is None
        and child.problem("mother_id") is None
    )


_NONE: tuple[EvidenceRow, ...] = ()
_NO: Ruling[bool] = Ruling(False)


def decide(
    child: RosterRow,
    evidence: Mapping[str, Sequence[EvidenceRow]],
    *,
    as_of: date,
    failed_sources: Sequence[str] = (),
) -> ChildDecision:
    """The decision for one child on ``as_of``, in the order of eligibility.md.

    ``evidence`` maps a canonical identity number to that person's records
    (no ``SERVICE`` records). ``failed_sources`` are the match sets that
    failed or were refused this round.
    """
    supported = child.status is Status.SUPPORTED
    # (0) an invalid identity number of the child: REVIEW, naming column and problem
    problem = child.problem("child_id")
    if problem is not None:
        invalid = reason(
            "child_invalid_id",
            column=RosterColumn(problem.column),
            problem=IdProblem(problem.message),
        )
        return _review(child, (invalid,), as_of=as_of)
    if child.child_birth_date is None:  # only possible for an invalid ID, kept for the types
        return _review(child, (reason("child_no_birth_date"),), as_of=as_of)

    # (1) 18 or older on the evaluation date
    adult = is_adult(child.child_birth_date, as_of)
    if adult.value:
        if supported:
            change = eighteenth_birthday(child.child_birth_date) + timedelta(days=1)
            return _stop(child, Decision.EXIT, adult.reasons, change)
        return ChildDecision(child, Decision.NOT_ELIGIBLE, None, adult.reasons)

    # (2) the child's own current DEAD record
    own = evidence.get(child.child_id, _NONE) if child.child_id is not None else _NONE
    for row in own:
        if row.circumstance is C.DEAD:
            death = is_current(row, as_of)
            if death.value:
                said = reason("child_dead", fact=death.reasons[0])
                if supported:
                    return _stop(child, Decision.EXIT, (said,), row.start_date or as_of)
                return ChildDecision(child, Decision.NOT_ELIGIBLE, None, (said,))

    # (3) a conflict, or an unknown parent (unless a foundling)
    foundling = is_foundling(child)
    father_rows = evidence.get(child.father_id, _NONE) if child.father_id is not None else _NONE
    mother_rows = evidence.get(child.mother_id, _NONE) if child.mother_id is not None else _NONE
    father = mother = None
    if not foundling:
        doubts: list[Reason] = []
        known: list[Reason] = []
        conflict = False
        for role, parent_id, rows, column in (
            (Role.FATHER, child.father_id, father_rows, "father_id"),
            (Role.MOTHER, child.mother_id, mother_rows, "mother_id"),
        ):
            if parent_id is None:
                doubts.append(_unknown_parent(role, child, column))
                continue
            status = parent_group(role, rows, as_of)
            # a conflict needs a current G code, so only a parent judged on G can have one
            clash = has_conflict(role, rows, as_of) if status.group is Group.GONE else _NO
            if clash.value:
                conflict = True
                doubts.extend(clash.reasons)
                continue
            known.extend(status.reasons)
            if role is Role.FATHER:
                father = status
            else:
                mother = status
        if doubts:
            return _review(child, (*doubts, *known), as_of=as_of, conflict=conflict)

    # (4) the category from the parents' current circumstances
    found = category(father, mother, foundling=foundling)
    if found.value is not None:
        basis = (father.basis if father else frozenset()) | (
            mother.basis if mother else frozenset()
        )
        if not supported:
            check = next_check_due(basis, last_check=None, as_of=as_of, enrolling=True)
            return ChildDecision(
                child, Decision.ENROL, found.value, found.reasons, check.value, check.reasons
            )
        check = next_check_due(basis, last_check=child.last_check_date, as_of=as_of)
        overdue = child.last_check_date is None or check.value < as_of
        if found.value is child.category:
            return ChildDecision(
                child,
                Decision.CONTINUE,
                found.value,
                found.reasons,
                check.value,
                check.reasons,
                overdue,
            )
        assert child.category is not None
        if failed_sources and child.category is Category.ORPHAN:
            # orphan -> de facto rests on a death record NOT found; the failed source may
            # hold it, and a failure stops conclusions drawn from the absence of a match
            unavailable = reason("evidence_unavailable", sources=tuple(failed_sources))
            return _review(child, (unavailable, *found.reasons), as_of=as_of)
        moved = reason("reclassified", old=child.category, new=found.value)
        return ChildDecision(
            child,
            Decision.RECLASSIFY,
            found.value,
            (moved, *found.reasons),
            check.value,
            check.reasons,
            overdue,
        )

    # (5) no category: missing evidence never causes an exit
    if failed_sources:
        key = "evidence_unavailable" if supported else "evidence_unavailable_candidate"
        unavailable = reason(key, sources=tuple(failed_sources))
        return _review(child, (unavailable, *found.reasons), as_of=as_of)
    if not supported:
        return ChildDecision(
            child, Decision.NOT_ELIGIBLE, None, (reason("no_category"), *found.reasons)
        )
    assert father is not None and mother is not None and child.category is not None
    lost = basis_lost_on(father_rows, mother_rows, as_of)
    if lost is None:
        summary = reason("no_longer_undated", old=child.category, as_of=as_of)
    else:
        summary = reason("no_longer", old=child.category, since=lost)
    return _stop(child, Decision.EXIT, (*found.reasons, summary), lost or as_of)


# --- a round -----------------------------------------------------------------------------------


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

    def reason_texts(self, item: ChildDecision) -> list[str]:
        """The written reasons of ``item`` in :attr:`lang`, rendered once for the round.

        decisions.json and the report show the same texts; do not modify the list.
        """
        cached = self._texts.get(id(item))
        if cached is not None and cached[0] is item:
            return cached[1]
        texts = item.reason_texts(self.lang, self.source_names)
        self._texts[id(item)] = (item, texts)
        return texts

    @property
    def overdue_checks(self) -> list[str]:
        """Children whose periodic check is overdue (or never recorded), in roster order."""
        return [child_label(d.child) for d in self.decisions if d.overdue]

    def counts(self) -> Counter[Decision]:
        """How many children got each decision."""
        return Counter(d.decision for d in self.decisions)

    def to_json(self, round_id: str | None = None) -> dict[str, object]:
        """The decisions.json document (data-contracts.md), reasons in :attr:`lang`."""
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
    decisions = [
        decide(child, index, as_of=as_of, failed_sources=evidence_failed) for child in rows
    ]
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
