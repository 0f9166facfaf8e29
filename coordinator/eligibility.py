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

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, timedelta
from functools import lru_cache
from typing import NamedTuple

from coordinator.circumstances import (
    GONE,
    QUALIFYING,
    TERM_MONTHS,
    Group,
    Ruling,
    add_months,
    counts_until,
    describe,
    eighteenth_birthday,
    in_force,
    is_adult,
    is_current,
)
from coordinator.reasons import (
    Arg,
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
    RosterRow,
    Status,
)

C = Circumstance

#: section 四(三): at least two checks a year
TWICE_A_YEAR = frozenset({C.IMPRISONED, C.DRUG_REHAB, C.OTHER_RESTRICTION, C.LOST_CONTACT})
#: section 四(三): at least one check a year
ONCE_A_YEAR = frozenset({C.SEVERE_ILLNESS, C.SEVERE_DISABILITY, C.MISSING})
#: section 四(三): a basis with only these codes is checked yearly (coverage still ends at 18)
CHECKED_YEARLY = frozenset({C.DEAD, C.GUARDIANSHIP_REVOKED, C.DEPORTED})
#: decisions under which a supported child is still covered (support continues while reviewed)
COVERED = frozenset({Decision.CONTINUE, Decision.RECLASSIFY, Decision.REVIEW})


@lru_cache(maxsize=1 << 12, typed=True)  # typed: a StrEnum equals its str
def shared_reason(key: str, **args: Arg) -> Reason:
    """:func:`coordinator.reasons.reason` for a reason with few distinct values (a
    parent without records, the month support stops...): one object per value, so
    that a round renders it once (:class:`coordinator.reasons.Renderer`)."""
    return reason(key, **args)


# --- a parent ----------------------------------------------------------------------------------


class ParentStatus(NamedTuple):
    """How one parent is judged on the evaluation date (a named tuple: one per parent)."""

    role: Role
    #: G, Q, or None when no circumstance counts
    group: Group | None
    #: the codes the group rests on
    basis: frozenset[Circumstance]
    #: the facts of the basis; with no group, what was recorded and why it does not count
    reasons: tuple[Reason, ...]
    #: the records that do not count on the evaluation date
    lapsed: tuple[Reason, ...]


#: how one record is judged on a date (:func:`is_current`, or a round's memo of it)
RecordRuling = Callable[[EvidenceRow], Ruling[bool]]


def parent_group(
    role: Role, rows: Iterable[EvidenceRow], on: date, *, judge: RecordRuling | None = None
) -> ParentStatus:
    """Judge a parent by the strongest current circumstance: G over Q over nothing.

    ``judge`` gives a record's :func:`is_current` on ``on`` (a round passes a memo).
    """
    gone: list[tuple[Circumstance, Reason]] = []
    qualifying: list[tuple[Circumstance, Reason]] = []
    lapsed: list[Reason] = []
    for row in rows:
        ruling = judge(row) if judge is not None else is_current(row, on)
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
    none = tuple(lapsed) or (shared_reason("parent_no_evidence", role=role),)
    return ParentStatus(role, None, frozenset(), none, tuple(lapsed))


def has_conflict(
    role: Role, rows: Sequence[EvidenceRow], on: date, *, judge: RecordRuling | None = None
) -> Ruling[bool]:
    """A current G code and a custody record in force for the same parent.

    A dead or missing person is not in custody: the datasets disagree.
    (``MISSING`` with ``LOST_CONTACT`` is no conflict: ``LOST_CONTACT`` is not custody.)
    ``judge``: as for :func:`parent_group`.
    """
    current = judge or (lambda row: is_current(row, on))
    gone = [row for row in rows if row.circumstance in GONE and current(row).value]
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
        return Ruling(Category.ORPHAN, (shared_reason("foundling"),))
    assert father is not None and mother is not None
    reasons = father.reasons + mother.reasons
    if father.group is Group.GONE and mother.group is Group.GONE:
        return Ruling(Category.ORPHAN, reasons)
    if father.group is not None and mother.group is not None:
        return Ruling(Category.DE_FACTO, reasons)
    return Ruling(None, reasons)


