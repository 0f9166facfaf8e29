"""What ``node.toml`` and ``coordinator.toml`` share: reading, models, one-line errors.

Both files are read the same way (docs/node.md, docs/coordinator.md):

1. :func:`read_toml`: the file as UTF-8 TOML (a leading byte order mark, as Windows
   Notepad writes, is dropped), read once, so ``/dev/stdin`` or a FIFO works, with
   the SHA-256 of those bytes for the ``config_loaded`` log entry; or one
   :class:`psi.errors.ConfigError` line for a missing, unreadable, non-UTF-8 or
   non-TOML file;
2. a :class:`Strict` pydantic model validates it with ``context={"base": folder}``,
   so an unknown key is an error and :func:`resolve_path` resolves relative paths
   against the config file's folder;
3. :func:`one_line` turns every validation problem into one line, unknown keys
   first, a misspelt key naming the key it probably meant.

A message names the key, never the value typed there: a value may be an identity
number or a credential (a DSN with its password in the wrong key). The exceptions
are a misspelt choice of a closed set (:func:`shown_choice`: only a short token
without a digit run) and file paths (:func:`shown_path`).

The two files word their problems slightly differently (a node quotes the key
path, the coordinator does not); each wording is a :class:`Wording` value, so the
mechanism is written once and every message stays as documented.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from psi.context import context_name_problem
from psi.errors import ConfigError

__all__ = [
    "COORDINATOR_WORDING",
    "DISPLAY_NAME_MAX",
    "NODE_WORDING",
    "Strict",
    "TomlFile",
    "Wording",
    "check_context_name",
    "config_folder",
    "display_name_problem",
    "env_passphrase",
    "key_path",
    "one_line",
    "parse_host_port",
    "read_toml",
    "resolve_path",
    "shown_choice",
    "shown_path",
    "withhold_numbers",
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
        # not the name: a passphrase typed here by mistake would be printed
        raise ConfigError(f"{key}: the environment variable it names is not set")
    return value.encode()


def check_context_name(value: str) -> str:
    """``value`` if it can be a round context's purpose, party or match set name.

    Checked when the file is loaded, so a bad name is a configuration error
    naming the key, not a failure once the round builds its context.

    Raises:
        ValueError: the rule it breaks (never the value: it may be an identity number).
    """
    problem = context_name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


_TOKEN = re.compile(r"[A-Za-z0-9_.:+-]{1,40}")
_LONG_DIGITS = re.compile(r"\d{6}")
_ID_DIGITS = re.compile(r"\d{15}")
_NOT_DIGITS = re.compile(r"\D+")


def shown_choice(value: str) -> str:
    """A misspelt choice of a closed set (a protocol, a circumstance) as a message shows it.

    Quoted when it is a short token without 6 digits in a row (``'foo'`` helps the
    reader); anything else is withheld, since it could be an identity number or a
    secret typed into the wrong key.
    """
    if _TOKEN.fullmatch(value) and not _LONG_DIGITS.search(value):
        return repr(value)
    return "(value not shown)"


#: a token of a message: quoted ('...' or "..."), or a run without white space
_MESSAGE_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|[^\s'\"]+")


def withhold_numbers(message: str) -> str:
    """``message`` with every token that holds 6 digits in a row withheld.

    For text that quotes what a user typed or stored (argparse's ``invalid choice:
    '…'``, a database's syntax error quoting a literal): such a token could be an
    identity number, so it becomes ``(value not shown)``; the rest of the message
    (the option, the reason) stays.
    """

    def shown(match: re.Match[str]) -> str:
        token = match.group(0)
        return "(value not shown)" if _LONG_DIGITS.search(token) else token

    return _MESSAGE_TOKEN.sub(shown, message)


def shown_path(text: str) -> str:
    """A file path as a message shows it: as it is (where to look), unless it holds
    what could be an identity number (15 digits once separators are dropped)."""
    if _ID_DIGITS.search(text) or _ID_DIGITS.search(_NOT_DIGITS.sub("", text)):
        return "(path not shown: it holds a long number)"
    return text


_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def parse_host_port(text: str) -> tuple[str, int]:
    """Split an address ``host:port`` (IPv6 in brackets: ``[::1]:port``).

    The host is a host name, an IPv4 address or a bracketed IPv6 address, the
    port 1..65535. A bare IPv6 address (``::1:47101``) is refused: its last group
    cannot be told from a port.

    Raises:
        ValueError: what is wrong, never the text itself.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("not a host:port address with a port in 1..65535")
    if host.startswith("["):
        try:
            if not host.endswith("]"):
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError("not a valid IPv6 address in brackets ([::1]:port)") from None
    elif ":" in host:
        raise ValueError("an IPv6 address needs brackets: [address]:port")
    elif _HOST.fullmatch(host) is None:
        raise ValueError("not a valid host name or IPv4 address")
    elif host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError("not a valid IPv4 address") from None
    return host, int(port)


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
    quote=False,
    value_prefix="key ",
    top_level="(top level)",
    strip=("Value error, ",),
    hidden=("function-",),
)


