"""Typed records at the file boundary: roster.csv and evidence.csv.

Everything that enters the rules engine passes through here and is checked
once, strictly (data-contracts.md, "Files"). What comes out is immutable and
typed: the rules in :mod:`coordinator.eligibility` never see a raw string.

Two kinds of failure:

* A fatal problem with the file (an undecodable byte, a missing required
  column, a row with the wrong number of fields, a bad date, an unknown
  status, category or circumstance) raises :class:`psi.errors.InputError`
  with one line naming the file, the line and the column.
* An identity number on the roster that cannot be normalized is not fatal:
  the row is kept, it gets ``REVIEW`` and the problem is listed in
  :attr:`Roster.problems` (eligibility.md, "Invalid identity numbers").

No message ever quotes a value from the file: it names the place instead.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Literal, TextIO, TypeVar

from psi.errors import InputError
from psi.identifiers import composite_key, normalize_id_column

Encoding = Literal["auto", "utf-8", "gb18030"]


class Circumstance(StrEnum):
    """A parent's (or child's) circumstance code (eligibility.md, 情形), or ``SERVICE``."""

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


@dataclass(frozen=True, slots=True)
class RosterRow:
    """One child on the civil affairs roster, checked and normalized.

    Identity numbers are canonical 18-character numbers, or ``None`` when the
    cell was empty or invalid; an invalid one is listed in :attr:`problems`.
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
        """The child's matching key: the ID, else name + birth date + sex (未落户)."""
        if self.child_id is not None:
            return self.child_id
        if self.child_birth_date is None or self.child_sex is None:
            return None
        return composite_key(self.child_name, self.child_birth_date, self.child_sex)

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


@dataclass(frozen=True, slots=True)
class EvidenceRow:
    """One circumstance of one person, as one department's match set reports it."""

    person_id: str
    circumstance: Circumstance
    source: str
    start_date: date | None = None
    end_date: date | None = None
    disability_category: int | None = None
    disability_grade: int | None = None


ROSTER_REQUIRED = ("child_id", "child_name", "status")
ROSTER_OPTIONAL = (
    "child_birth_date",
    "child_sex",
    "father_id",
    "mother_id",
    "father_name",
    "mother_name",
    "category",
    "foundling",
    "region_code",
    "last_check_date",
)
EVIDENCE_REQUIRED = ("person_id", "circumstance", "source")
EVIDENCE_OPTIONAL = ("start_date", "end_date", "disability_category", "disability_grade")
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
}

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_REGION = re.compile(r"\d{6}\Z")
_UTF8_BOM = b"\xef\xbb\xbf"


