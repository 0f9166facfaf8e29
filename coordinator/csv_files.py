"""CSV files at the boundary: decoding, splitting into cells, dates and choices, atomic writes.

Shared by the roster reader (:mod:`coordinator.roster_file`) and the evidence
reader (:mod:`coordinator.records`). No message quotes a value from the file:
it names the file, the line and the column instead.
"""

from __future__ import annotations

import csv
import difflib
import gc
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Literal, TextIO, TypeVar

from coordinator.record_types import _ID_PROBLEMS
from psi.errors import InputError
from psi.identifiers import looks_cut_to_15_digits, normalize_id_column
from runtime.csv_faults import malformed
from runtime.files import check_replaceable

Encoding = Literal["auto", "utf-8", "gb18030"]


def _near(name: str, header: Sequence[str]) -> str:
    """``" (the header has NAME2; ...)"`` when a header column looks like a misspelling
    (``header``: the columns that are not another column of the format)."""
    # never quote a cell with digits: a file without a header has data in line 1
    words = [h for h in header if h and not any(c.isdigit() for c in h)]
    close = difflib.get_close_matches(name, words, n=1, cutoff=0.7)
    hint = f"the header has {close[0]!r}, a misspelling?" if close else ""
    return f" ({hint})" if hint else ""


def check_misspelled(
    table_path: str, index: Mapping[str, int], optional: Sequence[str], formats: Sequence[str]
) -> None:
    """Refuse a header that lacks an optional column of ``optional`` but has a column that
    looks like its misspelling (``fathr_id``): left out, the column means "all empty",
    which for a parent's ID would make every parent unknown without a word.

    ``formats``: every column of the format (a near name that is one of them is not a
    misspelling).

    Raises:
        InputError: line 1 of ``table_path``, naming the column and the near name.
    """
    others = [n for n in index if n not in formats]
    for name in optional:
        if name not in index:
            hint = _near(name, others)
            if hint:
                raise InputError(
                    f"{table_path}:1: no column {name}{hint[:-1]}; leave the column out "
                    "only when no parent is known)"
                )


