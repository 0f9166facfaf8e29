"""``xmatch bench``: end-to-end throughput of both protocols against openmined-psi.

For each requested size ``n`` (records in the node's match set; the roster has
``roster_size`` identities, default ``n``, half of them in the set):

1. Write the match set as Parquet (synthetic, valid identity numbers, one
   ``start_date`` payload column), streamed in row groups so that even 10^7
   records never sit in memory at once.
2. Start one ``xmatch node serve`` process (federation CA and certificates
   from ``keys``, ``node.toml`` as :mod:`xmatch.synth` writes it) on a free
   loopback port, mutual TLS, and wait for its ready line.
3. For each protocol: run one sub-round with the coordinator's own client
   (:class:`coordinator.client.NodeClient`, ecdh work in a process pool as
   ``xmatch round run`` does), while a sampler thread records the resident
   memory of both processes and their worker pools, and a client interceptor
   counts the protobuf bytes of every stream message.
4. Stop the node; run openmined-psi 2.0.6 (P-256, C++, in-process, raw
   intersection mode) on the same identities as strings, as long as the
   previous size predicts it ends within ``baseline_limit`` seconds.
5. With the ``secretflow`` baseline: SecretFlow's ``spu.psi.psi_execute``
   (PyPI ``spu`` 0.9.5), ECDH over Curve25519 and RR22, two processes on
   loopback (:mod:`xmatch.secretflow_peer`, run by the Python of the peers
   virtualenv that ``make bench-peers`` makes), on the same identities
   written as CSV; same ``baseline_limit`` rule.

Results go to ``OUT/bench.json``, ``OUT/bench.png`` (time vs size, log-log)
and a table on stdout. Numbers are measured, never asserted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from psi.errors import InputError
from workers import prepare_executor, worker_pool

__all__ = ["BenchResult", "ids_at", "make_ids", "run_bench"]

NODE = "bench-node"
#: openmined-psi runs at a size only if the previous size predicts at most this.
BASELINE_LIMIT_SECONDS = 60.0
#: Identities per stream message (the coordinator's default ``chunk_items``).
CHUNK_ITEMS = 16384
ROW_GROUP = 1 << 20

_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)
_CHECK = np.frombuffer(b"10X98765432", dtype=np.uint8)
# Inner Mongolia county codes (address codes are not checked by normalization).
_REGION_CODES = (
    "150102 150103 150104 150105 150121 150122 150123 150124 150125 150202 "
    "150203 150204 150205 150206 150207 150221 150222 150223 150302 150303 "
    "150304 150402 150403 150404 150421 150422 150423 150424 150425 150426 "
    "150428 150429 150430 150502 150521 150522 150523 150524 150525 150526 "
    "150581 150602 150603 150621 150622 150623 150624 150625 150626 150627 "
    "150702 150703 150721 150722 150723 150724 150725 150726 150727 150781 "
    "150782 150783 150784 150785 150802 150821 150822 150823 150824 150825 "
    "150826 150902 150921 150922 150923 150924 150925 150926 150927 150928 "
    "150929 150981 152201 152202 152221 152222 152223 152224 152501 152502 "
    "152522 152523 152524 152525 152526 152527 152528 152529 152530 152531"
)
_REGIONS = np.array([int(c) for c in _REGION_CODES.split(" ")], dtype=np.int64)
_FIRST_DAY = _dt.date(1950, 1, 1)
_DAYS = 21_900  # 1950-01-01 .. 2009-12-17
_SPACE = len(_REGIONS) * _DAYS * 1000  # 2.19e9 distinct numbers
_MULT = 1_000_003  # odd and not a multiple of 5 or 3: coprime with _SPACE


def make_ids(start: int, stop: int) -> npt.NDArray[np.bytes_]:
    """Distinct valid 18-character identity numbers for indices ``start..stop-1``.

    Index i maps through a bijection of Z_SPACE (``i * 1000003 mod SPACE``) to
    (county, birth date, sequence number), so different indices never give the
    same number; the check character is computed. Returns ``S18`` bytes.

    Raises:
        ValueError: the range exceeds the space of numbers.
    """
    if not 0 <= start <= stop <= _SPACE:
        raise ValueError("index range outside the identity space")
    return ids_at(np.arange(start, stop, dtype=np.int64))


def ids_at(indices: npt.NDArray[np.int64]) -> npt.NDArray[np.bytes_]:
    """The identity numbers of :func:`make_ids` for arbitrary indices (``S18``)."""
    k = (np.asarray(indices, dtype=np.int64) * _MULT) % _SPACE
    seq = k % 1000
    k //= 1000
    day = k % _DAYS
    region = _REGIONS[k // _DAYS]
    born = (np.datetime64(_FIRST_DAY.isoformat()) + day.astype("timedelta64[D]")).astype(
        "datetime64[D]"
    )
    years = born.astype("datetime64[Y]").astype(np.int64) + 1970
    months = born.astype("datetime64[M]").astype(np.int64) % 12 + 1
    days = (born - born.astype("datetime64[M]")).astype(np.int64) + 1
    body = region * 10**11 + years * 10**7 + months * 10**5 + days * 10**3 + seq
    digits = np.empty((len(body), 17), dtype=np.int64)
    rest = body.copy()
    for pos in range(16, -1, -1):
        digits[:, pos] = rest % 10
        rest //= 10
    check = _CHECK[(digits @ _WEIGHTS) % 11]
    out = np.empty((len(body), 18), dtype=np.uint8)
    out[:, :17] = digits + ord("0")
    out[:, 17] = check
    return out.view("S18").reshape(-1)


def _write_set(path: Path, n: int) -> None:
    """Write ``n`` records (ids 0..n-1, one ``start_date``) as Parquet, in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("start_date", pa.date32())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for lo in range(0, n, ROW_GROUP):
            hi = min(n, lo + ROW_GROUP)
            ids = pa.array(make_ids(lo, hi).astype(object), type=pa.binary()).cast(pa.string())
            start = np.datetime64("2015-01-01") + (np.arange(lo, hi) % 3000).astype(
                "timedelta64[D]"
            )
            writer.write_table(
                pa.table({"id": ids, "start_date": pa.array(start, type=pa.date32())}, schema)
            )
    tmp.replace(path)


