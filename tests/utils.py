"""Shared test helpers: the one opener for files under tests/vectors/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

VECTORS = Path(__file__).parent / "vectors"
T = TypeVar("T")


def load_vectors(path: str | Path, parser: Callable[[str], T]) -> T:
    """Parse ``tests/vectors/<path>`` (UTF-8 text) with ``parser``."""
    return parser((VECTORS / path).read_text(encoding="utf-8"))


def parse_key_value_blocks(text: str) -> list[dict[str, str]]:
    """``KEY = VALUE`` blocks separated by blank lines; ``#`` lines are comments."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if line.startswith("#"):
            continue
        if not line:
            if current:
                blocks.append(current)
                current = {}
            continue
        key, _, value = line.partition("=")
        current[key.strip()] = value.strip()
    return blocks


def parse_rfc_wrapped(text: str) -> list[dict[str, str]]:
    """RFC-style ``name = value`` records whose long values wrap onto indented
    lines (RFC 9380 appendices). A record starts at each ``msg`` line."""
    records: list[dict[str, str]] = []
    header: dict[str, str] = {}
    current: dict[str, str] | None = None
    key = ""
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if raw.startswith(" "):
            target = current if current is not None else header
            target[key] += raw.strip()
            continue
        key, _, value = raw.partition("=")
        key, value = key.strip(), value.strip()
        if key == "msg":
            current = {}
            records.append(current)
        (current if current is not None else header)[key] = value
    return [{**header, **r} for r in records]


def parse_labelled_hex(text: str) -> dict[str, str]:
    """RFC 7748 layout: a label line ending in ':' followed by a hex line."""
    out: dict[str, str] = {}
    label = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith(":"):
            label = line[:-1]
        elif label is not None:
            out[label] = line
            label = None
    return out