@dataclass(frozen=True)
class TomlFile:
    """A config file as read: its TOML document and the SHA-256 of its bytes."""

    data: dict[str, Any]
    #: hex SHA-256 of the bytes parsed (logged as ``config_sha256``)
    sha256: str


def read_toml(path: Path, wording: Wording) -> TomlFile:
    """The TOML document in ``path``, read once.

    Once: ``/dev/stdin``, a pipe or a FIFO can be read only once, so nothing
    opens the file again (the log's ``config_sha256`` comes from these bytes).
    A leading UTF-8 byte order mark (Windows Notepad) is dropped.

    Raises:
        ConfigError: the file is missing or unreadable, not UTF-8 text, or not
            TOML; one line starting with the path.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {wording.not_found}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {wording.toml_error.format(exc)}") from None
    return TomlFile(data=data, sha256=hashlib.sha256(raw).hexdigest())


def config_folder(path: Path) -> Path:
    """The folder relative paths in config file ``path`` resolve against.

    The file's own folder; for a pipe (``--config /dev/stdin`` fed by ``cat``),
    which has no folder, the current one.
    """
    resolved = path.resolve()
    return resolved.parent if resolved.exists() else Path.cwd()


def key_path(loc: tuple[int | str, ...]) -> str:
    """``('match_sets', 0, 'allow')`` as ``match_sets[0].allow``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _is_tag(part: int | str, wording: Wording) -> bool:
    """A location part that is pydantic's, not the file's: a union member's tag
    (``lax-or-strict[…]``, ``function-after[…]``) or the wording's hidden parts."""
    return isinstance(part, str) and ("[" in part or part.startswith(wording.hidden))


def _visible(err: Any, wording: Wording) -> tuple[int | str, ...]:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden" and loc:
        # the last part is the unknown key itself, whatever it looks like
        return tuple(p for p in loc[:-1] if not _is_tag(p, wording)) + loc[-1:]
    return tuple(p for p in loc if not _is_tag(p, wording))


#: what a TOML value of the wrong type should have been, by pydantic's error type
_EXPECTED = {
    "string_type": "a string",
    "path_type": "a string (a path)",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dataclass_type": "a table",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def _given(value: object) -> str:
    """What a TOML value is, by its type only (the value itself is never shown)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number with a fraction" if not value.is_integer() else "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, _dt.date | _dt.time):
        return "a date or time"
    return "another kind of value"


def _where(loc: tuple[int | str, ...], wording: Wording) -> str:
    return key_path(loc) or (wording.top_level or "")


def _describe(err: Any, loc: tuple[int | str, ...], wording: Wording) -> str:
    where = _where(loc, wording)
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


def _wrong_type(expected: list[str], err: Any, loc: tuple[int | str, ...], wording: Wording) -> str:
    """One wrong-type problem: what the key takes (every member of a union) and what
    kind of value it has, e.g. ``match_sets[0].source: a string (a path) or a table
    is expected, not a whole number``."""
    text = f"{' or '.join(expected)} is expected, not {_given(err.get('input'))}"
    return f"{wording.value_prefix}{_where(loc, wording)}: {text}" if loc else text


def one_line(exc: ValidationError, wording: Wording) -> str:
    """Every problem of ``exc`` on one line, joined by ``; ``, unknown keys first.

    A misspelt key also shows up as a missing one: the unknown key is named
    first, with the missing key it probably meant, so neither hides the other.
    A value of the wrong type is one problem naming what the key takes, however
    many union members pydantic tried. No problem shows the value itself.
    """
    errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    missing: dict[tuple[int | str, ...], list[str]] = {}
    for err in errors:
        loc = _visible(err, wording)
        if err["type"] == "missing" and loc and isinstance(loc[-1], str):
            missing.setdefault(loc[:-1], []).append(loc[-1])
    # wrong types at one key (a union: "a path" and "a table") make one problem
    expected: dict[tuple[int | str, ...], list[str]] = {}
    for err in errors:
        if err["type"] in _EXPECTED:
            kinds = expected.setdefault(_visible(err, wording), [])
            if _EXPECTED[err["type"]] not in kinds:
                kinds.append(_EXPECTED[err["type"]])
    shown: list[str] = []
    for err in errors:
        loc = _visible(err, wording)
        if err["type"] in _EXPECTED:
            text = _wrong_type(expected[loc], err, loc, wording)
        else:
            text = _describe(err, loc, wording)
        if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            near = difflib.get_close_matches(loc[-1], missing.get(loc[:-1], []), n=1)
            if near:
                text += f" (did you mean {wording.key(near[0])}?)"
        if text not in shown:
            shown.append(text)
    return "; ".join(shown)
