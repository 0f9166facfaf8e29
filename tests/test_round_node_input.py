"""A whole round in one process against fake nodes that misbehave.

The coordinator's real code runs end to end (``run_round``: config, PKI,
audit log, SQLite state, ``NodeClient`` with its streams, the output folder);
only the gRPC stub is replaced by in-process fake nodes that run the real psi
responders. They cover the coordinator's side of the security review:

1. a node-supplied payload key (an 18-digit number, arbitrary text) or an
   unreadable answer fails only that source; the round completes, the other
   sources' evidence is intact, and nothing the node sent is in the protocol
   log, the state or the outputs;
2. the roster is sent in a random order, not sorted, and the results do not
   depend on it (``evidence.csv`` stays sorted);
3. an ecdh node cannot make us multiply more set points than it announced, nor
   a keyed-hash node make us hold more records per matched identity than
   ``max_records_per_identity``;
4. the node's log anchor (``RoundDone.log_seq``/``log_head``) is logged in our
   ``round_finished`` entry and stored in the sub-round's row, and nothing is
   logged when a node sends none.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import sqlite3
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import numpy.typing as npt
import pytest

import coordinator.round as round_module
from coordinator.client import MatchesFn, MatchSetResult, NodeClient, ProgressFn
from coordinator.config import NodeEntry, load_coordinator_config
from coordinator.round import RoundOutcome, run_round
from coordinator.sub_round import SubRound
from proto import xmatch_pb2 as pb
from proto import xmatch_pb2_grpc as pb_grpc
from psi.context import RoundContext
from psi.ecdh import EcdhResponder
from psi.errors import PeerError
from psi.identifiers import encode_identities
from psi.keyed_hash import KeyedHashResponder
from psi.messages import KeyShare, PointChunk, TagChunk
from tests.conftest import Pki
from tests.stub_client import stub_client, stub_context
from xmatch.synth import make_id

AS_OF = dt.date(2026, 11, 29)
#: A node-supplied payload key that is an identity number (valid check character).
ID_KEY = make_id("150102", dt.date(2010, 1, 1), 123)
#: A node-supplied payload key of arbitrary text.
TEXT_KEY = "NOTE: call 张三 at 13800138000 about the hearing"
#: What the broken node's exception says (must never be logged either).
BROKEN_TEXT = f"internal error for {ID_KEY}"
#: A log head whose hex happens to hold a 16-digit decimal run (a real hash can).
HEAD = "1234567890123456" + "ab" * 24
NEEDLES = (ID_KEY, TEXT_KEY, "张三", "13800138000", BROKEN_TEXT)
#: police's max_records_per_identity in the round's coordinator.toml
FLOOD_BOUND = 3


def _people(n: int) -> list[tuple[str, str, str]]:
    """``n`` children with both parents: (child, father, mother) identity numbers."""
    out = []
    for i in range(n):
        child = make_id("150203", dt.date(2014, 1, 1) + dt.timedelta(days=3 * i), 2 * i + 1)
        father = make_id("152326", dt.date(1980, 1, 1) + dt.timedelta(days=5 * i), 2 * i + 1)
        mother = make_id("150102", dt.date(1984, 1, 1) + dt.timedelta(days=7 * i), 2 * i + 2)
        out.append((child, father, mother))
    return out


PEOPLE = _people(40)
ALL_IDS = sorted(i for person in PEOPLE for i in person)
#: Who each fake match set holds (plus people not on the roster).
OUTSIDERS = [make_id("150402", dt.date(1975, 1, 1) + dt.timedelta(days=i), 7) for i in range(30)]
DEATHS = [p[1] for p in PEOPLE[::4]] + OUTSIDERS[:10]
CUSTODY = [p[2] for p in PEOPLE[1::5]] + OUTSIDERS[10:]
ROGUE = [p[1] for p in PEOPLE[::3]]


# ---------------------------------------------------------------------------
# Fake nodes: real psi responders behind a fake gRPC stub


class _Call:
    def __init__(self, responses: Iterator[Any]) -> None:
        self._responses = responses
        self.cancelled = False

    def __iter__(self) -> Iterator[Any]:
        return self._responses

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Behaviour:
    """What one fake match set does."""

    members: list[str]
    circumstance: str = "DEAD"
    payload_key: str = "start_date"
    raise_after_accept: BaseException | None = None
    anchor: tuple[int, str] = (0, "")
    #: records sent for each matched identity (a flood when above the bound)
    records: int = 1


def _tag_answer(
    responder: KeyedHashResponder, tags: bytes, behaviour: _Behaviour
) -> pb.KeyedHashResponse:
    found = responder.match(TagChunk.from_bytes(tags))
    assert found.row_offsets is not None
    per_row = np.repeat(np.arange(len(found.tags)), np.diff(found.row_offsets) * behaviour.records)
    chunk = pb.MatchChunk(psi=found.without_rows().to_bytes(), tags=per_row.tolist())
    chunk.columns.add(name=behaviour.payload_key, values=["2020-02-02"] * len(per_row))
    return pb.KeyedHashResponse(matches=chunk)


@dataclass
class _FakeNode:
    """A node in-process; behaviour per match set. Records nothing but its calls."""

    sets: dict[str, _Behaviour]
    calls: list[_Call] = field(default_factory=list)

    def KeyedHash(self, requests: Iterator[pb.KeyedHashRequest], timeout: float) -> _Call:
        def answers() -> Iterator[pb.KeyedHashResponse]:
            start = next(requests).start
            ctx = RoundContext.from_bytes(start.context)
            behaviour = self.sets[ctx.match_set]
            responder = KeyedHashResponder.generate(ctx)
            responder.agree(KeyShare.from_bytes(start.key_share, round_id=ctx.round_id))
            responder.load_set(encode_identities(behaviour.members))
            share = responder.key_share().to_bytes()
            yield pb.KeyedHashResponse(accept=pb.RoundAccept(key_share=share))
            if behaviour.raise_after_accept is not None:
                raise behaviour.raise_after_accept
            for request in requests:
                if request.WhichOneof("msg") == "end":
                    seq, head = behaviour.anchor
                    done = pb.RoundDone(transcript=responder.finish(), log_seq=seq, log_head=head)
                    yield pb.KeyedHashResponse(done=done)
                    break
                yield _tag_answer(responder, request.tags, behaviour)
            for _ in requests:  # read the request stream to its end, as gRPC does
                pass

        call = _Call(answers())
        self.calls.append(call)
        return call

    def Ecdh(self, requests: Iterator[pb.EcdhRequest], timeout: float) -> _Call:
        def answers() -> Iterator[pb.EcdhResponse]:
            ctx = RoundContext.from_bytes(next(requests).start.context)
            behaviour = self.sets[ctx.match_set]
            responder = EcdhResponder.generate(ctx, size_classes=lambda n: max(n, 16))
            responder.load_set(encode_identities(behaviour.members))
            yield pb.EcdhResponse(accept=pb.RoundAccept(set_size=responder.set_size))
            for request in requests:
                if request.WhichOneof("msg") == "end":
                    for chunk in responder.set_chunks(8):
                        yield pb.EcdhResponse(set_points=chunk.to_bytes())
                    seq, head = behaviour.anchor
                    total = responder.set_size  # done declares the set total (RoundDone.set_size)
                    done = pb.RoundDone(
                        transcript=responder.finish(), log_seq=seq, log_head=head, set_size=total
                    )
                    yield pb.EcdhResponse(done=done)
                    break
                blinded = PointChunk.from_bytes(request.blinded, stage="blinded")
                yield pb.EcdhResponse(reblinded=responder.reblind(blinded).to_bytes())
            for _ in requests:  # read the request stream to its end, as gRPC does
                pass

        call = _Call(answers())
        self.calls.append(call)
        return call


FAKES: dict[str, _FakeNode] = {
    "police": _FakeNode(
        {
            "deaths": _Behaviour(DEATHS, anchor=(41, HEAD)),
            "notes": _Behaviour(ROGUE, payload_key=ID_KEY),
            "remarks": _Behaviour(ROGUE, payload_key=TEXT_KEY),
            "broken": _Behaviour(ROGUE, raise_after_accept=ValueError(BROKEN_TEXT)),
            # one record more per person than police's max_records_per_identity
            "flood": _Behaviour(ROGUE, records=FLOOD_BOUND + 1),
        }
    ),
    "justice": _FakeNode({"custody": _Behaviour(CUSTODY, circumstance="IMPRISONED")}),
}
PROTOCOLS = {"police": "keyed-hash", "justice": "ecdh"}


def _capabilities(name: str) -> pb.Capabilities:
    return pb.Capabilities(
        node=name,
        match_sets=[
            pb.MatchSetInfo(name=ms, circumstance=b.circumstance, protocols=[PROTOCOLS[name]])
            for ms, b in FAKES[name].sets.items()
        ],
        max_chunk_bytes=1 << 20,
    )


class _RecordingClient(NodeClient):
    """The real client, its stub replaced by a fake node; records what it is given."""

    given: ClassVar[list[npt.NDArray[np.uint8]]] = []

    def __init__(self, entry: NodeEntry, **kwargs: Any) -> None:
        super().__init__(entry, **kwargs)
        self._stub = cast(pb_grpc.NodeStub, FAKES[entry.name])
        self._caps = _capabilities(entry.name)

    def query(
        self,
        match_set: str,
        *,
        context: RoundContext,
        identities: npt.NDArray[np.uint8],
        progress: ProgressFn | None = None,
        on_matches: MatchesFn | None = None,
    ) -> MatchSetResult:
        _RecordingClient.given.append(np.array(identities, copy=True))
        return super().query(
            match_set,
            context=context,
            identities=identities,
            progress=progress,
            on_matches=on_matches,
        )


# ---------------------------------------------------------------------------
# A coordinator folder


def _write_roster(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["child_id", "child_name", "father_id", "mother_id", "status", "category"])
        for n, (child, father, mother) in enumerate(PEOPLE):
            writer.writerow([child, f"child {n}", father, mother, "supported", "orphan"])


def _config(root: Path, pki: Pki) -> Path:
    member = pki.issue("civil-affairs", "coordinator")
    _write_roster(root / "data" / "roster.csv")
    text = f"""\