#: a spreadsheet's delimiter line (``sep=,`` splits into ``sep=`` and an empty name)
_SEP_LINE = re.compile(r"sep=.?")
#: what a one-column header holds between its names when the file is not comma-separated
_OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def _not_commas(header: Sequence[str]) -> str:
    """``" (...)"`` when the header shows that the file is not comma-separated: a
    spreadsheet's ``sep=`` line above it, or one column with another delimiter in it.

    Names only the delimiter, never a cell (a file without a header has data in line 1).
    """
    first = header[0].lstrip("\ufeff").strip().lower() if header else ""
    if len(header) <= 2 and _SEP_LINE.fullmatch(first):
        return (
            " (line 1 is a spreadsheet's sep= line: delete that line, so that the header "
            "is the first line)"
        )
    if len(header) == 1:
        for delimiter, name in _OTHER_DELIMITERS.items():
            if delimiter in header[0]:
                return (
                    f" (the header is one column with {name} between its names: the file "
                    "is not comma-separated; save it again as CSV, comma-delimited)"
                )
    return ""


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")  # ASCII digits only
_REGION = re.compile(r"\d{6}\Z")
#: a line of empty cells only (``,,,,``: what a spreadsheet writes for a row it kept)
_EMPTY_ROW = re.compile(r"^[^\S\n]*(?:,[^\S\n]*)*$", re.MULTILINE)
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

    Before it is enabled again, every object the collector tracks is frozen
    (``gc.freeze``): otherwise the next collections walk the millions of
    objects just built, young and then old generation, which cost about a
    second after each pause at 100k children. Frozen objects are still freed
    by reference counting when the round lets go of them; only a reference
    cycle among them would stay until the process ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
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
        #: whether a plain file has a line of empty cells only
        self._empty_rows = False
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            if lines is None:
                header = next(reader)
            else:
                header = lines[0].split(",") if lines[0] else []  # csv.reader: [] for ""
                self._plain = [line.split(",") for line in lines[1:]]
                # one search over the data lines (a line end after the last is not one)
                self._empty_rows = _EMPTY_ROW.search("\n".join(lines[1:])) is not None
        except StopIteration:
            raise InputError(f"{self.path}:1: the file is empty (no header row)") from None
        except csv.Error as exc:
            raise InputError(f"{self.path}:1: malformed CSV header: {exc}") from None
        self._reader = reader
        # header names as the database reader takes them: case and surrounding blanks aside
        names = [name.strip().lstrip("\ufeff").strip().lower() for name in header]
        self.width = len(names)
        self.index: dict[str, int] = {}
        for position, name in enumerate(names):
            if name in self.index:
                if not name:
                    raise InputError(
                        f"{self.path}:1: two columns of the header have no name "
                        "(a delimiter after the last column?)"
                    )
                raise InputError(f"{self.path}:1: column {name} appears twice in the header")
            self.index[name] = position
        for name in required:
            if name not in self.index:
                hint = _not_commas(header) or _near(
                    name, [n for n in names if n not in (*required, *known)]
                )
                raise InputError(f"{self.path}:1: missing required column {name}{hint}")

    def column(self, name: str) -> int | None:
        return self.index.get(name)

    def _records(self) -> Iterator[tuple[int, list[str]]]:
        if self._plain is not None:
            yield from enumerate(self._plain, start=2)
            return
        reader = self._reader
        while True:
            start = reader.line_num + 1  # where this record begins
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(malformed(self.path, start, reader.line_num, exc)) from None
            yield reader.line_num, fields

    def rows(self) -> tuple[list[int], list[list[str]]]:
        """The line number and the fields of every data row, blank lines skipped.

        A row whose every cell is empty is skipped as a blank line is: a
        spreadsheet writes such rows (``,,,,``) below the data, and they hold no one.

        Raises:
            InputError: malformed CSV, or a row whose number of fields differs from the header.
        """
        width = self.width
        plain = self._plain
        if (
            plain is not None
            and width > 1
            and not self._empty_rows
            and all(len(fields) == width for fields in plain)
        ):
            return list(range(2, len(plain) + 2)), plain  # no blank line, no short row
        numbers: list[int] = []
        rows: list[list[str]] = []
        for line, fields in self._records():
            if not any(field.strip() for field in fields):
                continue  # a blank line, or a row of empty cells
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
        _cut_digits(values, ids, problems)
    return ids, problems, empty


def _cut_digits(values: Sequence[str], ids: list[str | None], problems: list[str | None]) -> None:
    """Set aside the numbers of a column that a spreadsheet stored as numbers.

    A spreadsheet keeps 15 digits of a number, so an 18-digit identity number typed
    or imported as one ends in ``000`` (身份证号后三位变0). Ten in eleven then fail
    their check character; the eleventh passes and names someone else. When a column
    shows that sign (an invalid 18-digit number ending in ``000``), each of its
    numbers ending in ``000`` is a problem, the valid-looking ones too: a wrong number
    finds no record, and a parent without a record could make a child exit.
    """
    cut = [
        i
        for i, problem in enumerate(problems)
        if problem is not None and looks_cut_to_15_digits(values[i])
    ]
    if not cut:
        return
    for i in cut:
        problems[i] = _id_problem("cut_digits")
    for i, canonical in enumerate(ids):
        if canonical is not None and canonical.endswith("000"):
            ids[i] = None
            problems[i] = _id_problem("cut_digits")


_V = TypeVar("_V")


def _each(values: Sequence[str], parse: Callable[[str], _V]) -> list[_V]:
    """``parse`` applied to every cell, once per distinct value (a column repeats itself)."""
    parsed = {value: parse(value) for value in set(values)}
    return list(map(parsed.__getitem__, values))


def write_atomically(path: Path, fill: Callable[[TextIO], object]) -> None:
    """Write a UTF-8 text file through ``fill`` into a temporary sibling, then ``os.replace``.

    A reader sees the old file or the complete new one, never a part.

    Raises:
        OSError: the folder is not writable.
    """
    check_replaceable(path)
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
