"""Exit codes of ``xmatch round run`` and ``xmatch round import``: the one place they live.

A script tells a complete round from a partial one by the code alone
(data-contracts.md, "Command line"; docs/coordinator.md, "Exit codes").
"""

from __future__ import annotations

__all__ = ["COMPLETE", "FAILURE", "INTERRUPTED", "PARTIAL", "USAGE", "WAITING", "round_status"]

#: Every match set answered; decisions are written.
COMPLETE = 0
#: Any other failure (bad roster, unreadable keys, output folder in use, an internal error).
FAILURE = 1
#: A usage or configuration error: bad arguments, coordinator.toml, our own certificate.
USAGE = 2
#: The round completed but some match sets failed or were refused (also when none answered);
#: decisions are written, with REVIEW where evidence is missing.
PARTIAL = 3
#: The round waits for offline responses (``transport = "offline"``; docs/offline.md).
WAITING = 4
#: Stopped by Ctrl-C (SIGINT), the shell's convention 128 + 2.
INTERRUPTED = 130


def round_status(statuses: list[str]) -> int:
    """The exit code of a completed round whose sub-rounds ended with ``statuses``.

    ``"ok"`` is an answered match set; anything else (``failed``, ``refused``)
    makes the round partial. ``"waiting"`` (an offline sub-round) wins over
    both.
    """
    if "waiting" in statuses:
        return WAITING
    if any(status != "ok" for status in statuses):
        return PARTIAL
    return COMPLETE