[coordinator]
name = "civil-affairs"
ca = "{pki.ca}"
cert = "{member.cert}"
key = "{member.key}"
audit_key = "{member.audit_key}"
audit_cert = "{member.audit_cert}"
audit_log = "logs/civil-affairs.audit.jsonl"
state = "state/coordinator.sqlite"
roster = "data/roster.csv"
purpose = "eligibility-review"
workers = 1
chunk_items = 16

[[nodes]]
name = "police"
address = "127.0.0.1:9"
match_sets = ["deaths", "notes", "remarks", "broken", "flood"]
protocol = "keyed-hash"
retries = 0
max_records_per_identity = {FLOOD_BOUND}

[[nodes]]
name = "justice"
address = "127.0.0.1:9"
match_sets = ["custody"]
protocol = "ecdh"
retries = 0
"""
    path = root / "coordinator.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class _Run:
    root: Path
    outcome: RoundOutcome
    given: list[npt.NDArray[np.uint8]]

    @property
    def log(self) -> list[dict[str, Any]]:
        text = (self.root / "logs" / "civil-affairs.audit.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines()]

    def state(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.root / "state" / "coordinator.sqlite")
        try:
            return list(conn.execute(sql).fetchall())
        finally:
            conn.close()

    def written(self) -> str:
        """Every byte the round wrote: log, state (SQL dump and raw files), outputs."""
        parts = [
            p.read_bytes().decode("utf-8", "replace") for p in self.root.rglob("*") if p.is_file()
        ]
        conn = sqlite3.connect(self.root / "state" / "coordinator.sqlite")
        try:
            parts.extend(conn.iterdump())
        finally:
            conn.close()
        return "\n".join(p for p in parts)


@pytest.fixture(scope="module")
def hostile_round(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> _Run:
    root = tmp_path_factory.mktemp("hostile-round")
    config = load_coordinator_config(_config(root, pki))
    _RecordingClient.given = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(round_module, "NodeClient", _RecordingClient)
        outcome = run_round(config, as_of=AS_OF, out=root / "round-1", lang="en")
    # the roster file holds every needle's opposite: leave only what the round wrote
    (root / "data" / "roster.csv").unlink()
    return _Run(root, outcome, list(_RecordingClient.given))


def _evidence(root: Path) -> list[list[str]]:
    with (root / "round-1" / "evidence.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))[1:]


# ---------------------------------------------------------------------------
# (1) node-supplied text fails only its source and is never written


def test_hostile_payload_keys_fail_only_their_source(hostile_round: _Run) -> None:
    outcome = hostile_round.outcome
    status = {s.source: s.status for s in outcome.sub_rounds}
    assert status == {
        "police/deaths": "ok",
        "police/notes": "failed",
        "police/remarks": "failed",
        "police/broken": "failed",
        "police/flood": "failed",
        "justice/custody": "ok",
    }
    hostile = ["police/notes", "police/remarks", "police/broken", "police/flood"]
    assert outcome.failed_sources == hostile
    details = {s.source: s.detail for s in outcome.sub_rounds if s.status != "ok"}
    for source in ("police/notes", "police/remarks"):
        assert details[source].startswith(
            "out of protocol: an unknown payload field is not an evidence column"
        )
    assert details["police/broken"] == "out of protocol: unreadable answer (ValueError)"
    # refused at its first answer: nothing delivered, nothing kept
    assert details["police/flood"] == (
        f"out of protocol: the responder sent more than {FLOOD_BOUND} records for one "
        "identity (max_records_per_identity)"
    )
    # the decisions know the sources they could not use
    assert set(hostile) <= set(outcome.decisions.failed_sources)
    # the round completed and says so in the state
    assert hostile_round.state("SELECT status FROM rounds") == [("completed",)]
    failed = hostile_round.state(
        "SELECT match_set, status FROM sub_rounds WHERE status = 'failed' ORDER BY match_set"
    )
    assert failed == [
        ("broken", "failed"),
        ("flood", "failed"),
        ("notes", "failed"),
        ("remarks", "failed"),
    ]
    # and in the protocol log, one round_failed per hostile source
    ends = {e["match_set"]: e for e in hostile_round.log if e["event"] in ("round_failed",)}
    assert sorted(ends) == ["broken", "flood", "notes", "remarks"]
    assert all(e["outcome"] == "failed" for e in ends.values())


def test_other_sources_evidence_is_intact(hostile_round: _Run) -> None:
    roster = set(ALL_IDS)
    want = sorted(
        [[i, "DEAD", "police/deaths", "2020-02-02", "", "", ""] for i in DEATHS if i in roster]
        + [[i, "IMPRISONED", "justice/custody", "", "", "", ""] for i in CUSTODY if i in roster]
    )
    got = _evidence(hostile_round.root)
    assert sorted(got) == want and want
    # the hostile sets' members (fathers in ROGUE) are no evidence of theirs
    assert not [r for r in got if r[2] not in ("police/deaths", "justice/custody")]
    assert len(hostile_round.outcome.evidence) == len(want)


def test_nothing_node_supplied_is_written(hostile_round: _Run) -> None:
    written = hostile_round.written()
    assert "round_failed" in written and "police/notes" in written  # the search sees the files
    for needle in NEEDLES:
        assert needle not in written, needle
    # and no identity number outside evidence.csv / decisions.json / report.html
    for path in hostile_round.root.rglob("*"):
        if path.is_file() and path.parent.name != "round-1":
            text = path.read_bytes().decode("utf-8", "replace")
            assert not any(i in text for i in ALL_IDS), path


# ---------------------------------------------------------------------------
# (2) the query order is random; results do not depend on it


def test_roster_is_sent_in_a_random_order(hostile_round: _Run) -> None:
    given = hostile_round.given
    assert len(given) == 6
    in_order = encode_identities(ALL_IDS)
    for sent in given:
        assert sent.shape == in_order.shape
        assert not np.array_equal(sent, in_order)  # not sorted (p = 1/120! by chance)
        # the same identities, each once
        assert np.array_equal(np.unique(sent, axis=0), np.unique(in_order, axis=0))
    # one order per round, the same for every sub-round
    assert all(np.array_equal(given[0], sent) for sent in given)


def test_evidence_csv_is_sorted_whatever_the_query_order(hostile_round: _Run) -> None:
    got = _evidence(hostile_round.root)
    sources = [r[2] for r in got]
    # sources in configuration order, identities ascending within each
    assert sources == sorted(sources, key=["police/deaths", "justice/custody"].index)
    for source in ("police/deaths", "justice/custody"):
        ids = [r[0] for r in got if r[2] == source]
        assert ids == sorted(ids) and ids


def test_query_permutation_uses_the_rng() -> None:
    from coordinator.round import query_permutation

    n = 1000
    first = query_permutation(n)
    assert sorted(first.tolist()) == list(range(n))
    assert first.tolist() != list(range(n))
    assert query_permutation(n).tolist() != first.tolist()
    # it is a function of the rng's bytes alone (injected randomness)
    fixed = bytes(range(256)) * (8 * n // 256 + 1)
    assert (
        query_permutation(n, rng=lambda k: fixed[:k]).tolist()
        == query_permutation(n, rng=lambda k: fixed[:k]).tolist()
    )
    with pytest.raises(ValueError, match="wrong number"):
        query_permutation(4, rng=lambda _k: b"\0" * 8)


# ---------------------------------------------------------------------------
# (4) the node's log anchor


def test_node_log_anchor_is_logged_and_stored(hostile_round: _Run) -> None:
    finished = {e["match_set"]: e for e in hostile_round.log if e["event"] == "round_finished"}
    assert sorted(finished) == ["custody", "deaths"]
    assert finished["deaths"]["node_log_seq"] == 41
    assert finished["deaths"]["node_log_head"] == HEAD
    # a node that sends no anchor gets none logged
    assert "node_log_seq" not in finished["custody"]
    assert "node_log_head" not in finished["custody"]
    rows = dict(
        (ms, (seq, head))
        for ms, seq, head in hostile_round.state(
            "SELECT match_set, node_log_seq, node_log_head FROM sub_rounds"
        )
    )
    assert rows["deaths"] == (41, HEAD)
    assert rows["custody"] == (None, None)
    assert rows["notes"] == (None, None)
    sub = {s.source: s for s in hostile_round.outcome.sub_rounds}
    assert (sub["police/deaths"].node_log_seq, sub["police/deaths"].node_log_head) == (41, HEAD)


@pytest.mark.parametrize(
    ("seq", "head"),
    [
        (5, ""),
        (0, HEAD),
        (5, HEAD.upper()),
        (5, HEAD[:-1]),
        (5, TEXT_KEY[:40].ljust(64, "0")),  # 64 characters, not hex
        (5, "0" * 63 + "\n"),
        (10**15, HEAD),
    ],
)
def test_malformed_log_anchor_is_out_of_protocol(seq: int, head: str) -> None:
    from coordinator.client import log_anchor

    with pytest.raises(PeerError) as info:
        log_anchor("police/deaths", pb.RoundDone(log_seq=seq, log_head=head))
    reason = info.value.reason
    assert reason == "out of protocol: malformed log anchor in RoundDone"
    assert log_anchor("police/deaths", pb.RoundDone()) is None
    assert log_anchor("p/d", pb.RoundDone(log_seq=3, log_head=HEAD)) == (3, HEAD)


# ---------------------------------------------------------------------------
# (3) an ecdh node cannot make us compute past the set size it announced


class _Flood:
    """An ecdh node that announces ``declared`` set points and then sends far more."""

    def __init__(self, declared: int, chunks: int, per_chunk: int) -> None:
        self.declared, self.chunks, self.per_chunk = declared, chunks, per_chunk
        self.sent = 0
        self.call: _Call | None = None

    def Ecdh(self, requests: Iterator[pb.EcdhRequest], timeout: float) -> _Call:
        def answers() -> Iterator[pb.EcdhResponse]:
            ctx = RoundContext.from_bytes(next(requests).start.context)
            yield pb.EcdhResponse(accept=pb.RoundAccept(set_size=self.declared))
            rng = np.random.default_rng(5)
            for seq in range(self.chunks):
                points = rng.integers(0, 256, size=(self.per_chunk, 32), dtype=np.uint8)
                points[:, 31] &= 0x7F
                points[:, 0] |= 0x10  # never a low-order point
                chunk = PointChunk(round_id=ctx.round_id, seq=seq, stage="set", points=points)
                self.sent += 1
                yield pb.EcdhResponse(set_points=chunk.to_bytes())

        self.call = _Call(answers())
        return self.call


@pytest.mark.parametrize("declared", [0, 10, 150102201001011234])
def test_ecdh_set_beyond_the_announced_size_is_refused_early(declared: int) -> None:
    flood = _Flood(declared=declared, chunks=200, per_chunk=4)
    ctx = stub_context("ecdh", as_of=AS_OF)
    with stub_client(flood, "ecdh") as client, pytest.raises(PeerError) as info:
        client.query("custody", context=ctx, identities=encode_identities(ALL_IDS))
    reason = info.value.reason
    assert flood.call is not None
    if declared < 10**14:
        assert flood.call.cancelled
        assert reason == (
            f"out of protocol: set chunk {declared // 4} takes the responder's set past "
            f"the {declared} points it announced"
        )
        # refused at the first chunk that crosses the bound, not at the end
        assert flood.sent == declared // 4 + 1
    else:
        # an absurd declaration is refused at accept, before any set point is
        # multiplied, and the failure quotes none of the node's numbers
        assert reason == "out of protocol: announced set size above max_set_size (50000000)"
        assert flood.sent == 0


class _RecordFlood:
    """A keyed-hash node whose first answer gives its one matched identity ``records``
    records, each with a payload date; the real responder makes the psi part."""

    def __init__(self, member: str, records: int) -> None:
        self.member = member
        # built before the round: the flood's own making is not the coordinator's memory
        self.flood = pb.MatchChunk(tags=[0] * records)
        self.flood.columns.add(name="start_date", values=["2020-02-02"] * records)
        self.sent = 0
        self.call: _Call | None = None

    def KeyedHash(self, requests: Iterator[pb.KeyedHashRequest], timeout: float) -> _Call:
        def answers() -> Iterator[pb.KeyedHashResponse]:
            start = next(requests).start
            ctx = RoundContext.from_bytes(start.context)
            responder = KeyedHashResponder.generate(ctx)
            responder.agree(KeyShare.from_bytes(start.key_share, round_id=ctx.round_id))
            responder.load_set(encode_identities([self.member]))
            yield pb.KeyedHashResponse(
                accept=pb.RoundAccept(key_share=responder.key_share().to_bytes())
            )
            for request in requests:
                if request.WhichOneof("msg") == "end":
                    return  # no done: the round cannot succeed
                found = responder.match(TagChunk.from_bytes(request.tags))
                chunk = pb.MatchChunk(psi=found.without_rows().to_bytes())
                if len(found.tags):
                    chunk.MergeFrom(self.flood)
                self.sent += 1
                yield pb.KeyedHashResponse(matches=chunk)

        self.call = _Call(answers())
        return self.call


@pytest.mark.parametrize(("records", "refused"), [(1000, False), (1001, True)])
def test_keyed_hash_records_per_identity_default_bound(records: int, refused: bool) -> None:
    flood = _RecordFlood(ALL_IDS[0], records)
    delivered: list[int] = []
    with stub_client(flood) as client:
        assert client.entry.max_records_per_identity == 1000  # the default
        try:
            client.query(
                "deaths",
                context=stub_context(as_of=AS_OF),
                identities=encode_identities(ALL_IDS),
                on_matches=lambda indices, payload: delivered.append(len(indices)),
            )
        except PeerError as exc:
            reason = exc.reason
        else:  # pragma: no cover - this node never sends done
            pytest.fail("a round without done succeeded")
    assert flood.call is not None
    if refused:  # at the first answer, the stream cancelled
        assert reason == (
            "out of protocol: the responder sent more than 1000 records for one identity "
            "(max_records_per_identity)"
        )
        assert delivered == [] and flood.sent == 1 and flood.call.cancelled
    else:  # within the bound: delivered, then the stream ends without done
        assert delivered[0] == sum(delivered) == 1000 and reason == "stream ended early"


def test_a_flood_of_records_is_refused_before_its_payload_becomes_python_objects() -> None:
    """Measured once: 1.3M records on one tag took the coordinator to 1.6 GB. The refusal
    reads the tags only; the flood's 400k payload values never become str objects."""
    records = 400_000
    flood = _RecordFlood(ALL_IDS[0], records)
    with stub_client(flood, max_records_per_identity=5) as client:
        tracemalloc.start()
        try:
            with pytest.raises(PeerError, match=r"more than 5 records .*max_records_per_identity"):
                client.query(
                    "deaths",
                    context=stub_context(as_of=AS_OF),
                    identities=encode_identities(ALL_IDS),
                )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # the tags as one int64 array (3.2 MB) and change; a list of the column's values
    # alone would be 400k str objects (over 20 MB)
    assert peak < 8 * 2**20, peak


