"""decisions.xlsx: every decision as a spreadsheet for caseworkers.

One summary sheet by county (按旗县汇总), then one sheet per decision (the
decisions someone must act on first), then a sheet about the round (本轮信息).
Identity numbers are written as text cells in text-formatted columns, so no
spreadsheet turns them into scientific notation; each sheet's header row is
frozen and has an autofilter; reasons are in the decisions' language (Chinese
by default) and name departments and sets by their display names.

The workbook is written in XlsxWriter's constant-memory mode (row by row,
inline strings), the decision sheets' data rows then as sheet XML by
:mod:`coordinator.xlsx_rows` (several times faster than a cell at a time),
into a temporary sibling created with mode 0600, then renamed
into place: a reader sees no file or the whole one, and the file that holds
identity numbers is readable by its owner only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import xlsxwriter

from coordinator.decisions import RoundDecisions
from coordinator.eligibility import ChildDecision
from coordinator.names import write_names
from coordinator.reasons import category_name, decision_name, month_text, status_name
from coordinator.records import Decision
from coordinator.regions import county_name
from coordinator.report import Provenance
from coordinator.xlsx_rows import fill_sheets
from runtime.files import check_replaceable

#: sheet order: the decisions someone must act on first
SHEET_ORDER = (
    Decision.ENROL,
    Decision.EXIT,
    Decision.RECLASSIFY,
    Decision.REVIEW,
    Decision.CONTINUE,
    Decision.NOT_ELIGIBLE,
)
SUMMARY_SHEET = "按旗县汇总"
INFO_SHEET = "本轮信息"
#: the columns of a decision sheet, with their widths (characters)
COLUMNS: tuple[tuple[str, float], ...] = (
    ("身份证号", 21),
    ("姓名", 12),
    ("出生日期", 11),
    ("旗县代码", 9),
    ("旗县", 22),
    ("状态", 7),
    ("原类别", 16),
    ("类别", 16),
    ("停发月份", 11),
    ("下次核查", 11),
    ("核查逾期", 8),
    ("数据矛盾", 8),
    ("理由", 90),
)
SUMMARY_COLUMNS = (
    "旗县代码",
    "旗县",
    *(decision_name(d, "zh") for d in Decision),
    "合计",
    "核查逾期",
)
#: how a cell joins a decision's reasons
REASON_JOIN = ";"
#: the text-formatted columns (identity number, county code)
TEXT_COLUMNS = (0, 3)


#: a few thousand distinct days in a round: each written out once
_day = lru_cache(maxsize=1 << 14)(date.isoformat)


def _row(item: ChildDecision, texts: list[str]) -> list[str]:
    child = item.child
    birth = _day(child.child_birth_date) if child.child_birth_date else ""
    code = child.region_code or ""
    return [
        child.child_id or "",
        child.child_name,
        birth,
        code,
        county_name(code),
        status_name(child.status, "zh"),
        category_name(child.category, "zh") if child.category else "",
        category_name(item.category, "zh") if item.category else "",
        month_text(item.stops_from, "zh") if item.stops_from else "",
        _day(item.next_check_due) if item.next_check_due else "",
        "是" if item.overdue else "",
        "是" if item.conflict else "",
        REASON_JOIN.join(texts),
    ]


def _sheet(book: Any, title: str, rows: int, fmt: Any) -> None:
    """A decision sheet's frame: widths, text columns, header, frozen pane, filter over ``rows``.

    Its data rows are not written here: :func:`_fill_sheets` puts them in afterwards.
    """
    sheet = book.add_worksheet(title)
    text, head = fmt
    for col, (_name, width) in enumerate(COLUMNS):
        # text format on the ID and code columns: what a user types there stays text too
        sheet.set_column(col, col, width, text if col in TEXT_COLUMNS else None)
    sheet.write_row(0, 0, [name for name, _ in COLUMNS], head)
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, max(rows, 1), len(COLUMNS) - 1)


def _fill_sheets(
    path: Path, sheets: Sequence[tuple[int, Sequence[ChildDecision]]], decisions: RoundDecisions
) -> None:
    """The decision sheets' rows, written as sheet XML (:mod:`coordinator.xlsx_rows`)."""
    texts = decisions.reason_texts
    fill_sheets(
        path,
        {number: (_row(item, texts(item)) for item in rows) for number, rows in sheets},
        columns=len(COLUMNS),
    )


