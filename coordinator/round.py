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

import datetime as _dt
import hashlib
import multiprocessing.forkserver
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from audit.format import SHUTDOWN, looks_like_identity_number
from audit.gm import GmAuditSigner
from audit.log import AuditLog
from coordinator import exit_codes
from coordinator.client import MatchSetResult, NodeClient, out_of_protocol
from coordinator.config import CoordinatorConfig, NodeEntry, load_coordinator_config
from coordinator.eligibility import RoundDecisions, decide_all
from coordinator.evaluate import decisions_text
from coordinator.names import SourceNames
from coordinator.reasons import Lang
from coordinator.records import (
    EVIDENCE_OPTIONAL,
    Circumstance,
    EvidenceRow,
    Roster,
    read_roster_source,
    write_evidence,
)
from coordinator.report import Provenance, SourceRun, render_report
from coordinator.spreadsheet import write_outputs_for_people
from coordinator.state import RoundState
from keys.handles import AuditSigner, load_tls_credentials
from psi.context import DEFAULT_PARAMS, Protocol, RoundContext
from psi.ecdh import prepare_executor, worker_pool
from psi.errors import InputError, PeerError, Refused, XmatchError
from psi.identifiers import encode_identities

__all__ = [
    "RoundOutcome",
    "SubRound",
    "check_output_folder",
    "evidence_rows",
    "match_rows",
    "query_identities",
    "query_permutation",
    "remove_stale_staging",
    "run_round",
    "run_round_command",
    "staging_prefix",
]

ProgressFn = Callable[[int], None]


@dataclass
class SubRound:
    """The outcome of one (node, match set) query."""

    node: str
    match_set: str
    protocol: str
    circumstance: str | None
    status: str  # "ok" | "failed" | "refused"
    matches: int
    seconds: float
    detail: str
    transcript: bytes | None = None
    rows: tuple[EvidenceRow, ...] = ()
    node_log_seq: int | None = None
    node_log_head: str | None = None
    #: SERVICE sets: "gaps" or "needs", as the node's capabilities say; else None
    service_report: str | None = None
    #: the display names the node announced for itself and this set ("" when none)
    node_display_name: str = ""
    display_name: str = ""

    @property
    def source(self) -> str:
        """``node/match_set``."""
        return f"{self.node}/{self.match_set}"


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


def check_output_folder(out: Path) -> None:
    """Refuse an output folder that exists and is not empty (never overwritten).

    Raises:
        InputError: ``out`` is a file, or a folder with something in it.
    """
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise InputError(f"{out}: exists and is not a folder; choose another --out")
        if any(out.iterdir()):
            raise InputError(
                f"{out}: folder exists and is not empty; choose a new --out "
                "(a round never overwrites an earlier round's output)"
            )


def query_identities(roster: Roster) -> list[str]:
    """The roster's canonical identity numbers (children and parents), unique, sorted.

    Invalid numbers were already set aside by ``read_roster``; children
    without a number are not queried (departments match identity numbers).
    """
    found: set[str] = set()
    for row in roster.rows:
        for value in (row.child_id, row.father_id, row.mother_id):
            if value is not None:
                found.add(value)
    return sorted(found)


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


def _ordered(rows: Sequence[EvidenceRow]) -> tuple[EvidenceRow, ...]:
    """Rows sorted by identity; a person's records keep the node's order (stable)."""
    return tuple(sorted(rows, key=lambda row: row.person_id))


def _payload_date(value: str, name: str) -> _dt.date | None:
    if not value:
        return None
    try:
        return _dt.date.fromisoformat(value[:10])
    except ValueError:
        raise XmatchError(f"payload field {name} is not a YYYY-MM-DD date") from None


def _payload_int(value: str, name: str, high: int) -> int | None:
    text = value.strip()
    if not text:
        return None
    if text.endswith(".0"):
        text = text[:-2]
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= high):
        raise XmatchError(f"payload field {name} is not a number from 1 to {high}")
    return int(text)


def evidence_rows(result: MatchSetResult, identities: Sequence[str]) -> tuple[EvidenceRow, ...]:
    """One evidence row per match of a sub-round.

    keyed-hash payload fields become the evidence columns of the same name;
    ecdh matches carry no dates (membership only).

    Raises:
        XmatchError: an unknown circumstance code, payload field or value
            (the message names a known field, never a value or an unknown
            field's name).
    """
    return match_rows(
        source=result.source,
        circumstance=result.circumstance,
        indices=result.indices,
        payloads=result.payloads,
        identities=identities,
    )


