"""The round report: self-contained HTML, escaped, rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from coordinator.decisions import RoundDecisions, decide_all
from coordinator.report import Provenance, SourceRun, region_name, render_report
from tests.rules_helpers import child, ev

D = date(2026, 11, 29)


def _round() -> tuple[RoundDecisions, Provenance]:
    enrol = child(born=date(2015, 1, 1))
    leaving = child(
        born=date(2012, 1, 1), status="supported", category="de_facto", last_check=date(2025, 1, 1)
    )
    moved = child(born=date(2010, 1, 1), status="supported", category="de_facto")
    review = child(born=date(2011, 1, 1), status="supported", category="orphan")
    evil = child(born=date(2013, 1, 1))
    evil = evil._replace(child_name="<script>alert(1)</script>", region_code="150102")
    quoted = child(born=date(2014, 1, 1))
    quoted = quoted._replace(child_name='O\'Brien & "Co"')
    rows = [enrol, leaving, moved, review, evil, quoted]
    evidence = [
        ev(
            enrol.father_id or "",
            "IMPRISONED",
            date(2025, 3, 1),
            date(2029, 3, 1),
            source="justice/custody",
        ),
        ev(enrol.mother_id or "", "DEAD", date(2019, 7, 4), source="police/deaths"),
        ev(
            leaving.father_id or "",
            "IMPRISONED",
            date(2024, 1, 10),
            date(2026, 10, 10),
            source="justice/custody",
        ),
        ev(
            leaving.mother_id or "",
            "SEVERE_DISABILITY",
            date(2018, 5, 2),
            grade=2,
            kind=4,
            source="dpf/cert",
        ),
        ev(moved.father_id or "", "DEAD", date(2026, 8, 15), source="police/deaths"),
        ev(moved.mother_id or "", "DEAD", date(2021, 2, 2), source="police/deaths"),
        ev(moved.child_id or "", "SERVICE", source="medical_insurance/enrolled"),
        ev(review.father_id or "", "DEAD", date(2016, 3, 3), source="police/deaths"),
        ev(review.mother_id or "", "MISSING", date(2019, 5, 5), source="court/declarations"),
        ev(
            review.mother_id or "",
            "DRUG_REHAB",
            date(2026, 9, 1),
            date(2026, 12, 1),
            source="police/rehab",
        ),
    ]
    # the report lists only children someone must act on: both named children enrol
    for named in (evil, quoted):
        for parent in (named.father_id, named.mother_id):
            evidence.append(ev(parent or "", "DEAD", date(2020, 1, 1), source="police/deaths"))
    evidence.append(ev(review.child_id or "", "SERVICE", source="dpf/rehab_needs"))
    evidence.append(ev(enrol.child_id or "", "SERVICE", source="dpf/rehab_needs"))  # not covered
    decisions = decide_all(
        rows,
        evidence,
        as_of=D,
        service_sources=["medical_insurance/enrolled"],
        service_need_sources=["dpf/rehab_needs"],
    )
    provenance = Provenance(
        round_id="round-2026-11-29",
        as_of=D,
        generated_at=datetime(2026, 11, 29, 9, 30, tzinfo=UTC),
        sources=[
            SourceRun("justice", "custody", "ecdh", "ok", 1234, 12.5, "IMPRISONED"),
            SourceRun("police", "deaths", "keyed-hash", "ok", 5678, 3.25),
            SourceRun("court", "declarations", "ecdh", "failed", 0, 30.0, "deadline <exceeded>"),
            SourceRun("medical_insurance", "enrolled", "ecdh", "ok", 1, 1.0, "SERVICE"),
        ],
        failed_sources=["court/declarations"],
    )
    return decisions, provenance


def test_region_names() -> None:
    # full county names (issue 17: the county column showed the city plus a code, and a
    # retired code a bare number)
    assert region_name("150402") == "赤峰市红山区"
    assert region_name("152921") == "阿拉善盟阿拉善左旗"
    assert region_name("152301") == "哲里木盟通辽市(旧代码,今通辽市科尔沁区)"  # retired
    assert region_name("150499") == "赤峰市 150499"  # not in the table: league and code
    assert region_name("152499") == "昭乌达盟 152499(旧代码,今属赤峰市)"
    assert region_name("110105") == "110105"
    assert region_name(None) == "旗县未填"


def test_report_content_is_complete_and_escaped() -> None:
    decisions, provenance = _round()
    page = render_report(decisions, provenance=provenance)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "O&#x27;Brien &amp; &quot;Co&quot;" in page and "O'Brien" not in page
    assert "deadline &lt;exceeded&gt;" in page
    for needle in (
        "新纳入",
        "退出保障",
        "变更类别",
        "人工复核",
        "定期核查逾期",
        "服务覆盖缺口",
        "round-2026-11-29",
        "court/declarations",
        "自2026年11月起停发",
        "呼和浩特市新城区",
        "<svg",
        "@media print",
        "数据矛盾",
        "服务需求",
        "dpf/rehab_needs (1)",
    ):
        assert needle in page, needle
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page


def _section(page: str, title: str) -> str:
    start = page.index(f"<h2>{title}")
    end = page.find("<h2>", start + 1)
    return page[start:end]


def test_report_service_needs_table() -> None:
    decisions, provenance = _round()
    needs = _section(render_report(decisions, provenance=provenance), "服务需求")
    [listed] = decisions.service_needs["dpf/rehab_needs"]
    assert listed in needs and needs.count("<tr><td class='n'>") == 1  # the enrolling child is not
    assert "人工复核" in needs  # its decision
    failed = decide_all(
        [d.child for d in decisions.decisions],
        [],
        as_of=D,
        failed_sources=["dpf/rehab_needs"],
        service_need_sources=["dpf/rehab_needs"],
    )
    needs = _section(render_report(failed, provenance=provenance), "服务需求")
    assert "dpf/rehab_needs" in needs and "the set failed: no needs can be listed" in needs
    none = decide_all([d.child for d in decisions.decisions], [], as_of=D)
    needs = _section(render_report(none, provenance=provenance), "服务需求")
    assert "no service-needs sets this round" in needs


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (make chromium)")
    decisions, provenance = _round()
    page = tmp_path / "report.html"
    page.write_text(render_report(decisions, provenance=provenance), encoding="utf-8")
    png = tmp_path / "report.png"
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    shot = subprocess.run(
        [*base, f"--screenshot={png}", "--window-size=1200,2000", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert png.exists(), shot.stderr[-2000:]
    assert png.stat().st_size > 20_000  # a blank page compresses to a few kB
    console = [line for line in shot.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    dom = subprocess.run(
        [*base, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "孤儿和事实无人抚养儿童数据比对报告" in dom.stdout
    assert dom.stdout.count("<tr>") >= 10