def _offline_import(records: int, *, bound: int) -> SubRound:
    """An offline keyed-hash sub-round whose node sent ``records`` records per matched
    identity, imported with ``max_records_per_identity = bound`` in its node entry."""
    from coordinator.offline_runner import (
        PendingSubRound,
        import_sub_round,
        outgoing,
        responder_share,
    )

    ctx = stub_context(as_of=AS_OF)
    encoded = encode_identities(ALL_IDS)
    share, node_draw = responder_share(ctx)
    requests, draws = outgoing(ctx, encoded, share, chunk_items=16)
    pending = PendingSubRound(
        node="police",
        match_set="deaths",
        protocol="keyed-hash",
        context=ctx.to_bytes(),
        draws=draws,
        share=share,
        request_sha256=hashlib.sha256(b"".join(requests)).hexdigest(),
    )
    # the node: its responder from the draw the request carried, as nodes/answer.py
    responder = KeyedHashResponder.generate(ctx, rng=io.BytesIO(node_draw).read)
    assert responder.key_share().to_bytes() == share
    parsed = [pb.KeyedHashRequest.FromString(raw) for raw in requests]
    responder.agree(KeyShare.from_bytes(parsed[0].start.key_share, round_id=ctx.round_id))
    responder.load_set(encode_identities(ROGUE))
    behaviour = _Behaviour(ROGUE, records=records)
    answers = [pb.KeyedHashResponse(accept=pb.RoundAccept(key_share=share))]
    answers += [_tag_answer(responder, r.tags, behaviour) for r in parsed if r.HasField("tags")]
    answers.append(pb.KeyedHashResponse(done=pb.RoundDone(transcript=responder.finish())))
    parts = [a.SerializeToString() for a in answers]
    entry = NodeEntry.model_validate(
        {
            "name": "police",
            "transport": "offline",
            "match_sets": ["deaths"],
            "protocol": "keyed-hash",
            "max_records_per_identity": bound,
        }
    )
    return import_sub_round(
        pending,
        entry,
        answer={"status": "ok", "parts": [0, len(parts)], "circumstance": "DEAD"},
        parts=parts,
        encoded=encoded,
        identities=ALL_IDS,
        node_display_name="",
        chunk_items=16,
    )


