"""roster.csv (or a roster table) into typed :class:`~coordinator.record_types.RosterRow` values.

An identity number that cannot be normalized is not fatal: the row is kept,
it gets ``REVIEW`` and the problem is listed in :attr:`Roster.problems`
(eligibility.md, "Invalid identity numbers"). :mod:`coordinator.records`
re-exports the readers.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Literal

from coordinator.csv_files import (
    _REGION,
    Encoding,
    _choice,
    _Dates,
    _each,
    _normalize_ids,
    _Table,
    check_misspelled,
    gc_paused,
)
from coordinator.record_types import (
    ROSTER_OPTIONAL,
    ROSTER_REQUIRED,
    Category,
    Roster,
    RosterRow,
    RowProblem,
    Status,
    rows_from_columns,
)
from databases import DatabaseError, DatabaseSource, open_session
from psi.errors import ConfigError, InputError

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
            birth date or sex, a region code that is not 6 digits, or no rows.
    """
    table = _Table(path, encoding=encoding, required=ROSTER_REQUIRED, known=ROSTER_OPTIONAL)
    check_misspelled(
        table.path, table.index, ("father_id", "mother_id"), ROSTER_REQUIRED + ROSTER_OPTIONAL
    )
    lines, cells = table.columns(ROSTER_REQUIRED + ROSTER_OPTIONAL)
    return _roster_of_cells(table.path, lines, cells, as_of=as_of)


def _roster_of_cells(
    name: str, lines: list[int], cells: Mapping[str, Sequence[str]], *, as_of: date | None
) -> Roster:
    if not lines:
        # every command refuses it the same way: an empty export is a mistake
        # (a wrong sheet or query), and a round over no children decides nothing
        raise InputError(f"{name}: the roster has no rows (no children)")
    ids = {c: _normalize_ids(cells[c], today=as_of) for c in ("child_id", "father_id", "mother_id")}
    rows = _roster_by_column(name, lines, cells, ids)
    if rows is None:  # a bad cell somewhere: the row-by-row reading finds and names the first
        rows = _roster_by_row(name, lines, cells, ids)
    problems = [p for row in rows for p in row.problems]
    return Roster(
        path=name, rows=rows, problems=problems + _repeated(name, rows, ids["child_id"][0])
    )


def _repeated(
    name: str, rows: Sequence[RosterRow], child_ids: Sequence[str | None]
) -> list[RowProblem]:
    """A note for each row whose child another row already holds (same ID, or name, birth
    date and sex). Both rows are decided; the note tells the operator to keep one, since
    a caseworker would otherwise get the child twice, perhaps with two decisions.

    ``child_ids``: the rows' ``child_id`` column; only the rows without a number, and
    those whose number is repeated (counted in one pass), are looked at.
    """
    counts = Counter(value for value in child_ids if value is not None)
    twice = {value for value, n in counts.items() if n > 1}
    rows = [
        row for row, value in zip(rows, child_ids, strict=True) if value is None or value in twice
    ]
    first: dict[str, int] = {}
    notes: list[RowProblem] = []
    for row in rows:
        key = row.child_key
        if key is None:
            continue
        seen = first.setdefault(key, row.line)
        if seen != row.line:
            column = "child_id" if row.child_id is not None else "child_name"
            notes.append(
                RowProblem(
                    name, row.line, column, f"the same child as line {seen}: keep one of the rows"
                )
            )
    return notes


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
        try:
            region = _region(get["region_code"][k])
        except InputError:
            raise InputError(
                f"{name}:{line}: column region_code: not a 6-digit address code"
            ) from None
        child_name = " ".join(get["child_name"][k].split())
        if not child_name:  # required: reasons, lists and the spreadsheet name the child
            raise InputError(f"{name}:{line}: column child_name: required (the child's name)")
        row = RosterRow(
            line=line,
            child_id=child_id,
            child_name=child_name,
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
    """A 6-digit address code in ASCII digits (full-width ones converted, as in IDs)."""
    region = unicodedata.normalize("NFKC", text).strip() or None
    if region is not None and not (_REGION.match(region) and region.isascii()):
        raise InputError("region_code")
    return region


def _birth_from_id(number: str, seen: dict[str, date]) -> date:
    # a roster has a few thousand distinct birth days: parse each once
    digits = number[6:14]
    found = seen.get(digits)
    if found is None:
        found = seen[digits] = date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    return found


#: whitespace other than the space: a cell holding one is never tidy
_OTHER_SPACE = re.compile(r"[^\S ]")


def tidy_names(cells: Sequence[str]) -> list[str]:
    """Each cell with runs of whitespace made one space and the ends trimmed.

    A column without anything to change (the usual case) is tested on the
    joined column: no whitespace but the space (one regex class scan), and no
    space doubled or at either end of a cell (substring searches). That is 5x
    faster than one regex with those alternatives (timeit: 0.010 s against 0.050 s for
    the bench roster's 100k names).
    """
    joined = "\x00".join(cells)
    if not (
        "  " in joined
        or joined[:1] == " "
        or joined[-1:] == " "
        or " \x00" in joined
        or "\x00 " in joined
        or _OTHER_SPACE.search(joined)
    ):
        return list(cells)
    return [" ".join(text.split()) for text in cells]


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
    seen: dict[str, date] = {}
    for k, child_id in enumerate(child_ids):
        if statuses[k] is Status.SUPPORTED and categories[k] is None:
            return None
        if child_id is not None:
            births[k] = _birth_from_id(child_id, seen)
            sexes[k] = "M" if int(child_id[16]) % 2 else "F"
        elif child_empty[k] and (births[k] is None or sexes[k] is None):
            return None
    problems: list[tuple[RowProblem, ...]] = [()] * len(lines)
    for k, found in _row_problems(name, lines, id_columns).items():
        problems[k] = found

    def names(column: str) -> list[str]:
        return tidy_names(get[column])

    child_names = names("child_name")
    if "" in child_names:  # required: the row-by-row reading names the first without one
        return None
    return rows_from_columns(
        RosterRow,
        (
            lines,
            child_ids,
            child_names,
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
        ),
    )
