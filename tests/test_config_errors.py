"""node.toml and coordinator.toml errors as a user meets them: one line naming the file
and the key, never the value typed there; and the file read once, BOM or not.

The configurations are the ones of test_node_config.py and test_round_units.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from coordinator.config import load_coordinator_config, parse_address
from nodes.config import load_node_config
from psi.errors import ConfigError
from tests import configs
from tests.configs import Edit, Table, put
from tests.test_node_config import GOOD as NODE
from tests.test_node_config import SET, folder, write
from tests.test_round_units import GOOD as COORDINATOR

__all__ = ["folder"]  # the fixture, re-used

XMATCH = Path(sys.executable).with_name("xmatch")
#: a valid 18-character identity number (check character X)
PERSON = "11010519491231002X"
#: a DSN with its password, typed into the wrong key
DSN = "postgresql://reader:Hunter2pass@db.justice.local/justice"
DB = {"database": "postgresql", "dsn_env": "JUSTICE_DSN", "table": "custody"}


def _run(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(XMATCH), *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        cwd=cwd,
    )


def _one_line(result: subprocess.CompletedProcess[str], prefix: str, message: str) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"xmatch: error: {prefix}: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return lines[0]


# -- 1. identity-like names: a configuration error, not an internal one --------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (put("coordinator.purpose", PERSON.lower()), "key coordinator.purpose: must not hold 15"),
        (put("coordinator.purpose", PERSON), "key coordinator.purpose: must be 1-64 characters"),
        (put("coordinator.name", f"c{PERSON.lower()}"), "key coordinator.name: must not hold"),
        (put("nodes[0].name", f"n{PERSON.lower()}"), "key nodes[0].name: must not hold 15"),
        (put("nodes[0].match_sets", [PERSON.lower()]), "key nodes[0].match_sets: must not hold"),
    ],
)
def test_round_run_refuses_identity_like_names(tmp_path: Path, edit: Edit, message: str) -> None:
    path = configs.write(tmp_path / "coordinator.toml", configs.apply(COORDINATOR, edit))
    result = _run("round", "run", "--config", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    line = _one_line(result, str(path), message)
    assert PERSON.lower() not in line.lower()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (put(f"{SET}.name", PERSON.lower()), "match_sets[0].name: must not hold 15 or more"),
        # a round names its match set in lower case: this set could never be queried
        (put(f"{SET}.name", "Custody"), "match_sets[0].name: use lower-case letters, digits"),
        (put("node.name", f"j{PERSON.lower()}"), "node.name: must not hold 15 or more digits"),
        (put(f"{SET}.allow[0].purposes", [PERSON.lower()]), "allow[0].purposes: must not hold"),
        (put(f"{SET}.allow[0].requester", f"c{PERSON.lower()}"), "allow[0].requester: must not"),
    ],
)
def test_node_serve_refuses_identity_like_names(folder: Path, edit: Edit, message: str) -> None:
    path = write(folder, configs.apply(NODE, edit))
    result = _run("node", "serve", "--config", str(path))
    assert result.returncode == 2, result.stderr  # node serve: a configuration error is 2
    line = _one_line(result, str(path), message)
    assert PERSON.lower() not in line.lower()


# -- 2. addresses checked when the file is loaded -------------------------------------


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("::1:47101", "an IPv6 address needs brackets: [address]:port"),
        ("[::1:47101", "not a valid IPv6 address in brackets"),
        ("[fe80::zz]:47101", "not a valid IPv6 address in brackets"),
        ("127.0.0.1:0", "not a host:port address with a port in 1..65535"),
        ("127.0.0.1:65536", "not a host:port address with a port in 1..65535"),
        ("300.1.1.1:5", "not a valid IPv4 address"),
        ("a b:5", "not a valid host name"),
    ],
)
def test_bad_addresses_are_configuration_errors(tmp_path: Path, address: str, message: str) -> None:
    path = configs.write(
        tmp_path / "coordinator.toml", configs.apply(COORDINATOR, put("nodes[0].address", address))
    )
    result = _run("round", "run", "--config", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    line = _one_line(result, str(path), f"key nodes[0].address: {message}")
    assert address not in line


@pytest.mark.parametrize("address", ["[::1]:47101", "127.0.0.1:1", "node.justice.gov.cn:65535"])
def test_good_addresses(address: str) -> None:
    assert parse_address(address)[1] in (47101, 1, 65535)


def test_node_listen_without_brackets(folder: Path) -> None:
    path = write(folder, configs.apply(NODE, put("node.listen", "::1:47101")))
    result = _run("node", "serve", "--config", str(path))
    assert result.returncode == 2  # a configuration error
    _one_line(result, str(path), "node.listen: an IPv6 address needs brackets")


# -- 3. a byte order mark (Windows Notepad) -------------------------------------------


def test_byte_order_mark_is_accepted(folder: Path) -> None:
    node = write(folder, NODE)
    node.write_bytes(b"\xef\xbb\xbf" + node.read_bytes())
    assert load_node_config(node).node.name == "justice"
    coordinator = configs.write(folder / "coordinator.toml", COORDINATOR)
    coordinator.write_bytes(b"\xef\xbb\xbf" + coordinator.read_bytes())
    assert load_coordinator_config(coordinator).coordinator.name == "civil-affairs"


# -- 4. read once: /dev/stdin, a pipe, a FIFO ------------------------------------------


def test_round_run_reads_a_piped_config_once(tmp_path: Path) -> None:
    """Before: the second read of the pipe saw nothing ("missing key coordinator")."""
    text = configs.dumps(COORDINATOR)
    result = _run(
        "round", "run", "--config", "/dev/stdin", "--out", str(tmp_path / "out"),
        stdin=text, cwd=tmp_path,
    )  # fmt: skip
    # past the configuration: the next step looks for the CA, relative to the folder we are in
    assert "missing key" not in result.stderr
    assert f"{tmp_path / 'pki' / 'ca.crt'}: cannot read" in result.stderr, result.stderr


def test_fifo_config_is_read_once_and_hashed_from_those_bytes(folder: Path) -> None:
    data = configs.dumps(NODE).encode()
    fifo = folder / "node.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with fifo.open("wb") as fh:  # blocks until the loader opens the FIFO
            fh.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    cfg = load_node_config(fifo)  # a second open would block: no writer any more
    writer.join(timeout=10)
    assert cfg.node.name == "justice"
    assert cfg.sha256 == hashlib.sha256(data).hexdigest()


# -- 5. a wrong type: what the key takes, no pydantic internals ------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            put(f"{SET}.source", 5),
            "match_sets[0].source: a string (a path) or a table is expected, not a whole number",
        ),
        (put(f"{SET}.source", ["a"]), "match_sets[0].source: a string (a path) or a table"),
        (put(f"{SET}.id_column", 5), "match_sets[0].id_column: a string is expected, not a whole"),
        (put(f"{SET}.payload", "x"), "match_sets[0].payload: a list is expected, not a string"),
        (put(f"{SET}.allow", [5]), "match_sets[0].allow[0]: a table is expected, not a whole"),
        (put(f"{SET}.budget", 3), "match_sets[0].budget: a table is expected, not a whole number"),
        (put("node.listen", 47101), "node.listen: a string is expected, not a whole number"),
        (put("node.ca", True), "node.ca: a string (a path) is expected, not true or false"),
        (put("node.workers", 1.5), "node.workers: a whole number is expected, not a number with"),
    ],
)
def test_wrong_types_name_the_key_and_what_it_takes(folder: Path, edit: Edit, message: str) -> None:
    path = write(folder, configs.apply(NODE, edit))
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    line = info.value.diagnostics()
    assert line == f"{path}: {message}" or line.startswith(f"{path}: {message}"), line
    for internal in (
        "input_type",
        "Input",
        "lax-or-strict",
        "function-after",
        "pydantic",
        "<class",
    ):
        assert internal not in line, line


def test_wrong_type_in_coordinator_toml(tmp_path: Path) -> None:
    path = configs.write(
        tmp_path / "coordinator.toml", configs.apply(COORDINATOR, put("coordinator.roster", 5))
    )
    result = _run("round", "run", "--config", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    _one_line(
        result,
        str(path),
        "key coordinator.roster: a string (a path) or a table is expected, not a whole number",
    )


# -- 6. values are not echoed ---------------------------------------------------------


def _node_problem(folder: Path, doc: Table) -> str:
    path = write(folder, doc)
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    return info.value.diagnostics()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("node.name", PERSON),
        ("node.listen", DSN),
        ("node.listen", f"{PERSON}:99999"),
        (f"{SET}.name", DSN),
        (f"{SET}.circumstance", PERSON),
        (f"{SET}.protocols", ["ecdh", DSN]),
        (f"{SET}.payload", [PERSON]),
        (f"{SET}.suites", [DSN]),
        (f"{SET}.allow[0].requester", DSN),
        (f"{SET}.budget", {"period": PERSON}),
        (f"{SET}.source", {**DB, "dsn_env": DSN}),
        (f"{SET}.source", {**DB, "table": DSN}),
        (f"{SET}.source", {**DB, "change_column": PERSON}),
        ("node.passphrase_env", "Hunter2pass"),
    ],
)
def test_node_errors_do_not_echo_values(
    folder: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: object
) -> None:
    monkeypatch.delenv("Hunter2pass", raising=False)
    monkeypatch.setenv("JUSTICE_DSN", "postgresql://u:p@h/db")
    line = _node_problem(folder, configs.apply(NODE, put(key, value)))
    assert key.split("[")[0] in line, line
    for secret in (PERSON, "Hunter2pass", DSN):
        assert secret not in line, line


def test_database_id_column_is_not_echoed(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUSTICE_DSN", "postgresql://u:p@h/db")
    doc = configs.apply(NODE, put(f"{SET}.source", DB), put(f"{SET}.id_column", f"a {PERSON}"))
    line = _node_problem(folder, doc)
    assert "id_column: not a plain column name" in line and PERSON not in line, line


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("nodes[0].address", DSN),
        ("nodes[0].name", DSN),
        ("nodes[0].match_sets", [DSN]),
        ("coordinator.purpose", DSN),
        ("coordinator.passphrase_env", "Hunter2pass"),
    ],
)
def test_coordinator_errors_do_not_echo_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: object
) -> None:
    monkeypatch.delenv("Hunter2pass", raising=False)
    path = configs.write(tmp_path / "coordinator.toml", configs.apply(COORDINATOR, put(key, value)))
    with pytest.raises(ConfigError) as info:
        load_coordinator_config(path)
    line = info.value.diagnostics()
    assert key in line, line
    assert DSN not in line and "Hunter2pass" not in line, line


def test_closed_set_choices_are_echoed_when_safe(folder: Path) -> None:
    """A misspelt choice is shown (it helps), unless it could be more than a typo."""
    line = _node_problem(folder, configs.apply(NODE, put(f"{SET}.protocols", ["keyedhash"])))
    assert "match_sets[0].protocols: unknown protocol 'keyedhash'; use ecdh or keyed-hash" in line
    line = _node_problem(folder, configs.apply(NODE, put(f"{SET}.circumstance", PERSON)))
    assert "match_sets[0].circumstance: unknown circumstance (value not shown)" in line


def test_unknown_keys_are_still_named(folder: Path) -> None:
    doc = configs.apply(NODE, configs.rename("node.listen", "lisen"))
    line = _node_problem(folder, doc)
    assert "unknown key 'node.lisen' (did you mean 'listen'?)" in line
