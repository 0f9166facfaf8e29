"""node.toml: every error is one line naming the file and the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nodes.config import ECDH_SUITES, load_node_config, parse_listen
from psi.errors import ConfigError
from tests import configs
from tests.configs import Edit, Table, drop, put, rename

XMATCH = Path(sys.executable).with_name("xmatch")

GOOD: Table = {
    "node": {
        "name": "justice",
        "listen": "127.0.0.1:50061",
        "ca": "pki/ca.crt",
        "cert": "pki/justice.crt",
        "key": "pki/justice.key",
        "audit_log": "logs/justice.audit.jsonl",
    },
    "match_sets": [
        {
            "name": "custody",
            "circumstance": "IMPRISONED",
            "source": "data/custody.csv",
            "id_column": "id_number",
            "where": "term_months >= 6 AND (end_date IS NULL OR end_date > $as_of)",
            "payload": ["start_date", "end_date"],
            "protocols": ["ecdh", "keyed-hash"],
            "allow": [{"requester": "civil-affairs", "purposes": ["eligibility-review"]}],
        }
    ],
}
SET = "match_sets[0]"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for rel in ("pki/ca.crt", "pki/justice.crt", "pki/justice.key", "data/custody.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    return tmp_path


def write(folder: Path, doc: Table) -> Path:
    return configs.write(folder / "node.toml", doc)


def test_good_config_resolves_paths_and_defaults(folder: Path) -> None:
    cfg = load_node_config(write(folder, GOOD))
    assert cfg.node.cert == folder / "pki/justice.crt"
    ms = cfg.match_sets[0]
    assert ms.source == folder / "data/custody.csv"
    assert ms.min_query_size == 100 and ms.budget.rounds == 50 and ms.budget.seconds == 86400
    assert ms.encoding == "auto" and cfg.node.max_chunk_bytes == 1 << 20
    assert cfg.node.audit_key_path == folder / "pki/justice.audit.key"
    assert ms.purposes_for("civil-affairs") == ["eligibility-review"]
    assert ms.purposes_for("police") == []
    assert cfg.node.max_past_days == 31 and cfg.node.max_query_size == 20_000_000
    assert ms.suites == list(ECDH_SUITES) and ms.prfs == ["aes128-ecb-v1", "aes256-ecb-v1"]


def test_suite_allow_list_names_every_suite_psi_offers() -> None:
    """nodes/ may not import psi.hazmat, so it names the suites itself: keep them equal."""
    from psi.hazmat.hash_to_curve import SUITES

    assert sorted(ECDH_SUITES) == sorted(SUITES)


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ((rename("node.listen", "lisen"),), "unknown key 'node.lisen'"),
        (
            (put(f"{SET}.protocols", ["ecdh", "foo"]),),
            "match_sets[0].protocols: unknown protocol 'foo'",
        ),
        ((put("node.cert", "pki/x.crt"),), "node.cert: file not found: pki/x.crt"),
        ((put("node.listen", "127.0.0.1:99999"),), "node.listen: not a host:port address"),
        ((put("node.listen", "300.1.1.1:5"),), "node.listen: not a valid IPv4 address"),
        (
            (put(f"{SET}.circumstance", "JAILED"),),
            "match_sets[0].circumstance: unknown circumstance 'JAILED'",
        ),
        (
            (put(f"{SET}.payload", ["start_date", "name"]),),
            "match_sets[0].payload: unknown payload column 'name'",
        ),
        (
            (put(f"{SET}.source", "data/none.csv"),),
            "match_sets[0].source: file not found: data/none.csv",
        ),
        ((drop(f"{SET}.id_column"),), "missing key 'match_sets[0].id_column'"),
        (
            (put(f"{SET}.allow[0].purposes", ["x"]), put(f"{SET}.allow[0].budget", 3)),
            "unknown key",
        ),
        (
            (put(f"{SET}.where", GOOD["match_sets"][0]["where"] + "; DROP TABLE x"),),
            "match_sets[0].where: one SQL condition only",
        ),
        (
            (put(f"{SET}.suites", ["x25519-sha512"]),),
            "match_sets[0].suites: unknown ecdh suite 'x25519-sha512'",
        ),
        (
            (put(f"{SET}.prfs", ["aes128-ecb-v1", "aes128-ecb-v1"]),),
            "match_sets[0].prfs: a keyed-hash prf is listed twice",
        ),
        ((put(f"{SET}.prfs", []),), "match_sets[0].prfs"),
        (
            (put("node.max_query_size", 99),),
            "match_sets[0].min_query_size: 100 is above node.max_query_size (99)",
        ),
        ((put("node.max_past_days", -1),), "node.max_past_days"),
        (
            (put("node.max_concurrent_rounds", True),),
            "node.max_concurrent_rounds: a whole number is expected, not true or false",
        ),
        ((put("node.workers", "2"),), "node.workers: a whole number is expected, not a quoted"),
        (
            (put(f"{SET}.service_report", "needs"),),
            'match_sets[0].service_report: only for circumstance = "SERVICE"',
        ),
        (
            (put(f"{SET}.circumstance", "SERVICE"), put(f"{SET}.service_report", "wants")),
            "match_sets[0].service_report: Input should be 'gaps' or 'needs'",
        ),
    ],
)
def test_errors_name_file_and_key(folder: Path, edits: tuple[Edit, ...], message: str) -> None:
    doc = configs.apply(GOOD, *edits)
    assert doc != GOOD
    path = write(folder, doc)
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    line = info.value.diagnostics()
    assert line.startswith(f"{path}: ") and message in line, line
    assert "\n" not in str(info.value)


def test_budget_and_own_keys(folder: Path) -> None:
    doc = configs.apply(
        GOOD,
        put(f"{SET}.min_query_size", 5),
        put(f"{SET}.budget", {"rounds": 3, "period": "12h"}),
        put("node.max_concurrent_rounds", 2),
        put("node.size_classes", [10, 100]),
    )
    cfg = load_node_config(write(folder, doc))
    assert cfg.match_sets[0].budget.seconds == 12 * 3600
    assert cfg.node.padded_size(7) == 10 and cfg.node.padded_size(101) == 200
    bad = configs.apply(doc, put(f"{SET}.budget.period", "1 day"))
    with pytest.raises(ConfigError, match=r"match_sets\[0\]\.budget\.period"):
        load_node_config(write(folder, bad))


def test_service_report_of_service_sets(folder: Path) -> None:
    service = configs.apply(GOOD, put(f"{SET}.circumstance", "SERVICE"), drop(f"{SET}.payload"))
    cfg = load_node_config(write(folder, service))
    assert cfg.match_sets[0].service_report is None and cfg.match_sets[0].report == "gaps"
    needs = configs.apply(service, put(f"{SET}.service_report", "needs"))
    assert load_node_config(write(folder, needs)).match_sets[0].report == "needs"
    assert load_node_config(write(folder, GOOD)).match_sets[0].report is None


def test_duplicate_match_set(folder: Path) -> None:
    doc = configs.apply(GOOD, put("match_sets", GOOD["match_sets"] * 2))
    with pytest.raises(
        ConfigError, match=r"match_sets\[1\]\.name: the name of match_sets\[0\] again"
    ):
        load_node_config(write(folder, doc))


@pytest.mark.parametrize(
    "address", ["127.0.0.1:50061", "[::1]:50061", "node.justice.gov.cn:443", "0.0.0.0:1"]
)
def test_listen_ok(address: str) -> None:
    assert parse_listen(address)[1] > 0


@pytest.mark.parametrize("address", ["127.0.0.1", ":50061", "[::1:5", "a b:1", "::1:50061"])
def test_listen_bad(address: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(address)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (rename("node.listen", "lisen"), "unknown key 'node.lisen'"),
        (put("node.cert", "pki/x.crt"), "node.cert: file not found: pki/x.crt"),
        (put("node.listen", "localhost"), "node.listen: not a host:port address"),
        (put(f"{SET}.protocols", ["foo"]), "match_sets[0].protocols: unknown protocol 'foo'"),
    ],
)
def test_cli_prints_one_line(folder: Path, edit: Edit, message: str) -> None:
    path = write(folder, configs.apply(GOOD, edit))
    result = subprocess.run(
        [str(XMATCH), "node", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2  # a configuration error (docs/node.md)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"xmatch: error: {path}: ") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_missing_config_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(XMATCH), "node", "serve", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"xmatch: error: {tmp_path / 'nope.toml'}: file not found"


def test_display_names(folder: Path) -> None:
    doc = configs.apply(
        GOOD, put("node.display_name", " 司法局 "), put(f"{SET}.display_name", "服刑在押人员")
    )
    cfg = load_node_config(write(folder, doc))
    assert cfg.node.display_name == "司法局"  # trimmed
    assert cfg.match_sets[0].display_name == "服刑在押人员"
    assert load_node_config(write(folder, GOOD)).node.display_name is None
    for bad, message in (
        ("", "node.display_name: empty"),
        ("局" * 41, "node.display_name: 41 characters; at most 40"),
        ("司法局150402", "node.display_name: 6 or more digits"),
        ("司法局\u0007", "node.display_name: control characters"),
    ):
        path = write(folder, configs.apply(GOOD, put("node.display_name", bad)))
        with pytest.raises(ConfigError) as info:
            load_node_config(path)
        line = info.value.diagnostics()
        assert line.startswith(f"{path}: ") and message in line, line
