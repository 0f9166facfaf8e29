"""Table-driven tests of each rule in eligibility.md, written from the spec text.

Boundary dates sit on both sides of every threshold.
"""

from __future__ import annotations

import string
from datetime import date, timedelta

import pytest

from coordinator.circumstances import (
    Group,
    add_months,
    add_years,
    eighteenth_birthday,
    is_adult,
    is_current,
)
from coordinator.decisions import RoundDecisions, decide_all, index_evidence
from coordinator.eligibility import (
    ParentStatus,
    category,
    decide,
    has_conflict,
    next_check_due,
    parent_group,
)
from coordinator.reasons import TEMPLATES, DisabilityCategory, Month, reason, render
from coordinator.records import (
    Category,
    Circumstance,
    Decision,
    EvidenceRow,
    Role,
    RosterRow,
    RowProblem,
)
from tests.rules_helpers import child, ev

D = date(2026, 11, 29)
P = "150402198501010011"
DAY = timedelta(days=1)
C = Circumstance


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (
            date(2026, 8, 31),
            6,
            date(2027, 2, 28),
        ),  # "31 August + 6 months = the last day of February"
        (date(2027, 8, 31), 6, date(2028, 2, 29)),  # ... in a leap year
        (date(2026, 5, 29), 6, date(2026, 11, 29)),
        (date(2026, 7, 1), 6, date(2027, 1, 1)),
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
        (date(2026, 12, 31), 12, date(2027, 12, 31)),
    ],
)
def test_add_months(start: date, months: int, expected: date) -> None:
    assert add_months(start, months) == expected


@pytest.mark.parametrize(
    ("start", "years", "expected"),
    [
        (date(2016, 2, 29), 10, date(2026, 3, 1)),  # 29 February -> 1 March
        (date(2016, 2, 29), 8, date(2024, 2, 29)),
        (date(2016, 5, 2), 10, date(2026, 5, 2)),
    ],
)
def test_add_years_follows_the_birthday_rule(start: date, years: int, expected: date) -> None:
    assert add_years(start, years) == expected


@pytest.mark.parametrize(
    ("born", "on", "adult"),
    [
        (date(2008, 11, 29), date(2026, 11, 29), False),  # the 18th birthday itself: still covered
        (date(2008, 11, 29), date(2026, 11, 30), True),  # 18 from the day after
        (date(2008, 2, 29), date(2026, 3, 1), False),  # 29 Feb birthday falls on 1 March
        (date(2008, 2, 29), date(2026, 3, 2), True),
        (date(2008, 2, 29), date(2026, 2, 28), False),
    ],
)
def test_is_adult(born: date, on: date, adult: bool) -> None:
    assert is_adult(born, on).value is adult
    assert bool(is_adult(born, on).reasons) is adult


def test_eighteenth_birthday_of_a_leap_day() -> None:
    assert eighteenth_birthday(date(2008, 2, 29)) == date(2026, 3, 1)


