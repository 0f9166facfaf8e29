"""Rules for one evidence record and its dates (eligibility.md, "Parent circumstances").

The groups G and Q, "6 months after" and "10 years after", the age rule,
and whether a record counts on the evaluation date (:func:`is_current`), each
returning its reasons (:class:`Ruling`). :mod:`coordinator.eligibility` builds
the parents' groups and the decision on these. Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Generic, NamedTuple, TypeVar

from coordinator.reasons import DisabilityCategory, Reason, reason
from coordinator.records import Circumstance, EvidenceRow

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

TERM_MONTHS = 6
CERTIFICATE_YEARS = 10
ADULT_AGE = 18


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
