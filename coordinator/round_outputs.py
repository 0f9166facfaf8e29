"""The last two steps of a round: decide every child, and write the output folder.

Shared by the online round (:mod:`coordinator.round`) and by a round completed
from sealed responses (:mod:`coordinator.offline_import`).

The output folder is opened (:class:`coordinator.output.OutputFolder`) as soon
as the evidence is known, so that evidence.csv is written by a forked child
on the other core while this process decides; report.html and decisions.xlsx
follow in their own children once the reasons are rendered, while this
process writes decisions.json. Nothing is renamed into place unless every
writer succeeded.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.decisions import RoundDecisions, decide_all
from coordinator.disputes import OpenDispute, disputes_json
from coordinator.names import SourceNames
from coordinator.output import OutputFolder, people_outputs, write_output
from coordinator.progress import Progress
from coordinator.reasons import Lang
from coordinator.records import EvidenceRow, Roster, gc_paused
from coordinator.report import Provenance, SourceRun, render_report
from coordinator.state import RoundState
from coordinator.sub_round import SubRound, SubRoundStatus


@dataclass(frozen=True)
class Decided:
    """Step 3 of a round: the decisions and what the outputs need beside them."""

    decisions: RoundDecisions
    evidence: list[EvidenceRow]
    failed: list[str]
    names: SourceNames
    disputes: tuple[OpenDispute, ...] = ()  # open 疑义校核 disputes (coordinator.disputes)


def round_evidence(results: Sequence[SubRound]) -> list[EvidenceRow]:
    """Every sub-round's evidence rows, in sub-round order (evidence.csv's order)."""
    return [row for s in results for row in s.rows]


def decide_round(
    roster: Roster, results: Sequence[SubRound], *, as_of: _dt.date, lang: Lang
) -> Decided:
    """(3) Decide: every child from the evidence of every sub-round, failures named."""
    failed = [s.source for s in results if s.status is not SubRoundStatus.OK]
    services = [s.source for s in results if s.service_report == "gaps"]
    needs = [s.source for s in results if s.service_report == "needs"]
    evidence = round_evidence(results)
    names = SourceNames()
    for s in results:
        names.add_node(s.node, s.node_display_name)
        names.add_set(s.source, s.display_name)
    decisions = decide_all(
        roster,
        evidence,
        as_of=as_of,
        failed_sources=failed,
        service_sources=services,
        service_need_sources=needs,
        lang=lang,
        source_names=names.labels(s.source for s in results),
    )
    return Decided(decisions, evidence, failed, names)


@gc_paused()  # reasons, decisions.json and the report: millions of objects, no cycles
def write_round(
    folder: OutputFolder,
    decided: Decided,
    results: Sequence[SubRound],
    *,
    rid: str,
    as_of: _dt.date,
    seconds: float,
    state: RoundState,
    display: Progress,
) -> None:
    """(4) Write atomically: evidence, decisions.json, the report and the people's files,
    into ``folder`` (its evidence.csv may be under way already), then commit it.

    Raises:
        OSError: the output cannot be written (nothing is left half-written).
    """
    decisions = decided.decisions
    provenance = Provenance(
        round_id=rid,
        as_of=as_of,
        generated_at=_dt.datetime.now(_dt.UTC),
        sources=tuple(
            SourceRun(
                node=s.node,
                match_set=s.match_set,
                protocol=s.protocol,
                status=s.status.value,
                matches=s.matches,
                seconds=round(s.seconds, 3),
                detail=s.detail,
            )
            for s in results
        ),
        failed_sources=tuple(decided.failed),
        timings=(("round", seconds),),
        names=decided.names,
        history=tuple(state.decision_history(current=rid)),
        open_disputes=decided.disputes,
    )
    display.phase("report")
    decisions.render_texts()  # once, before the writers fork off
    extra = disputes_json(decided.disputes, as_of)
    write_output(
        folder.out,
        round_id=rid,
        evidence=decided.evidence,
        document=lambda: decisions.to_json(round_id=rid, encoded=True) | extra,
        report=lambda: render_report(decisions, provenance=provenance),
        extra=lambda staging: people_outputs(staging, decisions, provenance),
        waiting=lambda: display.phase("spreadsheet"),
        folder=folder,
    )