CURRENT_CASES = [
    # terms: at least 6 months, while they last
    ("IMPRISONED", date(2026, 5, 31), date(2026, 11, 30), None, None, D, True),
    (
        "IMPRISONED",
        date(2026, 1, 31),
        date(2026, 7, 31),
        None,
        None,
        date(2026, 5, 1),
        True,
    ),  # exactly 6 months
    (
        "IMPRISONED",
        date(2026, 1, 31),
        date(2026, 7, 30),
        None,
        None,
        date(2026, 5, 1),
        False,
    ),  # one day short
    ("DRUG_REHAB", date(2026, 9, 1), date(2026, 12, 1), None, None, D, False),  # 3-month term
    ("IMPRISONED", date(2024, 1, 1), D, None, None, D, False),  # released on D
    ("IMPRISONED", date(2024, 1, 1), D + DAY, None, None, D, True),
    ("IMPRISONED", D, None, None, None, D, True),  # starts on D, open (life / unrecorded)
    ("IMPRISONED", D + DAY, None, None, None, D, False),  # starts after D
    ("DRUG_REHAB", date(2020, 1, 1), None, None, None, D, True),
    (
        "OTHER_RESTRICTION",
        date(2026, 5, 29),
        None,
        None,
        None,
        D,
        True,
    ),  # open: from start + 6 months
    ("OTHER_RESTRICTION", date(2026, 5, 30), None, None, None, D, False),
    (
        "OTHER_RESTRICTION",
        date(2026, 7, 1),
        date(2027, 7, 1),
        None,
        None,
        D,
        True,
    ),  # closed term >= 6m
    ("OTHER_RESTRICTION", date(2026, 7, 1), date(2026, 12, 31), None, None, D, False),  # under 6m
    ("LOST_CONTACT", date(2026, 5, 29), None, None, None, D, True),
    ("LOST_CONTACT", date(2026, 5, 30), None, None, None, D, False),
    ("LOST_CONTACT", date(2026, 8, 31), None, None, None, date(2027, 2, 27), False),
    ("LOST_CONTACT", date(2026, 8, 31), None, None, None, date(2027, 2, 28), True),  # month end
    ("LOST_CONTACT", date(2020, 1, 1), D, None, None, D, False),  # contact regained on D
    ("LOST_CONTACT", date(2020, 1, 1), D + DAY, None, None, D, True),
    # from the start date until an end date on or before D
    ("DEAD", D, None, None, None, D, True),
    ("DEAD", D + DAY, None, None, None, D, False),
    ("DEAD", date(2020, 1, 1), D, None, None, D, False),  # declaration revoked
    ("MISSING", date(2020, 1, 1), D + DAY, None, None, D, True),
    ("SEVERE_ILLNESS", date(2026, 11, 1), None, None, None, D, True),
    ("GUARDIANSHIP_REVOKED", date(2020, 1, 1), D, None, None, D, False),  # restored
    ("DEPORTED", date(2020, 1, 1), None, None, None, D, True),
    # certificates: valid from issue until expiry (end, or issue + 10 years), expiry day invalid
    ("SEVERE_DISABILITY", date(2016, 11, 29), None, 4, 2, D, False),
    ("SEVERE_DISABILITY", date(2016, 11, 30), None, 4, 2, D, True),
    ("SEVERE_DISABILITY", date(2016, 2, 29), None, 1, 1, date(2026, 2, 28), True),
    (
        "SEVERE_DISABILITY",
        date(2016, 2, 29),
        None,
        1,
        1,
        date(2026, 3, 1),
        False,
    ),  # 29 Feb -> 1 Mar
    ("SEVERE_DISABILITY", date(2020, 1, 1), D, 4, 1, D, False),  # end date given: expiry day
    ("SEVERE_DISABILITY", date(2020, 1, 1), D + DAY, 4, 1, D, True),
    ("SEVERE_DISABILITY", D + DAY, None, 4, 1, D, False),  # not issued yet
    ("SEVERE_DISABILITY", date(2020, 1, 1), None, 4, 3, D, False),  # grade 3 limb: not severe
    ("SEVERE_DISABILITY", date(2020, 1, 1), None, 5, 3, D, True),  # grade 3 intellectual
    ("SEVERE_DISABILITY", date(2020, 1, 1), None, 6, 4, D, True),  # grade 4 mental
    ("SEVERE_DISABILITY", date(2020, 1, 1), None, 7, 4, D, False),  # grade 4 multiple
    ("SEVERE_DISABILITY", date(2020, 1, 1), None, None, 3, D, True),  # empty category: filtered
    ("SEVERE_DISABILITY", date(2020, 1, 1), None, 4, None, D, True),  # empty grade: filtered
    # no dates: a membership-only set already applied the thresholds
    *((code.value, None, None, None, None, D, True) for code in C if code is not C.SERVICE),
    # ...but a grade and category it does carry still decide severity (review finding 15)
    ("SEVERE_DISABILITY", None, None, 4, 3, D, False),  # grade 3 limb, undated
    ("SEVERE_DISABILITY", None, None, 5, 3, D, True),  # grade 3 intellectual, undated
]


@pytest.mark.parametrize(("code", "start", "end", "kind", "grade", "on", "expected"), CURRENT_CASES)
def test_is_current(
    code: str,
    start: date | None,
    end: date | None,
    kind: int | None,
    grade: int | None,
    on: date,
    expected: bool,
) -> None:
    ruling = is_current(ev(P, code, start, end, grade=grade, kind=kind), on)
    assert ruling.value is expected
    assert len(ruling.reasons) == 1


