"""Fast data rows for an xlsx workbook that XlsxWriter wrote: text cells as sheet XML.

XlsxWriter costs about 6 µs for each cell (argument conversion, escaping by
regular expression, one file write per cell). A decisions.xlsx of 100k
children has about a million cells, so :mod:`coordinator.spreadsheet` lets
XlsxWriter write the workbook with each decision sheet's frame (columns,
header row, frozen pane, filter) and no data rows, and this module then puts
the rows into those sheets' XML: the same ``<row>``/``<c t="inlineStr">``
elements XlsxWriter's constant-memory mode writes for ``write_string``, with
the same escaping (XML's ``& < >``; control characters as ``_xHHHH_``, a
literal ``_xHHHH_`` as ``_x005F_xHHHH_``; ``xml:space="preserve"`` for text
with leading or trailing white space; cells cut at 32,767 UTF-16 units). Empty
values are not written, as before. ``tests/test_report_caseworkers.py``
checks that openpyxl reads back what XlsxWriter's own cells gave.
"""

from __future__ import annotations

import queue
import re
import threading
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Excel's longest cell text (XlsxWriter cuts there too)
MAX_TEXT = 32_767
_LITERAL_ESCAPE = re.compile(r"(_x[0-9a-fA-F]{4}_)")
_CONTROL = re.compile(r"([\x00-\x08\x0b-\x1f])")
_COLUMN_STYLE = re.compile(r'<col min="(\d+)" max="(\d+)"[^>]*? style="(\d+)"')
_DIMENSION = re.compile(r'<dimension ref="[^"]*"/>')
#: rows per write into the zip member
_BATCH = 4096


def _escape(text: str) -> str:
    """XlsxWriter's escaping of a data cell's text (control characters, then XML)."""
    text = _LITERAL_ESCAPE.sub(r"_x005F\1", text)
    text = _CONTROL.sub(lambda m: f"_x{ord(m.group(1)):04X}_", text)
    text = text.replace("\ufffe", "_xFFFE_").replace("\uffff", "_xFFFF_")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str) -> str:
    """At most :data:`MAX_TEXT` UTF-16 units, never splitting a character (as XlsxWriter)."""
    if len(text) <= MAX_TEXT // 2:
        return text
    length = 0
    for index, char in enumerate(text):
        length += 2 if ord(char) > 0xFFFF else 1
        if length > MAX_TEXT:
            return text[:index]
    return text


def _letters(index: int) -> str:
    """Column letters of a 0-based column index (0 -> A, 26 -> AA)."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(65 + rest) + name
    return name


def _cell_heads(head_xml: str, columns: int) -> list[str]:
    """The ``" s="N" t="inlineStr"><is>`` part of each column's cells (its style, if any)."""
    styles: dict[int, str] = {}
    for low, high, style in _COLUMN_STYLE.findall(head_xml):
        for col in range(int(low) - 1, int(high)):
            styles[col] = style
    return [
        f'" s="{styles[c]}" t="inlineStr"><is>' if c in styles else '" t="inlineStr"><is>'
        for c in range(columns)
    ]


def _plain(values: Sequence[str]) -> bool:
    """Whether the values are written as they are: nothing to escape or cut, no cell
    starting or ending with white space.

    Cheaper than a regular expression over the row: ``isprintable`` is false for every
    control character, ``\\ufffe``, ``\\uffff`` and every white space but the ASCII
    space, so only ``& < >``, ``_x`` and the ASCII space are left to look for.
    """
    joined = "".join(values)
    if not (
        len(joined) <= MAX_TEXT // 2
        and joined.isprintable()
        and "&" not in joined
        and "<" not in joined
        and ">" not in joined
        and "_x" not in joined
    ):
        return False
    return " " not in joined or all(v == v.strip(" ") for v in values)


