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
import difflib
import gc
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Literal, TextIO, TypeVar, cast

import numpy as np
import numpy.typing as npt

from databases import DatabaseError, DatabaseSource, open_session
from psi.contract import PAYLOAD_COLUMNS
from psi.errors import ConfigError, InputError, XmatchError
from psi.identifiers import composite_key, normalize_id_column

Encoding = Literal["auto", "utf-8", "gb18030"]


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


#: father_id and mother_id are required columns (their cells may be empty): a
#: misspelled parent column would otherwise read as "no parent known" for every child
ROSTER_REQUIRED = ("child_id", "child_name", "status", "father_id", "mother_id")
ROSTER_OPTIONAL = (
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
}


def _near(name: str, header: Sequence[str]) -> str:
    """``" (the header has NAME2; ...)"`` when a header column looks like a misspelling
    (``header``: the columns that are not another column of the format)."""
    # never quote a cell with digits: a file without a header has data in line 1
    words = [h for h in header if h and not any(c.isdigit() for c in h)]
    close = difflib.get_close_matches(name, words, n=1, cutoff=0.7)
    hint = f"the header has {close[0]!r}, a misspelling?" if close else ""
    if name in ("father_id", "mother_id"):
        empty = "the column is required; leave its cells empty where the parent is unknown"
        hint = f"{hint}; {empty}" if hint else empty
    return f" ({hint})" if hint else ""


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_REGION = re.compile(r"\d{6}\Z")
_UTF8_BOM = b"\xef\xbb\xbf"


# --- bulk work ---------------------------------------------------------------------------


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large, acyclic structure is built.

    Reading, deciding and rendering create millions of small objects (rows,
    reasons, strings) and no reference cycles; each collection would walk all
    of them again, which took about half of the time of ``xmatch rules
    evaluate`` at 100k children. Reference counting still frees everything.
    Nests; the collector is enabled again only by the outermost pause.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    """A decoded CSV file with a checked header, and its data rows as (line, fields).

    A file without quotes, NUL characters or carriage returns (other than in CRLF
    line ends), whose lines all fit the csv module's field size limit, has nothing
    for a CSV parser to interpret: it is split on line ends and commas directly,
    which gives exactly what :func:`csv.reader` gives, line numbers included. Any
    other file goes through :func:`csv.reader` (strict), which also words the error
    for a malformed one.
    """

    def __init__(
        self,
        path: Path,
        *,
        encoding: Encoding,
        required: Sequence[str],
        known: Sequence[str] = (),
    ) -> None:
        self.path = str(path)
        text = decode_csv_bytes(_read_bytes(path), path=self.path, encoding=encoding)
        lines = _plain_lines(text)
        #: the fields of every line, from line 2, when the file is plain
        self._plain: list[list[str]] | None = None
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            if lines is None:
                header = next(reader)
            else:
                header = lines[0].split(",") if lines[0] else []  # csv.reader: [] for ""
                self._plain = [line.split(",") for line in lines[1:]]
        except StopIteration:
            raise InputError(f"{self.path}:1: the file is empty (no header row)") from None
        except csv.Error as exc:
            raise InputError(f"{self.path}:1: malformed CSV header: {exc}") from None
        self._reader = reader
        names = [name.strip().lstrip("\ufeff") for name in header]
        self.width = len(names)
        self.index: dict[str, int] = {}
        for position, name in enumerate(names):
            if name in self.index:
                raise InputError(f"{self.path}:1: column {name} appears twice in the header")
            self.index[name] = position
        for name in required:
            if name not in self.index:
                raise InputError(
                    f"{self.path}:1: missing required column {name}"
                    f"{_near(name, [n for n in names if n not in (*required, *known)])}"
                )

    def column(self, name: str) -> int | None:
        return self.index.get(name)

    def _records(self) -> Iterator[tuple[int, list[str]]]:
        if self._plain is not None:
            yield from enumerate(self._plain, start=2)
            return
        reader = self._reader
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(f"{self.path}:{reader.line_num}: malformed CSV: {exc}") from None
            yield reader.line_num, fields

    def rows(self) -> tuple[list[int], list[list[str]]]:
        """The line number and the fields of every data row, blank lines skipped.

        Raises:
            InputError: malformed CSV, or a row whose number of fields differs from the header.
        """
        width = self.width
        plain = self._plain
        if plain is not None and width > 1 and all(len(fields) == width for fields in plain):
            return list(range(2, len(plain) + 2)), plain  # no blank line, no short row
        numbers: list[int] = []
        rows: list[list[str]] = []
        for line, fields in self._records():
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # a blank line
            if len(fields) != width:
                raise InputError(
                    f"{self.path}:{line}: expected {width} fields as in the "
                    f"header, found {len(fields)}"
                )
            numbers.append(line)
            rows.append(fields)
        return numbers, rows

    def columns(self, names: Sequence[str]) -> tuple[list[int], dict[str, Sequence[str]]]:
        """The line numbers of the data rows, and the cells of each named column.

        A column missing from the header reads as empty cells.

        Raises:
            InputError: as :meth:`rows`.
        """
        lines, rows = self.rows()
        transposed = list(zip(*rows, strict=True)) if rows else []
        empty = ("",) * len(rows)
        cells: dict[str, Sequence[str]] = {}
        for name in names:
            position = self.index.get(name)
            cells[name] = empty if position is None or not rows else transposed[position]
        return lines, cells