@pytest.mark.parametrize(
    ("rows", "conflict"),
    [
        (
            [("DEAD", date(2016, 1, 1), None), ("DRUG_REHAB", date(2026, 9, 1), date(2026, 12, 1))],
            True,
        ),
        (
            [("MISSING", date(2016, 1, 1), None), ("IMPRISONED", None, None)],
            True,
        ),  # no dates: in force
        ([("DEAD", date(2016, 1, 1), None), ("OTHER_RESTRICTION", date(2026, 11, 1), None)], True),
        (
            [("DEAD", date(2016, 1, 1), None), ("IMPRISONED", date(2020, 1, 1), D)],
            False,
        ),  # ended on D
        ([("DEAD", date(2016, 1, 1), None), ("IMPRISONED", D + DAY, None)], False),  # not begun
        ([("DEAD", D + DAY, None), ("IMPRISONED", date(2020, 1, 1), None)], False),  # G not current
        ([("MISSING", date(2019, 5, 5), None), ("LOST_CONTACT", date(2018, 1, 1), None)], False),
        ([("SEVERE_ILLNESS", None, None), ("IMPRISONED", None, None)], False),
    ],
)
def test_has_conflict(rows: list[tuple[str, date | None, date | None]], conflict: bool) -> None:
    ruling = has_conflict(Role.MOTHER, [ev(P, c, s, e) for c, s, e in rows], D)
    assert ruling.value is conflict
    assert bool(ruling.reasons) is conflict


@pytest.mark.parametrize(
    ("codes", "group"),
    [
        (["DEAD"], Group.GONE),
        (["MISSING", "SEVERE_ILLNESS"], Group.GONE),  # judged by the strongest: G
        (["SEVERE_ILLNESS"], Group.QUALIFYING),
        (["DEPORTED", "LOST_CONTACT"], Group.QUALIFYING),
        ([], None),
    ],
)
def test_parent_group(codes: list[str], group: Group | None) -> None:
    status = parent_group(Role.FATHER, [ev(P, c) for c in codes], D)
    assert status.group is group
    assert status.reasons


def test_parent_group_ignores_records_that_do_not_count() -> None:
    status = parent_group(Role.FATHER, [ev(P, "DEAD", D + DAY)], D)
    assert status.group is None and len(status.lapsed) == 1


def _status(group: Group | None) -> ParentStatus:
    return ParentStatus(Role.FATHER, group, frozenset(), (), ())


G, Q = Group.GONE, Group.QUALIFYING


@pytest.mark.parametrize(
    ("father", "mother", "expected"),
    [
        (G, G, Category.ORPHAN),
        (G, Q, Category.DE_FACTO),
        (Q, G, Category.DE_FACTO),
        (Q, Q, Category.DE_FACTO),
        (G, None, None),
        (None, Q, None),
        (None, None, None),
    ],
)
def test_category(father: Group | None, mother: Group | None, expected: Category | None) -> None:
    assert category(_status(father), _status(mother), foundling=False).value is expected


def test_category_foundling_is_orphan() -> None:
    assert category(None, None, foundling=True).value is Category.ORPHAN


def test_orphan_takes_precedence_when_the_other_parent_is_in_g_and_q() -> None:
    c = child(born=date(2015, 1, 1))
    evidence = [
        ev(c.father_id or "", "DEAD", date(2020, 1, 1)),
        ev(c.mother_id or "", "MISSING", date(2021, 1, 1)),
        ev(c.mother_id or "", "SEVERE_ILLNESS", date(2021, 1, 1)),
    ]
    [d] = decide_all([c], evidence, as_of=D).decisions
    assert (d.decision, d.category) == (Decision.ENROL, Category.ORPHAN)


def _decide(
    c_kwargs: dict[str, object],
    father: list[tuple[str, date | None, date | None]],
    mother: list[tuple[str, date | None, date | None]],
    **kw: object,
) -> tuple[Decision, Category | None]:
    c = child(**c_kwargs)  # type: ignore[arg-type]
    rows = [ev(c.father_id or "", x, s, e) for x, s, e in father]
    rows += [ev(c.mother_id or "", x, s, e) for x, s, e in mother]
    index, _ = index_evidence(rows)
    d = decide(c, index, as_of=D, **kw)  # type: ignore[arg-type]
    return d.decision, d.category


SUP_DF = {"born": date(2012, 1, 1), "status": "supported", "category": "de_facto"}
SUP_OR = {"born": date(2012, 1, 1), "status": "supported", "category": "orphan"}
CAND = {"born": date(2012, 1, 1)}
DEAD = [("DEAD", date(2020, 1, 1), None)]
ILL = [("SEVERE_ILLNESS", date(2020, 1, 1), None)]


