"""Keyed-hash protocol: full in-process rounds and adversarial messages."""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import (
    AlreadyUsed,
    KeyedHashRequester,
    KeyedHashResponder,
    KeyShare,
    MatchChunk,
    ProtocolError,
    RoundContext,
    TagChunk,
    encode_identities,
)
from tests.test_psi_context import make_context


def rng_for(seed: int) -> Callable[[int], bytes]:
    gen = random.Random(seed)
    return lambda n: gen.randbytes(n)


def ids_from_ints(values: list[int]) -> list[str]:
    """Canonical numbers built from small integers (distinct ints, distinct ids)."""
    from psi.identifiers import check_character

    out = []
    for v in values:
        body = f"110105{19000101 + (v % 28) + 100 * ((v // 28) % 12):08d}{v // 336 % 1000:03d}"
        out.append(body + check_character(body))
    return out


def agreed(ctx: RoundContext, seed: int = 7) -> tuple[KeyedHashRequester, KeyedHashResponder]:
    req = KeyedHashRequester.generate(ctx, rng=rng_for(seed))
    resp = KeyedHashResponder.generate(ctx, rng=rng_for(seed + 1))
    req.agree(KeyShare.from_bytes(resp.key_share().to_bytes()))
    resp.agree(KeyShare.from_bytes(req.key_share().to_bytes()))
    return req, resp


def run_round(
    roster: list[str], match_set: list[str], *, chunk: int = 7, ctx: RoundContext | None = None
) -> tuple[list[int], list[list[int]], bytes, bytes]:
    ctx = ctx or make_context()
    req, resp = agreed(ctx)
    resp.load_set(encode_identities(match_set))
    enc = encode_identities(roster)
    matched: list[int] = []
    rows: list[list[int]] = []
    for start in range(0, len(enc), chunk):
        wire = req.tag(enc[start : start + chunk]).to_bytes()
        answer = resp.match(TagChunk.from_bytes(wire, round_id=ctx.round_id))
        rows += [sorted(answer.rows_for(i).tolist()) for i in range(len(answer))]
        back = MatchChunk.from_bytes(answer.to_bytes(), round_id=ctx.round_id)
        matched += req.resolve(back).tolist()
    return matched, rows, req.finish(), resp.finish()


def test_known_overlap_with_duplicates() -> None:
    roster = ids_from_ints([1, 2, 3, 4, 5, 2])
    match_set = [*ids_from_ints([2, 4, 9, 4]), "N:阿依古丽·买买提|2015-03-09|F"]
    roster.append("N:阿依古丽·买买提|2015-03-09|F")
    matched, rows, t_req, t_resp = run_round(roster, match_set, chunk=3)
    assert matched == [1, 3, 5, 6]
    assert rows == [[0], [1, 3], [0], [4]]  # x2 twice in the roster; x4 has two records
    assert t_req == t_resp


@pytest.mark.parametrize(("roster", "match_set"), [([], [1, 2]), ([1, 2], []), ([], [])])
def test_empty_sets(roster: list[int], match_set: list[int]) -> None:
    matched, _, t_req, t_resp = run_round(ids_from_ints(roster), ids_from_ints(match_set))
    assert matched == [] and t_req == t_resp


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(0, 60), max_size=40),
    st.lists(st.integers(0, 60), max_size=40),
    st.integers(1, 9),
)
def test_equals_plain_intersection(roster: list[int], match_set: list[int], chunk: int) -> None:
    matched, _, t_req, t_resp = run_round(
        ids_from_ints(roster), ids_from_ints(match_set), chunk=chunk
    )
    assert matched == [i for i, v in enumerate(roster) if v in set(match_set)]
    assert t_req == t_resp


def test_tags_from_different_rounds_never_match() -> None:
    enc = encode_identities(ids_from_ints(list(range(50))))
    req1, _ = agreed(make_context(rng=rng_for(1)))
    req2, _ = agreed(make_context(rng=rng_for(2)))
    t1 = {row.tobytes() for row in req1.tag(enc).tags}
    t2 = {row.tobytes() for row in req2.tag(enc).tags}
    assert len(t1) == 50 and not t1 & t2


def test_same_round_key_on_both_sides() -> None:
    req, resp = agreed(make_context())
    enc = encode_identities(ids_from_ints([1, 2, 3]))
    resp.load_set(enc)
    answer = resp.match(req.tag(enc))
    assert len(answer) == 3


def test_agree_twice_and_wrong_round() -> None:
    ctx = make_context()
    req, resp = agreed(ctx)
    with pytest.raises(AlreadyUsed):
        req.agree(resp.key_share())
    other = KeyedHashResponder.generate(make_context(rng=rng_for(99)), rng=rng_for(3))
    fresh = KeyedHashRequester.generate(ctx, rng=rng_for(4))
    with pytest.raises(ProtocolError, match="another round"):
        fresh.agree(other.key_share())


