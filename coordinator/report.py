"""The round report: one self-contained HTML page that caseworkers work from.

Summaries first (decisions, decisions by county, matches by department,
decisions over past rounds), then, county by county (旗县), only the children
someone must act on: enrol, exit (with the month support stops), reclassify
and review (conflicts first, for 疑义校核). Complete lists (continue, not
eligible, overdue checks) go to decisions.xlsx; the page gives their counts.

Inline CSS, inline SVG charts and a few lines of inline script that filter the
work lists by county and decision; nothing is fetched (it must open on an
offline office PC). Printing keeps what the filter shows. Every text from data
passes through :func:`html.escape`. Departments and sets are named by the
display names their nodes announced (:class:`coordinator.names.SourceNames`).

Full identity numbers of the children are shown: the roster and the report
belong to civil affairs, and a caseworker needs the number to act on a row.
Parents' numbers are never shown (the reasons say 父亲/母亲).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from html import escape
from typing import Literal, NamedTuple

from coordinator.decisions import RoundDecisions
from coordinator.dispute_rule import OpenDispute
from coordinator.eligibility import ChildDecision
from coordinator.names import SourceNames
from coordinator.reasons import category_name, decision_name, month_text, status_name
from coordinator.records import Category, Decision, RosterRow, gc_paused
from coordinator.regions import LEAGUES, UNKNOWN, county_name
from coordinator.report_charts import (
    _COLOUR,
    _DECISIONS,
    bar_chart,
    county_chart,
    history_chart,
)
from coordinator.report_charts import escape_fast as _escape
from coordinator.state import RoundDecisionCounts

SourceStatus = Literal["ok", "failed", "refused"]
#: the written reasons of one decision (RoundDecisions.reason_texts)
TextsFn = Callable[[ChildDecision], list[str]]


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


@dataclass(frozen=True)
class Provenance:
    """Where a round's evidence came from, for the report's summaries and last section."""

    round_id: str | None
    as_of: date
    generated_at: datetime
    sources: Sequence[SourceRun] = ()
    failed_sources: Sequence[str] = ()
    #: other named timings of the round, in seconds (e.g. ("evaluate", 1.2))
    timings: Sequence[tuple[str, float]] = field(default_factory=tuple)
    #: display names of the departments and sets
    names: SourceNames = field(default_factory=SourceNames)
    #: decision counts of past rounds (and this one), oldest first, from the state database
    history: Sequence[RoundDecisionCounts] = ()
    #: the open 疑义校核 disputes of the round (coordinator.disputes), oldest first
    open_disputes: Sequence[OpenDispute] = ()


def region_name(code: str | None) -> str:
    """The full county name of an address code (:func:`coordinator.regions.county_name`)."""
    return county_name(code)


#: the decisions someone must act on, in the order of the work lists
ACTION = (Decision.ENROL, Decision.EXIT, Decision.RECLASSIFY, Decision.REVIEW)

_CSS = """
:root{--ink:#1d2a36;--muted:#5b6b7a;--line:#cfd8e0;--band:#f2f5f8;--accent:#2f6690}
*{box-sizing:border-box}
body{font-family:"Noto Sans CJK SC","Source Han Sans SC","PingFang SC","Microsoft YaHei",
"WenQuanYi Micro Hei",sans-serif;color:var(--ink);margin:24px auto;max-width:1120px;
padding:0 16px;font-size:14px;line-height:1.45}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid var(--accent);padding-bottom:3px}
h3{font-size:15px;margin:18px 0 6px;background:var(--band);padding:4px 8px}
h4{font-size:14px;margin:10px 0 4px}
small{color:var(--muted);font-size:11px;font-weight:normal}
.meta{color:var(--muted);margin:0 0 12px}
table{border-collapse:collapse;width:100%;margin:6px 0 10px}
th,td{border:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:top}
th{background:var(--band);font-weight:600}
.n{text-align:right;font-variant-numeric:tabular-nums}
tbody td:nth-child(2){font-family:"DejaVu Sans Mono",monospace;white-space:nowrap}
tbody td:nth-child(3){white-space:nowrap}
td.r{white-space:pre-line}
[data-d=EXIT] td:nth-child(5){color:#b71c1c;font-weight:600;white-space:nowrap}
[data-d=ENROL] td:last-child{white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{border:1px solid var(--line);border-left:6px solid var(--c);border-radius:4px;
padding:6px 12px;min-width:120px}
.card b{display:block;font-size:20px}
.warn{background:#fff4e5;border:1px solid #f0b46c;padding:8px 10px;border-radius:4px}
.empty{color:var(--muted);font-style:italic}
.x{color:#b71c1c;font-weight:600}
nav{position:sticky;top:0;background:#fff;border:1px solid var(--line);padding:6px 10px;
margin:12px 0;display:flex;flex-wrap:wrap;gap:12px;align-items:center;z-index:1}
nav label{white-space:nowrap}
svg text{font-family:inherit;font-size:12px;fill:var(--ink)}
[hidden]{display:none!important}
@media print{
body{margin:0;max-width:none;font-size:10.5pt}
nav{display:none}
body[data-county]:not([data-county=""]) .all{display:none}
h2,h3,h4{break-after:avoid}
tr,.card{break-inside:avoid}
thead{display:table-header-group}
.warn{background:none}
}
"""

#: filters the work lists (sections by county, blocks by decision) and the county table; the
#: choice is kept in the address (#c=150402&d=ENROL,EXIT), so a link or bookmark opens it again,
#: scrolled to that county's list
_SCRIPT = """
(function(){
var c=document.getElementById('fc'),ds=document.querySelectorAll('nav input');
function f(){var v=c.value,on={},d=[];
ds.forEach(function(i){on[i.value]=i.checked;if(i.checked){d.push(i.value);}});
document.querySelectorAll('[data-c]').forEach(function(e){e.hidden=v!==''&&e.dataset.c!==v;});
document.querySelectorAll('[data-d]').forEach(function(e){e.hidden=!on[e.dataset.d];});
document.body.dataset.county=v;history.replaceState(null,'','#c='+v+'&d='+d.join(','));}
var h=new URLSearchParams(location.hash.slice(1));
if(h.has('c')){c.value=h.get('c');if(c.value!==h.get('c')){c.value='';}}
if(h.has('d')){var w=h.get('d').split(',');
ds.forEach(function(i){i.checked=w.indexOf(i.value)>=0;});}
c.addEventListener('change',f);ds.forEach(function(i){i.addEventListener('change',f);});f();
var s=c.value&&document.querySelector('section[data-c="'+c.value+'"]');if(s){s.scrollIntoView();}
})();
"""

#: a character that :func:`html.escape` replaces


def _t(zh: str, en: str) -> str:
    """A heading: Chinese, with English in small print (for the operators)."""
    return f"{escape(zh)} <small>{escape(en)}</small>"


def _ident(child: RosterRow) -> str:
    if child.child_id:
        return f"<td>{_escape(child.child_id)}</td>"
    birth = child.child_birth_date.isoformat() if child.child_birth_date else "不详"
    return f"<td>无身份证号<br>出生 {birth}</td>"


def _reasons(texts: Sequence[str]) -> str:
    # one reason a line: the cell keeps line breaks (white-space: pre-line), "\n" is 1 byte
    return _escape("\n".join(texts))


def _rows(rows: Sequence[ChildDecision], cells: Iterable[str], *, start: int = 1) -> str:
    """Table rows: number, identity number, name, then ``cells`` of each row."""
    return "".join(
        [
            f"<tr><td class='n'>{i}</td>{_ident(item.child)}<td>{_escape(item.child.child_name)}"
            f"</td>{extra}</tr>"
            for i, (item, extra) in enumerate(zip(rows, cells, strict=True), start=start)
        ]
    )


_HEAD = "<th>#</th><th>身份证号</th><th>姓名</th>"


def _table(head: str, body: str) -> str:
    return f"<table><thead><tr>{_HEAD}{head}</tr></thead><tbody>{body}</tbody></table>"


def _heads(*labels: str) -> str:
    return "".join(f"<th>{escape(label)}</th>" for label in labels)


def _category(value: Category | None) -> str:
    return category_name(value, "zh") if value is not None else ""


# --- charts (inline SVG) -------------------------------------------------------------------------


# --- sections ------------------------------------------------------------------------------------


@gc_paused()
def _service_sections(
    sources: Sequence[str],
    listed: Mapping[str, Sequence[str]],
    index: Mapping[str, ChildDecision],
    names: SourceNames,
    *,
    none: str,
    failed: str,
) -> str:
    """One table per service set (gaps or needs): its children, county and decision.

    A set missing from ``listed`` failed this round, so nothing can be listed for it.
    """
    if not sources:
        return f"<p class='empty'>{none}</p>"
    parts: list[str] = []
    for source in sources:
        label = _escape(names.label(source))
        ids = listed.get(source)
        if ids is None:
            parts.append(f"<h3>{label}</h3><p class='warn'>{failed}</p>")
            continue
        parts.append(f"<h3>{label} ({len(ids):,})</h3>")
        children = [index[c] for c in ids if c in index]
        if not children:
            parts.append("<p class='empty'>无</p>")
            continue
        # one tbody per county, so that the county filter (and printing) applies here too
        counties: dict[str, list[ChildDecision]] = {}
        for item in children:
            counties.setdefault(item.child.region_code or "", []).append(item)
        bodies = []
        start = 1
        for code in sorted(counties, key=lambda c: (c == "", c)):
            group = counties[code]
            cells = (f"<td>{decision_name(i.decision, 'zh')}</td>" for i in group)
            name = f"<td>{_escape(county_name(code))}</td>"
            rows = _rows(group, (name + cell for cell in cells), start=start)
            bodies.append(f"<tbody data-c='{escape(code)}'>{rows}</tbody>")
            start += len(group)
        parts.append(
            f"<table><thead><tr>{_HEAD}{_heads('旗县', '决定')}</tr></thead>"
            f"{''.join(bodies)}</table>"
        )
    return "".join(parts)


def _stop(item: ChildDecision) -> str:
    return f"自{month_text(item.stops_from, 'zh')}起停发" if item.stops_from else ""


def _without_stop(item: ChildDecision, texts: list[str]) -> list[str]:
    """An exit's reasons less the last one, "support stops from ...": its own column says it."""
    if item.reasons and item.reasons[-1].key == "stops_from":
        return texts[:-1]
    return texts


def _work_block(decision: Decision, items: Sequence[ChildDecision], texts: TextsFn) -> str:
    """One county's children with one decision, as a table."""
    if decision is Decision.ENROL:
        head = _heads("类别", "理由", "下次核查")
        cells: Iterable[str] = (
            f"<td>{_category(i.category)}</td><td class=r>{_reasons(texts(i))}</td>"
            f"<td>{_due(i)}</td>"
            for i in items
        )
    elif decision is Decision.EXIT:
        head = _heads("原类别", "停发", "理由")
        cells = (
            f"<td>{_category(i.child.category)}</td>"
            f"<td>{_stop(i)}</td>"
            f"<td class=r>{_reasons(_without_stop(i, texts(i)))}</td>"
            for i in items
        )
    elif decision is Decision.RECLASSIFY:
        head = _heads("原类别 → 新类别", "理由")
        cells = (
            f"<td>{_category(i.child.category)} → {_category(i.category)}</td>"
            f"<td class=r>{_reasons(texts(i))}</td>"
            for i in items
        )
    else:
        head = _heads("状态", "理由")
        cells = (
            f"<td>{'<b class=x>数据矛盾</b><br>' if i.conflict else ''}"
            f"{status_name(i.child.status, 'zh')}</td><td class=r>{_reasons(texts(i))}</td>"
            for i in items
        )
    title = decision_name(decision, "zh")
    return (
        f"<div data-d='{decision.value}'><h4>{title} ({len(items):,})</h4>"
        f"{_table(head, _rows(items, cells))}</div>"
    )


class _Tally(NamedTuple):
    """What the report counts, in one pass over the decisions."""

    counts: Counter[Decision]
    #: county code -> decisions counted there (counties sorted, "" last)
    regions: dict[str, Counter[Decision]]
    overdue: Counter[str]
    #: county code -> decision -> the children to act on
    work: dict[str, dict[Decision, list[ChildDecision]]]


def _tally(decisions: RoundDecisions) -> _Tally:
    counts: Counter[Decision] = Counter()
    regions: dict[str, Counter[Decision]] = {}
    overdue: Counter[str] = Counter()
    work: dict[str, dict[Decision, list[ChildDecision]]] = {}
    for item in decisions.decisions:
        code = item.child.region_code or ""
        counts[item.decision] += 1
        row = regions.get(code)
        if row is None:
            row = regions[code] = Counter()
        row[item.decision] += 1
        if item.overdue:
            overdue[code] += 1
        if item.decision in ACTION:
            work.setdefault(code, {}).setdefault(item.decision, []).append(item)
    order = sorted(regions, key=lambda code: (code == "", code))
    regions = {code: regions[code] for code in order}
    work = {code: work[code] for code in order if code in work}

    return _Tally(counts, regions, overdue, work)


def _head(decisions: RoundDecisions, provenance: Provenance, tally: _Tally) -> str:
    """Title, the round's facts, the failed-sources warning and the filter."""
    names = provenance.names
    counts, work = tally.counts, tally.work
    out: list[str] = []
    add = out.append
    round_text = provenance.round_id or "离线评估"
    generated = provenance.generated_at.isoformat(timespec="seconds")
    add(
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>比对报告 {escape(decisions.as_of.isoformat())}</title><style>{_CSS}</style>"
        "</head><body>"
    )
    add(f"<h1>{_t('孤儿和事实无人抚养儿童数据比对报告', 'Match round report')}</h1>")
    add(
        f"<p class='meta'>评估日期 <b>{decisions.as_of.isoformat()}</b>"
        f" · 轮次 {escape(round_text)} · 生成时间 {escape(generated)}"
        f" · 儿童 {len(decisions.decisions):,} 人 · 完整名单见 decisions.xlsx</p>"
    )
    if decisions.failed_sources:
        failed = "、".join(names.label(s) for s in decisions.failed_sources)
        add(
            "<p class='warn'>以下数据源本轮未能查询。证据数据源缺失时,缺少其证据的儿童一律人工复核,"
            "不作退出决定;服务数据源缺失时,只缺少它自己的名单,不影响任何决定。"
            f"<small>Failed sources.</small><br><b>{escape(failed)}</b></p>"
        )

    # the filter
    options = "".join(
        f"<option value='{escape(code)}'>{escape(county_name(code))}</option>" for code in work
    )
    boxes = "".join(
        f"<label><input type='checkbox' value='{d.value}' checked> {decision_name(d, 'zh')}"
        f" ({counts[d]:,})</label>"
        for d in ACTION
    )
    add(
        f"<nav aria-label='筛选'><label>旗县 <select id='fc'><option value=''>全部旗县</option>"
        f"{options}</select></label>{boxes}</nav>"
    )

    return "".join(out)


def _summaries(provenance: Provenance, tally: _Tally) -> str:
    """Summary cards and the charts: by county, by department, over past rounds."""
    names = provenance.names
    counts, regions = tally.counts, tally.regions
    out: list[str] = []
    add = out.append
    # summaries
    add(f"<h2>{_t('决定统计', 'Decisions')}</h2><div class='cards'>")
    for d in _DECISIONS:
        add(
            f"<div class='card' style='--c:{_COLOUR[d]}'><b>{counts[d]:,}</b>"
            f"{decision_name(d, 'zh')}</div>"
        )
    add("</div>")
    # printed for one county, the chart of all counties is left out (it takes pages)
    add(
        f"<div class='all'><h2>{_t('按旗县统计', 'By county')}</h2>{county_chart(regions)}"
        "<p class='meta'>各旗县人数表见本页末尾。</p></div>"
    )
    per_node: dict[str, int] = {}
    status_of: dict[str, str] = {}
    for run in provenance.sources:
        per_node[run.node] = per_node.get(run.node, 0) + run.matches
        if run.status != "ok":
            status_of[run.node] = run.status
    bars = [
        (names.node(node), n, status_of.get(node, "ok")) for node, n in sorted(per_node.items())
    ]
    add(f"<h2>{_t('各部门比对命中数', 'Matches by department')}</h2>{bar_chart(bars)}")
    add(f"<h2>{_t('历次比对决定', 'Decisions over past rounds')}</h2>")
    add(history_chart(provenance.history))

    return "".join(out)


def _work_lists(tally: _Tally, texts: TextsFn) -> str:
    """The children to act on, county by county (conflicts first among reviews)."""
    work = tally.work
    out: list[str] = []
    add = out.append
    # work lists, county by county
    add(f"<h2>{_t('需办理的儿童(按旗县)', 'Children to act on, by county')}</h2>")
    add(
        "<p class='meta'>新纳入:主动帮助申请;退出保障:书面说明理由,次月起停发;"
        "人工复核:数据矛盾者列在最前,请反馈数据提供部门疑义校核,校核期间照常保障。</p>"
    )
    if not work:
        add("<p class='empty'>本轮没有需要办理的儿童</p>")
    for code, lists in work.items():
        summary = " · ".join(
            f"{decision_name(d, 'zh')} {len(lists[d]):,}" for d in ACTION if d in lists
        )
        add(
            f"<section data-c='{escape(code)}'><h3>{escape(county_name(code))} "
            f"<small>{summary}</small></h3>"
        )
        for d in ACTION:
            items = lists.get(d)
            if not items:
                continue
            if d is Decision.REVIEW:
                items = sorted(items, key=lambda i: not i.conflict)
            add(_work_block(d, items, texts))
        add("</section>")

    return "".join(out)


def _service_lists(decisions: RoundDecisions, provenance: Provenance, tally: _Tally) -> str:
    """Overdue checks (counts), coverage gaps and service needs (lists), the rest (counts)."""
    names = provenance.names
    counts, overdue = tally.counts, tally.overdue
    out: list[str] = []
    add = out.append
    # counts only: the complete lists are in the spreadsheet
    add(f"<h2>{_t('定期核查逾期', 'Overdue checks')} ({sum(overdue.values()):,})</h2>")
    add("<p class='meta'>各旗县人数见本页末尾的统计表;名单见 decisions.xlsx(核查逾期列)。</p>")
    index = {i.child.child_id: i for i in decisions.decisions if i.child.child_id}
    add(f"<h2>{_t('服务覆盖缺口', 'Coverage gaps')}</h2>")
    add(
        "<p class='meta'>在保儿童未被服务数据集匹配(如医保应保尽保);不影响保障决定。"
        "<small>Covered children not matched by a service-coverage set.</small></p>"
    )
    add(
        _service_sections(
            decisions.service_sources,
            decisions.coverage_gaps,
            index,
            names,
            none="本轮无服务覆盖数据集 <small>no service-coverage sets this round</small>",
            failed="数据源未能查询,无法判断缺口 "
            "<small>the set failed: no gaps can be concluded</small>",
        )
    )
    add(f"<h2>{_t('服务需求', 'Service needs')}</h2>")
    add(
        "<p class='meta'>在保儿童被服务需求数据集匹配(如残疾儿童康复需求),请协调提供服务;"
        "不影响保障决定。<small>Covered children matched by a service-needs set.</small></p>"
    )
    add(
        _service_sections(
            decisions.service_need_sources,
            decisions.service_needs,
            index,
            names,
            none="本轮无服务需求数据集 <small>no service-needs sets this round</small>",
            failed="数据源未能查询,无法列出需求 "
            "<small>the set failed: no needs can be listed</small>",
        )
    )
    add(
        f"<h2>{_t('继续保障与不符合条件', 'Continue and not eligible')}</h2>"
        f"<p class='meta'>继续保障 {counts[Decision.CONTINUE]:,} 人,"
        f"不符合条件 {counts[Decision.NOT_ELIGIBLE]:,} 人:无需办理,"
        "名单与理由见 decisions.xlsx。</p>"
    )

    return "".join(out)


def _county_table(decisions: RoundDecisions, tally: _Tally) -> str:
    """Decisions by county, with the totals."""
    counts, regions, overdue = tally.counts, tally.regions, tally.overdue
    out: list[str] = []
    add = out.append
    head = "".join(f"<th class='n'>{decision_name(d, 'zh')}</th>" for d in _DECISIONS)
    add(
        f"<h2>{_t('各旗县决定统计表', 'Decisions by county')}</h2>"
        f"<table><thead><tr><th>旗县</th>{head}<th class='n'>合计</th>"
        "<th class='n'>定期核查逾期</th></tr></thead><tbody>"
    )
    for code, row in regions.items():
        cells = "".join(f"<td class='n'>{row[d]:,}</td>" for d in _DECISIONS)
        add(
            f"<tr data-c='{escape(code)}'><td>{escape(county_name(code))}</td>{cells}"
            f"<td class='n'>{sum(row.values()):,}</td><td class='n'>{overdue[code]:,}</td></tr>"
        )
    total = "".join(f"<td class='n'><b>{counts[d]:,}</b></td>" for d in _DECISIONS)
    add(
        f"<tr><td><b>合计</b></td>{total}<td class='n'><b>{len(decisions.decisions):,}</b></td>"
        f"<td class='n'><b>{sum(overdue.values()):,}</b></td></tr></tbody></table>"
    )

    return "".join(out)


def _disputes(provenance: Provenance) -> str:
    """The open disputes with their age (days since filing, on the generation date)."""
    items = provenance.open_disputes
    if not items:
        return ""
    today = provenance.generated_at.date()
    rows = "".join(
        f"<tr><td><code>{escape(d.dispute_id)}</code></td>"
        f"<td>{escape(provenance.names.label(d.source))}</td><td>{d.filed_on.isoformat()}</td>"
        f"<td class='n'>{d.age_days(today)}</td><td>{escape(d.reason)}</td></tr>"
        for d in items
    )
    return (
        f"<h2>{_t('疑义校核中', 'Open disputes')} ({len(items):,})</h2><table><thead><tr>"
        "<th>疑义编号</th><th>数据来源</th><th>提出日期</th><th class='n'>已等待(天)</th>"
        f"<th>疑义原因</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _provenance(provenance: Provenance) -> str:
    """Which sets were queried, how each ended, and the round's facts."""
    names = provenance.names
    round_text = provenance.round_id or "离线评估"
    out: list[str] = []
    add = out.append
    # provenance
    add(f"<h2>{_t('数据来源', 'Provenance')}</h2>")
    add(
        "<table><thead><tr><th>部门</th><th>数据集</th><th>协议</th><th>状态</th>"
        "<th class='n'>命中</th><th class='n'>用时(秒)</th><th>说明</th></tr></thead><tbody>"
    )
    shown_status = {"ok": "完成", "failed": "未能查询", "refused": "被拒绝"}
    for run in provenance.sources:
        node = names.node(run.node)
        shown_set = names.sets.get(run.name, run.match_set)
        add(
            f"<tr><td>{escape(node)} <small>{escape(run.node)}</small></td>"
            f"<td>{escape(shown_set)} <small>{escape(run.match_set)}</small></td>"
            f"<td>{escape(run.protocol)}</td><td>{shown_status.get(run.status, run.status)}</td>"
            f"<td class='n'>{run.matches:,}</td><td class='n'>{run.seconds:.2f}</td>"
            f"<td>{escape(run.detail)}</td></tr>"
        )
    add("</tbody></table>")
    facts = [
        ("轮次", round_text),
        ("评估日期", provenance.as_of.isoformat()),
        ("未能查询", "、".join(names.label(s) for s in provenance.failed_sources) or "无"),
        *((f"用时 {name}(秒)", f"{seconds:.2f}") for name, seconds in provenance.timings),
    ]
    add("<table><tbody>")
    for name, value in facts:
        add(f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>")
    add(f"</tbody></table><script id='filter'>{_SCRIPT}</script></body></html>")
    return "".join(out)


def render_report(decisions: RoundDecisions, *, provenance: Provenance) -> str:
    """The report of one round or evaluation as a self-contained HTML page.

    Sections: summary cards; decisions by county (chart); matches by
    department (chart); decisions over past rounds (chart, from the state
    database); then for each county the children to enrol, to exit (with the
    month support stops), to reclassify and to review (conflicts first);
    the open disputes with their age; overdue checks (counts), coverage gaps
    and service needs (lists), the counts by county (table) and the provenance.
    A filter at the top shows one county or some decisions only.
    """
    tally = _tally(decisions)
    return "".join(
        (
            _head(decisions, provenance, tally),
            _summaries(provenance, tally),
            _work_lists(tally, decisions.reason_texts),
            _disputes(provenance),
            _service_lists(decisions, provenance, tally),
            _county_table(decisions, tally),
            _provenance(provenance),
        )
    )


def _due(item: ChildDecision) -> str:
    return item.next_check_due.isoformat() if item.next_check_due else ""


__all__ = [
    "ACTION",
    "LEAGUES",
    "UNKNOWN",
    "Provenance",
    "SourceRun",
    "region_name",
    "render_report",
]
