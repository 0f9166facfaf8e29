"""Summarize a py-spy ``--format raw`` profile of ``xmatch bench`` by process role and cost.

    .venv/bin/python benchmarks/profile_summary.py PROFILE.txt [--top 12]

Each raw line is ``frame;frame;...;leaf COUNT``; with ``--subprocesses`` the
frames name each process (``process PID:"command"``). Samples are grouped by
the innermost process: the bench process (coordinator side), the node
(``xmatch node serve``) and the EC workers of either. Each sample is put in
one category by the first rule of :data:`RULES` that matches its stack, so
the categories of a role add up to its samples. ``make profile-ecdh`` writes
the profile and prints this summary.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def _mb8_call_frame() -> str:
    """The py-spy frame of the line that calls mbx_x25519_mb8 (time spent in the library)."""
    source = Path(__file__).resolve().parents[1] / "psi" / "hazmat" / "x25519.py"
    lines = source.read_text(encoding="utf-8").splitlines()
    number = next(i for i, text in enumerate(lines, 1) if "status = mb8(" in text)
    return f"_CryptoMb.mult (psi/hazmat/x25519.py:{number})"


#: (category, substrings of the stack; any matches). Order matters: first match wins.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "startup and imports",
        ("importlib._bootstrap", "prepare_executor", "_x25519_rate", "_write_set"),
    ),
    (
        "bench setup, outside the timing",
        ("encode_identities", "_roster_ids", "make_ids", "_node_config", "_prepare", "_plot"),
    ),
    ("X25519: mbx_x25519_mb8 calls", (_mb8_call_frame(),)),
    ("X25519: pointer arrays, checks", ("_CryptoMb.mult", "first_low_order")),
    ("X25519: OpenSSL", ("_openssl_mult",)),
    ("hash to curve (SHA-256 suite)", ("_sha256_u",)),
    ("hash to curve (RFC 9380 suites)", ("_ell2_",)),
    ("repeat check (DistinctRows)", ("DistinctRows",)),
    ("set: dedup, pad, shuffle", ("distinct_identities", "_bucket_blocks", "load_set")),
    ("intersection", ("SortedRows", "_intersect", "EcdhRequester.finish")),
    ("transcript", ("Transcript.",)),
    ("chunk framing (PointChunk)", ("PointChunk", "psi/messages.py")),
    ("bench sampler and log drain", ("_Sampler", "drain (xmatch/demo.py")),
    ("waiting (locks, queues, select)", ("Condition.wait", "select", "Event.wait", "sleep")),
    (
        "worker hand-off (pickle, pipes, futures)",
        ("multiprocessing/", "concurrent/futures/process.py", "split_map"),
    ),
    ("gRPC", ("grpc/",)),
)


def summarize(path: Path) -> dict[str, collections.Counter[str]]:
    """Samples per role and category."""
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        starts = [i for i, f in enumerate(frames) if f.startswith("process ")]
        if not starts:
            continue
        proc = frames[starts[-1]]
        if "multiprocessing" in proc or "forkserver" in proc:
            role = "EC workers"
        elif "node serve" in proc:
            role = "node (main process)"
        else:
            role = "coordinator (bench process)"
        rest = ";".join(frames[starts[-1] + 1 :])
        category = next(
            (name for name, keys in RULES if any(k in rest for k in keys)),
            "other Python",
        )
        out[role][category] += int(count)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    for role, counts in sorted(summarize(args.profile).items()):
        total = sum(counts.values())
        print(f"{role}: {total} samples")
        for category, n in counts.most_common(args.top):
            print(f"  {100 * n / total:5.1f} %  {category}")


if __name__ == "__main__":
    main()