@pytest.mark.parametrize("low_order", [bytes(32), (1).to_bytes(32, "little")])
def test_low_order_key_share(low_order: bytes) -> None:
    ctx = make_context()
    req = KeyedHashRequester.generate(ctx, rng=rng_for(4))
    with pytest.raises(ProtocolError, match="low-order"):
        req.agree(KeyShare(ctx.round_id, low_order))


def test_tag_before_agree() -> None:
    req = KeyedHashRequester.generate(make_context(), rng=rng_for(4))
    with pytest.raises(ProtocolError, match="agree"):
        req.tag(np.zeros((1, 16), np.uint8))


def test_message_from_another_round() -> None:
    req_a, resp_a = agreed(make_context(rng=rng_for(1)))
    req_b, resp_b = agreed(make_context(rng=rng_for(2)))
    enc = encode_identities(ids_from_ints([1]))
    resp_a.load_set(enc)
    resp_b.load_set(enc)
    tags_b = req_b.tag(enc)
    with pytest.raises(ProtocolError, match="another round"):
        resp_a.match(tags_b)
    req_a.tag(enc)
    with pytest.raises(ProtocolError, match="another round"):
        req_a.resolve(resp_b.match(tags_b).without_rows())


def test_out_of_order_seq() -> None:
    req, resp = agreed(make_context())
    enc = encode_identities(ids_from_ints([1, 2]))
    resp.load_set(enc)
    first, second = req.tag(enc[:1]), req.tag(enc[1:])
    with pytest.raises(ProtocolError, match="sequence number 1, expected 0"):
        resp.match(second)
    a1 = resp.match(first)
    a2 = resp.match(second)
    with pytest.raises(ProtocolError, match="sequence number 1, expected 0"):
        req.resolve(a2)
    req.resolve(a1)
    with pytest.raises(ProtocolError):
        req.resolve(a1)  # replay


def test_finish_before_last_answer_and_twice() -> None:
    req, resp = agreed(make_context())
    enc = encode_identities(ids_from_ints([1, 2]))
    resp.load_set(enc)
    chunk = req.tag(enc)
    with pytest.raises(ProtocolError, match="unanswered"):
        req.finish()
    req.resolve(resp.match(chunk))
    req.finish()
    with pytest.raises(AlreadyUsed):
        req.finish()
    with pytest.raises(AlreadyUsed):
        req.tag(enc)
    resp.finish()
    with pytest.raises(AlreadyUsed):
        resp.finish()
    with pytest.raises(AlreadyUsed):
        resp.match(chunk)


def test_answer_for_unsent_chunk() -> None:
    req, resp = agreed(make_context())
    enc = encode_identities(ids_from_ints([1]))
    resp.load_set(enc)
    forged = MatchChunk(req.context.round_id, 0, np.zeros((1, 16), np.uint8))
    with pytest.raises(ProtocolError, match="never sent"):
        req.resolve(forged)


def test_tampered_messages() -> None:
    ctx = make_context()
    req, resp = agreed(ctx)
    enc = encode_identities(ids_from_ints([1, 2, 3]))
    resp.load_set(enc)
    wire = bytearray(req.tag(enc).to_bytes())
    wire[-1] ^= 1  # flip a bit of the last tag in transit
    answer = resp.match(TagChunk.from_bytes(bytes(wire)))
    assert len(answer) == 2
    req.resolve(answer)
    assert req.finish() != resp.finish()  # the transcripts expose the tampering


def test_forged_match_tag_rejected() -> None:
    req, resp = agreed(make_context())
    enc = encode_identities(ids_from_ints([1, 2]))
    resp.load_set(enc)
    answer = resp.match(req.tag(enc))
    tags = answer.tags.copy()
    tags[0, 0] ^= 0xFF
    with pytest.raises(ProtocolError, match="not queried"):
        req.resolve(MatchChunk(answer.round_id, answer.seq, tags))


def test_load_set_twice_and_wrong_protocol() -> None:
    _, resp = agreed(make_context())
    resp.load_set(np.zeros((0, 16), np.uint8))
    with pytest.raises(AlreadyUsed):
        resp.load_set(np.zeros((0, 16), np.uint8))
    with pytest.raises(ProtocolError, match="not keyed-hash"):
        KeyedHashRequester.generate(make_context(protocol="ecdh"))
    with pytest.raises(ProtocolError, match="prf"):
        KeyedHashRequester.generate(make_context(params=[("prf", "des")]))


