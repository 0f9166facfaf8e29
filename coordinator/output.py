"""A round's output folder, written atomically: a staging sibling renamed into place."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from coordinator.decisions import RoundDecisions, decisions_text
from coordinator.records import (
    EvidenceRow,
    write_evidence,
)
from coordinator.report import Provenance
from coordinator.spreadsheet import write_outputs_for_people
from psi.errors import InputError
from runtime.files import private_folders
from runtime.signals import ignore_sigint, sigint_blocked

ProgressFn = Callable[[int], None]


def check_output_folder(out: Path) -> None:
    """Refuse an output folder that exists and is not empty (never overwritten).

    Raises:
        InputError: ``out`` is a file, or a folder with something in it, or it lies
            under a file or a folder we cannot write in.
    """
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise InputError(f"{out}: exists and is not a folder; choose another --out")
        if any(out.iterdir()):
            raise InputError(
                f"{out}: folder exists and is not empty; choose a new --out "
                "(a round never overwrites an earlier round's output)"
            )
        return
    # the folder is made when the round is written: its nearest existing parent must be
    # a folder we can write in, or the round would run and then fail (node budgets spent)
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{out}: {parent} is not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{out}: {parent} is not writable; choose another --out")


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

    The child sees this process's memory as it was at the fork (the report's
    and the spreadsheet's writers find the round's reasons rendered; the
    evidence writer needs none); the processes share nothing else. The child
    never returns: it ends with ``os._exit`` (no buffer of the parent's, such
    as the protocol log, is flushed twice) after writing one line about a
    failure into a pipe. ``what`` names the file in that line.
    Without ``os.fork`` the work runs in this process, at :meth:`wait`.
    """

    def __init__(self, work: Callable[[], None], what: str) -> None:
        self._what = what
        self._work: Callable[[], None] | None = work
        self._pid = 0
        self._read = -1
        if not hasattr(os, "fork"):
            return
        read, write = os.pipe()
        # the child starts with SIGINT blocked and ignores it (its parent stops it); a
        # Ctrl-C during the fork reaches the parent after it, once the child is recorded
        try:
            with sigint_blocked():
                pid = os.fork()
                if pid == 0:
                    _child(work, read, write)  # never returns
                os.close(write)
                self._work, self._pid, self._read = None, pid, read
        except BaseException:  # that Ctrl-C, as the block ends: no child left running
            self.stop()
            raise

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


def _child(work: Callable[[], None], read: int, write: int) -> NoReturn:
    """A forked writer: ``work``, then out, with one line about a failure in ``write``."""
    code = 0
    try:
        ignore_sigint()  # forked in sigint_blocked: the parent stops us
        os.close(read)
        # a collection would walk (and so copy) every page shared with the parent;
        # the child is short-lived and reference counting frees its garbage
        gc.disable()
        work()
    except BaseException as exc:  # one line for the parent, then out
        code = 1
        line = f"{type(exc).__name__}: {exc}"[:500]
        os.write(write, line.encode("utf-8", "replace"))
    finally:
        os._exit(code)


def _write_text(path: Path, text: str) -> None:
    # names children by identity number: mode 0600, as evidence.csv and the xlsx
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


class OutputFolder:
    """A round's output folder in the making: a staging sibling of ``out``.

    Files are written into it by this process (:meth:`write_text`) or by forked
    children at the same time (:meth:`beside`); :meth:`commit` waits for the
    children and renames the folder into place in one step. Leaving the
    ``with`` block by an exception kills the children and removes the staging
    folder, so that nothing half-written is ever found under ``out``.

    The folder can be opened before the rules run, so that evidence.csv (which
    does not depend on the decisions) is written on the other core meanwhile.
    """

    def __init__(
        self, out: Path, round_id: str, *, on_commit: Callable[[], None] | None = None
    ) -> None:
        self.out = out
        #: called once the children are done, just before the rename (a CommitGuard's hold)
        self._on_commit = on_commit
        parent = out.parent
        private_folders(parent)  # new folders: ours only
        self.staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out, round_id), dir=parent))
        self._children: list[_Beside] = []
        self._names: set[str] = set()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.abandon()

    def has(self, name: str) -> bool:
        """Whether ``name`` is written or being written."""
        return name in self._names

    def beside(self, name: str, work: Callable[[Path], None]) -> None:
        """``work(path of name)`` in a forked child; its failure is one line naming ``name``."""
        self._names.add(name)
        path = self.staging / name
        self._children.append(_Beside(lambda: work(path), name))

    def write_text(self, name: str, text: str) -> None:
        """``name``, written by this process (mode 0600, synced)."""
        self._names.add(name)
        _write_text(self.staging / name, text)

    def start_evidence(self, evidence: list[EvidenceRow]) -> None:
        """evidence.csv, in a child, unless it was started already."""
        if not self.has("evidence.csv"):
            self.beside("evidence.csv", lambda path: write_evidence(path, evidence))

    def commit(self, waiting: Callable[[], None] | None = None) -> None:
        """Wait for the children (``waiting`` is called first, if any are left), then
        rename the folder into place.

        Raises:
            OSError: a child failed (its line), or the folder cannot be renamed.
            InputError: someone wrote into ``out`` meanwhile.
        """
        if self._children and waiting is not None:
            waiting()
        for child in self._children:
            child.wait()
        self._children = []
        if self._on_commit is not None:
            self._on_commit()
        check_output_folder(self.out)  # again: someone may have written there meanwhile
        if self.out.is_dir():
            self.out.rmdir()
        os.rename(self.staging, self.out)
        fd = os.open(self.out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abandon(self) -> None:
        """Stop every child and remove the staging folder (this round failed)."""
        for child in self._children:
            child.stop()
        self._children = []
        shutil.rmtree(self.staging, ignore_errors=True)


def write_output(
    out: Path,
    *,
    round_id: str,
    evidence: list[EvidenceRow],
    document: str | dict[str, object] | Callable[[], str | dict[str, object]],
    report: str | Callable[[], str],
    extra: Callable[[Path], None] | None = None,
    waiting: Callable[[], None] | None = None,
    folder: OutputFolder | None = None,
) -> None:
    """Write the three files into a staging folder (:class:`OutputFolder`), then rename it
    to ``out``.

    ``extra`` (the spreadsheet and names.csv), a ``report`` given as a function
    and evidence.csv run in forked child processes at the same time
    (:class:`_Beside`), while this process writes decisions.json; ``waiting`` is
    called when only the children are left (the progress display's last phase).
    ``document`` (the decisions.json text, or its document) may be given as a
    function, to be built while they work. ``folder``: one opened earlier (its
    evidence.csv may be under way already); by default a new one.
    """
    with folder if folder is not None else OutputFolder(out, round_id) as opened:
        opened.start_evidence(evidence)
        if callable(report):
            made = report
            opened.beside("report.html", lambda path: _write_text(path, made()))
        else:
            opened.write_text("report.html", report)
        if extra is not None:
            work = extra
            opened.beside("decisions.xlsx", lambda path: work(path.parent))
        if callable(document):
            document = document()
        text = document if isinstance(document, str) else decisions_text(document)
        opened.write_text("decisions.json", text)  # a decision a line
        opened.commit(waiting)
