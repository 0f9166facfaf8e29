"""Benchmark: per-core rates of the SM2 suite's primitives, and the lower bound of a round.

    .venv/bin/python benchmarks/bench_sm2.py [--n 20000] [--repeat 5] [--x25519-round S]

Each primitive runs over one buffer of ``--n`` elements in this process (one core), best
of ``--repeat``, timed in CPU seconds of the process (``time.process_time``, so the
other work on a shared machine inflates it less than wall time; it does not remove the
cost of a shared core's caches). Rows:

- ``mbx_sm2_ecdh_mb8``, ``mbx_x25519_mb8``: the libraries' multiplications over a
  buffer (:mod:`psi.hazmat.sm2`'s and :mod:`psi.hazmat.x25519`'s buffer calls: packing
  included, decompression and hashing not);
- the field square root v^((p+1)/4) on each backend of :mod:`psi.hazmat.sm2_field`;
- hash to curve (expand_message_xmd over SM3, two SSWU maps, one addition), decompression
  (one root), the Legendre check of received reblinded points;
- the two buffer functions a round calls, ``hash_mult_buffer`` and ``mult_buffer``.

The lower bound of an ecdh round of Q roster identities and S set elements: every one of
the Q + S identities is hashed (two roots), multiplied twice (by its owner, then by the
peer) and decompressed once (by the peer, one root), spread over ``os.cpu_count()``
cores; nothing else (no transport, no sorting, no Python around the primitives). The
X25519 round's bound is two multiplications per identity (its hash is one SHA-256).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from psi.hazmat import sm2, sm2_field, x25519  # noqa: E402

SECRETFLOW_SM2_20K = 19.9  # s, issue 11: SecretFlow SM2 ECDH-PSI 20k x 20k, two processes


def _best(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Best CPU microseconds per element of ``fn`` over ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def measure(n: int, repeat: int) -> dict[str, float]:
    """Microseconds per element (CPU, one core) of every primitive."""
    rng = np.random.default_rng(11)
    identities = rng.integers(0, 256, size=(n, 16), dtype=np.uint8).tobytes()
    scalar = sm2.generate_scalar()
    blinded, bad = sm2.hash_mult_buffer(scalar, identities)
    assert bad < 0
    _, xs, ys, bad = sm2._decode(blinded)
    assert bad < 0
    x_le = np.frombuffer(blinded, dtype=np.uint8).reshape(n, 33)[:, :0:-1].tobytes()
    values = [x * x % sm2.P for x in xs]  # squares, as the suite's roots mostly are
    msgs = [identities[i : i + 16] for i in range(0, n * 16, 16)]
    mb = sm2._crypto_mb()
    us: dict[str, float] = {}
    if mb is not None:
        us["mbx_sm2_ecdh_mb8 (buffer)"] = _best(lambda: mb.mult_raw(scalar, x_le, ys), n, repeat)
    if x25519.backend() == "crypto-mb":
        u = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
        u[:, 31] &= 0x7F
        u[:, 0] |= 9  # far from the low-order points
        key = x25519.generate_scalar()
        us["mbx_x25519_mb8 (buffer)"] = _best(
            lambda: x25519.mult_buffer(key, u.tobytes()), n, repeat
        )
    for name in sm2_field.BACKENDS:
        try:
            sm2_field.sqrt_candidates(values[:8], backend=name)
        except OSError:
            continue
        root = functools.partial(sm2_field.sqrt_candidates, values, backend=name)
        us[f"sqrt, {name}"] = _best(root, n, repeat)
    us["hash to curve"] = _best(lambda: sm2._hash_to_curve(msgs, sm2.DST), n, repeat)
    us["decompress"] = _best(lambda: sm2._decode(blinded), n, repeat)
    us["first_bad_point (Legendre)"] = _best(lambda: sm2.first_bad_point(blinded), n, repeat)
    us["hash_mult_buffer"] = _best(lambda: sm2.hash_mult_buffer(scalar, identities), n, repeat)
    us["mult_buffer"] = _best(lambda: sm2.mult_buffer(scalar, blinded), n, repeat)
    return us


def bounds(us: dict[str, float], cores: int, x25519_round: float | None) -> list[str]:
    """Markdown rows: the lower bounds of the rounds of issue 11's goals."""
    sqrt = min(v for k, v in us.items() if k.startswith("sqrt"))
    mult = us.get("mbx_sm2_ecdh_mb8 (buffer)", float("nan"))
    xmult = us.get("mbx_x25519_mb8 (buffer)", float("nan"))
    per_id = 2 * sqrt + 2 * mult + sqrt  # hash: two roots; two products; decompression: one
    buffers = us["hash_mult_buffer"] + us["mult_buffer"]
    lines = [
        "| round | SM2 bound: primitives | SM2 bound: buffer functions | X25519 bound | goal |",
        "|---|---|---|---|---|",
    ]
    for q, s in ((100_000, 100_000), (60_000, 20_000)):
        ids = q + s
        prim = ids * per_id / cores / 1e6
        buf = (ids * buffers + q * us["first_bad_point (Legendre)"]) / cores / 1e6
        xb = ids * 2 * xmult / cores / 1e6
        if q == s:
            goal = f"≤ 2 × X25519 round ({2 * x25519_round:.2f} s)" if x25519_round else "≤ 2×"
            goal += f"; bounds' ratio {prim / xb:.1f}×"
        else:
            goal = f"≤ {SECRETFLOW_SM2_20K / 20:.2f} s (SecretFlow 20k × 20k / 20)"
        lines.append(
            f"| {q // 1000}k × {s // 1000}k | {prim:.2f} s | {buf:.2f} s | {xb:.2f} s | {goal} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="elements per buffer")
    parser.add_argument("--repeat", type=int, default=5, help="runs per primitive (best kept)")
    parser.add_argument("--x25519-round", type=float, help="measured X25519 100k round (s)")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    us = measure(args.n, args.repeat)
    print(f"n = {args.n}, best of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
    print("| primitive | µs per element (CPU, one core) | per core per second |")
    print("|---|---|---|")
    for name, value in us.items():
        print(f"| {name} | {value:.2f} | {1e6 / value:,.0f} |")
    print(f"\nLower bounds on {cores} cores:\n")
    print("\n".join(bounds(us, cores, args.x25519_round)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