def _plain_lines(text: str) -> list[str] | None:
    """The lines of ``text`` when no CSV quoting can be involved, else ``None``."""
    if '"' in text or "\0" in text or not text:
        return None
    if "\r" in text:
        # CRLF line ends are one line end each, for csv.reader as for us; a lone CR is not
        if text.count("\r") != text.count("\r\n"):
            return None
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if max(map(len, lines)) > csv.field_size_limit():
        return None
    if len(lines) > 1 and not lines[-1]:
        lines.pop()  # csv.reader yields nothing after a final line end
    return lines


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
    if all(values) and not any(value.isspace() for value in values):
        column = normalize_id_column(values, today=today)
        if column.valid.all():  # the usual case: every cell a valid number
            canonical: list[str | None] = column.ids.tolist()
            return canonical, [None] * len(values), [False] * len(values)
    ids: list[str | None] = [None] * len(values)
    problems: list[str | None] = [None] * len(values)
    empty = [not value.strip() for value in values]
    positions = [i for i, blank in enumerate(empty) if not blank]
    if positions:
        column = normalize_id_column([values[i] for i in positions], today=today)
        for i, canonical_id, valid, reason in zip(
            positions, column.ids.tolist(), column.valid.tolist(), column.reasons, strict=True
        ):
            if valid:
                ids[i] = canonical_id
            elif str(reason) == "empty":
                empty[i] = True
            else:
                problems[i] = _id_problem(reason)
    return ids, problems, empty


# --- roster ----------------------------------------------------------------------------------


@gc_paused()
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
    table = _Table(path, encoding=encoding, required=ROSTER_REQUIRED, known=ROSTER_OPTIONAL)
    lines, cells = table.columns(ROSTER_REQUIRED + ROSTER_OPTIONAL)
    return _roster_of_cells(table.path, lines, cells, as_of=as_of)


def _roster_of_cells(
    name: str, lines: list[int], cells: Mapping[str, Sequence[str]], *, as_of: date | None
) -> Roster:
    ids = {c: _normalize_ids(cells[c], today=as_of) for c in ("child_id", "father_id", "mother_id")}
    rows = _roster_by_column(name, lines, cells, ids)
    if rows is None:  # a bad cell somewhere: the row-by-row reading finds and names the first
        rows = _roster_by_row(name, lines, cells, ids)
    return Roster(path=name, rows=rows, problems=[p for row in rows for p in row.problems])


def read_roster_source(
    source: Path | DatabaseSource,
    *,
    encoding: Encoding = "auto",
    as_of: date | None = None,
    label: str = "roster",
) -> Roster:
    """The roster from roster.csv (:func:`read_roster`) or from a database table or query.

    Raises:
        InputError: as :func:`read_roster`, or as :func:`read_roster_database`.
    """
    if isinstance(source, DatabaseSource):
        return read_roster_database(source, as_of=as_of, label=label)
    return read_roster(source, encoding=encoding, as_of=as_of)


_ROSTER_IDS = ("child_id", "father_id", "mother_id")
_ROSTER_DATES = ("child_birth_date", "last_check_date")
_ROSTER_BATCH = 65_536


