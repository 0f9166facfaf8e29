"""ECDH protocol: full in-process rounds, padding, executors, adversarial input."""

from __future__ import annotations

import concurrent.futures
import functools
import pickle
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import (
    AlreadyUsed,
    EcdhRequester,
    EcdhResponder,
    EcdhResult,
    PointChunk,
    ProtocolError,
    RoundContext,
    encode_identities,
    size_class,
)
from psi.ecdh import BUCKET_KEY_SIZE, bucket_of, distinct_identities
from tests.test_psi_context import make_context
from tests.test_psi_keyed_hash import ids_from_ints, rng_for

SMALL = functools.partial(size_class, minimum=8)
ELL2 = "curve25519_XMD:SHA-512_ELL2_NU_"


def ecdh_context(seed: int = 1, suite: str | None = None) -> RoundContext:
    params = [("suite", suite)] if suite else []
    return make_context(protocol="ecdh", params=params, rng=rng_for(seed))


def roles(
    ctx: RoundContext, executor: concurrent.futures.Executor | None = None
) -> tuple[EcdhRequester, EcdhResponder]:
    req = EcdhRequester.generate(ctx, rng=rng_for(11), executor=executor)
    resp = EcdhResponder.generate(ctx, rng=rng_for(12), executor=executor, size_classes=SMALL)
    return req, resp


def run_round(
    roster: list[str],
    match_set: list[str],
    *,
    chunk: int = 5,
    ctx: RoundContext | None = None,
    executor: concurrent.futures.Executor | None = None,
) -> tuple[EcdhResult, bytes]:
    ctx = ctx or ecdh_context()
    req, resp = roles(ctx, executor)
    resp.load_set(encode_identities(match_set))
    enc = encode_identities(roster)
    for start in range(0, len(enc), chunk):
        blinded = PointChunk.from_bytes(req.blind(enc[start : start + chunk]).to_bytes())
        req.receive_reblinded(PointChunk.from_bytes(resp.reblind(blinded).to_bytes()))
    for part in resp.set_chunks(chunk):
        req.receive_responder_set(PointChunk.from_bytes(part.to_bytes(), stage="set"))
    req.receive_responder_done(resp.set_size)
    return req.finish(), resp.finish()


def test_known_overlap_with_duplicates() -> None:
    roster = ids_from_ints([1, 2, 3, 4, 5, 2])
    result, t_resp = run_round(roster, ids_from_ints([2, 4, 9, 4, 4]))
    assert result.matched.tolist() == [1, 3, 5]
    assert result.responder_set_size == 8  # 3 unique, padded to the class
    assert result.transcript == t_resp


@pytest.mark.parametrize(("roster", "match_set"), [([], [1, 2]), ([1, 2], []), ([], [])])
def test_empty_sets(roster: list[int], match_set: list[int]) -> None:
    result, t_resp = run_round(ids_from_ints(roster), ids_from_ints(match_set))
    assert result.matched.tolist() == [] and result.transcript == t_resp
    assert result.responder_set_size == 8


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.integers(0, 40), max_size=20),
    st.lists(st.integers(0, 40), max_size=20),
    st.integers(1, 8),
)
def test_equals_plain_intersection(roster: list[int], match_set: list[int], chunk: int) -> None:
    result, t_resp = run_round(ids_from_ints(roster), ids_from_ints(match_set), chunk=chunk)
    assert result.matched.tolist() == [i for i, v in enumerate(roster) if v in set(match_set)]
    assert result.transcript == t_resp


def test_rfc9380_suite_round() -> None:
    result, t_resp = run_round(
        ids_from_ints([1, 2, 3]), ids_from_ints([3, 4]), ctx=ecdh_context(suite=ELL2)
    )
    assert result.matched.tolist() == [2] and result.transcript == t_resp


def test_suites_do_not_interoperate() -> None:
    enc = encode_identities(ids_from_ints([1]))
    fast, _ = roles(ecdh_context(2))
    strict, _ = roles(ecdh_context(2, suite=ELL2))
    assert fast.blind(enc) != strict.blind(enc)


def test_points_from_different_rounds_never_match() -> None:
    enc = encode_identities(ids_from_ints(list(range(20))))
    one, _ = roles(ecdh_context(1))
    two = EcdhRequester.generate(ecdh_context(2), rng=rng_for(13))
    a = {r.tobytes() for r in one.blind(enc).points}
    b = {r.tobytes() for r in two.blind(enc).points}
    assert len(a) == 20 and not a & b


