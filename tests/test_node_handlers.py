"""Node handlers without gRPC: authorization, budget, replay, both round drivers."""

from __future__ import annotations

import datetime as _dt
import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodes.buckets import bucket_count
from nodes.config import Budget, NodeConfig, load_node_config
from nodes.handlers import (
    Accept,
    BudgetExhausted,
    Chunk,
    Done,
    EcdhDriver,
    End,
    Event,
    KeyedHashDriver,
    Matches,
    NodeState,
    Output,
    Points,
    QueryBudget,
    ReplayGuard,
    Start,
    authorize,
    capabilities,
)
from psi.context import RoundContext
from psi.ecdh import EcdhRequester
from psi.errors import ConfigError, ProtocolError, Refused
from psi.identifiers import encode_identities, identity_number
from psi.keyed_hash import KeyedHashRequester
from psi.messages import KeyShare, MatchChunk
from psi.session import EcdhRequesterSession
from tests.conftest import Pki

TODAY = _dt.date(2026, 11, 29)


def make_ids(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        year, month, day = rng.randrange(1950, 2015), rng.randrange(1, 13), rng.randrange(1, 29)
        out.add(identity_number("150802", dt.date(year, month, day), rng.randrange(1000)))
    return sorted(out)


NODE_IDS = make_ids(1, 40)
OTHERS = make_ids(2, 30)


@pytest.fixture
def cfg(tmp_path: Path) -> NodeConfig:
    return make_cfg(tmp_path)


def make_cfg(tmp_path: Path) -> NodeConfig:
    """A justice node with sets custody (both protocols), deaths (ecdh), register (keyed-hash)."""
    for rel in ("ca.crt", "n.crt", "n.key"):
        (tmp_path / rel).write_text("x")
    rows = ["id_number,start_date,end_date"]
    rows += [
        f"{pid},2025-01-0{1 + i % 9},{'2030-01-01' if i % 2 else ''}"
        for i, pid in enumerate(NODE_IDS)
    ]
    rows.append(f"{NODE_IDS[0]},2019-03-03,2020-03-03")  # a second record of one person
    (tmp_path / "custody.csv").write_text("\n".join(rows) + "\n")
    allow = [
        {"requester": "civil-affairs", "purposes": ["eligibility-review"]},
        {"requester": "education", "purposes": ["coverage"]},
    ]
    toml_allow = (
        json.dumps(allow)
        .replace('"requester":', "requester =")
        .replace('"purposes":', "purposes =")
    )
    (tmp_path / "node.toml").write_text(
        f"""
[node]
name = "justice"
listen = "127.0.0.1:50061"
ca = "ca.crt"
cert = "n.crt"
key = "n.key"
audit_log = "audit.jsonl"
max_future_days = 2
max_query_size = 1000
replay_memory = 3
size_classes = [64, 128]

[[match_sets]]
name = "custody"
circumstance = "IMPRISONED"
source = "custody.csv"
id_column = "id_number"
payload = ["start_date", "end_date"]
protocols = ["ecdh", "keyed-hash"]
min_query_size = 10
budget = {{ rounds = 3, period = "1h" }}
allow = {toml_allow}
prfs = ["aes128-ecb-v1"]

[[match_sets]]
name = "deaths"
circumstance = "DEAD"
source = "custody.csv"
id_column = "id_number"
protocols = ["ecdh"]
min_query_size = 10
allow = [{{ requester = "civil-affairs", purposes = ["eligibility-review"] }}]
suites = ["x25519-sha256-u"]

[[match_sets]]
name = "register"
circumstance = "DEAD"
source = "custody.csv"
id_column = "id_number"
protocols = ["keyed-hash"]
min_query_size = 10
allow = [{{ requester = "civil-affairs", purposes = ["eligibility-review"] }}]
""",
        encoding="utf-8",
    )
    return load_node_config(tmp_path / "node.toml")


def ctx(**over: object) -> RoundContext:
    fields: dict[str, object] = {
        "as_of": TODAY,
        "purpose": "eligibility-review",
        "requester": "civil-affairs",
        "responder": "justice",
        "match_set": "custody",
        "protocol": "keyed-hash",
    }
    fields.update(over)
    return RoundContext.new(**fields)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def check(
    cfg: NodeConfig,
    context: RoundContext,
    *,
    peer: str = "civil-affairs",
    role: str = "coordinator",
    size: int = 10,
    budget: QueryBudget | None = None,
    replay: ReplayGuard | None = None,
) -> str:
    return authorize(
        cfg,
        peer,
        context,
        size,
        role=role,
        budget=budget or QueryBudget(),
        replay=replay or ReplayGuard(10),
        today=TODAY,
    ).name


ELL2 = "curve25519_XMD:SHA-512_ELL2_NU_"


@pytest.mark.parametrize(
    ("peer", "over", "size", "reason"),
    [
        ("node:civil-affairs", {}, 10, "peer certificate has role node, not coordinator"),
        ("police", {}, 10, "requester in the round context is not the TLS peer"),
        ("civil-affairs", {"responder": "police"}, 10, "round is addressed to another node"),
        # finding 5: an unknown set gets the answer of a set not open to the requester
        ("civil-affairs", {"match_set": "nope"}, 10, "requester not allowed for this match set"),
        ("civil-affairs", {"match_set": "deaths"}, 10, "protocol keyed-hash not offered"),
        ("police", {"requester": "police"}, 10, "requester not allowed for this match set"),
        ("education", {"requester": "education"}, 10, "purpose not allowed"),
        ("civil-affairs", {}, 9, "query below minimum size (10)"),
        ("civil-affairs", {}, 1001, "query above maximum size (1000)"),
        ("civil-affairs", {"as_of": TODAY + _dt.timedelta(days=3)}, 10, "as_of more than 2 day(s)"),
        (
            "civil-affairs",
            {"as_of": TODAY - _dt.timedelta(days=32)},
            10,
            "as_of more than 31 day(s) in the past",
        ),
        (
            "civil-affairs",
            {"params": [("prf", "aes256-ecb-v1")]},
            10,
            "keyed-hash prf not allowed for this match set",
        ),
        (
            "civil-affairs",
            {"match_set": "deaths", "protocol": "ecdh", "params": [("suite", ELL2)]},
            10,
            "ecdh suite not allowed for this match set",
        ),
    ],
)
def test_each_refusal(
    cfg: NodeConfig, peer: str, over: dict[str, object], size: int, reason: str
) -> None:
    role, _, peer = peer.rpartition(":")
    with pytest.raises(Refused) as info:
        check(cfg, ctx(**over), peer=peer, role=role or "coordinator", size=size)
    assert info.value.reason.startswith(reason)
    assert not isinstance(info.value, BudgetExhausted)


def test_accepted(cfg: NodeConfig) -> None:
    assert check(cfg, ctx(as_of=TODAY + _dt.timedelta(days=2))) == "custody"
    assert check(cfg, ctx(as_of=TODAY - _dt.timedelta(days=31)), size=1000) == "custody"
    assert check(cfg, ctx(match_set="deaths", protocol="ecdh")) == "deaths"
    # explicit parameters on the allow-lists; defaults allow both of psi's
    assert check(cfg, ctx(params=[("prf", "aes128-ecb-v1")])) == "custody"
    assert check(cfg, ctx(match_set="register", params=[("prf", "aes256-ecb-v1")])) == "register"


def test_replayed_round_is_refused(cfg: NodeConfig) -> None:
    replay = ReplayGuard(10)
    c = ctx()
    check(cfg, c, replay=replay)
    with pytest.raises(Refused, match="replayed round id"):
        check(cfg, c, replay=replay)
    # the same round id for another match set is a different sub-round
    same_id = RoundContext(**{**c.__dict__, "match_set": "deaths", "protocol": "ecdh"})
    assert check(cfg, same_id, replay=replay) == "deaths"


def test_replay_memory_is_bounded() -> None:
    guard = ReplayGuard(2)
    assert guard.remember(b"a" * 16, "s") and guard.remember(b"b" * 16, "s")
    assert not guard.remember(b"a" * 16, "s")
    assert guard.remember(b"c" * 16, "s")  # evicts a
    assert guard.remember(b"a" * 16, "s")


def test_budget_per_requester_purpose_with_fake_clock(cfg: NodeConfig) -> None:
    clock = Clock()
    budget = QueryBudget(clock=clock)
    for _ in range(3):
        check(cfg, ctx(), budget=budget)
    with pytest.raises(BudgetExhausted, match=r"budget exhausted \(3 rounds per 1h\)"):
        check(cfg, ctx(), budget=budget)
    # another requester has its own budget
    check(cfg, ctx(requester="education", purpose="coverage"), peer="education", budget=budget)
    clock.now += 3599
    with pytest.raises(BudgetExhausted):
        check(cfg, ctx(), budget=budget)
    clock.now += 2
    check(cfg, ctx(), budget=budget)


def test_budget_remaining() -> None:
    clock = Clock()
    budget = QueryBudget(clock=clock)
    b = Budget(rounds=2, period="1d")
    assert budget.consume(match_set="s", requester="r", purpose="p", budget=b) == 1
    assert budget.remaining(match_set="s", requester="r", purpose="p", budget=b) == 1


def test_capabilities_only_allowed(cfg: NodeConfig) -> None:
    names = [c.name for c in capabilities(cfg, "civil-affairs", role="coordinator")]
    assert names == ["custody", "deaths", "register"]
    assert [c.purposes for c in capabilities(cfg, "education", role="coordinator")] == [
        ["coverage"]
    ]
    assert capabilities(cfg, "police", role="coordinator") == []
    # a node certificate, even one whose name is in `allow`, sees nothing
    assert capabilities(cfg, "civil-affairs", role="node") == []


def test_capabilities_say_what_a_service_set_reports(cfg: NodeConfig) -> None:
    custody = cfg.match_sets[0]
    gaps = custody.model_copy(update={"name": "enrolled", "circumstance": "SERVICE"})
    needs = gaps.model_copy(update={"name": "rehab_needs", "service_report": "needs"})
    both = cfg.model_copy(update={"match_sets": [custody, gaps, needs]})
    views = capabilities(both, "civil-affairs", role="coordinator")
    assert [(v.name, v.service_report) for v in views] == [
        ("custody", ""),
        ("enrolled", "gaps"),
        ("rehab_needs", "needs"),
    ]


def test_capabilities_carry_display_names(cfg: NodeConfig) -> None:
    custody = cfg.match_sets[0].model_copy(update={"display_name": "服刑在押人员"})
    named = cfg.model_copy(update={"match_sets": [custody, *cfg.match_sets[1:]]})
    views = capabilities(named, "civil-affairs", role="coordinator")
    assert views[0].display_name == "服刑在押人员"
    assert all(v.display_name == "" for v in views[1:])  # not set: empty, as in the proto


# -- drivers


def run(driver: KeyedHashDriver | EcdhDriver, events: list[Event]) -> list[Output]:
    return list(driver.run(iter(events)))


def test_keyed_hash_driver_full_round(cfg: NodeConfig) -> None:
    roster = NODE_IDS[:15] + OTHERS[:10]
    c = ctx()
    req = KeyedHashRequester.generate(c)
    state = NodeState.create(cfg, today=lambda: TODAY)
    driver = KeyedHashDriver(state, "civil-affairs")
    _, gen, inbox = _agreed(driver, req, c, len(roster))
    enc = encode_identities(roster)
    found: set[str] = set()
    records = 0
    for i, s in enumerate(range(0, len(roster), 10)):
        inbox.append(Chunk(req.tag(enc[s : s + 10]).to_bytes()))
        out = next(gen)
        assert isinstance(out, Matches)
        mc = MatchChunk.from_bytes(out.psi)
        assert mc.seq == i
        found.update(roster[j] for j in req.resolve(mc).tolist())
        assert len(out.tags) == len(out.payload)
        out.payload.check()
        assert all(0 <= t < len(mc.tags) for t in out.tags)
        assert set(out.payload.columns) <= {"start_date", "end_date"}
        records += len(out.payload)
    inbox.append(End(chunks=3, items=len(roster)))
    inbox.append(None)  # type: ignore[arg-type]  # end of stream
    done = next(gen)
    assert isinstance(done, Done)
    assert done.transcript == req.finish()
    assert found == set(NODE_IDS[:15])
    assert done.matches == 15 and records == 16  # NODE_IDS[0] has two records
    assert driver.match_count == 15 and driver.query_size == 25


def _feed(inbox: list[Event]) -> Iterator[Event]:
    """Yield events as the test appends them (None ends the stream)."""
    import time

    i = 0
    while True:
        while i >= len(inbox):
            time.sleep(0.005)
        item = inbox[i]
        i += 1
        if item is None:
            return
        yield item


def _agreed(
    driver: KeyedHashDriver, req: KeyedHashRequester, c: RoundContext, query_size: int
) -> tuple[Accept, Iterator[Output], list[Event]]:
    """A keyed-hash round started on ``driver`` with its key agreed: the node's accept, its
    further outputs and the inbox the test appends events to (None ends the stream)."""
    inbox: list[Event] = [
        Start(context=c.to_bytes(), query_size=query_size, key_share=req.key_share().to_bytes())
    ]
    gen = driver.run(_feed(inbox))
    accept = next(gen)
    assert isinstance(accept, Accept)
    req.agree(KeyShare.from_bytes(accept.key_share))
    return accept, gen, inbox


def _start(protocol: str = "keyed-hash", size: int = 10) -> tuple[RoundContext, Start]:
    c = ctx(protocol=protocol)
    share = b""
    if protocol == "keyed-hash":
        share = KeyedHashRequester.generate(c).key_share().to_bytes()
    return c, Start(context=c.to_bytes(), query_size=size, key_share=share)


def tags(c: RoundContext, seq: int, n: int) -> Chunk:
    from psi.messages import TagChunk

    return Chunk(
        TagChunk(round_id=c.round_id, seq=seq, tags=encode_identities(OTHERS[:n])).to_bytes()
    )


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (lambda c, s: [], "stream ended before start"),
        (lambda c, s: [End(chunks=0, items=0)], "must begin with start"),
        (lambda c, s: [s, s], "second start"),
        (lambda c, s: [s, Chunk(b"garbage")], "tag chunk"),
        (lambda c, s: [s, tags(c, 1, 5)], "sequence number 1, expected 0"),
        (lambda c, s: [s, tags(c, 0, 6), tags(c, 1, 6)], "more identities than announced"),
        (lambda c, s: [s, tags(c, 0, 10), End(chunks=2, items=10)], "end says 2 chunks"),
        (
            lambda c, s: [s, tags(c, 0, 5), End(chunks=1, items=5)],
            "5 identities sent, 10 announced",
        ),
        (
            lambda c, s: [s, tags(c, 0, 10), End(chunks=1, items=10), tags(c, 1, 1)],
            "message after end",
        ),
        (lambda c, s: [s, tags(c, 0, 10)], "stream ended before end"),
    ],
)
def test_out_of_order_streams(cfg: NodeConfig, events: object, message: str) -> None:
    c, s = _start()
    state = NodeState.create(cfg, today=lambda: TODAY)
    with pytest.raises(ProtocolError, match=message):
        run(KeyedHashDriver(state, "civil-affairs"), events(c, s))  # type: ignore[operator]


