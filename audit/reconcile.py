"""Reconciling the coordinator's log with the nodes' logs, round by round.

Both sides log every round under the same random round id and record the
round's transcript hash. A round is keyed by ``(round_id, responder, match_set)``;
its state on one side is its last terminal event (finished, failed, refused), or
``incomplete`` if it only started. Run this on logs that passed
:func:`audit.verify.check_log`: reconciling tampered logs proves nothing.

Anchors: the node reports the seq and line hash of its own ``round_finished``
entry, and the coordinator logs them (``node_log_seq``, ``node_log_head``). A
node log that no longer has that exact line at that seq was cut short or
rewritten after the round, even if it was re-chained and re-signed: the node
holds its own signing key, but not the coordinator's (:func:`check_anchors`).
The coordinator, though, chooses what it logs as an anchor, so a finding names
the two records that disagree and leaves the blame to the reviewer.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from audit import format as fmt
from audit.verify import Entry, LogVerification

RoundKey = tuple[str, str, str]
"""``(round_id, responder, match_set)``."""


@dataclass(frozen=True)
class RoundState:
    """One party's view of one round."""

    party: str
    line: int
    round_id: str
    requester: str
    responder: str
    match_set: str
    outcome: str
    transcript: str | None
    match_count: int | None
    query_size: int | None


@dataclass(frozen=True)
class ReconcileFinding:
    """A discrepancy between logs (``severity="note"``: worth reading, not a finding)."""

    round_id: str
    message: str
    severity: str = "finding"

    def describe(self) -> str:
        """``round <first 12 hex digits>: message``."""
        return f"round {self.round_id[:12]}: {self.message}"


@dataclass(frozen=True)
class ReconcileResult:
    """All discrepancies, and how many rounds were compared on both sides."""

    findings: tuple[ReconcileFinding, ...]
    notes: tuple[ReconcileFinding, ...]
    compared: int

    @property
    def ok(self) -> bool:
        """No findings (notes allowed)."""
        return not self.findings


def _str(entry: Entry, key: str) -> str:
    value = entry.fields.get(key)
    return value if isinstance(value, str) else ""


def _int(entry: Entry, key: str) -> int | None:
    value = entry.fields.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _outcome(entry: Entry) -> str:
    if entry.event == fmt.ROUND_FINISHED:
        given = entry.fields.get("outcome")
        return given if isinstance(given, str) else "ok"
    return {fmt.ROUND_FAILED: "failed", fmt.ROUND_REFUSED: "refused"}.get(entry.event, "incomplete")


@dataclass
class _Attempt:
    """One ``node answer`` of a sealed request: from its ``offline_file`` ``opened``
    entry to the process's end (``shutdown``, or the next process's first entry)."""

    round_id: str
    request: str
    answered: bool = False


def _retried(earlier: _Attempt | None, now: _Attempt | None) -> bool:
    """Whether a round ended in ``earlier`` may end again in ``now``: a retry of the
    same request after an attempt that wrote no response (failed or interrupted)."""
    return (
        earlier is not None
        and now is not None
        and earlier is not now
        and earlier.request == now.request
        and not earlier.answered
    )


def round_states(log: LogVerification) -> tuple[dict[RoundKey, RoundState], list[ReconcileFinding]]:
    """Each round's final state in one log, plus findings for round ids used twice.

    A node may end the rounds of one offline request again when it answers the
    request again after an attempt that wrote no response (docs/offline.md): that is
    no reuse, and the answered attempt's entries are the round's state. A request
    answered twice (two responses written for it) is a finding.

    The placeholder round id (:data:`audit.format.UNKNOWN_ROUND_ID`) is skipped in a
    ``round_refused`` entry with match set ``-`` (a call refused before it had a
    round); any other entry under it is a finding, since no real round may have
    that id (:class:`psi.context.RoundContext` refuses it).
    """
    states: dict[RoundKey, RoundState] = {}
    terminal_at: dict[RoundKey, tuple[int, _Attempt | None]] = {}
    findings: list[ReconcileFinding] = []
    attempt: _Attempt | None = None
    answered_at: dict[str, int] = {}  # request file id -> its written response's entry
    for entry in log.entries:
        if entry.event == fmt.OFFLINE_FILE:
            kind, action = _str(entry, "kind"), _str(entry, "action")
            if kind == "request" and action == "opened":
                attempt = _Attempt(_str(entry, "round_id"), _str(entry, "file_id"))
            elif kind == "response" and action == "written":
                request = _str(entry, "request_id")
                if attempt is not None and attempt.request == request:
                    attempt.answered = True
                if request in answered_at:
                    findings.append(
                        ReconcileFinding(
                            _str(entry, "round_id"),
                            f"{log.party}'s log answers the offline request {request[:12]} "
                            f"twice (entries {answered_at[request]} and {entry.line})",
                        )
                    )
                answered_at[request] = entry.line
            continue
        if entry.event in (fmt.SHUTDOWN, fmt.CONFIG_LOADED):
            attempt = None  # the process that answered a request ended (or another began)
            continue
        if entry.event not in fmt.ROUND_EVENTS:
            continue
        key = (_str(entry, "round_id"), _str(entry, "responder"), _str(entry, "match_set"))
        if key[0] == fmt.UNKNOWN_ROUND_ID:
            if entry.event == fmt.ROUND_REFUSED and key[2] == "-":
                continue  # refused before any round existed: nothing to pair
            findings.append(
                ReconcileFinding(
                    key[0],
                    f"{log.party}'s log has a {entry.event} entry under the placeholder round "
                    f"id (entry {entry.line}): only a refusal before any round (match set "
                    f"'-') may use it",
                )
            )
            continue
        if entry.event in fmt.TERMINAL_EVENTS:
            mine = attempt if attempt is not None and attempt.round_id == key[0] else None
            if key in terminal_at and not _retried(terminal_at[key][1], mine):
                findings.append(
                    ReconcileFinding(
                        key[0],
                        f"{log.party}'s log ends this round twice (entries "
                        f"{terminal_at[key][0]} and {entry.line}): a round id was reused",
                    )
                )
            terminal_at[key] = (entry.line, mine)
        elif key in states:
            continue  # a started event after a terminal one is covered by the reuse check
        states[key] = RoundState(
            party=entry.party,
            line=entry.line,
            round_id=key[0],
            requester=_str(entry, "requester"),
            responder=key[1],
            match_set=key[2],
            outcome=_outcome(entry),
            transcript=_str(entry, "transcript") or None,
            match_count=_int(entry, "match_count"),
            query_size=_int(entry, "query_size"),
        )
    return states, findings


