"""Benchmark: one streaming read of a node's match set, at several record-batch sizes.

    .venv/bin/python benchmarks/bench_stream.py NODE_TOML [--set NAME] [--batch-rows 65536 ...]

Reads the set (DuckDB Arrow record batches, normalization, 16-byte encoding:
what a streamed keyed-hash round and a bucketed ecdh round do first) once per
batch size, each in a fresh process so that the peak is its own, and prints
seconds and VmHWM. Use the node.toml that ``xmatch bench`` writes, e.g.
``bench-20m/bench-node.node.toml`` after
``xmatch bench --sizes 20000000 --protocol keyed-hash --no-baseline --out bench-20m``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path


def _vm_hwm_mib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return -1


def read_once(config: Path, name: str | None, batch_rows: int) -> None:
    """In this process: stream the set once and print rows, seconds and VmHWM."""
    from nodes.config import load_node_config
    from nodes.matchsets import MatchSetStore

    cfg = load_node_config(config)
    store = MatchSetStore(cfg)
    name = name or cfg.match_sets[0].name
    started = time.perf_counter()
    rows = sum(len(b) for b in store.stream(name, dt.date.today(), batch_rows=batch_rows))
    seconds = time.perf_counter() - started
    print(
        f"{batch_rows:>9,} rows/batch: {rows:,} rows in {seconds:.1f} s, VmHWM {_vm_hwm_mib()} MiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="a node.toml")
    parser.add_argument("--set", default=None, help="match set (default: the first)")
    parser.add_argument(
        "--batch-rows", type=int, nargs="+", default=[524_288, 131_072, 65_536, 32_768]
    )
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        read_once(args.config, args.set, args.batch_rows[0])
        return 0
    for rows in args.batch_rows:
        cmd = [sys.executable, __file__, str(args.config), "--once", "--batch-rows", str(rows)]
        if args.set:
            cmd += ["--set", args.set]
        subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