def test_process_pool_matches_inline() -> None:
    roster = ids_from_ints(list(range(0, 300, 2)))
    match_set = ids_from_ints(list(range(0, 300, 3)))
    inline, _ = run_round(roster, match_set, chunk=150)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pooled, t_resp = run_round(roster, match_set, chunk=150, executor=pool)
    assert pooled.matched.tolist() == inline.matched.tolist()
    assert pooled.transcript == t_resp


def test_size_classes() -> None:
    assert size_class(0) == 1024 and size_class(1024) == 1024 and size_class(1025) == 1280
    assert size_class(1281) == 1600
    sizes = [size_class(n) for n in range(0, 20000, 97)]
    assert all(s >= n for s, n in zip(sizes, range(0, 20000, 97), strict=True))
    with pytest.raises(ValueError):
        size_class(-1)


def test_padding_is_shuffled_in() -> None:
    ctx = ecdh_context()
    _, resp = roles(ctx)
    resp.load_set(encode_identities(ids_from_ints([1, 2, 3])))
    assert resp.set_size == 8
    assert sum(len(c) for c in resp.set_chunks(3)) == 8


LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_point_in_blinded_chunk(point: str) -> None:
    ctx = ecdh_context()
    _, resp = roles(ctx)
    points = np.zeros((3, 32), np.uint8)
    points[:] = np.frombuffer(bytes.fromhex("09" + "00" * 31), np.uint8)
    points[2] = np.frombuffer(bytes.fromhex(point), np.uint8)
    with pytest.raises(ProtocolError, match="blinded chunk 0: point 2 is a low-order point"):
        resp.reblind(PointChunk(ctx.round_id, 0, "blinded", points))


def test_low_order_point_in_set_chunk() -> None:
    ctx = ecdh_context()
    req, _ = roles(ctx)
    points = np.zeros((2, 32), np.uint8)
    points[0, 0] = 9
    with pytest.raises(ProtocolError, match="set chunk 0: point 1"):
        req.receive_responder_set(PointChunk(ctx.round_id, 0, "set", points))


def test_wrong_length_and_stage() -> None:
    ctx = ecdh_context()
    req, resp = roles(ctx)
    wire = req.blind(encode_identities(ids_from_ints([1, 2]))).to_bytes()
    with pytest.raises(ProtocolError, match="multiple of 32"):
        PointChunk.from_bytes(wire[:-5])
    blinded = PointChunk.from_bytes(wire)
    with pytest.raises(ProtocolError, match="expected a reblinded chunk"):
        req.receive_reblinded(blinded)
    answer = resp.reblind(blinded)
    short = PointChunk(ctx.round_id, 0, "reblinded", answer.points[:1])
    with pytest.raises(ProtocolError, match="has 1 points, expected 2"):
        req.receive_reblinded(short)


def test_other_round_and_out_of_order() -> None:
    ctx = ecdh_context(1)
    req, resp = roles(ctx)
    other, _ = roles(ecdh_context(2))
    with pytest.raises(ProtocolError, match="another round"):
        resp.reblind(other.blind(encode_identities(ids_from_ints([1]))))
    enc = encode_identities(ids_from_ints([1, 2]))
    first, second = req.blind(enc[:1]), req.blind(enc[1:])
    with pytest.raises(ProtocolError, match="sequence number 1, expected 0"):
        resp.reblind(second)
    a1, a2 = resp.reblind(first), resp.reblind(second)
    with pytest.raises(ProtocolError, match="sequence number 1, expected 0"):
        req.receive_reblinded(a2)
    req.receive_reblinded(a1)
    req.receive_reblinded(a2)
    with pytest.raises(ProtocolError, match="never sent"):
        req.receive_reblinded(PointChunk(ctx.round_id, 2, "reblinded", a2.points))


def test_result_only_after_done() -> None:
    ctx = ecdh_context()
    req, resp = roles(ctx)
    resp.load_set(encode_identities(ids_from_ints([1])))
    chunk = req.blind(encode_identities(ids_from_ints([1])))
    parts = list(resp.set_chunks(3))
    req.receive_responder_set(parts[0])
    with pytest.raises(ProtocolError, match="not declared"):
        req.finish()
    with pytest.raises(ProtocolError, match="not been sent completely"):
        EcdhResponder.generate(ctx, size_classes=SMALL).finish()
    with pytest.raises(ProtocolError, match="declared 8 set points, 3 received"):
        req.receive_responder_done(8)
    for part in parts[1:]:
        req.receive_responder_set(part)
    with pytest.raises(ProtocolError, match="unanswered"):
        req.receive_responder_done(8)
    req.receive_reblinded(resp.reblind(chunk))
    req.receive_responder_done(8)
    with pytest.raises(AlreadyUsed):
        req.receive_responder_done(8)
    with pytest.raises(ProtocolError, match="after the responder"):
        req.receive_responder_set(parts[0])
    result = req.finish()
    assert result.matched.tolist() == [0] and result.transcript == resp.finish()
    with pytest.raises(AlreadyUsed):
        req.finish()
    with pytest.raises(AlreadyUsed):
        resp.finish()
    with pytest.raises(AlreadyUsed):
        resp.reblind(chunk)


