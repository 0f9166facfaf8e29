"""``xmatch round run``: one match round, from roster to decisions.

Steps (docs/coordinator.md, "A round"):

1. Load ``coordinator.toml``; check that ``--out`` is new or empty; read the
   roster (each invalid identity number goes to stderr as
   ``FILE:LINE: column X: problem``); load our TLS identity and audit key.
   Any failure here is fatal: exit 1, nothing written, no network traffic.
2. Canonical identity numbers of the children and parents (unique, valid
   only), put in a random order (a CSPRNG permutation, new every round: the
   position of a tag or blinded point tells a node nothing about region or
   birth year) and encoded once.
3. Every (node, match set) is a sub-round, all run concurrently in threads,
   one channel per node, ecdh EC work in one process pool. A sub-round that
   fails or is refused becomes a ``failed_sources`` entry; the round goes on.
   keyed-hash matches delivered before the failure are kept as evidence (a
   match is a match); the failure only stops conclusions from absent matches.
   Nothing a node sends (payload keys, status text, numbers it declares)
   reaches a log entry, the state or the report except through
   ``coordinator.client._safe_detail``; a log entry refused by the identity
   guard is written again with ``reason="withheld"`` (or without the node's
   fields), so that no node can fail the round.
4. Evidence rows (``source`` = ``node/match_set``, sorted by identity within
   each source, so ``evidence.csv`` does not depend on the query order),
   ``decide_all``, and ``evidence.csv``, ``decisions.json``, ``report.html``
   written into a temporary sibling of ``--out`` that is renamed into place
   when complete.
5. State (SQLite) and protocol-log entries for the round and each sub-round;
   a completed sub-round also records the node's log anchor
   (``node_log_seq``, ``node_log_head``) when the node sent one.
   A round left ``running`` by a killed coordinator is marked ``interrupted``
   by the next run, which also removes its leftover ``.DIR.partial-ROUNDID-*``
   folder, if any. Its open sub-rounds stay without an end in the protocol
   log, so that ``xmatch audit reconcile`` shows them (docs/coordinator.md).

Nothing printed or logged holds an identity number or a payload value.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import multiprocessing.forkserver
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from audit.format import ROSTER_COMMITTED, SHUTDOWN, roster_fields
from audit.gm import GmAuditSigner
from audit.log import AuditLog
from coordinator import exit_codes
from coordinator.client import NodeClient
from coordinator.config import CoordinatorConfig, NodeEntry, load_coordinator_config
from coordinator.decisions import RoundDecisions
from coordinator.disputes import hold_for_round
from coordinator.node_link import coordinator_signer, coordinator_tls
from coordinator.output import (
    OutputFolder,
    check_output_folder,
    remove_stale_staging,
    staging_prefix,
)
from coordinator.progress import PHASES, Progress
from coordinator.reasons import Lang
from coordinator.records import (
    EvidenceRow,
    Roster,
    match_rows,
    read_roster_source,
)
from coordinator.round_outputs import decide_round, round_evidence, write_round
from coordinator.state import RoundState
from coordinator.sub_round import (
    STATE_STATUS,
    SubRound,
    SubRoundStatus,
    _sub_round,
    evidence_rows,
    record_sub_round,
)
from keys.handles import AuditSigner, TlsMaterial
from psi.context import DEFAULT_PARAMS, Protocol, RoundContext
from psi.errors import InputError, XmatchError
from psi.identifiers import encode_identities
from runtime.files import private_folders
from runtime.signals import CommitGuard, sigint_blocked
from workers import prepare_executor, worker_pool

__all__ = [
    "PHASES",
    "STATE_STATUS",
    "RoundOutcome",
    "SubRound",
    "SubRoundStatus",
    "check_output_folder",
    "entry_params",
    "evidence_rows",
    "match_rows",
    "query_identities",
    "query_permutation",
    "record_sub_round",
    "remove_stale_staging",
    "run_round",
    "run_round_command",
    "staging_prefix",
]

ProgressFn = Callable[[int], None]


@dataclass
class RoundOutcome:
    """What :func:`run_round` produced."""

    round_id: str
    as_of: _dt.date
    out: Path
    sub_rounds: list[SubRound]
    decisions: RoundDecisions
    evidence: list[EvidenceRow]
    query_size: int
    seconds: float

    @property
    def failed_sources(self) -> list[str]:
        """The sub-rounds that failed or were refused, as ``node/match_set``."""
        return [s.source for s in self.sub_rounds if s.status != "ok"]


# ---------------------------------------------------------------------------
# Pieces


def query_identities(roster: Roster) -> list[str]:
    """The roster's canonical identity numbers (children and parents), unique, sorted.

    Invalid numbers were already set aside by ``read_roster``; children
    without a number are not queried (departments match identity numbers).
    """
    return distinct_identities(roster)[0]


def distinct_identities(roster: Roster) -> tuple[list[str], npt.NDArray[np.uint8]]:
    """:func:`query_identities` and their 16-byte encodings, row for row. Sorted as a
    column: an encoding holds the 17 leading digits as a big-endian integer (the check
    character follows from them), so the integers sort as the numbers do."""
    found = [
        value
        for row in roster.rows
        for value in (row.child_id, row.father_id, row.mother_id)
        if value is not None
    ]
    encoded = encode_identities(found)
    if len(found) == 0 or not bool((encoded[:, 0] == 1).all()):
        ordered = sorted(set(found))  # not only canonical numbers: leave it to Python
        return ordered, encode_identities(ordered)
    digits = np.ascontiguousarray(encoded[:, 1:9]).view(">u8").reshape(-1)
    _, first = np.unique(digits, return_index=True)
    values = np.asarray(found, dtype=object)[first]
    return values.tolist(), encoded[first]


def query_permutation(n: int, *, rng: Callable[[int], bytes] = os.urandom) -> npt.NDArray[np.int64]:
    """A uniformly random order of ``n`` query identities, from CSPRNG output.

    The roster is queried in this order, not sorted: sorted identity numbers
    would tell a node, by the position of each tag or blinded point, roughly
    the region and birth year behind it. Sorting by 64-bit random keys from
    ``rng`` (``os.urandom``) gives the permutation, as the ecdh responder
    shuffles its set.

    Raises:
        ValueError: ``n`` is negative, or ``rng`` returned the wrong number of bytes.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    keys = np.frombuffer(rng(8 * n), dtype=np.uint64)
    if len(keys) != n:
        raise ValueError("rng returned the wrong number of bytes")
    return np.argsort(keys, kind="stable").astype(np.int64)