@gc_paused()
def read_roster_database(
    source: DatabaseSource, *, as_of: date | None = None, label: str = "roster"
) -> Roster:
    """Read the roster from the civil-affairs database, with roster.csv's column contract.

    The columns are found by name (case-insensitive); the rows are checked by
    the same code as roster.csv's, and each message names ``label``, the
    source and the row number (1 = the first row the database returns: give
    ``query`` an ``ORDER BY`` for a stable order). Identity columns must be
    text and date columns dates; the connection is read-only.

    Raises:
        ConfigError: the DSN cannot be read.
        DatabaseError: unreachable server, failed authentication, a missing
            table, a column of the wrong type, a lost connection.
        InputError: a missing required column, or a bad cell (as roster.csv).
    """
    name = f"{label} ({source.describe()})"

    def fail(exc: ConfigError) -> ConfigError:
        text = f"{name}: {exc}"
        return (
            DatabaseError(text, reason=exc.reason)
            if isinstance(exc, DatabaseError)
            else (ConfigError(text))
        )

    try:
        session = open_session(source)
    except ConfigError as exc:
        raise fail(exc) from None
    try:
        try:
            found = {c.name.lower(): c for c in session.columns()}
        except ConfigError as exc:
            raise fail(exc) from None
        for column in ROSTER_REQUIRED:
            if column not in found:
                raise InputError(f"{name}: missing required column {column}")
        wanted = [c for c in ROSTER_REQUIRED + ROSTER_OPTIONAL if c in found]
        for column in wanted:
            kind, type_name = found[column].kind, found[column].type_name
            if column in _ROSTER_IDS and kind != "text":
                raise DatabaseError(
                    f"{name}: column {column} is {type_name} in the database; store identity "
                    "numbers as text (a number loses leading digits and the check character X)",
                    reason="type",
                )
            if column in _ROSTER_DATES and kind not in ("date", "timestamp"):
                raise DatabaseError(
                    f"{name}: column {column} is {type_name} in the database; store dates as "
                    "DATE (or convert them in `query`)",
                    reason="type",
                )
        parts: dict[str, list[str]] = {c: [] for c in wanted}
        try:
            sql, params = session.bind_as_of(
                session.select([found[c].name for c in wanted], None), as_of or date.today()
            )
            for batch in session.stream(sql, params, width=len(wanted), batch_rows=_ROSTER_BATCH):
                for column, values in zip(wanted, batch, strict=True):
                    parts[column].extend(values.tolist())
        except ConfigError as exc:
            raise fail(exc) from None
    finally:
        session.close()
    n = len(parts[wanted[0]])
    empty = ("",) * n
    cells: dict[str, Sequence[str]] = {
        c: parts.get(c, empty) for c in ROSTER_REQUIRED + ROSTER_OPTIONAL
    }
    return _roster_of_cells(name, list(range(1, n + 1)), cells, as_of=as_of)


_IdColumns = dict[str, tuple[list[str | None], list[str | None], list[bool]]]


def _row_problems(
    name: str, lines: list[int], ids: _IdColumns
) -> dict[int, tuple[RowProblem, ...]]:
    """The invalid identity numbers of each row that has any, by row index."""
    found: dict[int, list[RowProblem]] = {}
    for column in ("child_id", "father_id", "mother_id"):
        for k, message in enumerate(ids[column][1]):
            if message is not None:
                found.setdefault(k, []).append(RowProblem(name, lines[k], column, message))
    return {
        k: tuple(sorted(items, key=lambda p: _ID_ORDER[p.column])) for k, items in found.items()
    }


_ID_ORDER = {"child_id": 0, "father_id": 1, "mother_id": 2}


def _roster_by_row(
    name: str, lines: list[int], get: Mapping[str, Sequence[str]], id_columns: _IdColumns
) -> list[RosterRow]:
    """The roster, checked one row at a time: raises on the first bad cell, in file order."""
    parse_date = _Dates(name)
    rows: list[RosterRow] = []
    lower = str.lower
    problems = _row_problems(name, lines, id_columns)
    for k, line in enumerate(lines):
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
            problems=problems.get(k, ()),
        )
        rows.append(row)
    return rows


_V = TypeVar("_V")


def _each(values: Sequence[str], parse: Callable[[str], _V]) -> list[_V]:
    """``parse`` applied to every cell, once per distinct value (a column repeats itself)."""
    parsed = {value: parse(value) for value in set(values)}
    return list(map(parsed.__getitem__, values))


def _sex(text: str) -> Literal["M", "F"] | None:
    sex = text.strip().upper()
    if sex not in ("", "M", "F"):
        raise InputError("child_sex")
    return "M" if sex == "M" else "F" if sex == "F" else None


