"""The file boundary: roster.csv and evidence.csv (data-contracts.md, "Files")."""

from __future__ import annotations

import gc
from datetime import date
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from coordinator.records import (
    Category,
    Circumstance,
    EvidenceRow,
    Status,
    decode_csv_bytes,
    gc_paused,
    read_evidence,
    read_roster,
    write_evidence,
)
from psi.errors import InputError
from tests.rules_helpers import (
    EVIDENCE_HEADER,
    ROSTER_HEADER,
    fifteen,
    full_width,
    id_with_x,
    make_id,
)

CHILD = make_id(date(2015, 3, 15))
FATHER = make_id(date(1985, 1, 1))
MOTHER_X = id_with_x(date(1986, 6, 6))


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def test_roster_normalizes_ids_and_reads_every_column(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "roster.csv",
        [
            ROSTER_HEADER,
            f"{full_width(CHILD)},乌力吉·巴特尔,,,{fifteen(FATHER)},{MOTHER_X.lower()},父,母,"
            "supported,de_facto,,150402,2026-05-01",
            ",未落户儿童,2024-02-29,F,,,,,candidate,,yes,,",
        ],
        encoding="utf-8-sig",
    )
    roster = read_roster(path)
    first, second = roster.rows
    assert (first.child_id, first.father_id, first.mother_id) == (CHILD, FATHER, MOTHER_X)
    assert first.child_birth_date == date(2015, 3, 15) and first.child_sex == "M"
    assert (first.status, first.category, first.region_code) == (
        Status.SUPPORTED,
        Category.DE_FACTO,
        "150402",
    )
    assert first.last_check_date == date(2026, 5, 1) and first.line == 2
    assert (
        second.child_id is None
        and second.foundling
        and second.child_birth_date == date(2024, 2, 29)
    )
    assert second.child_key is not None and "2024-02-29" in second.child_key
    assert roster.problems == []


def test_gb18030_roster_is_detected(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "roster.csv",
        [ROSTER_HEADER, f"{CHILD},张晓明,,,{FATHER},{MOTHER_X},张三,李四,candidate,,,,"],
        encoding="gb18030",
    )
    assert read_roster(path).rows[0].child_name == "张晓明"
    assert read_roster(path, encoding="gb18030").rows[0].father_name == "张三"


def test_invalid_ids_are_problems_not_errors(tmp_path: Path) -> None:
    bad_check = CHILD[:-1] + ("0" if CHILD[-1] != "0" else "1")
    path = _write(
        tmp_path / "roster.csv",
        [
            ROSTER_HEADER,
            f"{bad_check},甲,2015-03-15,M,{FATHER},1.50802E+17,,,candidate,,,,",
        ],
    )
    roster = read_roster(path)
    [row] = roster.rows
    assert row.child_id is None and row.mother_id is None and row.father_id == FATHER
    assert [(p.line, p.column) for p in roster.problems] == [(2, "child_id"), (2, "mother_id")]
    assert "scientific notation" in roster.problems[1].message
    for problem in roster.problems:
        assert CHILD[:10] not in str(problem)
        assert str(problem).startswith(f"{path}:2: column ")


def test_a_repeated_child_is_noted_with_the_line_it_repeats(tmp_path: Path) -> None:
    """Both rows are still decided (nothing is dropped); the note names lines, not the ID."""
    path = _write(
        tmp_path / "r.csv",
        [
            ROSTER_HEADER,
            f"{CHILD},甲,,,{FATHER},,,,candidate,,,,",
            ",未落户,2024-02-29,F,,,,,candidate,,yes,,",
            f"{full_width(CHILD)},甲,,,,{MOTHER_X},,,candidate,,,,",  # the same number, written
            ",未落户,2024-02-29,F,,,,,candidate,,yes,,",  # the same name, birth date and sex
            ",未落户,2024-02-29,M,,,,,candidate,,yes,,",  # another child
        ],
    )
    roster = read_roster(path)
    assert len(roster.rows) == 5
    assert [str(p) for p in roster.problems] == [
        f"{path}:4: column child_id: the same child as line 2: keep one of the rows",
        f"{path}:5: column child_name: the same child as line 3: keep one of the rows",
    ]
    assert all(not row.problems for row in roster.rows)  # no REVIEW for the note itself


