"""Micro-benchmark: a keyed-hash node's per-round lookup (``psi._match.SortedRows``).

    .venv/bin/python benchmarks/bench_lookup.py [--rows 3000000] [--queries 300000]
        [--present 140000] [--chunk 8192] [--repeat 3]

Random 16-byte rows stand for the node's AES tags; the queries hold
``--present`` of them and random others, answered chunk by chunk as a round
does. Prints the build time, then the best of ``--repeat`` for the binary
search (the fallback), the bucket directory, and the whole ``lookup``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from psi._match import SortedRows, _keys


def best_of(repeat: int, run: Callable[[], object]) -> float:
    """The shortest of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--queries", type=int, default=300_000)
    parser.add_argument("--present", type=int, default=140_000)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    table = rng.integers(0, 256, size=(args.rows, 16), dtype=np.uint8)
    absent = rng.integers(0, 256, size=(args.queries - args.present, 16), dtype=np.uint8)
    queries = np.concatenate([table[rng.integers(0, args.rows, args.present)], absent])
    rng.shuffle(queries)
    started = time.perf_counter()
    rows = SortedRows(table)
    print(f"SortedRows({args.rows:,} rows)   {time.perf_counter() - started:6.3f} s")
    chunks = [queries[i : i + args.chunk] for i in range(0, len(queries), args.chunk)]
    keys = [_keys(c) >> np.uint64(rows._shift) for c in chunks]
    ways: dict[str, Callable[[], object]] = {
        "binary search": lambda: [rows._searched(k) for k in keys],
        "directory": lambda: [rows._bucketed(k) for k in keys],
        "whole lookup": lambda: [rows.lookup(c) for c in chunks],
    }
    for name, run in ways.items():
        print(f"{name:24s} {best_of(args.repeat, run):6.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
