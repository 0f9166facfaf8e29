"""psi.identifiers: GB 11643 normalization, names, composite keys, encoding."""

from __future__ import annotations

import csv
import datetime
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi.errors import InvalidIdentifier
from psi.identifiers import (
    IdColumn,
    check_character,
    composite_key,
    encode_identities,
    looks_cut_to_15_digits,
    normalize_id,
    normalize_id_column,
    normalize_name,
)
from tests.utils import load_vectors

WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
CHECK = "10X98765432"


def independent_check(first17: str) -> str:
    """The spec's rule, written separately from psi."""
    return CHECK[sum(int(d) * w for d, w in zip(first17, WEIGHTS, strict=True)) % 11]


def is_valid_18(number: str) -> bool:
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return born.year >= 1800 and independent_check(number[:17]) == number[17]


@st.composite
def valid_ids(draw: st.DrawFn) -> str:
    address = draw(st.from_regex(r"[1-9][0-9]{5}", fullmatch=True))
    born = draw(
        st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2024, 12, 31))
    )
    seq = draw(st.integers(0, 999))
    body = f"{address}{born:%Y%m%d}{seq:03d}"
    return body + independent_check(body)


@st.composite
def messy_ids(draw: st.DrawFn) -> str:
    """Valid numbers dressed up the way spreadsheets and operators do."""
    number = draw(valid_ids())
    if number[6:8] == "19" and draw(st.booleans()):
        number = number[:6] + number[8:17]  # the 15-digit form
    out = []
    for c in number:
        if draw(st.booleans()):
            c = chr(ord(c) + 0xFEE0) if c != "X" else "Ｘ"  # full width
        if c == "X" and draw(st.booleans()):
            c = "x"
        out.append(c)
        out.append(draw(st.sampled_from(["", "", " ", "-", "\u200b", "\ufeff", "\u00a0"])))
    return "".join(out)


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("row", load_vectors("gb11643/examples.csv", parse_csv))
def test_gb11643_examples(row: dict[str, str]) -> None:
    assert is_valid_18(row["canonical"])  # the vector itself is right
    assert normalize_id(row["raw"]) == row["canonical"]


def test_standard_example_check_character() -> None:
    assert check_character("11010519491231002") == "X"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("  \u200b ", "empty"),
        ("1.50802E+17", "scientific_notation"),
        ("1.5e17", "scientific_notation"),
        ("1,50802E+17", "scientific_notation"),
        ("11010519491231002", "length"),
        ("1101051949123100200", "length"),
        ("11010519491231002A", "characters"),
        ("1101051949123100X2", "characters"),
        ("11010549123100X", "characters"),
        ("110105194912310021", "check"),
        ("110105194913310020", "birth_date"),
        ("110105194902300025", "birth_date"),
        ("110105079912310025", "birth_date"),
        ("110105491331002", "birth_date"),
    ],
)
def test_rejections(raw: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        normalize_id(raw)
    assert info.value.reason == reason
    digits = "".join(c for c in raw if c.isdigit())
    if len(digits) >= 6:
        assert digits not in str(info.value)  # the number is never echoed


def test_messages_are_specific() -> None:
    with pytest.raises(InvalidIdentifier, match="17 characters, expected 18 or 15"):
        normalize_id("11010519491231002")
    with pytest.raises(InvalidIdentifier, match=r"check character does not match"):
        normalize_id("110105194912310021")
    with pytest.raises(InvalidIdentifier, match="scientific notation"):
        normalize_id("1.50802E+17")


def test_future_birth_date_only_with_today() -> None:
    body = "11010520300101002"
    number = body + independent_check(body)
    assert normalize_id(number) == number
    with pytest.raises(InvalidIdentifier) as info:
        normalize_id(number, today=datetime.date(2025, 6, 30))
    assert info.value.reason == "future_birth_date"
    assert normalize_id(number, today=datetime.date(2030, 1, 1)) == number


def test_fifteen_digits_never_become_2000s() -> None:
    assert normalize_id("110105050101002")[6:10] == "1905"


def test_leap_day() -> None:
    ok = "11010520000229002"
    assert normalize_id(ok + independent_check(ok)).startswith(ok)
    bad = "11010519000229002"
    with pytest.raises(InvalidIdentifier) as info:
        normalize_id(bad + independent_check(bad))
    assert info.value.reason == "birth_date"


def test_type_error() -> None:
    with pytest.raises(TypeError):
        normalize_id(110105194912310021)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(messy_ids())
def test_normalize_id_idempotent_and_valid(raw: str) -> None:
    canonical = normalize_id(raw)
    assert is_valid_18(canonical)
    assert normalize_id(canonical) == canonical


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="0123456789Xx -", min_size=0, max_size=20))
def test_normalize_id_agrees_with_check_rule(raw: str) -> None:
    compact = raw.replace(" ", "").replace("-", "").upper()
    try:
        out = normalize_id(raw)
    except InvalidIdentifier:
        if len(compact) == 18:
            assert not is_valid_18(compact)
        return
    assert is_valid_18(out)
    if len(compact) == 18:
        assert out == compact


