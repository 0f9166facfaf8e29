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
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from itertools import repeat
from pathlib import Path
from typing import TextIO, cast

import numpy as np
import numpy.typing as npt

from coordinator.csv_files import (
    Encoding,
    _choice,
    _Dates,
    _each,
    _normalize_ids,
    _Table,
    decode_csv_bytes,
    gc_paused,
    write_atomically,
)
from coordinator.record_types import (
    EVIDENCE_COLUMNS,
    EVIDENCE_OPTIONAL,
    EVIDENCE_REQUIRED,
    Category,
    Circumstance,
    Decision,
    EvidenceRow,
    Role,
    Roster,
    RosterRow,
    RowProblem,
    Status,
    rows_from_columns,
)
from coordinator.roster_file import read_roster, read_roster_database, read_roster_source
from psi.errors import InputError, XmatchError
from psi.session import PayloadColumns

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
            bad date, a disability category or grade out of range, a
            ``person_id`` that is empty or not a valid identity number, or a
            source with both ``SERVICE`` rows and other circumstances.
    """
    table = _Table(path, encoding=encoding, required=EVIDENCE_REQUIRED)
    lines, cells = table.columns(EVIDENCE_COLUMNS)
    ids = _normalize_ids(cells["person_id"], today=None)
    rows = _evidence_by_column(table.path, cells, ids)
    if rows is None:  # a bad cell somewhere: the row-by-row reading finds and names the first
        rows = _evidence_by_row(table.path, lines, cells, ids)
    _one_kind_per_source(table.path, lines, rows)
    return rows


def _one_kind_per_source(name: str, lines: Sequence[int], rows: Sequence[EvidenceRow]) -> None:
    """Refuse a source with both ``SERVICE`` rows and other circumstances.

    A source with a ``SERVICE`` row is read as a service set, and a failed service set
    changes no decision: mixed in, one such row would have let a failed evidence set
    give ``EXIT``. A round's set announces one circumstance, so only a file put
    together by hand can mix them.

    Raises:
        InputError: the first row whose kind differs from its source's first row.
    """
    first: dict[str, tuple[bool, int]] = {}
    for line, row in zip(lines, rows, strict=True):
        service = row.circumstance is Circumstance.SERVICE
        kind, at = first.setdefault(row.source, (service, line))
        if kind != service:
            raise InputError(
                f"{name}:{line}: column circumstance: {row.source} has SERVICE rows and "
                f"other circumstances (line {at}); a set reports services or circumstances, "
                "not both"
            )


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
    return rows_from_columns(
        EvidenceRow, (cast(list[str], people), codes, sources, starts, ends, categories, grades)
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


__all__ = [
    "Category",
    "Circumstance",
    "Decision",
    "Encoding",
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


#: a payload date: YYYY-MM-DD, perhaps with a time of day after it (a text column that
#: holds timestamps); nothing else, so that a number or trailing text is out of protocol
_PAYLOAD_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?")
#: the years a record's date may name: a date before 1900 or after 2199 is no record's
PAYLOAD_YEARS = range(1900, 2200)


def _payload_date(value: str, name: str) -> date | None:
    if not value:
        return None
    found = _PAYLOAD_DATE.fullmatch(value)
    try:
        if found is None or int(found[1]) not in PAYLOAD_YEARS:
            raise ValueError(name)
        return date(int(found[1]), int(found[2]), int(found[3]))
    except ValueError:
        raise XmatchError(
            f"payload field {name} is not a YYYY-MM-DD date from {PAYLOAD_YEARS[0]} to "
            f"{PAYLOAD_YEARS[-1]}"
        ) from None


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
    payload: PayloadColumns,
    identities: Sequence[str],
    parsed: dict[str, dict[str, object]] | None = None,
) -> tuple[EvidenceRow, ...]:
    """Evidence rows for matches ``indices`` (into ``identities``) of ``source``.

    Used for a whole sub-round (:func:`evidence_rows`) and for each keyed-hash
    match chunk as it arrives, so that matches delivered before a failure
    still count. ``parsed``: the payload values parsed so far, by field, kept by
    the caller from chunk to chunk (a chunk's dates are mostly new to it, not
    to its sub-round: 140k custody matches hold a few thousand distinct days).

    Raises:
        XmatchError: as :func:`evidence_rows`.
    """
    try:
        code = Circumstance(circumstance)
    except ValueError:
        raise XmatchError("node announced an unknown circumstance code") from None
    if not payload.columns.keys() <= set(EVIDENCE_OPTIONAL):
        # never quote the name: it is the node's text (it could be anything)
        raise XmatchError("an unknown payload field is not an evidence column")
    count = len(indices)
    if len(payload) != count:
        raise XmatchError("payload entries and their matches differ in number")
    payload.check()  # every column as long as the matches (map would stop short)
    memo = {} if parsed is None else parsed

    def column(name: str, parse: Callable[[str], object]) -> Iterable[object]:
        values = payload.columns.get(name)
        if values is None:
            return repeat(None, count)
        # a set sends few distinct dates and grades: each distinct cell is parsed once
        known = memo.setdefault(name, {})
        for value in set(values).difference(known):
            known[value] = parse(value)
        return map(known.__getitem__, values)

    columns = (
        map(identities.__getitem__, indices.tolist()),
        repeat(code, count),
        repeat(source, count),
        column("start_date", lambda v: _payload_date(v, "start_date")),
        column("end_date", lambda v: _payload_date(v, "end_date")),
        column("disability_category", lambda v: _payload_int(v, "disability_category", 7)),
        column("disability_grade", lambda v: _payload_int(v, "disability_grade", 4)),
    )
    return tuple(rows_from_columns(EvidenceRow, columns))