@pytest.mark.parametrize(
    ("kwargs", "father", "mother", "extra", "expected"),
    [
        (CAND, DEAD, ILL, {}, (Decision.ENROL, Category.DE_FACTO)),
        (CAND, DEAD, DEAD, {}, (Decision.ENROL, Category.ORPHAN)),
        (CAND, ILL, [], {}, (Decision.NOT_ELIGIBLE, None)),
        (CAND, ILL, [], {"failed_sources": ["court/x"]}, (Decision.REVIEW, None)),
        (SUP_DF, ILL, ILL, {}, (Decision.CONTINUE, Category.DE_FACTO)),
        (SUP_OR, DEAD, DEAD, {}, (Decision.CONTINUE, Category.ORPHAN)),
        (SUP_OR, DEAD, ILL, {}, (Decision.RECLASSIFY, Category.DE_FACTO)),
        (SUP_DF, DEAD, DEAD, {}, (Decision.RECLASSIFY, Category.ORPHAN)),
        (SUP_DF, ILL, [], {}, (Decision.EXIT, None)),
        (SUP_DF, [], [], {}, (Decision.EXIT, None)),
        (SUP_DF, [], [], {"failed_sources": ["court/x"]}, (Decision.REVIEW, None)),
        # a category found despite a failed source is still decided
        (SUP_DF, ILL, ILL, {"failed_sources": ["court/x"]}, (Decision.CONTINUE, Category.DE_FACTO)),
        # ...an upgrade rests on matches found, so it stands
        (
            SUP_DF,
            DEAD,
            DEAD,
            {"failed_sources": ["court/x"]},
            (Decision.RECLASSIFY, Category.ORPHAN),
        ),
        # ...but orphan -> de facto rests on a death record not found: the failed source
        # may hold it, so REVIEW (a failure stops conclusions from the absence of a match)
        (SUP_OR, DEAD, ILL, {"failed_sources": ["court/x"]}, (Decision.REVIEW, None)),
        # conflicts: REVIEW even when the category would be clear
        (
            SUP_OR,
            [*DEAD, ("IMPRISONED", date(2026, 10, 1), date(2026, 12, 1))],
            DEAD,
            {},
            (Decision.REVIEW, None),
        ),
        # MISSING with LOST_CONTACT: no conflict
        (
            SUP_OR,
            [("MISSING", date(2019, 1, 1), None), ("LOST_CONTACT", date(2018, 1, 1), None)],
            DEAD,
            {},
            (Decision.CONTINUE, Category.ORPHAN),
        ),
    ],
)
def test_decide(
    kwargs: dict[str, object],
    father: list[tuple[str, date | None, date | None]],
    mother: list[tuple[str, date | None, date | None]],
    extra: dict[str, object],
    expected: tuple[Decision, Category | None],
) -> None:
    assert _decide(kwargs, father, mother, **extra) == expected


@pytest.mark.parametrize("status", ["supported", "candidate"])
def test_unknown_parent_gives_review(status: str) -> None:
    c = child(
        born=date(2015, 1, 1),
        status=status,
        category="de_facto" if status == "supported" else None,
        mother=None,
    )
    [d] = decide_all(
        [c], [ev(c.father_id or "", "DEAD", date(2020, 1, 1))], as_of=D, lang="en"
    ).decisions
    assert d.decision is Decision.REVIEW
    assert "mother: no ID number on the roster (unknown parent)" in d.reason_texts("en")


def test_foundling_mark_next_to_a_parent_id_is_ignored() -> None:
    c = child(born=date(2024, 1, 1), mother=None, foundling=True)
    [d] = decide_all([c], [], as_of=D).decisions
    assert d.decision is Decision.REVIEW


def test_not_a_foundling_without_the_mark() -> None:
    c = child(born=date(2024, 1, 1), father=None, mother=None)
    assert decide_all([c], [], as_of=D).decisions[0].decision is Decision.REVIEW


def test_invalid_parent_id_is_an_unknown_parent_even_for_a_foundling() -> None:
    base = child(born=date(2024, 1, 1), father=None, mother=None, foundling=True)
    problem = RowProblem("roster.csv", 2, "father_id", "the check character does not match")
    c = base._replace(problems=(problem,))
    [d] = decide_all([c], [], as_of=D, lang="en").decisions
    assert d.decision is Decision.REVIEW
    assert d.reason_texts("en")[0].startswith(
        "father: the ID number in column father_id is invalid"
    )