def _compare(coord: RoundState, node: RoundState) -> tuple[list[str], list[str]]:
    """(findings, notes) for one round seen by both sides."""
    problems: list[str] = []
    notes: list[str] = []
    where = f"({coord.party} entry {coord.line}, {node.party} entry {node.line})"
    if coord.outcome != node.outcome:
        text = (
            f"outcome {coord.outcome!r} at {coord.party}, {node.outcome!r} at {node.party} {where}"
        )
        # A node's refusal is the coordinator's failure: only ok-versus-not-ok is a finding.
        (problems if "ok" in (coord.outcome, node.outcome) else notes).append(text)
    if coord.outcome == node.outcome == "ok":
        if coord.transcript is None or node.transcript is None:
            problems.append(f"transcript hash missing on one side {where}")
        elif not hmac.compare_digest(coord.transcript.encode(), node.transcript.encode()):
            problems.append(
                f"transcript hashes differ: {coord.transcript[:16]}… at {coord.party}, "
                f"{node.transcript[:16]}… at {node.party} {where}"
            )
    for label in ("match_count", "query_size"):
        x, y = getattr(coord, label), getattr(node, label)
        if x is not None and y is not None and x != y:
            problems.append(f"{label} {x} at {coord.party}, {y} at {node.party} {where}")
    return problems, notes


def check_anchors(
    coordinator: LogVerification, nodes: Mapping[str, LogVerification]
) -> list[ReconcileFinding]:
    """Findings for the coordinator's anchors that the nodes' logs do not bear out.

    For each ``round_finished`` entry of the coordinator's own rounds that carries
    ``node_log_seq`` N and ``node_log_head`` H, with the responder's log given:

      1. the responder's log has an entry N;
      2. SHA-256 of that entry's line is H;
      3. that entry is this round's ``round_finished`` (same round id, responder
         and match set).

    A failed step is a finding ("COORD's anchor and NODE's log disagree at entry
    N"). It says which two records disagree, not who is at fault: the coordinator
    chose what it logged as the anchor, the node what its log holds.
    """
    findings: list[ReconcileFinding] = []
    coord_party = coordinator.party or ""
    # Built once per node log (not once per anchor): linear in the logs' sizes.
    by_seq = {party: {e.seq: e for e in log.entries} for party, log in nodes.items()}
    ends = {party: max(entries, default=0) for party, entries in by_seq.items()}
    for entry in coordinator.entries:
        if entry.event != fmt.ROUND_FINISHED or _str(entry, "requester") != coord_party:
            continue
        seq, head = _int(entry, "node_log_seq"), _str(entry, "node_log_head")
        responder = _str(entry, "responder")
        node = by_seq.get(responder)
        if seq is None or not head or node is None:
            continue
        round_id, match_set = _str(entry, "round_id"), _str(entry, "match_set")
        target = node.get(seq)
        # (1)
        if target is None:
            why = f"{responder}'s log ends at entry {ends[responder]}"
        # (2)
        elif not hmac.compare_digest(
            fmt.line_hash(target.raw, _profile(node)).encode(), head.encode()
        ):
            hashed = fmt.line_hash(target.raw, _profile(node))
            why = f"it hashes to {hashed[:16]}…, the anchor has {head[:16]}…"
        # (3)
        elif target.event != fmt.ROUND_FINISHED or (
            _str(target, "round_id"),
            _str(target, "responder"),
            _str(target, "match_set"),
        ) != (round_id, responder, match_set):
            why = "it is not this round's round_finished"
        else:
            continue
        findings.append(
            ReconcileFinding(
                round_id,
                f"{coord_party}'s anchor (entry {entry.line}) and {responder}'s log disagree "
                f"at entry {seq}: {why}",
            )
        )
    return findings


