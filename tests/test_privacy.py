"""Privacy: nothing a round writes outside its output folder names a person.

One real federation (``tests.federation``), run over both protocol
assignments, with invalid roster rows, a match set the node refuses (its
``min_query_size`` is above the roster) and a node that is down. Then every
byte written outside the data files and the round outputs is searched: the
coordinator's and the nodes' stdout and stderr, every protocol log, the SQLite
state (a full SQL dump and the raw database and WAL bytes), the configs and
any other file that appeared in the work folder. The needles:

- every roster identity number: the canonical 18-character form and every
  raw form in the roster (15-digit, lower-case ``x``, full-width, with spaces
  or hyphens), also when written with separators or full-width digits;
- every identity number in every department file, matched or not, and the
  departments' other non-date values (names, causes);
- every person's name on the roster.

The round outputs (``evidence.csv``, ``decisions.json``, ``report.html``) belong
to civil affairs and hold roster identities by design; they must still hold no
department record that did not match the roster.

The search can fail: the roster file itself must hit every needle (positive
control), and a synthetic log line holding one identity number in each
disguise must be caught (negative control).

The second half checks the probing limits end to end: a tiny roster is
refused and logged, a requester over its budget gets RESOURCE_EXHAUSTED and a
log entry, and ``xmatch audit report`` flags the pattern.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from coordinator import exit_codes
from psi.errors import InvalidIdentifier
from psi.identifiers import normalize_id
from tests import configs
from tests.configs import put
from tests.federation import (
    AS_OF,
    SPECS,
    SWAP,
    Federation,
    audit_entries,
    build_federation,
    coordinator_toml,
    free_ports,
    start_nodes,
    stop_nodes,
    xmatch,
)
from xmatch import synth

pytestmark = pytest.mark.integration

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SEPARATORS = re.compile(r"[\s\-\u00a0\u200b\u200c\u200d\u2060\ufeff]")
_RUN = re.compile(r"[0-9]{15,}X?")
ID_COLUMNS = ("child_id", "father_id", "mother_id")
NAME_COLUMNS = ("child_name", "father_name", "mother_name")


# ---------------------------------------------------------------------------
# The search


@dataclasses.dataclass
class Needles:
    """What must never appear: identity numbers (canonical and raw) and words."""

    ids: set[str]  # canonical 18-char and 15-digit forms, as found after NFKC
    raw: set[str]  # the raw cells, verbatim (lower-case x, full-width, spaces)
    words: set[str]  # names and other non-date values

    def hits(self, text: str) -> set[str]:
        """Every needle found in ``text``, in any disguise."""
        found = {r for r in self.raw if r in text}
        found |= {w for w in self.words if w in text}
        folded = unicodedata.normalize("NFKC", text).upper()
        for variant in (folded, _SEPARATORS.sub("", folded)):
            for m in _RUN.finditer(variant):
                run = m.group()
                for width in (15, 18):
                    for i in range(len(run) - width + 1):
                        if run[i : i + width] in self.ids:
                            found.add(run[i : i + width])
        return found


def _canonical(raw: str) -> str | None:
    try:
        return normalize_id(raw, today=AS_OF)
    except InvalidIdentifier:
        return None


def _id_forms(raw: str) -> tuple[set[str], set[str]]:
    """(searchable forms, verbatim cell) of one identity cell."""
    cell = raw.strip()
    forms: set[str] = set()
    canonical = _canonical(cell)
    if canonical is not None:
        forms.add(canonical)
    bare = _SEPARATORS.sub("", unicodedata.normalize("NFKC", cell)).upper()
    if re.fullmatch(r"\d{15}|\d{17}[\dX]", bare):
        forms.add(bare)  # also a number that fails its check character
    return forms, ({cell} if len(cell) >= 15 else set())


def roster_needles(path: Path) -> Needles:
    """The roster's identity numbers in every form, and its names."""
    ids: set[str] = set()
    raw: set[str] = set()
    words: set[str] = set()
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            for col in ID_COLUMNS:
                if row[col].strip():
                    forms, cells = _id_forms(row[col])
                    ids |= forms
                    raw |= cells
            words |= {row[c].strip() for c in NAME_COLUMNS if len(row[c].strip()) >= 2}
    return Needles(ids, raw, words)


