"""coordinator.xlsx_rows: a row given as its own values and a shared part is written as
the same XML as the whole row, whatever the values hold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.xlsx_rows import MAX_TEXT, _letters, _Rows

COLUMNS = 6
SHARED = range(2, 5)
HEADS = ['" t="inlineStr"><is>'] * COLUMNS
#: texts that take every path: braces (str.format), XML characters, _xHHHH_, control and
#: white space, over-long cells, empty cells
text = st.one_of(
    st.sampled_from(["", "{0}", "}{", "{{x}}", "a&b", "<t>", "_x0041_", " lead", "tail ", "\x07"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
    st.just("字" * (MAX_TEXT // 2 + 1)),
)


def _writer() -> _Rows:
    return _Rows([_letters(c) for c in range(COLUMNS)], HEADS, SHARED)


def _own_and_shared(values: list[str]) -> tuple[list[str], tuple[str, ...]]:
    own = [v for c, v in enumerate(values) if c not in SHARED]
    return own, tuple(values[SHARED.start : SHARED.stop])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(text, min_size=COLUMNS, max_size=COLUMNS), min_size=1, max_size=6))
def test_split_rows_are_the_rows(rows: list[list[str]]) -> None:
    whole, split = _writer(), _writer()
    parts = [_own_and_shared(values) for values in rows]
    # rows with equal shared values share one tuple object, as the spreadsheet gives them
    same: dict[tuple[str, ...], tuple[str, ...]] = {}
    batch = [(own, same.setdefault(part, part)) for own, part in parts]
    expected = [whole.xml(n, values) for n, values in enumerate(rows, start=2)]
    assert split.split_xml(2, batch) == expected
    # again: the templates kept from the first batch give the same rows
    assert split.split_xml(2, batch) == expected


def test_each_shared_part_has_its_own_template() -> None:
    """Templates are kept per shared part, not per pattern of empty cells."""
    writer = _writer()
    first = writer.split_xml(2, [(["a", "b", "c"], ("x", "y", "z"))])
    second = writer.split_xml(2, [(["a", "b", "c"], ("p", "q", "r"))])
    assert "<t>x</t>" in first[0] and "<t>p</t>" in second[0]
    assert "<t>x</t>" not in second[0]


def test_a_shared_part_of_the_wrong_length_is_refused() -> None:
    writer = _writer()
    with pytest.raises(ValueError, match="do not fit"):
        writer.split_xml(2, [(["a", "b", "c"], ("x", "y"))])
    with pytest.raises(ValueError, match="one run"):
        _Rows([_letters(c) for c in range(COLUMNS)], HEADS, range(2, 9))