class _Rows:
    """One sheet's ``<row>`` elements, for its column letters and cell heads.

    Most rows need no escaping, no cutting and no ``xml:space``: they are one
    ``str.format`` of a template for the row's pattern of empty cells (a few
    dozen patterns in a round). Any other row is written cell by cell.
    """

    def __init__(self, letters: Sequence[str], heads: Sequence[str]) -> None:
        self.letters = letters
        self.heads = heads
        self._templates: dict[tuple[bool, ...], str] = {}

    def _template(self, filled: tuple[bool, ...]) -> str:
        cells = "".join(
            f'<c r="{self.letters[col]}{{0}}{self.heads[col]}<t>{{{col + 1}}}</t></is></c>'
            for col, present in enumerate(filled)
            if present
        )
        template = self._templates[filled] = f'<row r="{{0}}">{cells}</row>'
        return template

    def xml(self, number: int, values: Sequence[str]) -> str:
        if _plain(values):
            filled = tuple(map(bool, values))
            template = self._templates.get(filled) or self._template(filled)
            return template.format(number, *values)
        return self._cell_by_cell(number, values)

    def _cell_by_cell(self, number: int, values: Sequence[str]) -> str:
        parts = [f'<row r="{number}">']
        add = parts.append
        for col, value in enumerate(values):
            if not value:
                continue
            value = _escape(_cut(value))
            space = ' xml:space="preserve"' if value[0].isspace() or value[-1].isspace() else ""
            add(f'<c r="{self.letters[col]}{number}{self.heads[col]}<t{space}>{value}</t></is></c>')
        add("</row>")
        return "".join(parts)


def _fill(xml: str, rows: Iterable[Sequence[str]], columns: int) -> Iterable[str]:
    """The sheet's XML with ``rows`` (from row 2) appended to its ``sheetData``."""
    cut = xml.index("</sheetData>")
    head, tail = xml[:cut], xml[cut:]
    row_xml = _Rows([_letters(c) for c in range(columns)], _cell_heads(head, columns)).xml
    body: list[str] = []
    number = 1
    for number, values in enumerate(rows, start=2):
        body.append(row_xml(number, values))
    last = _letters(columns - 1)
    head = _DIMENSION.sub(f'<dimension ref="A1:{last}{max(number, 1)}"/>', head, count=1)
    yield head
    for start in range(0, len(body), _BATCH):
        yield "".join(body[start : start + _BATCH])
    yield tail


def fill_sheets(
    path: Path, sheets: dict[int, Iterable[Sequence[str]]], *, columns: int, level: int = 1
) -> None:
    """Rewrite the xlsx at ``path``: worksheet N (1-based) of ``sheets`` gets those text rows.

    Each sheet must hold its header row only (row 1, ``columns`` wide); every
    other part of the workbook is copied unchanged. ``level``: zlib level.
    The zip is written by a thread (:class:`_ZipWriter`) while the rows of the
    next sheet are built here.

    Raises:
        OSError: the file cannot be read or written.
    """
    rewritten = path.with_name(path.name + ".rows")
    try:
        with (
            zipfile.ZipFile(path) as source,
            zipfile.ZipFile(
                rewritten, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level
            ) as target,
            _ZipWriter(target) as writer,
        ):
            for info in source.infolist():
                data = source.read(info)
                number = _sheet_number(info.filename)
                if number not in sheets:
                    writer.put(info, [data])
                    continue
                pieces = _fill(data.decode("utf-8"), sheets[number], columns)
                writer.put(info.filename, [piece.encode("utf-8") for piece in pieces])
        rewritten.replace(path)
    except BaseException:
        rewritten.unlink(missing_ok=True)
        raise


class _ZipWriter:
    """Members written into ``target`` by a thread, in the order they are put.

    zlib, the CRC and the file writes let go of the GIL, so compressing one
    sheet (about a fifth of the spreadsheet's time) overlaps building the next
    one's rows. At most one member waits in the queue (memory: two sheets'
    XML). A failure in the thread is raised here, at the next :meth:`put` or at
    the end of the ``with`` block.
    """

    def __init__(self, target: zipfile.ZipFile) -> None:
        self._target = target
        self._queue: queue.Queue[tuple[zipfile.ZipInfo | str, list[bytes]] | None] = queue.Queue(
            maxsize=1
        )
        self._failed: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="xlsx-zip", daemon=True)

    def __enter__(self) -> _ZipWriter:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:  # stop early: the partial file is removed by the caller
            self._stop = True
        self._queue.put(None)
        self._thread.join()
        if kind is None and self._failed is not None:
            raise self._failed

    def put(self, member: zipfile.ZipInfo | str, pieces: list[bytes]) -> None:
        """Queue ``member`` with its content, ``pieces`` one after another."""
        if self._failed is not None:
            raise self._failed
        self._queue.put((member, pieces))

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._stop or self._failed is not None:
                continue  # drain to the end marker
            member, pieces = job
            try:
                with self._target.open(member, "w") as out:
                    for piece in pieces:
                        out.write(piece)
            except BaseException as exc:  # raised in the caller's thread
                self._failed = exc


def _sheet_number(name: str) -> int | None:
    prefix, suffix = "xl/worksheets/sheet", ".xml"
    if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix) : -4].isdigit():
        return int(name[len(prefix) : -4])
    return None


__all__ = ["MAX_TEXT", "fill_sheets"]
