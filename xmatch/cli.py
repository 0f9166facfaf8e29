"""The ``xmatch`` command line: the one thin module at the edge.

Subcommands only parse arguments and call into ``keys``, ``nodes``,
``coordinator``, ``audit`` and ``xmatch.demo``/``xmatch.bench``. Handlers are
imported when their command runs, so ``xmatch --help`` stays fast and a
broken optional piece cannot break unrelated commands.

Errors: every expected failure is an :class:`psi.errors.XmatchError`; it is
printed as one line on stderr and the exit code is 1 (2 for usage errors,
from argparse, and for a configuration error of ``round`` and ``node serve``).
Anything else is a bug: we print its type and where it was raised, never its
message (which could quote a value), exit 1, and show the traceback only with ``-v``. The codes live
in :mod:`coordinator.exit_codes`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from coordinator import exit_codes
from psi.errors import ConfigError, XmatchError
from runtime.signals import CtrlC
from xmatch.cli_text import as_of, count, examples, member_name, seconds, source

Handler = Callable[[argparse.Namespace], int]

_EPILOG = """\
A round, end to end:
  xmatch keys init-ca --dir pki
  xmatch keys issue --dir pki --name justice --role node
  xmatch keys issue --dir pki --name civil-affairs --role coordinator
  xmatch node serve --config justice.toml          # inside the department
  xmatch round run --config coordinator.toml --out round-1
  xmatch audit verify --ca pki/ca.crt logs/*.audit.jsonl
Or everything on loopback at once:  xmatch demo
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from xmatch.demo import run_demo

    return run_demo(workdir=args.workdir, children=args.children, seed=args.seed)


def _cmd_keys_init_ca(args: argparse.Namespace) -> int:
    from keys.ca import init_ca

    init_ca(args.dir, passphrase=_passphrase(args), name=args.name)
    print(f"federation CA written to {args.dir / 'ca.crt'} (key {args.dir / 'ca.key'}, mode 0600)")
    return 0


def _cmd_keys_issue(args: argparse.Namespace) -> int:
    from keys.ca import issue

    ca_pass = _passphrase(args)
    if args.key_passphrase_env:
        issue(
            args.dir,
            name=args.name,
            role=args.role,
            passphrase=ca_pass,
            key_passphrase=_passphrase(args, "key_passphrase_env"),
        )
    else:
        issue(args.dir, name=args.name, role=args.role, passphrase=ca_pass)
    print(f"issued {args.role} certificate {args.dir / (args.name + '.crt')}")
    return 0


def _passphrase(args: argparse.Namespace, option: str = "passphrase_env") -> bytes | None:
    env = getattr(args, option, None)
    if not env:
        return None
    value = os.environ.get(env)
    if value is None:
        raise XmatchError(f"--passphrase-env {env}: the environment variable is not set")
    return value.encode()


def _cmd_node_serve(args: argparse.Namespace) -> int:
    from nodes.server import serve_from_config

    return serve_from_config(args.config)


def _cmd_round_run(args: argparse.Namespace) -> int:
    from coordinator.config import load_coordinator_config
    from coordinator.offline import run_offline_command
    from coordinator.round import run_round_command

    # loaded once and passed on: --config /dev/stdin or a FIFO can be read only once
    config = load_coordinator_config(args.config)
    if any(n.offline for n in config.nodes):  # sealed files for those (docs/offline.md)
        return run_offline_command(config=config, as_of=args.as_of, out=args.out, lang=args.lang)
    return run_round_command(
        config=config, as_of=args.as_of, out=args.out, lang=args.lang, progress=not args.quiet
    )


def _cmd_rules_evaluate(args: argparse.Namespace) -> int:
    from coordinator.evaluate import evaluate_command

    return evaluate_command(
        roster=args.roster,
        evidence=args.evidence,
        as_of=args.as_of,
        failed_sources=args.failed_source,
        out=args.out,
        lang=args.lang,
        encoding=args.encoding,
        report=args.report,
        service_sources=args.service_source,
        service_need_sources=args.service_need,
        xlsx=args.xlsx,
        names=args.names,
    )


def _warn_without_ca(args: argparse.Namespace) -> None:
    """The spec's plain form (``audit verify LOG…``) checks without a CA; say what that misses."""
    if args.ca is None and not args.no_ca:
        print(
            "xmatch: warning: no --ca given: each log is checked against the certificates it "
            "carries only (a log re-signed with a self-made certificate would pass); give "
            "--ca CA to check them against the federation CA, or --no-ca to silence this",
            file=sys.stderr,
        )


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from audit.cli import verify_command

    _warn_without_ca(args)
    return verify_command(args.logs, ca=args.ca, allow_unsigned_tail=args.allow_unsigned_tail)


def _cmd_audit_reconcile(args: argparse.Namespace) -> int:
    from audit.cli import reconcile_command

    _warn_without_ca(args)
    return reconcile_command(
        args.coordinator_log,
        args.node_logs,
        ca=args.ca,
        allow_unsigned_tail=args.allow_unsigned_tail,
    )


def _cmd_audit_report(args: argparse.Namespace) -> int:
    from audit.cli import report_command

    _warn_without_ca(args)
    return report_command(
        args.logs, json_out=args.json, ca=args.ca, allow_unsigned_tail=args.allow_unsigned_tail
    )


def _audit_trust_options(parser: argparse.ArgumentParser) -> None:
    """``--ca CA`` or ``--no-ca`` (neither: as ``--no-ca``, with a warning), and
    ``--allow-unsigned-tail``."""
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--ca",
        type=Path,
        default=None,
        help="federation CA certificate: checkpoints must be signed by keys it issued",
    )
    trust.add_argument(
        "--no-ca",
        action="store_true",
        help=(
            "UNSAFE: check each log only against the certificates it carries; a log forged "
            "and re-signed with a self-made certificate passes (OK lines say so). This is "
            "also what happens with neither option, plus a warning on stderr"
        ),
    )
    parser.add_argument(
        "--allow-unsigned-tail",
        action="store_true",
        help=(
            "for a log still being written: entries after its last checkpoint are a "
            "warning, not a failure"
        ),
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from xmatch.bench import run_bench

    return run_bench(
        sizes=args.sizes,
        protocols=args.protocol,
        out=args.out,
        workers=args.workers,
        baseline=not args.no_baseline,
        baselines=["openmined", *args.baseline],
        roster_size=args.roster_size,
        stream_rows=args.stream_rows,
        bucket_rows=args.bucket_rows,
        baseline_limit=args.baseline_limit,
    )


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line, like every other error (exit 2), not the usage block."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes what was typed ("invalid choice: '…'", "unrecognized
        # arguments: …"): an identity number typed in the wrong place is withheld
        from runtime.config import withhold_numbers

        self.exit(
            exit_codes.USAGE,
            f"xmatch: error: {withhold_numbers(message)} (see `{self.prog} --help`)\n",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xmatch",
        description=(
            "Privacy-preserving matching for the orphan and de facto unsupported child "
            "cross-check (内蒙古民政厅等13部门, 2023). Department nodes answer private set "
            "intersection queries over their own records; civil affairs learns only the "
            "matches and turns them into eligibility decisions with written reasons."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks of internal errors"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        epilog=examples(
            "xmatch demo",
            "xmatch demo --workdir /tmp/demo --children 12000 --seed 7",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run a synthetic Inner Mongolia federation on loopback, one round, print the summary",
        description=(
            "Generates a CA and keys, realistic synthetic department data (police, justice, "
            "court, disabled persons' federation, medical insurance) and a civil affairs "
            "roster, starts each node as its own process with mutual TLS on loopback, runs "
            "one match round with both protocols, and prints decisions by type and matches "
            "by department. Exits 0 when the round completed."
        ),
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-run"),
        help="where everything is written (default: demo-run)",
    )
    demo.add_argument(
        "--children", type=count(1), default=2000, help="roster size in children (default: 2000)"
    )
    demo.add_argument(
        "--seed", type=int, default=2023, help="random seed of the synthetic data (default: 2023)"
    )
    demo.set_defaults(func=_cmd_demo)

    keys = sub.add_parser("keys", help="federation CA and member certificates").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    init_ca = keys.add_parser(
        "init-ca",
        epilog=examples(
            "xmatch keys init-ca --dir pki --name 'Inner Mongolia child support'",
            "CA_PASS=... xmatch keys init-ca --dir pki --passphrase-env CA_PASS",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="create the federation CA (DIR/ca.crt, DIR/ca.key)",
        description=(
            "Creates the federation CA (ECDSA P-256, about 10 years) that issues every "
            "member's certificate. The key file is mode 0600. An existing CA is never overwritten."
        ),
    )
    init_ca.add_argument("--dir", type=Path, required=True, help="folder for ca.crt and ca.key")
    init_ca.add_argument(
        "--name",
        default="xmatch federation",
        help="the federation's name, in the CA certificate (default: %(default)s)",
    )
    init_ca.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="encrypt the CA key with the passphrase in this environment variable",
    )
    init_ca.set_defaults(func=_cmd_keys_init_ca)
    issue = keys.add_parser(
        "issue",
        epilog=examples(
            "xmatch keys issue --dir pki --name justice --role node",
            "xmatch keys issue --dir pki --name civil-affairs --role coordinator",
            "# then give the department pki/ca.crt and pki/justice.{crt,key,audit.*,seal.*}",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="issue a member certificate and key (DIR/NAME.crt, DIR/NAME.key)",
        description=(
            "Issues a TLS certificate whose name is the member's identity (for example 'justice' "
            "or 'civil-affairs') and an Ed25519 key for signing its protocol log checkpoints "
            "(DIR/NAME.audit.crt, DIR/NAME.audit.key), and an X25519 key that sealed offline "
            "files are encrypted to (DIR/NAME.seal.crt, DIR/NAME.seal.key). Key files are "
            "mode 0600."
        ),
    )
    issue.add_argument(
        "--dir", type=Path, required=True, help="folder holding the CA; the new files go there too"
    )
    issue.add_argument(
        "--name",
        required=True,
        type=member_name,
        help="the member's identity, as node.toml / coordinator.toml name it",
    )
    issue.add_argument("--role", required=True, choices=["node", "coordinator"])
    issue.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="passphrase (in this environment variable) of the CA key, and for the new keys",
    )
    issue.add_argument(
        "--key-passphrase-env",
        metavar="VAR",
        help="encrypt the new keys with this variable's passphrase instead of the CA's",
    )
    issue.set_defaults(func=_cmd_keys_issue)
    from xmatch.offline_cli import add_keys_issue_seal

    add_keys_issue_seal(keys)

    node = sub.add_parser("node", help="department node").add_subparsers(
        dest="node_command", required=True, metavar="ACTION"
    )
    serve = node.add_parser(
        "serve",
        epilog=examples(
            "xmatch node serve --config justice.node.toml",
            "# stop with Ctrl-C (exit 130) or SIGTERM (exit 0); docs/node.md has a full node.toml",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="serve this department's match sets until SIGTERM/SIGINT",
        description=(
            "Loads node.toml, checks every match set's source file, and answers PSI queries "
            "over gRPC with mutual TLS. Records never leave the node: only tags or blinded "
            "points cross the wire, and only allowed requesters and purposes are served."
        ),
    )
    serve.add_argument("--config", type=Path, required=True, help="node.toml")
    serve.set_defaults(func=_cmd_node_serve)
    from xmatch.offline_cli import add_node_answer, add_round_offline

    add_node_answer(node)

    round_ = sub.add_parser("round", help="match rounds (civil affairs)").add_subparsers(
        dest="round_command", required=True, metavar="ACTION"
    )
    run = round_.add_parser(
        "run",
        epilog=examples(
            "xmatch round run --config coordinator.toml --out rounds/2026-11",
            "xmatch round run --config coordinator.toml --as-of 2026-11-29 --out rounds/b -q",
            "exit codes: 0 every match set answered, 3 some failed or were refused,",
            "            4 waiting for offline answers, 2 usage or configuration error,",
            "            130 interrupted (Ctrl-C; nothing is left half-written), 1 other",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run one match round against the configured nodes",
        description=(
            "Reads the roster, queries every configured match set on every node concurrently, "
            "and writes DIR/evidence.csv, DIR/decisions.json, DIR/report.html, "
            "DIR/decisions.xlsx and DIR/names.csv. A node that fails is listed in "
            "failed_sources; its children get REVIEW, never EXIT."
        ),
    )
    run.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    run.add_argument(
        "--as-of", type=as_of, default=None, help="evaluation date YYYY-MM-DD (default: today)"
    )
    run.add_argument(
        "--out", type=Path, required=True, help="output folder (created; written atomically)"
    )
    run.add_argument(
        "--lang",
        choices=["zh", "en"],
        default="zh",
        help="language of the written reasons (default: zh)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    run.set_defaults(func=_cmd_round_run)
    add_round_offline(round_)

    rules = sub.add_parser("rules", help="eligibility rules").add_subparsers(
        dest="rules_command", required=True, metavar="ACTION"
    )
    evaluate = rules.add_parser(
        "evaluate",
        epilog=examples(
            "xmatch rules evaluate --roster roster.csv --evidence evidence.csv \\",
            "    --as-of 2026-11-29 --out decisions.json --report report.html",
            "xmatch rules evaluate --roster roster.csv --evidence evidence.csv \\",
            "    --as-of 2026-11-29 --failed-source court/declarations \\",
            "    --service-source medical-insurance/enrolled --out decisions.json",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="apply eligibility.md to gathered evidence",
        description=(
            "Decides ENROL / CONTINUE / RECLASSIFY / EXIT / REVIEW / NOT_ELIGIBLE for every roster "
            "row from evidence already gathered (for example received offline). Each "
            "--failed-source names a match set that could not be queried: then no child exits "
            "for want of evidence. Invalid identity numbers give REVIEW and are listed on stderr."
        ),
    )
    evaluate.add_argument(
        "--roster", type=Path, required=True, help="roster.csv (UTF-8 or GB18030)"
    )
    evaluate.add_argument(
        "--evidence", type=Path, required=True, help="evidence.csv (UTF-8 or GB18030)"
    )
    evaluate.add_argument("--as-of", type=as_of, required=True, help="evaluation date YYYY-MM-DD")
    evaluate.add_argument(
        "--failed-source",
        action="append",
        default=[],
        type=source,
        metavar="NODE/SET",
        help="a match set that could not be queried (repeatable)",
    )
    evaluate.add_argument("--out", type=Path, required=True, help="decisions.json to write")
    evaluate.add_argument(
        "--lang",
        choices=["zh", "en"],
        default="zh",
        help="language of the written reasons (default: zh)",
    )
    evaluate.add_argument(
        "--encoding",
        choices=["auto", "utf-8", "gb18030"],
        default="auto",
        help="input encoding (default: detect)",
    )
    evaluate.add_argument("--report", type=Path, default=None, help="also write report.html here")
    evaluate.add_argument(
        "--xlsx", type=Path, default=None, help="also write the decisions spreadsheet here"
    )
    evaluate.add_argument(
        "--names",
        type=Path,
        default=None,
        metavar="NAMES.CSV",
        help=(
            "display names of departments and sets (source,display_name; a round writes "
            "DIR/names.csv) for the Chinese reasons, report and spreadsheet"
        ),
    )
    evaluate.add_argument(
        "--service-source",
        action="append",
        default=[],
        type=source,
        metavar="NODE/SET",
        help=(
            "a service-coverage match set of this evidence (repeatable), e.g. "
            "medical-insurance/enrolled: covered children it did not match are coverage gaps, "
            "even when it matched nobody"
        ),
    )
    evaluate.add_argument(
        "--service-need",
        action="append",
        default=[],
        type=source,
        metavar="NODE/SET",
        help=(
            "a service-needs match set of this evidence (repeatable), e.g. "
            "disabled-persons-federation/rehab_needs: covered children it matched are listed "
            "under service_needs (a round does this for sets configured with "
            'service_report = "needs")'
        ),
    )
    evaluate.set_defaults(func=_cmd_rules_evaluate)

    audit = sub.add_parser("audit", help="tamper-evident protocol logs").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    verify = audit.add_parser(
        "verify",
        epilog=examples("xmatch audit verify --ca pki/ca.crt logs/*.audit.jsonl"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="check hash chains, signatures and checkpoints; exit 0 only if every log is intact",
        description=(
            "Prints OK:/FAIL: per log, naming the bad entries; an unsigned tail fails unless "
            "--allow-unsigned-tail. NOTE: when a log does not end with a clean shutdown. "
            "Exit 0 all intact, 1 tampering, damage or an unsigned tail. See docs/audit.md."
        ),
    )
    verify.add_argument("logs", nargs="+", type=Path, metavar="LOG")
    _audit_trust_options(verify)
    verify.add_argument(
        "--strict",
        action="store_true",
        help="no effect (kept for scripts): an unsigned tail always fails now",
    )
    verify.set_defaults(func=_cmd_audit_verify)
    reconcile = audit.add_parser(
        "reconcile",
        epilog=examples(
            "xmatch audit reconcile --ca pki/ca.crt logs/civil-affairs.audit.jsonl \\",
            "    logs/justice.audit.jsonl logs/police.audit.jsonl",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="match rounds across the coordinator's and the nodes' logs",
        description=(
            "Pairs every round by round id and transcript hash. A round on one side only, or "
            "with differing hashes, is a finding. Exit 0 no findings, 1 findings, "
            "2 a log failed verification."
        ),
    )
    reconcile.add_argument("coordinator_log", type=Path, metavar="COORD_LOG")
    reconcile.add_argument("node_logs", nargs="+", type=Path, metavar="NODE_LOG")
    _audit_trust_options(reconcile)
    reconcile.set_defaults(func=_cmd_audit_reconcile)
    report = audit.add_parser(
        "report",
        epilog=examples(
            "xmatch audit report --ca pki/ca.crt --json audit.json logs/*.audit.jsonl",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="who queried what, when, for which purpose; flags probing patterns",
        description=(
            "Verifies the logs, then tabulates rounds per requester, purpose and match set and "
            "flags tiny, repeated near-identical and burst queries. Exit 0 nothing flagged, "
            "1 probing patterns flagged, 2 a log failed verification."
        ),
    )
    report.add_argument("logs", nargs="+", type=Path, metavar="LOG")
    report.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    _audit_trust_options(report)
    report.set_defaults(func=_cmd_audit_report)

    bench = sub.add_parser(
        "bench",
        epilog=examples(
            "xmatch bench --sizes 1000 10000",
            "xmatch bench --sizes 3000000 --roster-size 300000 --protocol keyed-hash --no-baseline",
            "make bench-peers && xmatch bench --sizes 100000 1000000 --baseline secretflow",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="end-to-end throughput against openmined-psi and SecretFlow",
        description=(
            "Builds a federation of real processes on loopback with mutual TLS, runs rounds at "
            "each size for each protocol, runs openmined-psi (and with --baseline secretflow, "
            "SecretFlow's ECDH-25519 and RR22) on the same sets in the same run, and writes a "
            "table, JSON and a PNG plot to --out."
        ),
    )
    bench.add_argument(
        "--sizes",
        type=count(1, 50_000_000),
        nargs="+",
        default=[1_000, 10_000, 100_000],
        help="set sizes per side (default: 1000 10000 100000)",
    )
    bench.add_argument(
        "--protocol", nargs="+", choices=["ecdh", "keyed-hash"], default=["ecdh", "keyed-hash"]
    )
    bench.add_argument(
        "--roster-size",
        type=count(100, 20_000_000),
        default=None,
        help="roster size (default: equal to each size)",
    )
    bench.add_argument(
        "--workers",
        type=count(1, 256),  # as node.toml's workers
        default=None,
        help="EC worker processes per party (default: all cores)",
    )
    bench.add_argument("--no-baseline", action="store_true", help="skip every baseline")
    bench.add_argument(
        "--baseline",
        action="append",
        choices=["openmined", "secretflow"],
        default=[],
        help=(
            "also run this baseline (repeatable); openmined-psi always runs. secretflow: "
            "SecretFlow spu ECDH-25519 and RR22 from the peers venv made by make bench-peers"
        ),
    )
    bench.add_argument(
        "--baseline-limit",
        type=seconds,
        default=60.0,
        help="run openmined-psi at a size only if the previous one predicts at most this (s)",
    )
    bench.add_argument(
        "--stream-rows",
        type=count(0, 10**12),  # the limits of node.toml's stream_rows (0: never stream)
        default=None,
        help="stream_rows of the bench node's node.toml (default: the node's default)",
    )
    bench.add_argument(
        "--bucket-rows",
        type=count(1, 10**12),  # the limits of node.toml's bucket_rows
        default=None,
        help=(
            "bucket_rows of the bench node's node.toml: an ecdh set above stream_rows is split "
            "into buckets of about this many rows (default: the node's default)"
        ),
    )
    bench.add_argument(
        "--out", type=Path, default=Path("bench-run"), help="output folder (default: bench-run)"
    )
    bench.set_defaults(func=_cmd_bench)
    from xmatch.cli_disputes import register  # dispute …, node disputes|resolve|lists, round share

    register(sub, node=node, round_=round_)
    return parser


def _interrupted() -> int:
    print("xmatch: interrupted", file=sys.stderr)
    return exit_codes.INTERRUPTED


def _os_error(exc: OSError) -> str:
    """One line for an OS error: the path (unless it holds a long number) and the OS's
    reason (``strerror``), never more of the exception's text."""
    from runtime.config import shown_path

    reason = exc.strerror or (str(exc) if exc.filename is None and exc.args else type(exc).__name__)
    if exc.filename is None:
        return reason
    where = shown_path(os.fsdecode(exc.filename))
    if exc.filename2 is not None:
        where += f" -> {shown_path(os.fsdecode(exc.filename2))}"
    return f"{where}: {reason}"


def _config_is_usage(args: argparse.Namespace) -> bool:
    """Whether this command exits 2 (not 1) for a configuration error (docs/coordinator.md,
    docs/node.md: every ``round`` subcommand and ``node serve``)."""
    if args.command == "round":
        return True
    return args.command == "node" and getattr(args, "node_command", None) == "serve"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    ctrl_c = CtrlC()
    try:
        with ctrl_c:
            return func(args)
    except KeyboardInterrupt:
        return _interrupted()
    except XmatchError as exc:
        if ctrl_c.seen:  # e.g. a match set "unreadable" because its read was interrupted
            return _interrupted()
        print(f"xmatch: error: {exc.diagnostics()}", file=sys.stderr)
        # every round command and node serve: a configuration error (the config file, our
        # own certificate, key or CA) is a usage error (coordinator/exit_codes.py)
        if isinstance(exc, ConfigError) and _config_is_usage(args):
            return exit_codes.USAGE
        return exit_codes.FAILURE
    except OSError as exc:  # a file or folder the command cannot read or write
        if ctrl_c.seen:
            return _interrupted()
        print(f"xmatch: error: {_os_error(exc)}", file=sys.stderr)
        return exit_codes.FAILURE
    except Exception as exc:  # a bug: say where, never echo the message (it may quote data)
        if ctrl_c.seen:  # a library that turned the KeyboardInterrupt into its own error
            return _interrupted()
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
        print(
            f"xmatch: internal error: {type(exc).__name__}{where} "
            "(rerun with -v for the traceback)",
            file=sys.stderr,
        )
        if args.verbose:
            traceback.print_exc()
        return exit_codes.FAILURE


if __name__ == "__main__":
    sys.exit(main())
