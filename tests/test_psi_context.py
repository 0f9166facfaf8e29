"""RoundContext, Transcript and the wire messages."""

from __future__ import annotations

import datetime
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi.context import RoundContext
from psi.errors import ProtocolError
from psi.messages import MAX_TAGS_PER_CHUNK, KeyShare, MatchChunk, PointChunk, TagChunk
from psi.transcript import Transcript


def seeded(seed: int = 1):  # type: ignore[no-untyped-def]
    gen = random.Random(seed)
    return lambda n: gen.randbytes(n)


RID = bytes(range(1, 17))


def make_context(**overrides: object) -> RoundContext:
    fields: dict[str, object] = dict(
        as_of=datetime.date(2025, 6, 30),
        purpose="dibao-review",
        requester="civil-affairs",
        responder="police",
        match_set="custody",
        protocol="keyed-hash",
        rng=seeded(),
    )
    fields.update(overrides)
    return RoundContext.new(**fields)  # type: ignore[arg-type]


def test_new_fills_defaults_and_sorts() -> None:
    ctx = make_context(protocol="ecdh", params=[("z", "1"), ("a", "2")])
    assert ctx.params == (("a", "2"), ("suite", "x25519-sha256-u"), ("z", "1"))
    assert ctx.param("suite") == "x25519-sha256-u"
    assert len(ctx.round_id) == 16 and ctx.round_id_hex == ctx.round_id.hex()
    with pytest.raises(ProtocolError):
        ctx.param("missing")
    assert ctx.param("missing", "d") == "d"


def test_round_trip() -> None:
    ctx = make_context()
    assert RoundContext.from_bytes(ctx.to_bytes()) == ctx


names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,10}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(st.tuples(names, names, names, names), st.tuples(names, names, names, names))
def test_distinct_contexts_encode_differently(
    a: tuple[str, str, str, str], b: tuple[str, str, str, str]
) -> None:
    def build(f: tuple[str, str, str, str]) -> RoundContext:
        return RoundContext(
            round_id=RID,
            as_of=datetime.date(2025, 1, 1),
            purpose=f[0],
            requester=f[1],
            responder=f[2],
            match_set=f[3],
            protocol="ecdh",
        )

    assert (build(a).to_bytes() == build(b).to_bytes()) == (a == b)


@pytest.mark.parametrize(
    "overrides",
    [
        {"purpose": "Upper"},
        {"purpose": ""},
        {"requester": "x" * 65},
        {"match_set": "a b"},
        {"protocol": "rsa"},
        {"as_of": datetime.datetime(2025, 1, 1)},
        {"params": [("bad name", "v")]},
        {"params": [("a", "1"), ("a", "2")]},
    ],
)
def test_invalid_fields(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_context(**overrides)


# Second review, finding 3: names that look like identity numbers would make every
# audit entry of the round unloggable; finding 4: the all-zero id is the log's placeholder.
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("purpose", "110101199003074514"),
        ("requester", "x110101199003074514"),
        ("responder", "110101.19900307.4514"),
        ("match_set", "set_110101-199003-07451x"),
        ("purpose", "123456789012345"),
    ],
)
def test_names_that_look_like_identity_numbers_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must not hold 15 or more digits in a row$"):
        make_context(**{field: value})
    fields = list(GOOD)
    fields[{"purpose": 2, "requester": 3, "responder": 4, "match_set": 5}[field]] = value.encode()
    with pytest.raises(ProtocolError) as info:
        RoundContext.from_bytes(_raw_context(fields))
    text = info.value.diagnostics()
    assert text == f"invalid round context: {field} must not hold 15 or more digits in a row"
    assert info.value.__cause__ is None


@pytest.mark.parametrize("value", ["set-12345678901234", "a1234567.1234567x1", "2026-11-29"])
def test_names_with_shorter_digit_runs_are_fine(value: str) -> None:
    assert make_context(purpose=value).purpose == value


def test_all_zero_round_id_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^round_id must not be all zero$"):
        make_context(rng=lambda n: bytes(n))
    with pytest.raises(ProtocolError) as info:
        RoundContext.from_bytes(_raw_context([bytes(16), *GOOD[1:]]))
    assert info.value.diagnostics() == "invalid round context: round_id must not be all zero"


