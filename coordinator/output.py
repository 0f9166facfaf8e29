"""A round's output folder, written atomically: a staging sibling renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from coordinator.decisions import RoundDecisions
from coordinator.evaluate import decisions_text
from coordinator.progress import Progress
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


def people_outputs(
    staging: Path, decisions: RoundDecisions, provenance: Provenance, display: Progress
) -> None:
    """The spreadsheet and names.csv, in their own progress phase."""
    display.phase("spreadsheet")
    write_outputs_for_people(staging, decisions, provenance)


def write_output(
    out: Path,
    *,
    round_id: str,
    evidence: list[EvidenceRow],
    document: dict[str, object],
    report: str,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write the three files into a temporary sibling folder, then rename it to ``out``."""
    parent = out.parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # new folders: ours only
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out, round_id), dir=parent))
    try:
        write_evidence(staging / "evidence.csv", evidence)
        # both name children by identity number: mode 0600, as evidence.csv and the xlsx
        for name, text in (("decisions.json", decisions_text(document)), ("report.html", report)):
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)  # decisions.json as rules evaluate: one decision per line
                fh.flush()
                os.fsync(fh.fileno())
        if extra is not None:  # decisions.xlsx and names.csv (coordinator.spreadsheet)
            extra(staging)
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
        shutil.rmtree(staging, ignore_errors=True)
        raise