# --- decoding ------------------------------------------------------------------------------


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_csv_bytes(data: bytes, *, path: str, encoding: Encoding = "auto") -> str:
    """Decode a CSV file's bytes: UTF-8 with or without BOM, else GB18030.

    ``encoding`` forces one of them. With ``auto``, a BOM means UTF-8; without
    one, UTF-8 is tried first and GB18030 (what Chinese spreadsheet software
    writes) second.

    Raises:
        InputError: naming the file and the line of the first byte that no
            allowed encoding can decode.
    """
    skip = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) and encoding != "gb18030" else 0
    if encoding == "gb18030":
        candidates: tuple[str, ...] = ("gb18030",)
    elif encoding == "utf-8" or skip:
        candidates = ("utf-8",)
    else:
        candidates = ("utf-8", "gb18030")
    body = memoryview(data)[skip:]
    furthest: UnicodeDecodeError | None = None
    for name in candidates:
        try:
            return str(body, name)
        except UnicodeDecodeError as exc:
            if furthest is None or exc.start > furthest.start:
                furthest = exc
    assert furthest is not None
    names = " nor ".join("UTF-8" if c == "utf-8" else "GB18030" for c in candidates)
    what = f"neither {names}" if len(candidates) > 1 else f"not {names}"
    raise InputError(
        f"{path}:{_line_of(data, skip + furthest.start)}: bytes that are {what}"
        + ("" if encoding != "auto" else " (use --encoding to force one)")
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from exc


class _Table:
    """A decoded CSV file with a checked header; yields (line, fields) for each data row."""

    def __init__(self, path: Path, *, encoding: Encoding, required: Sequence[str]) -> None:
        self.path = str(path)
        text = decode_csv_bytes(_read_bytes(path), path=self.path, encoding=encoding)
        self._reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(self._reader)
        except StopIteration:
            raise InputError(f"{self.path}:1: the file is empty (no header row)") from None
        except csv.Error as exc:
            raise InputError(f"{self.path}:1: malformed CSV header: {exc}") from None
        names = [name.strip().lstrip("\ufeff") for name in header]
        self.width = len(names)
        self.index: dict[str, int] = {}
        for position, name in enumerate(names):
            if name in self.index:
                raise InputError(f"{self.path}:1: column {name} appears twice in the header")
            self.index[name] = position
        for name in required:
            if name not in self.index:
                raise InputError(f"{self.path}:1: missing required column {name}")

    def column(self, name: str) -> int | None:
        return self.index.get(name)

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        reader = self._reader
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(f"{self.path}:{reader.line_num}: malformed CSV: {exc}") from None
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # a blank line
            if len(fields) != self.width:
                raise InputError(
                    f"{self.path}:{reader.line_num}: expected {self.width} fields as in the "
                    f"header, found {len(fields)}"
                )
            yield reader.line_num, fields


# --- field parsers ---------------------------------------------------------------------------


class _Dates:
    """Parses YYYY-MM-DD cells, caching repeated values (a file has few distinct dates)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._cache: dict[str, date] = {}

    def __call__(self, text: str, line: int, column: str) -> date | None:
        text = text.strip()
        if not text:
            return None
        value = self._cache.get(text)
        if value is not None:
            return value
        if not _DATE.match(text):
            raise InputError(f"{self.path}:{line}: column {column}: not a date in YYYY-MM-DD form")
        try:
            value = date.fromisoformat(text)
        except ValueError:
            raise InputError(f"{self.path}:{line}: column {column}: no such date") from None
        self._cache[text] = value
        return value


_E = TypeVar("_E", bound=StrEnum)


def _choice(
    kind: type[_E], text: str, *, path: str, line: int, column: str, fold: Callable[[str], str]
) -> _E:
    try:
        return kind(fold(text.strip()))
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InputError(
            f"{path}:{line}: column {column}: unknown value (expected one of {allowed})"
        ) from None


def _id_problem(reason: object) -> str:
    text = str(reason)
    return _ID_PROBLEMS.get(text, text)


def _normalize_ids(
    values: Sequence[str], *, today: date | None
) -> tuple[list[str | None], list[str | None], list[bool]]:
    """Canonical IDs, problems and emptiness for one column, in one vectorized call.

    Empty cells (and cells that normalize to nothing) are ``None`` with no problem.
    """
    ids: list[str | None] = [None] * len(values)
    problems: list[str | None] = [None] * len(values)
    empty = [not value.strip() for value in values]
    positions = [i for i, blank in enumerate(empty) if not blank]
    if positions:
        column = normalize_id_column([values[i] for i in positions], today=today)
        for i, canonical, valid, reason in zip(
            positions, column.ids.tolist(), column.valid.tolist(), column.reasons, strict=True
        ):
            if valid:
                ids[i] = canonical
            elif str(reason) == "empty":
                empty[i] = True
            else:
                problems[i] = _id_problem(reason)
    return ids, problems, empty


# --- roster ----------------------------------------------------------------------------------


def read_roster(path: Path, *, encoding: Encoding = "auto", as_of: date | None = None) -> Roster:
    """Read and check roster.csv (data-contracts.md).

    ``as_of`` is the date against which a birth date in an identity number is
    "in the future". Invalid identity numbers do not raise: they are listed in
    :attr:`Roster.problems` and on the row, whose ID becomes ``None``.

    Raises:
        InputError: one line naming file, line and column: undecodable bytes,
            a missing required column, a row with the wrong number of fields,
            a bad date, an unknown status, category, sex or foundling value, a
            supported child without category, a child without ID and without
            birth date or sex, or a region code that is not 6 digits.
    """
    table = _Table(path, encoding=encoding, required=ROSTER_REQUIRED)
    name = table.path
    raw = list(table.rows())
    col = {c: table.column(c) for c in ROSTER_REQUIRED + ROSTER_OPTIONAL}

    def cells(column: str) -> list[str]:
        position = col[column]
        return [""] * len(raw) if position is None else [fields[position] for _, fields in raw]

    id_columns = {
        c: _normalize_ids(cells(c), today=as_of) for c in ("child_id", "father_id", "mother_id")
    }
    parse_date = _Dates(name)
    rows: list[RosterRow] = []
    problems: list[RowProblem] = []
    get = {c: cells(c) for c in (*ROSTER_OPTIONAL, "child_name", "status")}
    lower = str.lower
    for k, (line, _fields) in enumerate(raw):
        row_problems = []
        for column in ("child_id", "father_id", "mother_id"):
            message = id_columns[column][1][k]
            if message is not None:
                row_problems.append(RowProblem(name, line, column, message))
        child_id = id_columns["child_id"][0][k]
        child_empty = id_columns["child_id"][2][k]
        status = _choice(
            Status, get["status"][k], path=name, line=line, column="status", fold=lower
        )
        category_text = get["category"][k].strip()
        category = (
            _choice(Category, category_text, path=name, line=line, column="category", fold=lower)
            if category_text
            else None
        )
        if status is Status.SUPPORTED and category is None:
            raise InputError(f"{name}:{line}: column category: required for a supported child")
        birth = parse_date(get["child_birth_date"][k], line, "child_birth_date")
        sex_text = get["child_sex"][k].strip().upper()
        if sex_text not in ("", "M", "F"):
            raise InputError(f"{name}:{line}: column child_sex: unknown value (expected M or F)")
        sex: Literal["M", "F"] | None = "M" if sex_text == "M" else "F" if sex_text == "F" else None
        if child_id is not None:
            birth = date(int(child_id[6:10]), int(child_id[10:12]), int(child_id[12:14]))
            sex = "M" if int(child_id[16]) % 2 else "F"
        elif child_empty:
            for column, value in (("child_birth_date", birth), ("child_sex", sex)):
                if value is None:
                    raise InputError(
                        f"{name}:{line}: column {column}: required when child_id is empty"
                    )
        foundling_text = get["foundling"][k].strip().lower()
        if foundling_text not in ("", "yes", "no"):
            raise InputError(f"{name}:{line}: column foundling: unknown value (expected yes or no)")
        region = get["region_code"][k].strip() or None
        if region is not None and not _REGION.match(region):
            raise InputError(f"{name}:{line}: column region_code: not a 6-digit address code")
        row = RosterRow(
            line=line,
            child_id=child_id,
            child_name=" ".join(get["child_name"][k].split()),
            child_birth_date=birth,
            child_sex=sex,
            father_id=id_columns["father_id"][0][k],
            mother_id=id_columns["mother_id"][0][k],
            status=status,
            category=category,
            foundling=foundling_text == "yes",
            father_name=" ".join(get["father_name"][k].split()),
            mother_name=" ".join(get["mother_name"][k].split()),
            region_code=region,
            last_check_date=parse_date(get["last_check_date"][k], line, "last_check_date"),
            problems=tuple(row_problems),
        )
        rows.append(row)
        problems.extend(row_problems)
    return Roster(path=name, rows=rows, problems=problems)


# --- evidence --------------------------------------------------------------------------------


_CATEGORIES = {str(n): n for n in range(1, 8)}
_GRADES = {str(n): n for n in range(1, 5)}


def _code(text: str, allowed: dict[str, int], *, path: str, line: int, column: str) -> int | None:
    if not text:
        return None
    value = allowed.get(text.strip())
    if value is None:
        if not text.strip():
            return None
        raise InputError(
            f"{path}:{line}: column {column}: expected a number from {min(allowed.values())} "
            f"to {max(allowed.values())}"
        )
    return value


def read_evidence(path: Path, *, encoding: Encoding = "auto") -> list[EvidenceRow]:
    """Read and check evidence.csv (data-contracts.md), in file order.

    Only ``person_id``, ``circumstance`` and ``source`` are required columns: a
    round's evidence holds only the payload columns the nodes allowed.

    Raises:
        InputError: one line naming file, line and column: undecodable bytes,
            a missing required column, a row with the wrong number of fields,
            an unknown circumstance, a source not in ``node/dataset`` form, a
            bad date, a disability category or grade out of range, or a
            ``person_id`` that is empty or not a valid identity number.
    """
    table = _Table(path, encoding=encoding, required=EVIDENCE_REQUIRED)
    name = table.path
    raw = list(table.rows())
    positions = {c: table.column(c) for c in EVIDENCE_COLUMNS}

    def cells(column: str) -> list[str]:
        position = positions[column]
        return [""] * len(raw) if position is None else [fields[position] for _, fields in raw]

    ids, id_problems, empty = _normalize_ids(cells("person_id"), today=None)
    parse_date = _Dates(name)
    circumstances = cells("circumstance")
    sources = cells("source")
    starts, ends = cells("start_date"), cells("end_date")
    categories, grades = cells("disability_category"), cells("disability_grade")
    codes: dict[str, Circumstance] = {}
    checked_sources: dict[str, str] = {}
    out: list[EvidenceRow] = []
    for k, (line, _fields) in enumerate(raw):
        person = ids[k]
        if person is None:
            why = "empty" if empty[k] else id_problems[k]
            raise InputError(f"{name}:{line}: column person_id: {why}")
        code_text = circumstances[k]
        code = codes.get(code_text)
        if code is None:
            code = _choice(
                Circumstance,
                code_text,
                path=name,
                line=line,
                column="circumstance",
                fold=str.upper,
            )
            codes[code_text] = code
        source = checked_sources.get(sources[k])
        if source is None:
            source = sources[k].strip()
            node, slash, dataset = source.partition("/")
            if not (slash and node and dataset and "/" not in dataset):
                raise InputError(f"{name}:{line}: column source: expected node/dataset")
            checked_sources[sources[k]] = source
        out.append(
            EvidenceRow(
                person_id=person,
                circumstance=code,
                source=source,
                start_date=parse_date(starts[k], line, "start_date"),
                end_date=parse_date(ends[k], line, "end_date"),
                disability_category=_code(
                    categories[k], _CATEGORIES, path=name, line=line, column="disability_category"
                ),
                disability_grade=_code(
                    grades[k], _GRADES, path=name, line=line, column="disability_grade"
                ),
            )
        )
    return out


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def write_evidence(path: Path, rows: Iterable[EvidenceRow]) -> None:
    """Write evidence.csv (UTF-8, every column) atomically: a temporary file, then a rename.

    Raises:
        OSError: the folder is not writable.
    """

    def lines(out: TextIO) -> None:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(EVIDENCE_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    row.person_id,
                    row.circumstance.value,
                    row.source,
                    _cell(row.start_date),
                    _cell(row.end_date),
                    _cell(row.disability_category),
                    _cell(row.disability_grade),
                ]
            )

    write_atomically(path, lines)


def write_atomically(path: Path, fill: Callable[[TextIO], object]) -> None:
    """Write a UTF-8 text file through ``fill`` into a temporary sibling, then ``os.replace``.

    A reader sees the old file or the complete new one, never a part.

    Raises:
        OSError: the folder is not writable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


__all__ = [
    "Category",
    "Circumstance",
    "Decision",
    "EvidenceRow",
    "Role",
    "Roster",
    "RosterRow",
    "RowProblem",
    "Status",
    "decode_csv_bytes",
    "read_evidence",
    "read_roster",
    "write_atomically",
    "write_evidence",
]