def _cut_to_15_digits(birth: date) -> tuple[str, str]:
    """Two real numbers whose first 15 digits, with ``000`` after them as a spreadsheet
    keeps them, give a number that passes its check and one that does not."""
    from psi.identifiers import check_character

    passing = failing = ""
    for seq in range(1, 999):
        real = make_id(birth, seq=seq)
        cut = real[:15] + "000"
        if check_character(cut[:17]) == "0":
            passing = passing or real
        else:
            failing = failing or real
        if passing and failing:
            break
    return passing, failing


def test_numbers_a_spreadsheet_cut_to_15_digits_are_set_aside(tmp_path: Path) -> None:
    """身份证号后三位变0: one cut number in eleven passes its check and names someone
    else; a parent without a record could then make a supported child exit. Once the
    column shows the sign, every number of it ending in 000 is a problem (REVIEW)."""
    passing, failing = _cut_to_15_digits(date(1979, 6, 6))
    rows = [
        f"{CHILD},甲,,,{passing[:15]}000,{MOTHER_X},,,supported,de_facto,,,",
        f"{make_id(date(2016, 1, 1))},乙,,,{failing[:15]}000,,,,candidate,,,,",
        f"{make_id(date(2017, 1, 1))},丙,,,{FATHER},,,,candidate,,,,",
    ]
    roster = read_roster(_write(tmp_path / "r.csv", [ROSTER_HEADER, *rows]))
    first, second, third = roster.rows
    assert first.father_id is None and second.father_id is None and third.father_id == FATHER
    assert [(p.line, p.column) for p in roster.problems] == [(2, "father_id"), (3, "father_id")]
    assert all("a spreadsheet cut to 15 digits" in p.message for p in roster.problems)
    from coordinator.reasons import ID_PROBLEMS_ZH

    assert "截成15位" in ID_PROBLEMS_ZH[roster.problems[0].message]  # the Chinese reason
    # alone, a number ending in 000 that passes its check is a number like any other
    alone = read_roster(_write(tmp_path / "a.csv", [ROSTER_HEADER, rows[0], rows[2]]))
    assert alone.rows[0].father_id == passing[:15] + "000" and not alone.problems


def test_a_full_width_region_code_is_read_as_ascii(tmp_path: Path) -> None:
    """It used to pass as it was, and the spreadsheet grouped its child under a county
    of its own, without a name."""
    rows = [f"{CHILD},甲,,,,,,,candidate,,,{full_width('150402')},"]
    roster = read_roster(_write(tmp_path / "r.csv", [ROSTER_HEADER, *rows]))
    assert roster.rows[0].region_code == "150402"
    # so is a roster with another, bad cell (read row by row)
    rows.append(f"{CHILD},乙,,,,,,,candidate,,maybe,,")
    with pytest.raises(InputError, match=r":3: column foundling"):
        read_roster(_write(tmp_path / "s.csv", [ROSTER_HEADER, *rows]))


@pytest.mark.parametrize("quoted", [False, True])
def test_rows_of_empty_cells_are_skipped_like_blank_lines(tmp_path: Path, quoted: bool) -> None:
    """Spreadsheets write ``,,,,`` for rows they kept below the data; they were refused
    as "column status: unknown value", and in evidence as "person_id: empty"."""
    name = '"甲"' if quoted else "甲"  # a quote: the csv module's path, not the plain split
    empty = "," * 12
    rows = [f"{CHILD},{name},,,,,,,candidate,,,,", empty, f"{FATHER},乙,,,,,,,candidate,,,,"]
    roster = read_roster(_write(tmp_path / "r.csv", [ROSTER_HEADER, *rows, empty, " ,\u3000,"]))
    assert [(r.line, r.child_name) for r in roster.rows] == [(2, "甲"), (4, "乙")]
    evidence = [f"{FATHER},DEAD,police/deaths,,,,", ",,,,,,"]
    assert len(read_evidence(_write(tmp_path / "e.csv", [EVIDENCE_HEADER, *evidence]))) == 1


def test_header_names_are_read_whatever_their_case(tmp_path: Path) -> None:
    """As the database roster reader reads them; ``CHILD_ID`` used to be "missing"."""
    header = ROSTER_HEADER.upper().replace("CHILD_NAME", " Child_Name ")
    roster = read_roster(_write(tmp_path / "r.csv", [header, f"{CHILD},甲,,,,,,,candidate,,,,"]))
    assert roster.rows[0].child_id == CHILD and roster.rows[0].child_name == "甲"


