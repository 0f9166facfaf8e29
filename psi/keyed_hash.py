"""Protocol ``keyed-hash``: internal comparison at the node (protocols.md).

1. Both parties make an ephemeral X25519 key, exchange :class:`KeyShare`
   messages and derive the round key
   ``K = HKDF-SHA256(X25519 shared secret, salt="xmatch-v1 keyed-hash",
   info=context.to_bytes() || requester public key || responder public key)``.
2. The requester (coordinator) sends :class:`TagChunk` messages,
   ``T = AES-K(encode(id))`` for its roster.
3. The responder (node) tags its match set with the same PRF, inside the
   node, and answers each tag chunk with a :class:`MatchChunk` holding the
   queried tags it found (same ``seq``).

The PRF is AES in ECB mode over the contiguous buffer of 16-byte encodings
(one encryptor call per batch). AES is a permutation: distinct identities give
distinct tags. The round parameter ``prf`` selects ``aes128-ecb-v1``
(default) or ``aes256-ecb-v1``, or the GM PRF ``sm4-ecb-v1``: SM4 (GB/T 32907,
``cryptography``'s ``algorithms.SM4``) in ECB mode over the same blocks, the round
key from an ephemeral SM2 key agreement (:class:`psi.hazmat.sm2.EphemeralKey`,
33-byte compressed key shares) and HKDF over SM3; its transcript uses SM3.

Every message sent or received is absorbed into the round's
:class:`~psi.transcript.Transcript` by the role object, so both ends produce
the same digest from :meth:`finish` exactly when they saw the same messages.

The node learns |roster| and which roster identities it holds, and could
brute-force the roster (protocols.md); use ``ecdh`` where that matters.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable, Iterator
from typing import NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from psi._match import SortedRows
from psi.context import RoundContext
from psi.errors import AlreadyUsed, ProtocolError
from psi.hazmat import sm2
from psi.messages import MAX_TAGS_PER_CHUNK, KeyShare, MatchChunk, TagChunk
from psi.transcript import Direction, Transcript

__all__ = ["PRFS", "KeyedHashRequester", "KeyedHashResponder"]

#: PRF name -> AES key length in bytes.
PRFS = {"aes128-ecb-v1": 16, "aes256-ecb-v1": 32, "sm4-ecb-v1": 16}
#: The GM PRF: SM2 key agreement, HKDF-SM3, SM4.
SM4_PRF = "sm4-ecb-v1"
PrivateKey = X25519PrivateKey | sm2.EphemeralKey


def _ephemeral_key(context: RoundContext, rng: Callable[[int], bytes]) -> PrivateKey:
    """PRF dispatch: an SM2 key pair for ``sm4-ecb-v1``, else an X25519 one."""
    if context.param("prf", "aes128-ecb-v1") == SM4_PRF:
        return sm2.EphemeralKey.generate(rng)
    return X25519PrivateKey.from_private_bytes(rng(32))


_SALT = b"xmatch-v1 keyed-hash"


def _check_identities(identities: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    arr = np.asarray(identities)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 16:
        raise ValueError("identities must be an (n, 16) uint8 array from encode_identities")
    return np.ascontiguousarray(arr)


class _KeyedHashRole:
    """Key agreement, PRF and transcript shared by both roles."""

    _role: Direction

    def __init__(self, context: RoundContext, private_key: PrivateKey) -> None:
        if context.protocol != "keyed-hash":
            raise ProtocolError(f"round protocol is {context.protocol}, not keyed-hash")
        prf = context.param("prf", "aes128-ecb-v1")
        if prf not in PRFS:
            raise ProtocolError(f"unknown keyed-hash prf {prf!r}")
        self._context = context
        self._key_len = PRFS[prf]
        self._sm4 = prf == SM4_PRF
        if self._sm4 != isinstance(private_key, sm2.EphemeralKey):
            raise ProtocolError(f"prf {prf} needs an {'SM2' if self._sm4 else 'X25519'} key")
        self._private: PrivateKey | None = private_key
        if isinstance(private_key, sm2.EphemeralKey):
            self._public = private_key.public_bytes()
        else:
            self._public = private_key.public_key().public_bytes_raw()
        self._key: bytes | None = None
        self._finished = False
        self._transcript = Transcript(context)
        self._transcript.absorb(self._role, "key-share", self.key_share().to_bytes())

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds round secrets and cannot be pickled")

    @property
    def context(self) -> RoundContext:
        """The round this object serves."""
        return self._context

    def key_share(self) -> KeyShare:
        """This party's ephemeral public key, to send to the peer."""
        return KeyShare(round_id=self._context.round_id, public_key=self._public)

    def agree(self, peer: KeyShare) -> None:
        """Derive the round key from the peer's key share (once).

        Raises:
            AlreadyUsed: called a second time (the private key is gone).
            ProtocolError: the share belongs to another round, or the shared
                secret is all zero (a low-order public key).
        """
        self._check_open()
        if self._private is None:
            raise AlreadyUsed("round key already agreed; the ephemeral key is gone")
        if not isinstance(peer, KeyShare):
            raise ProtocolError("expected a KeyShare")
        if not hmac.compare_digest(peer.round_id, self._context.round_id):
            raise ProtocolError("key share belongs to another round")
        if len(peer.public_key) != len(self._public):
            raise ProtocolError(
                f"peer key share has {len(peer.public_key)} bytes, "
                f"this prf uses {len(self._public)}"
            )
        private, self._private = self._private, None
        if isinstance(private, sm2.EphemeralKey):
            try:
                shared = private.exchange(peer.public_key)
            except ValueError as exc:
                raise ProtocolError("peer key share is not a point of the SM2 curve") from exc
        else:
            try:
                shared = private.exchange(X25519PublicKey.from_public_bytes(peer.public_key))
            except ValueError as exc:
                raise ProtocolError("peer key share is a low-order point") from exc
            if shared == bytes(32):
                raise ProtocolError("peer key share is a low-order point")
        peer_role: Direction = "responder" if self._role == "requester" else "requester"
        self._transcript.absorb(peer_role, "key-share", peer.to_bytes())
        if self._role == "requester":
            req_pk, resp_pk = self._public, peer.public_key
        else:
            req_pk, resp_pk = peer.public_key, self._public
        self._key = HKDF(
            algorithm=hashes.SM3() if self._sm4 else hashes.SHA256(),
            length=self._key_len,
            salt=_SALT,
            info=self._context.to_bytes() + req_pk + resp_pk,
        ).derive(shared)

    def _prf(self, identities: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        if self._key is None:
            raise ProtocolError("no round key yet: call agree() first")
        cipher = algorithms.SM4(self._key) if self._sm4 else algorithms.AES(self._key)
        encryptor = Cipher(cipher, modes.ECB()).encryptor()
        out = encryptor.update(identities.tobytes()) + encryptor.finalize()
        return np.frombuffer(out, dtype=np.uint8).reshape(-1, 16)

    def _check_open(self) -> None:
        if self._finished:
            raise AlreadyUsed(f"{type(self).__name__} for this round has finished")

    def _check_round(self, round_id: bytes, what: str) -> None:
        if not hmac.compare_digest(round_id, self._context.round_id):
            raise ProtocolError(f"{what} belongs to another round")

    def _finish(self) -> bytes:
        self._check_open()
        self._finished = True
        self._key = None
        self._private = None
        return self._transcript.digest()


class KeyedHashRequester(_KeyedHashRole):
    """The coordinator's side: tags its roster, resolves the node's matches."""

    _role: Direction = "requester"

    def __init__(self, context: RoundContext, private_key: PrivateKey) -> None:
        super().__init__(context, private_key)
        self._chunks: list[npt.NDArray[np.uint8]] = []
        self._offsets: list[int] = []
        self._tagged = 0
        self._resolved = 0

    @classmethod
    def generate(
        cls, context: RoundContext, *, rng: Callable[[int], bytes] = os.urandom
    ) -> KeyedHashRequester:
        """A requester with a fresh ephemeral key drawn from ``rng``.

        Raises:
            ProtocolError: the context is not a keyed-hash round or names an
                unknown ``prf``.
        """
        return cls(context, _ephemeral_key(context, rng))

    def tag(self, identities: npt.NDArray[np.uint8]) -> TagChunk:
        """Tag the next batch of encoded identities; returns the chunk to send.

        May be called repeatedly; indices returned by :meth:`resolve` count
        across all batches in call order.

        Raises:
            ProtocolError: no round key yet, or more than
                :data:`~psi.messages.MAX_TAGS_PER_CHUNK` identities.
            AlreadyUsed: the round has finished.
            ValueError: ``identities`` is not an (n, 16) uint8 array.
        """
        self._check_open()
        ids = _check_identities(identities)
        if len(ids) > MAX_TAGS_PER_CHUNK:
            raise ProtocolError(f"at most {MAX_TAGS_PER_CHUNK} identities per chunk")
        tags = self._prf(ids)
        chunk = TagChunk(round_id=self._context.round_id, seq=len(self._chunks), tags=tags)
        self._transcript.absorb("requester", "tags", chunk.to_bytes())
        self._chunks.append(chunk.tags)
        self._offsets.append(self._tagged)
        self._tagged += len(tags)
        return chunk

    @property
    def tagged(self) -> int:
        """Number of identities tagged so far."""
        return self._tagged

    def resolve(self, matched: MatchChunk) -> npt.NDArray[np.int64]:
        """Indices (into everything tagged, ascending) of this chunk's matches.

        Match chunks must arrive in order, one per tag chunk sent.

        Raises:
            ProtocolError: another round, out of order, an answer to a chunk
                never sent, or a tag that was not in the query chunk.
            AlreadyUsed: the round has finished.
        """
        self._check_open()
        if not isinstance(matched, MatchChunk):
            raise ProtocolError("expected a MatchChunk")
        self._check_round(matched.round_id, "match chunk")
        if matched.seq != self._resolved:
            raise ProtocolError(
                f"match chunk sequence number {matched.seq}, expected {self._resolved}"
            )
        if matched.seq >= len(self._chunks):
            raise ProtocolError("match chunk answers a tag chunk that was never sent")
        wire = matched.without_rows()
        self._transcript.absorb("responder", "matches", wire.to_bytes())
        query = self._chunks[matched.seq]
        q_idx, pos = SortedRows(query).lookup(wire.tags)
        if len(np.unique(q_idx)) != len(wire.tags):
            raise ProtocolError(f"match chunk {matched.seq} holds a tag that was not queried")
        self._resolved += 1
        # The tags are no longer needed once answered.
        self._chunks[matched.seq] = query[:0]
        return np.unique(pos + self._offsets[matched.seq]).astype(np.int64)

    def finish(self) -> bytes:
        """End the round; returns the transcript digest.

        Raises:
            ProtocolError: some tag chunk has not been answered yet.
            AlreadyUsed: called twice.
        """
        self._check_open()
        if self._resolved != len(self._chunks):
            raise ProtocolError(
                f"{len(self._chunks) - self._resolved} tag chunk(s) still unanswered"
            )
        return self._finish()


class KeyedHashResponder(_KeyedHashRole):
    """The node's side: tags its match set once and answers tag chunks."""

    _role: Direction = "responder"

    def __init__(self, context: RoundContext, private_key: PrivateKey) -> None:
        super().__init__(context, private_key)
        self._set: SortedRows | None = None
        self._next_seq = 0
        # Streaming mode (sets larger than memory): the buffered query chunks,
        # then the sorted table of all their tags and the (query, row) pairs found.
        self._buffered: list[npt.NDArray[np.uint8]] = []
        self._table: SortedRows | None = None
        self._pairs_q: list[npt.NDArray[np.int64]] = []
        self._pairs_row: list[npt.NDArray[np.int64]] = []
        self._rows_seen = 0
        self._emitted = False

    @classmethod
    def generate(
        cls, context: RoundContext, *, rng: Callable[[int], bytes] = os.urandom
    ) -> KeyedHashResponder:
        """A responder with a fresh ephemeral key drawn from ``rng``.

        Raises:
            ProtocolError: the context is not a keyed-hash round or names an
                unknown ``prf``.
        """
        return cls(context, _ephemeral_key(context, rng))

    def load_set(self, identities: npt.NDArray[np.uint8]) -> None:
        """Tag and sort the whole match set (row i = the node's record i).

        Raises:
            ProtocolError: no round key yet.
            AlreadyUsed: a set was already loaded, or the round has finished.
            ValueError: ``identities`` is not an (n, 16) uint8 array.
        """
        self._check_open()
        if self._set is not None:
            raise AlreadyUsed("match set already loaded for this round")
        if self._buffered or self._table is not None:
            raise ProtocolError("this round streams its set: load_set() is not available")
        ids = _check_identities(identities)
        self._set = SortedRows(self._prf(ids))

    def match(self, chunk: TagChunk) -> MatchChunk:
        """Answer one tag chunk: the queried tags found, with the node's rows.

        Send ``result.to_bytes()`` (or ``result.without_rows()``); the row
        indices never leave the node.

        Raises:
            ProtocolError: another round, out-of-order chunk, or no set loaded.
            AlreadyUsed: the round has finished.
        """
        self._receive(chunk)
        if self._set is None:
            raise ProtocolError("no match set loaded: call load_set() first")
        self._transcript.absorb("requester", "tags", chunk.to_bytes())
        self._next_seq += 1
        q_idx, rows = self._set.lookup(chunk.tags)
        return self._answer(chunk.seq, chunk.tags, q_idx, rows)

    def _receive(self, chunk: TagChunk) -> None:
        self._check_open()
        if not isinstance(chunk, TagChunk):
            raise ProtocolError("expected a TagChunk")
        self._check_round(chunk.round_id, "tag chunk")
        if chunk.seq != self._next_seq:
            raise ProtocolError(f"tag chunk sequence number {chunk.seq}, expected {self._next_seq}")

    def _answer(
        self,
        seq: int,
        tags: npt.NDArray[np.uint8],
        q_idx: npt.NDArray[np.int64],
        rows: npt.NDArray[np.int64],
    ) -> MatchChunk:
        """The MatchChunk for (query index, row) pairs ordered by query, then row."""
        hit, counts = np.unique(q_idx, return_counts=True)
        offsets = np.zeros(len(hit) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        result = MatchChunk(
            round_id=self._context.round_id,
            seq=seq,
            tags=tags[hit],
            rows=rows,
            row_offsets=offsets,
        )
        self._transcript.absorb("responder", "matches", result.to_bytes())
        return result

    # -- streaming: match sets larger than memory ------------------------------------------

    def buffer(self, chunk: TagChunk) -> None:
        """Keep a tag chunk to answer after the set has been streamed (no ``load_set``).

        The streaming mode answers the same chunks with the same
        :class:`MatchChunk` messages, in the same order, as :meth:`match`
        would; only their timing differs (all after :meth:`match_batch` has
        seen the whole set). Memory: the query tags (16 bytes each) plus 16
        bytes per match, whatever the size of the set.

        Raises:
            ProtocolError: another round, out of order, a set was loaded with
                :meth:`load_set`, or the set is already being streamed.
            AlreadyUsed: the round has finished.
        """
        self._receive(chunk)
        if self._set is not None:
            raise ProtocolError("a match set is loaded: answer chunks with match()")
        if self._table is not None:
            raise ProtocolError("tag chunk after the match set started streaming")
        self._transcript.absorb("requester", "tags", chunk.to_bytes())
        self._next_seq += 1
        self._buffered.append(chunk.tags)

    def match_batch(self, identities: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        """Tag the next batch of the set and match it against every buffered chunk.

        Rows count across batches in call order (row ``i`` of the second batch
        is row ``len(first) + i`` of the set). Returns the positions, within
        this batch, of the rows that matched (ascending), so that the caller
        can keep their payload and drop the rest.

        Raises:
            ProtocolError: no round key yet, a set was loaded with
                :meth:`load_set`, or the matches were already emitted.
            AlreadyUsed: the round has finished.
            ValueError: ``identities`` is not an (n, 16) uint8 array.
        """
        self._check_open()
        if self._set is not None:
            raise ProtocolError("a match set is loaded: answer chunks with match()")
        if self._emitted:
            raise ProtocolError("matches already emitted: the set was complete")
        ids = _check_identities(identities)
        if self._table is None:
            query = (
                np.concatenate(self._buffered)
                if self._buffered
                else np.zeros((0, 16), dtype=np.uint8)
            )
            self._table = SortedRows(query)
        rows, q_idx = self._table.lookup(self._prf(ids))
        self._pairs_q.append(q_idx)
        self._pairs_row.append(rows + self._rows_seen)
        self._rows_seen += len(ids)
        return np.unique(rows)

    def streamed_matches(self) -> Iterator[MatchChunk]:
        """After the last :meth:`match_batch`: one MatchChunk per buffered chunk, in order.

        Raises:
            ProtocolError: called twice, or a set was loaded with :meth:`load_set`.
            AlreadyUsed: the round has finished.
        """
        self._check_open()
        if self._set is not None:
            raise ProtocolError("a match set is loaded: answer chunks with match()")
        if self._emitted:
            raise ProtocolError("matches already emitted")
        self._emitted = True
        q_all = np.concatenate(self._pairs_q) if self._pairs_q else np.zeros(0, np.int64)
        r_all = np.concatenate(self._pairs_row) if self._pairs_row else np.zeros(0, np.int64)
        self._pairs_q, self._pairs_row = [], []
        order = np.lexsort((r_all, q_all))
        q_all, r_all = q_all[order], r_all[order]
        chunks, self._buffered, self._table = self._buffered, [], None
        return self._emit_streamed(chunks, q_all, r_all)

    def _emit_streamed(
        self,
        chunks: list[npt.NDArray[np.uint8]],
        q_all: npt.NDArray[np.int64],
        r_all: npt.NDArray[np.int64],
    ) -> Iterator[MatchChunk]:
        start = 0
        for seq, tags in enumerate(chunks):
            stop = start + len(tags)
            lo, hi = np.searchsorted(q_all, [start, stop], side="left")
            self._check_open()
            yield self._answer(seq, tags, q_all[lo:hi] - start, r_all[lo:hi])
            start = stop

    def match_streaming(
        self, tag_chunks: Iterable[TagChunk], set_batches: Iterable[npt.NDArray[np.uint8]]
    ) -> Iterator[MatchChunk]:
        """:meth:`buffer` every chunk, :meth:`match_batch` every batch, then the answers.

        Raises:
            as :meth:`buffer`, :meth:`match_batch` and :meth:`streamed_matches`.
        """
        for chunk in tag_chunks:
            self.buffer(chunk)
        for batch in set_batches:
            self.match_batch(batch)
        return self.streamed_matches()

    def finish(self) -> bytes:
        """End the round; returns the transcript digest.

        Raises:
            AlreadyUsed: called twice.
        """
        self._set = None
        self._buffered, self._table, self._pairs_q, self._pairs_row = [], None, [], []
        return self._finish()