def test_oversized_chunk_is_a_protocol_error(cfg: NodeConfig) -> None:
    _, s = _start()
    state = NodeState.create(cfg, today=lambda: TODAY)
    big = Chunk(b"\0" * (cfg.node.max_chunk_bytes + 1))
    with pytest.raises(ProtocolError, match="exceeds max_chunk_bytes"):
        run(KeyedHashDriver(state, "civil-affairs"), [s, big])


def test_wrong_protocol_stream(cfg: NodeConfig) -> None:
    _, s = _start("ecdh")
    state = NodeState.create(cfg, today=lambda: TODAY)
    with pytest.raises(ProtocolError, match="ecdh round context on the keyed-hash stream"):
        run(KeyedHashDriver(state, "civil-affairs"), [s])


def test_refusal_surfaces_from_driver(cfg: NodeConfig) -> None:
    c, s = _start(size=3)
    state = NodeState.create(cfg, today=lambda: TODAY)
    driver = KeyedHashDriver(state, "civil-affairs")
    with pytest.raises(Refused, match="minimum size"):
        run(driver, [s])
    assert driver.context == c and driver.match_set is None


ECDH_ROSTER = NODE_IDS[10:30] + OTHERS[:12]


def _ecdh_driver_round(cfg: NodeConfig) -> tuple[list[str], int]:
    """One ecdh round of ECDH_ROSTER against ``cfg``'s custody set, checked end to end.

    Returns the stage of every Points output in send order and the number of
    blinded chunks.
    """
    c = ctx(protocol="ecdh")
    # The requester is the psi session, not a copy of its sequence: blinded chunks of 8.
    session = EcdhRequesterSession(c, encode_identities(ECDH_ROSTER), chunk_items=8)
    events: list[Event] = [session.start(), *session.requests()]
    state = NodeState.create(cfg, today=lambda: TODAY)
    outputs = run(EcdhDriver(state, "civil-affairs"), events)
    accept, done = outputs[0], outputs[-1]
    assert isinstance(accept, Accept) and accept.set_size == 64  # 40 people -> class 64
    assert isinstance(done, Done)
    stages: list[str] = []
    for out in outputs:
        if isinstance(out, Points):
            stages.append(out.stage)
        session.receive(out)
    result = session.result()
    assert result.transcript == done.transcript and done.set_size == 64
    assert {ECDH_ROSTER[i] for i in result.indices.tolist()} == set(NODE_IDS[10:30])
    return stages, sum(isinstance(e, Chunk) for e in events)


