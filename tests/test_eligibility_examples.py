"""The eight worked examples of eligibility.md, verbatim (evaluation date 2026-11-29)."""

from __future__ import annotations

from datetime import date

from coordinator.decisions import decide_all
from coordinator.records import Category, Decision
from tests.rules_helpers import child, ev

D = date(2026, 11, 29)


def test_candidate_father_imprisoned_mother_dead_enrols_de_facto() -> None:
    c = child(born=date(2015, 4, 1))
    evidence = [
        ev(
            c.father_id or "",
            "IMPRISONED",
            date(2025, 3, 1),
            date(2029, 3, 1),
            source="justice/custody",
        ),
        ev(c.mother_id or "", "DEAD", date(2019, 7, 4), source="police/deaths"),
    ]
    [d] = decide_all([c], evidence, as_of=D, lang="en").decisions
    assert (d.decision, d.category) == (Decision.ENROL, Category.DE_FACTO)
    assert d.reason_texts("en") == [
        "father: IMPRISONED (justice/custody) since 2025-03-01, until 2029-03-01",
        "mother: DEAD (police/deaths) on 2019-07-04",
    ]
    assert d.next_check_due == date(2027, 5, 29)


def test_father_released_exit_from_november() -> None:
    c = child(born=date(2012, 2, 2), status="supported", category="de_facto")
    evidence = [
        ev(
            c.father_id or "",
            "IMPRISONED",
            date(2024, 1, 10),
            date(2026, 10, 10),
            source="justice/custody",
        ),
        ev(
            c.mother_id or "",
            "SEVERE_DISABILITY",
            date(2018, 5, 2),
            grade=2,
            kind=4,
            source="dpf/cert",
        ),
    ]
    [d] = decide_all([c], evidence, as_of=D).decisions
    assert d.decision is Decision.EXIT and d.category is None
    text = d.reason_texts("en")
    assert "father: IMPRISONED (justice/custody), released on 2026-10-10" in text
    assert text[-1] == "support stops from November 2026 (the month after the change)"
    assert d.reason_texts("zh")[-1] == "自2026年11月起停发(次月起)"


def test_de_facto_reclassified_orphan_after_death() -> None:
    c = child(born=date(2010, 5, 5), status="supported", category="de_facto")
    evidence = [
        ev(c.father_id or "", "DEAD", date(2026, 8, 15)),
        ev(c.mother_id or "", "DEAD", date(2021, 2, 2)),
    ]
    [d] = decide_all([c], evidence, as_of=D).decisions
    assert (d.decision, d.category) == (Decision.RECLASSIFY, Category.ORPHAN)


def test_pretrial_custody_counts_only_after_six_months() -> None:
    c = child(born=date(2014, 9, 9))
    evidence = [
        ev(c.father_id or "", "OTHER_RESTRICTION", date(2026, 7, 1), source="police/custody"),
        ev(c.mother_id or "", "LOST_CONTACT", date(2025, 1, 20), source="police/lost"),
    ]
    [d] = decide_all([c], evidence, as_of=D, lang="en").decisions
    assert (d.decision, d.category) == (Decision.NOT_ELIGIBLE, None)
    assert any("counts only from 2027-01-01" in t for t in d.reason_texts("en"))


def test_eighteenth_birthday_is_still_covered() -> None:
    c = child(born=date(2008, 11, 29), status="supported", category="orphan")
    evidence = [
        ev(c.father_id or "", "DEAD", date(2015, 1, 1)),
        ev(c.mother_id or "", "DEAD", date(2015, 1, 1)),
    ]
    [d] = decide_all([c], evidence, as_of=D).decisions
    assert (d.decision, d.category) == (Decision.CONTINUE, Category.ORPHAN)


def test_missing_mother_in_rehabilitation_is_a_conflict() -> None:
    c = child(born=date(2011, 1, 1), status="supported", category="orphan")
    evidence = [
        ev(c.father_id or "", "DEAD", date(2016, 3, 3), source="police/deaths"),
        ev(c.mother_id or "", "MISSING", date(2019, 5, 5), source="court/declarations"),
        ev(
            c.mother_id or "",
            "DRUG_REHAB",
            date(2026, 9, 1),
            date(2026, 12, 1),
            source="police/rehab",
        ),
    ]
    [d] = decide_all([c], evidence, as_of=D, lang="en").decisions
    assert d.decision is Decision.REVIEW and d.conflict
    [text] = d.reason_texts("en")[:1]
    assert text.startswith("mother: conflicting records: MISSING (court/declarations)")
    assert "DRUG_REHAB (police/rehab)" in text


def test_failed_source_gives_review_never_exit() -> None:
    c = child(born=date(2013, 3, 3), status="supported", category="de_facto")
    evidence = [ev(c.mother_id or "", "SEVERE_ILLNESS", source="health/illness")]
    [d] = decide_all(
        [c], evidence, as_of=D, failed_sources=["justice/custody"], lang="en"
    ).decisions
    assert d.decision is Decision.REVIEW
    assert "justice/custody" in d.reason_texts("en")[0]
    assert d.reason_texts("en")[0].startswith("evidence unavailable")


def test_foundling_enrols_as_orphan() -> None:
    c = child(born=date(2024, 6, 1), father=None, mother=None, foundling=True)
    [d] = decide_all([c], [], as_of=D).decisions
    assert (d.decision, d.category) == (Decision.ENROL, Category.ORPHAN)