def test_aes256_prf() -> None:
    ctx = make_context(params=[("prf", "aes256-ecb-v1")])
    matched, _, t1, t2 = run_round(ids_from_ints([1, 2]), ids_from_ints([2]), ctx=ctx)
    assert matched == [1] and t1 == t2


def test_refuses_pickling() -> None:
    req, resp = agreed(make_context())
    for obj in (req, resp):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


def test_chunk_over_message_limit_refused() -> None:
    from psi import MAX_TAGS_PER_CHUNK

    req, _ = agreed(make_context())
    with pytest.raises(ProtocolError, match="per chunk"):
        req.tag(np.zeros((MAX_TAGS_PER_CHUNK + 1, 16), np.uint8))
    assert req.tagged == 0


# --------------------------------------------------------------------------
# Streaming responder (sets larger than memory)


def _streamed_vs_in_memory(
    roster: list[str], match_set: list[str], *, chunk: int, batch: int
) -> None:
    ctx = make_context()
    enc_roster = encode_identities(roster)
    enc_set = encode_identities(match_set)
    # In memory: one answer per chunk as it arrives.
    req_a, resp_a = agreed(ctx)
    resp_a.load_set(enc_set)
    chunks_a = [req_a.tag(enc_roster[s : s + chunk]) for s in range(0, len(enc_roster), chunk)]
    answers_a = [resp_a.match(c) for c in chunks_a]
    # Streamed: all chunks buffered, the set read in batches, then the answers.
    req_b, resp_b = agreed(ctx)
    chunks_b = [req_b.tag(enc_roster[s : s + chunk]) for s in range(0, len(enc_roster), chunk)]
    batches = [enc_set[s : s + batch] for s in range(0, len(enc_set), batch)]
    answers_b = list(resp_b.match_streaming(chunks_b, batches))
    assert len(answers_a) == len(answers_b)
    for a, b in zip(answers_a, answers_b, strict=True):
        assert a.to_bytes() == b.to_bytes()
        assert a.rows is not None and b.rows is not None
        assert a.rows.tolist() == b.rows.tolist()
        assert a.row_offsets is not None and b.row_offsets is not None
        assert a.row_offsets.tolist() == b.row_offsets.tolist()
    for b in answers_b:
        req_b.resolve(MatchChunk.from_bytes(b.to_bytes(), round_id=ctx.round_id))
    for a in answers_a:
        req_a.resolve(a)
    assert resp_a.finish() == resp_b.finish() == req_b.finish() == req_a.finish()


def test_streaming_equals_in_memory_with_duplicates() -> None:
    roster = ids_from_ints([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 50, 60])
    match_set = ids_from_ints([2, 3, 3, 9, 10, 10, 10, 11, 12, 50, 2])
    _streamed_vs_in_memory(roster, match_set, chunk=5, batch=3)


@settings(max_examples=40, deadline=None)
@given(
    roster=st.lists(st.integers(0, 300), min_size=0, max_size=40, unique=True),
    match_set=st.lists(st.integers(0, 300), min_size=0, max_size=60),
    chunk=st.integers(1, 9),
    batch=st.integers(1, 13),
)
def test_streaming_equals_in_memory(
    roster: list[int], match_set: list[int], chunk: int, batch: int
) -> None:
    _streamed_vs_in_memory(
        ids_from_ints(roster), ids_from_ints(match_set), chunk=chunk, batch=batch
    )


def test_match_batch_returns_matched_positions() -> None:
    ctx = make_context()
    req, resp = agreed(ctx)
    resp.buffer(req.tag(encode_identities(ids_from_ints([1, 2, 3]))))
    first = resp.match_batch(encode_identities(ids_from_ints([5, 1, 6, 3])))
    second = resp.match_batch(encode_identities(ids_from_ints([3, 7])))
    assert first.tolist() == [1, 3] and second.tolist() == [0]
    (answer,) = list(resp.streamed_matches())
    assert answer.rows is not None and answer.rows.tolist() == [1, 3, 4]


def test_streaming_misuse() -> None:
    ctx = make_context()
    req, resp = agreed(ctx)
    enc = encode_identities(ids_from_ints([1, 2, 3]))
    resp.buffer(req.tag(enc))
    with pytest.raises(ProtocolError, match="streams its set"):
        resp.load_set(enc)
    resp.match_batch(enc)
    with pytest.raises(ProtocolError, match="after the match set started streaming"):
        resp.buffer(req.tag(enc))
    list(resp.streamed_matches())
    with pytest.raises(ProtocolError, match="already emitted"):
        resp.streamed_matches()
    with pytest.raises(ProtocolError, match="already emitted"):
        resp.match_batch(enc)
    req2, loaded = agreed(ctx)
    loaded.load_set(enc)
    with pytest.raises(ProtocolError, match="answer chunks with match"):
        loaded.buffer(req2.tag(enc))
