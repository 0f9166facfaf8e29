"""tests/configs.py: the TOML the tests write reads back as the dict they meant."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests import configs
from tests.configs import drop, put, rename

DOC: configs.Table = {
    "node": {
        "name": "justice",
        "path": Path("pki/ca.crt"),
        "ratio": 0.25,
        "flag": True,
        "classes": [10, 100],
        "display_name": '司法局 "quoted" \\ \u0007',
        "dotted.key": 1,
    },
    "match_sets": [
        {
            "name": "custody",
            "allow": [{"requester": "civil-affairs", "purposes": ["eligibility-review"]}],
            "budget": {"rounds": 3, "period": "1h"},
            "source": {"database": "postgresql", "table": "t"},
        },
        {"name": "deaths", "payload": []},
    ],
}


def test_dumps_reads_back_as_the_dict() -> None:
    text = configs.dumps(DOC)
    assert "[node]" in text and text.count("[[match_sets]]") == 2
    assert 'allow = [{ requester = "civil-affairs"' in text
    back = tomllib.loads(text)
    assert back["node"]["path"] == "pki/ca.crt"
    assert back["node"]["display_name"] == DOC["node"]["display_name"]
    assert back["match_sets"][0]["budget"] == {"rounds": 3, "period": "1h"}


def test_dumps_refuses_what_toml_cannot_say() -> None:
    with pytest.raises(TypeError, match="no TOML form for NoneType"):
        configs.dumps({"node": {"workers": None}})


def test_edits_change_a_copy() -> None:
    doc = configs.apply(
        DOC,
        put("node.listen", "127.0.0.1:1"),
        put("match_sets[1].payload", ["start_date"]),
        drop("match_sets[0].budget"),
        put("match_sets[0].allow[0].purposes", ["x"]),
    )
    assert doc["node"]["listen"] == "127.0.0.1:1"
    assert doc["match_sets"][1]["payload"] == ["start_date"]
    assert "budget" not in doc["match_sets"][0]
    assert doc["match_sets"][0]["allow"][0]["purposes"] == ["x"]
    assert "listen" not in DOC["node"] and "budget" in DOC["match_sets"][0]
    assert DOC["match_sets"][0]["allow"][0]["purposes"] == ["eligibility-review"]


def test_rename_keeps_the_position() -> None:
    doc = configs.apply(DOC, rename("node.ratio", "ration"))
    assert list(doc["node"]) == [
        "name",
        "path",
        "ration",
        "flag",
        "classes",
        "display_name",
        "dotted.key",
    ]


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (put("nodes[0].name", "x"), KeyError),
        (put("match_sets[5].name", "x"), IndexError),
        (drop("node.listen"), KeyError),
        (rename("node.lisen", "listen"), KeyError),
    ],
)
def test_an_edit_of_a_missing_key_fails(edit: configs.Edit, error: type[Exception]) -> None:
    with pytest.raises(error):
        configs.apply(DOC, edit)


def test_entry_and_get(tmp_path: Path) -> None:
    path = configs.write(tmp_path / "node.toml", DOC)
    doc = configs.read(path)
    assert configs.entry(doc, "match_sets", "deaths") == "match_sets[1]"
    assert configs.get(doc, "match_sets[0].source.table") == "t"
    with pytest.raises(KeyError):
        configs.entry(doc, "match_sets", "missing")
    configs.edit_file(path, put("node.flag", False))
    assert configs.read(path)["node"]["flag"] is False
