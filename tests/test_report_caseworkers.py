"""The caseworkers' outputs on realistic data: report.html and decisions.xlsx.

The data is the demo's synthetic federation (xmatch.synth), decided from the
plaintext join of the roster with the test federation's match sets, with the
demo's display names. Chromium renders the page and runs its filter.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import shutil
import subprocess
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import xlsxwriter
from openpyxl import load_workbook

from coordinator.decisions import RoundDecisions, decide_all
from coordinator.names import names_from
from coordinator.reasons import decision_name
from coordinator.records import Decision, read_evidence, read_roster
from coordinator.regions import county_name
from coordinator.report import ACTION, Provenance, SourceRun, render_report
from coordinator.spreadsheet import (
    COLUMNS,
    SHEET_ORDER,
    SUMMARY_SHEET,
    TEXT_COLUMNS,
    _row,
    write_decisions_xlsx,
)
from coordinator.state import RoundState
from tests.federation import AS_OF, NEEDS, SPECS, expected_evidence
from xmatch import synth

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NAMES = names_from(synth.DISPLAY_NAMES)


def _decide(root: Path, children: int) -> tuple[RoundDecisions, Provenance]:
    synth.generate(root, children=children, seed=17, as_of=AS_OF)
    evidence = root / "evidence.csv"
    rows = expected_evidence(root, SPECS)
    with evidence.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "person_id",
                "circumstance",
                "source",
                "start_date",
                "end_date",
                "disability_category",
                "disability_grade",
            ]
        )
        writer.writerows(rows)
    roster = read_roster(root / "data" / "roster.csv", as_of=AS_OF)
    gathered = read_evidence(evidence)
    sources = sorted({f"{n.name}/{m.name}" for n in SPECS for m in n.match_sets})
    decisions = decide_all(
        roster,
        gathered,
        as_of=AS_OF,
        service_need_sources=NEEDS,
        source_names=NAMES.labels(sources),
    )
    matches: dict[str, int] = {}
    for row in rows:
        matches[row[2]] = matches.get(row[2], 0) + 1
    runs = []
    for source in sources:
        node, match_set = source.split("/")
        runs.append(SourceRun(node, match_set, "keyed-hash", "ok", matches.get(source, 0), 1.0))
    with RoundState.open(root / "state.sqlite") as state:
        for k, as_of in enumerate(("2026-05-29", "2026-08-29", AS_OF.isoformat())):
            rid = f"{k:032x}"
            state.start_round(rid, as_of=date.fromisoformat(as_of), out_dir=root, sub_rounds=[])
            counts = {d.value: n // (3 - k) for d, n in decisions.counts().items()}
            state.record_decisions(rid, counts)
            state.finish_round(rid, status="completed")
        history = state.decision_history()
    provenance = Provenance(
        round_id="f" * 32,
        as_of=AS_OF,
        generated_at=datetime(2026, 11, 29, 9, 0, tzinfo=UTC),
        sources=tuple(runs),
        names=NAMES,
        history=tuple(history),
    )
    return decisions, provenance


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[RoundDecisions, Provenance]:
    return _decide(tmp_path_factory.mktemp("report-2k"), 2000)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[RoundDecisions, Provenance]:
    return _decide(tmp_path_factory.mktemp("report-12k"), 12_000)


def _work_section(page: str) -> str:
    start = page.index("<h2>需办理的儿童")
    return page[start : page.index("<h2>", start + 1)]


def test_report_for_12000_children_is_under_1_5_mb(
    large: tuple[RoundDecisions, Provenance],
) -> None:
    decisions, provenance = large
    page = render_report(decisions, provenance=provenance)
    assert len(decisions.decisions) == 12_000
    assert len(page.encode("utf-8")) < 1_500_000


def test_report_lists_only_children_to_act_on_county_by_county(
    small: tuple[RoundDecisions, Provenance],
) -> None:
    decisions, provenance = small
    page = render_report(decisions, provenance=provenance)
    work = _work_section(page)
    sections = dict(re.findall(r"<section data-c='(\d*)'>(.*?)</section>", work, re.S))
    listed = 0
    for item in decisions.decisions:
        child_id = item.child.child_id
        if child_id is None:
            continue
        code = item.child.region_code or ""
        if item.decision in ACTION:
            block = re.search(
                f"<div data-d='{item.decision.value}'>(.*?)</div>", sections[code], re.S
            )
            assert block is not None and child_id in block.group(1)
            listed += 1
        else:  # continue and not eligible: counted, listed in the spreadsheet only
            assert f">{child_id}<" not in work
    assert listed > 100
    for code, body in sections.items():
        assert body.startswith(f"<h3>{county_name(code)} ")
        review = re.search("<div data-d='REVIEW'>(.*?)</div>", body, re.S)
        if review is not None:  # conflicts first
            flags = ["数据矛盾" in row for row in review.group(1).split("<tr>")[2:]]
            assert flags == sorted(flags, reverse=True)
        exits = re.search("<div data-d='EXIT'>(.*?)</div>", body, re.S)
        if exits is not None:
            assert "起停发</td>" in exits.group(1)
    # three charts: decisions by county, matches by department, decisions over past rounds
    assert page.count("<svg") == 3
    assert "aria-label='历次比对决定'" in page and page.count("<title>") > 3


def test_display_names_in_headings_reasons_and_charts(
    small: tuple[RoundDecisions, Provenance],
) -> None:
    decisions, provenance = small
    page = render_report(decisions, provenance=provenance)
    node_ids = [n.name for n in SPECS]
    headings = re.findall(r"<h[1-4]>(.*?)</h[1-4]>", page, re.S)
    assert [h for h in headings if any(node in h for node in node_ids)] == []
    assert "<h3>残疾人联合会·残疾儿童康复需求 (" in page
    reasons = [text for item in decisions.decisions for text in decisions.reason_texts(item)]
    assert [t for t in reasons if re.search("[A-Za-z]{2,}", t)] == []
    assert any("司法局·服刑在押人员" in t for t in reasons)
    chart = page[page.index("aria-label='各部门比对命中数'") :]
    chart = chart[: chart.index("</svg>")]
    assert "公安局" in chart and "police" not in chart
    # statuses and categories in Chinese in the work lists
    work = _work_section(page)
    assert "supported" not in work and "candidate" not in work and "de_facto" not in work


def test_decisions_xlsx(tmp_path: Path, small: tuple[RoundDecisions, Provenance]) -> None:
    decisions, provenance = small
    path = tmp_path / "out" / "decisions.xlsx"
    write_decisions_xlsx(path, decisions, provenance)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["decisions.xlsx"]  # no temporary left
    book = load_workbook(path)  # not read-only: freeze panes and filters are read too
    seen: list[str] = []
    for decision in SHEET_ORDER:
        sheet = book[decision_name(decision, "zh")]
        assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref is not None
        rows = list(sheet.iter_rows(values_only=True))
        expected = [d for d in decisions.decisions if d.decision is decision]
        assert len(rows) - 1 == len(expected)
        for row, item in zip(rows[1:], expected, strict=True):
            assert row[0] == item.child.child_id and (row[0] is None or isinstance(row[0], str))
            assert row[12] == ";".join(decisions.reason_texts(item))
            seen.append(str(row[0]))
        if decision is Decision.EXIT and expected:
            assert all(row[8] and "年" in str(row[8]) for row in rows[1:])
        id_cells = [c for (c,) in sheet.iter_rows(min_row=2, max_col=1) if c.value]
        assert all(c.data_type == "s" for c in id_cells)  # text, never a number
    assert len(seen) == len(decisions.decisions)
    summary = list(book[SUMMARY_SHEET].iter_rows(values_only=True))
    assert summary[-1][1] == "合计" and summary[-1][8] == len(decisions.decisions)
    assert sum(int(str(r[8])) for r in summary[1:-1]) == len(decisions.decisions)


#: names that need each kind of escaping XlsxWriter does (none is a rich string "<r>...</r>")
AWKWARD_NAMES = (
    "李&王",
    "<b>张</b>",
    " 前导空格",
    "尾随空格\t",
    "控制\x01字符\x1f",
    "_x0041_ 字面转义",
    "\ufffe非字符\uffff",
    "表情😀" * 3000,  # over 32,767 UTF-16 units: cut without splitting a character
    "换行\n",
    "\u3000全角空格",  # white space that is not ASCII
    "中间 空格",  # a space inside only: no xml:space
    "下划线_x",
    "",
)


def _reference_xlsx(path: Path, decisions: RoundDecisions) -> None:
    """The decision sheets as XlsxWriter writes them one cell at a time (the writer before
    coordinator.xlsx_rows), in the same frame."""
    book = xlsxwriter.Workbook(
        str(path),
        {"constant_memory": True, "strings_to_numbers": False, "tmpdir": str(path.parent)},
    )
    text, head = book.add_format({"num_format": "@"}), book.add_format({"bold": True})
    book.add_worksheet(SUMMARY_SHEET)
    for decision in SHEET_ORDER:
        rows = [d for d in decisions.decisions if d.decision is decision]
        sheet = book.add_worksheet(decision_name(decision, "zh"))
        for col, (_name, width) in enumerate(COLUMNS):
            sheet.set_column(col, col, width, text if col in TEXT_COLUMNS else None)
        sheet.write_row(0, 0, [name for name, _ in COLUMNS], head)
        sheet.freeze_panes(1, 0)
        sheet.autofilter(0, 0, max(len(rows), 1), len(COLUMNS) - 1)
        for r, item in enumerate(rows, start=1):
            for c, value in enumerate(_row(item, decisions.reason_texts(item))):
                if value:
                    sheet.write_string(r, c, value)
    book.close()


def _sheet_xml(path: Path, number: int) -> str:
    with zipfile.ZipFile(path) as book:
        return book.read(f"xl/worksheets/sheet{number}.xml").decode("utf-8")


def test_xlsx_rows_as_xlsxwriter_writes_them(
    tmp_path: Path, small: tuple[RoundDecisions, Provenance]
) -> None:
    """The decision sheets' XML is byte for byte what XlsxWriter's own cells give, awkward
    names included, and openpyxl reads the same values from both."""
    decisions, provenance = small
    renamed = [
        item._replace(child=item.child._replace(child_name=AWKWARD_NAMES[k % len(AWKWARD_NAMES)]))
        for k, item in enumerate(decisions.decisions)
    ]
    awkward = dataclasses.replace(decisions, decisions=renamed)
    ours, reference = tmp_path / "ours.xlsx", tmp_path / "reference.xlsx"
    write_decisions_xlsx(ours, awkward, provenance)
    _reference_xlsx(reference, awkward)
    for number in range(2, 2 + len(SHEET_ORDER)):
        assert _sheet_xml(ours, number) == _sheet_xml(reference, number)
    mine, theirs = load_workbook(ours, read_only=True), load_workbook(reference, read_only=True)
    for decision in SHEET_ORDER:
        title = decision_name(decision, "zh")
        got = list(mine[title].iter_rows(values_only=True))
        assert got == list(theirs[title].iter_rows(values_only=True))
        assert len(got) == 1 + sum(1 for d in renamed if d.decision is decision)
    names = {
        row[1]
        for d in SHEET_ORDER
        for row in mine[decision_name(d, "zh")].iter_rows(min_row=2, values_only=True)
    }
    assert "李&王" in names and "<b>张</b>" in names


@pytest.mark.browser
def test_report_filters_in_chromium(
    tmp_path: Path, small: tuple[RoundDecisions, Provenance]
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (make chromium)")
    decisions, provenance = small
    page = tmp_path / "report.html"
    html = render_report(decisions, provenance=provenance)
    page.write_text(html, encoding="utf-8")
    codes = re.findall(r"<section data-c='(\d+)'>", html)
    chosen = codes[len(codes) // 2]
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    url = f"{page.as_uri()}#c={chosen}&d=EXIT,REVIEW"
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False
    )
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    shown = re.findall(r"<section data-c=\"(\d*)\"( hidden=\"\")?>", dom.stdout)
    assert shown and [c for c, hidden in shown if not hidden] == [chosen]
    blocks = re.findall(r"<div data-d=\"([A-Z_]+)\"( hidden=\"\")?>", dom.stdout)
    assert {d for d, hidden in blocks if not hidden} <= {"EXIT", "REVIEW"}
    assert {d for d, hidden in blocks if hidden} >= {"ENROL"}
    rows = re.findall(r"<tr data-c=\"(\d*)\"( hidden=\"\")?>", dom.stdout)
    assert [c for c, hidden in rows if not hidden] == [chosen]
    services = re.findall(r"<tbody data-c=\"(\d*)\"( hidden=\"\")?>", dom.stdout)
    assert len(services) > 1 and {c for c, hidden in services if not hidden} <= {chosen}
    # printing keeps the filter: one county's print is a few pages, the whole report many
    pages = {}
    for label, address in (("one", url), ("all", page.as_uri())):
        pdf = tmp_path / f"{label}.pdf"
        subprocess.run(
            [*base, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", address],
            capture_output=True,
            timeout=120,
            check=False,
        )
        pages[label] = len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes()))
    assert 1 <= pages["one"] <= 4 < pages["all"], pages
    png = tmp_path / "report.png"
    shot = subprocess.run(
        [*base, f"--screenshot={png}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert png.exists() and png.stat().st_size > 50_000, shot.stderr[-2000:]


def test_an_interrupted_spreadsheet_leaves_nothing_behind(
    tmp_path: Path, small: tuple[RoundDecisions, Provenance], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while XlsxWriter holds its temporary sheet files (they are written beside
    the output, never in a shared /tmp) leaves none of them, and no partial workbook."""
    import coordinator.spreadsheet as spreadsheet

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(spreadsheet, "_info", interrupted)  # the last sheet, before close
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_decisions_xlsx(out / "decisions.xlsx", *small)
    assert list(out.iterdir()) == []