def _foundling(text: str) -> bool:
    mark = text.strip().lower()
    if mark not in ("", "yes", "no"):
        raise InputError("foundling")
    return mark == "yes"


def _region(text: str) -> str | None:
    region = text.strip() or None
    if region is not None and not _REGION.match(region):
        raise InputError("region_code")
    return region


def _birth_from_id(number: str) -> date:
    return date(int(number[6:10]), int(number[10:12]), int(number[12:14]))


def _roster_by_column(
    name: str, lines: list[int], get: Mapping[str, Sequence[str]], id_columns: _IdColumns
) -> list[RosterRow] | None:
    """The roster, each column checked as a whole; ``None`` when any cell is bad.

    The values are those of :func:`_roster_by_row`, computed once per distinct
    cell value; the bad cell is left to :func:`_roster_by_row` to name.
    """
    parse_date = _Dates(name)
    try:
        statuses = _each(
            get["status"],
            lambda t: _choice(Status, t, path=name, line=0, column="status", fold=str.lower),
        )
        categories = _each(
            get["category"],
            lambda t: (
                _choice(Category, t.strip(), path=name, line=0, column="category", fold=str.lower)
                if t.strip()
                else None
            ),
        )
        births = _each(get["child_birth_date"], lambda t: parse_date(t, 0, "child_birth_date"))
        sexes = _each(get["child_sex"], _sex)
        foundlings = _each(get["foundling"], _foundling)
        regions = _each(get["region_code"], _region)
        checks = _each(get["last_check_date"], lambda t: parse_date(t, 0, "last_check_date"))
    except InputError:
        return None
    child_ids, _, child_empty = id_columns["child_id"]
    for k, child_id in enumerate(child_ids):
        if statuses[k] is Status.SUPPORTED and categories[k] is None:
            return None
        if child_id is not None:
            births[k] = _birth_from_id(child_id)
            sexes[k] = "M" if int(child_id[16]) % 2 else "F"
        elif child_empty[k] and (births[k] is None or sexes[k] is None):
            return None
    problems: list[tuple[RowProblem, ...]] = [()] * len(lines)
    for k, found in _row_problems(name, lines, id_columns).items():
        problems[k] = found

    def names(column: str) -> list[str]:
        return [" ".join(text.split()) for text in get[column]]

    return [
        RosterRow(*fields)
        for fields in zip(
            lines,
            child_ids,
            names("child_name"),
            births,
            sexes,
            id_columns["father_id"][0],
            id_columns["mother_id"][0],
            statuses,
            categories,
            foundlings,
            names("father_name"),
            names("mother_name"),
            regions,
            checks,
            problems,
            strict=True,
        )
    ]


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


def _source(text: str, *, path: str, line: int) -> str:
    source = text.strip()
    node, slash, dataset = source.partition("/")
    if not (slash and node and dataset and "/" not in dataset):
        raise InputError(f"{path}:{line}: column source: expected node/dataset")
    return source


@gc_paused()
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
    lines, cells = table.columns(EVIDENCE_COLUMNS)
    ids = _normalize_ids(cells["person_id"], today=None)
    rows = _evidence_by_column(table.path, cells, ids)
    if rows is None:  # a bad cell somewhere: the row-by-row reading finds and names the first
        rows = _evidence_by_row(table.path, lines, cells, ids)
    return rows


def _evidence_by_column(
    name: str,
    get: Mapping[str, Sequence[str]],
    ids: tuple[list[str | None], list[str | None], list[bool]],
) -> list[EvidenceRow] | None:
    """The evidence, each column checked as a whole; ``None`` when any cell is bad.

    The values are those of :func:`_evidence_by_row`, computed once per distinct
    cell value; the bad cell is left to :func:`_evidence_by_row` to name.
    """
    people = ids[0]
    if None in people:
        return None
    parse_date = _Dates(name)
    try:
        codes = _each(
            get["circumstance"],
            lambda t: _choice(
                Circumstance, t, path=name, line=0, column="circumstance", fold=str.upper
            ),
        )
        sources = _each(get["source"], lambda t: _source(t, path=name, line=0))
        starts = _each(get["start_date"], lambda t: parse_date(t, 0, "start_date"))
        ends = _each(get["end_date"], lambda t: parse_date(t, 0, "end_date"))
        categories = _each(
            get["disability_category"],
            lambda t: _code(t, _CATEGORIES, path=name, line=0, column="disability_category"),
        )
        grades = _each(
            get["disability_grade"],
            lambda t: _code(t, _GRADES, path=name, line=0, column="disability_grade"),
        )
    except InputError:
        return None
    return list(
        map(EvidenceRow, cast(list[str], people), codes, sources, starts, ends, categories, grades)
    )


