"""Benchmark: a whole ``xmatch round run`` over real node processes (issue 10, item 4).

    .venv/bin/python benchmarks/bench_round.py [--children 100000] [--custody 3000000]
        [--deaths 100000] [--repeat 3] [--data DIR] [--phases]

Builds (once; ``--data DIR`` keeps it for later runs) a federation of two
keyed-hash nodes: ``justice`` with a custody CSV of ``--custody`` records
(``id_number,start_date,end_date,term_months``, ``where = "term_months >= 6"``)
and ``police`` with a deaths CSV of ``--deaths`` records, both carrying dates
as payload; a roster of ``--children`` children (three identities each; a
supported child's parents in the sets as its category needs, see
:func:`generate`). PKI, ``node.toml`` files and ``coordinator.toml`` are
written as :mod:`xmatch.synth` writes them; both nodes run as ``xmatch node
serve`` processes with mutual TLS on loopback.

Then it runs ``xmatch round run`` (a subprocess, as an operator types it, with
report.html, decisions.json, evidence.csv and decisions.xlsx) ``--repeat``
times against the same nodes and prints each wall time and records per second
(records: the match sets' rows, custody + deaths). The first round also makes
each node parse its CSV; later rounds find the prepared set in the node's
cache (docs/node.md, "Caching"), so both are shown. ``--phases`` runs the
round once more in-process with a progress display that notes the time of each
phase (query = prepare, fan out = the PSI over both nodes, rules, report,
spreadsheet), with the coordinator process's CPU seconds in each. The machine is
shared: repeat and take the best.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import itertools
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from psi.identifiers import identity_number
from xmatch import synth
from xmatch.bench import ids_at
from xmatch.demo import NodeProcess, free_ports, start_node, stop_nodes

AS_OF = dt.date(2026, 11, 29)
NODES = (
    synth.NodeSpec(
        "justice",
        "keyed-hash",
        (
            synth.MatchSetSpec(
                "custody",
                "IMPRISONED",
                "data/custody.csv",
                "id_number",
                "term_months >= 6",
                ("start_date", "end_date"),
            ),
        ),
    ),
    synth.NodeSpec(
        "police",
        "keyed-hash",
        (
            synth.MatchSetSpec(
                "deaths", "DEAD", "data/deaths.csv", "id_number", None, ("start_date",)
            ),
        ),
    ),
)
REGIONS = ["150102", "150203", "150402", "150502", "150602", "150702", "152201", "152502"]
ROSTER_HEADER = (
    "child_id,child_name,child_birth_date,child_sex,father_id,mother_id,status,category,"
    "foundling,region_code,last_check_date"
)


def _id(rng: random.Random, born: dt.date) -> str:
    return identity_number(rng.choice(REGIONS), born, rng.randrange(1000))


def _day(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rng.randrange((end - start).days))


def _filler(start: int, n: int) -> list[str]:
    """``n`` distinct identity numbers of people not on the roster (born 1950-2009)."""
    ids = ids_at(np.arange(start, start + n, dtype=np.int64) * 7 + 3)
    return [v.decode() for v in ids.tolist()]


def _dates(rng: random.Random, n: int, first: dt.date, last: dt.date) -> list[str]:
    span = (last - first).days
    return [(first + dt.timedelta(days=rng.randrange(span))).isoformat() for _ in range(n)]


def _custody_row(rng: random.Random, person: str, *, current: bool) -> str:
    """A custody record; ``current``: in force on the evaluation date with a term of 6+ months."""
    if current:
        term = rng.randrange(12, 180)
        start = AS_OF - dt.timedelta(days=rng.randrange(1, term * 30 - 31))
    else:
        term = rng.randrange(1, 180)
        start = _day(rng, dt.date(2012, 1, 1), dt.date(2026, 11, 1))
    end = "" if rng.random() < 0.1 else (start + dt.timedelta(days=term * 30)).isoformat()
    return f"{person},{start.isoformat()},{end},{term}\n"


def generate(root: Path, *, children: int, custody: int, deaths: int, seed: int = 10) -> None:
    """Write ``data/roster.csv``, ``data/custody.csv`` and ``data/deaths.csv`` under ``root``.

    A supported child's parents are mostly in the sets as its category needs
    (orphan: both dead; de facto unsupported: the father in custody, the mother
    dead or in custody); one parent in ten is missing or released, so some
    exit. One candidate in ten qualifies; the other candidates have no record.
    """
    rng = random.Random(seed)
    data = root / "data"
    data.mkdir(parents=True)
    lines = [ROSTER_HEADER]
    jailed: list[str] = []
    released: list[str] = []
    dead: list[tuple[str, str]] = []
    for i in range(children):
        child = _id(rng, _day(rng, dt.date(2008, 1, 1), dt.date(2026, 10, 1)))
        father = _id(rng, _day(rng, dt.date(1965, 1, 1), dt.date(1995, 1, 1)))
        mother = _id(rng, _day(rng, dt.date(1965, 1, 1), dt.date(1995, 1, 1)))
        supported = rng.random() < 0.7
        category = ("orphan" if rng.random() < 0.3 else "de_facto") if supported else ""
        if supported or rng.random() < 0.1:
            plan = {"father": "dead", "mother": "dead"}
            if category != "orphan" and rng.random() < 0.7:
                plan = {"father": "jailed", "mother": rng.choice(["dead", "jailed"])}
            for parent, person in (("father", father), ("mother", mother)):
                if rng.random() < 0.05:
                    continue  # no record: the child exits (or is not eligible)
                if plan[parent] == "dead":
                    dead.append((person, _day(rng, dt.date(2010, 1, 1), AS_OF).isoformat()))
                elif rng.random() < 0.05:
                    released.append(person)
                else:
                    jailed.append(person)
        if rng.random() < 0.005:
            dead.append((child, _day(rng, dt.date(2025, 1, 1), AS_OF).isoformat()))
        last = _day(rng, dt.date(2025, 1, 1), dt.date(2026, 11, 1)).isoformat() if supported else ""
        status = "supported" if supported else "candidate"
        lines.append(f"{child},儿童{i},,,{father},{mother},{status},{category},,{child[:6]},{last}")
    (data / "roster.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [_custody_row(rng, p, current=True) for p in jailed]
    rows += [_custody_row(rng, p, current=False) for p in released]
    others = _filler(0, max(custody - len(rows), 0))
    rows += [_custody_row(rng, p, current=False) for p in others]
    rng.shuffle(rows)
    with (data / "custody.csv").open("w", encoding="utf-8") as fh:
        fh.write("id_number,start_date,end_date,term_months\n")
        fh.writelines(rows)
    others = _filler(custody, max(deaths - len(dead), 0))
    starts = _dates(rng, len(others), dt.date(2010, 1, 1), AS_OF)
    people = [f"{p},{s}\n" for p, s in (*dead, *zip(others, starts, strict=True))]
    rng.shuffle(people)
    with (data / "deaths.csv").open("w", encoding="utf-8") as fh:
        fh.write("id_number,start_date\n")
        fh.writelines(people)


def configure(root: Path) -> tuple[Path, dict[str, int]]:
    """PKI, node configs and ``coordinator.toml`` (fresh ports); returns it and the ports."""
    if not (root / "pki").exists():
        synth.write_pki(root, [n.name for n in NODES])
    ports = dict(zip([n.name for n in NODES], free_ports(len(NODES)), strict=True))
    (root / "logs").mkdir(exist_ok=True)
    for node in NODES:
        synth.write_node_config(
            root, node, port=ports[node.name], max_query_size=20_000_000, budget_rounds=100_000
        )
    config = synth.write_coordinator_config(root, NODES, ports=ports, deadline_seconds=600)
    return config, ports


@contextmanager
def nodes(root: Path) -> Iterator[list[NodeProcess]]:
    """Both nodes, started with the product's launcher, always stopped."""
    started: list[NodeProcess] = []
    try:
        for node in NODES:
            started.append(
                start_node(node.name, root / f"{node.name}.node.toml", log_dir=root / "logs")
            )
        yield started
    finally:
        stop_nodes(started)


