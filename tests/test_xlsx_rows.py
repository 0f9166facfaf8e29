"""coordinator.xlsx_rows when writing fails: in the zip thread or while building rows.

The sheet XML itself is checked against XlsxWriter in tests/test_report_caseworkers.py.
"""

from __future__ import annotations

import errno
import io
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import xlsxwriter

from coordinator.xlsx_rows import _ZipWriter, fill_sheets


class _FullDisk(io.BytesIO):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def _book(path: Path) -> None:
    book = xlsxwriter.Workbook(str(path))
    book.add_worksheet("a").write_row(0, 0, ["x", "y"])
    book.add_worksheet("b").write_row(0, 0, ["x", "y"])
    book.close()


def test_a_failure_in_the_zip_thread_reaches_the_caller() -> None:
    """ENOSPC while the thread compresses: the caller's next put or the end of the block
    raises it, and the thread has ended (nothing left running)."""
    with zipfile.ZipFile(_FullDisk(room=4096), "w", compression=zipfile.ZIP_STORED) as target:
        with pytest.raises(OSError, match="No space left"), _ZipWriter(target) as writer:
            writer.put("xl/worksheets/sheet1.xml", [b"x" * 100_000])
            for _ in range(50):  # some put after the failure raises it, or __exit__ does
                writer.put("xl/worksheets/sheet2.xml", [b"y" * 10])
        assert not [t for t in threading.enumerate() if t.name == "xlsx-zip"]
        target.fp = None  # the archive is broken; do not write its directory on close


def test_rows_that_fail_leave_the_workbook_as_it_was(tmp_path: Path) -> None:
    """A failure while rows are built (here: the rows themselves raise, as a Ctrl-C would)
    stops the thread, removes the partial file and leaves the original workbook."""
    path = tmp_path / "book.xlsx"
    _book(path)
    before = path.read_bytes()

    def rows() -> Iterator[Sequence[str]]:
        yield ("1", "2")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fill_sheets(path, {1: [("a", "b")], 2: rows()}, columns=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.xlsx"]
    assert not [t for t in threading.enumerate() if t.name == "xlsx-zip"]


def test_rows_are_written_in_order(tmp_path: Path) -> None:
    path = tmp_path / "book.xlsx"
    _book(path)
    fill_sheets(path, {1: [("a", "b"), ("c", "d")], 2: [("e", "f")]}, columns=2)
    with zipfile.ZipFile(path) as book:
        first = book.read("xl/worksheets/sheet1.xml").decode()
        second = book.read("xl/worksheets/sheet2.xml").decode()
        names = book.namelist()
    assert first.index(">a<") < first.index(">c<") and ">e<" in second
    assert names.index("xl/worksheets/sheet1.xml") < names.index("xl/worksheets/sheet2.xml")
