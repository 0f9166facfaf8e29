"""Evidence records judged on the evaluation date, each distinct record once.

:func:`coordinator.circumstances.is_current` is the reference for one record.
Its answer depends on the record's code, source, dates and grade, not on whose
record it is, and a round holds many equal records (deaths on the same day
from the same source): :class:`RecordJudge` asks it once per distinct record
and shares the :class:`Ruling`, so that equal records also share their
reasons (rendered once, :class:`coordinator.reasons.Renderer`).
"""

from __future__ import annotations

from datetime import date
from operator import attrgetter

from coordinator.circumstances import Ruling, is_current
from coordinator.records import Circumstance, EvidenceRow

#: what ``is_current`` reads of a record: all but whose it is
Record = tuple[Circumstance, str, date | None, date | None, int | None, int | None]
what_is_judged: attrgetter[Record] = attrgetter(
    "circumstance", "source", "start_date", "end_date", "disability_category", "disability_grade"
)


class RecordJudge:
    """``is_current(row, on)`` for the records of one round, once per distinct record."""

    __slots__ = ("_on", "_seen")

    def __init__(self, on: date) -> None:
        self._on = on
        self._seen: dict[Record, Ruling[bool]] = {}

    def __call__(self, row: EvidenceRow) -> Ruling[bool]:
        """The ruling on ``row``; the same object for equal records."""
        return self.judge(what_is_judged(row), row)

    def judge(self, record: Record, row: EvidenceRow) -> Ruling[bool]:
        """The ruling on ``row``, whose :data:`what_is_judged` is ``record``."""
        found = self._seen.get(record)
        if found is None:
            found = self._seen[record] = is_current(row, self._on)
        return found
