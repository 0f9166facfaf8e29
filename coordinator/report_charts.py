"""The report's charts: inline SVG by county, by department and over past rounds."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from html import escape

from coordinator.reasons import decision_name
from coordinator.records import Decision
from coordinator.regions import county_short
from coordinator.state import RoundDecisionCounts

_SPECIAL = re.compile("[&<>\"']").search


def escape_fast(text: str) -> str:
    """:func:`html.escape`, without its five scans for the many texts that need none."""
    return escape(text) if _SPECIAL(text) else text


_DECISIONS = tuple(Decision)


_COLOUR = {
    Decision.ENROL: "#2e7d32",
    Decision.CONTINUE: "#90a4ae",
    Decision.RECLASSIFY: "#6a1b9a",
    Decision.EXIT: "#c62828",
    Decision.REVIEW: "#ef6c00",
    Decision.NOT_ELIGIBLE: "#d0d0d0",
}


def _legend(x: int, y: int) -> str:
    parts = []
    for d in _DECISIONS:
        parts.append(
            f"<rect x='{x}' y='{y}' width='12' height='12' fill='{_COLOUR[d]}'/>"
            f"<text x='{x + 16}' y='{y + 11}'>{decision_name(d, 'zh')}</text>"
        )
        x += 96
    return "".join(parts)


def county_chart(regions: Mapping[str, Counter[Decision]]) -> str:
    """Horizontal stacked bars: one per county, a segment per decision."""
    if not regions:
        return "<p class='empty'>无</p>"
    label_w, bar_w, row_h = 200, 740, 16
    top = max(sum(row.values()) for row in regions.values()) or 1
    height = 30 + row_h * len(regions)
    parts = [
        f"<svg role='img' aria-label='各旗县决定' width='{label_w + bar_w + 60}' "
        f"height='{height}'>{_legend(label_w, 2)}"
    ]
    for k, (code, row) in enumerate(regions.items()):
        y = 26 + k * row_h
        parts.append(
            f"<text x='{label_w - 6}' y='{y + 12}' text-anchor='end'>"
            f"{escape_fast(county_short(code))}</text>"
        )
        x = float(label_w)
        for d in _DECISIONS:
            if row[d]:
                width = bar_w * row[d] / top
                parts.append(
                    f"<rect x='{x:.0f}' y='{y + 2}' width='{width + 0.5:.0f}' height='{row_h - 4}' "
                    f"fill='{_COLOUR[d]}'><title>{decision_name(d, 'zh')} {row[d]:,}</title></rect>"
                )
                x += width
        parts.append(f"<text x='{x + 4:.0f}' y='{y + 12}'>{sum(row.values()):,}</text>")
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(bars: Sequence[tuple[str, int, str]]) -> str:
    """Horizontal bars: (label, matches, status) per department."""
    if not bars:
        return "<p class='empty'>无比对结果</p>"
    top = max(count for _, count, _ in bars) or 1
    label_w, bar_w, row_h = 220, 560, 26
    height = row_h * len(bars) + 10
    parts = [
        f"<svg role='img' aria-label='各部门比对命中数' width='{label_w + bar_w + 130}' "
        f"height='{height}'>"
    ]
    for i, (label, count, status) in enumerate(bars):
        y = 5 + i * row_h
        width = max(round(bar_w * count / top), 1)
        colour = "#2f6690" if status == "ok" else "#c0392b"
        note = "" if status == "ok" else ("(未能查询)" if status == "failed" else "(被拒绝)")
        parts.append(
            f"<text x='{label_w - 8}' y='{y + 17}' text-anchor='end'>{escape_fast(label)}</text>"
            f"<rect x='{label_w}' y='{y + 3}' width='{width}' height='{row_h - 8}' "
            f"fill='{colour}'/><text x='{label_w + width + 6}' y='{y + 17}'>{count:,}{note}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def history_chart(history: Sequence[RoundDecisionCounts]) -> str:
    """Vertical stacked bars: one per round (as of date), a segment per decision."""
    if not history:
        return "<p class='empty'>尚无历次比对记录(状态数据库中没有已完成的轮次)</p>"
    col_w, gap, plot_h, left = 56, 18, 220, 60
    top = max(sum(entry.counts.values()) for entry in history) or 1
    width = left + len(history) * (col_w + gap) + 20
    parts = [
        f"<svg role='img' aria-label='历次比对决定' width='{max(width, 620)}' "
        f"height='{plot_h + 70}'>{_legend(left, 2)}"
    ]
    base = plot_h + 30
    for k, entry in enumerate(history):
        x = left + k * (col_w + gap)
        y = float(base)
        for d in _DECISIONS:
            n = entry.counts.get(d.value, 0)
            if n:
                h = plot_h * n / top
                y -= h
                parts.append(
                    f"<rect x='{x}' y='{y:.1f}' width='{col_w}' height='{h:.1f}' "
                    f"fill='{_COLOUR[d]}'><title>{decision_name(d, 'zh')} {n:,}</title></rect>"
                )
        total = sum(entry.counts.values())
        parts.append(
            f"<text x='{x + col_w / 2}' y='{y - 4:.1f}' text-anchor='middle'>{total:,}</text>"
            f"<text x='{x + col_w / 2}' y='{base + 16}' text-anchor='middle'>"
            f"{escape_fast(entry.as_of)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