def _summary(book: Any, decisions: RoundDecisions, fmt: Any) -> None:
    text, head = fmt
    sheet = book.add_worksheet(SUMMARY_SHEET)
    # counted in C (Counter over pairs): one Counter per child cost more than the sheet
    pairs = Counter((item.child.region_code or "", item.decision) for item in decisions.decisions)
    regions: dict[str, Counter[Decision]] = {}
    for (code, decision), count in pairs.items():
        regions.setdefault(code, Counter())[decision] = count
    overdue = Counter(item.child.region_code or "" for item in decisions.decisions if item.overdue)
    sheet.set_column(0, 0, 9, text)
    sheet.set_column(1, 1, 30)
    sheet.set_column(2, len(SUMMARY_COLUMNS) - 1, 10)
    sheet.write_row(0, 0, SUMMARY_COLUMNS, head)
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, len(regions) + 1, len(SUMMARY_COLUMNS) - 1)
    r = 0
    for r, code in enumerate(sorted(regions, key=lambda c: (c == "", c)), start=1):
        row = regions[code]
        sheet.write_string(r, 0, code)
        sheet.write_string(r, 1, county_name(code))
        for c, d in enumerate(Decision, start=2):
            sheet.write_number(r, c, row[d])
        sheet.write_number(r, 2 + len(Decision), sum(row.values()))
        sheet.write_number(r, 3 + len(Decision), overdue[code])
    counts = decisions.counts()
    r += 1
    sheet.write_string(r, 1, "合计", head)
    for c, d in enumerate(Decision, start=2):
        sheet.write_number(r, c, counts[d], head)
    sheet.write_number(r, 2 + len(Decision), len(decisions.decisions), head)
    sheet.write_number(r, 3 + len(Decision), sum(overdue.values()), head)


def _info(book: Any, decisions: RoundDecisions, provenance: Provenance, fmt: Any) -> None:
    _, head = fmt
    sheet = book.add_worksheet(INFO_SHEET)
    sheet.set_column(0, 0, 18)
    sheet.set_column(1, 1, 60)
    names = provenance.names
    facts = [
        ("评估日期", decisions.as_of.isoformat()),
        ("轮次", provenance.round_id or "离线评估"),
        ("生成时间", provenance.generated_at.isoformat(timespec="seconds")),
        ("儿童人数", str(len(decisions.decisions))),
        ("未能查询的数据源", "、".join(names.label(s) for s in decisions.failed_sources) or "无"),
    ]
    sheet.write_row(0, 0, ("项目", "内容"), head)
    for r, (key, value) in enumerate(facts, start=1):
        sheet.write_string(r, 0, key)
        sheet.write_string(r, 1, value)
    r = len(facts) + 2
    sheet.write_row(r, 0, ("数据源", "部门·数据集", "代码", "状态", "命中"), head)
    shown = {"ok": "完成", "failed": "未能查询", "refused": "被拒绝"}
    for k, run in enumerate(provenance.sources, start=r + 1):
        sheet.write_string(k, 0, names.node(run.node))
        sheet.write_string(k, 1, names.label(run.name))
        sheet.write_string(k, 2, run.name)
        sheet.write_string(k, 3, shown.get(run.status, run.status))
        sheet.write_number(k, 4, run.matches)


def write_decisions_xlsx(path: Path, decisions: RoundDecisions, provenance: Provenance) -> None:
    """Write decisions.xlsx atomically, mode 0600.

    Raises:
        OSError: the folder is not writable.
    """
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".xlsx", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    # XlsxWriter's own temporary files: beside the output (never a shared /tmp), in a
    # folder of their own that goes whatever happens (an interrupt left them behind)
    parts = Path(tempfile.mkdtemp(prefix=f".{path.name}.parts-", dir=path.parent))
    try:
        book = xlsxwriter.Workbook(
            str(temporary),
            {"constant_memory": True, "tmpdir": str(parts), "strings_to_numbers": False},
        )
        fmt = (book.add_format({"num_format": "@"}), book.add_format({"bold": True}))
        by: dict[Decision, list[ChildDecision]] = {d: [] for d in SHEET_ORDER}
        for item in decisions.decisions:
            by[item.decision].append(item)
        _summary(book, decisions, fmt)
        for d in SHEET_ORDER:
            _sheet(book, decision_name(d, "zh"), len(by[d]), fmt)
        _info(book, decisions, provenance, fmt)
        book.close()
        # the decision sheets are the 2nd to 7th worksheets, in SHEET_ORDER
        _fill_sheets(temporary, [(2 + k, by[d]) for k, d in enumerate(SHEET_ORDER)], decisions)
        with temporary.open("rb+") as out:
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def write_outputs_for_people(
    folder: Path, decisions: RoundDecisions, provenance: Provenance
) -> None:
    """Beside decisions.json: ``decisions.xlsx`` and ``names.csv`` (the display names,
    which ``xmatch rules evaluate --names`` reads to give the same reasons).

    Raises:
        OSError: the folder is not writable.
    """
    write_decisions_xlsx(folder / "decisions.xlsx", decisions, provenance)
    write_names(folder / "names.csv", provenance.names)


__all__ = [
    "COLUMNS",
    "INFO_SHEET",
    "SHEET_ORDER",
    "SUMMARY_SHEET",
    "write_decisions_xlsx",
    "write_outputs_for_people",
]