column_values = st.lists(
    st.one_of(
        valid_ids(),
        messy_ids(),
        st.text(max_size=20),
        st.text(alphabet="0123456789X", min_size=17, max_size=19),
        valid_ids().map(lambda s: s[:17] + ("0" if s[17] != "0" else "1")),
        valid_ids().map(lambda s: s + "\x00"),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(column_values, st.sampled_from([None, datetime.date(2000, 1, 1)]))
def test_column_equals_scalar(values: list[str], today: datetime.date | None) -> None:
    col = normalize_id_column(values, today=today)
    assert isinstance(col, IdColumn)
    assert len(col) == len(values)
    for i, raw in enumerate(values):
        try:
            expected: str | None = normalize_id(raw, today=today)
            reason = None
        except InvalidIdentifier as exc:
            expected, reason = None, exc.reason
        assert bool(col.valid[i]) == (expected is not None)
        assert col.ids[i] == (expected or "")
        assert col.reasons[i] == reason


def test_column_numpy_input_and_invalid_rows() -> None:
    values = np.array(["11010519491231002X", "bad", "110105491231002"])
    col = normalize_id_column(values)
    assert col.ids.tolist() == ["11010519491231002X", "", "11010519491231002X"]
    assert col.invalid_rows.tolist() == [1]
    assert col.reasons == [None, "characters", None]


def test_column_empty() -> None:
    col = normalize_id_column([])
    assert len(col) == 0 and col.ids.shape == (0,)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20))
def test_normalize_name_idempotent(raw: str) -> None:
    once = normalize_name(raw)
    assert normalize_name(once) == once


@pytest.mark.parametrize("sep", ["•", "・", "･", "．", ".", "‧", "∙", "⋅", "\u0387", "·"])
def test_name_separators_fold(sep: str) -> None:
    assert normalize_name(f" 阿依古丽 {sep} 买买提 ") == "阿依古丽\u00b7买买提"


def test_composite_key() -> None:
    key = composite_key("  玉素甫 • 艾山 ", datetime.date(2015, 3, 9), "M")
    assert key == "N:玉素甫·艾山|2015-03-09|M"
    with pytest.raises(ValueError):
        composite_key("张三", datetime.date(2015, 3, 9), "X")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        composite_key("  ", datetime.date(2015, 3, 9), "F")


def test_encode_layout() -> None:
    enc = encode_identities(["11010519491231002X"])
    assert enc.shape == (1, 16) and enc.dtype == np.uint8
    assert enc[0, 0] == 0x01
    assert int.from_bytes(enc[0, 1:9].tobytes(), "big") == 11010519491231002
    assert not enc[0, 9:].any()
    comp = encode_identities([composite_key("张三", datetime.date(2020, 1, 2), "F")])
    assert comp[0, 0] == 0x02


@settings(max_examples=50, deadline=None)
@given(st.lists(valid_ids(), max_size=40))
def test_encode_injective(ids: list[str]) -> None:
    enc = encode_identities(ids)
    assert len({row.tobytes() for row in enc}) == len(set(ids))
    assert np.array_equal(enc, encode_identities(np.array(ids, dtype="<U18")))


def test_encode_rejects_non_canonical() -> None:
    with pytest.raises(InvalidIdentifier) as info:
        encode_identities(["11010519491231002X", "110105194912310021"])
    assert info.value.reason == "check" and "row 1" in str(info.value)
    with pytest.raises(InvalidIdentifier) as info:
        encode_identities(["110105491231002"])
    assert info.value.reason == "characters"
    with pytest.raises(InvalidIdentifier):
        encode_identities(["11010519491231002X0"])  # 19 characters


def test_identity_number_is_the_one_generator() -> None:
    import datetime as dt

    from psi.identifiers import identity_number

    # GB 11643-1999's example, rebuilt from its parts: the check character is computed
    assert identity_number("110105", dt.date(1949, 12, 31), 2) == "11010519491231002X"
    assert normalize_id(identity_number("150402", dt.date(2015, 2, 28), 1234)) is not None
    with pytest.raises(ValueError, match="6 ASCII digits"):
        identity_number("15040", dt.date(2015, 2, 28), 1)


@pytest.mark.parametrize(
    ("raw", "cut"),
    [
        ("150102200001011000", True),
        (" 150102200001011000 ", True),  # blanks around it, as a cell holds them
        ("150102200001011001", False),
        ("15010220000101100X", False),
        ("15010220000101000", False),  # 17 digits
        ("１５０１０２２０００１０１１000", False),  # full-width digits: typed, not cut
        ("1.50102200001011E+17", False),  # scientific notation has its own reason
    ],
)
def test_looks_cut_to_15_digits(raw: str, cut: bool) -> None:
    assert looks_cut_to_15_digits(raw) is cut
