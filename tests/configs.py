"""``node.toml`` and ``coordinator.toml`` for tests, built from dicts instead of edited text.

A test states its configuration as data (a dict as :mod:`tomllib` reads it), changes
it with edits that name a key path (``put("node.listen", "…")``,
``rename("node.listen", "lisen")``, ``drop("match_sets[0].id_column")``) and writes it
with :func:`dumps`, a small writer for the subset of TOML the two files use:

- top-level scalars, then each table as ``[name]`` and each list of tables as ``[[name]]``;
- inside a table: strings, integers, floats, booleans, paths (as strings), lists of
  those, and tables as inline tables (``budget = { rounds = 3 }``), lists of tables as
  lists of inline tables (``allow = [{ … }]``).

Every edit refuses a key path that is not there (``KeyError``), so an edit cannot
silently miss the configuration it was meant to change. :func:`dumps` checks its own
output by reading it back with :mod:`tomllib`.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "Edit",
    "Table",
    "apply",
    "drop",
    "dumps",
    "edit_file",
    "entry",
    "get",
    "put",
    "read",
    "rename",
    "write",
]

Table = dict[str, Any]
#: a change to a configuration, in place
Edit = Callable[[Table], None]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    """One TOML value, inline (tables as inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # a JSON string (escapes \", \\ and control characters) is a TOML basic string
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _body(table: Mapping[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in table.items()]


def dumps(doc: Mapping[str, Any]) -> str:
    """``doc`` as TOML text that :func:`tomllib.loads` reads back as ``doc``.

    Raises:
        TypeError: a value has no TOML form here.
        AssertionError: the text does not read back as ``doc`` (a writer bug).
    """
    scalars = {k: v for k, v in doc.items() if not isinstance(v, Mapping) and not _is_tables(v)}
    lines = _body(scalars)
    for name, value in doc.items():
        if isinstance(value, Mapping):
            lines += ["", f"[{_key(name)}]", *_body(value)]
        elif _is_tables(value):
            for table in value:
                lines += ["", f"[[{_key(name)}]]", *_body(table)]
    text = "\n".join(lines).lstrip("\n") + "\n"
    assert tomllib.loads(text) == _plain(doc), text
    return text


def _plain(value: Any) -> Any:
    """``value`` as :mod:`tomllib` would return it (paths as strings, tuples as lists)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def read(path: Path) -> Table:
    """The TOML file at ``path``."""
    return tomllib.loads(path.read_text(encoding="utf-8"))


def write(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``doc`` to ``path`` as TOML; returns ``path``."""
    path.write_text(dumps(doc), encoding="utf-8")
    return path


def _parts(key_path: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for m in _PART.finditer(key_path):
        gap = key_path[pos : m.start()]
        if gap not in ("", "."):
            raise ValueError(f"not a key path: {key_path!r}")
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not parts or pos != len(key_path):
        raise ValueError(f"not a key path: {key_path!r}")
    return parts


def _parent(doc: Table, key_path: str) -> tuple[Any, str | int]:
    """The table or list holding ``key_path``'s last part, and that part."""
    *head, last = _parts(key_path)
    node: Any = doc
    for part in head:
        node = node[part]  # KeyError/IndexError: the path is not in the config
    return node, last


def entry(doc: Mapping[str, Any], tables: str, name: str) -> str:
    """The key path of the entry called ``name`` in ``tables`` (``match_sets[2]``).

    Raises:
        KeyError: no entry, or more than one, has that name.
    """
    found = [i for i, table in enumerate(doc[tables]) if table.get("name") == name]
    if len(found) != 1:
        raise KeyError(f"{len(found)} entries of {tables} are called {name!r}")
    return f"{tables}[{found[0]}]"


def get(doc: Mapping[str, Any], key_path: str) -> Any:
    """The value at ``key_path`` (KeyError/IndexError: not there)."""
    node: Any = doc
    for part in _parts(key_path):
        node = node[part]
    return node


def put(key_path: str, value: Any) -> Edit:
    """Set ``key_path`` (``match_sets[0].allow[0].purposes``) to ``value``.

    The table that holds it must exist; a new key goes at the end of its table.
    """

    def edit(doc: Table) -> None:
        parent, last = _parent(doc, key_path)
        if isinstance(last, int):
            parent[last]  # IndexError: no such entry
        parent[last] = copy.deepcopy(value)  # later edits never reach the caller's value

    return edit


def drop(key_path: str) -> Edit:
    """Remove ``key_path``, which must be there."""

    def edit(doc: Table) -> None:
        parent, last = _parent(doc, key_path)
        del parent[last]

    return edit


def rename(key_path: str, new_name: str) -> Edit:
    """Rename the key at ``key_path`` (as a typo would), keeping its value and position."""

    def edit(doc: Table) -> None:
        parent, last = _parent(doc, key_path)
        assert isinstance(parent, dict) and isinstance(last, str), key_path
        parent[last]  # KeyError: no such key
        items = [(new_name if k == last else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)

    return edit


def apply(doc: Mapping[str, Any], *edits: Edit) -> Table:
    """A deep copy of ``doc`` with ``edits`` applied in order (``doc`` is left as it was)."""
    out: Table = copy.deepcopy(dict(doc))
    for change in edits:
        change(out)
    return out


def edit_file(path: Path, *edits: Edit) -> Path:
    """Read the TOML file at ``path``, apply ``edits`` and write it back; returns ``path``."""
    return write(path, apply(read(path), *edits))