def test_ecdh_driver_full_round(cfg: NodeConfig) -> None:
    stages, blinded = _ecdh_driver_round(cfg)
    assert stages.count("reblinded") == blinded


def _streaming(cfg: NodeConfig, extra: str = "") -> NodeConfig:
    """The same node with ``stream_rows = 1``: every set is streamed from its source."""
    assert cfg.path is not None
    text = cfg.path.read_text(encoding="utf-8")
    path = cfg.path.with_name("streaming.node.toml")
    path.write_text(
        text.replace(
            'audit_log = "audit.jsonl"', f'audit_log = "audit.jsonl"\nstream_rows = 1\n{extra}'
        ),
        encoding="utf-8",
    )
    return load_node_config(path)


def _keyed_hash_outputs(cfg: NodeConfig, c: RoundContext, roster: list[str]) -> list[Output]:
    req = KeyedHashRequester.generate(c, rng=random.Random(5).randbytes)
    state = NodeState.create(cfg, today=lambda: TODAY, rng=random.Random(6).randbytes)
    driver = KeyedHashDriver(state, "civil-affairs")
    enc = encode_identities(roster)
    accept, gen, inbox = _agreed(driver, req, c, len(roster))
    chunks = [req.tag(enc[s : s + 10]) for s in range(0, len(roster), 10)]
    inbox += [Chunk(ch.to_bytes()) for ch in chunks]
    inbox += [End(chunks=len(chunks), items=len(roster)), None]  # type: ignore[list-item]
    outputs: list[Output] = [accept, *gen]
    for out in outputs:
        if isinstance(out, Matches):
            req.resolve(MatchChunk.from_bytes(out.psi))
    done = outputs[-1]
    assert isinstance(done, Done) and done.transcript == req.finish()
    assert driver.loaded is not None and driver.set_size == len(NODE_IDS) + 1
    return outputs


