"""What ``node.toml`` and ``coordinator.toml`` share: reading, models, one-line errors.

Both files are read the same way (docs/node.md, docs/coordinator.md):

1. :func:`read_toml`: the file as UTF-8 TOML, or one :class:`psi.errors.ConfigError`
   line for a missing, unreadable, non-UTF-8 or non-TOML file;
2. a :class:`Strict` pydantic model validates it with ``context={"base": folder}``,
   so an unknown key is an error and :func:`resolve_path` resolves relative paths
   against the config file's folder;
3. :func:`one_line` turns every validation problem into one line, unknown keys
   first, a misspelt key naming the key it probably meant.

The two files word their problems slightly differently (a node quotes the key
path, the coordinator does not); each wording is a :class:`Wording` value, so the
mechanism is written once and every message stays as documented.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from psi.errors import ConfigError

__all__ = [
    "COORDINATOR_WORDING",
    "DISPLAY_NAME_MAX",
    "NODE_WORDING",
    "Strict",
    "Wording",
    "display_name_problem",
    "env_passphrase",
    "key_path",
    "one_line",
    "read_toml",
    "resolve_path",
]


#: the longest display name (a department's full name fits easily)
DISPLAY_NAME_MAX = 40
_DIGIT_RUN = re.compile(r"\d{6}")


def env_passphrase(variable: str | None, key: str) -> bytes | None:
    """The keys' passphrase from environment variable ``variable`` (``None``: not encrypted).

    Raises:
        ConfigError: the variable is not set (any more); ``key`` names the setting.
    """
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise ConfigError(f"{key}: environment variable {variable} is not set")
    return value.encode()


def display_name_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a display name (already trimmed), or None.

    A display name (node.toml's ``display_name``, a row of names.csv) is shown in
    reasons and reports: 1-40 printable characters without a run of 6 or more
    digits, which could be (or look like) an identity number.
    """
    if not text:
        return "empty; remove the key or give the name people know"
    if len(text) > DISPLAY_NAME_MAX:
        return f"{len(text)} characters; at most {DISPLAY_NAME_MAX}"
    if not text.isprintable():
        return "control characters are not allowed"
    if _DIGIT_RUN.search(text):
        return "6 or more digits in a row are not allowed (they look like an ID)"
    return None


class Strict(BaseModel):
    """A config table: unknown keys are errors, values frozen, strings trimmed.

    A number must be a TOML number and a flag a TOML boolean: pydantic would
    take ``chunk_items = true`` as 1 and ``workers = "2"`` as 2, silently.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _toml_types(cls, value: object, info: ValidationInfo) -> object:
        if info.field_name is None:
            return value
        kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
        if kinds is None:
            return value
        if isinstance(value, bool) and bool not in kinds:
            raise ValueError(f"a {_KIND_NAMES[kinds]} is expected, not true or false")
        if isinstance(value, str) and str not in kinds:
            raise ValueError(f"a {_KIND_NAMES[kinds]} is expected, not a quoted string")
        if not isinstance(value, bool) and isinstance(value, int | float) and bool in kinds:
            raise ValueError("true or false is expected, not a number")
        return value


_KIND_NAMES: dict[frozenset[type], str] = {
    frozenset({int}): "whole number",
    frozenset({float}): "number",
    frozenset({int, float}): "number",
    frozenset({bool}): "boolean",
}


def _scalar_kinds(annotation: object) -> frozenset[type] | None:
    """The TOML scalar a field takes (int, float or bool, ``None`` allowed beside it), or
    ``None`` for any other field (strings, paths, choices, tables: left to pydantic)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in _UNIONS else ()
    members = {a for a in args if a is not type(None)} if args else {annotation}
    while any(typing.get_origin(m) is typing.Annotated for m in members):
        members = {
            typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m
            for m in members
        }
    kinds = frozenset(members)
    return kinds if kinds in _KIND_NAMES else None