def test_two_unnamed_columns_say_so(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.csv", [ROSTER_HEADER + ",,", f"{CHILD},甲,,,,,,,candidate,,,,,,"])
    with pytest.raises(InputError) as info:
        read_roster(path)
    assert str(info.value) == (
        f"{path}:1: two columns of the header have no name (a delimiter after the last column?)"
    )


def test_future_birth_date_is_judged_against_as_of(tmp_path: Path) -> None:
    born = make_id(date(2026, 12, 1))
    path = _write(
        tmp_path / "r.csv", [ROSTER_HEADER, f"{born},甲,,,{FATHER},{MOTHER_X},,,candidate,,,,"]
    )
    assert read_roster(path, as_of=date(2026, 11, 29)).rows[0].child_id is None
    assert read_roster(path, as_of=date(2026, 12, 2)).rows[0].child_id == born


@pytest.mark.parametrize(
    ("lines", "line", "needle"),
    [
        (["child_id,child_name", f"{CHILD},甲"], 1, "missing required column status"),
        # a spreadsheet's delimiter line, or a file that is not comma-separated: said so
        (["sep=,", ROSTER_HEADER, f"{CHILD},甲,,,,,,,candidate,,,,"], 1, "delete that line"),
        (
            [ROSTER_HEADER.replace(",", ";"), f"{CHILD};甲;;;;;;;candidate;;;;"],
            1,
            "missing required column child_id (the header is one column with semicolons",
        ),
        (
            [ROSTER_HEADER.replace(",", "\t"), f"{CHILD}\t甲\t\t\t\t\t\t\tcandidate\t\t\t\t"],
            1,
            "one column with tabs between its names: the file is not comma-separated",
        ),
        ([ROSTER_HEADER, f"{CHILD},甲,,,,,,,candidate,,,"], 2, "expected 13 fields"),
        ([ROSTER_HEADER, f"{CHILD},甲,,,,,,,candidate,,,,2026-13-01"], 2, "column last_check_date"),
        ([ROSTER_HEADER, f"{CHILD},甲,,,,,,,candidate,,,,2026/01/01"], 2, "column last_check_date"),
        ([ROSTER_HEADER, f"{CHILD},甲,,,,,,,applicant,,,,"], 2, "column status"),
        ([ROSTER_HEADER, f"{CHILD},甲,,,,,,,supported,,,,"], 2, "column category"),
        ([ROSTER_HEADER, f"{CHILD},甲,,,,,,,supported,orphanage,,,"], 2, "column category"),
        ([ROSTER_HEADER, ",甲,,M,,,,,candidate,,,,"], 2, "column child_birth_date"),
        ([ROSTER_HEADER, ",甲,2020-01-01,,,,,,candidate,,,,"], 2, "column child_sex"),
        ([ROSTER_HEADER, f"{CHILD},甲,,,,,,,candidate,,maybe,,"], 2, "column foundling"),
        ([ROSTER_HEADER, f"{CHILD},甲,,,,,,,candidate,,,1504,"], 2, "column region_code"),
        # a quote inside a quoted field, not doubled: the line of the record
        (
            [
                ROSTER_HEADER,
                f'{CHILD},"甲"乙,,,,,,,candidate,,,,',
                f"{CHILD},丙,,,,,,,candidate,,,,",
            ],
            2,
            "a quoted field in this row is not closed properly",
        ),
        # a quote never closed: the line where it opened, not the end of the file
        (
            [ROSTER_HEADER, f"{CHILD},甲,,,,,,,candidate,,,,", f'{CHILD},"乙,,,,,,,candidate,,,,']
            + [f"{CHILD},丙,,,,,,,candidate,,,,"] * 3,
            3,
            "a quote opened in this row is never closed",
        ),
        (
            [ROSTER_HEADER, f'{CHILD},"乙,,,,,,,candidate,,,,']
            + [f"{CHILD},{'丙' * 200},,,,,,,candidate,,,,"] * 800,  # past csv's field limit
            2,
            "a quote opened in this row is never closed",
        ),
    ],
)
def test_fatal_roster_errors_name_file_line_and_column(
    tmp_path: Path, lines: list[str], line: int, needle: str
) -> None:
    path = _write(tmp_path / "roster.csv", lines)
    with pytest.raises(InputError) as caught:
        read_roster(path)
    message = caught.value.diagnostics()
    assert message.startswith(f"{path}:{line}: ")
    assert needle in message
    assert CHILD not in message and "\n" not in message


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "roster.csv"
    path.write_bytes(
        (ROSTER_HEADER + "\n" + f"{CHILD},甲,,,,,,,candidate,,,,\n").encode()
        + f"{CHILD},".encode()
        + b"\xff\xfe\xff,,,,,,,candidate,,,,\n"
    )
    with pytest.raises(InputError, match=rf"^{path}:3: bytes that are neither UTF-8 nor GB18030"):
        read_roster(path)
    with pytest.raises(InputError, match=rf"^{path}:3: bytes that are not UTF-8"):
        read_roster(path, encoding="utf-8")


def test_bom_means_utf8() -> None:
    assert decode_csv_bytes("\ufeffa,b\n".encode(), path="x") == "a,b\n"
    with pytest.raises(InputError, match="x:2: bytes that are not UTF-8"):
        decode_csv_bytes("\ufeffa\n".encode() + "张".encode("gb18030"), path="x")


def test_evidence_reads_and_round_trips(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "evidence.csv",
        [
            EVIDENCE_HEADER,
            f"{fifteen(FATHER)},IMPRISONED,justice/custody,2025-03-01,2029-03-01,,",
            f"{MOTHER_X.lower()},SEVERE_DISABILITY,dpf/cert,2018-05-02,,4,2",
            f"{CHILD},SERVICE,medical_insurance/enrolled,,,,",
        ],
    )
    rows = read_evidence(path)
    assert rows == [
        EvidenceRow(
            FATHER, Circumstance.IMPRISONED, "justice/custody", date(2025, 3, 1), date(2029, 3, 1)
        ),
        EvidenceRow(
            MOTHER_X, Circumstance.SEVERE_DISABILITY, "dpf/cert", date(2018, 5, 2), None, 4, 2
        ),
        EvidenceRow(CHILD, Circumstance.SERVICE, "medical_insurance/enrolled"),
    ]
    out = tmp_path / "sub" / "copy.csv"
    write_evidence(out, rows)
    assert read_evidence(out) == rows
    assert [p.name for p in out.parent.iterdir()] == ["copy.csv"]  # no temporary file left


@pytest.mark.parametrize("service_first", [True, False])
def test_a_source_with_service_rows_and_circumstances_is_refused(
    tmp_path: Path, service_first: bool
) -> None:
    """One SERVICE row made its source a service set, whose failure changes no
    decision: with ``--failed-source`` on that source a child got EXIT."""
    service = f"{CHILD},SERVICE,justice/custody,,,,"
    custody = f"{FATHER},IMPRISONED,justice/custody,2025-01-01,,,"
    first, second = (service, custody) if service_first else (custody, service)
    path = _write(
        tmp_path / "e.csv", [EVIDENCE_HEADER, first, f"{FATHER},DEAD,police/deaths,,,,", second]
    )
    with pytest.raises(InputError) as info:
        read_evidence(path)
    assert str(info.value) == (
        f"{path}:4: column circumstance: justice/custody has SERVICE rows and other "
        "circumstances (line 2); a set reports services or circumstances, not both"
    )


def test_evidence_needs_only_the_key_columns(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "e.csv", ["person_id,circumstance,source", f"{FATHER},DEAD,police/deaths"]
    )
    assert read_evidence(path) == [EvidenceRow(FATHER, Circumstance.DEAD, "police/deaths")]


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        (f"{FATHER},JAILED,justice/custody,,,,", "column circumstance"),
        (f"{FATHER},DEAD,police,,,,", "column source"),
        (f"{FATHER},DEAD,police/deaths,2019-02-30,,,", "column start_date"),
        (f"{FATHER},SEVERE_DISABILITY,dpf/cert,,,8,1", "column disability_category"),
        (f"{FATHER},SEVERE_DISABILITY,dpf/cert,,,1,5", "column disability_grade"),
        (f"{FATHER[:-1]},DEAD,police/deaths,,,,", "column person_id"),
        (",DEAD,police/deaths,,,,", "column person_id"),
        (f"{FATHER},DEAD,police/deaths,,", "expected 7 fields"),
    ],
)
def test_fatal_evidence_errors(tmp_path: Path, row: str, needle: str) -> None:
    path = _write(
        tmp_path / "evidence.csv", [EVIDENCE_HEADER, f"{MOTHER_X},DEAD,police/deaths,,,,", row]
    )
    with pytest.raises(InputError) as caught:
        read_evidence(path)
    message = caught.value.diagnostics()
    assert message.startswith(f"{path}:3: ") and needle in message
    assert FATHER[:17] not in message