def test_streamed_keyed_hash_round_equals_in_memory(cfg: NodeConfig) -> None:
    roster = NODE_IDS[:15] + OTHERS[:10] + NODE_IDS[30:]
    c = ctx()
    in_memory = _keyed_hash_outputs(cfg, c, roster)
    streamed = _keyed_hash_outputs(_streaming(cfg), c, roster)
    assert [type(o) for o in streamed] == [type(o) for o in in_memory]
    for a, b in zip(in_memory[1:], streamed[1:], strict=True):
        assert a == b  # same psi bytes, payloads, tag indices, transcript
    matches = [o for o in streamed if isinstance(o, Matches)]
    assert sum(len(m.payload) for m in matches) == 26  # 25 people, NODE_IDS[0] twice


@pytest.mark.parametrize("bucket_rows", [None, 7, 1])
def test_streamed_set_in_ecdh_round(
    cfg: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket_rows: int | None
) -> None:
    """Streamed: held whole (one bucket) or split into bucket_count(rows, bucket_rows) files."""
    from nodes.buckets import SpilledSet

    spill = tmp_path / "spill"
    extra = "" if bucket_rows is None else f'bucket_rows = {bucket_rows}\nspill_dir = "spill"'
    seen: list[int] = []  # bucket files present at each read (they are gone after the round)
    real = SpilledSet.read

    def spy(self: SpilledSet, bucket: int) -> Any:
        seen.append(len(list(self.directory.glob("*.bin"))))
        return real(self, bucket)

    monkeypatch.setattr(SpilledSet, "read", spy)
    stages, _ = _ecdh_driver_round(_streaming(cfg, extra))
    if bucket_rows is None:
        assert seen == []  # one bucket: held in memory, no files
    else:
        # 41 source rows (NODE_IDS and one bad row): 8 or 64 buckets, one file each, each
        # read once
        assert seen == [bucket_count(41, bucket_rows)] * bucket_count(41, bucket_rows)
        # the whole roster is answered before the first set point
        assert stages == sorted(stages)  # "reblinded" < "set"
        assert spill.is_dir() and list(spill.iterdir()) == []  # files removed after the round


