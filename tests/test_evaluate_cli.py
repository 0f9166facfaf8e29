"""``xmatch rules evaluate`` run as users run it: a subprocess on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from tests.rules_helpers import (
    EVIDENCE_HEADER,
    ROSTER_HEADER,
    fifteen,
    full_width,
    id_with_x,
    make_id,
)

XMATCH = Path(sys.executable).parent / "xmatch"
CHILD = make_id(date(2015, 3, 15))
FATHER = make_id(date(1985, 1, 1))
MOTHER = id_with_x(date(1986, 6, 6))
CHILD2 = make_id(date(2016, 1, 1), sex="F")


def _run(tmp: Path, roster: Path, evidence: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(XMATCH),
            "rules",
            "evaluate",
            "--roster",
            str(roster),
            "--evidence",
            str(evidence),
            "--as-of",
            "2026-11-29",
            "--out",
            str(tmp / "decisions.json"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _files(
    tmp: Path, roster_lines: list[str], evidence_lines: list[str], encoding: str
) -> tuple[Path, Path]:
    roster = tmp / "roster.csv"
    roster.write_text("\n".join([ROSTER_HEADER, *roster_lines]) + "\n", encoding=encoding)
    evidence = tmp / "evidence.csv"
    evidence.write_text("\n".join([EVIDENCE_HEADER, *evidence_lines]) + "\n", encoding=encoding)
    return roster, evidence


EVIDENCE = [
    f"{FATHER},IMPRISONED,justice/custody,2025-03-01,2029-03-01,,",
    f"{MOTHER},DEAD,police/deaths,2019-07-04,,,",
]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gb18030"])
def test_messy_ids_match_canonical_evidence(tmp_path: Path, encoding: str) -> None:
    roster, evidence = _files(
        tmp_path,
        [
            f"{full_width(CHILD)},乌力吉,,,{fifteen(FATHER)},{MOTHER.lower()},巴特尔,萨仁,candidate,,,150402,",
            f"{CHILD2},张晓红,,,{full_width(FATHER)},{MOTHER},张三,李四,supported,orphan,,152502,2026-01-01",
        ],
        EVIDENCE,
        encoding,
    )
    result = _run(
        tmp_path, roster, evidence, "--lang", "en", "--service-source", "medical_insurance/enrolled"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document = json.loads((tmp_path / "decisions.json").read_text(encoding="utf-8"))
    first, second = document["decisions"]
    assert (first["child_id"], first["child_name"], first["decision"], first["category"]) == (
        CHILD,
        "乌力吉",
        "ENROL",
        "de_facto",
    )
    assert first["reasons"] == [
        "father: IMPRISONED (justice/custody) since 2025-03-01, until 2029-03-01",
        "mother: DEAD (police/deaths) on 2019-07-04",
    ]
    assert first["next_check_due"] == "2027-05-29"
    assert (second["decision"], second["category"]) == ("RECLASSIFY", "de_facto")
    assert document["overdue_checks"] == [CHILD2]  # last check 2026-01-01, due 2026-07-01
    assert document["coverage_gaps"] == {"medical_insurance/enrolled": [CHILD2]}
    assert document["as_of"] == "2026-11-29" and document["failed_sources"] == []


def test_chinese_reasons_by_default_and_failed_sources(tmp_path: Path) -> None:
    roster, evidence = _files(
        tmp_path,
        [f"{CHILD},甲,,,{FATHER},{MOTHER},,,supported,de_facto,,,"],
        [f"{MOTHER},SEVERE_ILLNESS,health/illness,,,,"],
        "utf-8",
    )
    result = _run(tmp_path, roster, evidence, "--failed-source", "justice/custody")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "decisions.json").read_text(encoding="utf-8"))
    [entry] = document["decisions"]
    assert entry["decision"] == "REVIEW"
    assert entry["reasons"][0].startswith("证据不全") and "justice/custody" in entry["reasons"][0]
    assert document["failed_sources"] == ["justice/custody"]


def test_invalid_ids_give_review_and_stderr_lines(tmp_path: Path) -> None:
    bad = CHILD[:-1] + ("0" if CHILD[-1] != "0" else "1")
    roster, evidence = _files(
        tmp_path,
        [
            f"{bad},甲,2015-03-15,M,{FATHER},{MOTHER},,,candidate,,,,",
            f"{CHILD2},乙,,,{FATHER},1.50802E+17,,,candidate,,,,",
        ],
        EVIDENCE,
        "utf-8",
    )
    result = _run(tmp_path, roster, evidence, "--lang", "en")
    assert result.returncode == 0
    roster_name = str(roster)
    assert result.stderr.splitlines() == [
        f"{roster_name}:2: column child_id: the check character does not match",
        f"{roster_name}:3: column mother_id: identity number in scientific notation "
        "(a spreadsheet lost its digits)",
    ]
    assert bad not in result.stderr and CHILD[:14] not in result.stderr
    document = json.loads((tmp_path / "decisions.json").read_text(encoding="utf-8"))
    assert [d["decision"] for d in document["decisions"]] == ["REVIEW", "REVIEW"]
    assert document["decisions"][0]["child_id"] is None
    assert "child_id" in document["decisions"][0]["reasons"][0]


@pytest.mark.parametrize(
    ("which", "content", "expected"),
    [
        ("roster", b"child_id,child_name\n1,2\n", ":1: missing required column status"),
        # a header and no rows: refused by every command alike (round run too)
        ("roster", (ROSTER_HEADER + "\n").encode(), ": the roster has no rows (no children)"),
        (
            "roster",
            (ROSTER_HEADER + "\n" + f"{CHILD},a,,,,,,,candidate\n").encode(),
            ":2: expected 13 fields",
        ),
        (
            "roster",
            (ROSTER_HEADER + "\n").encode() + b"," + b"\xff\xff" + b",,,,,,,candidate,,,,\n",
            ":2: bytes that are neither UTF-8 nor GB18030",
        ),
        (
            "evidence",
            (EVIDENCE_HEADER + "\n" + f"{FATHER},DEAD,police/deaths,2019-7-4,,,\n").encode(),
            ":2: column start_date: not a date",
        ),
    ],
)
def test_bad_input_exits_1_with_one_line(
    tmp_path: Path, which: str, content: bytes, expected: str
) -> None:
    roster, evidence = _files(
        tmp_path, [f"{CHILD},甲,,,{FATHER},{MOTHER},,,candidate,,,,"], EVIDENCE, "utf-8"
    )
    target = roster if which == "roster" else evidence
    target.write_bytes(content)
    result = _run(tmp_path, roster, evidence)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xmatch: error: {target}")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr and FATHER not in result.stderr
    assert not (tmp_path / "decisions.json").exists()


def test_report_is_written_on_request(tmp_path: Path) -> None:
    roster, evidence = _files(
        tmp_path, [f"{CHILD},甲,,,{FATHER},{MOTHER},,,candidate,,,150402,"], EVIDENCE, "utf-8"
    )
    result = _run(tmp_path, roster, evidence, "--report", str(tmp_path / "report.html"))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "赤峰市红山区" in page and "justice" in page  # full county names (issue 17)


def test_names_and_xlsx(tmp_path: Path) -> None:
    """--names gives the Chinese reasons, report and spreadsheet display names; --xlsx
    writes the spreadsheet (mode 0600, identity numbers as text)."""
    from openpyxl import load_workbook

    scientific = "1.50402E+17"
    roster, evidence = _files(
        tmp_path,
        [
            f"{CHILD},甲,,,{FATHER},{MOTHER},,,candidate,,,150402,",
            f"{CHILD2},乙,,,{scientific},{MOTHER},,,supported,de_facto,,152301,2026-01-01",
        ],
        EVIDENCE,
        "utf-8",
    )
    names = tmp_path / "names.csv"
    names.write_text(
        "source,display_name\njustice,司法局\njustice/custody,服刑在押人员\n"
        "police,公安局\npolice/deaths,死亡注销人员\n",
        encoding="utf-8",
    )
    book_path = tmp_path / "decisions.xlsx"
    page_path = tmp_path / "report.html"
    result = _run(
        tmp_path,
        roster,
        evidence,
        "--names",
        str(names),
        "--xlsx",
        str(book_path),
        "--report",
        str(page_path),
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "decisions.json").read_text(encoding="utf-8"))
    enrol, review = document["decisions"]
    assert enrol["decision"] == "ENROL" and review["decision"] == "REVIEW"
    assert any("司法局·服刑在押人员" in text for text in enrol["reasons"])
    assert any("公安局·死亡注销人员" in text for text in enrol["reasons"])
    # a roster problem in a Chinese reason is Chinese (issue 17: no English inside)
    assert (
        review["reasons"][0]
        == "父亲:父亲身份证号无效(被电子表格存成科学计数法,后几位已丢失),按情况不明处理"
    )
    for text in (*enrol["reasons"], *review["reasons"]):
        assert "justice" not in text and "police" not in text
    page = page_path.read_text(encoding="utf-8")
    assert "司法局" in page and "哲里木盟通辽市(旧代码,今通辽市科尔沁区)" in page
    assert book_path.stat().st_mode & 0o777 == 0o600
    book = load_workbook(book_path, read_only=True)
    assert book.sheetnames == [
        "按旗县汇总",
        "新纳入",
        "退出保障",
        "变更类别",
        "人工复核",
        "继续保障",
        "不符合条件",
        "本轮信息",
    ]
    rows = list(book["新纳入"].iter_rows(values_only=True))
    assert rows[0][0] == "身份证号" and rows[1][0] == CHILD and isinstance(rows[1][0], str)
    assert "司法局·服刑在押人员" in str(rows[1][-1])
    summary = list(book["按旗县汇总"].iter_rows(values_only=True))
    assert summary[1][:2] == ("150402", "赤峰市红山区") and summary[-1][1] == "合计"
    # a round writes names.csv; an unreadable one is one line naming file and line
    names.write_text("source,display_name\njustice/,司法局\n", encoding="utf-8")
    bad = _run(tmp_path, roster, evidence, "--names", str(names))
    assert bad.returncode != 0 and f"{names}:2: column source" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_service_need_lists_matched_covered_children(tmp_path: Path) -> None:
    roster, evidence = _files(
        tmp_path,
        [
            f"{CHILD},甲,,,{FATHER},{MOTHER},,,supported,de_facto,,150402,2026-10-01",
            f"{CHILD2},乙,,,{FATHER},{MOTHER},,,candidate,,,150402,",
        ],
        [
            *EVIDENCE,
            f"{CHILD},SERVICE,disabled-persons-federation/rehab_needs,,,,",
            f"{CHILD2},SERVICE,disabled-persons-federation/rehab_needs,,,,",
            f"{CHILD2},SERVICE,medical_insurance/enrolled,,,,",
        ],
        "utf-8",
    )
    result = _run(
        tmp_path,
        roster,
        evidence,
        "--service-need",
        "disabled-persons-federation/rehab_needs",
        "--service-need",
        "education/needs",
        "--report",
        str(tmp_path / "report.html"),
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "decisions.json").read_text(encoding="utf-8"))
    assert [d["decision"] for d in document["decisions"]] == ["CONTINUE", "ENROL"]
    # CHILD2 is matched too, but enrols: not covered yet
    assert document["service_needs"] == {
        "disabled-persons-federation/rehab_needs": [CHILD],
        "education/needs": [],
    }
    assert document["coverage_gaps"] == {"medical_insurance/enrolled": [CHILD]}
    assert list(document)[-2:] == ["coverage_gaps", "service_needs"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "服务需求" in page and "disabled-persons-federation/rehab_needs (1)" in page
    assert "service needs; from the evidence file" in page
    # without the flag the set reads as a coverage set, and no needs are listed
    plain = _run(tmp_path, roster, evidence)
    assert plain.returncode == 0, plain.stderr
    document = json.loads((tmp_path / "decisions.json").read_text(encoding="utf-8"))
    assert document["service_needs"] == {}
    assert document["coverage_gaps"]["disabled-persons-federation/rehab_needs"] == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # a malformed NODE/SET is a usage error (exit 2): test_operator_friction.py
        (
            ("--service-need", "dpf/rehab", "--service-source", "dpf/rehab"),
            "--service-source and --service-need both name dpf/rehab",
        ),
        # a set named in another case than the evidence's: a second, empty list otherwise
        (
            ("--service-source", "Police/Deaths"),
            "--service-source Police/Deaths: evidence.csv spells this set police/deaths",
        ),
        (
            ("--failed-source", "JUSTICE/custody"),
            "--failed-source JUSTICE/custody: evidence.csv spells this set justice/custody",
        ),
        (("--service-need", "police/DEATHS"), "(set names are compared exactly, case included)"),
    ],
)
def test_bad_service_need_exits_1_with_one_line(
    tmp_path: Path, extra: tuple[str, ...], expected: str
) -> None:
    roster, evidence = _files(
        tmp_path, [f"{CHILD},甲,,,{FATHER},{MOTHER},,,candidate,,,,"], EVIDENCE, "utf-8"
    )
    result = _run(tmp_path, roster, evidence, *extra)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "decisions.json").exists()


@pytest.mark.parametrize("option", ["--out", "--report", "--xlsx"])
def test_an_output_path_that_is_a_folder_is_one_line_and_nothing_written(
    tmp_path: Path, option: str
) -> None:
    roster, evidence = _files(
        tmp_path,
        [f"{CHILD2},张晓红,,,{FATHER},{MOTHER},张三,李四,supported,orphan,,152502,2026-01-01"],
        EVIDENCE,
        "utf-8",
    )
    folder = tmp_path / "a-folder"
    folder.mkdir()
    paths = {"--out": tmp_path / "decisions.json", "--report": None, "--xlsx": None}
    paths[option] = folder
    command = [str(XMATCH), "rules", "evaluate", "--roster", str(roster), "--evidence"]
    command += [str(evidence), "--as-of", "2026-11-29"]
    for name, path in paths.items():
        if path is not None:
            command += [name, str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr == f"xmatch: error: {option} {folder}: is a folder; give the file to write\n"
    assert not (tmp_path / "decisions.json").exists()
    assert list(folder.iterdir()) == []
