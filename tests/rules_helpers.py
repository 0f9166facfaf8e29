"""Builders shared by the eligibility, records, CLI and report tests."""

from __future__ import annotations

from datetime import date
from itertools import count

from coordinator.records import (
    Category,
    Circumstance,
    EvidenceRow,
    RosterRow,
    Status,
)
from psi.identifiers import check_character, identity_number

_sequence = count(11)


def make_id(birth: date, *, region: str = "150402", sex: str = "M", seq: int | None = None) -> str:
    """A valid 18-character identity number (the check character computed, not guessed)."""
    number = next(_sequence) % 500 if seq is None else seq
    number = number * 2 + (1 if sex == "M" else 0)
    return identity_number(region, birth, number)


def child(
    *,
    born: date,
    status: str = "candidate",
    category: str | None = None,
    father: str | None = "auto",
    mother: str | None = "auto",
    foundling: bool = False,
    last_check: date | None = None,
    child_id: str | None = "auto",
    line: int = 2,
) -> RosterRow:
    """A roster row; ``"auto"`` IDs are generated (parents born 1985)."""
    return RosterRow(
        line=line,
        child_id=make_id(born) if child_id == "auto" else child_id,
        child_name="测试儿童",
        child_birth_date=born,
        child_sex="M",
        father_id=make_id(date(1985, 1, 1), sex="M") if father == "auto" else father,
        mother_id=make_id(date(1986, 1, 1), sex="F") if mother == "auto" else mother,
        status=Status(status),
        category=Category(category) if category else None,
        foundling=foundling,
        last_check_date=last_check,
    )


def ev(
    person: str,
    code: str,
    start: date | None = None,
    end: date | None = None,
    *,
    source: str = "test/set",
    grade: int | None = None,
    kind: int | None = None,
) -> EvidenceRow:
    """An evidence row."""
    return EvidenceRow(
        person_id=person,
        circumstance=Circumstance(code),
        source=source,
        start_date=start,
        end_date=end,
        disability_category=kind,
        disability_grade=grade,
    )


def id_with_x(birth: date, *, region: str = "150402") -> str:
    """A valid identity number whose check character is X."""
    for seq in range(1000):
        first17 = f"{region}{birth:%Y%m%d}{seq:03d}"
        if check_character(first17) == "X":
            return first17 + "X"
    raise AssertionError("no sequence number gives X")  # pragma: no cover


def fifteen(canonical: str) -> str:
    """The old 15-digit form of a 19xx identity number."""
    assert canonical[6:8] == "19"
    return canonical[:6] + canonical[8:17]


def full_width(text: str) -> str:
    """Full-width digits and X, as some spreadsheets hold them."""
    return text.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789X"})


ROSTER_HEADER = (
    "child_id,child_name,child_birth_date,child_sex,father_id,mother_id,father_name,mother_name,"
    "status,category,foundling,region_code,last_check_date"
)
EVIDENCE_HEADER = (
    "person_id,circumstance,source,start_date,end_date,disability_category,disability_grade"
)