def _evidence_by_row(
    name: str,
    lines: list[int],
    get: Mapping[str, Sequence[str]],
    ids: tuple[list[str | None], list[str | None], list[bool]],
) -> list[EvidenceRow]:
    """The evidence, checked one row at a time: raises on the first bad cell, in file order."""
    people, id_problems, empty = ids
    parse_date = _Dates(name)
    out: list[EvidenceRow] = []
    for k, line in enumerate(lines):
        person = people[k]
        if person is None:
            why = "empty" if empty[k] else id_problems[k]
            raise InputError(f"{name}:{line}: column person_id: {why}")
        code = _choice(
            Circumstance,
            get["circumstance"][k],
            path=name,
            line=line,
            column="circumstance",
            fold=str.upper,
        )
        out.append(
            EvidenceRow(
                person_id=person,
                circumstance=code,
                source=_source(get["source"][k], path=name, line=line),
                start_date=parse_date(get["start_date"][k], line, "start_date"),
                end_date=parse_date(get["end_date"][k], line, "end_date"),
                disability_category=_code(
                    get["disability_category"][k],
                    _CATEGORIES,
                    path=name,
                    line=line,
                    column="disability_category",
                ),
                disability_grade=_code(
                    get["disability_grade"][k],
                    _GRADES,
                    path=name,
                    line=line,
                    column="disability_grade",
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
    "gc_paused",
    "read_evidence",
    "read_roster",
    "read_roster_database",
    "read_roster_source",
    "write_atomically",
    "write_evidence",
]


# --- evidence from a node's matches ------------------------------------------------------------


_UNSEEN = object()


def _payload_date(value: str, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise XmatchError(f"payload field {name} is not a YYYY-MM-DD date") from None


def _payload_int(value: str, name: str, high: int) -> int | None:
    text = value.strip()
    if not text:
        return None
    if text.endswith(".0"):
        text = text[:-2]
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= high):
        raise XmatchError(f"payload field {name} is not a number from 1 to {high}")
    return int(text)


def match_rows(
    *,
    source: str,
    circumstance: str,
    indices: npt.NDArray[np.int64],
    payloads: Sequence[dict[str, str]],
    identities: Sequence[str],
) -> tuple[EvidenceRow, ...]:
    """Evidence rows for matches ``indices`` (into ``identities``) of ``source``.

    Used for a whole sub-round (:func:`evidence_rows`) and for each keyed-hash
    match chunk as it arrives, so that matches delivered before a failure
    still count.

    Raises:
        XmatchError: as :func:`evidence_rows`.
    """
    try:
        code = Circumstance(circumstance)
    except ValueError:
        raise XmatchError("node announced an unknown circumstance code") from None
    allowed = set(EVIDENCE_OPTIONAL)
    # a set sends few distinct dates and grades: each distinct cell is parsed once
    dates: dict[tuple[str, str], date | None] = {}
    numbers: dict[tuple[str, str], int | None] = {}

    def day(payload: dict[str, str], name: str) -> date | None:
        value = payload.get(name, "")
        if not value:
            return None
        key = (name, value)
        found = dates.get(key, _UNSEEN)
        if found is _UNSEEN:
            found = dates[key] = _payload_date(value, name)
        return found  # type: ignore[return-value]

    def number(payload: dict[str, str], name: str, high: int) -> int | None:
        value = payload.get(name, "")
        if not value:
            return None
        key = (name, value)
        found = numbers.get(key, _UNSEEN)
        if found is _UNSEEN:
            found = numbers[key] = _payload_int(value, name, high)
        return found  # type: ignore[return-value]

    rows: list[EvidenceRow] = []
    add = rows.append
    for index, payload in zip(indices.tolist(), payloads, strict=True):
        if not payload.keys() <= allowed:
            # never quote the key: it is the node's text (it could be anything)
            raise XmatchError("an unknown payload field is not an evidence column")
        add(
            EvidenceRow(
                identities[index],
                code,
                source,
                day(payload, "start_date"),
                day(payload, "end_date"),
                number(payload, "disability_category", 7),
                number(payload, "disability_grade", 4),
            )
        )
    return tuple(rows)
