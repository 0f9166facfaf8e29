"""Free text that crosses to another member's terminal: dispute reasons and notes.

Two rules, each in one place. Text we accept from our own user (a caseworker's
reason, an operator's note) is refused when it holds a control or format
character (:func:`control_character`): the other party prints it, and an escape
sequence or a bidirectional override (U+202E) would rewrite their screen or hide
what the text says. Text we print that came from the other party is never
trusted, whatever its side checked: :func:`printable` replaces each such
character with U+FFFD, so one line stays one line with visible damage.
"""

from __future__ import annotations

import unicodedata

__all__ = ["REPLACEMENT", "control_character", "printable"]

#: what :func:`printable` puts in place of a control or format character
REPLACEMENT = "\ufffd"
# Cc: C0/C1 controls (ESC, BEL, CR, …); Cf: format (bidi overrides, zero-width);
# Cs: lone surrogates (undecodable bytes of argv); Zl/Zp: line/paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE


def control_character(text: str) -> str | None:
    """The first control or format character of ``text`` as ``U+001B``, or ``None``.

    Callers fold whitespace first (``" ".join(text.split())``), so a newline or a tab
    becomes a space; what is left of these characters has no place in one line of
    text. The code point is named, never the text around it.
    """
    for char in text:
        if _unsafe(char):
            return f"U+{ord(char):04X}"
    return None


def printable(text: str) -> str:
    """``text`` from another party, fit for our terminal: every control or format
    character (tabs and newlines too, which would break a tab-separated line)
    replaced with U+FFFD."""
    if not any(_unsafe(char) for char in text):
        return text
    return "".join(REPLACEMENT if _unsafe(char) else char for char in text)