def _context(
    config: CoordinatorConfig,
    round_id: bytes,
    as_of: _dt.date,
    node: str,
    match_set: str,
    protocol: str,
    params: tuple[tuple[str, str], ...] | None = None,
) -> RoundContext:
    proto: Protocol = "ecdh" if protocol == "ecdh" else "keyed-hash"
    return RoundContext(
        round_id=round_id,
        as_of=as_of,
        purpose=config.coordinator.purpose,
        requester=config.coordinator.name,
        responder=node,
        match_set=match_set,
        protocol=proto,
        params=tuple(sorted(DEFAULT_PARAMS[proto] if params is None else params)),
    )


def entry_params(entry: NodeEntry) -> tuple[tuple[str, str], ...]:
    """Suite/PRF dispatch: the round parameter the node entry names (``suite`` or ``prf``)."""
    return (("suite", entry.suite),) if entry.protocol == "ecdh" else (("prf", entry.prf),)


@contextmanager
def _ec_pool(config: CoordinatorConfig) -> Iterator[Executor | None]:
    if not any(n.protocol == "ecdh" for n in config.nodes):
        yield None
        return
    # forkserver: never fork a process that already runs gRPC threads.
    pool = worker_pool(
        config.coordinator.ec_workers,
        start_method="forkserver",
        x25519_backend=config.coordinator.x25519_backend,
        on_fallback=lambda line: print(f"warning: {line}", file=sys.stderr, flush=True),
    )
    try:
        # Start every worker now: started on demand, the second one would import
        # numpy and cryptography inside the first ecdh sub-round. SIGINT is blocked
        # while the fork server starts: it, and every worker it forks, start with
        # SIGINT blocked and the workers ignore it, so Ctrl-C (sent to the whole
        # process group) reaches only us and no worker prints a traceback.
        with sigint_blocked():
            multiprocessing.forkserver.ensure_running()
        prepare_executor(pool, config.coordinator.ec_workers)
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------
# The round