def declared_rosters(coordinator: LogVerification) -> dict[str, tuple[int, int]]:
    """``round_id`` -> (``roster_size``, entry line) from the coordinator's ``roster_committed``."""
    found: dict[str, tuple[int, int]] = {}
    for entry in coordinator.entries:
        size = _int(entry, "roster_size")
        if entry.event == fmt.ROSTER_COMMITTED and size is not None:
            found[_str(entry, "round_id")] = (size, entry.line)
    return found


def check_roster_sizes(
    coordinator: LogVerification, node_states: Mapping[str, Mapping[RoundKey, RoundState]]
) -> list[ReconcileFinding]:
    """Findings for node-side query sizes that differ from the roster the coordinator declared.

    Every node of a round is queried with the whole roster, so each node's
    ``query_size`` (finished, failed or refused) must equal the ``roster_size``
    of the coordinator's ``roster_committed`` entry for that round id.
    """
    declared = declared_rosters(coordinator)
    findings: list[ReconcileFinding] = []
    for party, states in node_states.items():
        for key, node in sorted(states.items(), key=lambda kv: kv[1].line):
            size, line = declared.get(key[0], (None, 0))
            if size is not None and node.query_size is not None and node.query_size != size:
                findings.append(
                    ReconcileFinding(
                        key[0],
                        f"{party} saw a query of {node.query_size} identities (entry {node.line}), "
                        f"{coordinator.party} declared a roster of {size} (entry {line})",
                    )
                )
    return findings


def reconcile(coordinator: LogVerification, nodes: Sequence[LogVerification]) -> ReconcileResult:
    """Pair the coordinator's rounds with each node's by round id.

    Findings: a round the coordinator completed (or was refused) with node X that
    X's log lacks; a round in X's log for this coordinator that the coordinator's
    log lacks; a round that one side completed and the other did not; differing
    transcript hashes, match counts or query sizes; a round id ended twice in one
    log; an anchor the node's log does not bear out (:func:`check_anchors`); a
    node-side query size other than the roster the coordinator declared
    (:func:`check_roster_sizes`).
    Notes: rounds with nodes whose logs were not given, coordinator-side failures
    that never reached the node, and differing kinds of non-completion (the
    coordinator logs a node's refusal as its own failure).
    """
    coord_party = coordinator.party or ""
    coord_states, findings = round_states(coordinator)
    notes: list[ReconcileFinding] = []
    coord_states = {k: v for k, v in coord_states.items() if v.requester == coord_party}
    by_party = {log.party: log for log in nodes if log.party}
    compared = 0
    node_states: dict[str, dict[RoundKey, RoundState]] = {}
    for party, log in by_party.items():
        states, reused = round_states(log)
        findings.extend(reused)
        node_states[party] = {
            k: v for k, v in states.items() if v.requester == coord_party and v.responder == party
        }
    for key, coord in sorted(coord_states.items(), key=lambda kv: kv[1].line):
        if coord.responder not in node_states:
            notes.append(ReconcileFinding(key[0], f"no log given for {coord.responder!r}", "note"))
            continue
        node = node_states[coord.responder].get(key)
        if node is None:
            message = (
                f"in {coord_party}'s log (entry {coord.line}, {coord.outcome}) "
                f"but not in {coord.responder}'s log"
            )
            if coord.outcome in ("failed", "incomplete"):
                notes.append(
                    ReconcileFinding(
                        key[0], message + " (it may never have reached the node)", "note"
                    )
                )
            else:
                findings.append(ReconcileFinding(key[0], message))
            continue
        compared += 1
        problems, remarks = _compare(coord, node)
        findings.extend(ReconcileFinding(key[0], problem) for problem in problems)
        notes.extend(ReconcileFinding(key[0], remark, "note") for remark in remarks)
    for party, states in node_states.items():
        for key, node in sorted(states.items(), key=lambda kv: kv[1].line):
            if key not in coord_states:
                findings.append(
                    ReconcileFinding(
                        key[0],
                        f"in {party}'s log (entry {node.line}, {node.outcome}) "
                        f"but not in {coord_party}'s log",
                    )
                )
    findings.extend(check_anchors(coordinator, by_party))
    findings.extend(check_roster_sizes(coordinator, node_states))
    return ReconcileResult(tuple(findings), tuple(notes), compared)


def _profile(entries: Mapping[int, Entry]) -> str:
    """A node log's profile (international or GM), told by its entry 1."""
    first = entries.get(1)
    return fmt.profile_of(first.raw) if first is not None else "international"
