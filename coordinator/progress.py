"""The round's progress display on a terminal: phases, one bar per sub-round."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

ProgressFn = Callable[[int], None]


#: The phases the progress display names, in order (docs/coordinator.md, "Progress").
#: ``blind``, ``exchange`` and ``intersect`` are per sub-round (coordinator.client.PhaseFn).
PHASES = ("load", "blind", "exchange", "intersect", "rules", "report", "spreadsheet")


class Progress:
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
    def running(self) -> Iterator[Progress]:
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