def test_unsorted_params_rejected() -> None:
    with pytest.raises(ValueError):
        RoundContext(
            RID,
            datetime.date(2025, 1, 1),
            "p",
            "r",
            "s",
            "m",
            "ecdh",
            (("b", "1"), ("a", "1")),
        )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b"XX" + b[2:],
        lambda b: b[:5] + b"\x02" + b[6:],
        lambda b: b"",
    ],
)
def test_from_bytes_rejects(mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError):
        RoundContext.from_bytes(mutate(make_context().to_bytes()))


def test_transcript_interleaving_does_not_matter() -> None:
    ctx = make_context()
    messages = [("requester", f"m{i}", bytes([i]) * i) for i in range(5)] + [
        ("responder", f"r{i}", bytes([i + 9]) * i) for i in range(4)
    ]
    one, two = Transcript(ctx), Transcript(ctx)
    for d, label, data in messages:
        one.absorb(d, label, data)  # type: ignore[arg-type]
    # the same per-direction order, but the directions interleaved differently
    req = [m for m in messages if m[0] == "requester"]
    resp = [m for m in messages if m[0] == "responder"]
    for pair in zip(resp, req, strict=False):
        for d, label, data in pair:
            two.absorb(d, label, data)  # type: ignore[arg-type]
    for d, label, data in req[len(resp) :]:
        two.absorb(d, label, data)  # type: ignore[arg-type]
    assert one.digest() == two.digest() and len(one.digest()) == 32


def test_transcript_sensitive_to_order_direction_label_context() -> None:
    ctx = make_context()
    base = Transcript(ctx)
    base.absorb("requester", "a", b"1")
    base.absorb("requester", "b", b"2")
    variants = []
    swapped = Transcript(ctx)
    swapped.absorb("requester", "b", b"2")
    swapped.absorb("requester", "a", b"1")
    variants.append(swapped)
    other_dir = Transcript(ctx)
    other_dir.absorb("responder", "a", b"1")
    other_dir.absorb("requester", "b", b"2")
    variants.append(other_dir)
    split = Transcript(ctx)
    split.absorb("requester", "a", b"12")
    split.absorb("requester", "b", b"")
    variants.append(split)
    other_ctx = Transcript(make_context(rng=seeded(2)))
    other_ctx.absorb("requester", "a", b"1")
    other_ctx.absorb("requester", "b", b"2")
    variants.append(other_ctx)
    assert len({v.digest() for v in variants} | {base.digest()}) == len(variants) + 1


