"""The eligibility rules applied to a whole round at once (issue 10, item 4).

:func:`coordinator.eligibility.decide` is the reference: one child, the steps
of eligibility.md in order, every rule asked again for every child. This
module gives every child of a roster exactly the same :class:`ChildDecision`
(tests/test_eligibility_columns.py checks it on random rosters and evidence)
with less work per child:

* every distinct evidence record is judged once on the evaluation date
  (:class:`coordinator.eligibility_records.RecordJudge`), and only the
  records of parents;
* every parent is judged once from those judgements, and a parent with no
  record shares one judgement;
* adults are decided once per status and birth date;
* the reasons that repeat (a parent without records, the month support stops,
  the check interval...) are shared values, so that they are rendered once;
* steps 4 and 5 run once per *shape* of a child (status, recorded category,
  last check, each parent's group and basis): every other child of that shape
  gets the same decision with its own parents' reasons put in place of the
  first child's (:class:`_Shape`). Only a step 5 ``EXIT`` is decided child by
  child: its reason names the day the basis was lost, read from the records.

The per-child steps that remain are the reference's own step functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from coordinator.circumstances import is_adult
from coordinator.eligibility import (
    ChildDecision,
    Parent,
    ParentStatus,
    is_foundling,
    parent_of_records,
    shared_reason,
    step_0_invalid_child_id,
    step_1_adult,
    step_2_child_dead,
    step_3_conflict_or_unknown,
    steps_4_and_5,
    unknown_parent,
)
from coordinator.eligibility_records import RecordJudge, what_is_judged
from coordinator.records import Circumstance, Decision, EvidenceRow, Role, RosterRow, Status

_NONE: tuple[EvidenceRow, ...] = ()
_FOUNDLING = Parent(_NONE, None)
_BASIS = {code: frozenset({code}) for code in Circumstance}
_COLUMN = {Role.FATHER: "father_id", Role.MOTHER: "mother_id"}
#: a named tuple from a tuple of its fields, without its Python ``__new__``
_new = tuple.__new__
#: where ChildDecision keeps its reasons; the child is its first field
_REASONS = ChildDecision._fields.index("reasons")
assert ChildDecision._fields[0] == "child"


class _Shape:
    """Steps 4 and 5 decided for one shape of child, to be given to the others.

    For a known, undoubted pair of parents, ``category`` gives the father's
    reasons then the mother's, and steps 4 and 5 put those between reasons that
    depend on the shape only (``reclassified``, ``evidence_unavailable``,
    ``no_category``...). So a child of the same shape gets ``decided`` with its
    own parents' reasons in that place.
    """

    __slots__ = ("decided", "head", "tail")

    def __init__(self, decided: ChildDecision, head: int, tail: int) -> None:
        self.decided = decided
        reasons = decided.reasons
        self.head, self.tail = reasons[:head], reasons[len(reasons) - tail :]

    @classmethod
    def learn(
        cls, decided: ChildDecision, father: ParentStatus, mother: ParentStatus
    ) -> _Shape | None:
        """The shape of ``decided``; ``None`` when its reasons do not hold the parents'
        reasons as one run (then each child of the shape is decided on its own)."""
        parents = (*father.reasons, *mother.reasons)
        reasons = decided.reasons
        for start in range(len(reasons) - len(parents) + 1):
            if reasons[start : start + len(parents)] == parents:
                return cls(decided, start, len(reasons) - start - len(parents))
        return None

    def give(self, child: RosterRow, father: ParentStatus, mother: ParentStatus) -> ChildDecision:
        # the learned decision with this child and its parents' reasons: a copy of the
        # tuple in C (ChildDecision's own __new__ is a Python call per child)
        d = self.decided
        reasons = (*self.head, *father.reasons, *mother.reasons, *self.tail)
        return _new(ChildDecision, (child, *d[1:_REASONS], reasons, *d[_REASONS + 1 :]))


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
        self.judge_record = RecordJudge(as_of)
        #: a parent with several records, by ID and role
        self._parents: dict[tuple[str, Role], Parent] = {}
        #: a parent with one record, by role and the record (all but whose it is)
        self._one: dict[Role, dict[object, Parent]] = {Role.FATHER: {}, Role.MOTHER: {}}
        #: steps 4 and 5 by shape of child; ``None``: decide each child of it on its own
        self._shapes: dict[tuple[object, ...], _Shape | None] = {}
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
        """:func:`coordinator.eligibility.judge_parent`, once per person and role.

        A parent with one record shares the judgement of every parent with an equal
        record, ``rows`` included: the rules never read whose record it is.
        """
        parent_id = child.father_id if role is Role.FATHER else child.mother_id
        if parent_id is None:
            return Parent(_NONE, None, (unknown_parent(role, child, _COLUMN[role]),))
        rows = self.evidence.get(parent_id)
        if rows is None:
            return self._no_evidence[role]
        if len(rows) == 1:  # most people: one record, judged as every equal record is
            record = what_is_judged(rows[0])
            one = self._one[role]
            found = one.get(record)
            if found is None:
                found = one[record] = self._parent_of(role, rows)
            return found
        key = (parent_id, role)
        found = self._parents.get(key)
        if found is None:
            found = self._parents[key] = self._parent_of(role, rows)
        return found

    def _parent_of(self, role: Role, rows: Sequence[EvidenceRow]) -> Parent:
        return parent_of_records(role, rows, on=self.as_of, judge=self.judge_record)

    def decide(self, child: RosterRow, adult: bool) -> ChildDecision:
        """:func:`coordinator.eligibility.decide` for one child (``adult``: 18 or older)."""
        as_of = self.as_of
        if child.problems or child.child_birth_date is None:  # else step 0 passes
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
        foundling = child.foundling and is_foundling(child)
        if foundling:
            father = mother = _FOUNDLING
        else:
            father = self.parent(Role.FATHER, child)
            mother = self.parent(Role.MOTHER, child)
        return self.decide_from(child, father, mother, foundling=foundling)

    def decide_from(
        self, child: RosterRow, father: Parent, mother: Parent, *, foundling: bool = False
    ) -> ChildDecision:
        """Steps 3 to 5 of :meth:`decide` for a child whose parents are judged."""
        if father.doubts or mother.doubts:  # else step 3 passes
            decided = step_3_conflict_or_unknown(child, father, mother, as_of=self.as_of)
            assert decided is not None
            return decided
        f, m = father.status, mother.status
        if foundling or f is None or m is None:
            return self._steps_4_and_5(child, father, mother, foundling)
        supported = child.status is Status.SUPPORTED
        key = (
            child.status,
            child.category,
            child.last_check_date if supported else None,
            f.group,
            f.basis,
            m.group,
            m.basis,
        )
        try:
            shape = self._shapes[key]
        except KeyError:  # the first child of this shape (2,690 in the 100k bench round)
            decided = self._steps_4_and_5(child, father, mother, foundling)
            # a step 5 EXIT names the day the basis was lost, read from these records
            exit_ = decided.decision is Decision.EXIT
            self._shapes[key] = None if exit_ else _Shape.learn(decided, f, m)
            return decided
        if shape is None:
            return self._steps_4_and_5(child, father, mother, foundling)
        return shape.give(child, f, m)

    def _steps_4_and_5(
        self, child: RosterRow, father: Parent, mother: Parent, foundling: bool
    ) -> ChildDecision:
        # basis_lost_on (step 5) reads the parents' records: equal for parents that share
        # a judgement
        return steps_4_and_5(
            child,
            father,
            mother,
            foundling=foundling,
            as_of=self.as_of,
            failed_sources=self.failed_sources,
        )

    def alike(
        self, child: RosterRow, adult: bool
    ) -> tuple[tuple[object, ...], Parent | None, Parent | None] | None:
        """What :meth:`decide` reads of ``child``, when that is little: children with the
        same key get the same decision, from the parents' judgements returned beside it
        (none for an adult). ``None``: decide this child on its own.

        An adult (with valid IDs): the status and the birth date. A child whose
        three IDs are valid, with no record of its own: the status, the category,
        the parents' judgements (shared between parents with equal records) and,
        for a supported child, the last check.
        """
        if child.problems or child.child_birth_date is None:
            return None
        status = child.status
        if adult:
            return (status, child.child_birth_date), None, None
        if child.father_id is None or child.mother_id is None or child.child_id in self.evidence:
            return None
        father = self.parent(Role.FATHER, child)
        mother = self.parent(Role.MOTHER, child)
        last = child.last_check_date if status is Status.SUPPORTED else None
        # a Parent's id: every judgement is kept alive by this judge's memos
        return (status, child.category, id(father), id(mother), last), father, mother


def _same_as(alike: ChildDecision, child: RosterRow) -> ChildDecision:
    """``alike``'s decision for ``child``: every field but the child, copied in C."""
    return _new(ChildDecision, (child, *alike[1:]))


def decide_children(
    rows: Sequence[RosterRow],
    evidence: Mapping[str, Sequence[EvidenceRow]],
    *,
    as_of: date,
    failed_sources: Sequence[str] = (),
) -> list[ChildDecision]:
    """Every child's decision, in roster order: the same as ``decide`` child by child."""
    judge = RoundJudge(evidence, as_of=as_of, failed_sources=failed_sources)
    # is_adult is cached per birth date: a few thousand distinct days in a roster
    adult = [b is not None and is_adult(b, as_of).value for b in (r.child_birth_date for r in rows)]
    decided: dict[tuple[object, ...], ChildDecision] = {}
    out: list[ChildDecision] = []
    for child, grown in zip(rows, adult, strict=True):
        seen = judge.alike(child, grown)
        if seen is None:
            out.append(judge.decide(child, grown))
            continue
        key, father, mother = seen
        alike = decided.get(key)
        if alike is not None:
            out.append(_same_as(alike, child))
            continue
        if father is None or mother is None:
            alike = judge.decide(child, grown)
        else:
            alike = judge.decide_from(child, father, mother)
        decided[key] = alike
        out.append(alike)
    return out
