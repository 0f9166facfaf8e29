"""Display names: cleaning what a node announces, labels, names.csv."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from coordinator.names import SourceNames, clean_display_name, read_names, write_names
from coordinator.reasons import reason, render
from coordinator.records import Circumstance, Role
from psi.errors import InputError


def test_clean_display_name() -> None:
    assert clean_display_name("  司法局 \n") == "司法局"
    assert clean_display_name("") is None
    assert clean_display_name("局" * 41) is None
    assert clean_display_name("司法局150402") is None  # could be (part of) an ID
    assert clean_display_name("司法局\x07") is None
    assert clean_display_name("12345") == "12345"


def test_labels() -> None:
    names = SourceNames()
    names.add_node("justice", "司法局")
    names.add_set("justice/custody", "服刑在押人员")
    names.add_node("police", "司法局150402150402")  # unsafe: ignored
    names.add_set("court/declarations", "宣告失踪")
    assert names.label("justice/custody") == "司法局·服刑在押人员"
    assert names.label("justice/drug_rehab") == "司法局·drug_rehab"
    assert names.label("court/declarations") == "court·宣告失踪"
    assert names.label("police/deaths") == "police/deaths"
    assert names.node("police") == "police" and names.node("justice") == "司法局"
    assert names.labels(["justice/custody", "police/deaths"]) == {
        "justice/custody": "司法局·服刑在押人员"
    }


def test_reasons_use_display_names_in_chinese_only() -> None:
    fact = reason("fact_on", code=Circumstance.DEAD, source="police/deaths", start=date(2019, 7, 4))
    failed = reason("evidence_unavailable", sources=("police/deaths", "court/x"))
    shown = {"police/deaths": "公安局·死亡注销人员"}
    assert render(fact, "zh", shown) == "死亡(公安局·死亡注销人员),2019年7月4日"
    assert render(fact, "en", shown) == "DEAD (police/deaths) on 2019-07-04"
    assert "公安局·死亡注销人员、court/x" in render(failed, "zh", shown)
    nested = reason("parent_fact", role=Role.FATHER, fact=fact)
    assert render(nested, "zh", shown) == "父亲:死亡(公安局·死亡注销人员),2019年7月4日"


def test_names_csv_round_trip(tmp_path: Path) -> None:
    names = SourceNames()
    names.add_node("justice", "司法局")
    names.add_set("justice/custody", "服刑在押人员, 在押")
    path = tmp_path / "names.csv"
    write_names(path, names)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "source,display_name"
    again = read_names(path)
    assert again.nodes == names.nodes and again.sets == names.sets
    path.write_bytes("source,display_name\njustice,司法局\n".encode("gb18030"))
    assert read_names(path).nodes == {"justice": "司法局"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node,name\n", ":1: expected the header source,display_name"),
        ("source,display_name\njustice\n", ":2: expected two cells"),
        ("source,display_name\na/b/c,x\n", ":2: column source: expected NODE or NODE/SET"),
        ("source,display_name\n\njustice,\n", ":3: column display_name: empty"),
        ("source,display_name\njustice,司法局1504021\n", ":2: column display_name"),
    ],
)
def test_bad_names_csv(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "names.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_names(path)
    assert str(path) + message in info.value.diagnostics()
    with pytest.raises(InputError, match="cannot read names file"):
        read_names(tmp_path / "missing.csv")
