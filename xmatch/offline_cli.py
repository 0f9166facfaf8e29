"""The offline subcommands: ``node answer``, ``round import``, ``round close`` (docs/offline.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_node_answer", "add_round_offline"]


def _cmd_node_answer(args: argparse.Namespace) -> int:
    from nodes.answer import answer_command

    return answer_command(config=args.config, request=args.request, out=args.out)


def _cmd_round_import(args: argparse.Namespace) -> int:
    from coordinator.offline_import import import_command

    return import_command(config=args.config, response=args.response)


def _cmd_round_close(args: argparse.Namespace) -> int:
    from coordinator.offline_import import close_command

    return close_command(config=args.config, round_id=args.round)


def add_node_answer(node: Any) -> None:
    """``xmatch node answer`` under the ``node`` subparsers."""
    answer = node.add_parser(
        "answer",
        help="answer a sealed offline request inside the department (no network)",
        description=(
            "Opens a sealed request that 'xmatch round run' wrote for this node, checks its "
            "sender, recipient, expiry and that it was not answered before, authorizes it "
            "exactly as an online round, answers it, and writes a sealed response. "
            "docs/offline.md says what to carry where."
        ),
    )
    answer.add_argument("--config", type=Path, required=True, help="node.toml")
    answer.add_argument("--request", type=Path, required=True, help="the NODE.request file")
    answer.add_argument("--out", type=Path, required=True, help="the sealed response to write")
    answer.set_defaults(func=_cmd_node_answer)


def add_round_offline(round_: Any) -> None:
    """``xmatch round import`` and ``xmatch round close`` under the ``round`` subparsers."""
    imp = round_.add_parser(
        "import",
        help="complete the offline sub-rounds that a sealed response answers",
        description=(
            "Verifies a sealed response and completes its sub-rounds; when the last one of "
            "the round arrives, writes decisions.json, evidence.csv, the spreadsheet and the "
            "report to the round's output folder. Exit codes as 'round run' (4: still waiting)."
        ),
    )
    imp.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    imp.add_argument("--response", type=Path, required=True, help="the NODE.response file")
    imp.set_defaults(func=_cmd_round_import)
    close = round_.add_parser(
        "close",
        help="stop waiting for offline responses: missing ones count as failed sources",
        description=(
            "Gives up waiting: sub-rounds without a response count as failed sources "
            "(REVIEW, never EXIT), and the round's outputs are written."
        ),
    )
    close.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    close.add_argument("--round", required=True, help="the round id (32 hex digits)")
    close.set_defaults(func=_cmd_round_close)