EVIDENCE_ROWS = [
    f"{FATHER},IMPRISONED,justice/custody,2025-03-01,2029-03-01,,",
    "",
    f"{MOTHER_X.lower()},SEVERE_DISABILITY,dpf/cert,2018-05-02,,4,2",
    "   ",
    f"{CHILD},SERVICE,medical_insurance/enrolled,,,,",
]


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_plain_and_quoted_files_read_alike(tmp_path: Path, line_end: str) -> None:
    """The quote-free fast path gives what csv.reader gives (rows, blank lines, line numbers)."""
    plain = tmp_path / "plain.csv"
    plain.write_text(line_end.join([EVIDENCE_HEADER, *EVIDENCE_ROWS]) + line_end, "utf-8")
    quoted = tmp_path / "quoted.csv"  # a quote anywhere sends the file through csv.reader
    last = f'"{FATHER}",DEAD,"police/deaths",,,,'
    quoted.write_text(line_end.join([EVIDENCE_HEADER, *EVIDENCE_ROWS, last]) + line_end, "utf-8")
    rows = read_evidence(quoted)
    assert rows[:3] == read_evidence(plain)
    assert rows[3:] == [EvidenceRow(FATHER, Circumstance.DEAD, "police/deaths")]


@pytest.mark.parametrize("quote", ["", '"'])
def test_bad_cell_is_named_on_either_path(tmp_path: Path, quote: str) -> None:
    """A bad cell in a column checked as a whole is still named by its own line."""
    path = _write(
        tmp_path / "evidence.csv",
        [
            EVIDENCE_HEADER,
            f"{quote}{FATHER}{quote},DEAD,police/deaths,,,,",
            "",
            f"{MOTHER_X},DEAD,police/deaths,2019-02-30,,,",
            f"{FATHER},JAILED,justice/custody,,,,",
        ],
    )
    with pytest.raises(InputError, match=rf"^{path}:4: column start_date: no such date$"):
        read_evidence(path)