def test_set_chunks_once_and_load_once() -> None:
    _, resp = roles(ecdh_context())
    with pytest.raises(ProtocolError, match="load_set"):
        resp.set_chunks(4)
    resp.load_set(np.zeros((0, 16), np.uint8))
    with pytest.raises(AlreadyUsed):
        resp.load_set(np.zeros((0, 16), np.uint8))
    list(resp.set_chunks(4))
    with pytest.raises(AlreadyUsed):
        resp.set_chunks(4)


def test_tampered_set_chunk_changes_transcript() -> None:
    ctx = ecdh_context()
    req, resp = roles(ctx)
    resp.load_set(encode_identities(ids_from_ints([1, 2])))
    enc = encode_identities(ids_from_ints([1, 2]))
    req.receive_reblinded(resp.reblind(req.blind(enc)))
    for i, part in enumerate(resp.set_chunks(8)):
        points = part.points.copy()
        if i == 0:
            points[0] = points[1]  # an element replaced in transit
        req.receive_responder_set(PointChunk(part.round_id, part.seq, "set", points))
    req.receive_responder_done(resp.set_size)
    assert req.finish().transcript != resp.finish()


def test_wrong_protocol_and_suite() -> None:
    with pytest.raises(ProtocolError, match="not ecdh"):
        EcdhRequester.generate(make_context())
    with pytest.raises(ProtocolError, match="suite"):
        EcdhResponder.generate(ecdh_context(suite="p256-sswu"))


def test_refuses_pickling() -> None:
    req, resp = roles(ecdh_context())
    for obj in (req, resp):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