def _roster_ids(n: int, roster: int) -> npt.NDArray[np.bytes_]:
    """The roster: ``roster // 2`` identities of the set (spread over it) and fresh ones."""
    hits = min(roster // 2, n)
    step = max(1, n // max(1, hits))
    inside = ids_at(np.arange(hits, dtype=np.int64) * step)
    outside = make_ids(n, n + roster - hits)
    return np.concatenate([inside, outside])


# ---------------------------------------------------------------------------
# Memory and wire measurement


class _Sampler:
    """Peak RSS of processes and their children, sampled every ``interval`` s.

    The children (worker pools) are listed again every ``refresh`` seconds
    only: walking /proc for them costs more CPU than reading their memory.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.025, refresh: float = 0.5) -> None:
        import psutil

        self._psutil = psutil
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._children: dict[str, list[Any]] = {name: [] for name in pids}
        self._listed = 0.0
        self.peak_main: dict[str, int] = dict.fromkeys(pids, 0)
        self.peak_total: dict[str, int] = dict.fromkeys(pids, 0)
        self._interval = interval
        self._refresh = refresh
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _sample(self) -> None:
        error = self._psutil.Error
        now = time.monotonic()
        relist = now - self._listed >= self._refresh
        if relist:
            self._listed = now
        for name, proc in self._procs.items():
            try:
                main = proc.memory_info().rss
                if relist:
                    self._children[name] = proc.children(recursive=True)
            except error:
                continue
            total = main
            for child in self._children[name]:
                with contextlib.suppress(error):
                    total += child.memory_info().rss
            self.peak_main[name] = max(self.peak_main[name], main)
            self.peak_total[name] = max(self.peak_total[name], total)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> _Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _vm_hwm(pid: int) -> int:
    """The kernel's peak resident set (VmHWM) of ``pid``, in bytes (0 if unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class _WireCount:
    sent: int = 0
    received: int = 0
    messages: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self.lock:
            self.sent += sent
            self.received += received
            self.messages += 1


def _wire_counter(count: _WireCount) -> Any:
    """A client interceptor that adds every stream message's size to ``count``."""
    import grpc

    class _Call:
        """The response iterator, counting; everything else goes to the real call."""

        def __init__(self, call: Any) -> None:
            self._call = call

        def __iter__(self) -> _Call:
            return self

        def __next__(self) -> Any:
            resp = next(self._call)
            count.add(received=resp.ByteSize())
            return resp

        def __getattr__(self, name: str) -> Any:
            return getattr(self._call, name)

    class _Interceptor(grpc.StreamStreamClientInterceptor):  # type: ignore[type-arg]
        def intercept_stream_stream(
            self, continuation: Any, details: Any, request_iterator: Any
        ) -> Any:
            def counted() -> Iterator[Any]:
                for req in request_iterator:
                    count.add(sent=req.ByteSize())
                    yield req

            return _Call(continuation(details, counted()))

    return _Interceptor()


# ---------------------------------------------------------------------------
# Results


@dataclass
class BenchResult:
    """One measurement (one protocol, or openmined-psi, at one size)."""

    protocol: str  # "keyed-hash", "ecdh" or "openmined-psi"
    size: int  # records in the node's match set
    roster: int
    seconds: float | None
    matches: int | None = None
    expected_matches: int | None = None
    records_per_s: float | None = None
    ec_ops: int | None = None
    ec_ops_per_s_per_core: float | None = None
    x25519_limit_seconds: float | None = None
    wire_bytes_sent: int | None = None
    wire_bytes_received: int | None = None
    peak_rss_node: int | None = None
    peak_rss_node_total: int | None = None
    peak_rss_coordinator: int | None = None
    peak_rss_coordinator_total: int | None = None
    node_startup_seconds: float | None = None
    padded_set_size: int | None = None
    vs_openmined: float | None = None
    vs_secretflow_ecdh: float | None = None
    vs_secretflow_rr22: float | None = None
    note: str = ""


#: Baselines ``xmatch bench`` can run (openmined-psi in-process; SecretFlow in its own venv).
BASELINES = ("openmined", "secretflow")
#: Protocol names of the SecretFlow results, by spu protocol.
SECRETFLOW_PROTOCOLS = {"ECDH": "secretflow-ecdh", "RR22": "secretflow-rr22"}
#: The peers virtualenv (``make bench-peers``); this environment variable overrides the path.
PEERS_VENV_ENV = "XMATCH_PEERS_VENV"
PEERS_VENV = Path(".venv-peers")


def _x25519_rate(n: int = 16384) -> float:
    """Single-core X25519 scalar multiplications per second, measured in-process.

    Times :meth:`psi.ecdh.EcdhRequester.blind` without a pool, on the
    configured X25519 backend (libcrypto_mb's multi-buffer ``mbx_x25519_mb8``
    where the CPU has it): one X25519 per identity plus the suite's SHA-256
    (about 0.5 us, 3 % at multi-buffer speed), one chunk of the size rounds
    send, so this is the per-core limit our workers can reach (best of 3).
    """
    from psi.context import RoundContext
    from psi.ecdh import EcdhRequester
    from psi.identifiers import encode_identities

    ids = encode_identities(make_ids(0, n).astype("U18"))
    context = RoundContext.new(
        as_of=_dt.date.today(),
        purpose="bench",
        requester="bench",
        responder="bench",
        match_set="bench",
        protocol="ecdh",
    )
    best = 0.0
    for _ in range(3):
        requester = EcdhRequester.generate(context)
        t0 = time.perf_counter()
        requester.blind(ids)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _openmined(roster: npt.NDArray[np.bytes_], n: int) -> tuple[float, int]:
    """openmined-psi 2.0.6 (raw mode, reveal intersection) in-process; seconds and matches."""
    import private_set_intersection.python as openmined

    client_items = [s.decode() for s in roster.tolist()]
    server_items = [s.decode() for s in make_ids(0, n).tolist()]
    t0 = time.perf_counter()
    client = openmined.client.CreateWithNewKey(True)
    server = openmined.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(
        1e-9, len(client_items), server_items, openmined.DataStructure.RAW
    )
    request = client.CreateRequest(client_items)
    response = server.ProcessRequest(request)
    found = client.GetIntersection(setup, response)
    return time.perf_counter() - t0, len(found)


def peers_python() -> Path | None:
    """The peers virtualenv's Python, if ``make bench-peers`` made it (or None)."""
    venv = Path(os.environ.get(PEERS_VENV_ENV) or PEERS_VENV)
    python = venv / "bin" / "python"
    return python.absolute() if python.exists() else None


def _remove_spu_trace(log: Path) -> None:
    """spu writes a trace file per run into the temp folder and names it in its log; remove it."""
    import re
    import tempfile

    text = log.read_text(encoding="utf-8", errors="replace")
    for name in re.findall(r"Trace has been written to (\S+?)\.?$", text, flags=re.MULTILINE):
        path = Path(name)
        if path.parent == Path(tempfile.gettempdir()) and path.name.startswith("psi_"):
            path.unlink(missing_ok=True)


def _write_id_csv(path: Path, ids: npt.NDArray[np.bytes_]) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # identities (synthetic here): 0600, like every file holding them
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(b"id\n")
        for start in range(0, len(ids), ROW_GROUP):
            f.write(b"\n".join(ids[start : start + ROW_GROUP].tolist()) + b"\n")
    tmp.replace(path)


def _secretflow(
    python: Path, roster: npt.NDArray[np.bytes_], n: int, out: Path, protocol: str
) -> tuple[float, int]:
    """SecretFlow ``psi_execute`` (``protocol``: ECDH or RR22), ranks 0 and 1 on loopback.

    Returns the seconds of the slower party's ``psi_execute`` call (CSV in,
    protocol, receiver's CSV out) and the receiver's intersection count.

    Raises:
        XmatchError: a party failed or printed no result (its log is named).
    """
    import subprocess

    from psi.errors import XmatchError
    from xmatch.demo import free_ports

    folder = out / "secretflow"
    inputs = [folder / f"roster-{n}-{len(roster)}.csv", folder / f"set-{n}.csv"]
    _write_id_csv(inputs[0], roster)
    _write_id_csv(inputs[1], make_ids(0, n))
    ports = [str(p) for p in free_ports(2)]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).with_name("secretflow_peer.py")
    procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    for rank in (0, 1):
        stem = f"secretflow-{protocol.lower()}-{n}-rank{rank}"
        log, result = logs / f"{stem}.log", folder / f"{stem}.json"
        result.unlink(missing_ok=True)
        with log.open("wb") as sink:
            cmd = [str(python), str(script), "--rank", str(rank), "--ports", *ports]
            cmd += ["--protocol", protocol, "--input", str(inputs[rank])]
            cmd += ["--output", str(folder / f"out-{protocol.lower()}-{n}-rank{rank}.csv")]
            cmd += ["--result", str(result)]
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=folder)
        procs.append((proc, log, result))
    lines: list[dict[str, Any]] = []
    for proc, log, result in procs:
        try:
            proc.wait(timeout=7200)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode != 0 or not result.exists():
            for other, _, _ in procs:
                if other.poll() is None:
                    other.kill()
                    other.wait()
            raise XmatchError(f"SecretFlow {protocol} party failed; see {log}")
        lines.append(json.loads(result.read_text(encoding="utf-8")))
    for _, log, _ in procs:
        _remove_spu_trace(log)
    for rank in (0, 1):  # spu's result files hold identities (0644): not kept
        (folder / f"out-{protocol.lower()}-{n}-rank{rank}.csv").unlink(missing_ok=True)
    seconds = max(float(line["seconds"]) for line in lines)
    matches = int(next(line for line in lines if line["rank"] == 0)["intersection"])
    return seconds, matches