def test_gc_paused_nests_and_restores() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


_SPACED = st.text(alphabet=st.sampled_from("ab \t\u3000\xa0\x1f\n\x00"), max_size=6)
#: mostly tidy cells, so that one untidy cell (one space too many) decides the column
_NEARLY_TIDY = st.text(alphabet=st.sampled_from("ab \x00"), max_size=6)


@given(st.lists(_SPACED) | st.lists(_NEARLY_TIDY))
@example(["a ", "b"])  # a trailing space before the next cell
@example(["a", " b"])
@example([" a"])
@example(["a "])
@example(["a", "b  c"])
@example(["a", "b\u3000c"])
def test_tidy_names_equals_cell_by_cell_normalization(cells: list[str]) -> None:
    from coordinator.roster_file import tidy_names

    assert tidy_names(cells) == [" ".join(text.split()) for text in cells]


def test_rows_from_columns_are_the_rows_the_constructor_builds() -> None:
    """The column builder (tuple.__new__ in C) checks what the constructor would: one
    column per field, all of one length; its rows equal the constructor's, field by field."""
    from coordinator.record_types import EvidenceRow, rows_from_columns

    people = ["110101201501010011", "110101201501010038"]
    columns = (
        people,
        [Circumstance.DEAD, Circumstance.IMPRISONED],
        ["police/deaths", "justice/custody"],
        [date(2020, 1, 1), None],
        [None, date(2030, 1, 1)],
        [None, None],
        [None, 2],
    )
    rows = rows_from_columns(EvidenceRow, columns)
    assert rows == [EvidenceRow(*fields) for fields in zip(*columns, strict=True)]
    assert all(type(row) is EvidenceRow for row in rows)
    assert rows[1].end_date == date(2030, 1, 1) and rows[1].disability_grade == 2
    with pytest.raises(ValueError, match="6 columns for 7 fields"):
        rows_from_columns(EvidenceRow, columns[:6])
    with pytest.raises(ValueError):  # a column shorter than the others
        rows_from_columns(EvidenceRow, (*columns[:6], [None]))


def test_a_child_without_id_or_name_is_refused_with_its_line(tmp_path: Path) -> None:
    """Found by the fuzz test: an empty child_name beside an empty child_id made the
    repeated-child check raise ValueError("empty name") out of read_roster. The name is
    required (data contract), so the row is now refused with its line."""
    path = _write(
        tmp_path / "r.csv",
        [
            ROSTER_HEADER,
            f"{CHILD},小明,,,,,,,candidate,,,,",
            ",,2019-02-03,F,,,,,candidate,,yes,,",
        ],
    )
    with pytest.raises(InputError) as info:
        read_roster(path, as_of=date(2026, 11, 29))
    assert info.value.diagnostics() == f"{path}:3: column child_name: required (the child's name)"
