"""runtime.csv_faults: the first malformed record of a node's CSV, named by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.csv_faults import _delimiter, first_fault


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("person_id,start_date,end_date\n", ","),
        ("person_id;start_date;end_date\n", ";"),
        ("person_id\tstart_date\n", "\t"),
        ("person_id\n", ","),
        # delimiters inside quoted names do not count
        ('"id,number";"start,date";end\n', ";"),
        ('"a;b;c;d",e,f\n', ","),
        ('"say ""x;y""";b;c\n', ";"),
    ],
)
def test_delimiter_of_a_header_line(header: str, delimiter: str) -> None:
    assert _delimiter(header) == delimiter


def test_a_semicolon_file_with_commas_in_quoted_names_is_scanned_by_its_semicolons(
    tmp_path: Path,
) -> None:
    """Counted with the quoted commas, the header read as comma-separated and every row
    (one field each) as "malformed"; read by its semicolons, the short row is found."""
    path = tmp_path / "custody.csv"
    path.write_text(
        '"person,id";"start,date";"end,date"\n'
        "110101198001010019;2025-01-01;2030-01-01\n"
        "110101198001010027;2025-01-01\n",
        encoding="utf-8",
    )
    assert first_fault(path, "custody.csv") == (
        "custody.csv:3: malformed CSV: expected 3 fields as in the header, found 2"
    )
    path.write_text('"person,id";"start,date"\n110101198001010019;2025-01-01\n', encoding="utf-8")
    assert first_fault(path, "custody.csv") is None