# ---------------------------------------------------------------------------
# The federation


@dataclass
class _Federation:
    root: Path
    credentials: Any
    workers: int


def _prepare(root: Path, workers: int) -> _Federation:
    from keys.handles import load_tls_credentials
    from xmatch import synth

    pki = root / "pki"
    if not (pki / "ca.crt").exists():
        synth.write_pki(root, [NODE])
    (root / "logs").mkdir(exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    tls = load_tls_credentials(
        ca=pki / "ca.crt",
        cert=pki / f"{synth.COORDINATOR_NAME}.crt",
        key=pki / f"{synth.COORDINATOR_NAME}.key",
        name=synth.COORDINATOR_NAME,
    )
    return _Federation(root=root, credentials=tls.channel_credentials(), workers=workers)


#: Set to 1 to bench the GM suites (SM2_XMD:SM3_SSWU_RO_ for ecdh, sm4-ecb-v1 for keyed-hash).
GM_ENV = "XMATCH_BENCH_GM"
_GM_PARAMS = {"ecdh": ("suite", "SM2_XMD:SM3_SSWU_RO_"), "keyed-hash": ("prf", "sm4-ecb-v1")}


def _gm() -> bool:
    return os.environ.get(GM_ENV, "") == "1"


def _node_config(
    fed: _Federation, n: int, port: int, stream_rows: int | None, bucket_rows: int | None
) -> Path:
    from xmatch import synth

    spec = synth.NodeSpec(
        name=NODE,
        protocol="keyed-hash",
        match_sets=(
            synth.MatchSetSpec(
                name=f"set-{n}",
                circumstance="DEAD",
                source=f"data/set-{n}.parquet",
                id_column="id",
                where=None,
                payload=("start_date",),
            ),
        ),
    )
    path = synth.write_node_config(fed.root, spec, port=port)
    extra = [f"workers = {fed.workers}", "max_concurrent_rounds = 2"]
    if stream_rows is not None:
        extra.append(f"stream_rows = {stream_rows}")
    if bucket_rows is not None:
        extra.append(f"bucket_rows = {bucket_rows}")
    text = path.read_text(encoding="utf-8").replace(
        f'listen = "127.0.0.1:{port}"\n', f'listen = "127.0.0.1:{port}"\n' + "\n".join(extra) + "\n"
    )
    if _gm():  # the bench node accepts the GM suite and PRF (off by default)
        text = text.replace(
            "[[match_sets]]\n",
            '[[match_sets]]\nsuites = ["SM2_XMD:SM3_SSWU_RO_"]\nprfs = ["sm4-ecb-v1"]\n',
        )
    path.write_text(text, encoding="utf-8")
    return path


def _round(
    fed: _Federation,
    *,
    port: int,
    node_pid: int,
    n: int,
    protocol: str,
    identities: npt.NDArray[np.uint8],
    pool: Executor | None,
) -> tuple[float, int, int, _WireCount, _Sampler]:
    from coordinator.client import NodeClient
    from coordinator.config import NodeEntry
    from psi.context import DEFAULT_PARAMS, Protocol, RoundContext
    from xmatch import synth

    entry = NodeEntry(
        name=NODE,
        address=f"127.0.0.1:{port}",
        match_sets=[f"set-{n}"],
        protocol="ecdh" if protocol == "ecdh" else "keyed-hash",
        deadline_seconds=7200,
    )
    proto: Protocol = "ecdh" if protocol == "ecdh" else "keyed-hash"
    context = RoundContext(
        round_id=os.urandom(16),
        as_of=_dt.date.today(),
        purpose=synth.PURPOSE,
        requester=synth.COORDINATOR_NAME,
        responder=NODE,
        match_set=f"set-{n}",
        protocol=proto,
        params=((_GM_PARAMS[proto],) if _gm() else tuple(sorted(DEFAULT_PARAMS[proto]))),
    )
    count = _WireCount()
    with NodeClient(
        entry,
        credentials=fed.credentials,
        chunk_items=CHUNK_ITEMS,
        executor=pool,
        interceptors=[_wire_counter(count)],
    ) as client:
        client.capabilities()  # connect and handshake outside the timing
        sampler = _Sampler({"node": node_pid, "coordinator": os.getpid()})
        with sampler:
            t0 = time.perf_counter()
            result = client.query(f"set-{n}", context=context, identities=identities)
            seconds = time.perf_counter() - t0
    return seconds, result.matches, result.set_size, count, sampler


# ---------------------------------------------------------------------------
# Output


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}× faster" if value >= 1 else f"{1 / value:.2f}× slower"