def test_invalid_child_id_gives_review_naming_column_and_problem() -> None:
    base = child(born=date(2015, 1, 1), child_id=None)
    problem = RowProblem("roster.csv", 2, "child_id", "wrong length for an identity number")
    c = base._replace(problems=(problem,))
    [d] = decide_all([c], [], as_of=D, lang="en").decisions
    assert d.decision is Decision.REVIEW
    assert d.reason_texts("en") == [
        "column child_id: invalid identity number (wrong length for an identity number); "
        "correct it and evaluate again"
    ]


@pytest.mark.parametrize(
    ("status", "born", "expected", "stop"),
    [
        ("supported", date(2008, 11, 28), Decision.EXIT, "December 2026"),  # adult from 29 Nov
        ("supported", date(2008, 10, 31), Decision.EXIT, "December 2026"),  # adult from 1 Nov
        ("supported", date(2008, 10, 30), Decision.EXIT, "November 2026"),  # adult from 31 Oct
        ("candidate", date(2008, 11, 28), Decision.NOT_ELIGIBLE, None),
        ("supported", date(2008, 11, 29), Decision.CONTINUE, None),
    ],
)
def test_the_18_rule_comes_first(
    status: str, born: date, expected: Decision, stop: str | None
) -> None:
    c = child(born=born, status=status, category="orphan" if status == "supported" else None)
    evidence = [
        ev(c.father_id or "", "DEAD", date(2015, 1, 1)),
        ev(c.mother_id or "", "DEAD", date(2015, 1, 1)),
    ]
    [d] = decide_all([c], evidence, as_of=D, failed_sources=["x/y"], lang="en").decisions
    assert d.decision is expected
    if stop:
        assert d.reason_texts("en")[0].startswith(
            f"turned 18 on {eighteenth_birthday(born).isoformat()}"
        )
        assert d.reason_texts("en")[-1] == f"support stops from {stop} (the month after the change)"


@pytest.mark.parametrize(
    ("status", "death", "expected"),
    [
        ("supported", date(2026, 10, 3), Decision.EXIT),
        ("candidate", date(2026, 10, 3), Decision.NOT_ELIGIBLE),
        ("supported", D + DAY, Decision.CONTINUE),  # not current yet
    ],
)
def test_childs_own_death(status: str, death: date, expected: Decision) -> None:
    c = child(
        born=date(2014, 1, 1), status=status, category="orphan" if status == "supported" else None
    )
    evidence = [
        ev(c.child_id or "", "DEAD", death, source="police/deaths"),
        ev(c.father_id or "", "DEAD", date(2015, 1, 1)),
        ev(c.mother_id or "", "DEAD", date(2015, 1, 1)),
    ]
    [d] = decide_all([c], evidence, as_of=D, lang="en").decisions
    assert d.decision is (
        Decision.ENROL if expected is Decision.CONTINUE and status == "candidate" else expected
    )
    if expected is Decision.EXIT:
        assert (
            d.reason_texts("en")[-1]
            == "support stops from November 2026 (the month after the change)"
        )


def test_exit_names_each_lapsed_circumstance_and_the_certificate_expiry() -> None:
    c = child(born=date(2012, 1, 1), status="supported", category="de_facto")
    evidence = [
        ev(c.father_id or "", "SEVERE_ILLNESS", date(2020, 1, 1), source="health/ill"),
        ev(
            c.mother_id or "",
            "SEVERE_DISABILITY",
            date(2016, 9, 30),
            grade=1,
            kind=4,
            source="dpf/cert",
        ),
    ]
    [d] = decide_all([c], evidence, as_of=D, lang="en").decisions
    texts = d.reason_texts("en")
    assert d.decision is Decision.EXIT
    assert (
        "mother: SEVERE_DISABILITY (dpf/cert), grade 1, category 4, "
        "certificate expired on 2026-09-30" in texts
    )
    assert any("ceased on 2026-09-30" in t for t in texts)
    assert texts[-1] == "support stops from October 2026 (the month after the change)"


def test_exit_month_is_after_the_earliest_change_that_ended_the_basis() -> None:
    c = child(born=date(2012, 1, 1), status="supported", category="de_facto")
    evidence = [
        ev(c.father_id or "", "IMPRISONED", date(2024, 1, 1), date(2026, 3, 15)),
        ev(c.mother_id or "", "SEVERE_ILLNESS", date(2020, 1, 1), date(2026, 10, 1)),
    ]
    [d] = decide_all([c], evidence, as_of=D, lang="en").decisions
    assert d.decision is Decision.EXIT
    assert d.reason_texts("en")[-1] == "support stops from April 2026 (the month after the change)"


