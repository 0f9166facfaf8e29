"""The offline subcommands: ``node answer``, ``round import``, ``round close`` (docs/offline.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from psi.errors import XmatchError
from xmatch.cli_text import examples, member_name, round_id

__all__ = ["add_keys_issue_seal", "add_node_answer", "add_round_offline"]


def _cmd_node_answer(args: argparse.Namespace) -> int:
    from nodes.answer import answer_command

    return answer_command(config=args.config, request=args.request, out=args.out)


def _cmd_round_import(args: argparse.Namespace) -> int:
    from coordinator.offline_import import import_command

    return import_command(config=args.config, response=args.response)


def _cmd_round_close(args: argparse.Namespace) -> int:
    from coordinator.offline_import import close_command

    return close_command(config=args.config, round_id=args.round)


def _env_passphrase(env: str | None) -> bytes | None:
    if not env:
        return None
    value = os.environ.get(env)
    if value is None:
        raise XmatchError(f"{env}: the environment variable is not set")
    return value.encode()


def _cmd_keys_issue_seal(args: argparse.Namespace) -> int:
    from keys.ca import issue_seal

    ca_pass = _env_passphrase(args.passphrase_env)
    if args.key_passphrase_env:
        new_pass = _env_passphrase(args.key_passphrase_env)
        issue_seal(
            args.dir, name=args.name, role=args.role, passphrase=ca_pass, key_passphrase=new_pass
        )
    else:
        issue_seal(args.dir, name=args.name, role=args.role, passphrase=ca_pass)
    print(f"issued sealing certificate {args.dir / (args.name + '.seal.crt')}")
    return 0


def add_keys_issue_seal(keys: Any) -> None:
    """``xmatch keys issue-seal`` under the ``keys`` subparsers."""
    seal = keys.add_parser(
        "issue-seal",
        epilog=examples(
            "xmatch keys issue-seal --dir pki --name civil-affairs --role coordinator",
            "xmatch keys issue-seal --dir pki --name justice --role node \\",
            "    --passphrase-env CA_PASS --key-passphrase-env JUSTICE_KEY_PASS",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="issue only the sealing key (DIR/NAME.seal.crt, .key) of an existing member",
        description=(
            "For members issued before sealing keys existed: an X25519 key, certified by the "
            "CA, that sealed offline files are encrypted to (docs/offline.md). Mode 0600."
        ),
    )
    seal.add_argument("--dir", type=Path, required=True, help="folder holding the CA")
    seal.add_argument("--name", required=True, type=member_name, help="the member's identity")
    seal.add_argument("--role", required=True, choices=["node", "coordinator"])
    seal.add_argument("--passphrase-env", metavar="VAR", help="passphrase of the CA key")
    seal.add_argument(
        "--key-passphrase-env", metavar="VAR", help="encrypt the new key with this passphrase"
    )
    seal.set_defaults(func=_cmd_keys_issue_seal)


def add_node_answer(node: Any) -> None:
    """``xmatch node answer`` under the ``node`` subparsers."""
    answer = node.add_parser(
        "answer",
        epilog=examples(
            "xmatch node answer --config node.toml --request /media/usb/banner-court.request \\",
            "    --out /media/usb/banner-court.response",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        epilog=examples(
            "xmatch round import --config coordinator.toml \\",
            "    --response /media/usb/banner-court.response",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        epilog=examples(
            "xmatch round close --config coordinator.toml --round 6f1c0a9e2b7d4c3f8a5e1d0b9c2a7f46",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="stop waiting for offline responses: missing ones count as failed sources",
        description=(
            "Gives up waiting: sub-rounds without a response count as failed sources "
            "(REVIEW, never EXIT), and the round's outputs are written."
        ),
    )
    close.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    close.add_argument("--round", required=True, type=round_id, help="the round id (32 hex digits)")
    close.set_defaults(func=_cmd_round_close)