_UNIONS = (typing.Union, types.UnionType)


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """``value`` with ``~`` expanded, relative to the ``base`` folder of the context."""
    ctx = info.context
    base = ctx.get("base") if isinstance(ctx, dict) else None
    value = value.expanduser()
    if isinstance(base, Path) and not value.is_absolute():
        value = base / value
    return value


@dataclass(frozen=True)
class Wording:
    """How one config file words its problems (the messages each file's docs show)."""

    #: the message for a file that does not exist
    not_found: str
    #: how ``not valid TOML`` is joined to the parser's message ("({})" or ": {}")
    toml_error: str
    #: the text encoding ("utf-8-sig" also accepts a byte order mark)
    encoding: str
    #: key paths quoted as Python literals ('node.lisen') or written as they are
    quote: bool
    #: the word before a key path that has a bad value ("key " or "")
    value_prefix: str
    #: what an empty key path is called (None: no location is shown)
    top_level: str | None
    #: pydantic's prefixes removed from a validator's message
    strip: tuple[str, ...]
    #: location parts that are pydantic's, not the file's (startswith match)
    hidden: tuple[str, ...]

    def key(self, path: str) -> str:
        """A key path as this file's messages show it."""
        return repr(path) if self.quote else path


#: node.toml: ``unknown key 'node.lisen' (did you mean 'listen'?)``
NODE_WORDING = Wording(
    not_found="file not found",
    toml_error="not valid TOML ({})",
    encoding="utf-8",
    quote=True,
    value_prefix="",
    top_level=None,
    strip=("Value error, ", "Assertion failed, "),
    hidden=("__root__",),
)
#: coordinator.toml: ``unknown key nodes[0].adress (did you mean address?)``
COORDINATOR_WORDING = Wording(
    not_found="configuration file not found",
    toml_error="not valid TOML: {}",
    encoding="utf-8-sig",
    quote=False,
    value_prefix="key ",
    top_level="(top level)",
    strip=("Value error, ",),
    hidden=("function-",),
)


def read_toml(path: Path, wording: Wording) -> dict[str, Any]:
    """The TOML document in ``path``.

    Raises:
        ConfigError: the file is missing or unreadable, not text in the wording's
            encoding, or not TOML; one line starting with the path.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {wording.not_found}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return tomllib.loads(raw.decode(wording.encoding))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {wording.toml_error.format(exc)}") from None


def key_path(loc: tuple[int | str, ...]) -> str:
    """``('match_sets', 0, 'allow')`` as ``match_sets[0].allow``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _visible(loc: tuple[int | str, ...], wording: Wording) -> tuple[int | str, ...]:
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith(wording.hidden)))


def _describe(err: Any, loc: tuple[int | str, ...], wording: Wording) -> str:
    where = key_path(loc) or (wording.top_level or "")
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {wording.key(where)}"
    if kind == "missing":
        return f"missing key {wording.key(where)}"
    msg = str(err["msg"])
    for prefix in wording.strip:
        msg = msg.removeprefix(prefix)
    if not loc:
        return msg
    return f"{wording.value_prefix}{where}: {msg}"


def one_line(exc: ValidationError, wording: Wording) -> str:
    """Every problem of ``exc`` on one line, joined by ``; ``, unknown keys first.

    A misspelt key also shows up as a missing one: the unknown key is named
    first, with the missing key it probably meant, so neither hides the other.
    """
    errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    missing: dict[tuple[int | str, ...], list[str]] = {}
    for err in errors:
        loc = _visible(tuple(err["loc"]), wording)
        if err["type"] == "missing" and loc and isinstance(loc[-1], str):
            missing.setdefault(loc[:-1], []).append(loc[-1])
    shown: list[str] = []
    for err in errors:
        loc = _visible(tuple(err["loc"]), wording)
        text = _describe(err, loc, wording)
        if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            near = difflib.get_close_matches(loc[-1], missing.get(loc[:-1], []), n=1)
            if near:
                text += f" (did you mean {wording.key(near[0])}?)"
        if text not in shown:
            shown.append(text)
    return "; ".join(shown)
