"""Where a CSV file breaks RFC 4180, named by line, never by value.

The coordinator reads rosters and evidence with :mod:`csv`; a node reads its
match sets with DuckDB, whose own messages quote the offending row and so are
never shown. Both name a fault the same way, through this module.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

__all__ = ["NOT_CLOSED", "first_fault", "malformed"]

#: a quoted field that ends badly, where the reader met it later (another row's
#: quote closed it, or a quote inside it was not doubled)
NOT_CLOSED = (
    "a quoted field in this row is not closed properly: its closing quote is missing, "
    'or a quote inside it is not doubled ("")'
)

#: a double-quoted field, its doubled quotes included (RFC 4180)
_QUOTED = re.compile(r'"(?:[^"]|"")*"')

#: the delimiters DuckDB's sniffer tries, in its order
_DELIMITERS = (",", "|", ";", "\t")


def malformed(name: str, start: int, end: int, exc: csv.Error) -> str:
    """The line of a malformed record, for a csv error met between ``start`` and ``end``.

    A quote never closed swallows the rest of the file (csv says "unexpected end of
    data", or "field larger than field limit" at 128 KiB), and a quote closed in the
    middle of a field is met on a later line; either way the record's first line is
    the one to fix, so that is the one named.
    """
    text = str(exc)
    if "unexpected end of data" in text or "field larger than field limit" in text:
        return f"{name}:{start}: malformed CSV: a quote opened in this row is never closed"
    if "expected after" in text:
        return f"{name}:{start}: malformed CSV: {NOT_CLOSED}"
    return f"{name}:{end}: malformed CSV: {text}"


def _delimiter(header: str) -> str:
    """The delimiter of a header line: the candidate it holds most often (``,`` if none),
    outside quoted names (a name ``"a,b"`` in a semicolon file holds a comma)."""
    bare = _QUOTED.sub("", header)
    counts = {d: bare.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def first_fault(path: Path, name: str) -> str | None:
    """The first record of the UTF-8 CSV at ``path`` that breaks the format, or None.

    A fault is a quote that does not close properly, or a row whose number of
    fields differs from the header's (empty lines are allowed). ``name`` is the
    file as the message should call it (a temporary UTF-8 copy is named as its
    original). Reads the whole file: call it only after a reader has failed.

    Raises:
        OSError: the file cannot be read.
    """
    with path.open(encoding="utf-8-sig", newline="", errors="replace") as f:
        header_line = f.readline()
        f.seek(0)
        reader = csv.reader(f, delimiter=_delimiter(header_line), strict=True)
        width: int | None = None
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                return malformed(name, start, reader.line_num, exc)
            if not fields:  # an empty line; one of blanks is a row of one field, as DuckDB reads it
                continue
            if width is None:
                width = len(fields)
            elif len(fields) != width:
                return (
                    f"{name}:{reader.line_num}: malformed CSV: expected {width} fields "
                    f"as in the header, found {len(fields)}"
                )