def test_offline_import_bounds_records_per_identity_as_online() -> None:
    within = _offline_import(2, bound=2)
    assert within.status == "ok", within.detail
    assert len(within.rows) == 2 * len(ROGUE)  # two records for each father matched
    over = _offline_import(3, bound=2)
    assert over.status == "failed" and over.rows == ()
    assert over.detail == (
        "out of protocol: the responder sent more than 2 records for one identity "
        "(max_records_per_identity)"
    )


def test_state_database_gains_the_anchor_columns(tmp_path: Path) -> None:
    """A state file from before the anchor columns is upgraded when opened."""
    from coordinator.state import RoundState

    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE rounds (round_id TEXT PRIMARY KEY, as_of TEXT NOT NULL, "
        "started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL, "
        "out_dir TEXT NOT NULL, pid INTEGER NOT NULL, detail TEXT);"
        "CREATE TABLE sub_rounds (round_id TEXT NOT NULL, node TEXT NOT NULL, "
        "match_set TEXT NOT NULL, protocol TEXT NOT NULL, status TEXT NOT NULL, "
        "matches INTEGER, seconds REAL, transcript TEXT, detail TEXT, "
        "PRIMARY KEY (round_id, node, match_set));"
    )
    conn.close()
    with RoundState.open(db) as state:
        state.start_round(
            "r1", as_of=AS_OF, out_dir=tmp_path, sub_rounds=[("police", "deaths", "keyed-hash")]
        )
        state.finish_sub_round(
            "r1",
            "police",
            "deaths",
            status="completed",
            matches=3,
            seconds=0.5,
            transcript=hashlib.sha256(b"t").digest(),
            detail=None,
            node_log_seq=7,
            node_log_head=HEAD,
        )
        (record,) = state.sub_rounds("r1")
    assert (record.node_log_seq, record.node_log_head) == (7, HEAD)