def run_round(
    config: CoordinatorConfig,
    *,
    as_of: _dt.date,
    out: Path,
    lang: Lang = "zh",
    progress: bool = False,
    stderr: TextIO | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    problem_prefix: str = "",
    on_commit: Callable[[], None] | None = None,
) -> RoundOutcome:
    """Run one round as described in the module docstring.

    ``rng`` (a CSPRNG) draws the round id and the query order. ``progress``
    shows the display of :class:`Progress` on a terminal, from the roster's
    load to the last file written. ``problem_prefix`` starts each roster problem
    line (the demo's ``warning: ``). ``on_commit`` is called just before the
    output folder is renamed into place (``xmatch round run`` holds Ctrl-C from
    there on: :class:`runtime.signals.CommitGuard`).

    Raises:
        InputError: a bad roster, an output folder in use, unreadable keys.
        ConfigError: our certificate names another member.
        XmatchError: other fatal problems (audit log, state database).
        OSError: the output cannot be written.
    """
    display = Progress(progress)
    with display.running():
        return _run_round(
            config,
            as_of=as_of,
            out=out,
            lang=lang,
            display=display,
            stderr=stderr,
            rng=rng,
            problem_prefix=problem_prefix,
            on_commit=on_commit,
        )


@dataclass(frozen=True)
class Prepared:
    """Step 1 of a round: everything that can fail on bad input, before any traffic."""

    tls: TlsMaterial
    #: signs the protocol log's checkpoints (SM2 under the GM log profile)
    log_signer: AuditSigner | GmAuditSigner
    roster: Roster
    #: the roster's identities in the random query order (match indices point into it)
    identities: list[str]
    encoded: npt.NDArray[np.uint8]
    #: the same identities sorted (what the roster commitment hashes, in its order)
    ordered: list[str]


def prepare(
    config: CoordinatorConfig,
    *,
    as_of: _dt.date,
    out: Path,
    display: Progress,
    err: TextIO,
    rng: Callable[[int], bytes],
    problem_prefix: str,
) -> Prepared:
    """(1) Prepare: the output folder, our keys, the roster and the query order.

    Raises:
        InputError: a bad roster or one without any valid identity number, an
            output folder in use, unreadable keys.
        ConfigError: our certificate names another member.
    """
    section = config.coordinator
    check_output_folder(out)
    tls = coordinator_tls(config)
    log_signer = coordinator_signer(config)  # SM2 under the GM log profile
    roster = read_roster_source(
        section.roster,
        encoding=section.roster_encoding,
        as_of=as_of,
        label=f"{config.path or 'coordinator.toml'}: roster",
    )
    for problem in roster.problems:
        display.note(f"{problem_prefix}{problem}", err)
    ordered, encoded = distinct_identities(roster)
    if not ordered:
        raise InputError(f"{roster.path}: no valid identity number to query")
    # query in a random order; match indices point into this order
    order = query_permutation(len(ordered), rng=rng)
    identities = np.asarray(ordered, dtype=object)[order].tolist()
    return Prepared(tls, log_signer, roster, identities, encoded[order], ordered)


def _recover(state: RoundState, display: Progress, err: TextIO) -> None:
    for stale in state.recovered:
        display.note(f"note: round {stale} was interrupted earlier (coordinator stopped)", err)
        record = state.get_round(stale)
        if record is not None:
            for leftover in remove_stale_staging(Path(record.out_dir), stale):
                display.note(f"note: removed {leftover.name}, left by that round", err)


