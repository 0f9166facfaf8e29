"""The eligibility rules applied to a whole round at once (issue 10, item 4).

:func:`coordinator.eligibility.decide` is the reference: one child, the steps
of eligibility.md in order, every rule asked again for every child. This
module gives every child of a roster exactly the same :class:`ChildDecision`
(tests/test_eligibility_columns.py checks it on random rosters and evidence)
with less work per child:

* every evidence record is judged once on the evaluation date, by column
  (:func:`judge_records`);
* every parent is judged once from those judgements, and a parent with no
  record shares one judgement;
* which children are 18 is one column operation over the birth dates
  (:func:`adult_mask`);
* the reasons that repeat (a parent without records, the month support stops,
  the check interval...) are shared values, so that they are rendered once.

The per-child steps that remain are the reference's own step functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

import numpy as np
import numpy.typing as npt

from coordinator.circumstances import (
    ADULT_AGE,
    GONE,
    QUALIFYING,
    Group,
    Ruling,
    describe,
    in_force,
)
from coordinator.eligibility import (
    ChildDecision,
    Parent,
    ParentStatus,
    category,
    is_foundling,
    shared_reason,
    step_0_invalid_child_id,
    step_1_adult,
    step_2_child_dead,
    step_3_conflict_or_unknown,
    step_4_category,
    step_5_no_category,
    unknown_parent,
)
from coordinator.eligibility_records import judge_records
from coordinator.reasons import Reason, reason
from coordinator.records import Circumstance, EvidenceRow, Role, RosterRow

_NONE: tuple[EvidenceRow, ...] = ()
_FOUNDLING = Parent(_NONE, None)
_BASIS = {code: frozenset({code}) for code in Circumstance}
_COLUMN = {Role.FATHER: "father_id", Role.MOTHER: "mother_id"}


def _birth_key(day: date | None) -> int:
    """The 18th birthday as yyyymmdd, 29 February as 1 March of a common year; 0: none."""
    if day is None:
        return 0
    year = day.year + ADULT_AGE
    if day.month == 2 and day.day == 29 and not _leap(year):
        return year * 10000 + 301
    return year * 10000 + day.month * 100 + day.day


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def adult_mask(rows: Sequence[RosterRow], on: date) -> npt.NDArray[np.bool_]:
    """Which children are 18 or older on ``on`` (adult from the day after the 18th birthday).

    A child without a birth date is not (step 0 decides it first).
    """
    keys = np.fromiter((_birth_key(row.child_birth_date) for row in rows), np.int64, len(rows))
    today = on.year * 10000 + on.month * 100 + on.day
    adult: npt.NDArray[np.bool_] = (keys > 0) & (keys < today)
    return adult


class RoundJudge:
    """Decides the children of one round on one evaluation date, judging each person once."""

    def __init__(
        self,
        evidence: Mapping[str, Sequence[EvidenceRow]],
        *,
        as_of: date,
        failed_sources: Sequence[str] = (),
    ) -> None:
        self.evidence = evidence
        self.as_of = as_of
        self.failed_sources = tuple(failed_sources)
        #: person -> (is_current of each record, in the index's order)
        self.records = judge_records(evidence, as_of)
        self._parents: dict[tuple[str, Role], Parent] = {}
        self._one: dict[tuple[Role, int], ParentStatus] = {}
        self._decided: dict[tuple[object, ...], ChildDecision] = {}
        self._no_evidence = {
            role: Parent(
                _NONE,
                ParentStatus(
                    role, None, frozenset(), (shared_reason("parent_no_evidence", role=role),), ()
                ),
            )
            for role in (Role.FATHER, Role.MOTHER)
        }

    def parent(self, role: Role, child: RosterRow) -> Parent:
        """:func:`coordinator.eligibility.judge_parent`, once per person and role."""
        parent_id = child.father_id if role is Role.FATHER else child.mother_id
        if parent_id is None:
            return Parent(_NONE, None, (unknown_parent(role, child, _COLUMN[role]),))
        rows = self.evidence.get(parent_id)
        if rows is None:
            return self._no_evidence[role]
        key = (parent_id, role)
        found = self._parents.get(key)
        if found is None:
            found = self._parents[key] = self._judge_parent(role, rows, self.records[parent_id])
        return found

    def _judge_parent(
        self, role: Role, rows: Sequence[EvidenceRow], rulings: Sequence[Ruling[bool]]
    ) -> Parent:
        if len(rows) == 1:  # most people: one record, which cannot conflict with itself
            # people with equal records (a shared Ruling) share the judgement and its reasons
            ruling = rulings[0]
            memo = (role, id(ruling))  # judge_records keeps every ruling alive
            status = self._one.get(memo)
            if status is None:
                status = self._one[memo] = self._one_record(role, rows[0], ruling)
            return Parent(rows, status)
        # parent_group, from the records' judgements
        gone: list[tuple[EvidenceRow, Reason, Reason]] = []
        qualifying: list[tuple[EvidenceRow, Reason, Reason]] = []
        lapsed: list[Reason] = []
        for row, ruling in zip(rows, rulings, strict=True):
            fact = ruling.reasons[0]
            said = reason("parent_fact", role=role, fact=fact)
            if not ruling.value:
                lapsed.append(said)
            elif row.circumstance in GONE:
                gone.append((row, said, fact))
            elif row.circumstance in QUALIFYING:
                qualifying.append((row, said, fact))
        for group, found in ((Group.GONE, gone), (Group.QUALIFYING, qualifying)):
            if found:
                basis = frozenset(row.circumstance for row, _, _ in found)
                facts = tuple(said for _, said, _ in found)
                status = ParentStatus(role, group, basis, facts, tuple(lapsed))
                break
        else:
            none = tuple(lapsed) or (shared_reason("parent_no_evidence", role=role),)
            status = ParentStatus(role, None, frozenset(), none, tuple(lapsed))
        if gone:
            # has_conflict: a current G record and a custody record in force
            custody = [row for row in rows if in_force(row, self.as_of)]
            if custody:
                clash = tuple(
                    reason(
                        "conflict",
                        role=role,
                        gone=fact,  # describe(g): the fact of a current record
                        custody=describe(c),
                        as_of=self.as_of,
                    )
                    for _, _, fact in gone
                    for c in custody
                )
                return Parent(rows, None, clash, conflict=True)
        return Parent(rows, status)

    def _one_record(self, role: Role, row: EvidenceRow, ruling: Ruling[bool]) -> ParentStatus:
        """parent_group of a parent with one record."""
        said = (reason("parent_fact", role=role, fact=ruling.reasons[0]),)
        code = row.circumstance
        if not ruling.value:
            return ParentStatus(role, None, frozenset(), said, said)
        if code in GONE:
            return ParentStatus(role, Group.GONE, _BASIS[code], said, ())
        if code in QUALIFYING:
            return ParentStatus(role, Group.QUALIFYING, _BASIS[code], said, ())
        status = self._no_evidence[role].status  # a code of neither group counts for nothing
        assert status is not None
        return status

    def decide(self, child: RosterRow, adult: bool) -> ChildDecision:
        """:func:`coordinator.eligibility.decide` for one child; ``adult`` from :func:`adult_mask`."""
        as_of, failed = self.as_of, self.failed_sources
        decided = step_0_invalid_child_id(child, as_of=as_of)
        if decided is not None:
            return decided
        if adult:
            assert child.child_birth_date is not None
            decided = step_1_adult(child, child.child_birth_date, as_of=as_of)
            assert decided is not None
            return decided
        if child.child_id is not None and child.child_id in self.evidence:
            decided = step_2_child_dead(child, self.evidence, as_of=as_of)
            if decided is not None:
                return decided
        foundling = is_foundling(child)
        if foundling:
            father = mother = _FOUNDLING
        else:
            father = self.parent(Role.FATHER, child)
            mother = self.parent(Role.MOTHER, child)
            decided = step_3_conflict_or_unknown(child, father, mother, as_of=as_of)
            if decided is not None:
                return decided
        # steps 4 and 5 see the child's status, category and last check, and the parents'
        # judgements, which are shared between people with equal records: children alike
        # in all of these get the same decision, computed once
        key = (
            child.status,
            child.category,
            child.last_check_date,
            foundling,
            id(father.status),  # kept alive by this judge's memos
            id(mother.status),
        )
        alike = self._decided.get(key)
        if alike is not None:
            return _same_as(alike, child)
        decided = self._steps_4_and_5(child, father, mother, foundling=foundling)
        self._decided[key] = decided
        return decided

    def _steps_4_and_5(
        self, child: RosterRow, father: Parent, mother: Parent, *, foundling: bool
    ) -> ChildDecision:
        as_of, failed = self.as_of, self.failed_sources
        found = category(father.status, mother.status, foundling=foundling)
        basis = (father.status.basis if father.status else frozenset()) | (
            mother.status.basis if mother.status else frozenset()
        )
        decided = step_4_category(child, found, basis, as_of=as_of, failed_sources=failed)
        if decided is None:
            # basis_lost_on reads the parents' records: equal for parents that share a judgement
            decided = step_5_no_category(
                child, found, father, mother, as_of=as_of, failed_sources=failed
            )
        return decided


def _same_as(alike: ChildDecision, child: RosterRow) -> ChildDecision:
    """``alike``'s decision for ``child``."""
    return ChildDecision(
        child,
        alike.decision,
        alike.category,
        alike.reasons,
        alike.next_check_due,
        alike.check_reasons,
        alike.overdue,
        alike.conflict,
        alike.stops_from,
    )


def decide_round(
    rows: Sequence[RosterRow],
    evidence: Mapping[str, Sequence[EvidenceRow]],
    *,
    as_of: date,
    failed_sources: Sequence[str] = (),
) -> list[ChildDecision]:
    """Every child's decision, in roster order: the same as ``decide`` child by child."""
    judge = RoundJudge(evidence, as_of=as_of, failed_sources=failed_sources)
    adult = adult_mask(rows, as_of).tolist()
    return [judge.decide(child, grown) for child, grown in zip(rows, adult, strict=True)]