def _table(results: Sequence[BenchResult]) -> Any:
    from rich.table import Table

    table = Table(title="xmatch bench (end to end over gRPC + mutual TLS on loopback)")
    for col in (
        "protocol",
        "set",
        "roster",
        "seconds",
        "records/s",
        "EC ops/s/core",
        "× X25519 limit",
        "wire ↑",
        "wire ↓",
        "peak RSS node (+pool)",
        "peak RSS coord (+pool)",
        "vs openmined",
        "vs SF ECDH",
        "vs SF RR22",
    ):
        table.add_column(col, justify="left" if col == "protocol" else "right")
    for r in results:
        limit = (
            None
            if r.x25519_limit_seconds is None or r.seconds is None
            else r.seconds / r.x25519_limit_seconds
        )
        table.add_row(
            r.protocol + (f" ({r.note})" if r.note else ""),
            f"{r.size:,}",
            f"{r.roster:,}",
            _fmt(r.seconds, ".2f"),
            _fmt(r.records_per_s, ",.0f"),
            _fmt(r.ec_ops_per_s_per_core, ",.0f"),
            _fmt(limit, ".2f"),
            _fmt_bytes(r.wire_bytes_sent),
            _fmt_bytes(r.wire_bytes_received),
            f"{_fmt_bytes(r.peak_rss_node)} ({_fmt_bytes(r.peak_rss_node_total)})"
            if r.peak_rss_node is not None
            else "—",
            f"{_fmt_bytes(r.peak_rss_coordinator)} ({_fmt_bytes(r.peak_rss_coordinator_total)})"
            if r.peak_rss_coordinator is not None
            else "—",
            _ratio(r.vs_openmined),
            _ratio(r.vs_secretflow_ecdh),
            _ratio(r.vs_secretflow_rr22),
        )
    return table