def department_needles(fed: Federation, *, except_ids: set[str]) -> Needles:
    """Every department record's identity number (except ``except_ids``) and
    its other values that are not dates or small numbers (names, causes)."""
    ids: set[str] = set()
    raw: set[str] = set()
    words: set[str] = set()
    for node in fed.specs:
        for ms in node.match_sets:
            with (fed.root / ms.source).open(encoding=ms.encoding, newline="") as fh:
                for record in csv.DictReader(fh):
                    forms, cells = _id_forms(record[ms.id_column])
                    if forms & except_ids:
                        continue
                    ids |= forms
                    raw |= cells
                    for col, value in record.items():
                        v = (value or "").strip()
                        if col == ms.id_column or len(v) < 2 or _DATE.fullmatch(v):
                            continue
                        if v.isascii() and (v.isdigit() or v.isalpha() or v.upper() == v):
                            continue  # term_months, grades, kind codes: generic
                        words.add(v)
    return Needles(ids, raw, words)


def _files_outside(root: Path, skip: set[Path]) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path.is_relative_to(s) for s in skip):
            yield path


def _sqlite_dump(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def _texts(root: Path, skip: set[Path]) -> dict[str, str]:
    """Every file under ``root`` outside ``skip``, as text (raw bytes too for
    binaries; a full SQL dump for SQLite databases)."""
    out: dict[str, str] = {}
    for path in _files_outside(root, skip):
        data = path.read_bytes()
        name = str(path.relative_to(root))
        out[name] = data.decode("utf-8", errors="replace") + "\n" + data.decode("latin-1")
        if data.startswith(b"SQLite format 3"):
            out[name + " (dump)"] = _sqlite_dump(path)
    return out


# ---------------------------------------------------------------------------
# The federation with every kind of failure


INVALID_ROWS = (
    # a wrong check character, a 17-digit stub and an impossible birth date
    "150102201001011235,错号儿童,,,150102198001011236,父亲甲,,,candidate,,,150102,",
    "15010220100101123,短号儿童,,,,,150102198202021240,母亲乙,candidate,,,150102,",
    "150102201013011238,错日儿童,,,,,,,candidate,,,150102,",
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    federation = build_federation(tmp_path_factory.mktemp("privacy"))
    roster = federation.root / "data" / "roster.csv"
    with roster.open("a", encoding="utf-8", newline="") as fh:
        fh.write("\n".join(INVALID_ROWS) + "\n")
    # police refuses lost_contact: its minimum query size is above the roster
    police = federation.config("police")
    lost_contact = configs.entry(configs.read(police), "match_sets", "lost_contact")
    configs.edit_file(police, put(f"{lost_contact}.min_query_size", 100000))
    yield federation
    stop_nodes(federation.nodes)


def _run(fed: Federation, swap: bool, out: Path) -> tuple[str, str]:
    specs = tuple(dataclasses.replace(s, protocol=SWAP[s.protocol]) if swap else s for s in SPECS)
    dead = free_ports(1)[0]
    config = coordinator_toml(
        fed,
        f"coordinator-privacy-{int(swap)}.toml",
        specs=specs,
        nodes=[
            {
                "name": "court",
                "address": f"127.0.0.1:{dead}",
                "match_sets": ["declarations"],
                "protocol": "ecdh",
                "retries": 0,
            }
        ],
    )
    done = xmatch(
        *("round", "run", "--config", str(config), "--as-of", AS_OF.isoformat()),
        *("--out", str(out), "--lang", "en"),
        timeout=120,
    )
    # some sets fail or are refused on purpose: a partial round (coordinator/exit_codes.py)
    assert done.returncode == exit_codes.PARTIAL, done.stderr
    return done.stdout, done.stderr


def test_no_identity_or_payload_outside_the_round_outputs(fed: Federation, tmp_path: Path) -> None:
    roster_file = fed.root / "data" / "roster.csv"
    roster = roster_needles(roster_file)
    departments = department_needles(fed, except_ids=set())
    # (positive control) the roster file holds every roster needle: the search sees them
    roster_text = roster_file.read_text(encoding="utf-8-sig")
    seen = roster.hits(roster_text)
    # every form is there, except the 18-char conversions of 15-digit numbers
    assert all(m[:6] + m[8:17] in seen for m in roster.ids - seen)
    assert roster.raw <= roster.hits(roster_text)
    assert any(not r.isascii() for r in roster.raw)  # full-width forms are covered
    assert any(r.endswith("x") for r in roster.raw) or any(
        len(_SEPARATORS.sub("", r)) == 15 for r in roster.raw
    )
    assert any(len(f) == 15 for f in roster.ids)  # 15-digit numbers are covered
    assert {"150102201001011235", "150102198001011236"} <= roster.ids  # invalid rows too
    # (negative control) one identity number in each disguise is caught
    some = sorted(f for f in roster.ids if len(f) == 18)[0]
    wide = some.translate(str.maketrans("0123456789X", "０１２３４５６７８９Ｘ"))
    spaced = f"{some[:6]} {some[6:14]}-{some[14:]}"
    for disguise in (some, wide, spaced, some.lower(), f"seq=12,id={some}x0"):
        assert some in roster.hits(f'{{"event":"round_failed","reason":"{disguise}"}}')
    assert not roster.hits('{"event":"round_finished","round_id":"' + "1" * 32 + '"}')

    logs = fed.root / "logs"
    nodes = start_nodes(fed)
    outs = [tmp_path / "round-a", tmp_path / "round-b"]
    printed: list[str] = []
    try:
        for swap, out in zip((False, True), outs, strict=True):
            stdout, stderr = _run(fed, swap, out)
            printed += [stdout, stderr]
            assert "court/declarations failed" in stderr
            assert re.search(r"police/lost_contact refused: refused: query below minimum", stderr)
            assert len(re.findall(r"roster\.csv:\d+: column child_id", stderr)) == 5
    finally:
        stop_nodes(nodes)
    printed += ["\n".join(n.lines) for n in nodes]  # the nodes' stdout
    refusals = [
        e for e in audit_entries(logs / "police.audit.jsonl") if e["event"] == "round_refused"
    ]
    assert len(refusals) == 2 and all(e["match_set"] == "lost_contact" for e in refusals)

    texts = _texts(fed.root, skip={fed.root / "data", fed.root / "pki"})
    texts |= _texts(tmp_path, skip=set(outs))
    texts |= {f"printed[{i}]": t for i, t in enumerate(printed)}
    # what was searched: every party's log and stderr, the state and its WAL
    names = set(texts)
    for party in ("civil-affairs", *(s.name for s in SPECS)):
        assert f"logs/{party}.audit.jsonl" in names
    assert {f"logs/{s.name}.stderr.log" for s in SPECS} <= names
    assert "state/coordinator.sqlite (dump)" in names
    assert "INSERT INTO" in texts["state/coordinator.sqlite (dump)"]

    leaks = {name: roster.hits(t) | departments.hits(t) for name, t in texts.items()}
    assert {n: sorted(h)[:3] for n, h in leaks.items() if h} == {}

    # the outputs hold roster identities (the search finds them there) ...
    matched = {r.split(",")[0] for r in (outs[0] / "evidence.csv").read_text().splitlines()[1:]}
    assert roster.hits((outs[0] / "evidence.csv").read_text(encoding="utf-8")) >= matched
    # ... and no department record outside the roster
    outsiders = department_needles(fed, except_ids=roster.ids)
    outsiders.words = set()  # names in the outputs are the roster's own
    for out in outs:
        for name in ("evidence.csv", "decisions.json", "report.html"):
            text = (out / name).read_text(encoding="utf-8")
            assert not outsiders.hits(text), (out.name, name)


# ---------------------------------------------------------------------------
# Probing limits, end to end


def test_tiny_query_and_budget_are_refused_logged_and_flagged(
    fed: Federation, tmp_path: Path
) -> None:
    police = fed.config("police")
    probe = fed.root / "police-probe.node.toml"
    doc = configs.read(police)
    deaths = configs.entry(doc, "match_sets", "deaths")
    edits = (
        put("node.audit_log", "logs/police-probe.audit.jsonl"),
        put(f"{deaths}.budget", {"rounds": 3, "period": "1h"}),
    )
    configs.write(probe, configs.apply(doc, *edits))
    log = fed.root / "logs" / "police-probe.audit.jsonl"
    # a roster of 5 children: below min_query_size (100)
    rows = (fed.root / "data" / "roster.csv").read_text(encoding="utf-8-sig").splitlines()
    (fed.root / "data" / "roster-tiny.csv").write_text("\n".join(rows[:6]) + "\n", "utf-8")
    deaths_only = (synth.NodeSpec("police", "keyed-hash", (SPECS[0].match_sets[0],)),)
    tiny = coordinator_toml(
        fed, "coordinator-tiny.toml", specs=deaths_only, roster="data/roster-tiny.csv"
    )
    full = coordinator_toml(fed, "coordinator-probe.toml", specs=deaths_only)
    from xmatch.demo import start_node

    node = start_node("police", probe, log_dir=tmp_path)
    fed.nodes.append(node)
    results = []
    try:
        for i, config in enumerate([tiny, full, full, full, full]):
            out = tmp_path / f"round-{i}"
            results.append(
                xmatch(
                    *("round", "run", "--config", str(config), "--as-of", AS_OF.isoformat()),
                    *("--out", str(out), "-q"),
                    timeout=60,
                )
            )
        code = _raw_start_status(fed, node_address=f"127.0.0.1:{fed.ports['police']}")
    finally:
        stop_nodes([node])
        fed.nodes.remove(node)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the refused rounds (tiny roster, budget used up) are partial; the others complete
    assert [r.returncode for r in results] == [
        exit_codes.PARTIAL,
        exit_codes.COMPLETE,
        exit_codes.COMPLETE,
        exit_codes.COMPLETE,
        exit_codes.PARTIAL,
    ], [r.stderr for r in results]
    assert "police/deaths refused: refused: query below minimum size (100)" in results[0].stderr
    assert all("warning" not in r.stderr for r in results[1:4])
    assert "police/deaths refused: refused: budget exhausted (3 rounds per 1h)" in (
        results[4].stderr
    )
    entries = audit_entries(log)
    refused = [e for e in entries if e["event"] == "round_refused"]
    # the tiny roster, the fifth round, and the raw client's start (query size 500)
    assert [e["reason"] for e in refused] == [
        "query below minimum size (100)",
        "budget exhausted (3 rounds per 1h)",
        "budget exhausted (3 rounds per 1h)",
    ]
    assert refused[2]["query_size"] == 500
    assert isinstance(refused[0]["query_size"], int) and refused[0]["query_size"] < 100
    assert len([e for e in entries if e["event"] == "round_finished"]) == 3
    report = xmatch(
        "audit",
        "report",
        "--ca",
        str(fed.root / "pki" / "ca.crt"),
        str(log),
        "--json",
        str(tmp_path / "report.json"),
    )
    assert report.returncode == 1, report.stdout + report.stderr
    flags = [ln for ln in report.stdout.splitlines() if ln.startswith("FLAG:")]
    assert any(ln.startswith("FLAG: tiny:") and "civil-affairs" in ln for ln in flags), flags
    assert any(ln.startswith("FLAG: repeated:") for ln in flags), flags
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))