# -- distinct identities (review finding 1)


def _tag_chunk(c: RoundContext, seq: int, rows: list[int], base: list[str] = OTHERS) -> Chunk:
    from psi.messages import TagChunk

    enc = encode_identities([base[i] for i in rows])
    return Chunk(TagChunk(round_id=c.round_id, seq=seq, tags=enc).to_bytes())


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([[0] * 10], "repeats an identity within one chunk"),
        ([[0, 1, 2, 3, 4], [5, 6, 7, 8, 2]], "repeats an identity sent in an earlier chunk"),
    ],
)
def test_keyed_hash_repeated_tag_is_refused(
    cfg: NodeConfig, chunks: list[list[int]], message: str
) -> None:
    """One target repeated to reach min_query_size (10) is not a query of 10."""
    c, s = _start(size=10)
    events: list[Event] = [s, *(_tag_chunk(c, i, rows) for i, rows in enumerate(chunks))]
    events.append(End(chunks=len(chunks), items=10))
    state = NodeState.create(cfg, today=lambda: TODAY)
    with pytest.raises(ProtocolError, match=message):
        run(KeyedHashDriver(state, "civil-affairs"), events)


def test_streamed_keyed_hash_repeated_tag_is_refused(cfg: NodeConfig) -> None:
    c, s = _start(size=10)
    events: list[Event] = [s, _tag_chunk(c, 0, [3] * 10), End(chunks=1, items=10)]
    state = NodeState.create(_streaming(cfg), today=lambda: TODAY)
    with pytest.raises(ProtocolError, match="repeats an identity"):
        run(KeyedHashDriver(state, "civil-affairs"), events)


def test_ecdh_repeated_point_is_refused(cfg: NodeConfig) -> None:
    c = ctx(protocol="ecdh")
    req = EcdhRequester.generate(c)
    one = OTHERS[0]
    first = req.blind(encode_identities([*OTHERS[1:6]]))
    second = req.blind(encode_identities([*OTHERS[6:10], one]))
    third = req.blind(encode_identities([one]))
    events: list[Event] = [Start(context=c.to_bytes(), query_size=11)]
    events += [Chunk(b.to_bytes()) for b in (first, second, third)]
    events.append(End(chunks=3, items=11))
    state = NodeState.create(cfg, today=lambda: TODAY)
    with pytest.raises(ProtocolError, match="repeats an identity sent in an earlier chunk"):
        run(EcdhDriver(state, "civil-affairs"), events)


def test_distinct_rows_levels_and_near_collisions() -> None:
    import numpy as np

    from nodes.handlers import DistinctRows

    rng = np.random.default_rng(3)
    rows = rng.integers(0, 256, size=(5000, 32), dtype=np.uint8)
    guard = DistinctRows()
    for s in range(0, 4000, 250):  # 16 chunks: several merged levels
        guard.add(rows[s : s + 250])
    assert guard.count == 4000
    # equal first 8 bytes, different next 8: distinct
    twin = rows[4000:4001].copy()
    twin[0, 8:16] = rows[0, 8:16] ^ 1
    twin[0, :8] = rows[0, :8]
    guard.add(twin)
    # same first 16 bytes (a point with its top bit flipped): a repeat
    flipped = rows[1234:1235].copy()
    flipped[0, 31] ^= 0x80
    with pytest.raises(ProtocolError, match="earlier chunk"):
        guard.add(flipped)
    with pytest.raises(ProtocolError, match="within one chunk"):
        DistinctRows().add(np.concatenate([rows[:3], rows[1:2]]))