@pytest.mark.parametrize(
    ("codes", "last", "enrolling", "expected"),
    [
        ({C.IMPRISONED}, date(2026, 8, 31), False, date(2027, 2, 28)),
        (
            {C.LOST_CONTACT, C.SEVERE_DISABILITY},
            date(2026, 1, 1),
            False,
            date(2026, 7, 1),
        ),  # shorter wins
        ({C.SEVERE_ILLNESS}, date(2026, 1, 1), False, date(2027, 1, 1)),
        ({C.MISSING, C.DEAD}, date(2026, 1, 1), False, date(2027, 1, 1)),
        ({C.DEAD}, date(2026, 1, 1), False, date(2027, 1, 1)),  # only DEAD: yearly
        ({C.GUARDIANSHIP_REVOKED, C.DEPORTED}, date(2026, 1, 1), False, date(2027, 1, 1)),
        (set(), date(2026, 1, 1), False, date(2027, 1, 1)),  # foundling: yearly
        ({C.IMPRISONED}, None, True, date(2027, 5, 29)),  # new enrolment: from the evaluation date
        ({C.DEAD}, None, True, date(2027, 11, 29)),
        ({C.IMPRISONED}, None, False, D),  # supported, no check on record: due now
    ],
)
def test_next_check_due(
    codes: set[Circumstance], last: date | None, enrolling: bool, expected: date
) -> None:
    assert (
        next_check_due(frozenset(codes), last_check=last, as_of=D, enrolling=enrolling).value
        == expected
    )


@pytest.mark.parametrize(
    ("last", "overdue"),
    [
        (date(2026, 5, 28), True),  # due 2026-11-28, before D
        (date(2026, 5, 29), False),  # due on D itself: not overdue yet
        (None, True),  # no check on record
    ],
)
def test_overdue_checks(last: date | None, overdue: bool) -> None:
    c = child(born=date(2012, 1, 1), status="supported", category="de_facto", last_check=last)
    evidence = [
        ev(c.father_id or "", "IMPRISONED", date(2025, 1, 1)),
        ev(c.mother_id or "", "DEAD", date(2020, 1, 1)),
    ]
    result = decide_all([c], evidence, as_of=D)
    assert result.decisions[0].decision is Decision.CONTINUE
    assert result.decisions[0].overdue is overdue
    assert result.overdue_checks == ([c.child_id] if overdue else [])


def test_coverage_gaps() -> None:
    kept = child(born=date(2012, 1, 1), status="supported", category="orphan")
    insured = child(born=date(2012, 1, 1), status="supported", category="orphan")
    leaving = child(born=date(2012, 1, 1), status="supported", category="orphan")
    new = child(born=date(2012, 1, 1))
    evidence = [
        ev(p or "", "DEAD", date(2015, 1, 1))
        for c in (kept, insured, new)
        for p in (c.father_id, c.mother_id)
    ]
    evidence.append(ev(insured.child_id or "", "SERVICE", source="medical_insurance/enrolled"))
    result = decide_all(
        [kept, insured, leaving, new],
        evidence,
        as_of=D,
        service_sources=["education/enrolled", "rehab/needs"],
        failed_sources=["rehab/needs"],
    )
    # the failed set is a service set: it removes only its own list, so "leaving" (no
    # evidence left) exits as it would with no failure (eligibility.md, issue 17 item 12)
    assert [d.decision for d in result.decisions] == [
        Decision.CONTINUE,
        Decision.CONTINUE,
        Decision.EXIT,
        Decision.ENROL,
    ]
    assert result.coverage_gaps == {
        "education/enrolled": [kept.child_id, insured.child_id],  # declared, no matches
        "medical_insurance/enrolled": [kept.child_id],
    }
    without = decide_all(
        [kept, insured, leaving, new],
        evidence[:-1],
        as_of=D,
        service_sources=["education/enrolled", "rehab/needs"],
        failed_sources=["rehab/needs"],
    )
    assert [d.decision for d in without.decisions] == [d.decision for d in result.decisions]


NEEDS = "disabled-persons-federation/rehab_needs"


def _needs_case(kind: str) -> tuple[RosterRow, list[EvidenceRow]]:
    """One child of the needs table and the records that decide it (no SERVICE row)."""
    status, category_ = {
        "enrol": ("candidate", None),
        "not_eligible": ("candidate", None),
        "reclassify": ("supported", "de_facto"),
    }.get(kind, ("supported", "orphan"))
    born = date(2005, 1, 1) if kind == "adult" else date(2012, 1, 1)
    c = child(
        born=born, status=status, category=category_, father=None if kind == "review" else "auto"
    )
    dead = kind in ("continue", "reclassify", "review", "enrol")
    evidence = [ev(p, "DEAD", date(2015, 1, 1)) for p in (c.father_id, c.mother_id) if p and dead]
    return c, evidence