def match_rows(
    *,
    source: str,
    circumstance: str,
    indices: npt.NDArray[np.int64],
    payloads: Sequence[dict[str, str]],
    identities: Sequence[str],
) -> tuple[EvidenceRow, ...]:
    """Evidence rows for matches ``indices`` (into ``identities``) of ``source``.

    Used for a whole sub-round (:func:`evidence_rows`) and for each keyed-hash
    match chunk as it arrives, so that matches delivered before a failure
    still count.

    Raises:
        XmatchError: as :func:`evidence_rows`.
    """
    try:
        code = Circumstance(circumstance)
    except ValueError:
        raise XmatchError("node announced an unknown circumstance code") from None
    rows: list[EvidenceRow] = []
    allowed = set(EVIDENCE_OPTIONAL)
    for index, payload in zip(indices.tolist(), payloads, strict=True):
        if not set(payload) <= allowed:
            # never quote the key: it is the node's text (it could be anything)
            raise XmatchError("an unknown payload field is not an evidence column")
        rows.append(
            EvidenceRow(
                person_id=identities[index],
                circumstance=code,
                source=source,
                start_date=_payload_date(payload.get("start_date", ""), "start_date"),
                end_date=_payload_date(payload.get("end_date", ""), "end_date"),
                disability_category=_payload_int(
                    payload.get("disability_category", ""), "disability_category", 7
                ),
                disability_grade=_payload_int(
                    payload.get("disability_grade", ""), "disability_grade", 4
                ),
            )
        )
    return tuple(rows)


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


#: The phases the progress display names, in order (docs/coordinator.md, "Progress").
#: ``blind``, ``exchange`` and ``intersect`` are per sub-round (coordinator.client.PhaseFn).
PHASES = ("load", "blind", "exchange", "intersect", "rules", "report", "spreadsheet")


def entry_params(entry: NodeEntry) -> tuple[tuple[str, str], ...]:
    """Suite/PRF dispatch: the round parameter the node entry names (``suite`` or ``prf``)."""
    return (("suite", entry.suite),) if entry.protocol == "ecdh" else (("prf", entry.prf),)


class _Progress:
    """A rich display on a terminal only: the round's phase, and one line per sub-round.

    Every line has a spinner and the elapsed time, so the display moves while a
    phase has nothing to count (a node preparing its set, the rules, the report);
    a sub-round's bar follows its current phase (blind, exchange, intersect).
    """

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        self._round: Any = None
        self._tasks: dict[str, Any] = {}
        self._totals: dict[str, int] = {}
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    @contextmanager
    def running(self) -> Iterator[_Progress]:
        bar = self._bar
        if bar is None:
            yield self
            return
        with bar:
            self._round = bar.add_task("round: load", total=None)
            bar.refresh()
            try:
                yield self
            finally:
                bar.update(self._round, description="round: done", total=1, completed=1)

    def phase(self, name: str) -> None:
        """The round's phase (one of :data:`PHASES`, or ``query``); drawn at once."""
        if self._bar is not None and self._round is not None:
            self._bar.update(self._round, description=f"round: {name}", refresh=True)

    def note(self, text: str, err: TextIO) -> None:
        """A line for the operator: above the display, or on ``err`` without one."""
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=err)

    def sub_rounds(self, sources: Sequence[str]) -> None:
        """One line per ``node/match_set``, waiting for its node."""
        if self._bar is None:
            return
        with self._lock:
            for source in sources:
                self._tasks[source] = self._bar.add_task(f"{source}: connect", total=None)

    def on_phase(self, source: str, phase: str, done: int, total: int) -> None:
        """:data:`coordinator.client.PhaseFn`: a sub-round's phase and count."""
        task = self._tasks.get(source)
        if self._bar is not None and task is not None:
            self._totals[source] = max(total, 1)
            # a new phase is drawn at once (a short one would fall between two refreshes)
            new = self._phases.get(source) != phase
            self._phases[source] = phase
            self._bar.update(
                task,
                description=f"{source}: {phase}",
                completed=done,
                total=max(total, 1),
                refresh=new,
            )

    def task(self, name: str) -> tuple[ProgressFn, Callable[[str], None]]:
        """``(advance, finish)`` of the sub-round ``name``; advance is unused (phases count)."""
        bar = self._bar
        task = self._tasks.get(name)
        if bar is None or task is None:
            return (lambda _n: None), (lambda _s: None)

        def finish(status: str) -> None:
            total = self._totals.get(name, 1)
            bar.update(task, completed=total, total=total, description=f"{name}: {status}")

        return (lambda _n: None), finish


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Start worker processes with SIGINT ignored; a SIGINT meanwhile arrives after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Ignored, for the children: a spawned process starts with an empty signal mask
    # but keeps an ignored signal ignored. Blocked, for us: Linux keeps a blocked
    # signal pending even while it is ignored, so it reaches our handler afterwards.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


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
        # numpy and cryptography inside the first ecdh sub-round. SIGINT is ignored
        # while the fork server starts: it, and every worker it forks, keep SIGINT
        # ignored, so Ctrl-C (sent to the whole process group) reaches only us and no
        # worker prints a traceback. Only that long (milliseconds): a SIGINT that
        # another thread of ours receives while it is ignored is lost.
        with _sigint_blocked():
            multiprocessing.forkserver.ensure_running()
        prepare_executor(pool, config.coordinator.ec_workers)
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def staging_prefix(out: Path, round_id: str) -> str:
    """Name prefix of the temporary sibling folder a round writes ``out`` into.

    ``.DIR.partial-ROUNDID-``: the round id ties a leftover folder to the round
    that made it, so that only an interrupted round's leftovers are removed.
    """
    return f".{out.name}.partial-{round_id}-"


