"""The round report: one self-contained HTML page for people to read and print.

Inline CSS and an inline SVG chart; no script, no external fetch (it must
open on an offline machine in a civil affairs office). Every text from data
passes through :func:`html.escape`.

Full identity numbers of the children are shown: the roster and the report
belong to civil affairs, and a caseworker needs the number to act on a row.
Parents' numbers are never shown (the reasons say 父亲/母亲).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from html import escape
from typing import Literal

from coordinator.eligibility import ChildDecision, RoundDecisions
from coordinator.reasons import category_name, decision_name, month_text
from coordinator.records import Category, Decision, RosterRow, gc_paused

#: league and city names of Inner Mongolia's address codes (data-contracts.md)
LEAGUES = {
    "1501": "呼和浩特市",
    "1502": "包头市",
    "1503": "乌海市",
    "1504": "赤峰市",
    "1505": "通辽市",
    "1506": "鄂尔多斯市",
    "1507": "呼伦贝尔市",
    "1508": "巴彦淖尔市",
    "1509": "乌兰察布市",
    "1522": "兴安盟",
    "1525": "锡林郭勒盟",
    "1529": "阿拉善盟",
}

SourceStatus = Literal["ok", "failed", "refused"]


@dataclass(frozen=True, slots=True)
class SourceRun:
    """One match set queried in a round."""

    node: str
    match_set: str
    protocol: str
    status: SourceStatus
    matches: int
    seconds: float
    detail: str = ""

    @property
    def name(self) -> str:
        """``node/match_set``, as evidence.csv's ``source`` column says it."""
        return f"{self.node}/{self.match_set}"


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a round's evidence came from, for the report's last section."""

    round_id: str | None
    as_of: date
    generated_at: datetime
    sources: Sequence[SourceRun] = ()
    failed_sources: Sequence[str] = ()
    #: other named timings of the round, in seconds (e.g. ("evaluate", 1.2))
    timings: Sequence[tuple[str, float]] = field(default_factory=tuple)


def region_name(code: str | None) -> str:
    """The league or city of a 6-digit county code, then the code; unknown: the code."""
    if not code:
        return "未填 (none)"
    league = LEAGUES.get(code[:4])
    return f"{league} {code}" if league else code


_DECISIONS = tuple(Decision)

_CSS = """
:root { --ink:#1d2a36; --muted:#5b6b7a; --line:#cfd8e0; --band:#f2f5f8; --accent:#2f6690; }
* { box-sizing: border-box; }
body { font-family: "Noto Sans CJK SC","Source Han Sans SC","PingFang SC","Microsoft YaHei",
       "WenQuanYi Micro Hei",sans-serif; color: var(--ink); margin: 24px auto; max-width: 1120px;
       padding: 0 16px; font-size: 14px; line-height: 1.45; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px;
     border-bottom: 2px solid var(--accent); padding-bottom: 3px; }
small, .en { color: var(--muted); font-size: 11px; font-weight: normal; }
.meta { color: var(--muted); margin: 0 0 12px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; }
th, td { border: 1px solid var(--line); padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.id { font-family: "DejaVu Sans Mono",monospace; white-space: nowrap; }
ul.reasons { margin: 0; padding-left: 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; }
.card { border: 1px solid var(--line); border-radius: 4px; padding: 6px 12px; min-width: 120px; }
.card b { display: block; font-size: 20px; }
.warn { background: #fff4e5; border: 1px solid #f0b46c; padding: 8px 10px; border-radius: 4px; }
.empty { color: var(--muted); font-style: italic; }
svg text { font-family: inherit; font-size: 12px; fill: var(--ink); }
@media print {
  body { margin: 0; max-width: none; font-size: 10.5pt; }
  h2 { break-after: avoid; } tr, .card { break-inside: avoid; }
  thead { display: table-header-group; }
  .warn { background: none; }
}
"""


#: a character that :func:`html.escape` replaces
_SPECIAL = re.compile("[&<>\"']").search


def _escape(text: str) -> str:
    """:func:`html.escape`, without its five scans for the many texts that need none."""
    return escape(text) if _SPECIAL(text) else text


def _t(zh: str, en: str) -> str:
    """A label: Chinese, with English in small print."""
    return f"{escape(zh)} <small>{escape(en)}</small>"


def _child_cells(child: RosterRow) -> str:
    ident = _escape(child.child_id) if child.child_id else "<span class='empty'>无 (none)</span>"
    birth = child.child_birth_date.isoformat() if child.child_birth_date else ""
    return (
        f"<td class='id'>{ident}</td><td>{_escape(child.child_name)}</td>"
        f"<td>{_escape(birth)}</td><td>{_region_cell(child.region_code)}</td>"
    )


@lru_cache(maxsize=1 << 12)  # a roster has few counties and many children in each
def _region_cell(code: str | None) -> str:
    return escape(region_name(code))


_CHILD_HEAD = (
    f"<th>#</th><th>{_t('身份证号', 'ID')}</th><th>{_t('姓名', 'name')}</th>"
    f"<th>{_t('出生日期', 'born')}</th><th>{_t('旗县', 'county')}</th>"
)


def _reasons(texts: Sequence[str]) -> str:
    items = "".join([f"<li>{_escape(text)}</li>" for text in texts])
    return f"<ul class='reasons'>{items}</ul>"


def _table(
    rows: Sequence[ChildDecision],
    extra_head: str,
    extra: Iterable[str],
    *,
    empty: str = "无 (none)",
) -> str:
    if not rows:
        return f"<p class='empty'>{escape(empty)}</p>"
    body = "".join(
        f"<tr><td class='n'>{i}</td>{_child_cells(item.child)}{cells}</tr>"
        for i, (item, cells) in enumerate(zip(rows, extra, strict=True), start=1)
    )
    return f"<table><thead><tr>{_CHILD_HEAD}{extra_head}</tr></thead><tbody>{body}</tbody></table>"


def _bar_chart(sources: Sequence[tuple[str, int, str]]) -> str:
    """Horizontal bars: (label, matches, status) per department."""
    if not sources:
        return "<p class='empty'>无比对结果 (no matches recorded)</p>"
    top = max(count for _, count, _ in sources) or 1
    label_w, bar_w, row_h = 190, 560, 26
    height = row_h * len(sources) + 10
    parts = [
        f"<svg role='img' width='{label_w + bar_w + 90}' "
        f"height='{height}' aria-label='matches by department'>"
    ]
    for i, (label, count, status) in enumerate(sources):
        y = 5 + i * row_h
        width = round(bar_w * count / top)
        colour = "#2f6690" if status == "ok" else "#c0392b"
        note = "" if status == "ok" else f" ({status})"
        parts.append(
            f"<text x='{label_w - 8}' y='{y + 17}' text-anchor='end'>{escape(label)}</text>"
            f"<rect x='{label_w}' y='{y + 3}' width='{max(width, 1)}' height='{row_h - 8}' "
            f"fill='{colour}'/>"
            f"<text x='{label_w + max(width, 1) + 6}' y='{y + 17}'>{count:,}{escape(note)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


@gc_paused()
def _service_sections(
    sources: Sequence[str],
    listed: Mapping[str, Sequence[str]],
    index: Mapping[str, ChildDecision],
    *,
    none: str,
    failed: str,
) -> str:
    """One table per service set (gaps or needs): its children with their decision.

    A set missing from ``listed`` failed this round, so nothing can be listed for it.
    """
    if not sources:
        return f"<p class='empty'>{escape(none)}</p>"
    parts: list[str] = []
    for source in sources:
        ids = listed.get(source)
        if ids is None:
            parts.append(f"<h3>{escape(source)}</h3><p class='warn'>{failed}</p>")
            continue
        parts.append(f"<h3>{escape(source)} ({len(ids):,})</h3>")
        children = [index[c] for c in ids if c in index]
        parts.append(
            _table(
                children,
                f"<th>{_t('决定', 'decision')}</th>",
                (
                    f"<td>{_escape(decision_name(i.decision, 'zh'))} "
                    f"<small>{i.decision.value}</small></td>"
                    for i in children
                ),
            )
        )
    return "".join(parts)


def render_report(decisions: RoundDecisions, *, provenance: Provenance) -> str:
    """The report of one round or evaluation as a self-contained HTML page.

    Sections: counts by decision and by county, matches by department (SVG),
    the children to enrol, to exit (with the written reasons and the month
    support stops), to reclassify, to review (conflicts first, for 疑义校核),
    not eligible, overdue checks, coverage gaps, service needs, and the
    provenance.
    """
    lang = decisions.lang
    by: dict[Decision, list[ChildDecision]] = {d: [] for d in _DECISIONS}
    for item in decisions.decisions:
        by[item.decision].append(item)
    counts = Counter({d: len(v) for d, v in by.items()})
    out: list[str] = []
    add = out.append
    round_text = provenance.round_id or "离线评估 (offline evaluation)"
    generated = provenance.generated_at.isoformat(timespec="seconds")
    add(
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>比对报告 {escape(decisions.as_of.isoformat())}</title><style>{_CSS}</style>"
        "</head><body>"
    )
    add(f"<h1>{_t('孤儿和事实无人抚养儿童数据比对报告', 'Match round report')}</h1>")
    add(
        f"<p class='meta'>评估日期 <small>as of</small> <b>{decisions.as_of.isoformat()}</b>"
        f" · 轮次 <small>round</small> {escape(round_text)}"
        f" · 生成时间 <small>generated</small> {escape(generated)}"
        f" · 儿童 <small>children</small> {len(decisions.decisions):,}</p>"
    )
    if decisions.failed_sources:
        failed = "、".join(decisions.failed_sources)
        add(
            "<p class='warn'>以下数据源本轮未能查询,缺少其证据的儿童一律人工复核,不作退出决定。"
            f"<small>Failed sources: no child exits for want of their evidence.</small><br>"
            f"<b>{escape(failed)}</b></p>"
        )

    # counts by decision
    add(f"<h2>{_t('决定统计', 'Decisions')}</h2><div class='cards'>")
    for d in _DECISIONS:
        add(
            f"<div class='card'><b>{counts[d]:,}</b>{escape(decision_name(d, 'zh'))} "
            f"<small>{escape(d.value)}</small></div>"
        )
    add("</div>")

    # counts by county
    regions: dict[str, Counter[Decision]] = {}
    for item in decisions.decisions:
        regions.setdefault(item.child.region_code or "", Counter())[item.decision] += 1
    head = "".join(
        f"<th class='n'>{escape(decision_name(d, 'zh'))}<br><small>{d.value}</small></th>"
        for d in _DECISIONS
    )
    add(
        f"<h2>{_t('按旗县统计', 'By county')}</h2>"
        f"<table><thead><tr><th>{_t('旗县', 'county')}</th>{head}"
    )
    add(f"<th class='n'>{_t('合计', 'total')}</th></tr></thead><tbody>")
    for code in sorted(regions):
        row = regions[code]
        cells = "".join(f"<td class='n'>{row[d]:,}</td>" for d in _DECISIONS)
        add(
            f"<tr><td>{escape(region_name(code))}</td>{cells}"
            f"<td class='n'>{sum(row.values()):,}</td></tr>"
        )
    add("</tbody></table>")

    # matches by department
    per_node: dict[str, list[int]] = {}
    status_of: dict[str, str] = {}
    for run in provenance.sources:
        per_node.setdefault(run.node, []).append(run.matches)
        if run.status != "ok":
            status_of[run.node] = run.status
    bars = [(node, sum(v), status_of.get(node, "ok")) for node, v in sorted(per_node.items())]
    add(f"<h2>{_t('各部门比对命中数', 'Matches by department')}</h2>{_bar_chart(bars)}")

    # work lists
    add(f"<h2>{_t('新纳入', 'To enrol')} ({counts[Decision.ENROL]:,})</h2>")
    add("<p class='meta'>主动帮助申请 <small>help the family apply</small></p>")
    enrol = by[Decision.ENROL]
    add(
        _table(
            enrol,
            _heads(("类别", "category"), ("理由", "reasons"), ("下次核查", "next check")),
            (
                f"<td>{_category(i.category, lang)}</td>"
                f"<td>{_reasons(decisions.reason_texts(i))}</td><td>{_escape(_due(i))}</td>"
                for i in enrol
            ),
        )
    )
    exits = by[Decision.EXIT]
    add(f"<h2>{_t('退出保障', 'To exit')} ({len(exits):,})</h2>")
    add(
        "<p class='meta'>书面说明理由,次月起停发 <small>written reasons; support stops "
        "from the month after the change</small></p>"
    )
    add(
        _table(
            exits,
            _heads(("原类别", "recorded"), ("停发月份", "stops from"), ("理由", "reasons")),
            (
                f"<td>{_category(i.child.category, lang)}</td>"
                f"<td>{_escape(month_text(i.stops_from, lang)) if i.stops_from else ''}</td>"
                f"<td>{_reasons(decisions.reason_texts(i))}</td>"
                for i in exits
            ),
        )
    )
    moves = by[Decision.RECLASSIFY]
    add(f"<h2>{_t('变更类别', 'To reclassify')} ({len(moves):,})</h2>")
    add(
        _table(
            moves,
            f"<th>{_t('原类别 → 新类别', 'recorded → now')}</th><th>{_t('理由', 'reasons')}</th>",
            (
                f"<td>{_category(i.child.category, lang)} → "
                f"{_category(i.category, lang)}</td>"
                f"<td>{_reasons(decisions.reason_texts(i))}</td>"
                for i in moves
            ),
        )
    )
    reviews = sorted(by[Decision.REVIEW], key=lambda i: not i.conflict)
    conflicts = sum(1 for i in reviews if i.conflict)
    add(f"<h2>{_t('人工复核', 'To review')} ({len(reviews):,})</h2>")
    add(
        f"<p class='meta'>数据矛盾 {conflicts:,} 人,请反馈提供部门疑义校核(列在最前);"
        "校核期间照常保障。<small>Conflicting records first, for feedback to the providers; "
        "support continues meanwhile.</small></p>"
    )
    add(
        _table(
            reviews,
            f"<th>{_t('状态', 'status')}</th><th>{_t('理由', 'reasons')}</th>",
            (
                f"<td>{'数据矛盾 <small>conflict</small><br>' if i.conflict else ''}"
                f"{_escape(i.child.status.value)}</td><td>{_reasons(decisions.reason_texts(i))}</td>"
                for i in reviews
            ),
        )
    )
    overdue = [i for i in decisions.decisions if i.overdue]
    add(f"<h2>{_t('定期核查逾期', 'Overdue checks')} ({len(overdue):,})</h2>")
    add(
        _table(
            overdue,
            _heads(("上次核查", "last check"), ("应核查日期", "due"), ("依据", "interval")),
            (
                f"<td>{_day(i.child.last_check_date)}</td>"
                f"<td>{_escape(_due(i))}</td>"
                f"<td>{_escape('; '.join(r.text(lang) for r in i.check_reasons))}</td>"
                for i in overdue
            ),
        )
    )
    add(f"<h2>{_t('服务覆盖缺口', 'Coverage gaps')}</h2>")
    add(
        "<p class='meta'>在保儿童未被服务数据集匹配(如医保应保尽保);不影响保障决定。"
        "<small>Covered children (supported: continue, reclassify or review) not matched by a "
        "service-coverage set; gaps never change a decision.</small></p>"
    )
    index = {i.child.child_id: i for i in decisions.decisions if i.child.child_id}
    add(
        _service_sections(
            decisions.service_sources,
            decisions.coverage_gaps,
            index,
            none="本轮无服务覆盖数据集 (no service-coverage sets this round)",
            failed="数据源未能查询,无法判断缺口 "
            "<small>the set failed: no gaps can be concluded</small>",
        )
    )
    add(f"<h2>{_t('服务需求', 'Service needs')}</h2>")
    add(
        "<p class='meta'>在保儿童被服务需求数据集匹配(如残疾儿童康复需求),请协调提供服务;"
        "不影响保障决定。<small>Covered children (supported: continue, reclassify or review) "
        "matched by a service-needs set; needs never change a decision.</small></p>"
    )
    add(
        _service_sections(
            decisions.service_need_sources,
            decisions.service_needs,
            index,
            none="本轮无服务需求数据集 (no service-needs sets this round)",
            failed="数据源未能查询,无法列出需求 "
            "<small>the set failed: no needs can be listed</small>",
        )
    )
    refused = by[Decision.NOT_ELIGIBLE]
    add(f"<h2>{_t('不符合条件', 'Not eligible')} ({len(refused):,})</h2>")
    add(
        _table(
            refused,
            f"<th>{_t('理由', 'reasons')}</th>",
            (f"<td>{_reasons(decisions.reason_texts(i))}</td>" for i in refused),
        )
    )
    add(f"<h2>{_t('继续保障', 'Continue')} ({counts[Decision.CONTINUE]:,})</h2>")
    add("<p class='meta'>名单见 decisions.json <small>listed in decisions.json</small></p>")

    # provenance
    add(f"<h2>{_t('数据来源', 'Provenance')}</h2>")
    add(
        f"<table><thead><tr><th>{_t('部门', 'node')}</th><th>{_t('数据集', 'match set')}</th>"
        f"<th>{_t('协议', 'protocol')}</th><th>{_t('状态', 'status')}</th>"
        f"<th class='n'>{_t('命中', 'matches')}</th><th class='n'>{_t('用时(秒)', 'seconds')}</th>"
        f"<th>{_t('说明', 'detail')}</th></tr></thead><tbody>"
    )
    for run in provenance.sources:
        add(
            f"<tr><td>{escape(run.node)}</td><td>{escape(run.match_set)}</td><td>{escape(run.protocol)}</td>"
            f"<td>{escape(run.status)}</td><td class='n'>{run.matches:,}</td>"
            f"<td class='n'>{run.seconds:.2f}</td><td>{escape(run.detail)}</td></tr>"
        )
    add("</tbody></table>")
    facts = [
        ("轮次 round", round_text),
        ("评估日期 as of", provenance.as_of.isoformat()),
        ("未能查询 failed sources", "、".join(provenance.failed_sources) or "无 none"),
        *((f"用时 {name} (s)", f"{seconds:.2f}") for name, seconds in provenance.timings),
    ]
    add("<table><tbody>")
    for name, value in facts:
        add(f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>")
    add("</tbody></table></body></html>")
    return "".join(out)


def _heads(*labels: tuple[str, str]) -> str:
    return "".join(f"<th>{_t(zh, en)}</th>" for zh, en in labels)


def _category(value: Category | None, lang: Literal["zh", "en"]) -> str:
    return _escape(category_name(value, lang)) if value is not None else ""


def _day(value: date | None) -> str:
    return value.isoformat() if value is not None else "无 <small>none</small>"


def _due(item: ChildDecision) -> str:
    return item.next_check_due.isoformat() if item.next_check_due else ""


__all__ = ["LEAGUES", "Provenance", "SourceRun", "region_name", "render_report"]
