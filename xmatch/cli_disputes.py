"""The ``xmatch dispute …``, ``xmatch node disputes | resolve | lists`` and ``xmatch round
share`` subcommands (疑义校核 and work lists; issue 15), registered by :func:`register`.

Kept beside :mod:`xmatch.cli` so that the main parser only calls :func:`register`;
the handlers only parse arguments and call into ``coordinator``/``nodes``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from xmatch.cli_text import examples, member_name, round_id, source


def _cmd_dispute_file(args: argparse.Namespace) -> int:
    from coordinator.dispute_commands import file_command, file_conflicts_command

    if args.from_round is not None:
        if not args.conflicts:
            args.parser.error("--from-round needs --conflicts")
        if args.round or args.person or args.source:
            args.parser.error(
                "--from-round --conflicts files in bulk: no --round/--person/--source"
            )
        return file_conflicts_command(
            config=args.config, round_id=args.from_round, reason=args.reason
        )
    missing = [
        o
        for o, v in (("--round", args.round), ("--person", args.person), ("--source", args.source))
        if not v
    ]
    if args.reason is None:  # an empty one was given: file_command says what it lacks
        missing.append("--reason")
    if missing:
        args.parser.error(f"the following arguments are required: {', '.join(missing)}")
    return file_command(
        config=args.config,
        round_id=args.round,
        person=args.person,
        source=args.source,
        reason=args.reason,
    )


def _cmd_dispute_sync(args: argparse.Namespace) -> int:
    from coordinator.dispute_commands import sync_command

    return sync_command(config=args.config, offline_dir=args.offline_dir)


def _cmd_dispute_import(args: argparse.Namespace) -> int:
    from coordinator.dispute_commands import import_command

    return import_command(config=args.config, reply=args.reply)


def _cmd_node_inbox(args: argparse.Namespace) -> int:
    from nodes.inbox_file import inbox_command

    return inbox_command(config=args.config, file=args.file, out=args.out)


def _cmd_dispute_list(args: argparse.Namespace) -> int:
    from coordinator.dispute_commands import list_command

    return list_command(config=args.config, status=args.status)


def _cmd_dispute_withdraw(args: argparse.Namespace) -> int:
    from coordinator.dispute_commands import withdraw_command

    return withdraw_command(config=args.config, dispute_id=args.dispute, reason=args.reason)


def _cmd_node_disputes(args: argparse.Namespace) -> int:
    from nodes.inbox_commands import disputes_command

    return disputes_command(config=args.config, every=args.all)


def _cmd_node_resolve(args: argparse.Namespace) -> int:
    from nodes.inbox_commands import resolve_command

    return resolve_command(
        config=args.config, dispute_id=args.dispute, verdict=args.verdict, note=args.note
    )


def _cmd_node_lists(args: argparse.Namespace) -> int:
    from nodes.inbox_commands import lists_command

    return lists_command(config=args.config)


def _cmd_round_share(args: argparse.Namespace) -> int:
    from coordinator.shares import share_command

    return share_command(
        config=args.config,
        round_id=args.round,
        department=args.department,
        lists=args.list,
        offline_dir=args.offline_dir,
    )


def _dispute_parsers(sub: Any) -> None:
    dispute = sub.add_parser(
        "dispute", help="疑义校核: disputes about records, to the departments that hold them"
    ).add_subparsers(dest="dispute_command", required=True, metavar="ACTION")
    file_ = dispute.add_parser(
        "file",
        epilog=examples(
            "xmatch dispute file --config coordinator.toml --round ROUND_ID "
            "--person 150802… --source justice/custody --reason '家属提供释放证明'",
            "xmatch dispute file --config coordinator.toml --from-round ROUND_ID --conflicts",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="file a dispute about one person's record (or every conflict of a round)",
        description=(
            "Records a dispute about the record that a round received of one person from one "
            "match set, and sends it to that department's node at once (else at the next sync "
            "or round). Only that person's identity number goes to that department. While the "
            "dispute is open, no child is exited or downgraded because of that person's "
            "records. The dispute id is the last word of the last line."
        ),
    )
    file_.add_argument("--config", type=Path, required=True)
    file_.add_argument(
        "--round", metavar="ROUND_ID", type=round_id, help="the round whose record is disputed"
    )
    file_.add_argument("--person", metavar="ID", help="the identity number of the person")
    file_.add_argument(
        "--source", metavar="NODE/SET", type=source, help="the match set, e.g. justice/custody"
    )
    file_.add_argument("--reason", metavar="TEXT", help="what is doubtful (no identity numbers)")
    file_.add_argument(
        "--from-round", metavar="ROUND_ID", type=round_id, help="file in bulk from this round"
    )
    file_.add_argument(
        "--conflicts", action="store_true", help="with --from-round: every conflicting record"
    )
    file_.set_defaults(func=_cmd_dispute_file, parser=file_)
    sync = dispute.add_parser(
        "sync",
        epilog=examples("xmatch dispute sync --config coordinator.toml"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="deliver waiting disputes and withdrawals, fetch the departments' answers",
        description=(
            "Exit 0, or 3 when something was left undone: a node could not be reached (its "
            "disputes wait), refused a dispute or withdrawal, or is offline with disputes "
            "waiting and no --offline-dir."
        ),
    )
    sync.add_argument("--config", type=Path, required=True)
    sync.add_argument(
        "--offline-dir",
        type=Path,
        metavar="DIR",
        help="write a sealed inbox file here for each offline node with disputes",
    )
    sync.set_defaults(func=_cmd_dispute_sync)
    import_ = dispute.add_parser(
        "import",
        epilog=examples(
            "xmatch dispute import --config coordinator.toml --reply /media/usb/banner-court.reply"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="read an offline department's sealed reply: receipts and answers",
    )
    import_.add_argument("--config", type=Path, required=True)
    import_.add_argument("--reply", type=Path, required=True, metavar="FILE")
    import_.set_defaults(func=_cmd_dispute_import)
    list_ = dispute.add_parser(
        "list",
        epilog=examples(
            "xmatch dispute list --config coordinator.toml",
            "xmatch dispute list --config coordinator.toml --status open",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="every dispute with its status, age and answer",
        description="Tab-separated, oldest first; holds the disputed identity numbers.",
    )
    list_.add_argument("--config", type=Path, required=True)
    list_.add_argument("--status", choices=["open", "confirmed", "corrected", "withdrawn"])
    list_.set_defaults(func=_cmd_dispute_list)
    withdraw = dispute.add_parser(
        "withdraw",
        epilog=examples(
            "xmatch dispute withdraw --config coordinator.toml --dispute ID --reason '家属撤回'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="withdraw an open dispute",
    )
    withdraw.add_argument("--config", type=Path, required=True)
    withdraw.add_argument("--dispute", required=True, metavar="ID")
    withdraw.add_argument("--reason", required=True, metavar="TEXT")
    withdraw.set_defaults(func=_cmd_dispute_withdraw)


def _node_parsers(node: Any) -> None:
    disputes = node.add_parser(
        "disputes",
        epilog=examples(
            "xmatch node disputes --config justice.node.toml",
            "xmatch node disputes --config justice.node.toml --all",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="the open disputes of civil affairs about this department's records",
        description=(
            "Lists the open disputes with the identity number, round, match set, date and "
            "reason, so that the record can be found and checked (tab-separated)."
        ),
    )
    disputes.add_argument("--config", type=Path, required=True)
    disputes.add_argument("--all", action="store_true", help="answered and withdrawn ones too")
    disputes.set_defaults(func=_cmd_node_disputes)
    resolve = node.add_parser(
        "resolve",
        epilog=examples(
            "xmatch node resolve --config justice.node.toml --dispute ID --verdict confirmed "
            "--note '经核实,刑期记录无误'",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="answer a dispute: confirmed (the record stands) or corrected (the source is fixed)",
    )
    resolve.add_argument("--config", type=Path, required=True)
    resolve.add_argument("--dispute", required=True, metavar="ID")
    resolve.add_argument("--verdict", required=True, choices=["confirmed", "corrected"])
    resolve.add_argument("--note", required=True, metavar="TEXT")
    resolve.set_defaults(func=_cmd_node_resolve)
    lists = node.add_parser(
        "lists",
        epilog=examples("xmatch node lists --config medical-insurance.node.toml"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="the work lists received from civil affairs",
        description="Tab-separated, oldest first, with the CSV file of each list.",
    )
    lists.add_argument("--config", type=Path, required=True)
    lists.set_defaults(func=_cmd_node_lists)
    inbox = node.add_parser(
        "inbox",
        epilog=examples(
            "xmatch node inbox --config node.toml --file /media/usb/banner-court.inbox "
            "--out /media/usb/banner-court.reply"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="offline: apply a sealed inbox (disputes, work lists) and write the sealed reply",
        description=(
            "For a department without a network link: opens the sealed inbox file civil "
            "affairs wrote, stores its disputes and work lists as the online node does, and "
            "writes a sealed reply with the receipts and your answers (xmatch node resolve)."
        ),
    )
    inbox.add_argument("--config", type=Path, required=True)
    inbox.add_argument("--file", type=Path, required=True, metavar="FILE")
    inbox.add_argument("--out", type=Path, required=True, metavar="FILE")
    inbox.set_defaults(func=_cmd_node_inbox)


def _round_parsers(round_: Any) -> None:
    share = round_.add_parser(
        "share",
        epilog=examples(
            "xmatch round share --config coordinator.toml --round ROUND_ID",
            "xmatch round share --config coordinator.toml --round ROUND_ID "
            "--department medical-insurance --list gaps",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="send each service department its work lists from a round",
        description=(
            "Sends each department configured in [[shares]] (or the one named) its lists from "
            "a completed round: newly enrolled children, the coverage gaps of its own set, "
            "exits; only the configured columns. A department without a [[shares]] entry is "
            "refused. Exit 0, or 3 when a department could not be reached."
        ),
    )
    share.add_argument("--config", type=Path, required=True)
    share.add_argument("--round", required=True, metavar="ROUND_ID", type=round_id)
    share.add_argument(
        "--department", metavar="NODE", type=member_name, help="only this department"
    )
    share.add_argument(
        "--list",
        action="append",
        default=[],
        choices=["enrolled", "gaps", "exits"],
        help="only this list (repeatable)",
    )
    share.add_argument(
        "--offline-dir",
        type=Path,
        metavar="DIR",
        help="where the sealed work lists of offline departments are written",
    )
    share.set_defaults(func=_cmd_round_share)


def register(sub: Any, *, node: Any, round_: Any) -> None:
    """Add the subcommands to the main parser's ``sub`` and its ``node``/``round`` groups."""
    _dispute_parsers(sub)
    _node_parsers(node)
    _round_parsers(round_)