def test_set_past_the_announced_size_is_refused_before_any_multiplication(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from psi.hazmat import x25519

    ctx = ecdh_context()
    req, resp = roles(ctx)
    resp.load_set(encode_identities(ids_from_ints(list(range(1, 12)))))  # 11 unique, padded to 13
    enc = encode_identities(ids_from_ints([1, 2, 3]))
    req.receive_reblinded(resp.reblind(req.blind(enc)))
    parts = list(resp.set_chunks(4))  # 4 + 4 + 4 + 1 points
    req.expect_responder_set(8)  # the responder announces fewer than it sends
    with pytest.raises(AlreadyUsed):
        req.expect_responder_set(11)
    calls: list[int] = []
    real = x25519.scalar_mult

    def counting(
        scalar: bytes, points: npt.NDArray[np.uint8], **kwargs: Any
    ) -> npt.NDArray[np.uint8]:
        calls.append(len(points))
        return real(scalar, points, **kwargs)

    monkeypatch.setattr(x25519, "scalar_mult", counting)
    req.receive_responder_set(parts[0])
    req.receive_responder_set(parts[1])
    with pytest.raises(ProtocolError, match="set chunk 2 takes the responder's set past the 8"):
        req.receive_responder_set(parts[2])
    assert calls == [4, 4]  # the refused chunk was never multiplied
    with pytest.raises(ProtocolError, match="having announced 8"):
        req.receive_responder_done(11)
    req.receive_responder_done(8)  # what was announced and received
    assert req.finish().responder_set_size == 8


def test_announced_set_size_must_come_first_and_be_a_size() -> None:
    ctx = ecdh_context()
    req, resp = roles(ctx)
    resp.load_set(encode_identities(ids_from_ints([1])))
    for bad in (-1, True, 2.0):
        with pytest.raises(ProtocolError, match="non-negative integer"):
            req.expect_responder_set(bad)  # type: ignore[arg-type]
    req.receive_responder_set(next(iter(resp.set_chunks(4))))
    with pytest.raises(ProtocolError, match="before the first set chunk"):
        req.expect_responder_set(8)


def test_announced_size_equal_to_the_set_changes_nothing() -> None:
    roster = ids_from_ints([1, 2, 3, 4, 5, 2])
    ctx = ecdh_context()
    req, resp = roles(ctx)
    resp.load_set(encode_identities(ids_from_ints([2, 4, 9, 4, 4])))
    req.expect_responder_set(resp.set_size)
    enc = encode_identities(roster)
    for start in range(0, len(enc), 4):
        req.receive_reblinded(resp.reblind(req.blind(enc[start : start + 4])))
    for part in resp.set_chunks(3):
        req.receive_responder_set(part)
    req.receive_responder_done(resp.set_size)
    result = req.finish()
    assert result.matched.tolist() == [1, 3, 5]
    assert result.transcript == resp.finish()


# -- sets larger than memory: buckets (psi side)


def bucketed_round(
    roster: list[str],
    match_set: list[str],
    *,
    buckets: int,
    chunk: int = 5,
    set_first: bool = False,
) -> tuple[EcdhResult, bytes, list[int], list[tuple[int, int]]]:
    """One round with the set split by ``bucket_of``; returns the chunk sizes and the reads.

    ``reads`` are (bucket, set chunks yielded before it was read). With
    ``set_first`` every set chunk reaches the requester before any reblinded one.
    """
    ctx = ecdh_context(3)
    req = EcdhRequester.generate(ctx, rng=rng_for(11), query_size=len(roster))
    resp = EcdhResponder.generate(ctx, rng=rng_for(12), size_classes=SMALL)
    enc = distinct_identities(encode_identities(match_set))
    key = rng_for(14)(BUCKET_KEY_SIZE)
    which = bucket_of(enc, key, buckets)
    parts: list[npt.NDArray[np.uint8]] = [enc[which == j] for j in range(buckets)]
    sent: list[PointChunk] = []
    reads: list[tuple[int, int]] = []

    def read(bucket: int) -> npt.NDArray[np.uint8]:
        reads.append((bucket, len(sent)))
        return parts[bucket]

    resp.load_buckets([len(p) for p in parts], read)
    roster_enc = encode_identities(roster)
    blinded = [
        PointChunk.from_bytes(req.blind(roster_enc[start : start + chunk]).to_bytes())
        for start in range(0, len(roster_enc), chunk)
    ]

    def answer_roster() -> None:
        for b in blinded:
            req.receive_reblinded(PointChunk.from_bytes(resp.reblind(b).to_bytes()))

    if not set_first:
        answer_roster()
    for part in resp.set_chunks(chunk):
        sent.append(part)
        req.receive_responder_set(PointChunk.from_bytes(part.to_bytes(), stage="set"))
    if set_first:
        answer_roster()
    req.receive_responder_done(resp.set_size)
    return req.finish(), resp.finish(), [len(p) for p in sent], reads


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.integers(0, 60), max_size=25),
    st.lists(st.integers(0, 60), max_size=40),
    st.integers(1, 6),
    st.integers(1, 7),
    st.booleans(),
)
def test_bucketed_set_equals_plain_intersection(
    roster: list[int], match_set: list[int], buckets: int, chunk: int, set_first: bool
) -> None:
    result, t_resp, sizes, reads = bucketed_round(
        ids_from_ints(roster),
        ids_from_ints(match_set),
        buckets=buckets,
        chunk=chunk,
        set_first=set_first,
    )
    assert result.matched.tolist() == [i for i, v in enumerate(roster) if v in set(match_set)]
    assert result.transcript == t_resp
    # padded exactly as the unbucketed set, in full chunks across bucket boundaries
    assert result.responder_set_size == SMALL(len(set(match_set))) == sum(sizes)
    assert all(n == chunk for n in sizes[:-1]) and 0 < sizes[-1] <= chunk
    # each bucket read once, in order, and not before the chunks of the bucket two back
    assert [b for b, _ in reads] == list(range(buckets))
    _check_reads_lazy(reads, ids_from_ints(match_set), buckets, chunk)


def _check_reads_lazy(
    reads: list[tuple[int, int]], match_set: list[str], buckets: int, chunk: int
) -> None:
    """Bucket j is read only once the full chunks of buckets 0..j-2 were sent (two in memory)."""
    enc = distinct_identities(encode_identities(match_set))
    sizes = np.bincount(bucket_of(enc, rng_for(14)(BUCKET_KEY_SIZE), buckets), minlength=buckets)
    extra = SMALL(len(enc)) - len(enc)
    padded = [
        int(sizes[j]) + extra * (j + 1) // buckets - extra * j // buckets for j in range(buckets)
    ]
    for bucket, sent_before in reads:
        assert sent_before >= sum(padded[: max(0, bucket - 1)]) // chunk


def test_bucket_read_lazily() -> None:
    """With 8 buckets of about 25, the last is read only after 6 buckets' chunks were sent."""
    match_set = ids_from_ints(list(range(200)))
    _, _, sizes, reads = bucketed_round(ids_from_ints([1]), match_set, buckets=8, chunk=10)
    assert [b for b, _ in reads] == list(range(8))
    _check_reads_lazy(reads, match_set, 8, 10)
    assert reads[-1][1] >= 12  # not all at the start
    assert sum(sizes) == SMALL(200)