def fan_out(
    config: CoordinatorConfig,
    prepared: Prepared,
    *,
    round_id: bytes,
    as_of: _dt.date,
    audit: AuditLog,
    state: RoundState,
    display: Progress,
) -> list[SubRound]:
    """(2) Fan out: query every (node, match set) at once; a failure is a result, not a raise.

    Raises:
        XmatchError: our own fault (the log or the state database); KeyboardInterrupt
            after every open stream was cancelled.
    """
    section = config.coordinator
    plan = [(n, ms) for n in config.nodes for ms in n.match_sets]
    credentials = prepared.tls.channel_credentials()
    display.sub_rounds([f"{n.name}/{ms}" for n, ms in plan])
    display.phase("query")
    with _ec_pool(config) as pool:
        clients = {
            n.name: NodeClient(
                n,
                credentials=credentials,
                chunk_items=section.chunk_items,
                executor=pool,
                ca_pem=prepared.tls.ca_pem,
                phases=display.on_phase,
            )
            for n in config.nodes
        }
        try:
            tasks = {(n.name, ms): display.task(f"{n.name}/{ms}") for n, ms in plan}

            def one(node_name: str, match_set: str) -> SubRound:
                client = clients[node_name]
                advance, finish = tasks[(node_name, match_set)]
                return _sub_round(
                    client,
                    match_set,
                    context=_context(
                        config,
                        round_id,
                        as_of,
                        node_name,
                        match_set,
                        client.entry.protocol,
                        entry_params(client.entry),
                    ),
                    encoded=prepared.encoded,
                    identities=prepared.identities,
                    audit=audit,
                    state=state,
                    progress=advance,
                    finish=finish,
                )

            threads = ThreadPoolExecutor(
                max_workers=max(1, len(plan)), thread_name_prefix="sub-round"
            )
            try:
                futures = [threads.submit(one, n.name, ms) for n, ms in plan]
                return [f.result() for f in futures]
            except BaseException:
                # Ctrl-C (or our own fault): cancel the open streams first, so that
                # each sub-round ends now, as failed, in the state and the log,
                # instead of waiting for its node or its deadline
                for client in clients.values():
                    client.close()
                raise
            finally:
                threads.shutdown(wait=True, cancel_futures=True)
        finally:
            for client in clients.values():
                client.close()


def _open_round(
    config: CoordinatorConfig,
    audit: AuditLog,
    state: RoundState,
    *,
    rid: str,
    as_of: _dt.date,
    out: Path,
) -> None:
    """Log the config this round runs with and record the round and its sub-rounds."""
    if config.path is not None:
        # the bytes that were parsed: the file is not read again (it may be /dev/stdin)
        digest = config.sha256 or hashlib.sha256(config.path.read_bytes()).hexdigest()
        audit.append(
            "config_loaded",
            config=config.path.name,
            config_sha256=digest,
            role="coordinator",
            nodes=[n.name for n in config.nodes],
        )
    state.start_round(
        rid,
        as_of=as_of,
        out_dir=out.resolve(),
        sub_rounds=[(n.name, ms, n.protocol) for n in config.nodes for ms in n.match_sets],
    )


def _run_round(
    config: CoordinatorConfig,
    *,
    as_of: _dt.date,
    out: Path,
    lang: Lang,
    display: Progress,
    stderr: TextIO | None,
    rng: Callable[[int], bytes],
    problem_prefix: str,
    on_commit: Callable[[], None] | None = None,
) -> RoundOutcome:
    """The pipeline: prepare -> fan out -> decide -> write atomically (style.md item 17)."""
    err = stderr if stderr is not None else sys.stderr
    started = time.monotonic()
    section = config.coordinator
    prepared = prepare(
        config,
        as_of=as_of,
        out=out,
        display=display,
        err=err,
        rng=rng,
        problem_prefix=problem_prefix,
    )
    private_folders(section.audit_log.parent)
    audit = AuditLog.open(section.audit_log, party=section.name, signer=prepared.log_signer)
    state = RoundState.open(section.state)
    _recover(state, display, err)
    round_id = rng(16)
    rid = round_id.hex()
    outcome = "done"  # the shutdown reason in the log
    try:
        _open_round(config, audit, state, rid=rid, as_of=as_of, out=out)
        audit.append(ROSTER_COMMITTED, **roster_fields(round_id, prepared.ordered))
        results = fan_out(
            config,
            prepared,
            round_id=round_id,
            as_of=as_of,
            audit=audit,
            state=state,
            display=display,
        )
        display.phase("rules")
        with OutputFolder(out, rid, on_commit=on_commit) as folder:
            folder.start_evidence(round_evidence(results))  # on the other core, meanwhile
            decided = decide_round(prepared.roster, results, as_of=as_of, lang=lang)
            held = hold_for_round(decided.decisions, config, audit, prepared.tls, results, err)
            decided = dataclasses.replace(decided, decisions=held[0], disputes=held[1])
            counts = decided.decisions.counts()
            state.record_decisions(rid, {d.value: n for d, n in counts.items()})
            seconds = time.monotonic() - started
            write_round(
                folder,
                decided,
                results,
                rid=rid,
                as_of=as_of,
                seconds=seconds,
                state=state,
                display=display,
            )
        failed = decided.failed
        state.finish_round(
            rid,
            status="completed",
            detail=f"{len(failed)} failed source(s)" if failed else None,
        )
        return RoundOutcome(
            round_id=rid,
            as_of=as_of,
            out=out,
            sub_rounds=results,
            decisions=decided.decisions,
            evidence=decided.evidence,
            query_size=len(prepared.identities),
            seconds=seconds,
        )
    except BaseException as exc:
        outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        _record_failure(state, rid, exc, outcome)
        raise
    finally:
        _close(state, audit, outcome)


