"""A real NodeClient whose stub is a test's fake node: the client's own checks and
sessions run on the fake's answers, with no channel underneath."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, cast

import grpc

from coordinator.client import NodeClient
from coordinator.config import NodeEntry
from proto import xmatch_pb2 as pb
from proto import xmatch_pb2_grpc as pb_grpc
from psi.context import RoundContext
from tests.federation import AS_OF

#: the one match set a stub node offers, by protocol
SETS = {"keyed-hash": ("police", "deaths", "DEAD"), "ecdh": ("justice", "custody", "IMPRISONED")}


def stub_client(
    stub: object,
    protocol: Literal["keyed-hash", "ecdh"] = "keyed-hash",
    *,
    chunk_items: int = 16,
    **keys: Any,
) -> NodeClient:
    """A client of ``stub`` (police/deaths for keyed-hash, justice/custody for ecdh);
    ``keys``: more fields of its ``[[nodes]]`` entry."""
    node, match_set, circumstance = SETS[protocol]
    entry = NodeEntry(
        name=node, address="127.0.0.1:9", match_sets=[match_set], protocol=protocol, **keys
    )
    client = NodeClient(entry, credentials=grpc.ssl_channel_credentials(), chunk_items=chunk_items)
    client._stub = cast(pb_grpc.NodeStub, stub)
    client._caps = pb.Capabilities(
        node=node,
        match_sets=[
            pb.MatchSetInfo(name=match_set, circumstance=circumstance, protocols=[protocol])
        ],
        max_chunk_bytes=1 << 20,
    )
    return client


def stub_context(
    protocol: Literal["keyed-hash", "ecdh"] = "keyed-hash", as_of: dt.date = AS_OF
) -> RoundContext:
    """A round context for the stub node's one match set (as :func:`stub_client`)."""
    node, match_set, _ = SETS[protocol]
    return RoundContext.new(
        as_of=as_of,
        purpose="eligibility-review",
        requester="civil-affairs",
        responder=node,
        match_set=match_set,
        protocol=protocol,
    )
