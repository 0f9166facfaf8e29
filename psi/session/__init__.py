"""Sans-I/O sessions: one per protocol and role, each the protocol's message sequence.

A session consumes and produces the typed messages of :mod:`psi.session.messages`,
knows which message is legal next (:mod:`psi.session._state`) and raises
:class:`psi.errors.ProtocolError` on any other. It does no I/O: a *runner* (the
coordinator's gRPC stream, the node's servicer, a sealed-file exchange, a test)
moves the messages. The role objects of :mod:`psi.keyed_hash` and :mod:`psi.ecdh`
stay the cryptographic core; the sessions sequence them. See docs/architecture.md,
"Sessions and runners".
"""

from psi.session._requester import Evidence, Progress, RequesterResult, RequesterSession
from psi.session._responder import ResponderSession
from psi.session.ecdh import EcdhRequesterSession, EcdhResponderSession
from psi.session.keyed_hash import (
    DEFAULT_MAX_RECORDS_PER_IDENTITY,
    KeyedHashRequesterSession,
    KeyedHashResponderSession,
    evidence_indices,
)
from psi.session.messages import (
    Accept,
    Chunk,
    Done,
    End,
    Matches,
    PayloadColumns,
    Points,
    RequesterMessage,
    ResponderMessage,
    Start,
)

__all__ = [
    "DEFAULT_MAX_RECORDS_PER_IDENTITY",
    "Accept",
    "Chunk",
    "Done",
    "EcdhRequesterSession",
    "EcdhResponderSession",
    "End",
    "Evidence",
    "KeyedHashRequesterSession",
    "KeyedHashResponderSession",
    "Matches",
    "PayloadColumns",
    "Points",
    "Progress",
    "RequesterMessage",
    "RequesterResult",
    "RequesterSession",
    "ResponderMessage",
    "ResponderSession",
    "Start",
    "evidence_indices",
]