def test_transcript_rejects_bad_direction_or_label() -> None:
    t = Transcript(make_context())
    with pytest.raises(ValueError):
        t.absorb("coordinator", "x", b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        t.absorb("requester", "Bad Label", b"")


def test_messages_round_trip() -> None:
    tags = np.arange(48, dtype=np.uint8).reshape(3, 16)
    chunk = TagChunk(RID, 4, tags)
    assert TagChunk.from_bytes(chunk.to_bytes(), round_id=RID, seq=4) == chunk
    match = MatchChunk(RID, 4, tags[:2], rows=np.array([7, 8, 9]), row_offsets=np.array([0, 2, 3]))
    assert match.rows_for(0).tolist() == [7, 8] and match.rows_for(1).tolist() == [9]
    wire = MatchChunk.from_bytes(match.to_bytes())
    assert wire == match and wire.rows is None
    with pytest.raises(ProtocolError):
        wire.rows_for(0)
    assert match.without_rows().rows is None
    share = KeyShare(RID, bytes(range(32)))
    assert KeyShare.from_bytes(share.to_bytes(), round_id=RID) == share
    points = PointChunk(RID, 0, "set", np.zeros((2, 32), np.uint8))
    assert PointChunk.from_bytes(points.to_bytes(), stage="set") == points


def test_match_rows_never_on_the_wire() -> None:
    rows = np.array([123456789], dtype=np.int64)
    match = MatchChunk(RID, 0, np.ones((1, 16), np.uint8), rows=rows, row_offsets=np.array([0, 1]))
    assert rows.tobytes() not in match.to_bytes()
    assert match.to_bytes() == match.without_rows().to_bytes()


def test_message_errors() -> None:
    data = TagChunk(RID, 2, np.zeros((3, 16), np.uint8)).to_bytes()
    with pytest.raises(ProtocolError, match="multiple of 16"):
        TagChunk.from_bytes(data[:-1])
    with pytest.raises(ProtocolError, match="another round"):
        TagChunk.from_bytes(data, round_id=bytes(16))
    with pytest.raises(ProtocolError, match="sequence number"):
        TagChunk.from_bytes(data, seq=1)
    with pytest.raises(ProtocolError, match="message type"):
        MatchChunk.from_bytes(data)
    with pytest.raises(ProtocolError, match="header"):
        TagChunk.from_bytes(data[:10])
    with pytest.raises(ProtocolError, match="items"):
        TagChunk.from_bytes(data[:-16])
    points = PointChunk(RID, 0, "blinded", np.zeros((1, 32), np.uint8)).to_bytes()
    with pytest.raises(ProtocolError, match="multiple of 32"):
        PointChunk.from_bytes(points + b"\x00" * 16)
    with pytest.raises(ProtocolError):
        PointChunk.from_bytes(points, stage="set")
    with pytest.raises(ProtocolError):
        TagChunk(RID, 0, np.zeros((2, 15), np.uint8))
    with pytest.raises(ProtocolError):
        TagChunk(RID, -1, np.zeros((2, 16), np.uint8))


def test_message_size_limit() -> None:
    big = TagChunk(RID, 0, np.zeros((MAX_TAGS_PER_CHUNK + 1, 16), np.uint8))
    with pytest.raises(ProtocolError, match="limit"):
        big.to_bytes()
    assert len(TagChunk(RID, 0, np.zeros((MAX_TAGS_PER_CHUNK, 16), np.uint8)).to_bytes()) < 4 << 20


def _raw_context(fields: list[bytes], params: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A context encoding with arbitrary field bytes (what a hostile peer can send)."""
    out = bytearray(b"XMCTX\x01")
    for part in fields:
        out += len(part).to_bytes(2, "big") + part
    out += len(params).to_bytes(2, "big")
    for name, value in params:
        for part in (name, value):
            out += len(part).to_bytes(2, "big") + part
    return bytes(out)


SECRET = "110105194912310021"  # an identity-shaped marker (GB 11643 example)
GOOD = [RID, b"2025-06-30", b"dibao-review", b"civil-affairs", b"police", b"custody", b"ecdh"]


@pytest.mark.parametrize(
    ("index", "value", "expected"),
    [
        (1, f"{SECRET}-{'9' * 60000}".encode(), "invalid round context: as_of is not a valid"),
        (1, b"20250630", "round context date is not canonical"),
        (1, SECRET.encode() + b"\xff", "invalid round context: as_of is not ASCII"),
        (2, f"Purpose {SECRET}".encode(), "invalid round context: purpose must be 1-64"),
        (3, ("x" * 65).encode(), "invalid round context: requester must be 1-64"),
        (5, SECRET.encode() + b"\x80", "invalid round context: match_set is not ASCII"),
        (6, f"rsa{SECRET}".encode(), "round context names an unknown protocol"),
    ],
)
def test_context_errors_never_echo_peer_bytes(index: int, value: bytes, expected: str) -> None:
    fields = list(GOOD)
    fields[index] = value
    with pytest.raises(ProtocolError) as info:
        RoundContext.from_bytes(_raw_context(fields))
    text = info.value.diagnostics()
    assert text.startswith(expected)
    assert SECRET not in text and "9999" not in text and len(text) < 120
    # nor in a chained cause that a traceback would print
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([(f"n{SECRET}".encode(), b"v"), (b"a", b"v")], "params must be sorted"),
        ([(b"suite", f"x {SECRET}".encode())], "params values must be 1-128"),
        ([(f"Bad{SECRET}".encode(), b"v")], "params names must be 1-32"),
        ([(b"suite", b"\xff" + SECRET.encode())], "params is not ASCII"),
    ],
)
def test_context_param_errors_never_echo_peer_bytes(
    params: list[tuple[bytes, bytes]], expected: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        RoundContext.from_bytes(_raw_context(GOOD, params))
    text = info.value.diagnostics()
    assert text.startswith(f"invalid round context: {expected}")
    assert SECRET not in text
