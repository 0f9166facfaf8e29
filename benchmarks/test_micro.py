"""Micro-benchmarks of the psi core (identities per second).

    .venv/bin/pytest benchmarks/test_micro.py --benchmark-only -p no:randomly

Each benchmark records ``identities_per_s`` in ``extra_info``. openmined-psi
(P-256 ECDH, C++) runs on the ECDH sizes for comparison. Data is synthetic
and seeded; no identity here belongs to anyone.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from psi import (
    DEFAULT_CHUNK_ITEMS,
    EcdhRequester,
    EcdhResponder,
    KeyedHashRequester,
    KeyedHashResponder,
    RoundContext,
    TagChunk,
    encode_identities,
    normalize_id_column,
)

WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
CHECK = np.array(list("10X98765432"))


def canonical_ids(n: int, seed: int) -> npt.NDArray[np.str_]:
    """n distinct-ish canonical numbers, built with numpy (Inner Mongolia codes)."""
    gen = np.random.default_rng(seed)
    address = gen.choice([150102, 150203, 150402, 150502, 150602, 152201, 152502], n)
    born = np.datetime64("1940-01-01") + gen.integers(0, 30000, n).astype("timedelta64[D]")
    ymd = np.char.replace(np.datetime_as_string(born, unit="D"), "-", "")
    seq = gen.integers(0, 1000, n)
    body = np.char.add(np.char.add(address.astype("U6"), ymd), np.char.zfill(seq.astype("U3"), 3))
    digits = body.astype("<U17").view(np.uint32).reshape(n, 17).astype(np.int64) - 48
    return np.char.add(body, CHECK[(digits @ WEIGHTS) % 11])


def mixed_ids(n: int) -> list[str]:
    """90 % canonical; the rest 15-digit, lower-case x, spaced, full-width or invalid."""
    ids: list[str] = canonical_ids(n, 1).tolist()
    for i in range(0, n, 10):
        kind = (i // 10) % 5
        v = ids[i]
        if kind == 0:
            if v[6:8] == "19":
                ids[i] = v[:6] + v[8:17]
        elif kind == 1:
            ids[i] = v.lower() + " "
        elif kind == 2:
            ids[i] = f"{v[:6]} {v[6:14]} {v[14:]}"
        elif kind == 3:
            ids[i] = v.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789"})
        else:
            ids[i] = v[:17]
    return ids


def counter_rng(seed: int) -> Callable[[int], bytes]:
    gen = np.random.default_rng(seed)
    return lambda k: gen.bytes(k)


def context(protocol: str) -> RoundContext:
    return RoundContext.new(
        as_of=datetime.date(2025, 6, 30),
        purpose="bench",
        requester="civil-affairs",
        responder="police",
        match_set="custody",
        protocol=protocol,  # type: ignore[arg-type]
        rng=counter_rng(0),
    )


def rate(benchmark: Any, n: int) -> None:
    benchmark.extra_info["n"] = n
    benchmark.extra_info["identities_per_s"] = round(n / benchmark.stats.stats.min)


@pytest.fixture(scope="module")
def encoded_1m() -> npt.NDArray[np.uint8]:
    return encode_identities(canonical_ids(1_000_000, 2))


def test_normalize_id_column_1m_mixed(benchmark: Any) -> None:
    values = mixed_ids(1_000_000)
    col = benchmark.pedantic(normalize_id_column, args=(values,), rounds=3, iterations=1)
    assert col.valid.sum() == 1_000_000 - 20_000
    rate(benchmark, len(values))


def test_encode_identities_1m(benchmark: Any) -> None:
    ids = canonical_ids(1_000_000, 3)
    out = benchmark.pedantic(encode_identities, args=(ids,), rounds=3, iterations=1)
    assert out.shape == (1_000_000, 16)
    rate(benchmark, len(ids))


def keyed_pair() -> tuple[KeyedHashRequester, KeyedHashResponder]:
    ctx = context("keyed-hash")
    req = KeyedHashRequester.generate(ctx, rng=counter_rng(1))
    resp = KeyedHashResponder.generate(ctx, rng=counter_rng(2))
    req.agree(resp.key_share())
    resp.agree(req.key_share())
    return req, resp


def test_keyed_hash_tag_1m(benchmark: Any, encoded_1m: npt.NDArray[np.uint8]) -> None:
    # In chunks of DEFAULT_CHUNK_ITEMS, as sent: each chunk is also serialized
    # and absorbed into the transcript.
    def tag_all() -> int:
        req, _ = keyed_pair()
        step = DEFAULT_CHUNK_ITEMS
        return sum(len(req.tag(encoded_1m[i : i + step])) for i in range(0, 1_000_000, step))

    assert benchmark.pedantic(tag_all, rounds=3, iterations=1) == 1_000_000
    rate(benchmark, len(encoded_1m))


def test_keyed_hash_load_set_3m(benchmark: Any) -> None:
    enc = encode_identities(canonical_ids(3_000_000, 4))

    def load() -> None:
        _, resp = keyed_pair()
        resp.load_set(enc)

    benchmark.pedantic(load, rounds=2, iterations=1)
    rate(benchmark, len(enc))


def test_keyed_hash_match_300k_against_3m(benchmark: Any) -> None:
    set_ids = canonical_ids(3_000_000, 4)
    req, resp = keyed_pair()
    resp.load_set(encode_identities(set_ids))
    # A third of the queries are in the set.
    query = np.concatenate([set_ids[:100_000], canonical_ids(200_000, 5)])
    enc = encode_identities(query)
    chunks = [req.tag(enc[i : i + 150_000]).tags for i in (0, 150_000)]
    seqs: Iterator[int] = itertools.count()

    def match() -> int:
        rid = resp.context.round_id
        return sum(len(resp.match(TagChunk(rid, next(seqs), tags))) for tags in chunks)

    found = benchmark.pedantic(match, rounds=3, iterations=1)
    assert found >= 100_000
    rate(benchmark, len(enc))


ECDH_N = 20_000


@pytest.fixture(scope="module")
def encoded_20k() -> npt.NDArray[np.uint8]:
    return encode_identities(canonical_ids(ECDH_N, 6))


def test_ecdh_blind_20k_inline(benchmark: Any, encoded_20k: npt.NDArray[np.uint8]) -> None:
    def blind() -> int:
        return len(EcdhRequester.generate(context("ecdh")).blind(encoded_20k))

    assert benchmark.pedantic(blind, rounds=3, iterations=1) == ECDH_N
    rate(benchmark, ECDH_N)


def test_ecdh_blind_20k_pool2(benchmark: Any, encoded_20k: npt.NDArray[np.uint8]) -> None:
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        EcdhRequester.generate(context("ecdh"), executor=pool).blind(encoded_20k[:256])  # warm

        def blind() -> int:
            req = EcdhRequester.generate(context("ecdh"), executor=pool)
            return len(req.blind(encoded_20k))

        assert benchmark.pedantic(blind, rounds=3, iterations=1) == ECDH_N
    rate(benchmark, ECDH_N)


def test_ecdh_reblind_20k_inline(benchmark: Any, encoded_20k: npt.NDArray[np.uint8]) -> None:
    ctx = context("ecdh")
    chunk = EcdhRequester.generate(ctx).blind(encoded_20k)

    def reblind() -> int:
        return len(EcdhResponder.generate(ctx).reblind(chunk))

    assert benchmark.pedantic(reblind, rounds=3, iterations=1) == ECDH_N
    rate(benchmark, ECDH_N)


def test_openmined_create_request_20k(benchmark: Any) -> None:
    import private_set_intersection.python as openmined

    items = canonical_ids(ECDH_N, 6).tolist()
    client = openmined.client.CreateWithNewKey(True)
    benchmark.pedantic(client.CreateRequest, args=(items,), rounds=3, iterations=1)
    rate(benchmark, ECDH_N)


def test_openmined_process_request_20k(benchmark: Any) -> None:
    import private_set_intersection.python as openmined

    items = canonical_ids(ECDH_N, 6).tolist()
    request = openmined.client.CreateWithNewKey(True).CreateRequest(items)
    server = openmined.server.CreateWithNewKey(True)
    benchmark.pedantic(server.ProcessRequest, args=(request,), rounds=3, iterations=1)
    rate(benchmark, ECDH_N)
