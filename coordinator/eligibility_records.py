"""Every evidence record of a round judged on the evaluation date, each distinct record once.

:func:`coordinator.circumstances.is_current` is the reference for one record.
Its answer depends on the record's code, source, dates and grade, not on whose
record it is, and a round holds many equal records (deaths on the same day
from the same source): :func:`judge_records` asks it once per distinct record
and shares the :class:`Ruling`, so that equal records also share their
reasons (rendered once, :class:`coordinator.reasons.Renderer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from operator import attrgetter

from coordinator.circumstances import Ruling, is_current
from coordinator.records import Circumstance, EvidenceRow

_Key = tuple[Circumstance, str, date | None, date | None, int | None, int | None]

#: what ``is_current`` reads of a record: all but whose it is
_what = attrgetter(
    "circumstance", "source", "start_date", "end_date", "disability_category", "disability_grade"
)


def judge_records(
    evidence: Mapping[str, Sequence[EvidenceRow]], on: date
) -> dict[str, tuple[Ruling[bool], ...]]:
    """Person -> ``is_current`` of each of their records on ``on``, in the index's order."""
    seen: dict[_Key, Ruling[bool]] = {}
    judged: dict[str, tuple[Ruling[bool], ...]] = {}
    for person, rows in evidence.items():
        found: list[Ruling[bool]] = []
        for row in rows:
            key = _what(row)
            ruling = seen.get(key)
            if ruling is None:
                ruling = seen[key] = is_current(row, on)
            found.append(ruling)
        judged[person] = tuple(found)
    return judged