def _raw_start_status(fed: Federation, *, node_address: str) -> grpc.StatusCode:
    """The status a raw client gets for a well-formed keyed-hash start on police/deaths."""
    from keys.handles import load_tls_credentials
    from proto import xmatch_pb2 as pb
    from proto import xmatch_pb2_grpc as pb_grpc
    from psi.context import RoundContext
    from psi.keyed_hash import KeyedHashRequester

    pki = fed.root / "pki"
    tls = load_tls_credentials(
        ca=pki / "ca.crt",
        cert=pki / "civil-affairs.crt",
        key=pki / "civil-affairs.key",
        name="civil-affairs",
    )
    ctx = RoundContext.new(
        as_of=AS_OF,
        purpose=synth.PURPOSE,
        requester="civil-affairs",
        responder="police",
        match_set="deaths",
        protocol="keyed-hash",
    )
    share = KeyedHashRequester.generate(ctx).key_share().to_bytes()
    start = pb.KeyedHashRequest(
        start=pb.RoundStart(context=ctx.to_bytes(), query_size=500, key_share=share)
    )
    options = [("grpc.ssl_target_name_override", "police")]
    with grpc.secure_channel(node_address, tls.channel_credentials(), options=options) as ch:
        try:
            list(pb_grpc.NodeStub(ch).KeyedHash(iter([start]), timeout=10))
        except grpc.RpcError as exc:
            return exc.code()
    raise AssertionError("the node accepted a round over budget")