def check_interval_months(basis: frozenset[Circumstance]) -> int:
    """Months between periodic checks for a basis (eligibility.md, "Periodic checks").

    The spec's lists, in its order; when a basis has codes from both, the
    shorter interval applies, so the twice-a-year list is tried first.
    """
    if basis & TWICE_A_YEAR:
        return 6
    if basis & ONCE_A_YEAR:
        return 12
    # only DEAD, GUARDIANSHIP_REVOKED or DEPORTED (CHECKED_YEARLY): checked yearly as well
    return 12


@lru_cache(maxsize=1 << 14)  # few distinct bases and check dates: one Ruling for each
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
    months = check_interval_months(basis)
    codes = tuple(sorted(code.value for code in basis))
    every = shared_reason("check_every", months=months, codes=codes)
    if enrolling:
        return Ruling(add_months(as_of, months), (shared_reason("check_new", as_of=as_of), every))
    if last_check is None:
        return Ruling(as_of, (shared_reason("check_none_recorded"),))
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


class ChildDecision(NamedTuple):
    """The decision for one roster row, with its written reasons.

    A named tuple, as :class:`~coordinator.records.RosterRow`: one per child.
    """

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
        child=child,
        decision=decision,
        category=None,
        reasons=(*reasons, shared_reason("stops_from", stop=month)),
        stops_from=month,
    )


def _refuse(child: RosterRow, reasons: tuple[Reason, ...]) -> ChildDecision:
    return ChildDecision(
        child=child, decision=Decision.NOT_ELIGIBLE, category=None, reasons=reasons
    )


def _review(
    child: RosterRow, reasons: Sequence[Reason], *, as_of: date, conflict: bool = False
) -> ChildDecision:
    """REVIEW; a supported child keeps support and is checked on the shortest interval."""
    if child.status is not Status.SUPPORTED:
        return ChildDecision(
            child=child,
            decision=Decision.REVIEW,
            category=None,
            reasons=tuple(reasons),
            conflict=conflict,
        )
    if child.last_check_date is None:
        due, why = as_of, (shared_reason("check_none_recorded"),)
    else:
        due, why = add_months(child.last_check_date, TERM_MONTHS), (shared_reason("check_review"),)
    return ChildDecision(
        child=child,
        decision=Decision.REVIEW,
        category=None,
        reasons=tuple(reasons),
        next_check_due=due,
        check_reasons=why,
        overdue=child.last_check_date is None or due < as_of,
        conflict=conflict,
    )


def unknown_parent(role: Role, child: RosterRow, column: str) -> Reason:
    problem = child.problem(column)
    if problem is not None:
        return shared_reason(
            "parent_invalid_id",
            role=role,
            column=RosterColumn(column),
            problem=IdProblem(problem.message),
        )
    return shared_reason("parent_unknown", role=role)


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


class Parent(NamedTuple):
    """One parent as steps 3 to 5 see it."""

    #: the parent's records (empty for an unknown parent)
    rows: Sequence[EvidenceRow]
    #: how the parent is judged; ``None`` when unknown or in conflict
    status: ParentStatus | None
    #: why step 3 stops: the parent is unknown, or the records conflict
    doubts: tuple[Reason, ...] = ()
    conflict: bool = False


def judge_parent(
    role: Role, child: RosterRow, evidence: Mapping[str, Sequence[EvidenceRow]], *, on: date
) -> Parent:
    """One parent's records, group and doubts (eligibility.md, "Conflicts")."""
    column = "father_id" if role is Role.FATHER else "mother_id"
    parent_id = child.father_id if role is Role.FATHER else child.mother_id
    if parent_id is None:
        # unknown: no ID number on the roster, or one that cannot be normalized
        return Parent(_NONE, None, (unknown_parent(role, child, column),))
    return parent_of_records(role, evidence.get(parent_id, _NONE), on=on)


def parent_of_records(
    role: Role, rows: Sequence[EvidenceRow], *, on: date, judge: RecordRuling | None = None
) -> Parent:
    """A known parent judged from their records: group, or the conflict that stops step 3."""
    status = parent_group(role, rows, on, judge=judge)
    if status.group is Group.GONE:  # a conflict needs a current G code
        clash = has_conflict(role, rows, on, judge=judge)
        if clash.value:
            return Parent(rows, None, clash.reasons, conflict=True)
    return Parent(rows, status)