def round_command(root: Path, out: Path) -> float:
    """``xmatch round run`` as an operator types it; returns the wall time."""
    shutil.rmtree(out, ignore_errors=True)
    xmatch = Path(sys.executable).parent / "xmatch"
    command = [str(xmatch), "round", "run", "--config", str(root / "coordinator.toml")]
    command += ["--as-of", AS_OF.isoformat(), "--out", str(out), "-q"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=root, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"round run failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    print("   ", done.stdout.strip().replace("\n", "\n    "))
    return seconds


def round_phases(root: Path, out: Path) -> list[tuple[str, float, float]]:
    """Run the round in-process with a display that notes when each phase starts.

    Each phase: its name, wall seconds, and this process's CPU seconds in it (all
    threads; not the forked writers'), which shows whether the phase waited.
    """
    from coordinator import round as round_module
    from coordinator.config import load_coordinator_config
    from coordinator.progress import Progress

    marks: list[tuple[str, float, float]] = [("prepare", time.perf_counter(), time.process_time())]

    class Timed(Progress):
        def phase(self, name: str) -> None:
            marks.append((name, time.perf_counter(), time.process_time()))
            super().phase(name)

    shutil.rmtree(out, ignore_errors=True)
    config = load_coordinator_config(root / "coordinator.toml")
    names = vars(round_module)  # run_round builds its display from the module's Progress
    saved = names["Progress"]
    names["Progress"] = Timed
    try:
        round_module.run_round(config, as_of=AS_OF, out=out, stderr=sys.stderr)
    finally:
        names["Progress"] = saved
    marks.append(("end", time.perf_counter(), time.process_time()))
    return [
        (name, after - at, cpu_after - cpu)
        for (name, at, cpu), (_, after, cpu_after) in itertools.pairwise(marks)
    ]


def compile_project() -> None:
    """Byte-compile the project, as ``pip install`` does for an installed package.

    A checkout installed in editable mode runs from its sources; with
    ``PYTHONDONTWRITEBYTECODE`` set (as on this machine) Python would compile
    every module again at each start (about 0.15 s of each ``xmatch`` run).
    """
    top = Path(__file__).resolve().parent.parent
    found = tomllib.loads((top / "pyproject.toml").read_text(encoding="utf-8"))
    for pattern in found["tool"]["setuptools"]["packages"]["find"]["include"]:
        compileall.compile_dir(top / pattern.rstrip("*"), quiet=1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--children", type=int, default=100_000)
    parser.add_argument("--custody", type=int, default=3_000_000)
    parser.add_argument("--deaths", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, help="keep the federation here (reused if present)")
    parser.add_argument("--phases", action="store_true", help="also time each phase in-process")
    args = parser.parse_args()
    tmp = None if args.data else tempfile.mkdtemp(prefix="bench-round-")
    root = (args.data or Path(tmp or ".")).resolve()
    try:
        if not (root / "data" / "roster.csv").exists():
            started = time.perf_counter()
            generate(root, children=args.children, custody=args.custody, deaths=args.deaths)
            print(f"generated in {time.perf_counter() - started:.1f} s: {root}")
        configure(root)
        compile_project()
        records = sum(
            sum(1 for _ in (root / "data" / name).open(encoding="utf-8")) - 1
            for name in ("custody.csv", "deaths.csv")
        )
        with nodes(root):
            times = []
            for i in range(args.repeat):
                seconds = round_command(root, root / "rounds" / f"r{i}")
                times.append(seconds)
                rate = records / seconds / 1e6
                print(f"round {i + 1}: {seconds:.2f} s wall, {rate:.2f} M records/s")
            if args.phases:
                phases = round_phases(root, root / "rounds" / "phases")
                for name, seconds, cpu in phases:
                    print(f"  {name:12s} {seconds:6.2f} s   (cpu {cpu:5.2f} s)")
        out = root / "rounds" / "r0"
        for name in ("report.html", "decisions.json", "decisions.xlsx", "evidence.csv"):
            if (out / name).exists():
                print(f"{name}: {(out / name).stat().st_size:,} bytes")
        if not times:
            return 0
        best = min(times)
        print(
            f"best of {len(times)}: {best:.2f} s, {records:,} records, "
            f"{records / best / 1e6:.2f} M records/s"
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