def _record_failure(state: RoundState, rid: str, exc: BaseException, outcome: str) -> None:
    """The round and its open sub-rounds ended by ``exc`` (``outcome``), in the state."""
    interrupted = outcome == "interrupted"
    detail = exc.diagnostics() if isinstance(exc, XmatchError) else type(exc).__name__
    if interrupted:
        detail = "interrupted (SIGINT)"
    # no sub-round stays pending or running once this process is gone
    state.fail_open_sub_rounds(rid, detail=f"{outcome}: coordinator stopped")
    state.finish_round(rid, status="interrupted" if interrupted else "failed", detail=detail)


def _close(state: RoundState, audit: AuditLog, outcome: str) -> None:
    """Close the state, then the log with its shutdown entry (``outcome``) and checkpoint."""
    # each step runs even if the one before fails: the log must get its closing
    # checkpoint whatever happened to the state database
    try:
        state.close()
    finally:
        try:
            # a log that ends "shutdown, checkpoint" was closed cleanly; one cut after
            # an earlier checkpoint then shows (audit verify), as a killed one's does
            audit.append(SHUTDOWN, reason=outcome)
        finally:
            audit.close()


def run_round_command(
    *,
    config: Path | CoordinatorConfig,
    as_of: _dt.date | None,
    out: Path,
    lang: Lang = "zh",
    progress: bool = True,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``xmatch round run``: run the round and print a short summary.

    Returns :data:`coordinator.exit_codes.COMPLETE` when every match set
    answered, :data:`~coordinator.exit_codes.PARTIAL` when the round completed
    with failed or refused sets (each is printed as a warning line on stderr;
    also when none answered).

    Raises:
        XmatchError: a fatal input problem (configuration, roster, keys,
            output folder); nothing is written then.
    """
    out_stream = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    # a configuration the caller loaded already: the file is read once (it may be a pipe)
    cfg = config if isinstance(config, CoordinatorConfig) else load_coordinator_config(config)
    with CommitGuard() as guard:  # a Ctrl-C once the folder is being renamed: noted only
        outcome = run_round(
            cfg,
            as_of=as_of or _dt.date.today(),
            out=out,
            lang=lang,
            progress=progress,
            stderr=err,
            on_commit=guard.hold,
        )
        return _summary(outcome, out, out_stream, err, interrupted=lambda: guard.interrupted)


def _summary(
    outcome: RoundOutcome,
    out: Path,
    out_stream: TextIO,
    err: TextIO,
    *,
    interrupted: Callable[[], bool],
) -> int:
    """Print what the round found and wrote; its exit code."""
    for sub in outcome.sub_rounds:
        if sub.status != "ok":
            print(
                f"warning: {sub.source} {sub.status}: {sub.detail} "
                "(children without a category get REVIEW, not EXIT)",
                file=err,
            )
    counts = outcome.decisions.counts()
    summary = ", ".join(f"{d.value} {n}" for d, n in sorted(counts.items()))
    ok = sum(1 for s in outcome.sub_rounds if s.status == "ok")
    print(
        f"round {outcome.round_id} as of {outcome.as_of}: {len(outcome.decisions.decisions)} "
        f"children, {outcome.query_size} identities queried, {ok}/{len(outcome.sub_rounds)} "
        f"match sets answered, {len(outcome.evidence)} matches in {outcome.seconds:.1f} s",
        file=out_stream,
    )
    print(f"decisions: {summary}", file=out_stream)
    print(
        f"written: {out}/evidence.csv, decisions.json, report.html, decisions.xlsx, names.csv",
        file=out_stream,
    )
    if ok == 0:
        print(
            "warning: no match set answered: every decision rests on the roster alone",
            file=err,
        )
    if interrupted():
        print("note: Ctrl-C came after the round was written; the round is complete", file=err)
    return exit_codes.round_status([s.status for s in outcome.sub_rounds])