@pytest.mark.parametrize(
    ("circumstance", "announced", "ok"),
    [
        ("SERVICE", "", True),  # an older node: gaps
        ("SERVICE", "gaps", True),
        ("SERVICE", "needs", True),
        ("SERVICE", "wants", False),
        ("IMPRISONED", "wants", True),  # meaningless for an evidence set, ignored
    ],
)
def test_unknown_service_report_is_out_of_protocol(
    circumstance: str, announced: str, ok: bool
) -> None:
    client = stub_client(object(), "ecdh")
    client._caps = pb.Capabilities(
        node="justice",
        match_sets=[
            pb.MatchSetInfo(
                name="custody",
                circumstance=circumstance,
                protocols=["ecdh"],
                service_report=announced,
            )
        ],
    )
    with client:
        if ok:
            assert client.match_set_info("custody").service_report == announced
        else:
            with pytest.raises(PeerError) as info:
                client.match_set_info("custody")
            assert info.value.reason == "out of protocol: unknown service_report"


# ---------------------------------------------------------------------------
# the coordinator's log is closed whatever fails at the end of a round


def test_log_gets_its_shutdown_and_checkpoint_even_if_the_state_fails_to_close(
    tmp_path: Path, pki: Pki
) -> None:
    from coordinator.state import RoundState

    def broken_close(self: RoundState) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    config = load_coordinator_config(_config(tmp_path, pki))
    _RecordingClient.given = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(round_module, "NodeClient", _RecordingClient)
        mp.setattr(RoundState, "close", broken_close)
        with pytest.raises(sqlite3.OperationalError):
            run_round(config, as_of=AS_OF, out=tmp_path / "round-1", lang="en")
    text = (tmp_path / "logs" / "civil-affairs.audit.jsonl").read_text(encoding="utf-8")
    events = [json.loads(line)["event"] for line in text.splitlines()]
    assert events[-2:] == ["shutdown", "checkpoint"]


