"""``xmatch node disputes | resolve | lists``: the department operator's side.

``disputes`` prints the open disputes (or all) with the identity number, round,
match set, date and reason, so that the operator can find the record;
``resolve`` answers one ``confirmed`` (the record stands) or ``corrected`` (the
source was fixed; the next round sees it), with a note; ``lists`` shows the work
lists received from civil affairs. They read and write the node's inbox
(:mod:`nodes.disputes`, :mod:`nodes.shares`) and run beside the serving node.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from nodes.config import load_node_config
from nodes.disputes import VERDICTS, DisputeStore, Verdict, check_text
from nodes.shares import read_lists
from psi.errors import InputError, ProtocolError
from runtime.text import printable

__all__ = ["disputes_command", "lists_command", "resolve_command"]


def disputes_command(*, config: Path, every: bool = False, stdout: TextIO | None = None) -> int:
    """``xmatch node disputes``: the open disputes (``--all``: every one), oldest first."""
    out = stdout or sys.stdout
    cfg = load_node_config(config)
    with DisputeStore.open(cfg) as store:
        items = store.listing(status=None if every else "open")
    print(
        "dispute_id\tstatus\treceived\tfrom\tround\tmatch_set\tas_of\tperson_id\treason\tnote",
        file=out,
    )
    for d in items:
        # the reason is civil affairs' words (and a store from before control
        # characters were refused may hold them): never printed raw
        print(
            f"{d.dispute_id}\t{d.status}\t{d.received_at[:10]}\t{d.requester}\t{d.round_id}\t"
            f"{d.match_set}\t{d.as_of}\t{d.person_id}\t{printable(d.reason)}\t"
            f"{printable(d.note)}",
            file=out,
        )
    if not items:
        print("no open dispute" if not every else "no dispute", file=sys.stderr)
    return 0


def resolve_command(
    *, config: Path, dispute_id: str, verdict: str, note: str, stdout: TextIO | None = None
) -> int:
    """``xmatch node resolve``: answer one open dispute.

    The answer enters the node's protocol log (``dispute_answered``) before the
    coordinator can fetch it: the serving node writes it when it is asked, or
    when it starts.

    Raises:
        InputError: unknown or answered dispute, a bad verdict, or a note that is
            empty or looks like an identity number.
    """
    out = stdout or sys.stdout
    if verdict not in VERDICTS:
        raise InputError(f"--verdict: expected one of {', '.join(VERDICTS)}")
    chosen: Verdict = "confirmed" if verdict == "confirmed" else "corrected"
    try:
        text = check_text(note, "--note")
    except ProtocolError as exc:
        raise InputError(exc.diagnostics()) from None
    cfg = load_node_config(config)
    with DisputeStore.open(cfg) as store:
        answered = store.resolve(dispute_id.strip().lower(), chosen, text)
    print(f"dispute {answered.dispute_id}: {answered.status}", file=out)
    return 0


def lists_command(*, config: Path, stdout: TextIO | None = None) -> int:
    """``xmatch node lists``: the work lists received, oldest first, with their files."""
    out = stdout or sys.stdout
    cfg = load_node_config(config)
    print("received\tfrom\tround\tlist\tsource\tpurpose\trows\tcolumns\tfile", file=out)
    for meta, path in read_lists(cfg):
        print(
            f"{meta.received_at[:19]}\t{meta.requester}\t{meta.round_id}\t{meta.list}\t"
            f"{meta.source}\t{meta.purpose}\t{meta.rows}\t{','.join(meta.columns)}\t{path}",
            file=out,
        )
    return 0