def remove_stale_staging(out_dir: Path, round_id: str) -> list[Path]:
    """Remove what an interrupted round ``round_id`` left beside its ``out_dir``.

    A coordinator killed while writing its output leaves a ``.DIR.partial-...``
    folder and never a half-written ``DIR`` (the folder is renamed into place
    in one step). The next run removes it once the round is marked
    ``interrupted``; folders of other rounds are not touched.
    """
    removed: list[Path] = []
    parent = out_dir.parent
    if not parent.is_dir():
        return removed
    prefix = staging_prefix(out_dir, round_id)
    for path in parent.iterdir():
        if path.name.startswith(prefix) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _people_outputs(
    staging: Path, decisions: RoundDecisions, provenance: Provenance, display: _Progress
) -> None:
    """The spreadsheet and names.csv, in their own progress phase."""
    display.phase("spreadsheet")
    write_outputs_for_people(staging, decisions, provenance)


def _write_output(
    out: Path,
    *,
    round_id: str,
    evidence: list[EvidenceRow],
    document: dict[str, object],
    report: str,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write the three files into a temporary sibling folder, then rename it to ``out``."""
    parent = out.parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # new folders: ours only
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out, round_id), dir=parent))
    try:
        write_evidence(staging / "evidence.csv", evidence)
        # both name children by identity number: mode 0600, as evidence.csv and the xlsx
        for name, text in (("decisions.json", decisions_text(document)), ("report.html", report)):
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)  # decisions.json as rules evaluate: one decision per line
                fh.flush()
                os.fsync(fh.fileno())
        if extra is not None:  # decisions.xlsx and names.csv (coordinator.spreadsheet)
            extra(staging)
        check_output_folder(out)  # again: someone may have written there meanwhile
        if out.is_dir():
            out.rmdir()
        os.rename(staging, out)
        fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
) -> RoundOutcome:
    """Run one round as described in the module docstring.

    ``rng`` (a CSPRNG) draws the round id and the query order. ``progress``
    shows the display of :class:`_Progress` on a terminal, from the roster's
    load to the last file written. ``problem_prefix`` starts each roster problem
    line (the demo's ``warning: ``).

    Raises:
        InputError: a bad roster, an output folder in use, unreadable keys.
        ConfigError: our certificate names another member.
        XmatchError: other fatal problems (audit log, state database).
        OSError: the output cannot be written.
    """
    display = _Progress(progress)
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
        )


def _run_round(
    config: CoordinatorConfig,
    *,
    as_of: _dt.date,
    out: Path,
    lang: Lang,
    display: _Progress,
    stderr: TextIO | None,
    rng: Callable[[int], bytes],
    problem_prefix: str,
) -> RoundOutcome:
    err = stderr if stderr is not None else sys.stderr
    started = time.monotonic()
    section = config.coordinator
    # (1) everything that can fail on bad input, before any traffic
    check_output_folder(out)
    tls = load_tls_credentials(ca=section.ca, cert=section.cert, key=section.key, name=section.name)
    signer = AuditSigner.load(
        key=section.audit_key_path, cert=section.audit_cert_path, ca=section.ca
    )
    log_signer: AuditSigner | GmAuditSigner = signer
    if section.audit_profile == "gm":  # GM log profile: SM2 checkpoints, bound by the audit key
        from audit.gm import gm_signer

        try:
            log_signer = gm_signer(signer, section.audit_sm2_key_path)
        except OSError as exc:
            raise InputError(f'audit_profile = "gm": {exc}') from None
    roster = read_roster_source(
        section.roster,
        encoding=section.roster_encoding,
        as_of=as_of,
        label=f"{config.path or 'coordinator.toml'}: roster",
    )
    for problem in roster.problems:
        display.note(f"{problem_prefix}{problem}", err)
    ordered = query_identities(roster)
    if not ordered:
        raise InputError(f"{roster.path}: no valid identity number to query")
    # (2) query in a random order; match indices point into this order
    identities = [ordered[i] for i in query_permutation(len(ordered), rng=rng).tolist()]
    encoded = encode_identities(identities)
    section.audit_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    audit = AuditLog.open(section.audit_log, party=section.name, signer=log_signer)
    state = RoundState.open(section.state)
    for stale in state.recovered:
        display.note(f"note: round {stale} was interrupted earlier (coordinator stopped)", err)
        record = state.get_round(stale)
        if record is not None:
            for leftover in remove_stale_staging(Path(record.out_dir), stale):
                display.note(f"note: removed {leftover.name}, left by that round", err)
    round_id = rng(16)
    rid = round_id.hex()
    plan = [(n, ms) for n in config.nodes for ms in n.match_sets]
    outcome = "done"  # the shutdown reason in the log
    try:
        if config.path is not None:
            raw = config.path.read_bytes()
            audit.append(
                "config_loaded",
                config=config.path.name,
                config_sha256=hashlib.sha256(raw).hexdigest(),
                role="coordinator",
                nodes=[n.name for n in config.nodes],
            )
        state.start_round(
            rid,
            as_of=as_of,
            out_dir=out.resolve(),
            sub_rounds=[(n.name, ms, n.protocol) for n, ms in plan],
        )
        credentials = tls.channel_credentials()
        results: list[SubRound] = []
        display.sub_rounds([f"{n.name}/{ms}" for n, ms in plan])
        display.phase("query")
        with _ec_pool(config) as pool:
            clients = {
                n.name: NodeClient(
                    n,
                    credentials=credentials,
                    chunk_items=section.chunk_items,
                    executor=pool,
                    ca_pem=tls.ca_pem,
                    phases=display.on_phase,
                )
                for n in config.nodes
            }
            try:
                tasks = {(n.name, ms): display.task(f"{n.name}/{ms}") for n, ms in plan}

                def one(node_name: str, match_set: str) -> SubRound:
                    client = clients[node_name]
                    entry = client.entry
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
                            entry.protocol,
                            entry_params(entry),
                        ),
                        encoded=encoded,
                        identities=identities,
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
                    results = [f.result() for f in futures]
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
        # (4)
        failed = [s.source for s in results if s.status != "ok"]
        services = [s.source for s in results if s.service_report == "gaps"]
        needs = [s.source for s in results if s.service_report == "needs"]
        evidence = [row for s in results for row in s.rows]
        names = SourceNames()
        for s in results:
            names.add_node(s.node, s.node_display_name)
            names.add_set(s.source, s.display_name)
        display.phase("rules")
        decisions = decide_all(
            roster,
            evidence,
            as_of=as_of,
            failed_sources=failed,
            service_sources=services,
            service_need_sources=needs,
            lang=lang,
            source_names=names.labels(s.source for s in results),
        )
        state.record_decisions(rid, {d.value: n for d, n in decisions.counts().items()})
        seconds = time.monotonic() - started
        provenance = Provenance(
            round_id=rid,
            as_of=as_of,
            generated_at=_dt.datetime.now(_dt.UTC),
            sources=tuple(
                SourceRun(
                    node=s.node,
                    match_set=s.match_set,
                    protocol=s.protocol,
                    status="ok"
                    if s.status == "ok"
                    else "refused"
                    if s.status == "refused"
                    else "failed",
                    matches=s.matches,
                    seconds=round(s.seconds, 3),
                    detail=s.detail,
                )
                for s in results
            ),
            failed_sources=tuple(failed),
            timings=(("round", seconds),),
            names=names,
            history=tuple(state.decision_history(current=rid)),
        )
        display.phase("report")
        report = render_report(decisions, provenance=provenance)
        _write_output(
            out,
            round_id=rid,
            evidence=evidence,
            document=decisions.to_json(round_id=rid),
            report=report,
            extra=lambda staging: _people_outputs(staging, decisions, provenance, display),
        )
        # (5)
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
            decisions=decisions,
            evidence=evidence,
            query_size=len(identities),
            seconds=seconds,
        )
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        outcome = "interrupted" if interrupted else "failed"
        detail = exc.diagnostics() if isinstance(exc, XmatchError) else type(exc).__name__
        if interrupted:
            detail = "interrupted (SIGINT)"
        # no sub-round stays pending or running once this process is gone
        state.fail_open_sub_rounds(rid, detail=f"{outcome}: coordinator stopped")
        state.finish_round(rid, status="interrupted" if interrupted else "failed", detail=detail)
        raise
    finally:
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


def _append(
    audit: AuditLog,
    event: str,
    fields: dict[str, object],
    *,
    fallback: dict[str, object],
) -> None:
    """Append ``event``; if the log refuses ``fields`` (e.g. node text tripped the
    identity guard), append it with ``fallback`` instead.

    ``fallback`` holds only our own values, so a node can never make a log
    entry fail (as ``nodes/servicer.py`` ``_log_end`` does for the node).

    Raises:
        XmatchError: the log refused even ``fallback`` (our own fault: fatal).
    """
    try:
        audit.append(event, **fields)
    except XmatchError:
        audit.append(event, **fallback)


def _safe_reason(reason: str) -> str:
    """Last guard on a failure reason before the log, the state and the report."""
    line = " ".join(reason.split())
    if not line or looks_like_identity_number(line):
        return "withheld"
    return line


def _sub_round(
    client: NodeClient,
    match_set: str,
    *,
    context: RoundContext,
    encoded: npt.NDArray[np.uint8],
    identities: Sequence[str],
    audit: AuditLog,
    state: RoundState,
    progress: ProgressFn,
    finish: Callable[[str], None],
) -> SubRound:
    """One sub-round; never raises for a node's failure (it is recorded instead).

    Whatever the node sends, the outcome is a :class:`SubRound`: a failure of
    the node (``PeerError``, or any other error while its answers are read)
    becomes ``failed``/``refused`` with a privacy-safe reason, and the log
    entries fall back to fields of our own if the log refuses the node's.
    Only our own faults (the state database, a log that cannot be written at
    all) propagate.
    """
    entry = client.entry
    rid = context.round_id_hex
    common: dict[str, object] = {
        "round_id": rid,
        "requester": context.requester,
        "responder": entry.name,
        "purpose": context.purpose,
        "match_set": match_set,
        # suite/PRF dispatch: every sub-round entry names its ecdh "suite" or keyed-hash "prf"
        **dict(context.params),
    }
    state.sub_round_running(rid, entry.name, match_set)
    audit.append("round_started", **common, protocol=entry.protocol, query_size=len(encoded))
    started = time.monotonic()
    circumstance: str | None = None
    service_report: str | None = None
    node_shown = set_shown = ""  # display names, once the capabilities are read
    # keyed-hash matches as each chunk is resolved: kept if the stream fails later
    delivered: list[EvidenceRow] = []
    failure: PeerError | None = None
    try:
        info = client.match_set_info(match_set)
        circumstance = info.circumstance
        node_shown, set_shown = client.capabilities().display_name, info.display_name
        if circumstance == Circumstance.SERVICE.value:  # checked by match_set_info
            service_report = info.service_report or "gaps"
        source = f"{entry.name}/{match_set}"

        def keep(indices: npt.NDArray[np.int64], payloads: list[dict[str, str]]) -> None:
            delivered.extend(
                match_rows(
                    source=source,
                    circumstance=info.circumstance,
                    indices=indices,
                    payloads=payloads,
                    identities=identities,
                )
            )

        result = client.query(
            match_set, context=context, identities=encoded, progress=progress, on_matches=keep
        )
        try:
            rows = _ordered(evidence_rows(result, identities))
        except XmatchError as exc:
            raise PeerError(result.source, out_of_protocol(exc)) from None
    except PeerError as exc:
        failure = exc
    except Exception as exc:  # a node's answer we could not read: its failure, not ours
        failure = PeerError(
            f"{entry.name}/{match_set}",
            f"out of protocol: unreadable answer ({type(exc).__name__})",
        )
    if failure is not None:
        seconds = time.monotonic() - started
        status = "refused" if isinstance(failure, Refused) else "failed"
        reason = _safe_reason(failure.reason)
        kept = _ordered(delivered)
        extra: dict[str, object] = {"matches_kept": len(kept)} if kept else {}
        base: dict[str, object] = {
            **common,
            "protocol": entry.protocol,
            "seconds": round(seconds, 3),
            "outcome": "failed",
            "query_size": len(encoded),
            **extra,
        }
        _append(
            audit,
            "round_failed",
            {**base, "reason": reason},
            fallback={**base, "reason": "withheld"},
        )
        detail = reason
        if kept:
            detail += f" ({len(kept)} match(es) delivered before the failure are kept)"
        state.finish_sub_round(
            rid,
            entry.name,
            match_set,
            status="failed",
            matches=len(kept) if kept else None,
            seconds=seconds,
            transcript=None,
            detail=detail,
        )
        finish(status)
        return SubRound(
            node=entry.name,
            match_set=match_set,
            protocol=entry.protocol,
            circumstance=circumstance,
            status=status,
            matches=len(kept),
            seconds=seconds,
            detail=detail,
            rows=kept,
            service_report=service_report,
            node_display_name=node_shown,
            display_name=set_shown,
        )
    # the node's log anchor (checked by the client), if it sent one
    anchor: dict[str, object] = (
        {"node_log_seq": result.node_log_seq, "node_log_head": result.node_log_head}
        if result.node_log_seq
        else {}
    )
    finished: dict[str, object] = {
        **common,
        "protocol": entry.protocol,
        "transcript": result.transcript.hex(),
        "query_size": len(encoded),
        "set_size": result.set_size or None,
        "match_count": result.matches,
        "seconds": round(result.seconds, 3),
        "outcome": "ok",
    }
    _append(audit, "round_finished", {**finished, **anchor}, fallback=finished)
    state.finish_sub_round(
        rid,
        entry.name,
        match_set,
        status="completed",
        matches=result.matches,
        seconds=result.seconds,
        transcript=result.transcript,
        detail=None,
        node_log_seq=result.node_log_seq or None,
        node_log_head=result.node_log_head or None,
    )
    finish("ok")
    detail = f"{result.circumstance}; {result.protocol}"
    if service_report is not None:
        detail = f"{result.circumstance} ({service_report}); {result.protocol}"
    if result.set_size:
        detail += f"; set size class {result.set_size}"
    return SubRound(
        node=entry.name,
        match_set=match_set,
        protocol=entry.protocol,
        circumstance=result.circumstance,
        status="ok",
        matches=result.matches,
        seconds=result.seconds,
        detail=detail,
        transcript=result.transcript,
        rows=rows,
        node_log_seq=result.node_log_seq or None,
        node_log_head=result.node_log_head or None,
        service_report=service_report,
        node_display_name=node_shown,
        display_name=set_shown,
    )


def run_round_command(
    *,
    config: Path,
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
    cfg = load_coordinator_config(config)
    outcome = run_round(
        cfg, as_of=as_of or _dt.date.today(), out=out, lang=lang, progress=progress, stderr=err
    )
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
    print(f"written: {out}/evidence.csv, decisions.json, report.html", file=out_stream)
    if ok == 0:
        print(
            "warning: no match set answered: every decision rests on the roster alone",
            file=err,
        )
    return exit_codes.round_status([s.status for s in outcome.sub_rounds])
