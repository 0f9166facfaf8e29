"""The typed records of the rules engine: codes, roster rows, evidence rows, column names.

Defined here, without any parsing, so that the readers (:mod:`coordinator.records`
for evidence, :mod:`coordinator.roster_file` for the roster) and the rules share
them; :mod:`coordinator.records` re-exports every name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from itertools import repeat
from typing import Literal, NamedTuple, TypeVar, cast

from psi.contract import PAYLOAD_COLUMNS
from psi.identifiers import composite_key

Encoding = Literal["auto", "utf-8", "gb18030"]
_Row = TypeVar("_Row", bound=tuple[object, ...])


class Circumstance(StrEnum):
    """A parent's (or child's) circumstance code (eligibility.md, 情形), or ``SERVICE``.

    The typed view of ``psi.contract.CIRCUMSTANCE_CODES`` (tests/test_architecture.py
    keeps the two equal): mypy needs the members spelt out.
    """

    DEAD = "DEAD"
    MISSING = "MISSING"
    SEVERE_DISABILITY = "SEVERE_DISABILITY"
    SEVERE_ILLNESS = "SEVERE_ILLNESS"
    IMPRISONED = "IMPRISONED"
    DRUG_REHAB = "DRUG_REHAB"
    OTHER_RESTRICTION = "OTHER_RESTRICTION"
    LOST_CONTACT = "LOST_CONTACT"
    GUARDIANSHIP_REVOKED = "GUARDIANSHIP_REVOKED"
    DEPORTED = "DEPORTED"
    #: a match from a service-coverage set (medical insurance, school...), not a circumstance
    SERVICE = "SERVICE"


class Status(StrEnum):
    """The roster's ``status`` column."""

    SUPPORTED = "supported"
    CANDIDATE = "candidate"


class Category(StrEnum):
    """A child category: 孤儿 or 事实无人抚养儿童."""

    ORPHAN = "orphan"
    DE_FACTO = "de_facto"


class Decision(StrEnum):
    """The decision of a round for one child (eligibility.md, "Decisions")."""

    ENROL = "ENROL"
    CONTINUE = "CONTINUE"
    RECLASSIFY = "RECLASSIFY"
    EXIT = "EXIT"
    REVIEW = "REVIEW"
    NOT_ELIGIBLE = "NOT_ELIGIBLE"


class Role(StrEnum):
    """Whose evidence a reason speaks of."""

    FATHER = "father"
    MOTHER = "mother"
    CHILD = "child"


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A non-fatal problem with one field of one row: an identity number that is invalid."""

    file: str
    line: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: column {self.column}: {self.message}"


class RosterRow(NamedTuple):
    """One child on the civil affairs roster, checked and normalized.

    Identity numbers are canonical 18-character numbers, or ``None`` when the
    cell was empty or invalid; an invalid one is listed in :attr:`problems`.

    A named tuple rather than a frozen dataclass, as :class:`EvidenceRow`: a
    round builds one per child, and a frozen dataclass's ``__init__`` sets each
    of its 15 fields through ``object.__setattr__`` (0.25 s for 100k rows here,
    0.06 s as a named tuple).
    """

    line: int
    child_id: str | None
    child_name: str
    child_birth_date: date | None
    child_sex: Literal["M", "F"] | None
    father_id: str | None
    mother_id: str | None
    status: Status
    category: Category | None
    foundling: bool = False
    father_name: str = ""
    mother_name: str = ""
    region_code: str | None = None
    last_check_date: date | None = None
    #: the invalid identity numbers of this row, by column
    problems: tuple[RowProblem, ...] = ()

    @property
    def child_key(self) -> str | None:
        """The child's matching key: the ID, else name + birth date + sex (未落户), else None."""
        if self.child_id is not None:
            return self.child_id
        if self.child_birth_date is None or self.child_sex is None:
            return None
        try:
            return composite_key(self.child_name, self.child_birth_date, self.child_sex)
        except ValueError:  # a name empty once normalized: nothing to tell the child by
            return None

    def problem(self, column: str) -> RowProblem | None:
        """The problem recorded for ``column``, if its identity number was invalid."""
        for item in self.problems:
            if item.column == column:
                return item
        return None


@dataclass(frozen=True, slots=True)
class Roster:
    """A roster file: its rows in file order, and the invalid identity numbers found."""

    path: str
    rows: list[RosterRow]
    problems: list[RowProblem] = field(default_factory=list)


class EvidenceRow(NamedTuple):
    """One circumstance of one person, as one department's match set reports it.

    A named tuple: a round builds one per match (140k in the 100k-child bench
    round), and :func:`coordinator.records.match_rows` builds them in C with
    ``tuple.__new__`` over the columns.
    """

    person_id: str
    circumstance: Circumstance
    source: str
    start_date: date | None = None
    end_date: date | None = None
    disability_category: int | None = None
    disability_grade: int | None = None


def rows_from_columns(kind: type[_Row], columns: Sequence[Iterable[object]]) -> list[_Row]:
    """Named tuples of ``kind`` from whole columns, one per position, built in C.

    ``columns`` come in the order of ``kind``'s fields, one per field: the named
    tuple's own ``__new__`` is a Python call per row, which was most of the cost
    of 140k evidence rows.

    Raises:
        ValueError: not one column per field, or columns of different lengths.
    """
    fields: tuple[str, ...] = kind._fields  # type: ignore[attr-defined]  # a named tuple's
    if len(columns) != len(fields):
        raise ValueError(f"{kind.__name__}: {len(columns)} columns for {len(fields)} fields")
    new = cast("Callable[[type[_Row], tuple[object, ...]], _Row]", tuple.__new__)
    return list(map(new, repeat(kind), zip(*columns, strict=True)))


#: father_id and mother_id may be left out (every parent then unknown), as the data
#: contract says; a misspelled parent column is still refused, as an unknown column
ROSTER_REQUIRED = ("child_id", "child_name", "status")
ROSTER_OPTIONAL = (
    "father_id",
    "mother_id",
    "child_birth_date",
    "child_sex",
    "father_name",
    "mother_name",
    "category",
    "foundling",
    "region_code",
    "last_check_date",
)
EVIDENCE_REQUIRED = ("person_id", "circumstance", "source")
EVIDENCE_OPTIONAL = PAYLOAD_COLUMNS
EVIDENCE_COLUMNS = EVIDENCE_REQUIRED + EVIDENCE_OPTIONAL

#: reason codes of :class:`psi.errors.InvalidIdentifier`, as the stderr line says them
_ID_PROBLEMS = {
    "length": "wrong length for an identity number",
    "check": "the check character does not match",
    "birth_date": "impossible birth date in the identity number",
    "future_birth_date": "birth date in the identity number is in the future",
    "scientific_notation": "identity number in scientific notation (a spreadsheet lost its digits)",
    "characters": "characters other than digits and a final X in the identity number",
    "empty": "empty identity number",
    "cut_digits": (
        "ends in 000, as the numbers of this column that a spreadsheet cut to 15 digits do "
        "(store identity numbers as text and export again)"
    ),
}