@pytest.mark.parametrize(
    "value",
    [
        "110105199003072316",  # an identity number: it once read as 1101-05-19
        "2020-01-01xyz",  # a date and trailing text
        "2020-01-01" + "x" * 1000,
        "20200101",  # the basic ISO form: not what the contract says
        "1101-05-19",  # no record's date
        "2020-02-30",
    ],
)
def test_a_payload_date_is_exactly_a_date(value: str) -> None:
    """Finding (a probe with a fake node): ``date.fromisoformat(value[:10])`` took any text
    that starts like a date, and a reason then quoted "1101年5月19日"."""
    from coordinator.records import match_rows
    from psi.errors import XmatchError
    from psi.session.messages import PayloadColumns

    with pytest.raises(XmatchError, match="start_date is not a YYYY-MM-DD date") as info:
        match_rows(
            source="police/deaths",
            circumstance="DEAD",
            indices=np.array([0], dtype=np.int64),
            payload=PayloadColumns(1, {"start_date": [value]}),
            identities=["150422198501304280"],
        )
    assert value not in str(info.value)


def test_a_payload_date_may_carry_a_time_of_day() -> None:
    from coordinator.records import match_rows
    from psi.session.messages import PayloadColumns

    rows = match_rows(
        source="police/deaths",
        circumstance="DEAD",
        indices=np.array([0, 1], dtype=np.int64),
        payload=PayloadColumns(2, {"start_date": ["2020-01-01 08:30:00", "2021-03-04"]}),
        identities=["150422198501304280", "150422198501304281"],
    )
    assert [r.start_date for r in rows] == [dt.date(2020, 1, 1), dt.date(2021, 3, 4)]


