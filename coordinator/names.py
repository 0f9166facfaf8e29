"""Display names: the names people know the departments and datasets by.

A node announces ``display_name`` of its ``[node]`` and of each match set
(node.toml) in its capabilities; ``xmatch rules evaluate`` reads them from a
``--names`` CSV instead (docs/formats.md, "names.csv"). Text written for people
(Chinese reasons, the report, the spreadsheet) uses them; machine-readable
fields (evidence.csv ``source``, decisions.json lists, logs, the state) keep
``node/set``.

A display name comes from a node, so it is text we do not control: it is
trimmed, limited to 40 printable characters and refused when it holds a
digit run that could be an identity number (:func:`clean_display_name`). A
refused or missing name falls back to the id.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from audit.format import looks_like_identity_number
from coordinator.records import write_atomically
from psi.errors import InputError
from runtime.config import DISPLAY_NAME_MAX, display_name_problem

#: how a Chinese text joins a department and its dataset: 司法局·服刑在押人员
JOIN = "·"
NAMES_COLUMNS = ("source", "display_name")


def clean_display_name(text: str) -> str | None:
    """``text`` as a display name, or None when it is empty or unsafe to show.

    Unsafe: longer than 40 characters, a control character, or 6 or more digits
    in a row (it could be an identity number).
    """
    value = " ".join(text.split())
    if display_name_problem(value) is not None or looks_like_identity_number(value):
        return None
    return value


@dataclass
class SourceNames:
    """Display names of departments (``node``) and match sets (``node/set``)."""

    nodes: dict[str, str] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)

    def add_node(self, node: str, display_name: str) -> None:
        """Record a department's display name (ignored when empty or unsafe)."""
        cleaned = clean_display_name(display_name)
        if cleaned is not None:
            self.nodes[node] = cleaned

    def add_set(self, source: str, display_name: str) -> None:
        """Record a match set's display name (``source`` = ``node/set``)."""
        cleaned = clean_display_name(display_name)
        if cleaned is not None:
            self.sets[source] = cleaned

    def node(self, node: str) -> str:
        """The department as people know it, else its id."""
        return self.nodes.get(node, node)

    def label(self, source: str) -> str:
        """``node/set`` as people know it: 司法局·服刑在押人员; without names, ``node/set``."""
        node, _, match_set = source.partition("/")
        shown_node = self.nodes.get(node)
        shown_set = self.sets.get(source)
        if shown_node is None and shown_set is None:
            return source
        return f"{shown_node or node}{JOIN}{shown_set or match_set}"

    def labels(self, sources: Iterable[str]) -> dict[str, str]:
        """``node/set`` -> :meth:`label`, for those of ``sources`` that have a name."""
        found = {source: self.label(source) for source in sorted(set(sources))}
        return {source: shown for source, shown in found.items() if shown != source}

    def rows(self) -> list[tuple[str, str]]:
        """The names as ``(source, display_name)`` rows: departments, then sets."""
        return [*sorted(self.nodes.items()), *sorted(self.sets.items())]


def read_names(path: Path) -> SourceNames:
    """Read a names.csv (``source,display_name``; ``source`` a node or ``node/set``).

    UTF-8 with or without BOM, or GB18030.

    Raises:
        InputError: the file cannot be read, lacks a column, or has a bad row
            (the message names the file and line).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read names file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("gb18030")
        except UnicodeDecodeError:
            raise InputError(f"{path}: neither UTF-8 nor GB18030") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != list(NAMES_COLUMNS):
        raise InputError(f"{path}:1: expected the header source,display_name")
    names = SourceNames()
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise InputError(f"{path}:{line}: expected two cells, source and display_name")
        source, shown = row[0].strip(), row[1]
        node, slash, match_set = source.partition("/")
        if not node or (slash and (not match_set or "/" in match_set)):
            raise InputError(f"{path}:{line}: column source: expected NODE or NODE/SET")
        if clean_display_name(shown) is None:
            raise InputError(
                f"{path}:{line}: column display_name: empty, over {DISPLAY_NAME_MAX} "
                "characters, or 6 or more digits in a row"
            )
        if slash:
            names.add_set(source, shown)
        else:
            names.add_node(node, shown)
    return names


def write_names(path: Path, names: SourceNames) -> None:
    """Write ``names`` as names.csv, atomically (what ``rules evaluate --names`` reads)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(NAMES_COLUMNS)
    writer.writerows(names.rows())
    text = buffer.getvalue()
    write_atomically(path, lambda f: f.write(text))


def names_from(entries: Mapping[str, str]) -> SourceNames:
    """SourceNames from ``{"justice": "司法局", "justice/custody": "服刑在押人员"}``."""
    names = SourceNames()
    for source, shown in entries.items():
        if "/" in source:
            names.add_set(source, shown)
        else:
            names.add_node(source, shown)
    return names


__all__ = [
    "DISPLAY_NAME_MAX",
    "SourceNames",
    "clean_display_name",
    "names_from",
    "read_names",
    "write_names",
]