def step_0_invalid_child_id(child: RosterRow, *, as_of: date) -> ChildDecision | None:
    """(0) The child's own identity number is invalid: ``REVIEW``, naming column and problem.

    eligibility.md, "Invalid identity numbers".
    """
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
    return None


def step_1_adult(child: RosterRow, birth: date, *, as_of: date) -> ChildDecision | None:
    """(1) 18 or older on D: ``EXIT`` for a supported child, ``NOT_ELIGIBLE`` for a candidate."""
    adult = is_adult(birth, as_of)
    if not adult.value:
        return None
    if child.status is Status.SUPPORTED:
        change = eighteenth_birthday(birth) + timedelta(days=1)
        return _stop(child, Decision.EXIT, adult.reasons, change)
    return _refuse(child, adult.reasons)


def step_2_child_dead(
    child: RosterRow, evidence: Mapping[str, Sequence[EvidenceRow]], *, as_of: date
) -> ChildDecision | None:
    """(2) The child's own ID has a current ``DEAD`` record: ``EXIT`` / ``NOT_ELIGIBLE``."""
    own = evidence.get(child.child_id, _NONE) if child.child_id is not None else _NONE
    for row in own:
        if row.circumstance is C.DEAD:
            death = is_current(row, as_of)
            if death.value:
                said = reason("child_dead", fact=death.reasons[0])
                if child.status is Status.SUPPORTED:
                    return _stop(child, Decision.EXIT, (said,), row.start_date or as_of)
                return _refuse(child, (said,))
    return None


def step_3_conflict_or_unknown(
    child: RosterRow, father: Parent, mother: Parent, *, as_of: date
) -> ChildDecision | None:
    """(3) A conflict or an unknown parent: ``REVIEW`` (never for a foundling)."""
    doubts = (*father.doubts, *mother.doubts)
    if not doubts:
        return None
    known = tuple(
        said for parent in (father, mother) if parent.status for said in parent.status.reasons
    )
    conflict = father.conflict or mother.conflict
    return _review(child, (*doubts, *known), as_of=as_of, conflict=conflict)


def step_4_category(
    child: RosterRow,
    found: Ruling[Category | None],
    basis: frozenset[Circumstance],
    *,
    as_of: date,
    failed_sources: Sequence[str],
) -> ChildDecision | None:
    """(4) A category: ``ENROL`` / ``CONTINUE`` / ``RECLASSIFY``, with one exception.

    The exception is eligibility.md step 4's last sentence: a supported orphan
    whose category is now de facto unsupported gets ``REVIEW`` ("evidence
    unavailable") when an evidence dataset of the round failed or was refused.
    """
    new = found.value
    if new is None:
        return None
    if child.status is not Status.SUPPORTED:
        check = next_check_due(basis, last_check=None, as_of=as_of, enrolling=True)
        return ChildDecision(
            child=child,
            decision=Decision.ENROL,
            category=new,
            reasons=found.reasons,
            next_check_due=check.value,
            check_reasons=check.reasons,
        )
    check = next_check_due(basis, last_check=child.last_check_date, as_of=as_of)
    overdue = child.last_check_date is None or check.value < as_of
    if new is child.category:
        return ChildDecision(
            child=child,
            decision=Decision.CONTINUE,
            category=new,
            reasons=found.reasons,
            next_check_due=check.value,
            check_reasons=check.reasons,
            overdue=overdue,
        )
    assert child.category is not None
    if failed_sources and child.category is Category.ORPHAN:
        # eligibility.md step 4, "One exception": orphan -> de facto rests on a death
        # record NOT found; the failed source may hold it, and a failure stops
        # conclusions drawn from the absence of a match
        unavailable = shared_reason("evidence_unavailable", sources=tuple(failed_sources))
        return _review(child, (unavailable, *found.reasons), as_of=as_of)
    moved = shared_reason("reclassified", old=child.category, new=new)
    return ChildDecision(
        child=child,
        decision=Decision.RECLASSIFY,
        category=new,
        reasons=(moved, *found.reasons),
        next_check_due=check.value,
        check_reasons=check.reasons,
        overdue=overdue,
    )


