"""Properties of the decision procedure (hypothesis)."""

from __future__ import annotations

from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.decisions import decide_all
from coordinator.records import Circumstance, Decision, EvidenceRow, RosterRow
from tests.rules_helpers import child, ev, make_id

D = date(2026, 11, 29)
CODES = [c.value for c in Circumstance if c is not Circumstance.SERVICE]
SOURCES = ["police/deaths", "justice/custody", "court/declarations", "dpf/cert"]
dates = st.one_of(st.none(), st.dates(min_value=date(2010, 1, 1), max_value=date(2032, 12, 31)))


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[RosterRow], list[EvidenceRow]]:
    rows = []
    for i in range(draw(st.integers(1, 4))):
        status = draw(st.sampled_from(["supported", "candidate"]))
        rows.append(
            child(
                born=draw(st.dates(min_value=date(2006, 1, 1), max_value=date(2026, 1, 1))),
                status=status,
                category=draw(st.sampled_from(["orphan", "de_facto"]))
                if status == "supported"
                else None,
                father=draw(st.sampled_from(["auto", None])),
                mother="auto",
                foundling=draw(st.booleans()),
                line=i + 2,
            )
        )
    people = [p for r in rows for p in (r.child_id, r.father_id, r.mother_id) if p]
    evidence = [
        ev(
            draw(st.sampled_from(people)),
            draw(st.sampled_from(CODES)),
            draw(dates),
            draw(dates),
            source=draw(st.sampled_from(SOURCES)),
            grade=draw(st.one_of(st.none(), st.integers(1, 4))),
            kind=draw(st.one_of(st.none(), st.integers(1, 7))),
        )
        for _ in range(draw(st.integers(0, 12)))
    ]
    return rows, evidence


def _summary(rows: list[RosterRow], evidence: list[EvidenceRow], **kw: object) -> list[object]:
    result = decide_all(rows, evidence, as_of=D, lang="en", **kw)  # type: ignore[arg-type]
    return [
        (d.decision, d.category, d.reason_texts("en"), d.next_check_due) for d in result.decisions
    ]


@settings(max_examples=300, deadline=None)
@given(cases(), st.sampled_from(SOURCES))
def test_a_failed_source_never_creates_an_exit_or_not_eligible(
    case: tuple[list[RosterRow], list[EvidenceRow]], failed: str
) -> None:
    rows, evidence = case
    before = decide_all(rows, evidence, as_of=D).decisions
    after = decide_all(rows, evidence, as_of=D, failed_sources=[failed]).decisions
    final = {Decision.EXIT, Decision.NOT_ELIGIBLE}
    for b, a in zip(before, after, strict=True):
        if a.decision in final:
            assert b.decision is a.decision  # only the age and death rules, which need no absence


@settings(max_examples=200, deadline=None)
@given(cases(), st.randoms(use_true_random=False))
def test_the_decision_does_not_depend_on_evidence_order(
    case: tuple[list[RosterRow], list[EvidenceRow]], rnd: object
) -> None:
    rows, evidence = case
    shuffled = list(evidence)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert _summary(rows, evidence) == _summary(rows, shuffled)


@settings(max_examples=200, deadline=None)
@given(cases(), st.sampled_from(CODES), dates, dates)
def test_evidence_for_an_unrelated_person_changes_nothing(
    case: tuple[list[RosterRow], list[EvidenceRow]], code: str, start: date | None, end: date | None
) -> None:
    rows, evidence = case
    stranger = make_id(date(1970, 1, 1), region="152921")
    assert _summary(rows, evidence) == _summary(rows, [*evidence, ev(stranger, code, start, end)])
