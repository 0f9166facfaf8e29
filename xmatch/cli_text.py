"""Help text and argument types shared by the command-line modules."""

from __future__ import annotations

import argparse
import re

_ROUND_ID = re.compile(r"[0-9a-f]{32}")


def examples(*lines: str) -> str:
    """A subcommand's epilog: its examples, shown as written (RawDescriptionHelpFormatter)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def round_id(text: str) -> str:
    """A ``--round`` argument: 32 hex digits (a round's id); anything else is a usage error.

    The value is not echoed: it could be anything pasted there, an identity number too.
    """
    value = text.strip().lower()
    if _ROUND_ID.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(
            "expected a round id of 32 hex digits, as round run prints it"
        )
    return value
