"""What the command line says about its own output paths and about typed values.

Found by a review against the data contract: an output path under a file, or
one the OS refuses, gave ``internal error: FileExistsError at pathlib.py``; an
output path naming a device or a link replaced it (as root, ``--out /dev/full``
turned the device into a file); argparse's own errors echoed an identity
number typed in the wrong place; a roster row without a child's name passed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from coordinator import exit_codes
from coordinator.records import read_roster
from psi.errors import InputError
from runtime.config import withhold_numbers
from tests.federation import xmatch

CHILD = "150802201503150028"
HEADER = (
    "child_id,child_name,father_id,mother_id,status,category,foundling,region_code,"
    "last_check_date,child_birth_date,child_sex"
)


def _inputs(tmp_path: Path, name: str = "小明") -> tuple[Path, Path]:
    roster = tmp_path / "roster.csv"
    roster.write_text(f"{HEADER}\n,{name},,,candidate,,,,,2015-03-01,M\n", encoding="utf-8")
    evidence = tmp_path / "evidence.csv"
    evidence.write_text("person_id,circumstance,source,start_date,end_date\n", encoding="utf-8")
    return roster, evidence


def _evaluate(tmp_path: Path, *more: str) -> subprocess.CompletedProcess[str]:
    roster, evidence = _inputs(tmp_path)
    return xmatch(
        "rules", "evaluate", "--roster", str(roster), "--evidence", str(evidence),
        "--as-of", "2026-11-29", *more,
    )  # fmt: skip


def _one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xmatch: error: "), done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    return lines[0]


def test_an_output_under_a_file_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x", encoding="utf-8")
    line = _one_line(_evaluate(tmp_path, "--out", str(tmp_path / "plain" / "d.json")), 1)
    assert str(tmp_path / "plain") in line, line


@pytest.mark.parametrize("kind", ["link", "fifo"])  # a folder: its own message, checked first
def test_an_output_that_is_not_a_regular_file_is_not_replaced(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("kept\n", encoding="utf-8")
    out = tmp_path / "out.json"
    if kind == "link":
        out.symlink_to(target)
    else:
        os.mkfifo(out)
    line = _one_line(_evaluate(tmp_path, "--out", str(out)), 1)
    assert line.startswith(f"xmatch: error: {out}: exists and is "), line
    assert line.endswith("; not replaced"), line
    assert target.read_text(encoding="utf-8") == "kept\n"
    assert out.is_symlink() if kind == "link" else out.is_fifo()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.json")]  # no temporaries


def test_a_spreadsheet_over_a_link_is_refused_before_it_is_written(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.xlsx"
    target.write_bytes(b"kept")
    (tmp_path / "d.xlsx").symlink_to(target)
    out = tmp_path / "d.json"
    done = _evaluate(tmp_path, "--out", str(out), "--xlsx", str(tmp_path / "d.xlsx"))
    assert "exists and is a link; not replaced" in _one_line(done, 1)
    assert target.read_bytes() == b"kept"


@pytest.mark.parametrize(
    "argv",
    [
        [CHILD],  # invalid choice: '…'
        ["rules", "evaluate", "--lang", CHILD],  # an option's invalid choice
        ["demo", CHILD],  # unrecognized arguments: …
    ],
)
def test_argument_errors_never_echo_a_long_number(argv: list[str]) -> None:
    done = xmatch(*argv)
    assert done.returncode == exit_codes.USAGE, done.stderr
    assert CHILD not in done.stderr and CHILD[:6] not in done.stderr, done.stderr
    assert "(value not shown)" in done.stderr, done.stderr


def test_withhold_numbers_keeps_the_rest_of_the_message() -> None:
    assert withhold_numbers(f"invalid choice: '{CHILD}' (choose from 'zh', 'en')") == (
        "invalid choice: (value not shown) (choose from 'zh', 'en')"
    )
    assert withhold_numbers(f'near "x{CHILD}": syntax error') == (
        "near (value not shown): syntax error"
    )
    assert withhold_numbers(f"unrecognized arguments: --bogus {CHILD}") == (
        "unrecognized arguments: --bogus (value not shown)"
    )
    assert withhold_numbers("expected 12345 at line 7") == "expected 12345 at line 7"


@pytest.mark.parametrize("name", ["", "   ", "\u3000"])
def test_a_roster_row_without_a_name_is_refused(tmp_path: Path, name: str) -> None:
    roster, _ = _inputs(tmp_path, name)
    with pytest.raises(InputError) as info:
        read_roster(roster)
    assert info.value.diagnostics() == (
        f"{roster}:2: column child_name: required (the child's name)"
    )


def test_a_roster_without_parent_columns_has_every_parent_unknown(tmp_path: Path) -> None:
    # data contract: father_id and mother_id are optional columns ("empty means unknown")
    roster = tmp_path / "roster.csv"
    roster.write_text(f"child_id,child_name,status\n{CHILD},小明,candidate\n", encoding="utf-8")
    (row,) = read_roster(roster).rows
    assert (row.child_id, row.father_id, row.mother_id) == (CHILD, None, None)