def test_distinct_rows_take_an_sm2_point_and_its_negation_as_one() -> None:
    """Finding (a probe): prefix 02 and 03 with the same x, P and -P, are one element under
    the x-only SM2 suite, and the repeat check keyed them by their first 16 bytes, prefix
    included."""
    import numpy as np

    from nodes.handlers import DistinctRows

    rng = np.random.default_rng(4)
    points = rng.integers(0, 256, size=(4, 33), dtype=np.uint8)
    points[:, 0] = 2
    negated = points[1:2].copy()
    negated[0, 0] = 3
    with pytest.raises(ProtocolError, match="within one chunk"):
        DistinctRows().add(np.concatenate([points, negated]))
    guard = DistinctRows()
    guard.add(points)
    with pytest.raises(ProtocolError, match="earlier chunk"):
        guard.add(negated)
    other = points[2:3].copy()
    other[0, 16] ^= 1  # x differs in byte 16 (the 16th byte of x): distinct
    guard.add(other)


# -- streamed keyed-hash without payload columns (review finding 3)


def test_streamed_keyed_hash_without_payload_has_one_entry_per_record(cfg: NodeConfig) -> None:
    roster = NODE_IDS[:12] + OTHERS[:8]
    c = ctx(match_set="register")
    outputs = _keyed_hash_outputs(_streaming(cfg), c, roster)
    matches = [o for o in outputs if isinstance(o, Matches)]
    assert sum(len(m.tags) for m in matches) == 13  # NODE_IDS[0] has two records
    for m in matches:
        assert len(m.payload) == len(m.tags) and m.payload.columns == {}


# -- backpressure (review finding 5)


def test_driver_reads_a_bounded_number_of_requests_ahead(cfg: NodeConfig) -> None:
    import threading
    import time

    from nodes.handlers import READ_AHEAD

    c, s = _start(size=1000)
    pulled = 0
    release = threading.Event()

    def requests() -> Iterator[Event]:
        nonlocal pulled
        pulled += 1
        yield s
        for i in range(200):
            pulled += 1
            yield _tag_chunk(c, i, [i % 30])
        release.wait(10)

    state = NodeState.create(cfg, today=lambda: TODAY)
    driver = KeyedHashDriver(state, "civil-affairs")
    gen = driver.run(requests())
    assert isinstance(next(gen), Accept)
    # The round is stalled here (its generator is not advanced): the reader
    # must stop after a few requests instead of buffering the whole query.
    time.sleep(0.5)
    assert pulled <= READ_AHEAD + 3
    gen.close()  # cancels: the reader stops and the round ends
    release.set()


# -- budgets and replay memory survive a restart (review finding 2)


def test_budget_and_replay_memory_are_rebuilt_from_the_audit_log(
    cfg: NodeConfig, pki: Pki, tmp_path: Path
) -> None:
    """A restart resets neither: both come back from the node's own protocol log."""
    from audit.log import AuditLog
    from keys.handles import AuditSigner
    from nodes.history import read_round_entries, restore_limits

    member = pki.issue("justice", "node")
    signer = AuditSigner.load(key=member.audit_key, cert=member.audit_cert, ca=pki.ca)
    now = _dt.datetime(2026, 11, 29, 12, 0, tzinfo=_dt.UTC)
    clock_at = [now - _dt.timedelta(minutes=90)]
    log = AuditLog.open(tmp_path / "j.audit.jsonl", party="justice", signer=signer,
                        clock=lambda: clock_at[0])  # fmt: skip
    rounds = [ctx() for _ in range(4)]

    def fields(c: RoundContext) -> dict[str, object]:
        return {
            "round_id": c.round_id_hex,
            "requester": c.requester,
            "responder": c.responder,
            "purpose": c.purpose,
            "match_set": c.match_set,
            "protocol": c.protocol,
        }

    # rounds[0]: 90 minutes ago, outside the 1h budget period (replay only)
    log.append("round_started", **fields(rounds[0]), query_size=10)
    log.append("round_finished", **fields(rounds[0]), transcript="ab" * 32)
    clock_at[0] = now - _dt.timedelta(minutes=20)
    # rounds[1]: finished; rounds[2]: failed after authorization
    log.append("round_started", **fields(rounds[1]), query_size=10)
    log.append("round_finished", **fields(rounds[1]), transcript="cd" * 32)
    log.append("round_failed", **fields(rounds[2]), reason="x", authorized=True)
    # rounds[3]: failed before authorization: neither budget nor replay memory (the
    # live authorize never got as far as remembering it)
    log.append("round_failed", **fields(rounds[3]), reason="x", authorized=False)
    # an unparsed start (placeholder round id): ignored
    log.append("round_refused", **{**fields(rounds[3]), "round_id": "0" * 32, "match_set": "-"},
               reason="x")  # fmt: skip
    log.close()

    clock = Clock()
    budget, replay = QueryBudget(clock=clock), ReplayGuard(10)
    restored = restore_limits(
        cfg,
        read_round_entries(tmp_path / "j.audit.jsonl"),
        budget=budget,
        replay=replay,
        now=now,
    )
    assert restored.budget_rounds == 2
    b = cfg.match_sets[0].budget
    kwargs = {"match_set": "custody", "requester": "civil-affairs", "purpose": "eligibility-review"}
    assert budget.remaining(**kwargs, budget=b) == 1
    for c in rounds[:3]:
        with pytest.raises(Refused, match="replayed round id"):
            check(cfg, c, budget=budget, replay=replay)
    assert replay.remember(rounds[3].round_id, "custody")  # not remembered
    check(cfg, ctx(), budget=budget, replay=replay)  # the last round of the period
    with pytest.raises(BudgetExhausted):
        check(cfg, ctx(), budget=budget, replay=replay)
    clock.now += 40 * 60 + 1  # rounds[1] and [2] leave the period
    check(cfg, ctx(), budget=budget, replay=replay)


