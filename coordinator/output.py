"""A round's output folder, written atomically: a staging sibling renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from coordinator.decisions import RoundDecisions
from coordinator.evaluate import decisions_text
from coordinator.records import (
    EvidenceRow,
    write_evidence,
)
from coordinator.report import Provenance
from coordinator.spreadsheet import write_outputs_for_people
from psi.errors import InputError

ProgressFn = Callable[[int], None]


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


def people_outputs(staging: Path, decisions: RoundDecisions, provenance: Provenance) -> None:
    """The spreadsheet and names.csv (run beside the other files: :func:`write_output`)."""
    write_outputs_for_people(staging, decisions, provenance)


class _Beside:
    """``work`` in a forked child process while this one writes the other files.

    A round's reasons are rendered before the fork, so the child finds them
    ready; the two processes share nothing else. The child never returns: it
    ends with ``os._exit`` (no buffer of the parent's, such as the protocol log,
    is flushed twice) after writing one line about a failure into a pipe.
    Without ``os.fork`` the work runs in this process, at :meth:`wait`.
    """

    def __init__(self, work: Callable[[], None], what: str = "decisions.xlsx") -> None:
        self._what = what
        self._work: Callable[[], None] | None = work
        self._pid = 0
        self._read = -1
        if not hasattr(os, "fork"):
            return
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.close(read)
                work()
            except BaseException as exc:  # one line for the parent, then out
                code = 1
                line = f"{type(exc).__name__}: {exc}"[:500]
                os.write(write, line.encode("utf-8", "replace"))
            finally:
                os._exit(code)
        os.close(write)
        self._work, self._pid, self._read = None, pid, read

    def wait(self) -> None:
        """Wait for the work to end.

        Raises:
            OSError: it failed (the message is the child's line), or it was killed.
        """
        if self._work is not None:
            work, self._work = self._work, None
            work()
            return
        if not self._pid:
            return
        with os.fdopen(self._read, "rb") as pipe:
            line = pipe.read().decode("utf-8", "replace")
        _, status = os.waitpid(self._pid, 0)
        self._pid = 0
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise OSError(f"{self._what} not written: {line or f'writer ended with {code}'}")

    def stop(self) -> None:
        """End the work unfinished (this process failed): kill and reap the child."""
        self._work = None
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            with contextlib.suppress(OSError):  # closed already if wait() was interrupted
                os.close(self._read)
            self._pid = 0


def _write_text(path: Path, text: str) -> None:
    # names children by identity number: mode 0600, as evidence.csv and the xlsx
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_output(
    out: Path,
    *,
    round_id: str,
    evidence: list[EvidenceRow],
    document: dict[str, object] | Callable[[], dict[str, object]],
    report: str | Callable[[], str],
    extra: Callable[[Path], None] | None = None,
    waiting: Callable[[], None] | None = None,
) -> None:
    """Write the three files into a temporary sibling folder, then rename it to ``out``.

    ``extra`` (the spreadsheet and names.csv) and a ``report`` given as a
    function run in forked child processes at the same time (:class:`_Beside`),
    while this process writes evidence.csv and decisions.json; ``waiting`` is
    called when only the children are left (the progress display's last phase).
    ``document`` may be given as a function, to be built while they work.
    """
    parent = out.parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # new folders: ours only
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out, round_id), dir=parent))
    children: list[_Beside] = []
    try:
        if callable(report):
            made = report
            children.append(
                _Beside(lambda: _write_text(staging / "report.html", made()), "report.html")
            )
        else:
            _write_text(staging / "report.html", report)
        if extra is not None:
            children.append(_Beside(lambda: extra(staging)))
        write_evidence(staging / "evidence.csv", evidence)
        if callable(document):
            document = document()
        _write_text(staging / "decisions.json", decisions_text(document))  # a decision a line
        if children and waiting is not None:
            waiting()
        for child in children:  # decisions.xlsx, names.csv, report.html
            child.wait()
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
        for child in children:
            child.stop()
        shutil.rmtree(staging, ignore_errors=True)
        raise
