"""Help text shared by the command-line modules."""

from __future__ import annotations


def examples(*lines: str) -> str:
    """A subcommand's epilog: its examples, shown as written (RawDescriptionHelpFormatter)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)
