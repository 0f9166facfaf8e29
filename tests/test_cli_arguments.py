"""Bad argument values and our own unusable certificate files are usage errors (exit 2).

Found by an adversarial probe of the command line: these exited 1, after the
handler had started, with messages that did not name the argument (or, for
``keys issue --name ../evil``, only because the name check happened to run
before any file was written). ``--as-of 9999-12-31`` was accepted: every node
refused it, and the rules gave EXIT to every child of 18 by then.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator import exit_codes
from keys.ca import issue
from tests import configs
from tests.configs import put
from tests.federation import SPECS, Federation, build_federation, coordinator_toml, xmatch
from xmatch.cli_text import AS_OF_DAYS_AHEAD, AS_OF_EARLIEST

POLICE = tuple(s for s in SPECS if s.name == "police")
ROUND_ID = "0123456789abcdef0123456789abcdef"


def _usage_line(
    done: subprocess.CompletedProcess[str], argument: str, command: str, reason: str
) -> None:
    assert done.returncode == exit_codes.USAGE, done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        f"xmatch: error: argument {argument}: {reason} (see `xmatch {command} --help`)\n"
    )


# ---------------------------------------------------------------------------
# 1. Numbers and names, refused when the arguments are parsed


@pytest.mark.parametrize(
    ("argv", "argument", "reason"),
    [
        (["demo", "--children", "0"], "--children", "expected a whole number of at least 1"),
        (["demo", "--children", "-3"], "--children", "expected a whole number of at least 1"),
        (["demo", "--children", "many"], "--children", "expected a whole number of at least 1"),
        (
            ["bench", "--sizes", "1000", "0"],
            "--sizes",
            "expected a whole number from 1 to 50,000,000",
        ),
        (
            ["bench", "--roster-size", "10"],
            "--roster-size",
            "expected a whole number from 100 to 20,000,000",
        ),
        (["bench", "--workers", "0"], "--workers", "expected a whole number from 1 to 256"),
        (
            ["bench", "--stream-rows", "-1"],
            "--stream-rows",
            "expected a whole number from 0 to 1,000,000,000,000",
        ),
        (
            ["bench", "--bucket-rows", "0"],
            "--bucket-rows",
            "expected a whole number from 1 to 1,000,000,000,000",
        ),
        (
            ["bench", "--baseline-limit", "nan"],
            "--baseline-limit",
            "expected a number of seconds, 0 or more",
        ),
        (
            ["bench", "--baseline-limit", "-1"],
            "--baseline-limit",
            "expected a number of seconds, 0 or more",
        ),
    ],
)
def test_bad_numbers_are_usage_errors(
    tmp_path: Path, argv: list[str], argument: str, reason: str
) -> None:
    out = tmp_path / "run"
    folder = "--workdir" if argv[0] == "demo" else "--out"
    done = xmatch(*argv, folder, str(out))
    _usage_line(done, argument, argv[0], reason)
    assert not out.exists()  # refused before anything was written


def test_an_identity_number_given_as_a_number_is_not_echoed(tmp_path: Path) -> None:
    pasted = "150402198501010017"
    done = xmatch("bench", "--sizes", pasted, "--out", str(tmp_path / "b"))
    assert done.returncode == exit_codes.USAGE and pasted not in done.stderr


@pytest.mark.parametrize(
    ("argv", "argument", "command", "reason"),
    [
        (
            ["round", "share", "--config", "c.toml", "--round", ROUND_ID, "--department", "../x"],
            "--department",
            "round share",
            "expected a member name: 1-63 lower-case letters, digits or '-', starting with a "
            "letter (for example justice or civil-affairs); it becomes a file name",
        ),
        (
            ["dispute", "file", "--config", "c.toml", "--round", "xyz", "--person", "1"],
            "--round",
            "dispute file",
            "expected a round id of 32 hex digits, as round run prints it",
        ),
        (
            ["dispute", "file", "--config", "c.toml", "--from-round", "xyz", "--conflicts"],
            "--from-round",
            "dispute file",
            "expected a round id of 32 hex digits, as round run prints it",
        ),
        (
            ["dispute", "file", "--config", "c.toml", "--round", ROUND_ID, "--source", "justice"],
            "--source",
            "dispute file",
            "expected NODE/SET, for example justice/custody",
        ),
    ],
)
def test_bad_names_and_ids_are_usage_errors(
    argv: list[str], argument: str, command: str, reason: str
) -> None:
    _usage_line(xmatch(*argv), argument, command, reason)


# ---------------------------------------------------------------------------
# 3. --as-of at most a year ahead


def _evaluate(tmp_path: Path, day: dt.date) -> subprocess.CompletedProcess[str]:
    return xmatch(
        *("rules", "evaluate", "--roster", str(tmp_path / "roster.csv")),
        *("--evidence", str(tmp_path / "evidence.csv"), "--as-of", day.isoformat()),
        *("--out", str(tmp_path / "d.json")),
    )


@pytest.mark.parametrize("command", ["round run", "rules evaluate"])
@pytest.mark.parametrize("text", ["9999-12-31", "far"])
def test_as_of_far_ahead_is_a_usage_error(tmp_path: Path, command: str, text: str) -> None:
    today = dt.date.today()
    day = (
        today + dt.timedelta(days=AS_OF_DAYS_AHEAD + 1) if text == "far" else dt.date(9999, 12, 31)
    )
    argv = command.split()
    if command == "round run":
        argv += ["--config", "c.toml", "--out", str(tmp_path / "round")]
    else:
        argv += ["--roster", "r.csv", "--evidence", "e.csv", "--out", str(tmp_path / "d.json")]
    done = xmatch(*argv, "--as-of", day.isoformat())
    _usage_line(
        done,
        "--as-of",
        command,
        f"{day.isoformat()}: more than a year after today ({today.isoformat()}); "
        "the evaluation date may lie at most one year ahead",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["round run", "rules evaluate"])
def test_as_of_before_2000_is_a_usage_error(tmp_path: Path, command: str) -> None:
    """Found: `--as-of 0001-01-01` put every child's birth in the future, one roster
    problem printed per row, then exit 1."""
    argv = command.split()
    if command == "round run":
        argv += ["--config", "c.toml", "--out", str(tmp_path / "round")]
    else:
        argv += ["--roster", "r.csv", "--evidence", "e.csv", "--out", str(tmp_path / "d.json")]
    done = xmatch(*argv, "--as-of", "0001-01-01")
    _usage_line(
        done,
        "--as-of",
        command,
        "0001-01-01: before 2000-01-01; the evaluation date is the day the decisions hold for",
    )
    assert list(tmp_path.iterdir()) == []
    assert _evaluate(tmp_path, AS_OF_EARLIEST).returncode == exit_codes.FAILURE  # the roster


def test_as_of_a_year_ahead_is_accepted(tmp_path: Path) -> None:
    """The last accepted day gets past the arguments (and fails on the missing roster)."""
    done = _evaluate(tmp_path, dt.date.today() + dt.timedelta(days=AS_OF_DAYS_AHEAD))
    assert done.returncode == exit_codes.FAILURE
    assert "roster.csv: cannot read" in done.stderr and "argument" not in done.stderr


# ---------------------------------------------------------------------------
# 2. Our own certificate, key or CA: a configuration error, for round and node serve


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """A PKI and configs (no node runs: every case fails before any traffic), plus
    ``pki/old/``: certificates of the same CA, issued three years ago and expired."""
    federation = build_federation(tmp_path_factory.mktemp("own-certs"), specs=POLICE)
    pki = federation.root / "pki"
    old = pki / "old"
    old.mkdir()
    for name in ("ca.crt", "ca.key"):
        shutil.copy(pki / name, old / name)
    three_years_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3 * 365)
    for name, role in (("civil-affairs", "coordinator"), ("police", "node")):
        issue(old, name=name, role=role, now=three_years_ago)
    (pki / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n", "utf-8")
    yield federation


def _cases(own: str) -> list[tuple[dict[str, str], str]]:
    """(config keys, the reason the one line gives) for member ``own``."""
    return [
        (
            {"cert": f"pki/old/{own}.crt", "key": f"pki/old/{own}.key"},
            f"pki/old/{own}.crt: certificate expired on ",
        ),
        ({"cert": "pki/garbage.pem"}, "pki/garbage.pem is not an X.509 certificate"),
        (
            {"cert": "pki/ca.key"},
            "pki/ca.key is not an X.509 certificate: it holds a private key",
        ),
        (
            {"ca": "pki/ca.key"},
            "pki/ca.key (given as ca) is not an X.509 certificate: it holds a private key",
        ),
        ({"key": "pki/ca.key"}, "pki/ca.key does not belong to certificate "),
    ]


def _one_line(done: subprocess.CompletedProcess[str], reason: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("xmatch: error: ") and reason in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert done.returncode == exit_codes.USAGE, done.stderr
    return lines[0]


@pytest.mark.parametrize("case", range(len(_cases("civil-affairs"))))
def test_own_certificate_problems_of_round_run_exit_2(
    fed: Federation, tmp_path: Path, case: int
) -> None:
    keys, reason = _cases("civil-affairs")[case]
    config = coordinator_toml(fed, f"c-own-{case}.toml", specs=POLICE, coordinator=keys)
    done = xmatch("round", "run", "--config", str(config), "--out", str(tmp_path / "r"), "-q")
    _one_line(done, reason)
    assert not (tmp_path / "r").exists()


def test_missing_ca_file_of_round_run_exits_2(fed: Federation, tmp_path: Path) -> None:
    config = coordinator_toml(fed, "c-no-ca.toml", specs=POLICE, coordinator={"ca": "pki/no.crt"})
    done = xmatch("round", "run", "--config", str(config), "--out", str(tmp_path / "r"), "-q")
    _one_line(done, "pki/no.crt: cannot read (No such file or directory)")


@pytest.mark.parametrize("case", range(len(_cases("police"))))
def test_own_certificate_problems_of_node_serve_exit_2(fed: Federation, case: int) -> None:
    keys, reason = _cases("police")[case]
    doc = configs.apply(
        configs.read(fed.config("police")), *(put(f"node.{k}", v) for k, v in keys.items())
    )
    config = configs.write(fed.root / f"police-own-{case}.node.toml", doc)
    _one_line(xmatch("node", "serve", "--config", str(config), timeout=60), reason)