def step_5_no_category(
    child: RosterRow,
    found: Ruling[Category | None],
    father: Parent,
    mother: Parent,
    *,
    as_of: date,
    failed_sources: Sequence[str],
) -> ChildDecision:
    """(5) No category: missing evidence never causes an exit.

    ``REVIEW`` ("evidence unavailable") when an evidence dataset failed; else
    ``EXIT`` for a supported child, naming what no longer holds, and
    ``NOT_ELIGIBLE`` for a candidate.
    """
    supported = child.status is Status.SUPPORTED
    if failed_sources:
        key = "evidence_unavailable" if supported else "evidence_unavailable_candidate"
        unavailable = shared_reason(key, sources=tuple(failed_sources))
        return _review(child, (unavailable, *found.reasons), as_of=as_of)
    if not supported:
        return _refuse(child, (shared_reason("no_category"), *found.reasons))
    assert child.category is not None
    lost = basis_lost_on(father.rows, mother.rows, as_of)
    if lost is None:
        summary = shared_reason("no_longer_undated", old=child.category, as_of=as_of)
    else:
        summary = shared_reason("no_longer", old=child.category, since=lost)
    return _stop(child, Decision.EXIT, (*found.reasons, summary), lost or as_of)


_FOUNDLING = Parent(_NONE, None)


def steps_4_and_5(
    child: RosterRow,
    father: Parent,
    mother: Parent,
    *,
    foundling: bool,
    as_of: date,
    failed_sources: Sequence[str],
) -> ChildDecision:
    """(4) a category from the parents' groups, else (5) what no category means."""
    found = category(father.status, mother.status, foundling=foundling)
    basis = (father.status.basis if father.status else frozenset()) | (
        mother.status.basis if mother.status else frozenset()
    )
    decided = step_4_category(child, found, basis, as_of=as_of, failed_sources=failed_sources)
    if decided is None:
        decided = step_5_no_category(
            child, found, father, mother, as_of=as_of, failed_sources=failed_sources
        )
    return decided


def decide(
    child: RosterRow,
    evidence: Mapping[str, Sequence[EvidenceRow]],
    *,
    as_of: date,
    failed_sources: Sequence[str] = (),
) -> ChildDecision:
    """The decision for one child on ``as_of``: the steps of eligibility.md in order.

    ``evidence`` maps a canonical identity number to that person's records
    (no ``SERVICE`` records). ``failed_sources`` are the evidence match sets
    that failed or were refused this round. Each step returns a decision or
    ``None`` (go on to the next step); step 5 always decides.
    """
    # (0) an invalid identity number of the child
    decided = step_0_invalid_child_id(child, as_of=as_of)
    if decided is not None:
        return decided
    assert child.child_birth_date is not None  # step 0 decided otherwise
    # (1) 18 or older on the evaluation date
    decided = step_1_adult(child, child.child_birth_date, as_of=as_of)
    if decided is not None:
        return decided
    # (2) the child's own current DEAD record
    decided = step_2_child_dead(child, evidence, as_of=as_of)
    if decided is not None:
        return decided
    # (3) a conflict, or an unknown parent (a foundling has no parents to doubt)
    foundling = is_foundling(child)
    if foundling:
        father = mother = _FOUNDLING
    else:
        father = judge_parent(Role.FATHER, child, evidence, on=as_of)
        mother = judge_parent(Role.MOTHER, child, evidence, on=as_of)
        decided = step_3_conflict_or_unknown(child, father, mother, as_of=as_of)
        if decided is not None:
            return decided
    # (4) the category from the parents' current circumstances; (5) no category
    decided = steps_4_and_5(
        child, father, mother, foundling=foundling, as_of=as_of, failed_sources=failed_sources
    )
    # A rule that overrides what steps 4 and 5 decided goes here, as a function of
    # (child, decided) returning the new decision or None: for example "while a dispute
    # about a parent's record is open, an EXIT or a downgrade gets REVIEW (疑义校核中)".
    return decided
