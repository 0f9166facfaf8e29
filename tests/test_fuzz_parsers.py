"""Fuzzing every parser that sees outside input (hypothesis, bounded examples).

- roster.csv / evidence.csv (``coordinator.records``): arbitrary bytes and
  mangled rows give a valid result or one ``InputError``, nothing else;
- ``node.toml`` and ``coordinator.toml``: arbitrary TOML documents and
  mutations of valid configurations give ``ConfigError`` or a valid config;
- psi wire messages (``TagChunk``, ``PointChunk``, ``KeyShare``,
  ``MatchChunk``, ``RoundContext``): arbitrary bytes and valid headers with
  hostile fields give ``ProtocolError`` only;
- the node's round drivers (``KeyedHashDriver``, ``EcdhDriver``): arbitrary
  event streams (valid or random start, random and well-framed chunks, random
  end counts) end in an ``XmatchError`` or a completed round, never another
  exception.

The audit log parser has its own fuzz tests in ``tests/test_audit_log.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import nodes.drivers.base as driver_base
from coordinator.config import CoordinatorConfig, load_coordinator_config
from coordinator.records import Roster, read_evidence, read_roster
from nodes.config import NodeConfig, load_node_config
from nodes.handlers import Chunk, EcdhDriver, End, Event, KeyedHashDriver, NodeState, Start
from nodes.matchsets import MatchSetStore
from psi.context import RoundContext
from psi.errors import ConfigError, InputError, XmatchError
from psi.keyed_hash import KeyedHashRequester
from psi.messages import KeyShare, MatchChunk, PointChunk, TagChunk

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
AS_OF = dt.date(2026, 11, 29)

# ---------------------------------------------------------------------------
# roster.csv and evidence.csv

ROSTER_HEADER = (
    "child_id,child_name,child_birth_date,child_sex,father_id,father_name,mother_id,"
    "mother_name,status,category,foundling,region_code,last_check_date"
)
ROSTER_ROWS = (
    "150102201503150021,甲,,,150102198001011236,乙,150102198202021240,丙,supported,de_facto,,150102,2026-01-01",
    "１５０１０２２０１５０３１５００２１,丁,,,150102800101123,戊,,,candidate,,,,",
    ",己,2019-02-03,F,,,,,candidate,,yes,,",
)
EVIDENCE_TEXT = (
    "person_id,circumstance,source,start_date,end_date,disability_category,disability_grade\n"
    "150102198001011236,DEAD,police/deaths,2019-07-04,,,\n"
    "150102198202021240,SEVERE_DISABILITY,dpf/certificates,2018-05-02,,4,2\n"
)
_CELL = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        [
            "",
            "yes",
            "no",
            "M",
            "F",
            "supported",
            "candidate",
            "orphan",
            "de_facto",
            "DEAD",
            "2026-02-30",
            "1.50802E+17",
            "15010219800101123x",
            "0000-00-00",
            '"',
            '""',
            "\r",
            "\n",
            "\ufeff",
            "99",
            "-1",
            "7",
            "a/b",
            "/",
            "police/",
            "１５０１０２",
        ]
    ),
)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _roster_or_input_error(path: Path, encoding: Any = "auto") -> None:
    try:
        roster = read_roster(path, encoding=encoding, as_of=AS_OF)
    except InputError as exc:
        assert "\n" not in exc.diagnostics()
        return
    assert isinstance(roster, Roster)


@FUZZ
@given(data=st.binary(max_size=600), encoding=st.sampled_from(["auto", "utf-8", "gb18030"]))
def test_roster_arbitrary_bytes(tmp_path: Path, data: bytes, encoding: str) -> None:
    _roster_or_input_error(_write(tmp_path, "roster.csv", data), encoding)


@FUZZ
@given(data=st.binary(max_size=400))
def test_roster_valid_header_then_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    head = (ROSTER_HEADER + "\n").encode()
    _roster_or_input_error(_write(tmp_path, "roster.csv", head + data))


@FUZZ
@given(
    row=st.sampled_from(ROSTER_ROWS),
    edits=st.lists(st.tuples(st.integers(0, 14), _CELL), min_size=1, max_size=4),
    encoding=st.sampled_from(["utf-8", "gb18030"]),
)
def test_roster_mangled_rows(
    tmp_path: Path, row: str, edits: list[tuple[int, str]], encoding: str
) -> None:
    cells = row.split(",")
    for index, value in edits:
        if index < len(cells):
            cells[index] = value
        else:
            cells.append(value)  # too many fields
    text = ROSTER_HEADER + "\n" + ",".join(cells) + "\n"
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        data = text.encode("utf-8")
    _roster_or_input_error(_write(tmp_path, "roster.csv", data))


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=500),
        st.tuples(st.integers(0, 200), st.binary(max_size=60)).map(
            lambda t: EVIDENCE_TEXT.encode()[: t[0]] + t[1] + EVIDENCE_TEXT.encode()[t[0] :]
        ),
        st.lists(_CELL, min_size=1, max_size=9).map(
            lambda cells: (EVIDENCE_TEXT + ",".join(cells) + "\n").encode("utf-8")
        ),
    )
)
def test_evidence_arbitrary_and_mangled(tmp_path: Path, data: bytes) -> None:
    try:
        rows = read_evidence(_write(tmp_path, "evidence.csv", data))
    except InputError:
        return
    assert isinstance(rows, list)


# ---------------------------------------------------------------------------
# TOML configurations


def _toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, int) or value == value else "nan"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(document: dict[str, Any]) -> str:
    """A TOML document with every table inline (enough for fuzzing)."""
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in document.items())


_SCALAR = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["", "../..", "/", "ecdh", "keyed-hash", "127.0.0.1:1", "[::1]:0", "1d", "0m"]),
)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _valid_node(tmp: Path) -> dict[str, Any]:
    for name in ("ca.crt", "n.crt", "n.key", "set.csv"):
        (tmp / name).write_text("id_number\n", encoding="utf-8")
    return {
        "node": {
            "name": "justice",
            "listen": "127.0.0.1:50061",
            "ca": "ca.crt",
            "cert": "n.crt",
            "key": "n.key",
            "audit_log": "justice.audit.jsonl",
        },
        "match_sets": [
            {
                "name": "custody",
                "circumstance": "IMPRISONED",
                "source": "set.csv",
                "id_column": "id_number",
                "payload": ["start_date"],
                "protocols": ["ecdh"],
                "allow": [{"requester": "civil-affairs", "purposes": ["eligibility-review"]}],
                "budget": {"rounds": 5, "period": "1d"},
            }
        ],
    }


def _valid_coordinator() -> dict[str, Any]:
    return {
        "coordinator": {
            "name": "civil-affairs",
            "ca": "ca.crt",
            "cert": "c.crt",
            "key": "c.key",
            "audit_log": "c.jsonl",
            "state": "s.sqlite",
            "roster": "r.csv",
            "purpose": "eligibility-review",
            "chunk_items": 16,
        },
        "nodes": [
            {
                "name": "justice",
                "address": "127.0.0.1:1",
                "match_sets": ["custody"],
                "protocol": "ecdh",
                "deadline_seconds": 3,
                "retries": 1,
            }
        ],
    }


def _mutate(document: Any, path: list[int], value: Any, op: int) -> Any:
    """Replace, delete or add at a position chosen by ``path`` (indices mod size)."""
    if not path or not isinstance(document, dict | list) or not document:
        return value
    if isinstance(document, dict):
        keys = list(document)
        key = keys[path[0] % len(keys)]
        out = dict(document)
        if len(path) == 1 and op == 1:
            del out[key]
        elif len(path) == 1 and op == 2:
            out[f"{key}_extra"] = value
        else:
            out[key] = _mutate(document[key], path[1:], value, op)
        return out
    items = list(document)
    index = path[0] % len(items)
    if len(path) == 1 and op == 1:
        del items[index]
    else:
        items[index] = _mutate(items[index], path[1:], value, op)
    return items


def _load(tmp: Path, name: str, text: str, loader: Any) -> object | None:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    try:
        return loader(path)  # type: ignore[no-any-return]
    except ConfigError as exc:
        assert "\n" not in exc.diagnostics()
        return None


@FUZZ
@given(document=st.dictionaries(st.text(max_size=10), _VALUE, max_size=4))
def test_node_config_arbitrary_toml(tmp_path: Path, document: dict[str, Any]) -> None:
    _load(tmp_path, "node.toml", to_toml(document), load_node_config)


@FUZZ
@given(text=st.text(max_size=300))
def test_configs_arbitrary_text(tmp_path: Path, text: str) -> None:
    _load(tmp_path, "node.toml", text, load_node_config)
    _load(tmp_path, "coordinator.toml", text, load_coordinator_config)


@FUZZ
@given(
    path=st.lists(st.integers(0, 50), min_size=1, max_size=5),
    value=_VALUE,
    op=st.integers(0, 2),
)
def test_node_config_mutated(tmp_path: Path, path: list[int], value: Any, op: int) -> None:
    document = _mutate(_valid_node(tmp_path), path, value, op)
    assume(isinstance(document, dict))
    loaded = _load(tmp_path, "node.toml", to_toml(document), load_node_config)
    assert loaded is None or isinstance(loaded, NodeConfig)


@FUZZ
@given(document=st.dictionaries(st.text(max_size=10), _VALUE, max_size=4))
def test_coordinator_config_arbitrary_toml(tmp_path: Path, document: dict[str, Any]) -> None:
    _load(tmp_path, "coordinator.toml", to_toml(document), load_coordinator_config)


@FUZZ
@given(
    path=st.lists(st.integers(0, 50), min_size=1, max_size=5),
    value=_VALUE,
    op=st.integers(0, 2),
)
def test_coordinator_config_mutated(tmp_path: Path, path: list[int], value: Any, op: int) -> None:
    document = _mutate(_valid_coordinator(), path, value, op)
    assume(isinstance(document, dict))
    loaded = _load(tmp_path, "coordinator.toml", to_toml(document), load_coordinator_config)
    assert loaded is None or isinstance(loaded, CoordinatorConfig)


def test_valid_configs_load(tmp_path: Path) -> None:
    """The mutation tests start from configurations that load."""
    assert isinstance(
        _load(tmp_path, "node.toml", to_toml(_valid_node(tmp_path)), load_node_config), NodeConfig
    )
    coord = _load(tmp_path, "c.toml", to_toml(_valid_coordinator()), load_coordinator_config)
    assert isinstance(coord, CoordinatorConfig)


# ---------------------------------------------------------------------------
# psi wire messages

_HEADER = struct.Struct(">2sBB16sII")
RID = bytes(range(16))


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    """A message with an xmatch header whose fields may lie about the body."""
    magic = draw(st.sampled_from([b"XM", b"XN", b"\x00\x00"]))
    version = draw(st.sampled_from([1, 0, 2, 255]))
    kind = draw(st.integers(0, 8))
    rid = draw(st.sampled_from([RID, bytes(16)]))
    seq = draw(st.integers(0, 2**32 - 1))
    count = draw(st.integers(0, 2**32 - 1) | st.integers(0, 8))
    body = draw(st.binary(max_size=200))
    return _HEADER.pack(magic, version, kind, rid, seq, count) + body


_MESSAGE = st.one_of(st.binary(max_size=300), framed())


def _protocol_error_only(parse: Any, data: bytes) -> None:
    with contextlib.suppress(XmatchError):
        parse(data)


@settings(max_examples=300, deadline=None)
@given(data=_MESSAGE, seq=st.none() | st.integers(0, 3))
def test_psi_messages_from_arbitrary_bytes(data: bytes, seq: int | None) -> None:
    _protocol_error_only(lambda d: TagChunk.from_bytes(d, round_id=RID, seq=seq), data)
    _protocol_error_only(TagChunk.from_bytes, data)
    _protocol_error_only(lambda d: MatchChunk.from_bytes(d, round_id=RID, seq=seq), data)
    _protocol_error_only(lambda d: KeyShare.from_bytes(d, round_id=RID), data)
    for stage in ("blinded", "reblinded", "set", None):
        _protocol_error_only(lambda d, s=stage: PointChunk.from_bytes(d, stage=s), data)
    _protocol_error_only(RoundContext.from_bytes, data)


def _context(**changes: Any) -> RoundContext:
    fields: dict[str, Any] = {
        "as_of": dt.date.today(),
        "purpose": "eligibility-review",
        "requester": "civil-affairs",
        "responder": "justice",
        "match_set": "custody",
        "protocol": "keyed-hash",
    }
    fields.update(changes)
    return RoundContext.new(**fields)


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(0, 300),
    flip=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=4),
    tail=st.binary(max_size=8),
)
def test_round_context_mangled(cut: int, flip: list[tuple[int, int]], tail: bytes) -> None:
    data = bytearray(_context().to_bytes())
    for pos, value in flip:
        if pos < len(data):
            data[pos] = value
    _protocol_error_only(RoundContext.from_bytes, bytes(data[:cut]) + tail)


# ---------------------------------------------------------------------------
# The node's round drivers


@pytest.fixture(scope="module")
def node_state(tmp_path_factory: pytest.TempPathFactory) -> NodeState:
    tmp = tmp_path_factory.mktemp("fuzz-node")
    from xmatch.synth import make_id

    raw = _valid_node(tmp)  # writes placeholder files, then the real set:
    ids = [make_id("150102", dt.date(1980, 1, 1) + dt.timedelta(days=i), 3) for i in range(40)]
    (tmp / "set.csv").write_text(
        "id_number,start_date\n" + "".join(f"{i},2020-01-01\n" for i in ids), encoding="utf-8"
    )
    raw["match_sets"][0].update(
        protocols=["ecdh", "keyed-hash"],
        min_query_size=1,
        budget={"rounds": 1_000_000, "period": "1d"},
    )
    raw["node"]["size_classes"] = [64]
    config = NodeConfig.model_validate(raw, context={"base": tmp})
    return NodeState.create(config, store=MatchSetStore(config))


@st.composite
def event_streams(draw: st.DrawFn, protocol: str) -> list[Event]:
    ctx = _context(
        protocol=protocol,
        responder=draw(st.sampled_from(["justice"] * 5 + ["police"])),
        match_set=draw(st.sampled_from(["custody"] * 5 + ["nope"])),
    )
    requester = KeyedHashRequester.generate(_context(protocol="keyed-hash"))
    share = KeyShare(round_id=ctx.round_id, public_key=requester.key_share().public_key).to_bytes()
    # mostly a valid start, so that the chunks and the end get exercised too
    valid = draw(st.integers(0, 4)) > 0
    start = Start(
        context=ctx.to_bytes()
        if valid
        else draw(st.sampled_from([b"", b"XMCTX\x01"]) | st.binary(max_size=40)),
        query_size=draw(st.integers(1, 40)) if valid else draw(st.integers(0, 2**32 - 1)),
        key_share=(share if protocol == "keyed-hash" else b"")
        if valid
        else draw(st.binary(max_size=40)),
    )
    width = 16 if protocol == "keyed-hash" else 32
    kind = 0x02 if protocol == "keyed-hash" else 0x04

    def chunk(seq: int, n: int) -> bytes:
        return _HEADER.pack(b"XM", 1, kind, ctx.round_id, seq, n) + os.urandom(n * width)

    body: list[Event] = []
    for i in range(draw(st.integers(0, 4))):
        choice = draw(st.integers(0, 7))
        if choice == 0:
            body.append(Chunk(draw(_MESSAGE)))
        elif choice == 1:
            body.append(End(chunks=draw(st.integers(0, 2**32 - 1)), items=draw(st.integers(0, 99))))
        elif choice == 2:
            body.append(start)
        else:
            body.append(Chunk(chunk(draw(st.sampled_from([i, i, i + 1])), draw(st.integers(0, 9)))))
    if draw(st.booleans()):
        sent = [e for e in body if isinstance(e, Chunk)]
        body.append(End(chunks=len(sent), items=draw(st.integers(0, 40))))
    just_start: list[Event] = [start]
    firsts: list[list[Event]] = [just_start] * 6 + [[], [Chunk(b"x")]]
    first = draw(st.sampled_from(firsts))
    return [*first, *body]


def _drive(driver: Any, events: list[Event]) -> None:
    outputs = driver.run(iter(events))
    kinds: list[str] = []
    try:
        kinds.extend(type(out).__name__ for out in outputs)
    except XmatchError as exc:
        kinds.append(type(exc).__name__)
    finally:
        outputs.close()
    # (shown by --hypothesis-show-statistics: how far the streams got)
    event(" > ".join(dict.fromkeys(kinds)) or "nothing")


@pytest.fixture()
def quick_end(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(driver_base, "TRAILING_SECONDS", 0.01)
    yield


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_keyed_hash_driver_event_streams(
    node_state: NodeState, quick_end: None, data: st.DataObject
) -> None:
    _drive(KeyedHashDriver(node_state, "civil-affairs"), data.draw(event_streams("keyed-hash")))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_ecdh_driver_event_streams(
    node_state: NodeState, quick_end: None, data: st.DataObject
) -> None:
    _drive(EcdhDriver(node_state, "civil-affairs"), data.draw(event_streams("ecdh")))


def test_drivers_can_complete_a_round(node_state: NodeState, quick_end: None) -> None:
    """The fuzzed drivers are live: a well-formed stream completes."""
    ctx = _context(protocol="ecdh")
    from psi.ecdh import EcdhRequester
    from psi.identifiers import encode_identities
    from xmatch.synth import make_id

    ids = [make_id("150102", dt.date(1980, 1, 1) + dt.timedelta(days=i), 3) for i in range(5)]
    blinded = EcdhRequester.generate(ctx).blind(encode_identities(ids))
    events: list[Event] = [
        Start(context=ctx.to_bytes(), query_size=5),
        Chunk(blinded.to_bytes()),
        End(chunks=1, items=5),
    ]
    outputs = list(EcdhDriver(node_state, "civil-affairs").run(iter(events)))
    assert type(outputs[-1]).__name__ == "Done"
    assert np.asarray([1]).size == 1