@pytest.mark.parametrize(
    ("kind", "decision", "listed"),
    [
        ("continue", Decision.CONTINUE, True),
        ("reclassify", Decision.RECLASSIFY, True),
        ("review", Decision.REVIEW, True),  # support continues while reviewed
        ("enrol", Decision.ENROL, False),  # not covered yet
        ("exit", Decision.EXIT, False),  # leaving
        ("adult", Decision.EXIT, False),
        ("not_eligible", Decision.NOT_ELIGIBLE, False),
    ],
)
def test_service_needs_list_matched_covered_children(
    kind: str, decision: Decision, listed: bool
) -> None:
    c, evidence = _needs_case(kind)
    assert c.child_id is not None
    matched = [*evidence, ev(c.child_id, "SERVICE", source=NEEDS)]
    result = decide_all([c], matched, as_of=D, service_need_sources=[NEEDS])
    assert [d.decision for d in result.decisions] == [decision]
    assert result.service_needs == {NEEDS: [c.child_id] if listed else []}
    assert result.service_need_sources == (NEEDS,)
    assert result.coverage_gaps == {} and result.service_sources == ()  # not a gap source
    # needs never change a decision: the same without the set at all
    assert [d.decision for d in decide_all([c], evidence, as_of=D).decisions] == [decision]


def test_service_needs_unmatched_nameless_and_failed() -> None:
    matched, _ = _needs_case("continue")
    unmatched, _ = _needs_case("continue")
    nameless = child(born=date(2012, 1, 1), status="supported", category="orphan", child_id=None)
    rows = [matched, unmatched, nameless]
    evidence = [
        ev(p or "", "DEAD", date(2015, 1, 1)) for c in rows for p in (c.father_id, c.mother_id)
    ]
    evidence.append(ev(matched.child_id or "", "SERVICE", source=NEEDS))
    evidence.append(ev(unmatched.child_id or "", "SERVICE", source="medical_insurance/enrolled"))
    result = decide_all(rows, evidence, as_of=D, service_need_sources=[NEEDS, "education/needs"])
    assert [d.decision for d in result.decisions] == [Decision.CONTINUE] * 3
    # a declared set without matches lists nobody; the coverage set is still a coverage set
    assert result.service_needs == {"education/needs": [], NEEDS: [matched.child_id]}
    assert result.coverage_gaps == {"medical_insurance/enrolled": [matched.child_id]}
    document = result.to_json()
    assert document["service_needs"] == {"education/needs": [], NEEDS: [matched.child_id]}
    # a failed needs set gives no list, even with matches delivered before it failed
    failed = decide_all(
        rows, evidence, as_of=D, failed_sources=[NEEDS], service_need_sources=[NEEDS]
    )
    assert failed.service_needs == {} and failed.service_need_sources == (NEEDS,)
    assert NEEDS not in failed.coverage_gaps
    assert failed.to_json()["service_needs"] == {}
    # without the declaration its SERVICE rows read as a coverage set (rules evaluate
    # must be told, as the round is by the node's capabilities)
    undeclared = decide_all(rows, evidence, as_of=D)
    assert undeclared.service_needs == {} and NEEDS in undeclared.coverage_gaps
    with pytest.raises(ValueError, match="both as service coverage and service needs"):
        decide_all(rows, evidence, as_of=D, service_sources=[NEEDS], service_need_sources=[NEEDS])


def test_every_template_has_both_languages_with_the_same_placeholders() -> None:
    def fields(text: str) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}

    for key, (zh, en) in TEMPLATES.items():
        assert fields(zh) == fields(en), key