def test_bucket_of() -> None:
    enc = encode_identities(ids_from_ints(list(range(4000))))
    key = bytes(range(16))
    which = bucket_of(enc, key, 8)
    assert which.dtype == np.int64 and which.min() >= 0 and which.max() <= 7
    assert (bucket_of(enc, key, 8) == which).all()  # a function of identity and key
    assert (bucket_of(enc[::-1], key, 8) == which[::-1]).all()
    assert not (bucket_of(enc, bytes(16), 8) == which).all()  # the key matters
    counts = np.bincount(which, minlength=8)
    assert counts.min() > 400 and counts.max() < 600  # about 500 each
    assert (bucket_of(enc, key, 1) == 0).all()
    with pytest.raises(ValueError, match="key"):
        bucket_of(enc, b"short", 8)
    with pytest.raises(ValueError, match="buckets"):
        bucket_of(enc, key, 0)


def test_bucket_read_back_wrong() -> None:
    """A bucket read back other than announced fails the set, never sends it changed."""
    enc = encode_identities(ids_from_ints([1, 2, 3, 4]))
    for sizes, parts, message in [
        ([2, 2], [enc[:2], enc[2:3]], "bucket 1 has 1 identities, 2 announced"),
        ([2, 2], [enc[:2], np.concatenate([enc[2:3], enc[2:3]])], "bucket 1 repeats"),
    ]:
        _, resp = roles(ecdh_context())
        resp.load_buckets(sizes, parts.__getitem__)
        with pytest.raises(ValueError, match=message):
            list(resp.set_chunks(2))
    _, resp = roles(ecdh_context())
    with pytest.raises(ValueError, match="at least one bucket"):
        resp.load_buckets([], parts.__getitem__)
    with pytest.raises(ValueError, match="at least one bucket"):
        resp.load_buckets([3, -1], parts.__getitem__)


def test_requester_refuses_more_than_its_query_size() -> None:
    req = EcdhRequester.generate(ecdh_context(), query_size=3)
    req.blind(encode_identities(ids_from_ints([1, 2])))
    with pytest.raises(ProtocolError, match="query size"):
        req.blind(encode_identities(ids_from_ints([3, 4])))
    with pytest.raises(ValueError, match="query_size"):
        EcdhRequester.generate(ecdh_context(), query_size=-1)


def test_load_set_distinct_is_checked_and_gives_the_same_round() -> None:
    from psi.ecdh import distinct_identities as distinct

    match_set = encode_identities(ids_from_ints([5, 3, 9, 3, 1]))
    unique = distinct(match_set)
    ctx = ecdh_context()
    _, resp = roles(ctx)
    with pytest.raises(ValueError, match="not distinct_identities output"):
        resp.load_set(match_set, distinct=True)  # unsorted, with a repeat
    with pytest.raises(ValueError, match="not distinct_identities output"):
        resp.load_set(np.concatenate([unique, unique[-1:]]), distinct=True)
    results = []
    for rows, flag in ((match_set, False), (unique, True)):
        req, resp = roles(ecdh_context())
        resp.load_set(rows, distinct=flag)
        enc = encode_identities(ids_from_ints([1, 2, 3]))
        req.receive_reblinded(resp.reblind(req.blind(enc)))
        for part in resp.set_chunks(4):
            req.receive_responder_set(part)
        req.receive_responder_done(resp.set_size)
        results.append((req.finish().matched.tolist(), resp.finish()))
    assert results[0] == results[1] and results[0][0] == [0, 2]


def test_low_order_point_in_set_chunk_with_a_pool() -> None:
    """With a pool, a set chunk is checked when the next arrives, or at done for the last."""
    good = np.zeros((70, 32), np.uint8)
    good[:, 0] = 9
    bad = good.copy()
    bad[5, 0] = 1  # u = 1: a point of order 4
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ctx = ecdh_context()
        req, _ = roles(ctx, pool)
        req.receive_responder_set(PointChunk(ctx.round_id, 0, "set", bad))
        with pytest.raises(ProtocolError, match="set chunk 0: point 5 is a low-order point"):
            req.receive_responder_set(PointChunk(ctx.round_id, 1, "set", good))
        ctx = ecdh_context(seed=2)
        req, _ = roles(ctx, pool)
        req.receive_responder_set(PointChunk(ctx.round_id, 0, "set", good))
        req.receive_responder_set(PointChunk(ctx.round_id, 1, "set", bad))
        with pytest.raises(ProtocolError, match="set chunk 1: point 5 is a low-order point"):
            req.receive_responder_done(140)
