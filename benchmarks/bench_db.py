"""Benchmark: a match set streamed from PostgreSQL next to the same rows in Parquet.

    .venv/bin/python benchmarks/bench_db.py --rows 20000000 [--batch-rows 65536]
    .venv/bin/python benchmarks/bench_db.py --csv-rounds 3000000

The first form starts a throwaway PostgreSQL (xmatch/localdb.py), fills a table
with ``--rows`` valid identity numbers and a start date (the rows of ``xmatch
bench``), writes the same rows as Parquet, and streams each source once through
the node's own reader (:meth:`nodes.matchsets.MatchSetStore.stream`:
normalization and 16-byte encoding included), each in a fresh process so that
its VmHWM is its own. PostgreSQL evaluates the same ``where`` (``start_date <=
$as_of``) that DuckDB evaluates for the file.

The second form measures issue 10's "no reparse per round": a CSV of that many
custody rows loaded for three evaluation dates, once as every round did before
(a full read per new ``as_of``) and once through the store (parsed once).
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHUNK = 1_000_000
WHERE = "start_date <= $as_of"


def _vm_hwm_mib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return -1


def _node_toml(folder: Path, source: str, *, where: str | None = WHERE) -> Path:
    for rel in ("ca.crt", "n.crt", "n.key"):
        (folder / rel).write_text("x")
    where_line = f'where = "{where}"\n' if where else ""
    path = folder / f"node-{abs(hash(source)) % 10**6}.toml"
    path.write_text(
        f"""[node]
name = "bench-node"
listen = "127.0.0.1:50061"
ca = "ca.crt"
cert = "n.crt"
key = "n.key"
audit_log = "audit.jsonl"

[[match_sets]]
name = "set"
circumstance = "DEAD"
source = {source}
id_column = "id"
{where_line}payload = ["start_date"]
protocols = ["keyed-hash"]
allow = [{{ requester = "civil-affairs", purposes = ["eligibility-review"] }}]
""",
        encoding="utf-8",
    )
    return path


def read_once(config: Path, batch_rows: int) -> None:
    """In this process: stream the set once; print rows, seconds and VmHWM."""
    from nodes.config import load_node_config
    from nodes.matchsets import MatchSetStore

    store = MatchSetStore(load_node_config(config))
    started = time.perf_counter()
    rows = sum(len(b) for b in store.stream("set", dt.date.today(), batch_rows=batch_rows))
    seconds = time.perf_counter() - started
    print(f"{rows} {seconds:.2f} {_vm_hwm_mib()}")


def _fill(server: object, rows: int, parquet: Path) -> None:
    import adbc_driver_postgresql.dbapi as adbc
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xmatch.bench import make_ids

    schema = pa.schema([("id", pa.string()), ("start_date", pa.date32())])
    with adbc.connect(server.dsn()) as con, pq.ParquetWriter(parquet, schema) as writer:  # type: ignore[attr-defined]
        with con.cursor() as cur:
            cur.execute("CREATE TABLE bench_set (id text, start_date date)")
            for lo in range(0, rows, CHUNK):
                hi = min(rows, lo + CHUNK)
                ids = pa.array(make_ids(lo, hi).astype(object), type=pa.binary()).cast(pa.string())
                start = np.datetime64("2015-01-01") + (np.arange(lo, hi) % 3000).astype(
                    "timedelta64[D]"
                )
                table = pa.table({"id": ids, "start_date": pa.array(start, type=pa.date32())})
                cur.adbc_ingest("bench_set", table, mode="append")
                writer.write_table(table)
        con.commit()


def _child(config: Path, batch_rows: int) -> tuple[int, float, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--once", str(config), "--batch-rows", str(batch_rows)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), float(out[1]), int(out[2])


def stream_bench(rows: int, batch_rows: int) -> None:
    from xmatch.localdb import local_postgresql

    with tempfile.TemporaryDirectory() as tmp, local_postgresql() as server:
        folder = Path(tmp)
        parquet = folder / "set.parquet"
        started = time.perf_counter()
        _fill(server, rows, parquet)
        seconds = time.perf_counter() - started
        print(f"filled PostgreSQL and Parquet with {rows:,} rows in {seconds:.0f} s")
        dsn = folder / "bench.dsn"
        dsn.write_text(server.dsn() + "\n")
        dsn.chmod(0o600)
        configs = {
            "parquet": _node_toml(folder, '"set.parquet"'),
            "postgresql": _node_toml(
                folder,
                '{ database = "postgresql", dsn_file = "bench.dsn", table = "bench_set" }',
            ),
        }
        results = {}
        for name, config in configs.items():
            n, seconds, peak = _child(config, batch_rows)
            results[name] = seconds
            print(
                f"{name:<11} {n:>12,} rows  {seconds:7.1f} s  {n / seconds / 1e6:5.2f} M rows/s  "
                f"VmHWM {peak} MiB"
            )
        print(f"postgresql / parquet time: {results['postgresql'] / results['parquet']:.2f}x")


def csv_rounds(rows: int) -> None:
    import numpy as np

    from nodes.config import load_node_config
    from nodes.matchsets import MatchSetStore, load_match_set
    from xmatch.bench import make_ids

    days = [dt.date(2026, 11, 27), dt.date(2026, 11, 28), dt.date(2026, 11, 29)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ids = make_ids(0, rows).astype(str)
        start = np.datetime64("2015-01-01") + (np.arange(rows) % 3000).astype("timedelta64[D]")
        with (folder / "custody.csv").open("w", encoding="utf-8") as fh:
            fh.write("id,start_date,term_months\n")
            for lo in range(0, rows, CHUNK):
                hi = min(rows, lo + CHUNK)
                lines = [
                    f"{i},{d},{t}"
                    for i, d, t in zip(
                        ids[lo:hi].tolist(),
                        start[lo:hi].astype(str).tolist(),
                        (np.arange(lo, hi) % 60).tolist(),
                        strict=True,
                    )
                ]
                fh.write("\n".join(lines) + "\n")
        cfg = load_node_config(
            _node_toml(folder, '"custody.csv"', where="term_months >= 6 AND start_date <= $as_of")
        )
        t0 = time.perf_counter()
        for day in days:
            load_match_set(cfg, "set", day)
        before = time.perf_counter() - t0
        store = MatchSetStore(cfg)
        t0 = time.perf_counter()
        per_day = []
        for day in days:
            t = time.perf_counter()
            store.get("set", day)
            per_day.append(time.perf_counter() - t)
        after = time.perf_counter() - t0
        print(
            f"{rows:,} CSV rows, 3 rounds with new as_of: full read each time {before:.1f} s, "
            f"parsed once {after:.1f} s ({', '.join(f'{s:.1f}' for s in per_day)} s per round)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--batch-rows", type=int, default=65_536)
    parser.add_argument("--csv-rounds", type=int, default=0, metavar="ROWS")
    parser.add_argument("--once", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        read_once(args.once, args.batch_rows)
    elif args.csv_rounds:
        csv_rounds(args.csv_rounds)
    else:
        stream_bench(args.rows, args.batch_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
