"""Both roles of each session driven in memory, without gRPC (psi.session).

The in-memory runner here is the whole transport: it moves each message from one
session to the other. Both protocols, the X25519 and SM2 ecdh suites, the aes and
sm4 keyed-hash PRFs; out-of-order and illegal messages raise ProtocolError.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import ProtocolError, RoundContext, VerificationError, encode_identities, size_class
from psi.messages import MatchChunk
from psi.session import (
    Accept,
    Chunk,
    Done,
    EcdhRequesterSession,
    EcdhResponderSession,
    End,
    Evidence,
    KeyedHashRequesterSession,
    KeyedHashResponderSession,
    Matches,
    PayloadColumns,
    Points,
    RequesterResult,
    ResponderMessage,
    Start,
)
from tests.test_psi_context import make_context
from tests.test_psi_keyed_hash import ids_from_ints, rng_for

SMALL = functools.partial(size_class, minimum=8)
SM2_SUITE = "SM2_XMD:SM3_SSWU_RO_"
ECDH_SUITES = ["x25519-sha256-u", SM2_SUITE]
PRFS = ["aes128-ecb-v1", "aes256-ecb-v1", "sm4-ecb-v1"]


def kh_context(prf: str, seed: int = 1) -> RoundContext:
    return make_context(protocol="keyed-hash", params=[("prf", prf)], rng=rng_for(seed))


def ecdh_context(suite: str, seed: int = 1) -> RoundContext:
    return make_context(protocol="ecdh", params=[("suite", suite)], rng=rng_for(seed))


def _payload(rows: npt.NDArray[np.int64]) -> PayloadColumns:
    return PayloadColumns(len(rows), {"row": [str(int(r)) for r in rows]})


def keyed_hash_round(
    ctx: RoundContext, roster: list[str], members: list[str], *, chunk: int = 3, streamed: bool
) -> tuple[RequesterResult, Done]:
    req = KeyedHashRequesterSession(
        ctx, encode_identities(roster), chunk_items=chunk, rng=rng_for(2)
    )
    resp = KeyedHashResponderSession(rng=rng_for(3))
    resp.receive_start(req.start())
    assert req.next_request() is None  # keyed-hash sends no tag before accept
    enc = encode_identities(members)
    req.receive(resp.accept(None if streamed else enc, _payload))
    for message in req.requests():
        answer = resp.receive(message)
        if answer is not None:
            req.receive(answer)
    if streamed:
        for lo in range(0, len(enc), 4):
            resp.match_batch(enc[lo : lo + 4])

        def payload(result: MatchChunk) -> PayloadColumns:
            assert result.rows is not None
            return _payload(result.rows)

        for answer in resp.streamed_matches(payload):
            req.receive(answer)
    done = resp.done()
    req.receive(done)
    return req.result(), done


def ecdh_round(
    ctx: RoundContext,
    roster: list[str],
    members: list[str],
    *,
    chunk: int = 3,
    executor: concurrent.futures.Executor | None = None,
) -> tuple[RequesterResult, Done]:
    enc = encode_identities(roster)
    req = EcdhRequesterSession(ctx, enc, chunk_items=chunk, rng=rng_for(2), executor=executor)
    resp = EcdhResponderSession(rng=rng_for(3), size_classes=SMALL, executor=executor)
    resp.receive_start(req.start())
    resp.open().load_set(encode_identities(members))
    req.receive(resp.accept(4))
    for message in req.requests():
        answer = resp.receive(message)
        if answer is not None:
            req.receive(answer)
        point = resp.next_set_chunk()  # the set interleaves with the answers
        if point is not None:
            req.receive(point)
    while (point := resp.next_set_chunk()) is not None:
        req.receive(point)
    done = resp.done()
    req.receive(done)
    return req.result(), done


def _found(result: RequesterResult, roster: list[str]) -> set[str]:
    return {roster[i] for i in result.indices.tolist()}


ROSTER = ids_from_ints(list(range(0, 20)))
MEMBERS = ids_from_ints([*range(5, 12), 40, 41, 5])


@pytest.mark.parametrize("prf", PRFS)
@pytest.mark.parametrize("streamed", [False, True])
def test_keyed_hash_sessions_in_memory(prf: str, streamed: bool) -> None:
    result, done = keyed_hash_round(kh_context(prf), ROSTER, MEMBERS, streamed=streamed)
    assert _found(result, ROSTER) == set(ROSTER[5:12])
    # ROSTER[5] has two records: two evidence rows, each with its row's payload
    assert len(result.indices) == 8 and len(result.payload) == 8
    # each evidence row carries the payload of the member row it matched
    rows = [int(r) for r in result.payload.columns["row"]]
    assert [MEMBERS[r] for r in rows] == [ROSTER[i] for i in result.indices.tolist()]
    assert result.transcript == done.transcript and result.set_size == 0
    assert done.matches == 7 and done.chunks == 7


@pytest.mark.parametrize("suite", ECDH_SUITES)
def test_ecdh_sessions_in_memory(suite: str) -> None:
    result, done = ecdh_round(ecdh_context(suite), ROSTER, MEMBERS)
    assert _found(result, ROSTER) == set(ROSTER[5:12])
    assert result.set_size == done.set_size == 10  # 9 distinct: class 8, then ceil(8 * 1.25)
    assert result.transcript == done.transcript
    assert result.payload == PayloadColumns(len(result.indices))


def test_payload_columns_join_in_order_and_check_their_lengths() -> None:
    a = PayloadColumns(2, {"start_date": ["2020-01-01", ""]})
    b = PayloadColumns(1, {"end_date": ["2021-01-01"]})
    joined = PayloadColumns.joined([a, PayloadColumns(1), b])
    assert len(joined) == 4
    assert joined.columns == {
        "start_date": ["2020-01-01", "", "", ""],
        "end_date": ["", "", "", "2021-01-01"],
    }
    joined.check()
    with pytest.raises(ProtocolError, match="length"):
        PayloadColumns(2, {"start_date": ["2020-01-01"]}).check()


def test_requester_refuses_a_payload_column_shorter_than_its_records() -> None:
    req, resp, start = _kh_pair()
    resp.receive_start(start)
    req.receive(resp.accept(encode_identities(ROSTER[:2]), _payload))
    answer = resp.receive(next(req.requests()))
    assert isinstance(answer, Matches) and len(answer.tags) == 2
    short = PayloadColumns(2, {"row": list(answer.payload.columns["row"])[:1]})
    with pytest.raises(ProtocolError, match="payload column's length"):
        req.receive(dataclasses.replace(answer, payload=short))


class _Unread(Sequence[str]):
    """A payload column that fails the test if anything reads it, its length included."""

    def __len__(self) -> int:
        raise AssertionError("a payload column was read")

    def __getitem__(self, index: int | slice) -> Any:
        raise AssertionError("a payload column was read")


def _answer_with_records(records: int, *, limit: int) -> tuple[KeyedHashRequesterSession, Matches]:
    """A requester bounded to ``limit`` records per identity and the honest answer to its
    first chunk: ROSTER[0] holds ``records`` records, ROSTER[1] one."""
    ctx = kh_context("aes128-ecb-v1")
    req = KeyedHashRequesterSession(
        ctx, encode_identities(ROSTER[:2]), chunk_items=2, max_records_per_identity=limit
    )
    resp = KeyedHashResponderSession()
    resp.receive_start(req.start())
    req.receive(resp.accept(encode_identities([ROSTER[0]] * records + [ROSTER[1]]), _payload))
    answer = resp.receive(next(req.requests()))
    assert isinstance(answer, Matches) and len(answer.tags) == records + 1
    return req, answer


def test_requester_takes_exactly_max_records_per_identity() -> None:
    req, answer = _answer_with_records(5, limit=5)
    evidence = req.receive(answer)
    assert evidence is not None
    assert sorted(evidence.indices.tolist()) == [0, 0, 0, 0, 0, 1]
    assert len(evidence.payload.columns["row"]) == 6


def test_requester_refuses_one_record_more_than_max_records_per_identity() -> None:
    req, answer = _answer_with_records(6, limit=5)
    with pytest.raises(ProtocolError) as info:
        req.receive(answer)
    assert info.value.diagnostics() == (
        "the responder sent more than 5 records for one identity (max_records_per_identity)"
    )


def test_a_flood_of_records_is_refused_before_any_payload_column_is_read() -> None:
    req, answer = _answer_with_records(6, limit=5)
    unread = dataclasses.replace(
        answer, payload=PayloadColumns(len(answer.tags), {"row": _Unread()})
    )
    with pytest.raises(ProtocolError, match="max_records_per_identity"):
        req.receive(unread)
    # within the bound, the same column is read (the probe works)
    req, answer = _answer_with_records(5, limit=5)
    unread = dataclasses.replace(
        answer, payload=PayloadColumns(len(answer.tags), {"row": _Unread()})
    )
    with pytest.raises(AssertionError, match="payload column was read"):
        req.receive(unread)


def test_requester_copies_a_runners_payload_sequences_into_lists() -> None:
    req, answer = _answer_with_records(2, limit=5)
    as_tuple = {"row": tuple(answer.payload.columns["row"])}
    evidence = req.receive(
        dataclasses.replace(answer, payload=PayloadColumns(len(answer.tags), as_tuple))
    )
    assert evidence is not None
    assert evidence.payload.columns == {"row": list(as_tuple["row"])}
    assert type(evidence.payload.columns["row"]) is list


@pytest.mark.parametrize("limit", [0, -1])
def test_max_records_per_identity_is_at_least_one(limit: int) -> None:
    with pytest.raises(ValueError, match="max_records_per_identity must be at least 1"):
        KeyedHashRequesterSession(
            kh_context("aes128-ecb-v1"),
            encode_identities(ROSTER[:2]),
            chunk_items=2,
            max_records_per_identity=limit,
        )


def test_streamed_and_in_memory_keyed_hash_send_the_same_messages() -> None:
    ctx = kh_context("aes128-ecb-v1")
    a, done_a = keyed_hash_round(ctx, ROSTER, MEMBERS, streamed=False)
    b, done_b = keyed_hash_round(ctx, ROSTER, MEMBERS, streamed=True)
    assert done_a == done_b and a.indices.tolist() == b.indices.tolist()


# -- illegal and out-of-order messages


def _kh_pair() -> tuple[KeyedHashRequesterSession, KeyedHashResponderSession, Start]:
    ctx = kh_context("aes128-ecb-v1")
    req = KeyedHashRequesterSession(ctx, encode_identities(ROSTER[:4]), chunk_items=2)
    return req, KeyedHashResponderSession(), req.start()


def test_requester_refuses_messages_out_of_order() -> None:
    req, resp, start = _kh_pair()
    with pytest.raises(ProtocolError, match="not legal"):
        req.start()  # twice
    with pytest.raises(ProtocolError, match="matches message not legal"):
        req.receive(Matches(psi=b"", payload=PayloadColumns(0), tags=[]))  # before accept
    resp.receive_start(start)
    accept = resp.accept(encode_identities(ROSTER[:2]))
    req.receive(accept)
    with pytest.raises(ProtocolError, match="accept message not legal"):
        req.receive(accept)  # a second accept
    with pytest.raises(ProtocolError, match="reblinded message not legal"):
        req.receive(Points(stage="reblinded", data=b""))  # the other protocol's message
    with pytest.raises(ProtocolError, match="done before end"):
        req.receive(Done(matches=0, transcript=b"", chunks=0))


def test_requester_refuses_anything_after_done_and_sends_nothing_after_end() -> None:
    req, resp, start = _kh_pair()
    resp.receive_start(start)
    req.receive(resp.accept(encode_identities(ROSTER[:2])))
    messages = list(req.requests())
    assert isinstance(messages[-1], End) and len(messages) == 3
    with pytest.raises(ProtocolError, match="chunk message not legal after end"):
        req.next_request()
    for message in messages:
        answer = resp.receive(message)
        if answer is not None:
            req.receive(answer)
    req.receive(resp.done())
    assert len(req.result().indices) == 2
    with pytest.raises(ProtocolError, match="not legal after done"):
        req.receive(Done(matches=0, transcript=b"", chunks=0))


def test_responder_refuses_messages_out_of_order() -> None:
    req, resp, start = _kh_pair()
    with pytest.raises(ProtocolError, match="must begin with start"):
        resp.receive_start(Chunk(b""))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="chunk message not legal before start"):
        resp.receive(Chunk(b""))
    resp.receive_start(start)
    with pytest.raises(ProtocolError, match="second start"):
        resp.receive(start)
    with pytest.raises(ProtocolError, match="chunk message not legal after start"):
        resp.receive(Chunk(b""))  # before accept
    with pytest.raises(ProtocolError, match="done message not legal"):
        resp.done()
    req.receive(resp.accept(encode_identities(ROSTER[:2])))
    with pytest.raises(ProtocolError, match="accept message not legal"):
        resp.accept(encode_identities(ROSTER[:2]))
    first = req.next_request()
    assert isinstance(first, Chunk)
    with pytest.raises(ProtocolError, match="end says 1 chunks and 2 identities, node received 0"):
        resp.receive(End(chunks=1, items=2))
    resp.receive(first)
    with pytest.raises(ProtocolError, match="sequence number 0, expected 1"):
        resp.receive(first)  # replayed chunk


def test_responder_refuses_more_identities_than_announced_and_a_short_end() -> None:
    req, resp, start = _kh_pair()
    resp.receive_start(dataclasses.replace(start, query_size=3))
    req.receive(resp.accept(encode_identities(ROSTER[:2])))
    resp.receive(req.requests().__next__())
    with pytest.raises(ProtocolError, match="more identities than announced"):
        resp.receive(req.requests().__next__())


def test_responder_end_must_deliver_the_announced_size() -> None:
    req, resp, start = _kh_pair()
    resp.receive_start(dataclasses.replace(start, query_size=6))
    req.receive(resp.accept(encode_identities(ROSTER[:2])))
    messages = list(req.requests())
    for message in messages[:-1]:
        resp.receive(message)
    with pytest.raises(ProtocolError, match="4 identities sent, 6 announced"):
        resp.receive(messages[-1])


def test_responder_refuses_the_other_protocols_context() -> None:
    ctx = ecdh_context(ECDH_SUITES[0])
    start = Start(context=ctx.to_bytes(), query_size=1)
    with pytest.raises(ProtocolError, match="ecdh round context on the keyed-hash stream"):
        KeyedHashResponderSession().receive_start(start)


def _ecdh_pair(
    suite: str = ECDH_SUITES[0],
) -> tuple[EcdhRequesterSession, EcdhResponderSession]:
    ctx = ecdh_context(suite)
    req = EcdhRequesterSession(ctx, encode_identities(ROSTER[:4]), chunk_items=2, max_set_size=64)
    resp = EcdhResponderSession(size_classes=SMALL)
    resp.receive_start(req.start())
    resp.open().load_set(encode_identities(ROSTER[2:6]))
    return req, resp


def test_ecdh_requester_blinds_before_accept_but_takes_no_answer_before_it() -> None:
    req, resp = _ecdh_pair()
    first = req.next_request()  # blinded points do not depend on accept
    assert isinstance(first, Chunk)
    with pytest.raises(ProtocolError, match="set message not legal"):
        req.receive(Points(stage="set", data=b""))
    with pytest.raises(ProtocolError, match="set message not legal"):
        resp.next_set_chunk()  # the responder sends no set before accept


def test_ecdh_requester_refuses_a_set_above_the_announcement_and_a_wrong_done() -> None:
    req, resp = _ecdh_pair()
    with pytest.raises(ProtocolError, match="above max_set_size"):
        req.receive(Accept(set_size=65))
    req, resp = _ecdh_pair()
    req.receive(resp.accept(4))
    for message in req.requests():
        answer = resp.receive(message)
        if answer is not None:
            req.receive(answer)
    while (point := resp.next_set_chunk()) is not None:
        req.receive(point)
    done = resp.done()
    with pytest.raises(ProtocolError, match="declared 9 set points, having announced 8"):
        req.receive(dataclasses.replace(done, set_size=done.set_size + 1))


@pytest.mark.parametrize("suite", ECDH_SUITES)
def test_ecdh_done_with_another_transcript_fails_verification(suite: str) -> None:
    req, resp = _ecdh_pair(suite)
    req.receive(resp.accept(4))
    for message in req.requests():
        answer = resp.receive(message)
        if answer is not None:
            req.receive(answer)
    while (point := resp.next_set_chunk()) is not None:
        req.receive(point)
    done = resp.done()
    with pytest.raises(VerificationError, match="transcript mismatch"):
        req.receive(dataclasses.replace(done, transcript=bytes(32)))


def test_ecdh_responder_done_needs_the_whole_set_and_end() -> None:
    req, resp = _ecdh_pair()
    req.receive(resp.accept(4))
    messages = list(req.requests())
    for message in messages[:-1]:
        resp.receive(message)
    with pytest.raises(ProtocolError, match="done message not legal after accept"):
        resp.done()
    resp.receive(messages[-1])
    with pytest.raises(ProtocolError, match="not been sent completely"):
        resp.done()


def test_keyed_hash_answer_with_a_payload_for_no_tag_is_refused() -> None:
    req, resp, start = _kh_pair()
    resp.receive_start(start)
    req.receive(resp.accept(encode_identities(ROSTER[:2])))
    answer = resp.receive(req.requests().__next__())
    assert isinstance(answer, Matches) and len(answer.tags) == 2
    with pytest.raises(ProtocolError, match="names no matched tag"):
        req.receive(dataclasses.replace(answer, tags=[0, 5]))


# -- hypothesis: session-driven PSI equals the plain intersection

_ids = st.lists(st.integers(0, 300), max_size=30)
RoundFn = Callable[[list[str], list[str]], RequesterResult]


def _kh(prf: str, streamed: bool) -> RoundFn:
    return lambda r, m: keyed_hash_round(kh_context(prf), r, m, streamed=streamed)[0]


def _ec(suite: str) -> RoundFn:
    return lambda r, m: ecdh_round(ecdh_context(suite), r, m, chunk=4)[0]


@settings(max_examples=12, deadline=None)
@given(roster=_ids, members=_ids, which=st.integers(0, 4))
def test_session_psi_equals_the_plain_intersection(
    roster: list[int], members: list[int], which: int
) -> None:
    run = [
        _kh("aes128-ecb-v1", False),
        _kh("sm4-ecb-v1", True),
        _kh("aes256-ecb-v1", False),
        _ec(ECDH_SUITES[0]),
        _ec(SM2_SUITE),
    ][which]
    r_ids, m_ids = ids_from_ints(sorted(set(roster))), ids_from_ints(members)
    result = run(r_ids, m_ids)
    assert _found(result, r_ids) == set(r_ids) & set(m_ids)


def test_keyed_hash_requester_makes_no_tag_between_accept_and_the_round_key() -> None:
    """Regression (seen once in CI): the producer thread asked for a chunk after
    ``accept`` had opened the state machine but before the round key was agreed,
    and the sub-round failed with "no round key yet"."""
    ctx = kh_context(PRFS[0])
    asked: list[object] = []

    class Probe(KeyedHashRequesterSession):
        def _receive(self, message: ResponderMessage) -> Evidence | None:
            asked.append(self.next_request())  # the producer's view at that moment
            return super()._receive(message)

    req = Probe(ctx, encode_identities(ids_from_ints([1, 2])), chunk_items=3, rng=rng_for(2))
    resp = KeyedHashResponderSession(rng=rng_for(3))
    resp.receive_start(req.start())
    req.receive(resp.accept(None, _payload))
    assert asked == [None]
    assert req.next_request() is not None  # and once agreed, the tags follow


def test_an_empty_chunk_is_out_of_protocol() -> None:
    """Finding (a probe): a coordinator sending empty chunks held a node's round slot for
    ever, each message restarting the idle timer. No requester needs an empty chunk."""
    ctx = kh_context("aes128-ecb-v1")
    people = encode_identities(ids_from_ints([1, 2]))
    req = KeyedHashRequesterSession(ctx, people, chunk_items=3, rng=rng_for(2))
    resp = KeyedHashResponderSession(rng=rng_for(3))
    resp.receive_start(req.start())
    req.receive(resp.accept(people, _payload))
    empty = req._make_chunk(0, encode_identities([]))  # what no honest requester sends
    with pytest.raises(ProtocolError, match="an empty chunk"):
        resp.receive(Chunk(empty))
