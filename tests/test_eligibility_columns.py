"""The round engine (coordinator.judgements) decides exactly as the per-child reference.

``coordinator.eligibility.decide`` is the reference, one child at a time;
``decide_all`` uses ``coordinator.judgements.decide_children``, which judges each
distinct record and parent once and gives children alike one decision. Both
must give equal :class:`ChildDecision` values and the same reason texts.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.decisions import decide_all, decisions_text, index_evidence
from coordinator.eligibility import ChildDecision, decide
from coordinator.judgements import decide_children
from coordinator.reasons import Renderer, render
from coordinator.records import Circumstance, EvidenceRow, RosterRow, RowProblem
from tests.rules_helpers import child, ev, make_id

D = date(2026, 11, 29)
CODES = [c.value for c in Circumstance if c is not Circumstance.SERVICE]
SOURCES = ["police/deaths", "justice/custody", "court/declarations", "dpf/cert"]
#: dates around the evaluation date, and far from it
near = st.integers(-400, 400).map(lambda days: D + timedelta(days=days))
dates = st.one_of(st.none(), near, st.dates(min_value=date(2010, 1, 1), max_value=date(2032, 1, 1)))
PROBLEMS = [
    "wrong length for an identity number",
    "the check character does not match",
    "empty identity number",
]


@st.composite
def children(draw: st.DrawFn, line: int, parents: list[str]) -> RosterRow:
    status = draw(st.sampled_from(["supported", "candidate"]))
    # born around 18 years before D: the age rule's edges, 29 February included
    born = draw(
        st.one_of(
            st.integers(-3, 3).map(lambda d: date(2008, 11, 29) + timedelta(days=d)),
            st.sampled_from([date(2008, 2, 29), date(2012, 2, 29)]),
            st.dates(min_value=date(2006, 1, 1), max_value=date(2026, 1, 1)),
        )
    )
    parent = st.one_of(st.none(), st.sampled_from(parents))
    row = child(
        born=born,
        status=status,
        # the roster requires a category for a supported child
        category=draw(st.sampled_from(["orphan", "de_facto"])) if status == "supported" else None,
        father=draw(parent),
        mother=draw(parent),
        foundling=draw(st.booleans()),
        last_check=draw(st.one_of(st.none(), near)),
        line=line,
    )
    problems = draw(st.lists(st.sampled_from(["child_id", "father_id", "mother_id"]), max_size=2))
    if not problems:
        return row
    found = tuple(
        RowProblem("roster.csv", line, col, draw(st.sampled_from(PROBLEMS)))
        for col in set(problems)
    )
    # an invalid ID is read as no ID (None), with its problem listed
    columns = {p.column for p in found}
    return row._replace(
        problems=found,
        child_id=None if "child_id" in columns else row.child_id,
        father_id=None if "father_id" in columns else row.father_id,
        mother_id=None if "mother_id" in columns else row.mother_id,
    )


@st.composite
def rounds(draw: st.DrawFn) -> tuple[list[RosterRow], list[EvidenceRow]]:
    # few parents, shared between children: their judgements are shared too
    parents = [
        make_id(date(1980 + i, 1, 1), sex="MF"[i % 2]) for i in range(draw(st.integers(1, 6)))
    ]
    rows = [draw(children(i + 2, parents)) for i in range(draw(st.integers(1, 12)))]
    # some children twice (the same ID on two lines)
    rows += [
        r._replace(line=100 + i)
        for i, r in enumerate(draw(st.lists(st.sampled_from(rows), max_size=3)))
    ]
    people = parents + [r.child_id for r in rows if r.child_id]
    record = st.builds(
        lambda person, code, start, end, source, grade, kind: ev(
            person, code, start, end, source=source, grade=grade, kind=kind
        ),
        st.sampled_from(people),
        st.sampled_from(CODES),
        dates,
        dates,
        st.sampled_from(SOURCES),
        st.one_of(st.none(), st.integers(1, 4)),
        st.one_of(st.none(), st.integers(1, 7)),
    )
    evidence = draw(st.lists(record, max_size=16))
    # equal records of different people (one judgement shared between them)
    copies = (
        draw(st.lists(st.tuples(st.sampled_from(evidence), st.sampled_from(people)), max_size=4))
        if evidence
        else []
    )
    evidence += [row._replace(person_id=person) for row, person in copies]
    return rows, evidence


@settings(max_examples=400, deadline=None)
@given(rounds(), st.sampled_from([(), ("police/deaths",), ("dpf/cert", "justice/custody")]))
def test_the_round_engine_decides_as_the_reference(
    case: tuple[list[RosterRow], list[EvidenceRow]], failed: tuple[str, ...]
) -> None:
    rows, evidence = case
    index, _ = index_evidence(evidence)
    fast = decide_children(rows, index, as_of=D, failed_sources=failed)
    reference = [decide(row, index, as_of=D, failed_sources=failed) for row in rows]
    assert fast == reference
    # named tuples equal any tuple of their values: the type is checked too
    assert all(type(d) is ChildDecision for d in fast)
    names = {"police/deaths": "公安死亡"}
    for lang in ("zh", "en"):
        renderer = Renderer(lang, names)
        for got, want in zip(fast, reference, strict=True):
            assert got.child is want.child
            assert renderer.texts(got.reasons) == [render(r, lang, names) for r in want.reasons]


@settings(max_examples=100, deadline=None)
@given(rounds(), st.sampled_from(["zh", "en"]))
def test_decide_all_texts_are_the_reference_texts(
    case: tuple[list[RosterRow], list[EvidenceRow]], lang: str
) -> None:
    rows, evidence = case
    result = decide_all(rows, evidence, as_of=D, lang=lang)  # type: ignore[arg-type]
    index, _ = index_evidence(evidence)
    for item, row in zip(result.decisions, rows, strict=True):
        want = decide(row, index, as_of=D)
        assert item == want
        assert result.reason_texts(item) == want.reason_texts(lang)  # type: ignore[arg-type]


def test_a_shared_decision_copies_every_field() -> None:
    """``judgements._same_as`` copies every field of the decision but the child, as they are."""
    from coordinator.eligibility import ChildDecision
    from coordinator.judgements import _same_as

    row = child(born=date(2015, 1, 1), status="supported", category="orphan")
    other = row._replace(line=3)
    decided = decide(row, {}, as_of=D)
    copied = _same_as(decided, other)
    assert copied.child is other
    assert type(copied) is ChildDecision
    for name in ChildDecision._fields:
        if name != "child":
            assert getattr(copied, name) is getattr(decided, name)
    assert len(ChildDecision._fields) == 9


@settings(max_examples=150, deadline=None)
@given(
    rounds(),
    st.lists(st.text(max_size=6), min_size=15, max_size=15),
    st.sampled_from(["zh", "en"]),
)
def test_encoded_decisions_json_is_the_text_of_the_document(
    case: tuple[list[RosterRow], list[EvidenceRow]], names: list[str], lang: str
) -> None:
    """The round's fast decisions.json (entries encoded directly, each distinct list of
    reasons once) is character for character what the document of dicts encodes to,
    for names with quotes, backslashes, control and non-BMP characters, or empty."""
    rows, evidence = case
    rows = [r._replace(child_name=name) for r, name in zip(rows, names * 2, strict=False)]
    result = decide_all(rows, evidence, as_of=D, lang=lang)  # type: ignore[arg-type]
    extra = {"open_disputes": [{"reason": 'a "b" \\ \n'}]}
    text = decisions_text(result.to_json("r-1") | extra)
    assert decisions_text(result.to_json("r-1", encoded=True) | extra) == text
    assert json.loads(text)["decisions"] == result.to_json("r-1")["decisions"]


def _family(
    family: int,
    n: int,
    *,
    father: tuple[str, date | None, date | None],
    mother: tuple[str, date, None],
) -> tuple[str, str, list[EvidenceRow]]:
    """Parents whose records are ``father`` / ``mother`` moved ``n`` days earlier: the
    same group and basis for every small ``n``, with other dates (so other reasons)."""
    born = date(1980, 1, 1) + timedelta(days=family)
    f, m = make_id(born), make_id(born, sex="F")
    shift = timedelta(days=-n)
    code, start, end = father
    rows = [
        ev(f, code, start + shift if start else None, end + shift if end else None),
        ev(m, mother[0], mother[1] + shift),
    ]
    return f, m, rows


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([(), ("police/deaths",)]), st.integers(1, 4))
def test_children_of_one_shape_get_their_own_parents_reasons(
    failed: tuple[str, ...], many: int
) -> None:
    """Steps 4 and 5 run once per shape of child (judgements._Shape); the others of the
    shape get that decision with their own parents' reasons, and a step 5 EXIT is
    decided child by child. Every shape that shares, each with children whose parents
    have other dates: ENROL, CONTINUE, RECLASSIFY, the orphan-to-de-facto REVIEW when a
    source failed, NOT_ELIGIBLE and EXIT (no category), REVIEW (no category, a source
    failed)."""
    last = D - timedelta(days=90)
    jailed: tuple[str, date, date | None] = ("IMPRISONED", date(2025, 3, 1), date(2029, 3, 1))
    dead: tuple[str, date, None] = ("DEAD", date(2019, 7, 4), None)
    released = ("IMPRISONED", date(2024, 1, 10), date(2026, 10, 10))
    ill: tuple[str, date, None] = ("SEVERE_ILLNESS", date(2020, 1, 1), None)
    shapes: list[tuple[str, str | None, tuple[str, date, date | None], tuple[str, date, None]]]
    shapes = [
        ("candidate", None, jailed, dead),  # ENROL de facto
        ("supported", "de_facto", jailed, dead),  # CONTINUE
        ("supported", "de_facto", ("DEAD", date(2026, 8, 15), None), dead),  # RECLASSIFY
        ("supported", "orphan", jailed, dead),  # REVIEW when a source failed, else RECLASSIFY
        ("candidate", None, released, ill),  # NOT_ELIGIBLE; REVIEW when a source failed
        ("supported", "de_facto", released, ill),  # EXIT since the release; or REVIEW
    ]
    rows: list[RosterRow] = []
    evidence: list[EvidenceRow] = []
    for s, (status, category, father, mother) in enumerate(shapes):
        for n in range(many):
            f, m, records = _family(s * 10 + n, n, father=father, mother=mother)
            evidence += records
            rows.append(
                child(
                    born=date(2015, 1, 1),
                    status=status,
                    category=category,
                    father=f,
                    mother=m,
                    # two last checks: a shape holds one (the next check depends on it)
                    last_check=last if n % 2 else last - timedelta(days=110),
                    line=len(rows) + 2,
                )
            )
    index, _ = index_evidence(evidence)
    fast = decide_children(rows, index, as_of=D, failed_sources=failed)
    reference = [decide(row, index, as_of=D, failed_sources=failed) for row in rows]
    assert fast == reference
    # named tuples equal any tuple of their values: the type is checked too
    assert all(type(d) is ChildDecision for d in fast)
    decisions = {d.decision.value for d in fast}
    assert {"ENROL", "CONTINUE"} <= decisions
    assert ("REVIEW" in decisions) if failed else ({"RECLASSIFY", "EXIT"} <= decisions)