def _round_fields(c: RoundContext) -> dict[str, object]:
    return {
        "round_id": c.round_id_hex,
        "requester": c.requester,
        "responder": c.responder,
        "purpose": c.purpose,
        "match_set": c.match_set,
        "protocol": c.protocol,
    }


def _restore(
    cfg: NodeConfig, path: Path, *, replay_memory: int = 10
) -> tuple[QueryBudget, ReplayGuard, int]:
    from nodes.history import read_round_entries, restore_limits

    budget, replay = QueryBudget(clock=Clock()), ReplayGuard(replay_memory)
    restored = restore_limits(
        cfg,
        read_round_entries(path),
        budget=budget,
        replay=replay,
        now=_dt.datetime(2026, 11, 29, 12, 0, tzinfo=_dt.UTC),
    )
    return budget, replay, restored.budget_rounds


def _node_log(pki: Pki, path: Path):  # type: ignore[no-untyped-def]
    from audit.log import AuditLog
    from keys.handles import AuditSigner

    member = pki.issue("justice", "node")
    signer = AuditSigner.load(key=member.audit_key, cert=member.audit_cert, ca=pki.ca)
    at = _dt.datetime(2026, 11, 29, 11, 50, tzinfo=_dt.UTC)
    return AuditLog.open(path, party="justice", signer=signer, clock=lambda: at)


CIVIL_AFFAIRS_CUSTODY = {
    "match_set": "custody",
    "requester": "civil-affairs",
    "purpose": "eligibility-review",
}


def test_claimed_rounds_neither_burn_budget_nor_evict_replay_memory(
    cfg: NodeConfig, pki: Pki, tmp_path: Path
) -> None:
    """Second review, finding 2: what a peer merely claimed counts for nothing at restart.

    The entries are those the servicer wrote before the fix: a peer claiming to be
    civil-affairs trips the identity guard (the fallback wrote ``round_failed``
    without ``authorized``), and refusals filed under the claimed requester.
    """
    path = tmp_path / "j.audit.jsonl"
    log = _node_log(pki, path)
    served = ctx()
    log.append("round_started", **_round_fields(served), query_size=10)
    log.append("round_finished", **_round_fields(served), transcript="ab" * 32)
    for _ in range(3):
        log.append("round_failed", **_round_fields(ctx()), reason="withheld", outcome="failed")
    for _ in range(5):
        log.append("round_refused", **_round_fields(ctx()), reason="purpose not allowed")
    # An older log's failure of an authorized round, without the field: it counts
    # once, through its round_started.
    older = ctx()
    log.append("round_started", **_round_fields(older), query_size=10)
    log.append("round_failed", **_round_fields(older), reason="x", outcome="failed")
    log.close()
    budget, replay, rounds = _restore(cfg, path, replay_memory=3)
    assert rounds == 2
    assert budget.remaining(**CIVIL_AFFAIRS_CUSTODY, budget=cfg.match_sets[0].budget) == 1
    # the 8 claimed pairs did not push the served round out of a memory of 3
    for c in (served, older):
        with pytest.raises(Refused, match="replayed round id"):
            check(cfg, c, budget=budget, replay=replay)


def test_rounds_under_the_placeholder_round_id_still_count(
    cfg: NodeConfig, pki: Pki, tmp_path: Path
) -> None:
    """Second review, finding 4: only a refusal before any round may use the all-zero id."""
    path = tmp_path / "j.audit.jsonl"
    log = _node_log(pki, path)
    for _ in range(2):  # e.g. a coordinator that ran real rounds under the placeholder id
        fields = {**_round_fields(ctx()), "round_id": "0" * 32}
        log.append("round_started", **fields, query_size=10)
    placeholder = {**_round_fields(ctx()), "round_id": "0" * 32, "match_set": "-"}
    log.append("round_refused", **placeholder, reason="unauthenticated")
    log.close()
    budget, _, rounds = _restore(cfg, path)
    assert rounds == 1  # one (round id, match set) pair
    assert budget.remaining(**CIVIL_AFFAIRS_CUSTODY, budget=cfg.match_sets[0].budget) == 2


# -- DistinctRows when rows share their first 8 bytes (second review, finding 1)