def test_payload_values_parsed_once_per_sub_round_give_the_same_rows() -> None:
    """A sub-round keeps its parsed payload values from chunk to chunk (``parsed``): the
    rows are those of chunks parsed on their own, and a bad value in a later chunk
    is still refused, whatever the earlier chunks held."""
    from coordinator.records import EvidenceRow, match_rows
    from psi.errors import XmatchError
    from psi.session.messages import PayloadColumns

    people = ["150422198501304280", "150422198501304281", "150422198501304282"]
    chunks = [
        {"start_date": ["2020-01-01", "2021-03-04"], "end_date": ["", "2024-05-06"]},
        {"start_date": ["2021-03-04", "2019-12-31"], "end_date": ["2024-05-06", ""]},
    ]
    parsed: dict[str, dict[str, object]] = {}
    kept: list[EvidenceRow] = []
    alone: list[EvidenceRow] = []
    for columns in chunks:
        for memo, out in ((parsed, kept), (None, alone)):
            out.extend(
                match_rows(
                    source="justice/custody",
                    circumstance="IMPRISONED",
                    indices=np.array([0, 2], dtype=np.int64),
                    payload=PayloadColumns(2, columns),
                    identities=people,
                    parsed=memo,
                )
            )
    assert kept == alone
    assert [r.start_date for r in kept] == [
        dt.date(2020, 1, 1),
        dt.date(2021, 3, 4),
        dt.date(2021, 3, 4),
        dt.date(2019, 12, 31),
    ]
    assert set(parsed["start_date"]) == {"2020-01-01", "2021-03-04", "2019-12-31"}
    with pytest.raises(XmatchError, match="end_date is not a YYYY-MM-DD date"):
        match_rows(
            source="justice/custody",
            circumstance="IMPRISONED",
            indices=np.array([1], dtype=np.int64),
            payload=PayloadColumns(1, {"start_date": ["2020-01-01"], "end_date": ["2024-13-01"]}),
            identities=people,
            parsed=parsed,
        )
    # each field keeps its own parsed values: a grade "2" is no start date "2"
    graded = {"disability_grade": ["2"], "disability_category": ["1"]}
    match_rows(
        source="dpf/disability",
        circumstance="SEVERE_DISABILITY",
        indices=np.array([0], dtype=np.int64),
        payload=PayloadColumns(1, graded),
        identities=people,
        parsed=parsed,
    )
    with pytest.raises(XmatchError, match="start_date is not a YYYY-MM-DD date"):
        match_rows(
            source="dpf/disability",
            circumstance="SEVERE_DISABILITY",
            indices=np.array([0], dtype=np.int64),
            payload=PayloadColumns(1, {"start_date": ["2"]}),
            identities=people,
            parsed=parsed,
        )