def test_each_kind_of_argument_renders_in_both_languages() -> None:
    fact = reason(
        "fact_certificate",
        code=Circumstance.SEVERE_DISABILITY,
        source="dpf/cert",
        grade=reason("grade", grade=3, category=DisabilityCategory(5)),
        start=date(2018, 5, 2),
        expiry=date(2028, 5, 2),
    )
    said = reason("parent_fact", role=Role.MOTHER, fact=fact)
    assert render(said) == "母亲:重残(dpf/cert),智力3级,残疾人证2018年5月2日核发,2028年5月2日到期"
    assert render(said, "en") == (
        "mother: SEVERE_DISABILITY (dpf/cert), grade 3, category 5, "
        "certificate issued 2018-05-02, expires on 2028-05-02"
    )
    unknown_kind = reason("grade", grade=1, category=DisabilityCategory(9))
    assert render(unknown_kind) == "91级" and render(unknown_kind, "en") == "grade 1, category 9"
    stop = reason("stops_from", stop=Month(2026, 12))
    assert render(stop) == "自2026年12月起停发(次月起)"
    assert render(stop, "en") == "support stops from December 2026 (the month after the change)"
    every = reason("check_every", months=6, codes=("IMPRISONED", "MISSING"))
    assert render(every) == "每6个月核查一次(IMPRISONED、MISSING)"
    assert render(every, "en") == "checked every 6 months (IMPRISONED, MISSING)"
    moved = reason("reclassified", old=Category.DE_FACTO, new=Category.ORPHAN)
    assert render(moved) == "原认定为事实无人抚养儿童,现符合孤儿"
    assert render(moved, "en") == "recorded as de facto unsupported child, now meets orphan"
    # a str argument is written as is, even when it spells an enum value
    invalid = reason("parent_invalid_id", role=Role.FATHER, column="father_id", problem="DEAD")
    assert render(invalid, "en") == (
        "father: the ID number in column father_id is invalid (DEAD); treated as unknown"
    )
    with pytest.raises(KeyError):
        render(reason("fact_on", code=Circumstance.DEAD, source="police/deaths"))


def test_decisions_json_has_one_entry_per_row_in_order() -> None:
    rows = [child(born=date(2012, 1, 1), line=i) for i in range(2, 6)]
    nameless = child(born=date(2020, 2, 2), child_id=None, father=None, mother=None, foundling=True)
    document = decide_all([*rows, nameless], [], as_of=D).to_json("r-1")
    assert document["round_id"] == "r-1" and document["as_of"] == "2026-11-29"
    entries = document["decisions"]
    assert isinstance(entries, list)
    assert [e["child_id"] for e in entries] == [r.child_id for r in rows] + [None]
    assert entries[-1]["child_birth_date"] == "2020-02-02"
    assert entries[-1]["decision"] == "ENROL" and entries[-1]["category"] == "orphan"
    assert set(entries[0]) == {
        "child_id",
        "child_name",
        "decision",
        "category",
        "reasons",
        "next_check_due",
    }


@pytest.mark.parametrize("kind", ["service_sources", "service_need_sources"])
def test_failed_service_set_changes_no_decision(kind: str) -> None:
    """A service dataset is not an evidence dataset (eligibility.md, "Service coverage
    checks"): its failure removes its own list and turns no EXIT or NOT_ELIGIBLE into
    REVIEW; an evidence set's failure still does."""
    leaving = child(born=date(2012, 1, 1), status="supported", category="de_facto")
    refused = child(born=date(2014, 1, 1))
    kept = child(born=date(2012, 1, 1), status="supported", category="orphan")
    evidence = [ev(p or "", "DEAD", date(2015, 1, 1)) for p in (kept.father_id, kept.mother_id)]
    rows = [leaving, refused, kept]
    service = "medical_insurance/enrolled"
    gaps = [service] if kind == "service_sources" else []
    needs = [service] if kind == "service_need_sources" else []

    def run(failed: list[str]) -> RoundDecisions:
        return decide_all(
            rows,
            evidence,
            as_of=D,
            failed_sources=failed,
            service_sources=gaps,
            service_need_sources=needs,
        )

    clean = run([])
    failed = run([service])
    decided = [d.decision for d in failed.decisions]
    assert decided == [Decision.EXIT, Decision.NOT_ELIGIBLE, Decision.CONTINUE]
    assert decided == [d.decision for d in clean.decisions]
    assert [d.reason_texts() for d in failed.decisions] == [
        d.reason_texts() for d in clean.decisions
    ]
    assert failed.failed_sources == (service,)  # still reported as failed
    assert failed.coverage_gaps == {} and failed.service_needs == {}  # its list is missing
    both = run([service, "court/declarations"])
    assert [d.decision for d in both.decisions] == [
        Decision.REVIEW,
        Decision.REVIEW,
        Decision.CONTINUE,
    ]
    reasons = both.decisions[0].reason_texts("en")
    assert "court/declarations" in reasons[0] and service not in reasons[0]