def _plot(results: Sequence[BenchResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for protocol, style in (
        ("keyed-hash", "o-"),
        ("ecdh", "s-"),
        ("openmined-psi", "^--"),
        ("secretflow-ecdh", "v--"),
        ("secretflow-rr22", "d--"),
    ):
        pts = sorted((r.size, r.seconds) for r in results if r.protocol == protocol and r.seconds)
        if pts:
            xs, ys = zip(*pts, strict=True)
            label = {
                "openmined-psi": "openmined-psi 2.0.6 (in-process)",
                "secretflow-ecdh": "SecretFlow spu 0.9.5 ECDH-25519",
                "secretflow-rr22": "SecretFlow spu 0.9.5 RR22",
            }.get(protocol, protocol)
            ax.plot(xs, ys, style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records in the match set (roster as in bench.json)")
    ax.set_ylabel("seconds, end to end")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("xmatch bench: time vs size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# The run


@contextlib.contextmanager
def _ec_pool(workers: int, needed: bool, backend: str) -> Iterator[Executor | None]:
    if not needed:
        yield None
        return
    pool = worker_pool(workers, start_method="forkserver", x25519_backend=backend)
    try:
        prepare_executor(pool, workers)  # start every worker outside the timing
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_bench(
    *,
    sizes: Sequence[int],
    protocols: Sequence[str],
    out: Path,
    workers: int | None = None,
    baseline: bool = True,
    baselines: Sequence[str] = ("openmined",),
    roster_size: int | None = None,
    stream_rows: int | None = None,
    bucket_rows: int | None = None,
    baseline_limit: float = BASELINE_LIMIT_SECONDS,
    echo: Callable[[str], None] | None = None,
) -> int:
    """Run the benchmark (module docstring); write ``out/bench.json`` and ``out/bench.png``.

    ``baselines`` names what to compare with (:data:`BASELINES`);
    ``baseline=False`` runs none. A ``secretflow`` baseline without the
    peers virtualenv is skipped with one line.

    Returns 0, or 1 when a round found a different number of matches than
    the data holds (the numbers are then still written, marked).

    Raises:
        InputError: a size or the roster size is out of range, or an unknown protocol.
        XmatchError: a node did not start or a round failed.
    """
    from rich.console import Console

    from psi.identifiers import encode_identities
    from xmatch.demo import free_ports, running_nodes

    console = Console() if sys.stdout.isatty() else Console(width=200)
    say = echo or (lambda text: console.print(text, highlight=False))
    if not sizes or any(s < 1 or s > 50_000_000 for s in sizes):
        raise InputError("--sizes: each size must be between 1 and 50,000,000")
    if roster_size is not None and not 100 <= roster_size <= 20_000_000:
        raise InputError("--roster-size must be between 100 and 20,000,000")
    unknown = set(protocols) - {"ecdh", "keyed-hash"}
    if unknown:
        raise InputError(f"--protocol: unknown {sorted(unknown)[0]!r}")
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise InputError(f"--baseline: unknown {sorted(unknown)[0]!r}; use one of {BASELINES}")
    wanted = set(baselines) if baseline else set()
    sf_python = peers_python() if "secretflow" in wanted else None
    if "secretflow" in wanted and sf_python is None:
        say(
            "secretflow baseline skipped: no peers virtualenv at "
            f"{os.environ.get(PEERS_VENV_ENV) or PEERS_VENV} (make bench-peers)"
        )
    cores = os.cpu_count() or 1
    workers = workers or cores
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    fed = _prepare(out, workers)
    load = os.getloadavg()
    from psi.ecdh import use_x25519_backend

    backend = use_x25519_backend(on_fallback=say)
    rate = _x25519_rate() if "ecdh" in protocols else None
    say(
        f"xmatch bench: {platform.processor() or platform.machine()}, {cores} cores, "
        f"load average {load[0]:.2f}; EC workers per party: {workers}"
        + (f"; X25519 ({backend}) {rate:,.0f} ops/s/core" if rate else "")
    )
    results: list[BenchResult] = []
    status = 0
    last_run: dict[str, tuple[int, float]] = {}

    def predicted(name: str, n: int) -> float | None:
        last = last_run.get(name)
        return None if last is None else last[1] * n / last[0]

    with _ec_pool(workers, "ecdh" in protocols, backend) as pool:
        for n in sorted(set(sizes)):
            roster_n = roster_size or max(n, 100)
            data = out / "data" / f"set-{n}.parquet"
            if not data.exists():
                t0 = time.perf_counter()
                _write_set(data, n)
                say(f"  wrote {n:,} records in {time.perf_counter() - t0:.1f} s")
            roster = _roster_ids(n, roster_n)
            expected = min(roster_n // 2, n)
            identities = encode_identities(roster.astype("U18"))
            port = free_ports(1)[0]
            config = _node_config(fed, n, port, stream_rows, bucket_rows)
            t0 = time.perf_counter()
            with running_nodes([(NODE, config)], log_dir=out / "logs") as nodes:
                startup = time.perf_counter() - t0
                pid = nodes[0].process.pid
                for protocol in [p for p in ("keyed-hash", "ecdh") if p in protocols]:
                    seconds, matches, set_size, wire, sampler = _round(
                        fed,
                        port=port,
                        node_pid=pid,
                        n=n,
                        protocol=protocol,
                        identities=identities,
                        pool=pool if protocol == "ecdh" else None,
                    )
                    result = BenchResult(
                        protocol=protocol,
                        size=n,
                        roster=roster_n,
                        seconds=seconds,
                        matches=matches,
                        expected_matches=expected,
                        records_per_s=n / seconds,
                        wire_bytes_sent=wire.sent,
                        wire_bytes_received=wire.received,
                        peak_rss_node=sampler.peak_main["node"],
                        peak_rss_node_total=sampler.peak_total["node"],
                        peak_rss_coordinator=sampler.peak_main["coordinator"],
                        peak_rss_coordinator_total=sampler.peak_total["coordinator"],
                        node_startup_seconds=startup,
                    )
                    if protocol == "ecdh":
                        result.padded_set_size = set_size
                        result.ec_ops = 2 * roster_n + 2 * set_size
                        result.ec_ops_per_s_per_core = result.ec_ops / seconds / cores
                        if rate:
                            result.x25519_limit_seconds = result.ec_ops / (rate * cores)
                    if matches != expected:
                        result.note = f"MISMATCH: {matches} matches, {expected} expected"
                        status = 1
                    results.append(result)
                    say(
                        f"  {protocol:<10} {n:>11,} × {roster_n:,}: {seconds:8.2f} s, "
                        f"{n / seconds:,.0f} records/s, node peak "
                        f"{_fmt_bytes(sampler.peak_total['node'])}, matches {matches:,}"
                    )
                hwm = _vm_hwm(pid)
            say(f"  node VmHWM (main process, startup included): {_fmt_bytes(hwm)}")
            runs: list[tuple[str, Callable[[], tuple[float, int]]]] = []
            if "openmined" in wanted:
                runs.append(("openmined-psi", functools.partial(_openmined, roster, n)))
            if sf_python is not None:
                for sf, name in SECRETFLOW_PROTOCOLS.items():
                    run_sf = functools.partial(_secretflow, sf_python, roster, n, out, sf)
                    runs.append((name, run_sf))
            for name, run in runs:
                guess = predicted(name, n)
                if guess is not None and guess > baseline_limit:
                    results.append(
                        BenchResult(
                            protocol=name,
                            size=n,
                            roster=roster_n,
                            seconds=None,
                            note=f"not run: about {guess:.0f} s predicted (linear)",
                        )
                    )
                    continue
                secs, found = run()
                last_run[name] = (n, secs)
                results.append(
                    BenchResult(
                        protocol=name,
                        size=n,
                        roster=roster_n,
                        seconds=secs,
                        matches=found,
                        expected_matches=expected,
                        records_per_s=n / secs,
                        note="" if found == expected else f"{found} matches, {expected} expected",
                    )
                )
                say(f"  {name:<15} {n:>11,} × {roster_n:,}: {secs:8.2f} s")
    for r in results:
        if r.protocol not in ("keyed-hash", "ecdh") or r.seconds is None:
            continue
        for name, attr in (
            ("openmined-psi", "vs_openmined"),
            ("secretflow-ecdh", "vs_secretflow_ecdh"),
            ("secretflow-rr22", "vs_secretflow_rr22"),
        ):
            base = next((b for b in results if b.protocol == name and b.size == r.size), None)
            if base is not None and base.seconds:
                setattr(r, attr, base.seconds / r.seconds)
    doc = {
        "command": "xmatch bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "",
        "machine": {
            "cores": cores,
            "python": platform.python_version(),
            "load_average_start": load,
            "load_average_end": os.getloadavg(),
            "x25519_ops_per_s_per_core": rate,
            "x25519_backend": backend,
        },
        "baselines": sorted(wanted),
        "workers_per_party": workers,
        "chunk_items": CHUNK_ITEMS,
        "node_stream_rows": stream_rows,
        "node_bucket_rows": bucket_rows,
        "results": [asdict(r) for r in results],
    }
    (out / "bench.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    _plot(results, out / "bench.png")
    console.print(_table(results))
    say(
        f"load average at the end: {os.getloadavg()[0]:.2f}; wrote {out / 'bench.json'}, "
        f"{out / 'bench.png'}"
    )
    if status:
        say("error: a round found a different number of matches than the data holds")
    return status