def test_distinct_rows_sharing_their_first_word_cost_linear_memory() -> None:
    """Two full chunks with one constant first word: no pairwise comparison.

    Before the fix, the second chunk built an index of 65,536 × 65,536 entries
    (32 GiB); the bound here is a few hundred bytes per row.
    """
    import time
    import tracemalloc

    import numpy as np

    from nodes.handlers import DistinctRows

    n = 65_536
    rng = np.random.default_rng(11)
    chunks = [rng.integers(0, 256, size=(n, 32), dtype=np.uint8) for _ in range(2)]
    for chunk in chunks:
        chunk[:, :8] = 0  # keyed-hash tags are the requester's bytes: hi = 0 for all
    guard = DistinctRows()
    started = time.perf_counter()
    tracemalloc.start()
    try:
        for chunk in chunks:
            guard.add(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * n, f"peak {peak} bytes for {n} rows per chunk"
    assert time.perf_counter() - started < 5
    assert guard.count == 2 * n
    # a real repeat is still caught, at either end of the sorted run and in between
    lo = chunks[0][:, 8:16].copy().view(np.uint64).ravel()
    for row in (int(np.argmin(lo)), int(np.argmax(lo)), 777):
        with pytest.raises(ProtocolError, match="earlier chunk"):
            guard.add(chunks[0][row : row + 1])
    near = chunks[1][5:6].copy()
    near[0, 8] ^= 1  # same first word, second word one bit off: distinct
    guard.add(near)


@pytest.mark.parametrize("seed", range(6))
def test_distinct_rows_agree_with_a_set_on_colliding_words(seed: int) -> None:
    """Few distinct words on both halves: runs of equal first words of every length."""
    import numpy as np

    from nodes.handlers import DistinctRows

    rng = np.random.default_rng(seed)
    guard = DistinctRows()
    seen: set[bytes] = set()
    for _ in range(40):
        size = int(rng.integers(1, 30))
        rows = np.zeros((size, 32), dtype=np.uint8)
        rows[:, 0] = rng.integers(0, 3, size=size)  # first word: 3 values
        rows[:, 8] = rng.integers(0, 60, size=size)  # second word: 60 values
        rows[:, 16:] = rng.integers(0, 256, size=(size, 16))  # ignored (points' tails)
        keys = [bytes(r[:16]) for r in rows]
        repeated = len(set(keys)) < len(keys) or any(k in seen for k in keys)
        if repeated:
            with pytest.raises(ProtocolError, match="repeats an identity"):
                guard.add(rows)
        else:
            guard.add(rows)
            seen.update(keys)
    assert guard.count == len(seen)


def test_bucketed_round_with_unusable_spill_dir_fails_in_one_line(
    cfg: NodeConfig, tmp_path: Path
) -> None:
    (tmp_path / "blocked").write_text("a file where the folder should be")
    node_cfg = _streaming(cfg, 'bucket_rows = 5\nspill_dir = "blocked"')
    c = ctx(protocol="ecdh")
    events: list[Event] = [Start(context=c.to_bytes(), query_size=len(OTHERS))]
    state = NodeState.create(node_cfg, today=lambda: TODAY)
    with pytest.raises(ConfigError) as info:
        run(EcdhDriver(state, "civil-affairs"), events)
    assert str(info.value).startswith(
        "streaming.node.toml: node.spill_dir: cannot create the bucket folder ("
    )
    assert "\n" not in str(info.value) and str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("sent", [9, 10])
def test_nothing_is_answered_before_min_query_size_identities(cfg: NodeConfig, sent: int) -> None:
    """Finding (a probe): a coordinator announced the minimum, sent one identity, read
    its answer (each chunk was answered at once) and cancelled: a membership test with no
    filler. Chunk answers are now held until min_query_size (10 here) identities are in."""
    roster = NODE_IDS[:10] + OTHERS[:5]
    c = ctx()
    req = KeyedHashRequester.generate(c)
    driver = KeyedHashDriver(NodeState.create(cfg, today=lambda: TODAY), "civil-affairs")
    _, gen, inbox = _agreed(driver, req, c, len(roster))
    enc = encode_identities(roster)
    for s in range(sent):  # one identity per chunk, then the requester hangs up
        inbox.append(Chunk(req.tag(enc[s : s + 1]).to_bytes()))
    inbox.append(None)  # type: ignore[arg-type]  # end of stream, no End
    answered: list[Output] = []
    with pytest.raises(ProtocolError):
        for out in gen:
            answered.append(out)
    matches = [out for out in answered if isinstance(out, Matches)]
    assert len(matches) == (0 if sent < 10 else sent)


def test_ecdh_reblinds_nothing_before_min_query_size_identities(cfg: NodeConfig) -> None:
    """The same hold in ecdh: blinded chunks of 1, the requester hangs up after 9 (the
    minimum is 10); the node's set may have gone out, its own points never came back."""
    c = ctx(protocol="ecdh")
    session = EcdhRequesterSession(c, encode_identities(ECDH_ROSTER), chunk_items=1)
    start = session.start()
    events: list[Event] = [start, *list(session.requests())[:9]]  # no End: it breaks off
    driver = EcdhDriver(NodeState.create(cfg, today=lambda: TODAY), "civil-affairs")
    answered: list[Output] = []
    with pytest.raises(ProtocolError):
        for out in driver.run(iter(events)):
            answered.append(out)
    assert [o for o in answered if isinstance(o, Points) and o.stage == "reblinded"] == []
