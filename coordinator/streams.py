"""The requester's side of a protocol stream: one response loop for both protocols.

:class:`coordinator.client.NodeClient` feeds it one handler per message kind;
the loop owns the order rules, cancellation and the final ``done`` check.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from proto import xmatch_pb2 as pb
from psi.errors import PeerError

__all__ = ["StreamState", "log_anchor", "records", "run_stream"]

#: Largest ``RoundDone.log_seq`` we accept; a protocol log never gets near it
#: (and the audit format refuses integers from 10**14 on).
_MAX_LOG_SEQ = 10**13
_LOG_HEAD = re.compile(r"[0-9a-f]{64}")


@dataclass
class StreamState:
    """Shared between the request generator and the response loop."""

    accepted: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    sent_chunks: int = 0
    sent_items: int = 0
    #: identities answered so far (for the progress display only)
    answered: int = 0

    def wait_accepted(self) -> bool:
        while not self.accepted.wait(0.05):
            if self.stop.is_set():
                return False
        return not self.stop.is_set()


def run_stream(
    peer: str,
    call: Any,
    state: StreamState,
    handlers: Mapping[str, Callable[[Any], None]],
) -> pb.RoundDone:
    """The one response loop of both protocols: dispatch, cancel on error, the done check.

    ``accept`` is legal first and only once, each kind in ``handlers`` only after it,
    and nothing after ``done``; anything else is ``unexpected``. The request side
    (run by gRPC in its own thread) reports its error through ``state``.

    Raises:
        PeerError: an unexpected message, or the stream ended before ``done``.
        BaseException: whatever a handler or the request side raised.
    """
    done: pb.RoundDone | None = None
    try:
        for resp in call:
            kind = resp.WhichOneof("msg")
            if kind == "done" and done is None:
                done = resp.done
                continue
            handler = handlers.get(kind) if kind and done is None else None
            if handler is None or (kind == "accept") == state.accepted.is_set():
                raise PeerError(peer, f"unexpected {kind or 'empty'} message")
            handler(getattr(resp, kind))
    except BaseException:
        state.stop.set()
        call.cancel()
        raise
    finally:
        state.stop.set()
    if state.error is not None:
        raise state.error
    if done is None:
        raise PeerError(peer, "stream ended early")
    return done


def records(
    peer: str, idx: npt.NDArray[np.int64], entries: Sequence[pb.Payload]
) -> tuple[npt.NDArray[np.int64], list[dict[str, str]]]:
    """One (identity index, payload) per matched record of a keyed-hash chunk.

    Each payload entry names its tag in the psi chunk (``Payload.tag``); a
    person with two records gives two entries for one tag.

    Raises:
        PeerError: a tag index out of range, or a matched tag without a record.
    """
    fields = [dict(p.fields) for p in entries]
    tags = np.fromiter((p.tag for p in entries), dtype=np.int64, count=len(entries))
    if len(tags) and int(tags.max()) >= len(idx):
        raise PeerError(peer, "payload entry names no matched tag")
    seen = np.zeros(len(idx), dtype=bool)
    seen[tags] = True
    if not seen.all():
        raise PeerError(peer, "a matched tag has no payload entry")
    return idx[tags], fields


def log_anchor(peer: str, done: pb.RoundDone) -> tuple[int, str] | None:
    """The node's log anchor from ``RoundDone``: ``(log_seq, log_head)``, or None if absent.

    Raises:
        PeerError: only one of the two is set, ``log_seq`` is out of range, or
            ``log_head`` is not 64 lower-case hex digits (the reason never
            quotes what the node sent).
    """
    seq, head = int(done.log_seq), str(done.log_head)
    if seq == 0 and head == "":
        return None
    if not 1 <= seq <= _MAX_LOG_SEQ or _LOG_HEAD.fullmatch(head) is None:
        raise PeerError(peer, "out of protocol: malformed log anchor in RoundDone")
    return seq, head
